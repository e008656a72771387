/**
 * A/B of two kvnode builds, or of one build under two environments, by server CPU per request: the
 * steadiest figure on a shared machine. Not part of `bun run bench`; how the README's A/B figures
 * were measured.
 *
 *   bun bench/ab.ts --b-root /tmp/other-checkout          this tree (A) against another (B)
 *   bun bench/ab.ts --b-env MIMALLOC_PURGE_DELAY=-1        the same tree under another environment
 *   bun bench/ab.ts --followers 0 --rounds 8 --seconds 5   a lone node; more and longer rounds
 *   bun bench/ab.ts --b-keys 10000                         B overwrites 10,000 keys instead of inserting
 *   bun bench/ab.ts --get 10000 --followers 0              GETs of 10,000 random existing keys instead
 *   bun bench/ab.ts --fsync batch --followers 0            nodes with a data dir and that -fsync mode
 *
 * Starts two groups, A from this tree and B from --b-root (a leader and --followers followers
 * each; in memory, or with a data dir and that -fsync mode with --fsync), and a bare Bun.serve. Each round, for A then B (B then A in odd rounds), it runs 3 s
 * of POSTs on the bare server and then --seconds of POST /set of new keys on the group's leader
 * (wrk, 64 connections), and reads the CPU time (user + system, all threads) and minor page faults
 * of every node, and the bare server's CPU time, from /proc. Prints per round: req/s, the ratio to the bare run just before, the
 * leader's and followers' CPU µs per write and faults per request; then the means. Linux only.
 */
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { parseArgs } from "node:util";
import { type NodeProc, TestCluster } from "../test/support/cluster.ts";
import { waitFor } from "../test/support/wait.ts";
import { load, startBareServer } from "./load.ts";

const { values: o } = parseArgs({
  options: {
    "b-root": { type: "string" },
    "a-env": { type: "string", multiple: true, default: [] },
    "b-env": { type: "string", multiple: true, default: [] },
    "a-keys": { type: "string" },
    "b-keys": { type: "string" },
    followers: { type: "string", default: "2" },
    rounds: { type: "string", default: "6" },
    seconds: { type: "string", default: "5" },
    get: { type: "string" },
    fsync: { type: "string" },
  },
});
const rounds = Number(o.rounds);
const seconds = Number(o.seconds);
const followers = Number(o.followers);
/** --get N: measure GETs of N random existing keys (written before the rounds) instead of writes. */
const getKeys = Number(o.get ?? 0);
const Clusters = {
  A: TestCluster,
  B: o["b-root"] ? ((await import(resolve(o["b-root"], "test/support/cluster.ts"))).TestCluster as typeof TestCluster) : TestCluster,
};
const setup = {
  A: { env: o["a-env"], keys: Number(o["a-keys"] ?? 0) },
  B: { env: o["b-env"], keys: Number(o["b-keys"] ?? 0) },
};

function stat(pid: number): string[] {
  return readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
}
/** CPU time of a process (all its threads) in µs, from clock ticks (100 a second). */
const cpuUs = (pid: number) => {
  const f = stat(pid);
  return (Number(f[11]) + Number(f[12])) * 10_000;
};
const minorFaults = (pid: number) => Number(stat(pid)[7]);
const mean = (a: number[]) => a.reduce((s, v) => s + v, 0) / a.length;

const bare = await startBareServer();
const clusters: TestCluster[] = [];
try {
  const groups = {} as Record<"A" | "B", { leader: NodeProc; nodes: NodeProc[] }>;
  for (const name of ["A", "B"] as const) {
    const c = await Clusters[name].create();
    clusters.push(c);
    const prefix = setup[name].env.length ? ["env", ...setup[name].env] : [];
    const disk = o.fsync ? { inMemory: false, extra: ["-fsync", o.fsync] } : { inMemory: true };
    const leader = await c.start({ leader: true, ...disk, prefix });
    const nodes = [leader];
    for (let i = 0; i < followers; i++) nodes.push(await c.start({ ...disk, prefix }));
    if (followers > 0)
      await waitFor("the followers' links", async () => (((await leader.cluster()).replication?.followers ?? []) as unknown[]).length === followers, 20_000);
    await load({ url: `${leader.url}/set`, method: "POST", bodies: { keyPrefix: "warm-", valueBytes: 100 }, connections: 64, durationS: 2 });
    if (getKeys) {
      for (let i = 1; i <= getKeys; i += 500)
        await Promise.all(Array.from({ length: Math.min(500, getKeys - i + 1) }, (_, j) => leader.set(`g-${i + j}`, "v".repeat(100))));
    }
    groups[name] = { leader, nodes };
  }
  const sums = {
    A: { us: [] as number[], ratio: [] as number[], faults: [] as number[], bare: [] as number[] },
    B: { us: [] as number[], ratio: [] as number[], faults: [] as number[], bare: [] as number[] },
  };
  for (let r = 0; r < rounds; r++) {
    for (const name of r % 2 ? (["B", "A"] as const) : (["A", "B"] as const)) {
      const { leader, nodes } = groups[name];
      const bareCpu0 = cpuUs(bare.pid);
      const bareFlt0 = minorFaults(bare.pid);
      const b = getKeys
        ? await load({ url: `${bare.url}/get?key=k`, connections: 64, durationS: 3 })
        : await load({ url: `${bare.url}/set`, method: "POST", body: JSON.stringify({ key: "k", value: "x".repeat(100) }), connections: 64, durationS: 3 });
      const bareUs = (cpuUs(bare.pid) - bareCpu0) / b.requests;
      const bareFaults = (minorFaults(bare.pid) - bareFlt0) / b.requests;
      sums[name].bare.push(bareUs);
      const pids = nodes.map((n) => n.proc.pid);
      const cpu0 = pids.map(cpuUs);
      const flt0 = pids.map(minorFaults);
      const keys = setup[name].keys;
      const x = getKeys
        ? await load({ url: leader.url, mix: { keys: getKeys, setRatio: 0, keyPrefix: "g-" }, connections: 64, durationS: seconds })
        : await load({
        url: `${leader.url}/set`,
        method: "POST",
        bodies: { keyPrefix: keys ? `${name}-` : `r${r}${name}-`, valueBytes: 100, keys: keys || undefined },
        connections: 64,
        durationS: seconds,
      });
      const us = pids.map((p, i) => (cpuUs(p) - cpu0[i]!) / x.requests);
      const faults = pids.map((p, i) => (minorFaults(p) - flt0[i]!) / x.requests);
      sums[name].us.push(us[0]!);
      sums[name].ratio.push(x.rps / b.rps);
      sums[name].faults.push(faults[0]!);
      console.log(
        `${name} round ${r}: bare ${Math.round(b.rps)} req/s (${bareUs.toFixed(1)} µs CPU, ${bareFaults.toFixed(3)} faults each), kvnode ${Math.round(x.rps)} req/s (${(x.rps / b.rps).toFixed(2)}x), p99 ${x.p99_ms} ms; ` +
          `CPU µs per request (leader, followers) ${us.map((v) => v.toFixed(1)).join(" ")}; faults per request ${faults.map((v) => v.toFixed(3)).join(" ")}`,
      );
    }
  }
  for (const name of ["A", "B"] as const)
    console.log(`${name}: leader CPU ${mean(sums[name].us).toFixed(2)} µs per request (bare server ${mean(sums[name].bare).toFixed(2)}), ${mean(sums[name].ratio).toFixed(3)}x of bare, ${mean(sums[name].faults).toFixed(3)} faults per request`);
} finally {
  for (const c of clusters) await c[Symbol.asyncDispose]();
  await bare.stop();
}
