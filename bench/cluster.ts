/**
 * HTTP throughput and latency of real kvnode processes, each figure also as a ratio to a bare
 * Bun.serve measured in the same run with the same load (this machine is shared and noisy):
 *
 *   bare Bun.serve   (child process) answering a fixed small JSON: GET, POST, 90/10 mix
 *   3-node group     in-memory leader + 2 followers, 10k keys preloaded: GET, SET (with the
 *                    followers' replication lag sampled every ~20 ms), 90/10 GET/SET mix
 *   3-node sync      the same group with -sync-replicas 2 (a write is answered once both
 *                    followers acknowledged it): SET
 *   single node      the leader alone (no followers), same keys: GET, SET
 *   forwarding       2 groups, group 1 drained: the same GET/SET load on group 0's leader (owner)
 *                    and on group 1's node (every request forwarded), as a ratio of the two
 *
 * Load: 64 connections, 10 s a run (1 s with --quick), after a 1 s warm-up per server.
 * Each kvnode run is bracketed by 3 s of the same load on the bare server, which stays up idle in
 * its own process; its ratios are to the mean of those two bare runs, so a busy spell of the
 * machine during one run skews its ratio less. The spread of the two bare runs is printed as a
 * noise gauge. --quick skips the brackets: ratios are to the bare runs at the start.
 */
import type { BenchContext } from "./context.ts";
import { type LoadOptions, type LoadResult, fmt, fmtRatio, load, loadTool, percentile, printTable, ratio, startBareServer } from "./load.ts";
import { type NodeProc, TestCluster } from "../test/support/cluster.ts";
import { waitFor } from "../test/support/wait.ts";

const CONNECTIONS = 64;
const PRELOAD_KEYS = 10_000;
const VALUE_BYTES = 100;

type Shape = "get" | "set" | "mix";

/** The three request shapes, identical for the bare server and for kvnode. */
function shape(s: Shape, origin: string, durationS: number, runId: string): LoadOptions {
  const base = { connections: CONNECTIONS, durationS };
  if (s === "get") return { ...base, url: origin, mix: { keys: PRELOAD_KEYS, keyPrefix: "k", setRatio: 0, valueBytes: VALUE_BYTES } };
  if (s === "mix") return { ...base, url: origin, mix: { keys: PRELOAD_KEYS, keyPrefix: "k", setRatio: 0.1, valueBytes: VALUE_BYTES } };
  // SET: distinct new keys each run, 100-byte values.
  return { ...base, url: `${origin}/set`, method: "POST", bodies: { keyPrefix: `s${runId}-`, valueBytes: VALUE_BYTES } };
}

export interface Row extends LoadResult {
  name: string;
  shape: Shape;
  vs_bare: { rps: number | null; p50: number | null; p99: number | null; p999: number | null };
  /** The bare runs this row is compared with; spread = max/min of their req/s (noise indicator). */
  bare: { before: LoadResult; after: LoadResult; spread: number | null };
}

/** Write keys k1..kN (100-byte values) with 64 connections until the node holds them all. */
export async function preload(node: NodeProc, keys: number, keyPrefix = "k", timeoutS = 600): Promise<LoadResult> {
  const r = await load({
    url: `${node.url}/set`,
    method: "POST",
    bodies: { keyPrefix, valueBytes: VALUE_BYTES, keys },
    connections: CONNECTIONS,
    durationS: timeoutS,
    until: async () => (await node.health()).keys >= keys,
  });
  const have = (await node.health()).keys;
  if (have < keys) throw new Error(`preload: the node holds ${have} keys, not ${keys}`);
  return r;
}

async function sampleReplication(leader: NodeProc, stopped: () => boolean) {
  const lag: number[] = [];
  const delay: number[] = [];
  let samples = 0;
  let failed = 0;
  let maxFollowers = 0;
  while (!stopped()) {
    const t = performance.now();
    try {
      const c = await leader.cluster();
      const fs = (c.replication?.followers ?? []) as { lag: number; replication_delay_ms: number }[];
      maxFollowers = Math.max(maxFollowers, fs.length);
      for (const f of fs) {
        lag.push(f.lag);
        delay.push(f.replication_delay_ms);
      }
      samples++;
    } catch {
      failed++;
    }
    const wait = 20 - (performance.now() - t);
    if (wait > 0) await Bun.sleep(wait);
  }
  return { lag, delay, samples, failed, maxFollowers };
}

/** Milliseconds until every follower's lag (as the leader sees it) is 0. */
async function catchUpMs(leader: NodeProc, timeoutMs = 60_000): Promise<number | null> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    try {
      const fs = ((await leader.cluster()).replication?.followers ?? []) as { lag: number }[];
      if (fs.length > 0 && fs.every((f) => f.lag === 0)) return Math.round(performance.now() - t0);
    } catch {}
    await Bun.sleep(10);
  }
  return null;
}

