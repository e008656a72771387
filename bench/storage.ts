/**
 * Durable kvnode: what the write-ahead log, recovery and the fsync modes cost. Each headline
 * figure is also given as a ratio to a baseline measured in the same run:
 *
 *   (a) log append: LogWriter on a temp file, fsync always / batch (2 ms) / never, 100-byte and
 *       4 KiB values, appended in bursts of 256 (not awaited) then waiting for the last one to be
 *       durable, so group commit works. Baseline: the same bursts written by hand (one write, and
 *       one fdatasync unless `never`, a burst): what the disk allows.
 *       Also the record encoding (frame + CRC-32) against Bun.hash.crc32 of the same bytes.
 *   (b) recovery: a data dir of 1,000,000 keys (100,000 with --quick), built directly as a
 *       snapshot plus a log segment of Put records; time from spawning `kvnode -leader -data-dir`
 *       to its "kvnode ready" line, against the same start on an empty data dir; and in-process
 *       recover() time.
 *   (c) POST /set with 64 connections on a lone leader with -fsync always, batch, never and
 *       -in-memory, each as a ratio to -in-memory (run first and again last; their mean).
 */
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { open } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BenchContext } from "./context.ts";
import { type LoadResult, fmt, fmtRatio, load, printTable, ratio } from "./load.ts";
import { freeUdpPort, mainScript, repoRoot, TestCluster, uniqueName } from "../test/support/cluster.ts";
import { frameBytesMax } from "../src/lib/limits.ts";
import { silentLogger } from "../src/lib/log.ts";
import { crc32 } from "../src/lib/crc32.ts";
import { FrameType, encodeFrame } from "../src/protocol/frame.ts";
import { Store, type Entry } from "../src/store/store.ts";
import { type FsyncMode, LogWriter } from "../src/wal/log.ts";
import { encodeRecord } from "../src/wal/record.ts";
import { loadSnapshot, writeSnapshot } from "../src/wal/snapshot.ts";
import { recover } from "../src/wal/recover.ts";
import { snapName, unlockDir, walName, writeIdentity } from "../src/wal/files.ts";

const BURST = 256;
const FSYNC_MS = 2;

// ------------------------------------------------------------------ (a) log append

function recordPool(valueBytes: number, n = 1024): Buffer[] {
  const pool: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const key = `key:${i}`;
    const value = `${i}:`.padEnd(valueBytes, "v");
    pool.push(encodeRecord(encodeFrame({ type: FrameType.Put, group: 0, term: 1, seq: i + 1, key, value })));
  }
  return pool;
}

interface AppendResult {
  records: number;
  bytes: number;
  seconds: number;
  records_per_s: number;
  mb_per_s: number;
  flushes: number;
  records_per_flush: number;
}

const summarize = (records: number, bytes: number, seconds: number, flushes: number): AppendResult => ({
  records,
  bytes,
  seconds: Math.round(seconds * 1000) / 1000,
  records_per_s: Math.round(records / seconds),
  mb_per_s: Math.round((bytes / 1e6 / seconds) * 10) / 10,
  flushes,
  records_per_flush: flushes ? Math.round((records / flushes) * 10) / 10 : 0,
});

/** LogWriter: bursts of BURST appends, then wait until the last is durable; for `seconds` or `maxBytes`. */
async function logWriterAppend(dir: string, mode: FsyncMode, pool: Buffer[], seconds: number, maxBytes: number): Promise<AppendResult> {
  const path = join(dir, walName("be", 1));
  let target = 0;
  let wake: (() => void) | null = null;
  let failure: Error | null = null;
  const w = await LogWriter.open(path, 0, {
    mode,
    fsyncMs: FSYNC_MS,
    durableSeq: 0,
    onDurable(seq) {
      if (seq >= target && wake) {
        const f = wake;
        wake = null;
        f();
      }
    },
    onFailed(from, e) {
      failure = new Error(`log write failed from ${from}: ${e.code ?? e.message}`);
      wake?.();
    },
  });
  let seq = 0;
  let bytes = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  try {
    while (performance.now() < end && bytes < maxBytes) {
      const durable = new Promise<void>((r) => (wake = r));
      for (let i = 0; i < BURST; i++) {
        const rec = pool[seq % pool.length]!;
        bytes += rec.length;
        w.append(++seq, rec);
      }
      target = seq;
      await durable;
      if (failure) throw failure;
    }
    const elapsed = (performance.now() - t0) / 1000;
    return summarize(seq, bytes, elapsed, w.stats.flushes);
  } finally {
    await w.close();
    rmSync(path, { force: true });
  }
}

