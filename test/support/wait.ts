/** Wait for a condition with a deadline; say what was awaited when it times out. No fixed sleeps. */
export async function waitFor<T>(what: string, check: () => T | Promise<T>, timeoutMs = 10_000, intervalMs = 20): Promise<Exclude<T, false | null | undefined | 0 | "">> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as Exclude<T, false | null | undefined | 0 | "">;
      last = v;
    } catch (e) {
      last = e;
    }
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/**
 * Whether `check` comes true within `ms`: for a test that watches for something that must NOT
 * happen (it polls the whole time; a failure is seen as soon as it happens).
 */
export async function happensWithin(ms: number, check: () => boolean | Promise<boolean>, intervalMs = 50): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return false;
}
