/** Assertions are for bugs: a failed one means kvnode itself is wrong, never the input. */
export class AssertionError extends Error {
  override name = "AssertionError";
}

export function assert(ok: unknown, why: string): asserts ok {
  if (!ok) throw new AssertionError(why);
}