/** Baseline: the same bursts, one write (and one fdatasync unless `sync` is false) each, by hand. */
async function rawAppend(dir: string, sync: boolean, pool: Buffer[], seconds: number, maxBytes: number): Promise<AppendResult> {
  const path = join(dir, "raw.log");
  const fh = await open(path, "a");
  let seq = 0;
  let bytes = 0;
  let flushes = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  try {
    while (performance.now() < end && bytes < maxBytes) {
      const burst: Buffer[] = [];
      for (let i = 0; i < BURST; i++) burst.push(pool[seq++ % pool.length]!);
      const buf = Buffer.concat(burst);
      let off = 0;
      while (off < buf.length) off += (await fh.write(buf, off, buf.length - off)).bytesWritten;
      if (sync) await fh.datasync();
      bytes += buf.length;
      flushes++;
    }
    return summarize(seq, bytes, (performance.now() - t0) / 1000, flushes);
  } finally {
    await fh.close();
    rmSync(path, { force: true });
  }
}

/** ns per call of fn, over about `ms` milliseconds. */
function nsPerOp(fn: () => unknown, ms: number): number {
  for (let i = 0; i < 1000; i++) fn();
  let n = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < ms) {
    for (let i = 0; i < 256; i++) fn();
    n += 256;
    t = performance.now();
  }
  return Math.round(((t - t0) * 1e6) / n);
}