export async function run(ctx: BenchContext): Promise<unknown> {
  // --quick: short runs, and ratios to the bare runs at the start instead of bracketing each run.
  const durationS = ctx.quick ? 1 : 10;
  const bracketS = ctx.quick ? 0 : 3;
  const warmS = 1;
  const runId = Math.random().toString(36).slice(2, 7);
  const tool = loadTool();
  console.log(
    `load generator: ${tool}, ${CONNECTIONS} connections, ${durationS} s a run (+${warmS} s warm-up a server); ` +
      (bracketS > 0
        ? `each kvnode run is bracketed by ${bracketS} s of the same load on the bare server just before and just after`
        : "--quick: ratios are to the bare runs at the start, and 1 s runs are rough (the JIT is still warming): use a full run for figures"),
  );

  const rows: Row[] = [];
  let replication: Record<string, unknown> = {};
  // The bare server stays up (idle, in its own process) for the whole section.
  const srv = await startBareServer();
  try {
    // --- baseline: bare Bun.serve, full-length runs
    const bare: Partial<Record<Shape, LoadResult>> = {};
    await load(shape("mix", srv.url, warmS, runId));
    for (const s of ["get", "set", "mix"] as const) bare[s] = await load(shape(s, srv.url, durationS, `${runId}b`));
    for (const s of ["get", "set", "mix"] as const) {
      const b = bare[s]!;
      rows.push({ name: `bare Bun.serve ${s === "set" ? "POST" : s === "get" ? "GET" : "90/10 mix"}`, shape: s, ...b, vs_bare: { rps: 1, p50: 1, p99: 1, p999: 1 }, bare: { before: b, after: b, spread: 1 } });
    }

    /** Bare (bracketS) - kvnode (durationS) - bare (bracketS); ratios to the mean of the two bare runs. */
    let bracket = 0;
    const measure = async (name: string, s: Shape, origin: string, during?: () => () => void): Promise<Row> => {
      ++bracket;
      const before = bracketS > 0 ? await load(shape(s, srv.url, bracketS, `${runId}x${bracket}`)) : bare[s]!;
      const stop = during?.();
      let r: LoadResult;
      try {
        r = await load(shape(s, origin, durationS, `${runId}k${bracket}`));
      } finally {
        stop?.();
      }
      const after = bracketS > 0 ? await load(shape(s, srv.url, bracketS, `${runId}y${bracket}`)) : bare[s]!;
      const mean = (f: (x: LoadResult) => number) => (f(before) + f(after)) / 2;
      const out: Row = {
        name,
        shape: s,
        ...r,
        vs_bare: { rps: ratio(r.rps, mean((x) => x.rps)), p50: ratio(r.p50_ms, mean((x) => x.p50_ms)), p99: ratio(r.p99_ms, mean((x) => x.p99_ms)), p999: ratio(r.p999_ms, mean((x) => x.p999_ms)) },
        bare: { before, after, spread: ratio(Math.max(before.rps, after.rps), Math.min(before.rps, after.rps)) },
      };
      rows.push(out);
      return out;
    };

    // --- 3-node group: in-memory leader + 2 followers
    const c3 = await TestCluster.create();
    try {
      const leader = await c3.start({ leader: true, inMemory: true });
      const followers = [await c3.start({ inMemory: true }), await c3.start({ inMemory: true })];
      await preload(leader, PRELOAD_KEYS);
      for (const f of followers) await c3.awaitInSync(leader, f, 60_000);
      await load(shape("get", leader.url, warmS, runId));

      await measure("3-node: GET on leader", "get", leader.url);

      let sampler: ReturnType<typeof sampleReplication> | null = null;
      await measure("3-node: SET on leader", "set", leader.url, () => {
        let done = false;
        sampler = sampleReplication(leader, () => done);
        return () => (done = true);
      });
      const rep = await sampler!;
      const catchUp = await catchUpMs(leader);
      replication = {
        samples: rep.samples,
        failed_samples: rep.failed,
        followers: rep.maxFollowers,
        lag_writes_p50: percentile(rep.lag, 50),
        lag_writes_p99: percentile(rep.lag, 99),
        lag_writes_max: rep.lag.length ? Math.max(...rep.lag) : null,
        delay_ms_p50: percentile(rep.delay, 50),
        delay_ms_p99: percentile(rep.delay, 99),
        delay_ms_max: rep.delay.length ? Math.max(...rep.delay) : null,
        catch_up_ms_after_load: catchUp,
      };

      await measure("3-node: 90/10 GET/SET on leader", "mix", leader.url);
      for (const f of followers) await c3.awaitInSync(leader, f, 60_000);
    } finally {
      await c3[Symbol.asyncDispose]();
    }

    // --- 3-node group answering writes only once both followers have them (-sync-replicas 2)
    const cs = await TestCluster.create();
    try {
      const leader = await cs.start({ leader: true, inMemory: true, extra: ["-sync-replicas", "2"] });
      const followers = [await cs.start({ inMemory: true }), await cs.start({ inMemory: true })];
      for (const f of followers) await cs.awaitInSync(leader, f, 60_000);
      await preload(leader, PRELOAD_KEYS);
      await measure("3-node, -sync-replicas 2: SET on leader", "set", leader.url);
    } finally {
      await cs[Symbol.asyncDispose]();
    }

    // --- single node: the leader alone
    const c1 = await TestCluster.create();
    try {
      const leader = await c1.start({ leader: true, inMemory: true });
      await preload(leader, PRELOAD_KEYS);
      await load(shape("get", leader.url, warmS, runId));
      await measure("single node: GET", "get", leader.url);
      await measure("single node: SET", "set", leader.url);
    } finally {
      await c1[Symbol.asyncDispose]();
    }

    // --- forwarding: two groups, group 1 drained so group 0 owns every key; the same load sent
    // to group 0's leader (the owner) and to group 1's node (every request forwarded to it).
    const c2 = await TestCluster.create();
    try {
      const owner = await c2.start({ leader: true, group: 0, inMemory: true });
      const other = await c2.start({ leader: true, group: 1, inMemory: true });
      await c2.awaitMembership([owner, other], 2);
      const drained = await other.request("/admin/drain", { method: "POST" });
      if (drained.status !== 200) throw new Error(`drain failed: ${JSON.stringify(drained.body)}`);
      await waitFor("group 1 to leave the ring", async () => (await other.cluster()).groups.every((g: any) => g.group_id === 0 || g.ring_share === 0));
      await preload(owner, PRELOAD_KEYS);
      await load(shape("get", other.url, warmS, runId));
      await measure("2 groups: GET on the owner", "get", owner.url);
      await measure("2 groups: GET on a non-owner (forwarded)", "get", other.url);
      await measure("2 groups: SET on the owner", "set", owner.url);
      await measure("2 groups: SET on a non-owner (forwarded)", "set", other.url);
    } finally {
      await c2[Symbol.asyncDispose]();
    }
  } finally {
    await srv.stop();
  }

  console.log("");
  printTable(
    ["workload", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "req/s vs bare", "p50 vs bare", "p99 vs bare", "p99.9 vs bare", "bare spread", "errors", "non-2xx"],
    rows.map((r) => [r.name, fmt(r.rps, 0), fmt(r.p50_ms), fmt(r.p99_ms), fmt(r.p999_ms), fmtRatio(r.vs_bare.rps), fmtRatio(r.vs_bare.p50), fmtRatio(r.vs_bare.p99), fmtRatio(r.vs_bare.p999), r.name.startsWith("bare") ? "" : fmtRatio(r.bare.spread), String(r.errors), String(r.non2xx)]),
  );
  console.log(
    "(ratios: kvnode / bare Bun.serve under the same request shape — GET and mix rows vs bare GET / mix, SET rows vs bare POST — " +
      "averaged over the bare runs just before and after; bare spread: max/min req/s of those two, 1.00x = a quiet machine)",
  );
  const r = replication as Record<string, number | null>;
  console.log(
    `replication during the SET run (${r.samples} samples of the leader's /cluster, ~20 ms apart): ` +
      `lag p50 ${fmt(r.lag_writes_p50, 0)} / p99 ${fmt(r.lag_writes_p99, 0)} writes (max ${fmt(r.lag_writes_max, 0)}), ` +
      `replication_delay_ms p50 ${fmt(r.delay_ms_p50, 0)} / p99 ${fmt(r.delay_ms_p99, 0)} ms (max ${fmt(r.delay_ms_max, 0)}); ` +
      `followers caught up ${fmt(r.catch_up_ms_after_load, 0)} ms after the load stopped`,
  );
  const sg = rows.find((x) => x.name === "single node: GET")!;
  const ss = rows.find((x) => x.name === "single node: SET")!;
  console.log(`single-node GET vs bare Bun.serve: ${fmtRatio(sg.vs_bare.rps)} the requests/s, p99 ${fmtRatio(sg.vs_bare.p99)}; single-node SET vs bare POST: ${fmtRatio(ss.vs_bare.rps)} the requests/s`);
  const row = (n: string) => rows.find((x) => x.name === n)!;
  const forwarding = {
    get: ratio(row("2 groups: GET on a non-owner (forwarded)").rps, row("2 groups: GET on the owner").rps),
    set: ratio(row("2 groups: SET on a non-owner (forwarded)").rps, row("2 groups: SET on the owner").rps),
  };
  console.log(`forwarded / owner requests/s (same run): GET ${fmtRatio(forwarding.get)}, SET ${fmtRatio(forwarding.set)} (aim: 0.6 or more)`);
  for (const x of rows) if (x.bare.spread !== null && x.bare.spread > 1.15) console.log(`NOTE: ${x.name}: the bare server's req/s moved ${fmtRatio(x.bare.spread)} around this run: the machine was busy, take its ratios with care`);
  for (const x of rows) if (x.errors > 0 || x.non2xx > 0) console.log(`WARNING: ${x.name}: ${x.errors} socket errors, ${x.non2xx} non-2xx answers`);

  return { tool, connections: CONNECTIONS, duration_s: durationS, bracket_s: bracketS, preload_keys: PRELOAD_KEYS, value_bytes: VALUE_BYTES, rows, replication, forwarding };
}
