/**
 * The write-ahead log on real files: the record format (scanRecords), start-up recovery (torn
 * tails, corruption, gaps, snapshots, older histories, the lock), the group-commit LogWriter, and
 * the LogWriter on a full disk (a tiny tmpfs; skipped with a reason where mounting is not allowed).
 */
import { afterEach, describe, expect, test } from "bun:test";
import fc from "fast-check";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, rmdirSync, statSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createLogger, silentLogger } from "../../src/lib/log.ts";
import { frameBytesMax, limits } from "../../src/lib/limits.ts";
import { type Frame, FrameType, encodeFrame } from "../../src/protocol/frame.ts";
import { type Entry, Store } from "../../src/store/store.ts";
import { snapName, unlockDir, walName, writeIdentity } from "../../src/wal/files.ts";
import { type FsyncMode, LogWriter } from "../../src/wal/log.ts";
import { encodeRecord, scanRecords } from "../../src/wal/record.ts";
import { RecoveryError, recover } from "../../src/wal/recover.ts";
import { writeSnapshot } from "../../src/wal/snapshot.ts";
import { prng } from "../support/prng.ts";
import { happensWithin } from "../support/wait.ts";

const FMAX = frameBytesMax(limits.keyBytesMax, limits.valueBytesMax);
const H = "bbbb";

// ---------------------------------------------------------------------------------------------
// Helpers

const dirs: string[] = [];
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "kvnode-wal-test-"));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

type Op = { kind: "put"; key: string; value: string } | { kind: "del"; key: string };

function opFrame(op: Op, seq: number, term = 1, group = 0): Frame {
  return op.kind === "put" ? { type: FrameType.Put, group, term, seq, key: op.key, value: op.value } : { type: FrameType.Delete, group, term, seq, key: op.key };
}

const rec = (f: Frame): Buffer => encodeRecord(encodeFrame(f));

/** Records back to back; starts[i] is where record i begins, starts[n] the total length. */
function buildLog(frames: readonly Frame[]): { bytes: Buffer; starts: number[] } {
  const recs = frames.map(rec);
  const starts = [0];
  for (const r of recs) starts.push(starts[starts.length - 1]! + r.length);
  return { bytes: Buffer.concat(recs), starts };
}

function flipBit(bytes: Uint8Array, bit: number): Buffer {
  const out = Buffer.from(bytes);
  out[bit >> 3]! ^= 1 << (bit & 7);
  return out;
}


const KEYS = ["a", "b", "c", "ключ", "😀", "nul\0key", "a|b\nc"];

function randomOps(n: number, seed: number): Op[] {
  const r = prng(seed);
  const ops: Op[] = [];
  for (let i = 0; i < n; i++) {
    const key = KEYS[Math.floor(r() * KEYS.length)]!;
    if (r() < 0.25) ops.push({ kind: "del", key });
    else ops.push({ kind: "put", key, value: `v${i}-` + "x".repeat(Math.floor(r() * 40)) + (r() < 0.3 ? "é€😀" : "") });
  }
  return ops;
}

type Model = Map<string, { value: string | null; version: number }>;

/** State after applying ops[0..n) with sequences 1..n, optionally on top of a snapshot. */
function modelAfter(ops: readonly Op[], n: number, from = 0, base?: Model): Model {
  const m: Model = new Map(base ?? []);
  for (let i = from; i < n; i++) {
    const op = ops[i]!;
    m.set(op.key, { value: op.kind === "put" ? op.value : null, version: i + 1 });
  }
  return m;
}

function liveEntries(m: Model): [string, Entry][] {
  return [...m].flatMap(([k, e]): [string, Entry][] => (e.value === null ? [] : [[k, { value: e.value, version: e.version }]]));
}

const sortByKey = <T extends readonly [string, ...unknown[]]>(xs: T[]): T[] => xs.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));

/** The store holds exactly the model's live entries; with `tombstones`, deleted keys' versions too. */
function expectStoreEquals(store: Store, m: Model, tombstones = true): void {
  const got = sortByKey([...store.snapshot()].map(([k, e]) => [k, e.value, e.version] as [string, string | null, number]));
  const want = sortByKey(liveEntries(m).map(([k, e]) => [k, e.value, e.version] as [string, string | null, number]));
  expect(got).toEqual(want);
  expect(store.size).toBe(want.length);
  if (tombstones) for (const k of [...KEYS, "never"]) expect(store.versionOf(k)).toBe(m.get(k)?.version ?? 0);
}

function recoverOpts(dir: string, log = silentLogger) {
  return { dir, group: 0, frameBytesMax: FMAX, newId: () => "cafe", log };
}

/** Recover `dir`, which must fail with a RecoveryError; returns it. */
function recoveryError(dir: string): RecoveryError {
  let err: unknown;
  try {
    recover(new Store(), recoverOpts(dir));
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(RecoveryError);
  return err as RecoveryError;
}

/** A data dir of history H holding node.json and nothing else. */
function dataDir(): string {
  const dir = tmp();
  writeIdentity(dir, { node_id: "aaaa", history_id: H, term: 1, group: 0 });
  return dir;
}

const fileSize = (p: string) => statSync(p).size;

// ---------------------------------------------------------------------------------------------
// 1. scanRecords

const keyArb = fc.oneof(fc.constantFrom(...KEYS), fc.string({ unit: "binary", maxLength: 12 }));
const valueArb = fc.string({ unit: "binary", maxLength: 40 });
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant("put" as const), key: keyArb, value: valueArb }),
  fc.record({ kind: fc.constant("del" as const), key: keyArb }),
);
const headerArb = fc.record({ group: fc.nat({ max: 0xffffffff }), term: fc.maxSafeNat(), seq: fc.maxSafeNat() });
const frameArb: fc.Arbitrary<Frame> = fc.tuple(opArb, headerArb).map(([op, h]) => opFrame(op, h.seq, h.term, h.group));
const framesArb = (min: number) => fc.array(frameArb, { minLength: min, maxLength: 12 });

