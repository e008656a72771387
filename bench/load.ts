/**
 * HTTP load generation for the benchmark sections: wrk when it is installed (preferred: a C load
 * generator takes far less CPU from the server on a 2-core machine), else autocannon run in a
 * child process (so it never shares the bench's event loop). Traffic goes to 127.0.0.1 only.
 *
 *   load({ url, method: "GET", connections: 64, durationS: 10 })            one fixed request
 *   load({ url, method: "POST", body, ... })                                 one fixed POST body
 *   load({ url, method: "POST", bodies: { keyPrefix: "k", valueBytes: 100 } })
 *       POST {"key":"<prefix><n>","value":"<valueBytes>"}, n = 1, 2, 3... (distinct keys; with
 *       `keys`, n wraps after keys, so exactly that many distinct keys are written)
 *   load({ url: origin, mix: { keys: 10_000, setRatio: 0.1 }, ... })
 *       each request picks a random key <prefix><1..keys>: a POST /set with probability setRatio,
 *       else a GET /get?key=...
 *
 * With `until`, the run stops early (SIGINT to the generator) as soon as the predicate is true.
 * Set KVNODE_BENCH_LOADGEN=autocannon to force the fallback.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export interface BodiesSpec {
  keyPrefix?: string;
  valueBytes?: number;
  /** Wrap the key counter after this many keys (exactly `keys` distinct keys are written). */
  keys?: number;
}

export interface MixSpec {
  /** Keys <keyPrefix>1 .. <keyPrefix><keys> (preloaded by the caller). */
  keys: number;
  keyPrefix?: string;
  /** Fraction of requests that are POST /set (0.1 for a 90/10 GET/SET mix; 0 for GET only). */
  setRatio: number;
  valueBytes?: number;
}

export interface LoadOptions {
  /** Full URL of the request; with `mix`, the origin (paths /get and /set are used). */
  url: string;
  method?: "GET" | "POST";
  body?: string;
  bodies?: BodiesSpec;
  mix?: MixSpec;
  connections: number;
  durationS: number;
  /** Load generator threads (wrk only); 1 by default, as the server needs the other core. */
  threads?: number;
  /** Polled every 200 ms; the run stops once it resolves true. */
  until?: () => Promise<boolean>;
  tool?: "wrk" | "autocannon";
}

export interface LoadResult {
  tool: "wrk" | "autocannon";
  rps: number;
  requests: number;
  seconds: number;
  p50_ms: number;
  p99_ms: number;
  p999_ms: number;
  /** Socket errors and timeouts. */
  errors: number;
  /** Answers with a status of 400 or more (wrk) / not 2xx (autocannon). */
  non2xx: number;
}

/** Poll `until` every 200 ms while the generator runs; on true, SIGINT it (it then prints its results). */
async function stopWhen(until: () => Promise<boolean>, proc: { kill(signal: NodeJS.Signals): void }, finished: () => boolean): Promise<void> {
  while (!finished()) {
    await Bun.sleep(200);
    if (finished()) return;
    let hit = false;
    try {
      hit = await until();
    } catch {}
    if (hit && !finished()) {
      proc.kill("SIGINT");
      return;
    }
  }
}

let wrkPath: string | null | undefined;

/** The load generator this machine has: wrk, else autocannon. */
export function loadTool(): "wrk" | "autocannon" {
  if (process.env.KVNODE_BENCH_LOADGEN === "autocannon") return "autocannon";
  if (wrkPath === undefined) wrkPath = Bun.which("wrk");
  return wrkPath ? "wrk" : "autocannon";
}

const defaultValue = (bytes: number) => "v".repeat(bytes);

export async function load(o: LoadOptions): Promise<LoadResult> {
  const u = new URL(o.url);
  if (u.hostname !== "127.0.0.1" && u.hostname !== "localhost") throw new Error(`load: only 127.0.0.1 is a target, not ${u.hostname}`);
  const tool = o.tool ?? loadTool();
  return tool === "wrk" ? wrk(o) : autocannon(o);
}

// ---------------------------------------------------------------- wrk

const luaStr = (s: string) => JSON.stringify(s); // a JSON string literal is a valid Lua string literal for ASCII