async function logAppend(quick: boolean) {
  const seconds = quick ? 0.4 : 3;
  const maxBytes = 256 * 1024 * 1024;
  const dir = mkdtempSync(join(tmpdir(), "kvnode-bench-log-"));
  const rows: Record<string, unknown>[] = [];
  const encoding: Record<string, unknown>[] = [];
  try {
    for (const valueBytes of [100, 4096]) {
      const pool = recordPool(valueBytes);
      const rawSync = await rawAppend(dir, true, pool, seconds, maxBytes);
      const rawNoSync = await rawAppend(dir, false, pool, seconds, maxBytes);
      for (const mode of ["always", "batch", "never"] as const) {
        const r = await logWriterAppend(dir, mode, pool, seconds, maxBytes);
        const base = mode === "never" ? rawNoSync : rawSync;
        rows.push({ value_bytes: valueBytes, mode: mode === "batch" ? `batch ${FSYNC_MS}ms` : mode, ...r, baseline: mode === "never" ? "raw write" : "raw write+fdatasync", vs_baseline: ratio(r.records_per_s, base.records_per_s) });
      }
      rows.push({ value_bytes: valueBytes, mode: "raw write+fdatasync (baseline)", ...rawSync, baseline: null, vs_baseline: 1 });
      rows.push({ value_bytes: valueBytes, mode: "raw write (baseline)", ...rawNoSync, baseline: null, vs_baseline: 1 });

      // Encoding one record: frame + kvnode's CRC-32, against the frame alone + Bun's native CRC-32.
      const key = "user:12345:profile:abcde";
      const value = "v".repeat(valueBytes);
      const frame = { type: FrameType.Put, group: 0, term: 1, seq: 123456, key, value } as const;
      const bytes = encodeFrame(frame);
      const encodeNs = nsPerOp(() => encodeRecord(encodeFrame(frame)), quick ? 100 : 300);
      const crcNs = nsPerOp(() => crc32(bytes), quick ? 100 : 300);
      const bunCrcNs = nsPerOp(() => Bun.hash.crc32(bytes), quick ? 100 : 300);
      encoding.push({ value_bytes: valueBytes, encode_record_ns: encodeNs, crc32_ns: crcNs, bun_crc32_ns: bunCrcNs, crc32_vs_bun: ratio(crcNs, bunCrcNs), crc32_share_of_encode: ratio(crcNs, encodeNs) });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  console.log(`\n(a) log append: LogWriter, bursts of ${BURST} then wait for durable, ${seconds} s or 256 MiB a case (ratio: vs the same bursts written by hand)`);
  printTable(
    ["value", "mode", "records/s", "MB/s", "records/flush", "vs baseline"],
    rows.map((r) => [`${r.value_bytes} B`, String(r.mode), fmt(r.records_per_s as number, 0), fmt(r.mb_per_s as number, 1), fmt(r.records_per_flush as number, 1), r.baseline ? `${fmtRatio(r.vs_baseline as number | null)} ${r.baseline}` : ""]),
  );
  console.log(`\nrecord encoding (encodeRecord(encodeFrame(Put))): ns per record; CRC-32 of the frame, kvnode's vs Bun.hash.crc32`);
  printTable(
    ["value", "encode ns", "crc32 ns", "Bun crc32 ns", "crc32 vs Bun", "crc32 share"],
    encoding.map((e) => [`${e.value_bytes} B`, fmt(e.encode_record_ns as number, 0), fmt(e.crc32_ns as number, 0), fmt(e.bun_crc32_ns as number, 0), fmtRatio(e.crc32_vs_bun as number | null), fmtRatio(e.crc32_share_of_encode as number | null)]),
  );
  return { seconds_per_case: seconds, burst: BURST, fsync_ms: FSYNC_MS, rows, encoding };
}

// ------------------------------------------------------------------ (b) recovery

const hex = (bytes: number) => Buffer.from(crypto.getRandomValues(new Uint8Array(bytes))).toString("hex");

/** A data dir holding `keys` keys: a snapshot of keys - logKeys, then a log of logKeys Puts of new keys. */
async function buildDataDir(dir: string, keys: number, logKeys: number) {
  const history = hex(8);
  const snapKeys = keys - logKeys;
  const entries: [string, Entry][] = new Array(snapKeys);
  for (let i = 1; i <= snapKeys; i++) entries[i - 1] = [`key:${i}`, { value: `${i}:`.padEnd(100, "v"), version: i }];
  const snap = await writeSnapshot(dir, { group: 0, term: 1, seq: snapKeys, historyId: history }, entries);
  entries.length = 0;
  const recs: Buffer[] = [];
  let walBytes = 0;
  for (let j = 1; j <= logKeys; j++) {
    const seq = snapKeys + j;
    const rec = encodeRecord(encodeFrame({ type: FrameType.Put, group: 0, term: 1, seq, key: `key:${seq}`, value: `${seq}:`.padEnd(100, "v") }));
    recs.push(rec);
    walBytes += rec.length;
  }
  writeFileSync(join(dir, walName(history, snapKeys + 1)), Buffer.concat(recs, walBytes));
  writeIdentity(dir, { node_id: hex(8), history_id: history, term: 1, group: 0 });
  return { history, snapshot: snap.name, snapshot_bytes: snap.bytes, wal_bytes: walBytes, snapshot_keys: snapKeys, log_records: logKeys };
}

/** Spawn `kvnode -leader -data-dir dir`; ms from spawn to its ready line; keys it holds; then stop it. */
async function timeStart(dir: string, discoveryPort: number, cluster: string): Promise<{ ready_ms: number; keys: number; rss_bytes: number; exit: number }> {
  const t0 = performance.now();
  const proc = Bun.spawn(
    [process.execPath, mainScript, "-leader", "-port", "0", "-api", "0", "-host", "127.0.0.1", "-discovery-port", String(discoveryPort), "-cluster", cluster, "-heartbeat-ms", "1000", "-data-dir", dir],
    { cwd: repoRoot, stdin: "ignore", stdout: "ignore", stderr: "pipe" },
  );
  try {
    const reader = proc.stderr.getReader();
    const dec = new TextDecoder();
    let log = "";
    let readyMs = 0;
    let api = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`kvnode exited before it was ready:\n${log}`);
      log += dec.decode(value, { stream: true });
      const m = /kvnode ready .*api=(http:\/\/[\d.]+:\d+)/.exec(log);
      if (m) {
        readyMs = performance.now() - t0;
        api = m[1]!;
        break;
      }
      if (performance.now() - t0 > 300_000) throw new Error(`kvnode not ready after 300 s:\n${log}`);
    }
    void (async () => {
      try {
        while (!(await reader.read()).done);
      } catch {}
    })();
    const { memory } = (await (await fetch(`${api}/cluster`, { signal: AbortSignal.timeout(10_000) })).json()) as { memory: { keys: number; rss_bytes: number } };
    proc.kill("SIGTERM");
    const exit = await Promise.race([proc.exited, Bun.sleep(30_000).then(() => -1)]);
    return { ready_ms: Math.round(readyMs), keys: memory.keys, rss_bytes: memory.rss_bytes, exit };
  } finally {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGKILL");
    await proc.exited;
  }
}

