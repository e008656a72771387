/**
 * Memory per key. A lone in-memory leader is filled with 1,000,000 keys of 100-byte values
 * (100,000 with --quick) by POST /set with 64 connections until /health says it holds them all;
 * its resident memory (VmRSS of /proc/<pid>/status) is read before, and after once it has settled:
 * bytes per key = (RSS after - RSS before) / keys.
 *
 * Two nodes: one with the default -history-entries (the leader also keeps its last 200,000 writes,
 * at most 64 MiB, to catch followers up) and one with -history-entries 1000, to tell that apart.
 *
 * The default node then serves reads, overwrites and a 90/10 mix of its keys, then inserts of new
 * keys, for a few seconds each:
 * latency at that size, next to the cluster section's 10,000-key figures.
 *
 * Lower bound (and baseline for the ratios): the Store class alone, filled with the same keys in a
 * child process (values parsed from JSON bodies, as the node gets them): heapUsed and RSS deltas.
 */
import type { BenchContext } from "./context.ts";
import { type LoadResult, fmt, fmtRatio, load, printTable, ratio } from "./load.ts";
import { preload } from "./cluster.ts";
import { type NodeProc, TestCluster } from "../test/support/cluster.ts";
import { Store } from "../src/store/store.ts";

const VALUE_BYTES = 100;
const MB = 1024 * 1024;