describe("scanRecords", () => {
  test("a sequence of records round-trips, clean, with validBytes = every byte", () => {
    fc.assert(
      fc.property(framesArb(0), (frames) => {
        const { bytes, starts } = buildLog(frames);
        const s = scanRecords(bytes, FMAX);
        expect(s.end).toEqual({ kind: "clean" });
        expect(s.validBytes).toBe(starts[frames.length]!);
        expect(s.frames).toEqual(frames);
      }),
      { numRuns: 300 },
    );
  });

  test("random bytes never throw, and the result is self-consistent", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.oneof(fc.constant(FMAX), fc.nat({ max: 0xffffffff }), fc.nat({ max: 64 })), (bytes, max) => {
        const s = scanRecords(bytes, max);
        expect(s.validBytes).toBeGreaterThanOrEqual(0);
        expect(s.validBytes).toBeLessThanOrEqual(bytes.length);
        if (s.end.kind === "clean") expect(s.validBytes).toBe(bytes.length);
        else {
          expect(s.end.offset).toBe(s.validBytes);
          expect(s.validBytes).toBeLessThan(bytes.length);
        }
      }),
      { numRuns: 2000 },
    );
  });

  test("valid records followed by random bytes: never throws, the valid records all come back", () => {
    fc.assert(
      fc.property(framesArb(0), fc.uint8Array({ minLength: 1, maxLength: 200 }), (frames, junk) => {
        const { bytes, starts } = buildLog(frames);
        const s = scanRecords(Buffer.concat([bytes, junk]), FMAX);
        expect(s.frames.slice(0, frames.length)).toEqual(frames);
        expect(s.validBytes).toBeGreaterThanOrEqual(starts[frames.length]!);
      }),
      { numRuns: 500 },
    );
  });

  test("a log cut at ANY byte inside its last record is torn at the start of that record, earlier frames intact", () => {
    fc.assert(
      fc.property(framesArb(1), (frames) => {
        const { bytes, starts } = buildLog(frames);
        const n = frames.length;
        const lastStart = starts[n - 1]!;
        // Cut exactly at the record boundary: clean, without the last record.
        const atBoundary = scanRecords(bytes.subarray(0, lastStart), FMAX);
        expect(atBoundary.end).toEqual({ kind: "clean" });
        expect(atBoundary.frames).toEqual(frames.slice(0, -1));
        for (let cut = lastStart + 1; cut < bytes.length; cut++) {
          const s = scanRecords(bytes.subarray(0, cut), FMAX);
          expect(s.end.kind).toBe("torn");
          if (s.end.kind !== "torn") return;
          expect(s.end.offset).toBe(lastStart);
          expect(s.end.bytes).toBe(cut - lastStart);
          expect(s.validBytes).toBe(lastStart);
          expect(s.frames).toEqual(frames.slice(0, -1));
        }
      }),
      { numRuns: 60 },
    );
  });

  /**
   * Flip every bit of one record of `frames` (restricted to `bytesOf`, offsets within the record)
   * and return a description of each flip whose scan result `ok` rejects.
   */
  function flips(frames: Frame[], index: number, bytesOf: (recordLen: number) => number[], ok: (s: ReturnType<typeof scanRecords>, start: number) => boolean): string[] {
    const { bytes, starts } = buildLog(frames);
    const start = starts[index]!;
    const bad: string[] = [];
    for (const b of bytesOf(starts[index + 1]! - start))
      for (let bit = 0; bit < 8; bit++) {
        const s = scanRecords(flipBit(bytes, (start + b) * 8 + bit), FMAX);
        if (!ok(s, start)) bad.push(`byte ${b} bit ${bit}: ${JSON.stringify(s.end)}`);
      }
    return bad;
  }
  const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);
  /** Record layout: 0..4 crc, 4..8 frame length, 8.. rest of the frame. */
  const outsideLength = (len: number) => [...range(0, 4), ...range(8, len)];
  const lengthField = () => range(4, 8);

  const tornAtLast = (frames: Frame[]) => (s: ReturnType<typeof scanRecords>, start: number) => {
    if (s.end.kind === "clean") return s.frames.length === frames.length && JSON.stringify(s.frames) === JSON.stringify(frames);
    return s.end.kind === "torn" && s.end.offset === start && s.validBytes === start && JSON.stringify(s.frames) === JSON.stringify(frames.slice(0, -1));
  };
  const corruptAt = (frames: Frame[], index: number) => (s: ReturnType<typeof scanRecords>, start: number) =>
    s.end.kind === "corrupt" && s.end.offset === start && s.validBytes === start && JSON.stringify(s.frames) === JSON.stringify(frames.slice(0, index));

  test("a bit flipped in the crc or frame body of the last record makes it torn (never clean with a changed frame)", () => {
    fc.assert(
      fc.property(framesArb(1), (frames) => {
        expect(flips(frames, frames.length - 1, outsideLength, tornAtLast(frames))).toEqual([]);
      }),
      { numRuns: 40 },
    );
  });

  test("a bit flipped in the length field of the last record makes it torn", () => {
    // BUG (src/wal/record.ts): a flip that makes the length SMALLER leaves bytes after the shortened
    // record, so its checksum failure is reported as "corrupt" instead of a torn tail.
    // Fixed samples rather than fc.assert, so a failure lists the offending bits.
    for (const frames of fc.sample(framesArb(1), { seed: 1, numRuns: 20 }))
      expect(flips(frames, frames.length - 1, lengthField, tornAtLast(frames))).toEqual([]);
  });

  test("a bit flipped in the crc or frame body of a middle record is corruption at that record's offset", () => {
    fc.assert(
      fc.property(framesArb(3), fc.nat(), (frames, pick) => {
        const index = 1 + (pick % (frames.length - 2));
        expect(flips(frames, index, outsideLength, corruptAt(frames, index))).toEqual([]);
      }),
      { numRuns: 40 },
    );
  });

  test("a bit flipped in the length field of a middle record is corruption at that record's offset (not a torn tail)", () => {
    // BUG (src/wal/record.ts): a flip that makes the length point past the end of the file is taken
    // for a torn tail, so recovery cuts off this record AND every valid record after it.
    for (const [frames, pick] of fc.sample(fc.tuple(framesArb(3), fc.nat()), { seed: 1, numRuns: 20 })) {
      const index = 1 + (pick % (frames.length - 2));
      expect(flips(frames, index, lengthField, corruptAt(frames, index))).toEqual([]);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// 2. recover()

describe("recover", () => {
  const N = 14;
  const ops = randomOps(N, 7);
  const frames = ops.map((op, i) => opFrame(op, i + 1));
  const { bytes: log, starts } = buildLog(frames);

  test("the whole log replays into the store", () => {
    const dir = dataDir();
    const path = join(dir, walName(H, 1));
    writeFileSync(path, log);
    const entries: [number, number, Buffer][] = [];
    const store = new Store();
    const r = recover(store, { ...recoverOpts(dir), onEntry: (seq, term, f) => entries.push([seq, term, Buffer.from(f)]) });
    expectStoreEquals(store, modelAfter(ops, N));
    expect(r).toMatchObject({ seq: N, term: 1, snapshotSeq: 0, replayed: N, walPath: path, walBytes: log.length, tornBytes: 0, olderWalBytes: 0 });
    expect(r.identity).toEqual({ node_id: "aaaa", history_id: H, term: 1, group: 0 });
    expect(entries.map(([s]) => s)).toEqual(frames.map((f) => f.seq));
    for (const [i, [, term, f]] of entries.entries()) {
      expect(term).toBe(1);
      expect(f.equals(encodeFrame(frames[i]!))).toBe(true);
    }
    expect(fileSize(path)).toBe(log.length);
  });

  test("damage in the first record of a segment holding sequences below its name is corruption, never a torn tail", () => {
    // A follower may roll to a segment named after its applied sequence while earlier entries are
    // still queued for the log: wal-<N+1> can begin with entries 1..N. Records after a damaged
    // first one must never be cut.
    const dir = dataDir();
    const path = join(dir, walName(H, N + 1));
    writeFileSync(path, flipBit(log, 20 * 8)); // inside the first record
    const err = String(recoveryError(dir));
    expect(err).toContain(path);
    expect(err).toMatch(/corrupt at offset 0/);
    expect(fileSize(path)).toBe(log.length);
  });

  test("a log cut at EVERY byte offset inside its last 3 records recovers the whole records and cuts the file back to them", () => {
    const dir = dataDir();
    const path = join(dir, walName(H, 1));
    for (let len = starts[N - 3]!; len <= log.length; len++) {
      writeFileSync(path, log.subarray(0, len));
      let whole = 0;
      while (starts[whole + 1] !== undefined && starts[whole + 1]! <= len) whole++;
      const valid = starts[whole]!;
      const store = new Store();
      const r = recover(store, recoverOpts(dir));
      expect(fileSize(path)).toBe(valid);
      expect(r.seq).toBe(whole);
      expect(r.replayed).toBe(whole);
      expect(r.walPath).toBe(path);
      expect(r.walBytes).toBe(valid);
      expect(r.tornBytes).toBe(len - valid);
      expectStoreEquals(store, modelAfter(ops, whole));
      // Recovering again finds a clean log and the same state.
      const again = new Store();
      const r2 = recover(again, recoverOpts(dir));
      expect(r2.tornBytes).toBe(0);
      expect(r2.seq).toBe(whole);
      expectStoreEquals(again, modelAfter(ops, whole));
    }
  });

  test("cutting a torn tail is logged with the file, offset and bytes", () => {
    const dir = dataDir();
    const path = join(dir, walName(H, 1));
    writeFileSync(path, log.subarray(0, log.length - 5));
    const lines: string[] = [];
    recover(new Store(), recoverOpts(dir, createLogger("debug", (l) => lines.push(l))));
    const warn = lines.find((l) => l.includes("cut a torn tail"));
    expect(warn).toBeDefined();
    expect(warn).toContain(path);
    expect(warn).toContain(`offset=${starts[N - 1]}`);
    expect(warn).toContain(`bytes=${log.length - 5 - starts[N - 1]!}`);
  });

  /** Recover a copy of the log with one bit flipped; returns problems found (empty when right). */
  function recoverFlipped(dir: string, bit: number, expectState: number): string | null {
    const path = join(dir, walName(H, 1));
    writeFileSync(path, flipBit(log, bit));
    const store = new Store();
    try {
      recover(store, recoverOpts(dir));
    } catch (e) {
      return `bit ${bit}: threw ${(e as Error).message}`;
    }
    if (fileSize(path) !== starts[expectState]) return `bit ${bit}: file is ${fileSize(path)} bytes, want ${starts[expectState]}`;
    expectStoreEquals(store, modelAfter(ops, expectState));
    return null;
  }

  test("a bit flipped in the crc or body of the last record recovers to the records before it", () => {
    const dir = dataDir();
    const bad: string[] = [];
    const s = starts[N - 1]!;
    for (let bit = s * 8; bit < log.length * 8; bit++) {
      if (bit >= (s + 4) * 8 && bit < (s + 8) * 8) continue; // the length field: next test
      const p = recoverFlipped(dir, bit, N - 1);
      if (p) bad.push(p);
    }
    expect(bad).toEqual([]);
  });

  test("a bit flipped in the length field of the last record recovers to the records before it", () => {
    // BUG (src/wal/record.ts, see scanRecords tests): a smaller length makes the last record
    // "corrupt", so recovery refuses to start instead of cutting the torn tail.
    const dir = dataDir();
    const bad: string[] = [];
    const s = starts[N - 1]!;
    for (let bit = (s + 4) * 8; bit < (s + 8) * 8; bit++) {
      const p = recoverFlipped(dir, bit, N - 1);
      if (p) bad.push(p);
    }
    expect(bad).toEqual([]);
  });

  test("a bit flipped in the first record (records after it) throws RecoveryError naming the file and offset", () => {
    const dir = dataDir();
    const path = join(dir, walName(H, 1));
    for (const byte of [0, 3, 9, 12, 20, starts[1]! - 1]) {
      writeFileSync(path, flipBit(log, byte * 8 + 2));
      const err = recoveryError(dir);
      expect((err as Error).message).toContain(path);
      expect((err as Error).message).toContain("offset 0");
      // Nothing was cut: the damaged log is left for a human to look at.
      expect(fileSize(path)).toBe(log.length);
    }
  });

  test("a bit flipped in the length field of the first record throws RecoveryError instead of dropping the log", () => {
    // BUG (src/wal/record.ts): when the flipped length points past the end of the file the record is
    // taken for a torn tail; recovery truncates the file to 0 bytes and loses all N records silently.
    const dir = dataDir();
    const path = join(dir, walName(H, 1));
    const bad: string[] = [];
    for (let bit = 4 * 8; bit < 8 * 8; bit++) {
      writeFileSync(path, flipBit(log, bit));
      const store = new Store();
      try {
        const r = recover(store, recoverOpts(dir));
        bad.push(`bit ${bit}: recovered seq ${r.seq}, store size ${store.size}, file cut to ${fileSize(path)} of ${log.length} bytes`);
      } catch (e) {
        if (!(e instanceof RecoveryError) || !e.message.includes(path) || !e.message.includes("offset")) bad.push(`bit ${bit}: ${e}`);
      }
    }
    expect(bad).toEqual([]);
  });

  test("a gap in sequences throws RecoveryError", () => {
    const dir = dataDir();
    const path = join(dir, walName(H, 1));
    writeFileSync(path, buildLog([frames[0]!, frames[1]!, opFrame(ops[3]!, 4)]).bytes);
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(RecoveryError);
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(/jumps from sequence 2 to 4/);
  });

  test("a gap between segments throws RecoveryError", () => {
    const dir = dataDir();
    writeFileSync(join(dir, walName(H, 1)), buildLog(frames.slice(0, 3)).bytes);
    writeFileSync(join(dir, walName(H, 5)), buildLog(frames.slice(4, 8)).bytes);
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(/jumps from sequence 3 to 5/);
  });

  test("a torn segment that is not the last one throws RecoveryError", () => {
    const dir = dataDir();
    const first = join(dir, walName(H, 1));
    writeFileSync(first, buildLog(frames.slice(0, 5)).bytes.subarray(0, starts[5]! - 3));
    writeFileSync(join(dir, walName(H, 5)), buildLog(frames.slice(4, 8)).bytes);
    const err = recoveryError(dir);
    expect((err as Error).message).toContain(first);
    expect((err as Error).message).toContain(`offset ${starts[4]}`);
  });

  test("a snapshot at K plus a segment from K+1 recovers to the model; covered segments and older snapshots go", async () => {
    const K = 8;
    const dir = dataDir();
    const atK = modelAfter(ops, K);
    // An older snapshot (must be dropped) and the newest one at K.
    await writeSnapshot(dir, { group: 0, term: 1, seq: 3, historyId: H }, liveEntries(modelAfter(ops, 3)));
    const snap = await writeSnapshot(dir, { group: 0, term: 1, seq: K, historyId: H }, liveEntries(atK));
    expect(snap.name).toBe(snapName(H, K));
    // Segment 1 holds 1..K, wholly covered by the snapshot; the next starts at K+1.
    writeFileSync(join(dir, walName(H, 1)), buildLog(frames.slice(0, K)).bytes);
    const tail = buildLog(frames.slice(K)).bytes;
    writeFileSync(join(dir, walName(H, K + 1)), tail);
    const seen: number[] = [];
    const store = new Store();
    const r = recover(store, { ...recoverOpts(dir), onEntry: (seq) => seen.push(seq) });
    // The snapshot keeps no tombstones: compare live entries and their versions.
    expectStoreEquals(store, modelAfter(ops, N, K, atK), false);
    expect(r).toMatchObject({ seq: N, term: 1, snapshotSeq: K, snapshotTerm: 1, replayed: N - K, walPath: join(dir, walName(H, K + 1)), walBytes: tail.length, olderWalBytes: 0 });
    expect(seen).toEqual(frames.slice(K).map((f) => f.seq));
    expect(readdirSync(dir).sort()).toEqual(["LOCK", "node.json", snapName(H, K), walName(H, K + 1)].sort());
  });

  test("a snapshot keeps the store's tombstones: after recovery a deleted key still has its delete's version", async () => {
    // Found by review: a snapshot held live entries only, so after a restart the tombstones of
    // deletes before it were gone, and a copy of such a key moved in from another group came back.
    const dir = dataDir();
    const store = new Store();
    store.set("a", "1", 1);
    store.set("b", "2", 2);
    store.delete("a", 3);
    store.delete("never-held", 4); // a delete of a key not held yet (rebalancing)
    store.set("c", "3", 5);
    await writeSnapshot(dir, { group: 0, term: 1, seq: 5, historyId: H }, store.snapshot(true));
    const back = new Store();
    expect(recover(back, recoverOpts(dir)).seq).toBe(5);
    expect({ a: back.versionOf("a"), never: back.versionOf("never-held"), b: back.get("b"), c: back.get("c"), size: back.size, tombstones: back.tombstoneCount }).toEqual({
      a: 3, never: 4, b: { value: "2", version: 2 }, c: { value: "3", version: 5 }, size: 2, tombstones: 2,
    });
    // They are purged in version order as before.
    expect(back.purgeTombstones(3)).toBe(1);
    expect(back.versionOf("never-held")).toBe(4);
  });

  test("a snapshot's tombstone of a key it also lists live, before or after that chunk, or newer than the snapshot, is damage", async () => {
    const H2 = H;
    const meta = { group: 0, term: 1, seq: 5, historyId: H2 };
    const records = (frames: Frame[]) => Buffer.concat(frames.map(rec));
    const begin: Frame = { type: FrameType.SnapshotBegin, group: 0, term: 1, seq: 5, historyId: H2, count: 1 };
    const chunk: Frame = { type: FrameType.SnapshotChunk, group: 0, term: 1, seq: 5, entries: [{ key: "k", value: "v", version: 2 }] };
    const end: Frame = { type: FrameType.SnapshotEnd, group: 0, term: 1, seq: 5 };
    const del = (key: string, seq: number): Frame => ({ type: FrameType.Delete, group: 0, term: 1, seq, key });
    for (const [what, frames] of [
      ["before the chunk", [begin, del("k", 1), chunk, end]],
      ["after the chunk", [begin, chunk, del("k", 3), end]],
      ["newer than the snapshot", [begin, chunk, del("x", 6), end]],
    ] as const) {
      const dir = dataDir();
      writeFileSync(join(dir, snapName(H2, meta.seq)), records([...frames]));
      expect({ what, error: recoveryError(dir).message }).toMatchObject({ what, error: expect.stringContaining("tombstone") });
    }
  });

  test("a snapshot at K plus one segment from 1 skips the entries the snapshot covers", async () => {
    const K = 5;
    const dir = dataDir();
    const atK = modelAfter(ops, K);
    await writeSnapshot(dir, { group: 0, term: 1, seq: K, historyId: H }, liveEntries(atK));
    writeFileSync(join(dir, walName(H, 1)), log);
    const store = new Store();
    const r = recover(store, recoverOpts(dir));
    expectStoreEquals(store, modelAfter(ops, N, K, atK), false);
    expect(r.seq).toBe(N);
    expect(r.replayed).toBe(N - K);
    expect(r.walBytes).toBe(log.length);
  });

  test("a snapshot at K with the log starting after K+1 is a gap", async () => {
    const K = 5;
    const dir = dataDir();
    await writeSnapshot(dir, { group: 0, term: 1, seq: K, historyId: H }, liveEntries(modelAfter(ops, K)));
    writeFileSync(join(dir, walName(H, K + 2)), buildLog(frames.slice(K + 1)).bytes);
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(RecoveryError);
  });

  test("a snapshot and no log: the store is the snapshot and the next segment starts after it", async () => {
    const K = 9;
    const dir = dataDir();
    const atK = modelAfter(ops, K);
    await writeSnapshot(dir, { group: 0, term: 1, seq: K, historyId: H }, liveEntries(atK));
    const store = new Store();
    const r = recover(store, recoverOpts(dir));
    expectStoreEquals(store, atK, false);
    expect(r).toMatchObject({ seq: K, snapshotSeq: K, replayed: 0, walPath: join(dir, walName(H, K + 1)), walBytes: 0 });
  });

  test("a damaged snapshot throws RecoveryError naming it", async () => {
    const dir = dataDir();
    const { name } = await writeSnapshot(dir, { group: 0, term: 1, seq: 4, historyId: H }, liveEntries(modelAfter(ops, 4)));
    const p = join(dir, name);
    writeFileSync(p, flipBit(readFileSync(p), 100));
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(RecoveryError);
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(p);
  });

  test("a snapshot larger than one read (4 MiB) loads whole; damage past the first read is found at its offset", async () => {
    const dir = dataDir();
    const value = "s".repeat(1000);
    const entries: [string, Entry][] = Array.from({ length: 10_000 }, (_, i) => [`big${i}`, { value, version: i + 1 }]);
    const { name } = await writeSnapshot(dir, { group: 0, term: 1, seq: 10_000, historyId: H }, entries);
    const p = join(dir, name);
    const bytes = readFileSync(p);
    expect(bytes.length).toBeGreaterThan(2.2 * (4 << 20)); // three reads, records cut at both seams
    const store = new Store();
    const r = recover(store, recoverOpts(dir));
    expect(r.seq).toBe(10_000);
    expect(store.size).toBe(10_000);
    for (let i = 0; i < 10_000; i += 333) expect(store.get(`big${i}`)).toEqual({ value, version: i + 1 });
    // A flipped bit in the third read: the error names the record's offset in the file, past 8 MiB.
    writeFileSync(p, flipBit(bytes, 8 * 9_000_000));
    const err = String(recoveryError(dir));
    const offset = Number(/offset (\d+)/.exec(err)?.[1]);
    expect(offset).toBeGreaterThan(8 << 20);
    expect(offset).toBeLessThanOrEqual(9_000_000);
  });

  test("a record cut at a read seam is carried over even when its values hold whole valid records", async () => {
    // A Ping record whose bytes are all ASCII, so a value can hold it byte for byte.
    let inner: Buffer | null = null;
    for (let seq = 1; inner === null; seq++) {
      const r = encodeRecord(encodeFrame({ type: FrameType.Ping, group: 0, term: 1, seq }));
      if (r.every((b) => b < 0x80)) inner = r;
    }
    const value = inner.toString("latin1").repeat(Math.floor(60_000 / inner.length));
    // ~9 MiB of chunk records: both 4 MiB seams cut a record whose values are full of Pings.
    const entries: [string, Entry][] = Array.from({ length: 150 }, (_, i) => [`k${i}`, { value, version: i + 1 }]);
    const dir = dataDir();
    await writeSnapshot(dir, { group: 0, term: 1, seq: 150, historyId: H }, entries);
    const store = new Store();
    expect(recover(store, recoverOpts(dir)).seq).toBe(150);
    expect(store.size).toBe(150);
    expect(store.get("k149")).toEqual({ value, version: 150 });
  });

  test("a snapshot whose records are valid but whose content is not is refused, and the store is left as it was", () => {
    const h = { group: 0, term: 1, seq: 4 };
    const begin = (count: number): Frame => ({ type: FrameType.SnapshotBegin, ...h, historyId: H, count });
    const chunk = (...keys: string[]): Frame => ({ type: FrameType.SnapshotChunk, ...h, entries: keys.map((key, i) => ({ key, value: "v", version: i + 1 })) });
    const end: Frame = { type: FrameType.SnapshotEnd, ...h };
    const cases: [string, Frame[], RegExp][] = [
      ["a key listed twice", [begin(2), chunk("a", "a"), end], /says it holds 2 keys, its entries make 1/],
      ["more keys than it says", [begin(1), chunk("a", "b"), end], /says it holds 1 keys/],
      ["no end", [begin(1), chunk("a")], /incomplete/],
      ["no begin", [chunk("a"), end], /starts with a frame of type/],
      ["frames after its end", [begin(1), chunk("a"), end, chunk("b")], /frames after its end/],
      ["a log entry inside", [begin(1), chunk("a"), { type: FrameType.Put, ...h, key: "x", value: "y" }, end], /holds a frame of type/],
    ];
    for (const [what, list, why] of cases) {
      const dir = dataDir();
      writeFileSync(join(dir, snapName(H, 4)), Buffer.concat(list.map(rec)));
      const store = new Store();
      store.set("before", "kept", 1);
      let err: unknown = null;
      try {
        recover(store, recoverOpts(dir));
      } catch (e) {
        err = e;
      }
      expect({ what, err: String(err) }).toMatchObject({ what, err: expect.stringMatching(why) });
      expect(err).toBeInstanceOf(RecoveryError);
      expect(store.size).toBe(1);
      expect(store.get("before")?.value).toBe("kept");
    }
  });

  test("files of another history are removed; this history's are replayed", async () => {
    const dir = dataDir();
    writeFileSync(join(dir, walName(H, 1)), log);
    const other = buildLog([opFrame({ kind: "put", key: "a", value: "from another history" }, 1)]).bytes;
    writeFileSync(join(dir, walName("cccc", 1)), other);
    writeFileSync(join(dir, walName("cccc", 2)), other);
    await writeSnapshot(dir, { group: 0, term: 1, seq: 30, historyId: "cccc" }, [["zz", { value: "other", version: 30 }]]);
    const lines: string[] = [];
    const store = new Store();
    const r = recover(store, recoverOpts(dir, createLogger("info", (l) => lines.push(l))));
    expectStoreEquals(store, modelAfter(ops, N));
    expect(r.snapshotSeq).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(["LOCK", "node.json", walName(H, 1)].sort());
    expect(lines.filter((l) => l.includes("removed file of an older history"))).toHaveLength(3);
  });

  test("a frame of another type in the log throws RecoveryError", () => {
    const dir = dataDir();
    writeFileSync(join(dir, walName(H, 1)), buildLog([frames[0]!, { type: FrameType.Ack, group: 0, term: 1, seq: 2 }]).bytes);
    expect(() => recover(new Store(), recoverOpts(dir))).toThrow(RecoveryError);
  });

  test("a data dir of another group is refused", () => {
    const dir = dataDir();
    expect(() => recover(new Store(), { ...recoverOpts(dir), group: 3 })).toThrow(RecoveryError);
  });

  test("an empty dir gets a new identity and an empty store", () => {
    const dir = join(tmp(), "fresh");
    const store = new Store();
    const r = recover(store, recoverOpts(dir));
    expect(r.identity).toEqual({ node_id: "cafe", history_id: "cafe", term: 0, group: 0 });
    expect(r).toMatchObject({ seq: 0, replayed: 0, walPath: join(dir, walName("cafe", 1)), walBytes: 0 });
    expect(store.size).toBe(0);
    expect(existsSync(join(dir, "node.json"))).toBe(true);
  });

  test("recover() takes the LOCK, and a second recover() from the same pid works", () => {
    const dir = dataDir();
    writeFileSync(join(dir, walName(H, 1)), log);
    recover(new Store(), recoverOpts(dir));
    expect(readFileSync(join(dir, "LOCK"), "utf8").trim()).toBe(String(process.pid));
    const store = new Store();
    const r = recover(store, recoverOpts(dir));
    expect(r.seq).toBe(N);
    expectStoreEquals(store, modelAfter(ops, N));
    expect(readFileSync(join(dir, "LOCK"), "utf8").trim()).toBe(String(process.pid));
  });
});

// ---------------------------------------------------------------------------------------------
// 3. LogWriter

interface Harness {
  w: LogWriter;
  path: string;
  durable: number[];
  failed: { fromSeq: number; error: NodeJS.ErrnoException; fileBytes: number }[];
  problems: string[];
  /** Resolves at the next onDurable/onFailed whose predicate holds. */
  until(pred: () => boolean, ms?: number): Promise<void>;
}

async function openWriter(path: string, mode: FsyncMode, fsyncMs: number, durableSeq = 0, segmentBytes = 0, checkFile = false): Promise<Harness> {
  const durable: number[] = [];
  const failed: Harness["failed"] = [];
  const problems: string[] = [];
  let waiters: { pred: () => boolean; resolve: () => void }[] = [];
  const wake = () => {
    waiters = waiters.filter((x) => {
      if (!x.pred()) return true;
      x.resolve();
      return false;
    });
  };
  const w = await LogWriter.open(path, segmentBytes, {
    mode,
    fsyncMs,
    durableSeq,
    onDurable(seq) {
      durable.push(seq);
      if (checkFile) {
        // The record of `seq` must already be in the file, whole, with everything before it.
        const s = scanRecords(readFileSync(path), FMAX);
        const last = s.frames[s.frames.length - 1];
        if (s.end.kind !== "clean" || !last || last.seq !== seq) problems.push(`onDurable(${seq}) but the file ends at ${last?.seq} (${s.end.kind})`);
      }
      wake();
    },
    onFailed(fromSeq, error) {
      failed.push({ fromSeq, error, fileBytes: fileSize(path) });
      wake();
    },
  });
  const until = (pred: () => boolean, ms = 5000) =>
    pred()
      ? Promise.resolve()
      : new Promise<void>((resolve, reject) => {
          const t = setTimeout(() => reject(new Error(`timed out; durable ${durable.slice(-3)}, failed ${failed.map((f) => f.fromSeq)}`)), ms);
          waiters.push({
            pred,
            resolve: () => {
              clearTimeout(t);
              resolve();
            },
          });
        });
  return { w, path, durable, failed, problems, until };
}

const putFrame = (seq: number, value = `value of ${seq}`): Frame => ({ type: FrameType.Put, group: 0, term: 1, seq, key: `k${seq}`, value });

function expectIncreasing(xs: number[]): void {
  for (let i = 1; i < xs.length; i++) expect(xs[i]!).toBeGreaterThan(xs[i - 1]!);
}

describe("LogWriter", () => {
  const modes: [FsyncMode, number][] = [
    ["batch", 2],
    ["always", 0],
    ["never", 0],
  ];

  for (const [mode, fsyncMs] of modes)
    test(`${mode}: 1000 appends without awaiting are group-committed and land in order`, async () => {
      const path = join(tmp(), walName(H, 1));
      const h = await openWriter(path, mode, fsyncMs, 0, 0, true);
      const frames = Array.from({ length: 1000 }, (_, i) => putFrame(i + 1));
      const recs = frames.map(rec);
      for (const [i, r] of recs.entries()) h.w.append(i + 1, r);
      expect(h.w.queued).toBe(1000);
      await h.until(() => h.durable.includes(1000));
      expect(h.failed).toEqual([]);
      expect(h.problems).toEqual([]);
      expectIncreasing(h.durable);
      expect(h.durable[h.durable.length - 1]).toBe(1000);
      expect(h.w.durableSeq).toBe(1000);
      expect(h.w.stats.flushes).toBe(h.durable.length);
      expect(h.w.stats.records).toBe(1000);
      const total = recs.reduce((n, r) => n + r.length, 0);
      expect(h.w.stats.bytes).toBe(total);
      expect(h.w.segmentBytes).toBe(total);
      if (mode === "batch") expect(h.w.stats.flushes).toBeLessThan(20);
      await h.w.close();
      const s = scanRecords(readFileSync(path), FMAX);
      expect(s.end).toEqual({ kind: "clean" });
      expect(s.frames).toEqual(frames);
    });

  for (const [mode, fsyncMs] of modes)
    test(`${mode}: appends trickling in while flushes are in flight share flushes and stay in order`, async () => {
      const path = join(tmp(), walName(H, 1));
      const h = await openWriter(path, mode, fsyncMs, 0, 0, true);
      const frames = Array.from({ length: 1000 }, (_, i) => putFrame(i + 1, "t".repeat(i % 50)));
      for (let i = 0; i < 1000; i++) {
        h.w.append(i + 1, rec(frames[i]!));
        if (i % 10 === 9) await new Promise((r) => setImmediate(r));
      }
      await h.until(() => h.durable.includes(1000));
      expect(h.failed).toEqual([]);
      expect(h.problems).toEqual([]);
      expectIncreasing(h.durable);
      expect(h.w.stats.records).toBe(1000);
      expect(h.w.stats.flushes).toBe(h.durable.length);
      expect(h.w.stats.flushes).toBeLessThanOrEqual(100);
      if (mode === "batch") expect(h.w.stats.flushes).toBeLessThan(100);
      await h.w.close();
      const s = scanRecords(readFileSync(path), FMAX);
      expect(s.end).toEqual({ kind: "clean" });
      expect(s.frames).toEqual(frames);
    });

  test("always: appends awaited one by one are one flush each, and onDurable only reports what is in the file", async () => {
    const path = join(tmp(), walName(H, 1));
    const h = await openWriter(path, "always", 0, 0, 0, true);
    for (let i = 1; i <= 100; i++) {
      h.w.append(i, rec(putFrame(i)));
      await h.until(() => h.durable.includes(i));
    }
    expect(h.problems).toEqual([]);
    expect(h.durable).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(h.w.stats.flushes).toBe(100);
    await h.w.close();
    expect(scanRecords(readFileSync(path), FMAX).frames.map((f) => f.seq)).toEqual(h.durable);
  });

  test("close() flushes what is still queued", async () => {
    const path = join(tmp(), walName(H, 1));
    const h = await openWriter(path, "batch", 1000, 0);
    for (let i = 1; i <= 5; i++) h.w.append(i, rec(putFrame(i)));
    await h.w.close();
    expect(h.durable).toEqual([5]);
    expect(scanRecords(readFileSync(path), FMAX).frames.map((f) => f.seq)).toEqual([1, 2, 3, 4, 5]);
  });

  test("restartAt (a follower adopting a new history): records of the old history still queued never reach the new segment", async () => {
    // Else recovery would read them as entries of the new history (or refuse to start on the gap).
    const dir = tmp();
    const old = join(dir, walName(H, 10));
    const h = await openWriter(old, "batch", 1000, 9);
    for (let i = 10; i <= 15; i++) h.w.append(i, rec(putFrame(i)));
    const next = join(dir, walName("bbbbbbbbbbbbbbbb", 4));
    h.w.restartAt(3, next);
    expect(h.w.durableSeq).toBe(3);
    for (let i = 4; i <= 6; i++) h.w.append(i, rec(putFrame(i)));
    await h.until(() => h.durable.includes(6));
    await h.w.close();
    expect(h.durable).toEqual([6]);
    expect(scanRecords(readFileSync(next), FMAX).frames.map((f) => f.seq)).toEqual([4, 5, 6]);
    expect(fileSize(old)).toBe(0);
  });

  test("restartAt: a flush of the old history in flight reports nothing, so durableSeq never counts its sequences", async () => {
    const dir = tmp();
    const old = join(dir, walName(H, 10));
    const h = await openWriter(old, "always", 0, 9);
    for (let i = 10; i <= 20; i++) h.w.append(i, rec(putFrame(i)));
    await new Promise((r) => setImmediate(r)); // the flush starts: writing, then fdatasync
    expect({ queued: h.w.queued, durable: h.durable }).toEqual({ queued: 0, durable: [] });
    const next = join(dir, walName("bbbbbbbbbbbbbbbb", 4));
    h.w.restartAt(3, next);
    h.w.append(4, rec(putFrame(4)));
    await h.until(() => h.durable.includes(4));
    await h.w.close();
    expect(h.durable).toEqual([4]);
    expect(h.w.durableSeq).toBe(4);
    expect(h.w.stats.records).toBe(1);
    expect(scanRecords(readFileSync(next), FMAX).frames.map((f) => f.seq)).toEqual([4]);
  });

  test("restartAt while a flush of the old history is opening the segment a snapshot rolled to: the new history's records go to the new segment (found by review)", async () => {
    const dir = tmp();
    const h = await openWriter(join(dir, walName(H, 1)), "always", 0, 0);
    h.w.append(1, rec(putFrame(1)));
    h.w.append(2, rec(putFrame(2)));
    await h.until(() => h.durable.includes(2));
    h.w.rollTo(join(dir, walName(H, 3))); // a snapshot at 2
    h.w.append(3, rec(putFrame(3)));
    await new Promise((r) => setImmediate(r)); // that flush is now opening the rolled-to segment
    const next = join(dir, walName("bbbbbbbbbbbbbbbb", 11));
    h.w.restartAt(10, next);
    h.w.append(11, rec(putFrame(11)));
    h.w.append(12, rec(putFrame(12)));
    await h.until(() => h.durable.includes(12));
    await h.w.close();
    expect(h.durable).toEqual([2, 12]);
    expect(scanRecords(readFileSync(next), FMAX).frames.map((f) => f.seq)).toEqual([11, 12]);
  });

  test("restartAt with hold: a full transfer's records reach the disk only after release (its snapshot first), and a close before drops them", async () => {
    // Found by an audit: killed before the transfer's snapshot was written, a follower of the
    // same history found a segment starting past the end of its old log and refused to start.
    const dir = dataDir();
    const h = await openWriter(join(dir, walName(H, 1)), "always", 0, 0);
    for (let i = 1; i <= 3; i++) h.w.append(i, rec(putFrame(i)));
    await h.until(() => h.durable.includes(3));
    const next = join(dir, walName(H, 101));
    h.w.restartAt(100, next, true);
    for (let i = 101; i <= 103; i++) h.w.append(i, rec(putFrame(i)));
    expect(await happensWithin(300, () => existsSync(next) || h.durable.length > 1)).toBe(false);
    // A crash now: the directory holds the old log only, which recovers whole.
    const crashed = new Store();
    expect(recover(crashed, recoverOpts(dir)).seq).toBe(3);
    unlockDir(dir);
    h.w.release();
    await h.until(() => h.durable.includes(103));
    expect(scanRecords(readFileSync(next), FMAX).frames.map((f) => f.seq)).toEqual([101, 102, 103]);
    // Held again, then closed: the held records are not written.
    h.w.restartAt(200, join(dir, walName(H, 201)), true);
    h.w.append(201, rec(putFrame(201)));
    await h.w.close();
    expect(existsSync(join(dir, walName(H, 201)))).toBe(false);
  });

  test("appends to an existing segment after its valid bytes, and rollTo starts a new segment", async () => {
    const dir = tmp();
    const first = join(dir, walName(H, 1));
    writeFileSync(first, buildLog([putFrame(1), putFrame(2)]).bytes);
    const h = await openWriter(first, "always", 0, 2, fileSize(first));
    h.w.append(3, rec(putFrame(3)));
    await h.until(() => h.durable.includes(3));
    expect(h.w.segmentBytes).toBe(fileSize(first));
    const second = join(dir, walName(H, 4));
    h.w.rollTo(second);
    for (let i = 4; i <= 6; i++) h.w.append(i, rec(putFrame(i)));
    await h.until(() => h.durable.includes(6));
    await h.w.close();
    expect(scanRecords(readFileSync(first), FMAX).frames.map((f) => f.seq)).toEqual([1, 2, 3]);
    expect(scanRecords(readFileSync(second), FMAX).frames.map((f) => f.seq)).toEqual([4, 5, 6]);
    expect(h.w.segmentBytes).toBe(fileSize(second));
  });
});

// ---------------------------------------------------------------------------------------------
// 4. LogWriter on a full disk

let mountReason = "";
if (process.getuid?.() !== 0) mountReason = "it needs root to mount a small tmpfs";
else {
  const probe = mkdtempSync(join(tmpdir(), "kvnode-wal-mount-probe-"));
  const m = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], { stderr: "pipe" });
  if (m.exitCode !== 0) mountReason = `mount -t tmpfs failed: ${m.stderr.toString().trim()}`;
  else Bun.spawnSync(["umount", probe]);
  rmSync(probe, { recursive: true, force: true });
}
if (mountReason) console.log(`skipping the LogWriter full-disk test: ${mountReason}`);

describe.skipIf(mountReason !== "")("LogWriter on a full disk", () => {
  test("ENOSPC fails the batch from its first seq, cuts the partial write back, and appends work again once space returns", async () => {
    const mnt = mkdtempSync(join(tmpdir(), "kvnode-wal-tmpfs-"));
    const mounted = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", mnt]);
    expect(mounted.exitCode).toBe(0);
    let h: Harness | undefined;
    try {
      const filler = join(mnt, "filler");
      writeFileSync(filler, Buffer.alloc(24 * 1024, 1));
      const path = join(mnt, walName(H, 1));
      h = await openWriter(path, "batch", 1);
      const value = "v".repeat(3000);
      const frames: Frame[] = [];
      const recBytes: number[] = [];
      const frame = (seq: number) => {
        frames[seq - 1] ??= putFrame(seq, value + seq);
        return frames[seq - 1]!;
      };
      const bytesUpTo = (seq: number) => {
        let n = 0;
        for (let s = 1; s <= seq; s++) n += (recBytes[s - 1] ??= rec(frame(s)).length);
        return n;
      };
      const BATCH = 3;
      let next = 1;
      let failingBatch = 0;
      let freeBefore = 0;
      // Batches of 3 records (~9 KB) until one fails: the 40 KB left cannot hold many.
      for (let round = 0; round < 30 && h.failed.length === 0; round++) {
        const batchFirst = next;
        const st = statfsSync(mnt);
        freeBefore = st.bavail * st.bsize;
        for (let i = 0; i < BATCH; i++, next++) h.w.append(next, rec(frame(next)));
        const want = next - 1;
        await h.until(() => h!.durable.includes(want) || h!.failed.length > 0);
        if (h.failed.length > 0) failingBatch = batchFirst;
      }
      // The failing batch found some room, so part of it reached the file before ENOSPC.
      expect(freeBefore).toBeGreaterThan(0);
      expect(h.failed).toHaveLength(1);
      const f = h.failed[0]!;
      expect(f.error.code).toBe("ENOSPC");
      expect(f.fromSeq).toBe(failingBatch);
      const durableSeq = h.durable[h.durable.length - 1] ?? 0;
      expect(durableSeq).toBe(failingBatch - 1);
      expect(h.w.durableSeq).toBe(failingBatch - 1);
      expect(failingBatch).toBeGreaterThan(1);
      // Only the durable records stay on disk: the partial write was cut back.
      expect(f.fileBytes).toBe(bytesUpTo(durableSeq));
      expect(fileSize(path)).toBe(bytesUpTo(durableSeq));
      expect(h.w.segmentBytes).toBe(bytesUpTo(durableSeq));
      expect(h.w.queued).toBe(0);
      expect(h.w.stats.failures).toBe(1);

      // Still full: trying again fails again from the same sequence, and leaves the file alone.
      for (let s = failingBatch; s < failingBatch + BATCH; s++) h.w.append(s, rec(frame(s)));
      await h.until(() => h!.failed.length === 2);
      expect(h.failed[1]!.fromSeq).toBe(failingBatch);
      expect(fileSize(path)).toBe(bytesUpTo(durableSeq));

      // Free space: the same sequences are written again, and more after them.
      rmSync(filler);
      const last = failingBatch + 2 * BATCH - 1;
      for (let s = failingBatch; s <= last; s++) h.w.append(s, rec(frame(s)));
      await h.until(() => h!.durable.includes(last));
      expect(h.failed).toHaveLength(2);
      await h.w.close();
      h = undefined;
      expect(fileSize(path)).toBe(bytesUpTo(last));
      const scan = scanRecords(readFileSync(path), FMAX);
      expect(scan.end).toEqual({ kind: "clean" });
      expect(scan.frames.map((x) => x.seq)).toEqual(Array.from({ length: last }, (_, i) => i + 1));
      expect(scan.frames).toEqual(frames.slice(0, last));
    } finally {
      await h?.w.close().catch(() => {});
      Bun.spawnSync(["umount", mnt]);
      try {
        rmdirSync(mnt);
      } catch {
        rmSync(mnt, { recursive: true, force: true });
      }
    }
  });
});