async function recovery(quick: boolean) {
  const keys = quick ? 100_000 : 1_000_000;
  const logKeys = quick ? 10_000 : 100_000;
  const root = mkdtempSync(join(tmpdir(), "kvnode-bench-recover-"));
  try {
    const discoveryPort = await freeUdpPort();
    const cluster = uniqueName("bench");
    const dir = join(root, "full");
    const emptyDir = join(root, "empty");
    mkdirSync(dir);
    const tb = performance.now();
    const built = await buildDataDir(dir, keys, logKeys);
    const buildS = (performance.now() - tb) / 1000;

    // Baseline first (warms the page cache for bun itself), then the full dir.
    const empty = await timeStart(emptyDir, discoveryPort, cluster);
    const full = await timeStart(dir, discoveryPort, cluster);
    if (full.keys !== keys) throw new Error(`recovered node holds ${full.keys} keys, expected ${keys}`);

    // In-process: loading the snapshot alone, then the whole recover() into a Store.
    const fmax = frameBytesMax(1024, 1 << 20);
    const tr = performance.now();
    const loaded = new Store();
    const snap = loadSnapshot(join(dir, snapName(built.history, built.snapshot_keys)), fmax, loaded);
    const readSnapMs = performance.now() - tr;
    const snapEntries = snap.keys;
    loaded.replaceAll([]);
    Bun.gc(true);
    const store = new Store();
    const t1 = performance.now();
    const r = recover(store, { dir, group: 0, frameBytesMax: fmax, newId: () => hex(8), log: silentLogger });
    const recoverMs = performance.now() - t1;
    unlockDir(dir);
    if (store.size !== keys) throw new Error(`recover() loaded ${store.size} keys, expected ${keys}`);

    const result = {
      keys,
      snapshot_keys: built.snapshot_keys,
      log_records: built.log_records,
      snapshot_mb: Math.round(built.snapshot_bytes / 1e5) / 10,
      log_mb: Math.round(built.wal_bytes / 1e5) / 10,
      build_s: Math.round(buildS * 100) / 100,
      start_to_ready_s: full.ready_ms / 1000,
      empty_start_to_ready_s: empty.ready_ms / 1000,
      vs_empty_start: ratio(full.ready_ms, empty.ready_ms),
      recovery_s_net: Math.round(full.ready_ms - empty.ready_ms) / 1000,
      keys_per_s: Math.round(keys / (Math.max(1, full.ready_ms - empty.ready_ms) / 1000)),
      in_process_recover_s: Math.round(recoverMs) / 1000,
      in_process_read_snapshot_s: Math.round(readSnapMs) / 1000,
      replayed: r.replayed,
      snapshot_entries_read: snapEntries,
      rss_mib_when_ready: Math.round(full.rss_bytes / 2 ** 20),
      empty_rss_mib_when_ready: Math.round(empty.rss_bytes / 2 ** 20),
      exit_codes: [empty.exit, full.exit],
    };
    console.log(`\n(b) recovery of ${keys.toLocaleString("en-US")} keys (snapshot ${result.snapshot_mb} MB of ${built.snapshot_keys.toLocaleString("en-US")} keys + log ${result.log_mb} MB of ${logKeys.toLocaleString("en-US")} Puts; built in ${fmt(buildS)} s)`);
    printTable(
      ["what", "seconds", "vs empty-dir start", "RSS when ready MiB"],
      [
        ["kvnode -leader, spawn to ready (empty dir, baseline)", fmt(result.empty_start_to_ready_s, 3), "1.00x", String(result.empty_rss_mib_when_ready)],
        [`kvnode -leader, spawn to ready (${keys.toLocaleString("en-US")} keys)`, fmt(result.start_to_ready_s, 3), fmtRatio(result.vs_empty_start), String(result.rss_mib_when_ready)],
        ["in-process recover() into a Store", fmt(result.in_process_recover_s, 3), "", ""],
        ["  of which loadSnapshot() alone", fmt(result.in_process_read_snapshot_s, 3), "", ""],
      ],
    );
    console.log(`net recovery ${fmt(result.recovery_s_net, 3)} s = ${result.keys_per_s.toLocaleString("en-US")} keys/s`);
    return result;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ (c) POST /set per fsync mode

async function setPerMode(quick: boolean) {
  const durationS = quick ? 1 : 10;
  // -in-memory first and again last: the baseline is the mean of the two, which brackets the rest.
  const order = ["in-memory", "always", "batch", "never", "in-memory"] as const;
  const runId = Math.random().toString(36).slice(2, 7);
  const runs: { mode: (typeof order)[number]; r: LoadResult & { records_per_flush: number | null } }[] = [];
  for (const [i, mode] of order.entries()) {
    const c = await TestCluster.create();
    try {
      const node = await c.start(mode === "in-memory" ? { leader: true, inMemory: true } : { leader: true, extra: ["-fsync", mode, "-fsync-ms", String(FSYNC_MS)] });
      const set = (s: number, tag: string) => load({ url: `${node.url}/set`, method: "POST", bodies: { keyPrefix: `${tag}${runId}${i}-`, valueBytes: 100 }, connections: 64, durationS: s });
      await set(1, "w");
      const before = (await node.cluster()).storage ?? {};
      const r = await set(durationS, "m");
      const after = (await node.cluster()).storage ?? {};
      const flushes = (after.log_flushes ?? 0) - (before.log_flushes ?? 0);
      const recs = (after.log_records ?? 0) - (before.log_records ?? 0);
      runs.push({ mode, r: { ...r, records_per_flush: flushes > 0 ? Math.round((recs / flushes) * 10) / 10 : null } });
    } finally {
      await c[Symbol.asyncDispose]();
    }
  }
  const mem = runs.filter((x) => x.mode === "in-memory").map((x) => x.r);
  const baseRps = (mem[0]!.rps + mem[1]!.rps) / 2;
  const baseP99 = (mem[0]!.p99_ms + mem[1]!.p99_ms) / 2;
  const rows = runs.map(({ mode, r }, i) => ({
    mode: mode === "in-memory" ? `-in-memory (${i === 0 ? "first" : "last"})` : `-fsync ${mode}`,
    ...r,
    rps_vs_in_memory: ratio(r.rps, baseRps),
    p99_vs_in_memory: ratio(r.p99_ms, baseP99),
  }));
  console.log(`\n(c) POST /set, 64 connections, ${durationS} s, lone leader (ratio: vs the mean of the two -in-memory runs, first and last; the aim: batch >= 0.80x)`);
  printTable(
    ["mode", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "req/s vs in-memory", "p99 vs in-memory", "records/fsync", "errors", "non-2xx"],
    rows.map((r) => [r.mode, fmt(r.rps, 0), fmt(r.p50_ms), fmt(r.p99_ms), fmt(r.p999_ms), fmtRatio(r.rps_vs_in_memory), fmtRatio(r.p99_vs_in_memory), fmt(r.records_per_flush, 1), String(r.errors), String(r.non2xx)]),
  );
  const batch = rows.find((r) => r.mode === "-fsync batch")!;
  console.log(`-fsync batch is ${fmtRatio(batch.rps_vs_in_memory)} of -in-memory: ${batch.rps_vs_in_memory !== null && batch.rps_vs_in_memory >= 0.8 ? "meets" : "misses"} the 80% aim`);
  const spread = ratio(Math.max(mem[0]!.rps, mem[1]!.rps), Math.min(mem[0]!.rps, mem[1]!.rps));
  if (spread !== null && spread > 1.15) console.log(`NOTE: the two -in-memory runs differ ${fmtRatio(spread)}: the machine was busy, take these ratios with care`);
  for (const r of rows) if (r.errors > 0 || r.non2xx > 0) console.log(`WARNING: ${r.mode}: ${r.errors} socket errors, ${r.non2xx} non-2xx answers`);
  return { duration_s: durationS, connections: 64, in_memory_spread: spread, rows };
}

export async function run(ctx: BenchContext): Promise<unknown> {
  const log_append = await logAppend(ctx.quick);
  const recovery_ = await recovery(ctx.quick);
  const set_by_fsync = await setPerMode(ctx.quick);
  return { log_append, recovery: recovery_, set_by_fsync };
}