async function procStatus(pid: number): Promise<{ rss: number; hwm: number }> {
  const s = await Bun.file(`/proc/${pid}/status`).text();
  const kb = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN) * 1024;
  return { rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

/**
 * Resident memory once the node has settled after the load: the garbage of a million requests is
 * collected and returned some time after the last one, so read RSS every 250 ms (up to 15 s) until
 * it has not fallen by 1% over the last 2 s.
 */
async function settledStatus(pid: number): Promise<{ rss: number; hwm: number }> {
  const seen: number[] = [];
  let s = await procStatus(pid);
  for (let i = 0; i < 60; i++) {
    seen.push(s.rss);
    if (seen.length > 8 && seen[seen.length - 9]! - s.rss < 0.01 * s.rss) break;
    await Bun.sleep(250);
    s = await procStatus(pid);
  }
  return s;
}

interface StoreMem {
  keys: number;
  heap_used_before: number;
  heap_used_after: number;
  rss_before: number;
  rss_after: number;
  heap_bytes_per_key: number;
  rss_bytes_per_key: number;
  fill_s: number;
}

/** In the child: fill a Store with `keys` keys and report memory. */
async function storeChild(keys: number): Promise<void> {
  const value = "v".repeat(VALUE_BYTES);
  Bun.gc(true);
  const m0 = process.memoryUsage();
  const store = new Store();
  const t0 = performance.now();
  for (let i = 1; i <= keys; i++) {
    // The node parses each body: key and value are fresh flat strings, not shared or ropes.
    const b = JSON.parse(`{"key":"k${i}","value":"${value}"}`) as { key: string; value: string };
    store.set(b.key, b.value, i);
  }
  const fillS = (performance.now() - t0) / 1000;
  Bun.gc(true);
  const m1 = process.memoryUsage();
  if (store.size !== keys) throw new Error("store size mismatch");
  const out: StoreMem = {
    keys,
    heap_used_before: m0.heapUsed,
    heap_used_after: m1.heapUsed,
    rss_before: m0.rss,
    rss_after: m1.rss,
    heap_bytes_per_key: Math.round((m1.heapUsed - m0.heapUsed) / keys),
    rss_bytes_per_key: Math.round((m1.rss - m0.rss) / keys),
    fill_s: Math.round(fillS * 100) / 100,
  };
  process.stdout.write(`KVBENCH ${JSON.stringify(out)}\n`);
}

async function storeAlone(keys: number): Promise<StoreMem> {
  const proc = Bun.spawn([process.execPath, import.meta.path, "--store-child", String(keys)], { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  try {
    const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
    const m = /^KVBENCH (\{.*\})$/m.exec(out);
    if (!m) throw new Error(`store child exited ${code}: ${err}`);
    return JSON.parse(m[1]!) as StoreMem;
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await proc.exited;
  }
}

interface LatencyRow {
  name: string;
  result: LoadResult;
}

/**
 * Latency once the node holds `keys` keys: reads, overwrites and a 90/10 mix of random existing
 * keys (the store does not grow), then inserts of new keys, 64 connections. The cluster section measures the same shapes on
 * 10,000 keys; the difference is what a big store costs (collector pauses grow with it).
 */
async function latencyAtSize(node: NodeProc, keys: number, durationS: number): Promise<LatencyRow[]> {
  const rows: LatencyRow[] = [];
  for (const [name, setRatio] of [["GET", 0], ["SET (overwrites)", 1], ["90/10 GET/SET", 0.1]] as const)
    rows.push({ name, result: await load({ url: node.url, connections: 64, durationS, mix: { keys, keyPrefix: "k", setRatio, valueBytes: VALUE_BYTES } }) });
  // Last, as it grows the store past `keys`: inserts of new keys, where a store's growth shows.
  rows.push({ name: "SET (new keys)", result: await load({ url: `${node.url}/set`, method: "POST", connections: 64, durationS, bodies: { keyPrefix: "new-", valueBytes: VALUE_BYTES } }) });
  return rows;
}

async function nodeMemory(keys: number, extra: string[], latencyS = 0) {
  const c = await TestCluster.create();
  try {
    const node = await c.start({ leader: true, inMemory: true, extra });
    await node.health(); // the API has answered once
    await Bun.sleep(500);
    const before = await procStatus(node.proc.pid);
    const t0 = performance.now();
    const load = await preload(node, keys, "k", 900);
    const fillS = (performance.now() - t0) / 1000;
    const after = await settledStatus(node.proc.pid);
    const health = await node.health();
    const latency = latencyS > 0 ? await latencyAtSize(node, keys, latencyS) : [];
    return {
      latency,
      flags: extra.join(" ") || "(defaults)",
      keys: health.keys as number,
      rss_before: before.rss,
      rss_after: after.rss,
      rss_peak: after.hwm,
      bytes_per_key: Math.round((after.rss - before.rss) / keys),
      fill_s: Math.round(fillS * 10) / 10,
      fill_rps: Math.round(load.rps),
      errors: load.errors,
      non2xx: load.non2xx,
    };
  } finally {
    await c[Symbol.asyncDispose]();
  }
}

export async function run(ctx: BenchContext): Promise<unknown> {
  const keys = ctx.quick ? 100_000 : 1_000_000;
  const store = await storeAlone(keys);
  // --quick: the default node only, 1 s of each latency load.
  const nodes = [await nodeMemory(keys, [], ctx.quick ? 1 : 5)];
  if (!ctx.quick) nodes.push(await nodeMemory(keys, ["-history-entries", "1000"]));

  console.log(`\nresident memory for ${keys.toLocaleString("en-US")} keys of ${VALUE_BYTES}-byte values (ratios: vs the Store alone, RSS delta)`);
  printTable(
    ["what", "RSS before MiB", "RSS after MiB", "peak MiB", "bytes/key", "vs Store alone", "fill s", "fill req/s"],
    [
      ["Store alone (in a child), heapUsed", fmt(store.heap_used_before / MB, 1), fmt(store.heap_used_after / MB, 1), "", String(store.heap_bytes_per_key), "", fmt(store.fill_s, 2), ""],
      ["Store alone (in a child), RSS", fmt(store.rss_before / MB, 1), fmt(store.rss_after / MB, 1), "", String(store.rss_bytes_per_key), "1.00x", fmt(store.fill_s, 2), ""],
      ...nodes.map((n) => [
        `kvnode -leader -in-memory ${n.flags}`,
        fmt(n.rss_before / MB, 1),
        fmt(n.rss_after / MB, 1),
        fmt(n.rss_peak / MB, 1),
        String(n.bytes_per_key),
        fmtRatio(ratio(n.bytes_per_key, store.rss_bytes_per_key)),
        fmt(n.fill_s, 1),
        fmt(n.fill_rps, 0),
      ]),
    ],
  );
  for (const n of nodes) if (n.errors > 0 || n.non2xx > 0) console.log(`WARNING: ${n.flags}: ${n.errors} socket errors, ${n.non2xx} non-2xx answers while filling`);
  const lat = nodes[0]!.latency;
  console.log(`\nlatency of the default node holding ${keys.toLocaleString("en-US")} keys (random existing keys, 64 connections; compare the cluster section's 10,000-key rows)`);
  printTable(
    ["workload", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "errors", "non-2xx"],
    lat.map((r) => [r.name, fmt(r.result.rps, 0), fmt(r.result.p50_ms), fmt(r.result.p99_ms), fmt(r.result.p999_ms), String(r.result.errors), String(r.result.non2xx)]),
  );
  return {
    keys,
    value_bytes: VALUE_BYTES,
    store_alone: store,
    nodes: nodes.map((n) => ({ ...n, vs_store_alone_rss: ratio(n.bytes_per_key, store.rss_bytes_per_key) })),
  };
}

if (import.meta.main && process.argv[2] === "--store-child") await storeChild(Number(process.argv[3]));