function wrkScript(o: LoadOptions): string {
  const lines: string[] = [];
  const threads = o.threads ?? 1;
  lines.push(
    `local threads = {}`,
    `local tcount = 0`,
    `function setup(thread)`,
    `  tcount = tcount + 1`,
    `  thread:set("tid", tcount)`,
    `  table.insert(threads, thread)`,
    `end`,
    `local counter = 0`,
    `local stride = ${threads}`,
  );
  if (o.mix) {
    const m = o.mix;
    lines.push(
      `local prefix = ${luaStr(m.keyPrefix ?? "k")}`,
      `local keys = ${m.keys}`,
      `local setRatio = ${m.setRatio}`,
      `local value = ${luaStr(defaultValue(m.valueBytes ?? 100))}`,
      `local headers = { ["Content-Type"] = "application/json" }`,
      `function init(args)`,
      `  math.randomseed(os.time() * 1000 + (tid or 1))`,
      `end`,
      `function request()`,
      `  local k = prefix .. math.random(1, keys)`,
      `  if setRatio > 0 and math.random() < setRatio then`,
      `    return wrk.format("POST", "/set", headers, '{"key":"' .. k .. '","value":"' .. value .. '"}')`,
      `  end`,
      `  return wrk.format("GET", "/get?key=" .. k)`,
      `end`,
    );
  } else if (o.bodies) {
    const b = o.bodies;
    lines.push(
      `local prefix = ${luaStr(b.keyPrefix ?? "k")}`,
      `local wrapAt = ${b.keys ?? 0}`,
      `local value = ${luaStr(defaultValue(b.valueBytes ?? 100))}`,
      `local headers = { ["Content-Type"] = "application/json" }`,
      `local path = ${luaStr(new URL(o.url).pathname + new URL(o.url).search)}`,
      `function init(args)`,
      `  counter = (tid or 1) - 1`,
      `end`,
      `function request()`,
      `  counter = counter + stride`,
      `  local n = counter`,
      `  if wrapAt > 0 then n = ((counter - 1) % wrapAt) + 1 end`,
      `  return wrk.format("POST", path, headers, '{"key":"' .. prefix .. n .. '","value":"' .. value .. '"}')`,
      `end`,
    );
  } else if (o.method === "POST" || o.body !== undefined) {
    lines.push(`wrk.method = ${luaStr(o.method ?? "POST")}`, `wrk.body = ${luaStr(o.body ?? "")}`, `wrk.headers["Content-Type"] = "application/json"`);
  }
  // p99.9 is not in wrk's --latency table: print every figure from done() as one JSON line.
  lines.push(
    `function done(summary, latency, requests)`,
    `  local e = summary.errors`,
    `  io.write(string.format('KVBENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"p999_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',`,
    `    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),`,
    `    e.connect, e.read, e.write, e.status, e.timeout))`,
    `end`,
  );
  return lines.join("\n") + "\n";
}

/** "590.00us" / "1.24ms" / "2.00s" -> ms */
function wrkTime(s: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(s.trim());
  if (!m) return NaN;
  const v = Number(m[1]);
  return m[2] === "us" ? v / 1000 : m[2] === "ms" ? v : m[2] === "s" ? v * 1000 : v * 60_000;
}

/** Parse wrk's --latency text (and the done() line) into a LoadResult. Exported for checking. */
export function parseWrk(out: string): LoadResult {
  const pct = (p: string) => {
    const m = new RegExp(`^\\s+${p}%\\s+(\\S+)`, "m").exec(out);
    return m ? wrkTime(m[1]!) : NaN;
  };
  const rpsM = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const sock = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  const doneM = /^KVBENCH (\{.*\})$/m.exec(out);
  const d = doneM ? (JSON.parse(doneM[1]!) as Record<string, number>) : null;
  const seconds = d ? d.duration_us! / 1e6 : NaN;
  const requests = d ? d.requests! : NaN;
  const p50 = pct("50");
  const p99 = pct("99");
  return {
    tool: "wrk",
    rps: rpsM ? Number(rpsM[1]) : requests / seconds,
    requests,
    seconds,
    p50_ms: Number.isFinite(p50) ? p50 : d ? d.p50_us! / 1000 : NaN,
    p99_ms: Number.isFinite(p99) ? p99 : d ? d.p99_us! / 1000 : NaN,
    p999_ms: d ? d.p999_us! / 1000 : NaN,
    errors: sock ? Number(sock[1]) + Number(sock[2]) + Number(sock[3]) + Number(sock[4]) : d ? d.connect! + d.read! + d.write! + d.timeout! : 0,
    non2xx: non2xx ? Number(non2xx[1]) : d ? d.status! : 0,
  };
}

async function wrk(o: LoadOptions): Promise<LoadResult> {
  const dir = mkdtempSync(join(tmpdir(), "kvnode-wrk-"));
  const script = join(dir, "load.lua");
  writeFileSync(script, wrkScript(o));
  const threads = o.threads ?? 1;
  const proc = Bun.spawn(
    [wrkPath ?? Bun.which("wrk") ?? "wrk", "-t", String(threads), "-c", String(Math.max(o.connections, threads)), "-d", `${Math.max(1, Math.round(o.durationS))}s`, "--timeout", "10s", "--latency", "-s", script, o.url],
    { stdin: "ignore", stdout: "pipe", stderr: "pipe" },
  );
  let stopper: Promise<void> | null = null;
  let finished = false;
  try {
    // wrk stops on SIGINT, prints its results and runs done()
    if (o.until) stopper = stopWhen(o.until, proc, () => finished);
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    finished = true;
    if (code !== 0 && !/Requests\/sec/.test(out)) throw new Error(`wrk exited ${code}: ${err || out}`);
    const r = parseWrk(out);
    if (!Number.isFinite(r.rps)) throw new Error(`cannot parse wrk output:\n${out}\n${err}`);
    return r;
  } finally {
    finished = true;
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await proc.exited;
    await stopper;
    rmSync(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- autocannon

interface ChildOptions {
  url: string;
  method: "GET" | "POST";
  body?: string;
  bodies?: BodiesSpec;
  mix?: MixSpec;
  connections: number;
  durationS: number;
}

async function autocannon(o: LoadOptions): Promise<LoadResult> {
  const child: ChildOptions = { url: o.url, method: o.method ?? (o.body !== undefined || o.bodies ? "POST" : "GET"), body: o.body, bodies: o.bodies, mix: o.mix, connections: o.connections, durationS: o.durationS };
  const proc = Bun.spawn([process.execPath, import.meta.path, "--autocannon-child", JSON.stringify(child)], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  let finished = false;
  let stopper: Promise<void> | null = null;
  try {
    // the child stops autocannon on SIGINT and prints the result
    if (o.until) stopper = stopWhen(o.until, proc, () => finished);
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    finished = true;
    const m = /^KVBENCH (\{.*\})$/m.exec(out);
    if (!m) throw new Error(`autocannon child exited ${code}: ${err || out}`);
    return JSON.parse(m[1]!) as LoadResult;
  } finally {
    finished = true;
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await proc.exited;
    await stopper;
  }
}

/** Runs in the child: autocannon, programmatically; prints one KVBENCH line. */
async function autocannonChild(o: ChildOptions): Promise<void> {
  const name = "autocannon"; // untyped package: a non-literal specifier keeps tsc out of it
  const ac = ((await import(name)) as { default: (opts: Record<string, unknown>) => any }).default;
  const headers = { "content-type": "application/json" };
  let requests: Record<string, unknown>[] | undefined;
  if (o.mix) {
    const m = o.mix;
    const prefix = m.keyPrefix ?? "k";
    const value = defaultValue(m.valueBytes ?? 100);
    const pick = () => prefix + (1 + Math.floor(Math.random() * m.keys));
    requests = [
      {
        setupRequest: (req: Record<string, unknown>) =>
          m.setRatio > 0 && Math.random() < m.setRatio
            ? { ...req, method: "POST", path: "/set", headers, body: JSON.stringify({ key: pick(), value }) }
            : { ...req, method: "GET", path: `/get?key=${pick()}`, headers: {}, body: undefined },
      },
    ];
  } else if (o.bodies) {
    const b = o.bodies;
    const prefix = b.keyPrefix ?? "k";
    const value = defaultValue(b.valueBytes ?? 100);
    let counter = 0;
    const u = new URL(o.url);
    requests = [
      {
        method: "POST",
        path: u.pathname + u.search,
        headers,
        setupRequest: (req: Record<string, unknown>) => {
          counter++;
          const n = b.keys ? ((counter - 1) % b.keys) + 1 : counter;
          return { ...req, body: JSON.stringify({ key: prefix + n, value }) };
        },
      },
    ];
  }
  const inst = ac({
    url: o.url,
    method: o.method,
    body: o.body,
    headers: o.method === "POST" ? headers : undefined,
    requests,
    connections: o.connections,
    duration: o.durationS,
    timeout: 10,
  });
  process.on("SIGINT", () => inst.stop());
  const r = await inst;
  const result: LoadResult = {
    tool: "autocannon",
    rps: r.requests.total / r.duration,
    requests: r.requests.total,
    seconds: r.duration,
    p50_ms: r.latency.p50,
    p99_ms: r.latency.p99,
    p999_ms: r.latency.p99_9,
    errors: r.errors + r.timeouts,
    non2xx: r.non2xx,
  };
  process.stdout.write(`KVBENCH ${JSON.stringify(result)}\n`);
  process.exit(0);
}

if (import.meta.main && process.argv[2] === "--autocannon-child") await autocannonChild(JSON.parse(process.argv[3]!) as ChildOptions);

// ---------------------------------------------------------------- helpers shared by the sections

/** Percentile (0..100) of unsorted numbers, nearest rank; NaN when empty. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
}

/** a / b rounded to 3 decimals; null when either is not a positive finite number. */
export function ratio(a: number, b: number): number | null {
  return Number.isFinite(a) && Number.isFinite(b) && b > 0 ? Math.round((a / b) * 1000) / 1000 : null;
}

export function fmt(v: number | null | undefined, digits = 2): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "-";
  if (Math.abs(v) >= 1000) return Math.round(v).toLocaleString("en-US");
  return v.toFixed(digits);
}

export const fmtRatio = (v: number | null) => (v === null ? "-" : `${v.toFixed(2)}x`);

/** Print rows as an aligned text table. */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const r of rows) console.log(line(r));
}

/** Resident set size of a process, in bytes (VmRSS of /proc/<pid>/status). */
export async function rssBytes(pid: number): Promise<number> {
  const status = await Bun.file(`/proc/${pid}/status`).text();
  const m = /^VmRSS:\s+(\d+) kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

export interface BareServer {
  url: string;
  pid: number;
  stop(): Promise<void>;
}

/**
 * A bare Bun.serve in a child process (its own event loop and core), answering every request with
 * a fixed small JSON after reading the body: the ceiling any Bun HTTP server here can reach.
 */
export async function startBareServer(): Promise<BareServer> {
  const code = `
    const reply = '{"key":"k","value":"v"}';
    const server = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req) {
        if (req.method === "POST") await req.text();
        return new Response(reply, { headers: { "content-type": "application/json" } });
      },
    });
    console.log("bare ready port=" + server.port);
  `;
  const proc = Bun.spawn([process.execPath, "-e", code], { stdin: "ignore", stdout: "pipe", stderr: "inherit" });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await proc.exited;
  };
  try {
    const reader = proc.stdout.getReader();
    const dec = new TextDecoder();
    let text = "";
    const deadline = performance.now() + 10_000;
    for (;;) {
      const m = /bare ready port=(\d+)/.exec(text);
      if (m) {
        void (async () => {
          try {
            while (!(await reader.read()).done); // keep draining
          } catch {}
        })();
        return { url: `http://127.0.0.1:${m[1]}`, pid: proc.pid, stop };
      }
      if (performance.now() > deadline) throw new Error("bare Bun.serve did not start");
      const { value, done } = await reader.read();
      if (done) throw new Error(`bare Bun.serve exited: ${text}`);
      text += dec.decode(value, { stream: true });
    }
  } catch (e) {
    await stop();
    throw e;
  }
}
