import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { AssertionError } from "../../src/lib/assert.ts";
import { frameBytesMax, limits } from "../../src/lib/limits.ts";
import { silentLogger } from "../../src/lib/log.ts";
import { FrameReader, FrameType, WelcomeMode, decodeFrame, encodeFrame, putFrameOf, type Frame } from "../../src/protocol/frame.ts";
import { Follower } from "../../src/replication/follower.ts";
import { History } from "../../src/replication/history.ts";
import { Leader, ReplicationTimeout, type FollowerLink } from "../../src/replication/leader.ts";
import { Outbox, type Wire } from "../../src/replication/outbox.ts";
import { Store } from "../../src/store/store.ts";
import { isWellFormed } from "../../src/lib/utf8.ts";

/** What a store read shows: value and version (the live entry object also names its key). */
const entryOf = (e: { value: string; version: number } | undefined) => (e === undefined ? undefined : { value: e.value, version: e.version });

const GROUP = 3;
const CLUSTER = "test-cluster";
const HISTORY_ID = "history-1";
/** The limit a node's links enforce with the default key and value limits. */
const LINK_FRAME_MAX = frameBytesMax(limits.keyBytesMax, limits.valueBytesMax);

// --- fakes -------------------------------------------------------------------------------------

/**
 * A socket as Bun's `write` sees it: it takes at most `cap()` bytes per call (0 when its buffer is
 * full, -1 once broken) and copies what it takes, like the kernel would.
 */
class FakeWire implements Wire {
  private chunks: Uint8Array[] = [];
  totalBytes = 0;
  ended = false;
  broken = false;
  constructor(public cap: () => number = () => Number.POSITIVE_INFINITY) {}
  write(bytes: Uint8Array): number {
    if (this.broken) return -1;
    const n = Math.max(0, Math.min(bytes.length, this.cap()));
    if (n > 0) {
      const copy = new Uint8Array(n);
      copy.set(bytes.subarray(0, n));
      this.chunks.push(copy);
      this.totalBytes += n;
    }
    return n;
  }
  end(): void {
    this.ended = true;
  }
  take(): Uint8Array[] {
    const out = this.chunks;
    this.chunks = [];
    return out;
  }
  get pending(): number {
    return this.chunks.reduce((n, c) => n + c.length, 0);
  }
}

const cycle = (values: readonly number[]) => {
  let i = 0;
  return () => values[i++ % values.length]!;
};

const concat = (parts: Uint8Array[]): Uint8Array => Buffer.concat(parts);

interface Conn {
  link: FollowerLink;
  leaderWire: FakeWire;
  leaderOut: Outbox;
  followerWire: FakeWire;
  followerOut: Outbox;
  atFollower: FrameReader;
  atLeader: FrameReader;
  framesToFollower: Frame[];
}

/** A leader and one follower joined by fake wires; `step` is one turn of both event loops. */
class Sim {
  clock = 1_000;
  scheduled = false;
  /** Timers the leader set (`after`), run by `advance`. */
  readonly timers: { at: number; fn: () => void }[] = [];
  readonly leaderStore = new Store();
  readonly followerStore: Store;
  readonly leader: Leader;
  readonly follower: Follower;
  conn: Conn | null = null;
  readonly errors: string[] = [];
  private readonly chunkSize: () => number;
  private readonly caps: number[] | undefined;
  readonly frameMax: number;

  constructor(
    o: {
      historyEntries?: number;
      /** Bytes the leader's socket takes per write, cycled. */
      caps?: number[];
      /** Sizes the bytes arrive in at the follower, cycled. */
      chunks?: number[];
      frameMax?: number;
      follower?: Follower;
      followerStore?: Store;
    } = {},
  ) {
    this.caps = o.caps;
    this.frameMax = o.frameMax ?? LINK_FRAME_MAX;
    this.chunkSize = o.chunks ? cycle(o.chunks) : () => Number.POSITIVE_INFINITY;
    this.leader = new Leader({
      store: this.leaderStore,
      group: GROUP,
      term: 1,
      historyId: HISTORY_ID,
      cluster: CLUSTER,
      historyEntries: o.historyEntries ?? limits.historyEntriesMax,
      now: () => this.clock,
      log: silentLogger,
      schedule: () => {
        this.scheduled = true;
      },
      after: (ms, fn) => void this.timers.push({ at: this.clock + ms, fn }),
    });
    this.followerStore = o.followerStore ?? new Store();
    this.follower = o.follower ?? new Follower(this.followerStore, GROUP, CLUSTER, "follower-1");
  }
  connect(): Conn {
    const leaderWire = new FakeWire(this.caps ? cycle(this.caps) : undefined);
    const leaderOut = new Outbox(leaderWire);
    const followerWire = new FakeWire();
    const conn: Conn = {
      link: this.leader.attach(leaderOut, "127.0.0.1:5555"),
      leaderWire,
      leaderOut,
      followerWire,
      followerOut: new Outbox(followerWire),
      atFollower: new FrameReader(this.frameMax),
      atLeader: new FrameReader(this.frameMax),
      framesToFollower: [],
    };
    this.conn = conn;
    conn.followerOut.send(this.follower.hello());
    return conn;
  }

  /** The link drops: bytes in flight are lost, both ends forget it. */
  disconnect(): void {
    const c = this.conn;
    if (!c) return;
    this.leader.detach(c.link);
    c.leaderOut.closed = true;
    c.followerOut.closed = true;
    this.conn = null;
  }

  /** One turn: pump if asked to, drain, deliver bytes both ways. Returns whether anything moved. */
  step(): boolean {
    const c = this.conn;
    let moved = false;
    if (this.scheduled) {
      this.scheduled = false;
      this.leader.pumpAll();
    }
    if (!c) return moved;
    // drain event on the leader's socket
    if (c.leaderOut.queuedBytes > 0) {
      const before = c.leaderWire.totalBytes;
      if (c.leaderOut.flush()) this.leader.pump(c.link);
      moved ||= c.leaderWire.totalBytes !== before;
    }
    c.followerOut.flush();
    // follower -> leader
    for (const chunk of c.followerWire.take()) {
      moved = true;
      const { frames, error } = c.atLeader.push(chunk);
      for (const f of frames) {
        const err = this.leader.onFrame(c.link, f);
        if (err) this.errors.push(`leader: ${err}`);
      }
      if (error) this.errors.push(`leader reader: ${error}`);
    }
    // leader -> follower, re-cut into arbitrary chunks
    const bytes = concat(c.leaderWire.take());
    for (let at = 0; at < bytes.length; ) {
      moved = true;
      const n = Math.max(1, Math.min(bytes.length - at, this.chunkSize()));
      // As the node reads its link: Puts as bytes, from a chunk whose memory is reused after.
      const chunk = Buffer.from(bytes.subarray(at, at + n));
      const { frames, error } = c.atFollower.push(chunk, true);
      at += n;
      const before = this.follower.applied;
      for (const f of frames) {
        c.framesToFollower.push(f.type === "put-bytes" ? putFrameOf(f) : f);
        const err = this.follower.onFrame(f);
        if (err) this.errors.push(`follower: ${err}`);
        if (f.type === FrameType.Ping) c.followerOut.send(this.follower.ack());
      }
      chunk.fill(0xee);
      if (error) this.errors.push(`follower reader: ${error}`);
      if (this.follower.applied !== before) c.followerOut.send(this.follower.ack());
    }
    return moved;
  }

  quiet(): boolean {
    const c = this.conn;
    return !this.scheduled && (!c || (c.leaderOut.queuedBytes === 0 && c.followerOut.queuedBytes === 0 && c.leaderWire.pending === 0 && c.followerWire.pending === 0));
  }

  /** Run turns until nothing is left to move. */
  settle(maxTurns = 200_000): void {
    for (let i = 0; i < maxTurns; i++) {
      const moved = this.step();
      if (!moved && this.quiet()) return;
      if (this.errors.length > 0) return;
    }
    throw new Error("replication did not settle");
  }

  /** Move the clock on by `ms`, running the timers that come due. */
  advance(ms: number): void {
    this.clock += ms;
    for (let t = this.timers.findIndex((x) => x.at <= this.clock); t >= 0; t = this.timers.findIndex((x) => x.at <= this.clock)) this.timers.splice(t, 1)[0]!.fn();
  }

  set(key: string, value: string): number {
    this.clock++;
    return this.leader.set(key, value);
  }

  delete(key: string) {
    this.clock++;
    return this.leader.delete(key);
  }
}

/** The live content of a store, sorted: key, value, version. */
function content(s: Store): [string, string | null, number][] {
  return [...s.snapshot()]
    .map(([k, e]) => [k, e.value, e.version] as [string, string | null, number])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
}

function expectInSync(sim: Sim, o: { checkAcked?: boolean } = {}): void {
  expect(sim.errors).toEqual([]);
  expect(content(sim.followerStore)).toEqual(content(sim.leaderStore));
  expect(sim.followerStore.size).toBe(sim.leaderStore.size);
  expect(sim.follower.applied).toBe(sim.leader.head);
  expect(sim.follower.historyId).toBe(HISTORY_ID);
  expect(sim.follower.syncing).toBe(false);
  if (sim.conn && o.checkAcked !== false) expect(sim.conn.link.acked).toBe(sim.leader.head);
}

function writeMany(sim: Sim, n: number, prefix = "k"): void {
  for (let i = 0; i < n; i++) sim.set(`${prefix}${i % 37}`, `v${i}-${"é".repeat(i % 5)}`);
  for (let i = 0; i < n; i += 7) sim.delete(`${prefix}${i % 37}`);
}

// --- History -----------------------------------------------------------------------------------

const bytesOf = (n: number, fill = 0) => new Uint8Array(n).fill(fill);

describe("History", () => {
  test("starts empty after the given sequence", () => {
    const h = new History(10, 1000, 5);
    expect(h.firstSeq).toBe(6);
    expect(h.lastSeq).toBe(5);
    expect(h.length).toBe(0);
    expect(h.byteSize).toBe(0);
    expect(h.covers(6)).toBe(true); // the next write: nothing to send yet, but nothing missing
    expect(h.covers(5)).toBe(false);
    expect(h.covers(7)).toBe(false);
    expect(h.slice(6, 100)).toEqual([]);
  });

  test("refuses an append out of sequence", () => {
    const h = new History(10, 1000);
    h.append(1, bytesOf(1), 0);
    expect(() => h.append(3, bytesOf(1), 0)).toThrow(AssertionError);
    expect(() => h.append(1, bytesOf(1), 0)).toThrow(AssertionError);
  });

  test("keeps at most entriesMax entries, dropping the oldest", () => {
    const h = new History(3, 1_000_000);
    for (let s = 1; s <= 5; s++) h.append(s, bytesOf(10, s), s * 100);
    expect(h.length).toBe(3);
    expect(h.firstSeq).toBe(3);
    expect(h.lastSeq).toBe(5);
    expect(h.byteSize).toBe(30);
    expect([1, 2, 3, 4, 5, 6, 7].map((s) => h.covers(s))).toEqual([false, false, true, true, true, true, false]);
    expect(h.slice(3, 1000).map((f) => f[0])).toEqual([3, 4, 5]);
    expect(h.slice(5, 1000).map((f) => f[0])).toEqual([5]);
    expect(h.slice(6, 1000)).toEqual([]);
    expect(() => h.slice(2, 1000)).toThrow(AssertionError);
    expect(h.timeOf(2)).toBeUndefined();
    expect(h.timeOf(4)).toBe(400);
    expect(h.timeOf(6)).toBeUndefined();
  });

  test("keeps at most bytesMax bytes, but always the newest entry", () => {
    const h = new History(100, 25);
    h.append(1, bytesOf(10, 1), 0);
    h.append(2, bytesOf(10, 2), 0);
    expect(h.length).toBe(2);
    h.append(3, bytesOf(10, 3), 0);
    expect(h.length).toBe(2);
    expect(h.firstSeq).toBe(2);
    expect(h.byteSize).toBe(20);
    h.append(4, bytesOf(100, 4), 0); // larger than the whole budget on its own
    expect(h.length).toBe(1);
    expect(h.firstSeq).toBe(4);
    expect(h.byteSize).toBe(100);
    expect(h.slice(4, 10).map((f) => f.length)).toEqual([100]);
  });

  test("slice returns at least one frame and stops before going over the byte budget", () => {
    const h = new History(100, 1_000_000);
    for (let s = 1; s <= 10; s++) h.append(s, bytesOf(10, s), 0);
    expect(h.slice(1, 5).map((f) => f[0])).toEqual([1]);
    expect(h.slice(1, 30).map((f) => f[0])).toEqual([1, 2, 3]);
    expect(h.slice(1, 39).map((f) => f[0])).toEqual([1, 2, 3]);
    expect(h.slice(8, 1000).map((f) => f[0])).toEqual([8, 9, 10]);
  });

  test("holds exactly the newest entries within both bounds after any appends (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 20 }),
        fc.integer({ min: 1, max: 200 }),
        fc.integer({ min: 0, max: 50 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { maxLength: 120 }),
        (entriesMax, bytesMax, start, sizes) => {
          const h = new History(entriesMax, bytesMax, start);
          sizes.forEach((n, i) => h.append(start + 1 + i, bytesOf(n, (start + 1 + i) & 0xff), i));
          // Model: the longest suffix within both bounds, at least one entry.
          let keep = 0;
          let bytes = 0;
          for (let i = sizes.length - 1; i >= 0; i--) {
            if (keep > 0 && (keep + 1 > entriesMax || bytes + sizes[i]! > bytesMax)) break;
            keep++;
            bytes += sizes[i]!;
          }
          expect(h.length).toBe(keep);
          expect(h.byteSize).toBe(bytes);
          expect(h.lastSeq).toBe(start + sizes.length);
          expect(h.firstSeq).toBe(start + sizes.length - keep + 1);
          for (let s = h.firstSeq - 2; s <= h.lastSeq + 2; s++) expect(h.covers(s)).toBe(s >= h.firstSeq && s <= h.lastSeq + 1);
          if (keep > 0) {
            const all = h.slice(h.firstSeq, Number.POSITIVE_INFINITY);
            expect(all.map((f) => f[0])).toEqual(Array.from({ length: keep }, (_, i) => (h.firstSeq + i) & 0xff));
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  test("run gives the same bytes as slice, in one view per arena chunk, and a frame count", () => {
    const h = new History(100_000, 64 * 1024 * 1024);
    // ~3.5 MiB of 3,000-byte frames: the arena (1 MiB chunks) spans several chunks.
    const frame = (s: number) => bytesOf(3000, s & 0xff);
    for (let s = 1; s <= 1200; s++) h.append(s, frame(s), s);
    for (const [from, budget] of [[1, 10_000], [300, 5_000_000], [1, Number.POSITIVE_INFINITY], [1200, 1]] as const) {
      const frames = h.slice(from, budget);
      const { parts, count } = h.run(from, budget);
      expect(count).toBe(frames.length);
      expect(Buffer.concat(parts)).toEqual(Buffer.concat(frames));
      expect(parts.length).toBeLessThanOrEqual(Math.ceil((count * 3000) / (1 << 20)) + 1);
    }
    expect(h.run(1201, 100)).toEqual({ parts: [], count: 0 });
  });

  test("a view handed out stays intact after its entries are dropped and new ones appended", () => {
    const h = new History(500, 1_000_000);
    for (let s = 1; s <= 500; s++) h.append(s, bytesOf(1000, s & 0xff), 0);
    const { parts } = h.run(1, 100_000);
    const before = Buffer.concat(parts);
    for (let s = 501; s <= 5000; s++) h.append(s, bytesOf(1000, 0xee), 0);
    expect(h.firstSeq).toBe(4501);
    expect(Buffer.concat(parts)).toEqual(before);
    expect(before[0]).toBe(1);
  });

  test("appendEntry stores exactly the bytes encodeFrame gives, mixed with append, across chunks (property)", () => {
    const entry = fc.record({
      key: fc.string({ unit: "grapheme", minLength: 1, maxLength: 40 }),
      // Mostly small values; now and then one near or over a 1 MiB arena chunk.
      value: fc.oneof(
        { weight: 20, arbitrary: fc.option(fc.string({ unit: "binary", maxLength: 300 }), { nil: null }) },
        { weight: 1, arbitrary: fc.integer({ min: (1 << 20) - 100, max: (1 << 20) + 100 }).map((n) => "é".repeat(n >> 1)) },
      ),
      encoded: fc.boolean(),
      term: fc.oneof(fc.integer({ min: 0, max: 5 }), fc.constant(2 ** 40 + 3)),
    });
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 2 ** 33 }), fc.array(entry, { maxLength: 40 }), (start, entries) => {
        const h = new History(1000, 64 * 1024 * 1024, start);
        const expected = entries.map((e, i) => {
          const seq = start + 1 + i;
          const f: Frame = e.value === null ? { type: FrameType.Delete, group: GROUP, term: e.term, seq, key: e.key } : { type: FrameType.Put, group: GROUP, term: e.term, seq, key: e.key, value: e.value };
          const bytes = encodeFrame(f);
          if (e.encoded) h.append(seq, bytes, i, e.term);
          else h.appendEntry(seq, GROUP, e.term, e.key, e.value, i);
          const stored = h.slice(seq, 1)[0]!;
          expect(Buffer.from(stored).equals(bytes)).toBe(true);
          // A lone surrogate is encoded as U+FFFD, as Buffer does (the API refuses such strings).
          if (isWellFormed(e.key) && isWellFormed(e.value ?? "")) expect(decodeFrame(stored, 0, 1 << 24)).toEqual({ ok: true, frame: f, next: bytes.length });
          return bytes;
        });
        expect(Buffer.concat(h.slice(start + 1, Number.POSITIVE_INFINITY))).toEqual(Buffer.concat(expected));
        entries.forEach((e, i) => expect(h.termAt(start + 1 + i)).toBe(e.term));
        expect(h.byteSize).toBe(expected.reduce((n, b) => n + b.length, 0));
      }),
      { numRuns: 200 },
    );
  });

  test("stays correct after many entries have come and gone (the array is compacted)", () => {
    const h = new History(100, 1_000_000);
    for (let s = 1; s <= 20_000; s++) h.append(s, Uint8Array.of(s & 0xff, (s >> 8) & 0xff), s);
    expect(h.firstSeq).toBe(19_901);
    expect(h.length).toBe(100);
    const frames = h.slice(19_950, 1_000_000);
    expect(frames.length).toBe(51);
    expect(frames.map((f) => f[0]! | (f[1]! << 8))).toEqual(Array.from({ length: 51 }, (_, i) => 19_950 + i));
    expect(h.timeOf(19_999)).toBe(19_999);
  });
});

// --- Outbox ------------------------------------------------------------------------------------

describe("Outbox", () => {
  test("abort drops what is queued, terminates the connection, and sends nothing after", () => {
    let terminated = 0;
    const wire = Object.assign(new FakeWire(() => 1), { terminate: () => terminated++ });
    const out = new Outbox(wire);
    out.send(Uint8Array.of(1, 2, 3));
    expect(out.queuedBytes).toBe(2);
    out.abort();
    expect({ terminated, ended: wire.ended, queued: out.queuedBytes, closed: out.closed }).toEqual({ terminated: 1, ended: false, queued: 0, closed: true });
    out.send(Uint8Array.of(4));
    expect(out.flush()).toBe(true);
    expect([...concat(wire.take())]).toEqual([1]);
  });

  test("writes straight through while the socket takes everything", () => {
    const wire = new FakeWire();
    const out = new Outbox(wire);
    out.send(Uint8Array.of(1, 2));
    out.send(Uint8Array.of(3));
    expect(out.queuedBytes).toBe(0);
    expect([...concat(wire.take())]).toEqual([1, 2, 3]);
  });

  test("queues what a short write left and sends it, in order, on flush", () => {
    const caps = [1, 0, 2, 0, 100];
    const wire = new FakeWire(cycle(caps));
    const out = new Outbox(wire);
    out.send(Uint8Array.of(1, 2, 3)); // takes 1
    expect(out.queuedBytes).toBe(2);
    out.send(Uint8Array.of(4, 5)); // queued behind, not written
    expect(out.queuedBytes).toBe(4);
    expect(out.flush()).toBe(false); // takes 0
    expect(out.flush()).toBe(false); // takes 2: [2, 3], then 0 of [4, 5]
    expect(out.queuedBytes).toBe(2);
    expect(out.flush()).toBe(true);
    expect(out.queuedBytes).toBe(0);
    expect([...concat(wire.take())]).toEqual([1, 2, 3, 4, 5]);
  });

  test("delivers every byte in order under any pattern of short writes (property)", () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ maxLength: 50 }), { maxLength: 30 }),
        fc.array(fc.nat(20), { minLength: 1, maxLength: 10 }).map((c) => [...c, 7]),
        fc.array(fc.boolean(), { maxLength: 30 }),
        (messages, caps, flushes) => {
          const wire = new FakeWire(cycle(caps));
          const out = new Outbox(wire);
          messages.forEach((m, i) => {
            out.send(m);
            if (flushes[i]) out.flush();
          });
          let guard = 0;
          while (!out.flush()) if (++guard > 100_000) throw new Error("no progress");
          expect(out.queuedBytes).toBe(0);
          expect([...concat([new Uint8Array(0), ...wire.take()])]).toEqual([...concat([new Uint8Array(0), ...messages])]);
        },
      ),
      { numRuns: 500 },
    );
  });

  test("a socket that refuses with -1 closes the outbox and later sends are dropped", () => {
    const wire = new FakeWire(() => 1);
    const out = new Outbox(wire);
    out.send(Uint8Array.of(1, 2, 3));
    wire.broken = true;
    expect(out.flush()).toBe(false);
    expect(out.closed).toBe(true);
    out.send(Uint8Array.of(9));
    expect([...concat(wire.take())]).toEqual([1]);
    const out2 = new Outbox(wire);
    out2.send(Uint8Array.of(1));
    expect(out2.closed).toBe(true);
  });

  test("an empty send writes nothing and end closes the wire", () => {
    const wire = new FakeWire();
    const out = new Outbox(wire);
    out.send(new Uint8Array(0));
    expect(wire.totalBytes).toBe(0);
    out.end();
    expect(out.closed).toBe(true);
    expect(wire.ended).toBe(true);
  });
});

// --- Follower, frame by frame ------------------------------------------------------------------

const h = (seq: number) => ({ group: GROUP, term: 1, seq });
const welcome = (mode: number, seq = 0): Frame => ({ type: FrameType.Welcome, ...h(seq), historyId: HISTORY_ID, mode });
const put = (seq: number, key = `k${seq}`, value = `v${seq}`): Frame => ({ type: FrameType.Put, ...h(seq), key, value });

describe("Follower", () => {
  const fresh = () => {
    const store = new Store();
    return { store, f: new Follower(store, GROUP, CLUSTER, "f1") };
  };

  test("says hello with its position, history and identity", () => {
    const { f } = fresh();
    f.applied = 17;
    f.historyId = "h9";
    f.term = 2;
    const d = decodeFrame(f.hello(), 0, LINK_FRAME_MAX);
    expect(d.ok && d.frame).toEqual({ type: FrameType.Hello, group: GROUP, term: 2, seq: 17, cluster: CLUSTER, nodeId: "f1", historyId: "h9" });
    const a = decodeFrame(f.ack(), 0, LINK_FRAME_MAX);
    expect(a.ok && a.frame).toEqual({ type: FrameType.Ack, group: GROUP, term: 2, seq: 17 });
  });

  test("applies entries strictly in sequence and refuses a gap", () => {
    const { f, store } = fresh();
    expect(f.onFrame(welcome(WelcomeMode.Tail, 5))).toBeUndefined();
    expect(f.onFrame(put(1))).toBeUndefined();
    expect(f.onFrame(put(2))).toBeUndefined();
    const err = f.onFrame(put(4));
    expect(err).toMatch(/gap/);
    expect(err).toContain("3");
    expect(f.applied).toBe(2);
    expect(store.get("k4")).toBeUndefined();
    expect(f.onFrame({ type: FrameType.Delete, ...h(3), key: "k1" })).toBeUndefined();
    expect(store.get("k1")).toBeUndefined();
    expect(f.applied).toBe(3);
    expect(f.stats.applied).toBe(3);
  });

  test("ignores an entry it already has", () => {
    const { f, store } = fresh();
    f.onFrame(welcome(WelcomeMode.Tail));
    f.onFrame(put(1, "a", "first"));
    f.onFrame(put(2, "a", "second"));
    expect(f.onFrame(put(1, "a", "first"))).toBeUndefined();
    expect(entryOf(store.get("a"))).toEqual({ value: "second", version: 2 });
    expect(f.applied).toBe(2);
  });

  test("refuses entries before the welcome and during a full transfer", () => {
    const { f } = fresh();
    expect(f.onFrame(put(1))).toMatch(/in sync/);
    f.onFrame(welcome(WelcomeMode.Snapshot, 10));
    f.onFrame({ type: FrameType.SnapshotBegin, ...h(10), historyId: HISTORY_ID, count: 0 });
    expect(f.syncing).toBe(true);
    expect(f.onFrame(put(11))).toMatch(/in sync/);
  });

  test("refuses snapshot frames out of place", () => {
    const { f } = fresh();
    expect(f.onFrame({ type: FrameType.SnapshotBegin, ...h(1), historyId: HISTORY_ID, count: 0 })).toMatch(/before welcome/);
    f.onFrame(welcome(WelcomeMode.Snapshot, 1));
    expect(f.onFrame({ type: FrameType.SnapshotChunk, ...h(1), entries: [] })).toMatch(/outside/);
    expect(f.onFrame({ type: FrameType.SnapshotEnd, ...h(1) })).toMatch(/outside/);
    f.onFrame({ type: FrameType.SnapshotBegin, ...h(1), historyId: HISTORY_ID, count: 0 });
    expect(f.onFrame({ type: FrameType.SnapshotChunk, ...h(2), entries: [] })).toMatch(/outside/);
    expect(f.onFrame({ type: FrameType.SnapshotEnd, ...h(2) })).toMatch(/outside/);
  });

  test("swaps a full transfer in whole at its end, keeping the old state readable meanwhile", () => {
    const { f, store } = fresh();
    store.set("old", "x", 1);
    f.onFrame(welcome(WelcomeMode.Snapshot, 20));
    f.onFrame({ type: FrameType.SnapshotBegin, ...h(20), historyId: HISTORY_ID, count: 2 });
    f.onFrame({ type: FrameType.SnapshotChunk, ...h(20), entries: [{ key: "a", value: "1", version: 5 }] });
    expect(entryOf(store.get("old"))).toEqual({ value: "x", version: 1 });
    expect(store.get("a")).toBeUndefined();
    f.onFrame({ type: FrameType.SnapshotChunk, ...h(20), entries: [{ key: "b", value: "2", version: 19 }] });
    expect(f.onFrame({ type: FrameType.SnapshotEnd, ...h(20) })).toBeUndefined();
    expect(content(store)).toEqual([
      ["a", "1", 5],
      ["b", "2", 19],
    ]);
    expect(f.applied).toBe(20);
    expect(f.historyId).toBe(HISTORY_ID);
    expect(f.syncing).toBe(false);
    expect(f.stats.fullTransfers).toBe(1);
    expect(f.onFrame(put(21))).toBeUndefined();
    expect(f.applied).toBe(21);
  });

  test("refuses a full transfer that sends a key twice, keeping its own state", () => {
    const { f, store } = fresh();
    store.set("old", "x", 1);
    f.onFrame(welcome(WelcomeMode.Snapshot, 20));
    f.onFrame({ type: FrameType.SnapshotBegin, ...h(20), historyId: HISTORY_ID, count: 2 });
    f.onFrame({ type: FrameType.SnapshotChunk, ...h(20), entries: [{ key: "a", value: "1", version: 5 }] });
    expect(f.onFrame({ type: FrameType.SnapshotChunk, ...h(20), entries: [{ key: "a", value: "2", version: 6 }] })).toMatch(/twice/);
    expect(f.syncing).toBe(false);
    expect(content(store)).toEqual([["old", "x", 1]]);
    // The next link starts over with a hello; a transfer that begins again is staged afresh.
    f.hello();
    f.onFrame(welcome(WelcomeMode.Snapshot, 20));
    f.onFrame({ type: FrameType.SnapshotBegin, ...h(20), historyId: HISTORY_ID, count: 1 });
    f.onFrame({ type: FrameType.SnapshotChunk, ...h(20), entries: [{ key: "a", value: "2", version: 6 }] });
    expect(f.onFrame({ type: FrameType.SnapshotEnd, ...h(20) })).toBeUndefined();
    expect(content(store)).toEqual([["a", "2", 6]]);
  });

  test("refuses a full transfer that sends fewer or more keys than its begin said, keeping its own state", () => {
    for (const count of [1, 3]) {
      const { f, store } = fresh();
      store.set("old", "x", 1);
      f.onFrame(welcome(WelcomeMode.Snapshot, 20));
      f.onFrame({ type: FrameType.SnapshotBegin, ...h(20), historyId: HISTORY_ID, count });
      f.onFrame({ type: FrameType.SnapshotChunk, ...h(20), entries: [{ key: "a", value: "1", version: 5 }, { key: "b", value: "2", version: 6 }] });
      expect(f.onFrame({ type: FrameType.SnapshotEnd, ...h(20) })).toBe(`snapshot said it holds ${count} keys, it sent 2`);
      expect(f.syncing).toBe(false); // what was staged is dropped, not held through the reconnect
      expect(content(store)).toEqual([["old", "x", 1]]);
      expect(f.applied).toBe(0);
    }
  });

  test("applies Puts handed over as bytes, ASCII or not, and passes each entry's frame bytes on", () => {
    const store = new Store();
    const logged: [number, Buffer][] = [];
    const f = new Follower(store, GROUP, CLUSTER, "f1", { onEntry: (seq, frame) => logged.push([seq, Buffer.from(frame)]) });
    const frames: Frame[] = [
      welcome(WelcomeMode.Tail, 0),
      put(1, "plain", "ascii value"),
      put(2, "clé", "valeur"),
      put(3, "plain", "é"),
      { type: FrameType.Delete, ...h(4), key: "clé" },
      put(5, "k\0|", ""),
      put(2, "late", "already applied: ignored"),
    ];
    const chunk = Buffer.from(concat(frames.map((x) => encodeFrame(x))));
    const read = new FrameReader(LINK_FRAME_MAX).push(chunk, true);
    expect(read.frames.filter((x) => x.type === "put-bytes").length).toBe(5);
    for (const x of read.frames) expect(f.onFrame(x)).toBeUndefined();
    chunk.fill(0);
    expect(content(store)).toEqual([
      ["k\0|", "", 5],
      ["plain", "é", 3],
    ]);
    expect(store.versionOf("clé")).toBe(4);
    expect(f.applied).toBe(5);
    expect(logged).toEqual(frames.slice(1, 6).map((x) => [x.seq, Buffer.from(encodeFrame(x))]));
  });

  test("refuses frames of another group and reports a leader's error", () => {
    const { f } = fresh();
    expect(f.onFrame({ type: FrameType.Ping, group: GROUP + 1, term: 1, seq: 0 })).toMatch(/group/);
    expect(f.onFrame({ type: FrameType.Error, ...h(0), message: "nope" })).toBe("leader refused: nope");
    expect(f.onFrame({ type: FrameType.Ack, ...h(0) })).toMatch(/unexpected/);
    expect(f.onFrame({ type: FrameType.Hello, ...h(0), cluster: CLUSTER, nodeId: "x", historyId: "" })).toMatch(/unexpected/);
  });

  test("tracks the highest head the leader has told it about", () => {
    const { f } = fresh();
    f.onFrame({ type: FrameType.Ping, group: GROUP, term: 1, seq: 99 });
    expect(f.leaderHead).toBe(99);
    f.onFrame({ type: FrameType.Ping, group: GROUP, term: 1, seq: 50 });
    expect(f.leaderHead).toBe(99);
  });

  test("a new link's welcome resets the leader's head: a restarted leader that kept nothing is not 'ahead' by its old head", () => {
    const { f } = fresh();
    f.onFrame({ type: FrameType.Ping, group: GROUP, term: 1, seq: 500 });
    expect(f.leaderHead).toBe(500);
    f.hello();
    expect(f.onFrame({ type: FrameType.Welcome, ...h(5), historyId: "fresh-history", mode: WelcomeMode.Snapshot })).toBeUndefined();
    expect(f.leaderHead).toBe(5);
  });
});

// --- Leader, frame by frame --------------------------------------------------------------------

describe("Leader: waiting for followers (-sync-replicas)", () => {
  /** The promise's state after pending callbacks ran. */
  type State = "pending" | "resolved" | Error;
  const stateOf = async (p: Promise<void>): Promise<State> => {
    let s = "pending" as State;
    p.then(
      () => (s = "resolved"),
      (e: Error) => (s = e),
    );
    await Promise.resolve();
    await Promise.resolve();
    return s;
  };

  test("resolves once a follower acknowledged the write, in order, and at once for what it already has", async () => {
    const sim = new Sim();
    sim.connect();
    sim.settle();
    expect(sim.leader.connectedFollowers()).toBe(1);
    const s1 = sim.set("a", "1");
    const s2 = sim.set("b", "2");
    const p1 = sim.leader.whenReplicated(s1, 1, 100);
    const p2 = sim.leader.whenReplicated(s2, 1, 100);
    const p3 = sim.leader.whenReplicated(s2, 2, 100); // more followers than there are
    expect(await stateOf(p1)).toBe("pending");
    sim.settle();
    expect(await stateOf(p1)).toBe("resolved");
    expect(await stateOf(p2)).toBe("resolved");
    expect(await stateOf(p3)).toBe("pending");
    expect(await stateOf(sim.leader.whenReplicated(s2, 1, 100))).toBe("resolved");
    sim.advance(100);
    const e = await stateOf(p3);
    expect(e).toBeInstanceOf(ReplicationTimeout);
    expect(e).toMatchObject({ seq: s2, confirmed: 1, wanted: 2, timeoutMs: 100 });
  });

  test("rejects each write at its own deadline when no follower acknowledges, keeping the write", async () => {
    const sim = new Sim();
    sim.connect();
    sim.settle();
    sim.disconnect();
    expect(sim.leader.connectedFollowers()).toBe(0);
    const s1 = sim.set("a", "1");
    const p1 = sim.leader.whenReplicated(s1, 1, 100);
    sim.advance(50);
    const s2 = sim.set("b", "2");
    const p2 = sim.leader.whenReplicated(s2, 1, 100);
    sim.advance(48);
    expect(await stateOf(p1)).toBe("pending");
    sim.advance(1);
    expect(await stateOf(p1)).toBeInstanceOf(ReplicationTimeout);
    expect(await stateOf(p2)).toBe("pending");
    expect(sim.timers.length).toBe(1); // one timer at a time, for the first waiter
    sim.advance(60);
    expect(await stateOf(p2)).toMatchObject({ seq: s2, confirmed: 0, wanted: 1 });
    expect(sim.leaderStore.get("a")?.value).toBe("1");

    // A follower that comes back and catches up confirms later writes again.
    sim.connect();
    sim.settle();
    const s3 = sim.set("c", "3");
    const p3 = sim.leader.whenReplicated(s3, 1, 100);
    sim.settle();
    expect(await stateOf(p3)).toBe("resolved");
    expectInSync(sim);
  });
});

test("-sync-replicas: acks of a follower taking a full transfer (its old position, of another history) confirm nothing", async () => {
  const sim = new Sim();
  const link = sim.leader.attach(new Outbox(new FakeWire()), "x");
  for (let i = 1; i <= 5; i++) sim.set(`k${i}`, "new");
  expect(sim.leader.onFrame(link, { type: FrameType.Hello, ...h(3), cluster: CLUSTER, nodeId: "f", historyId: "old-history" })).toBeUndefined();
  let resolved = false;
  void sim.leader.whenReplicated(3, 1, 5000).then(() => (resolved = true));
  expect(sim.leader.onFrame(link, { type: FrameType.Ack, ...h(3) })).toBeUndefined();
  await Promise.resolve();
  expect(resolved).toBe(false);
  expect(sim.leader.confirmedBy(3)).toBe(0);
});

test("-sync-replicas: a follower node on two links (an old one not yet closed) counts once as linked, as it does as confirming", () => {
  const sim = new Sim();
  sim.set("a", "1");
  const hello = { type: FrameType.Hello, ...h(0), cluster: CLUSTER, nodeId: "f", historyId: "" } as const;
  const first = sim.leader.attach(new Outbox(new FakeWire()), "x");
  expect(sim.leader.onFrame(first, hello)).toBeUndefined();
  const second = sim.leader.attach(new Outbox(new FakeWire()), "y");
  expect(sim.leader.onFrame(second, hello)).toBeUndefined();
  expect(sim.leader.connectedFollowers()).toBe(1);
  const other = sim.leader.attach(new Outbox(new FakeWire()), "z");
  expect(sim.leader.onFrame(other, { ...hello, nodeId: "g" })).toBeUndefined();
  expect(sim.leader.connectedFollowers()).toBe(2);
});

describe("a leader's memory against followers that do not read", () => {
  const foreign = { type: FrameType.Hello, ...h(3), cluster: CLUSTER, historyId: "another-history" } as const;

  test("at most limits.fullTransfersMax full transfers run at once; another is refused as busy until one ends", () => {
    const sim = new Sim();
    // More than a link queues (4 MiB), over wires that take nothing: each transfer stays in progress.
    for (let i = 1; i <= 120; i++) sim.set(`k${i}`, "v".repeat(50_000));
    const links = Array.from({ length: limits.fullTransfersMax }, (_, i) => {
      const link = sim.leader.attach(new Outbox(new FakeWire(() => 0)), `peer-${i}`);
      expect(sim.leader.onFrame(link, { ...foreign, nodeId: `f${i}` } as Frame)).toBeUndefined();
      expect(link.mode).toBe("snapshot");
      return link;
    });
    const extra = sim.leader.attach(new Outbox(new FakeWire(() => 0)), "peer-x");
    const err = sim.leader.onFrame(extra, { ...foreign, nodeId: "fx" } as Frame);
    expect(err).toContain("busy");
    // A follower of this history streams from its position: no transfer, never busy.
    const tail = sim.leader.attach(new Outbox(new FakeWire()), "peer-t");
    expect(sim.leader.onFrame(tail, { type: FrameType.Hello, ...h(20), cluster: CLUSTER, nodeId: "ft", historyId: HISTORY_ID } as Frame)).toBeUndefined();
    expect(tail.mode).toBe("stream");
    sim.leader.detach(links[0]!);
    const again = sim.leader.attach(new Outbox(new FakeWire(() => 0)), "peer-y");
    expect(sim.leader.onFrame(again, { ...foreign, nodeId: "fy" } as Frame)).toBeUndefined();
    expect(again.mode).toBe("snapshot");
  });

  test("a link whose queued bytes make no progress for limits.followerStallMs is cut off at the next ping; one that reads slowly is not", () => {
    const sim = new Sim();
    for (let i = 1; i <= 20; i++) sim.set(`k${i}`, "v".repeat(100));
    let t = 0;
    const stuckWire = Object.assign(new FakeWire(() => 0), { terminated: 0, terminate() { this.terminated++; } });
    const stuck = sim.leader.attach(new Outbox(stuckWire, () => t), "stuck");
    expect(sim.leader.onFrame(stuck, { ...foreign, nodeId: "f1" } as Frame)).toBeUndefined();
    let room = 0;
    const slowWire = new FakeWire(() => room);
    const slowOut = new Outbox(slowWire, () => t);
    const slow = sim.leader.attach(slowOut, "slow");
    expect(sim.leader.onFrame(slow, { ...foreign, nodeId: "f2" } as Frame)).toBeUndefined();
    expect(stuck.out.stalledMs()).toBe(0);
    for (t = 5_000; t <= limits.followerStallMs + 5_000; t += 5_000) {
      room = 10; // the slow one takes a few bytes now and then
      slowOut.flush();
      room = 0;
      sim.leader.ping();
    }
    expect(stuck.out.closed).toBe(true);
    expect(stuckWire.terminated).toBe(1);
    expect(slow.out.closed).toBe(false);
    expect(slowOut.stalledMs()).toBeLessThan(limits.followerStallMs);
  });
});

describe("Leader handshake", () => {
  const hello = (p: Partial<Extract<Frame, { type: 1 }>> = {}): Frame => ({
    type: FrameType.Hello,
    ...h(0),
    cluster: CLUSTER,
    nodeId: "f1",
    historyId: "",
    ...p,
  });

  test("refuses an ack before hello, a second hello, and frames a follower never sends", () => {
    const sim = new Sim();
    const link = sim.leader.attach(new Outbox(new FakeWire()), "x");
    expect(sim.leader.onFrame(link, { type: FrameType.Ack, ...h(0) })).toMatch(/before hello/);
    expect(sim.leader.onFrame(link, hello())).toBeUndefined();
    expect(sim.leader.onFrame(link, hello())).toMatch(/second hello/);
    expect(sim.leader.onFrame(link, put(1))).toMatch(/unexpected/);
  });

  test("refuses a follower of another cluster or group", () => {
    const sim = new Sim();
    const link = sim.leader.attach(new Outbox(new FakeWire()), "x");
    expect(sim.leader.onFrame(link, hello({ cluster: "elsewhere" }))).toMatch(/cluster/);
    const link2 = sim.leader.attach(new Outbox(new FakeWire()), "y");
    expect(sim.leader.onFrame(link2, { ...hello(), group: GROUP + 1 })).toMatch(/group/);
  });

  test("refuses an ack beyond its head", () => {
    const sim = new Sim();
    sim.set("a", "1");
    const link = sim.leader.attach(new Outbox(new FakeWire()), "x");
    sim.leader.onFrame(link, hello());
    expect(sim.leader.onFrame(link, { type: FrameType.Ack, ...h(1) })).toBeUndefined();
    expect(sim.leader.onFrame(link, { type: FrameType.Ack, ...h(2) })).toMatch(/beyond head/);
  });

  test("numbers writes and deletes consecutively and applies them to its store", () => {
    const sim = new Sim();
    expect(sim.set("a", "1")).toBe(1);
    expect(sim.set("b", "2")).toBe(2);
    expect(sim.delete("a")).toEqual({ existed: true, seq: 3, pending: false });
    expect(sim.set("a", "again")).toBe(4);
    expect(sim.leader.head).toBe(4);
    expect(content(sim.leaderStore)).toEqual([
      ["a", "again", 4],
      ["b", "2", 2],
    ]);
  });

  test("with a log, a delete of a key whose delete is still on its way to the log names that delete, and is applied only with it", () => {
    const store = new Store();
    const appended: number[] = [];
    const leader = new Leader({
      store, group: GROUP, term: 1, historyId: HISTORY_ID, cluster: CLUSTER, historyEntries: 100,
      now: () => 0, log: silentLogger, schedule: () => {}, wal: { append: (seq) => void appended.push(seq) },
    });
    expect(leader.set("a", "1")).toBe(1);
    leader.durable(1);
    expect(leader.delete("a")).toEqual({ existed: true, seq: 2, pending: false });
    // A second delete before the first is durable: nothing new is proposed; the caller must wait for seq 2.
    expect(leader.delete("a")).toEqual({ existed: false, seq: 2, pending: true });
    expect(appended).toEqual([1, 2]);
    expect(store.get("a")?.value).toBe("1"); // not applied yet: a read still finds it
    leader.durable(2);
    expect(store.get("a")).toBeUndefined();
    expect(leader.delete("a")).toEqual({ existed: false, seq: 2, pending: false });
    // A pending write is a key that exists: deleting it proposes a delete.
    expect(leader.set("b", "1")).toBe(3);
    expect(leader.delete("b")).toEqual({ existed: true, seq: 4, pending: false });
  });

  test("lastChangeOf names a change still on its way to the log (an import skipped for it waits for it), else the store's version", () => {
    const store = new Store();
    const leader = new Leader({
      store, group: GROUP, term: 1, historyId: HISTORY_ID, cluster: CLUSTER, historyEntries: 100,
      now: () => 0, log: silentLogger, schedule: () => {}, wal: { append: () => {} },
    });
    expect(leader.lastChangeOf("k")).toBe(0);
    const s1 = leader.set("k", "client write");
    expect(leader.setIfUnknown("k", "moved copy")).toBeUndefined(); // skipped for the pending write
    expect(leader.lastChangeOf("k")).toBe(s1);
    leader.durable(s1);
    expect(leader.lastChangeOf("k")).toBe(s1);
    const s2 = leader.set("k", "again");
    leader.failed(s2, Object.assign(new Error("ENOSPC"), { code: "ENOSPC" }));
    expect(leader.lastChangeOf("k")).toBe(s1);
  });

  test("deleting a missing key takes no sequence and sends nothing", () => {
    const sim = new Sim();
    sim.set("a", "1");
    sim.connect();
    sim.settle();
    const sent = sim.conn!.leaderWire.totalBytes;
    sim.scheduled = false;
    expect(sim.delete("missing")).toEqual({ existed: false, seq: 1, pending: false });
    expect(sim.scheduled).toBe(false);
    sim.delete("a");
    expect(sim.delete("a")).toEqual({ existed: false, seq: 2, pending: false }); // already deleted
    expect(sim.leader.head).toBe(2);
    sim.settle();
    expectInSync(sim);
    const deletes = sim.conn!.framesToFollower.filter((f) => f.type === FrameType.Delete);
    expect(deletes.length).toBe(1);
    expect(sim.conn!.leaderWire.totalBytes).toBeGreaterThan(sent);
  });
});

// --- Leader and follower together --------------------------------------------------------------

describe("replication between a leader and a follower", () => {
  test("a fresh follower gets everything by tail catch-up", () => {
    const sim = new Sim();
    writeMany(sim, 200);
    sim.connect();
    sim.settle();
    expectInSync(sim);
    expect(sim.leader.stats).toEqual({ tailCatchUps: 1, fullTransfers: 0, resyncs: 0 });
    expect(sim.follower.stats.tailCatchUps).toBe(1);
    expect(sim.follower.stats.fullTransfers).toBe(0);
    expect(sim.follower.stats.applied).toBe(sim.leader.head);
    const welcomeFrame = sim.conn!.framesToFollower[0]!;
    expect(welcomeFrame).toMatchObject({ type: FrameType.Welcome, mode: WelcomeMode.Tail, seq: sim.leader.head });
  });

  test("a follower that forgot its history (its transfer could not be persisted) gets a full transfer on its next link", () => {
    const sim = new Sim();
    writeMany(sim, 50);
    sim.connect();
    sim.settle();
    expectInSync(sim);
    sim.disconnect();
    sim.follower.forgetHistory();
    writeMany(sim, 5);
    sim.connect();
    sim.settle();
    expectInSync(sim);
    expect(sim.follower.stats.fullTransfers).toBe(1);
    expect(sim.conn!.framesToFollower[0]).toMatchObject({ type: FrameType.Welcome, mode: WelcomeMode.Snapshot });
  });

  test("a follower connected before any write streams every later write", () => {
    const sim = new Sim();
    sim.connect();
    sim.settle();
    expect(sim.leader.followers()).toEqual([
      { node_id: "follower-1", address: "127.0.0.1:5555", state: "stream", acked_seq: 0, lag: 0, last_ack_ms_ago: 0, replication_delay_ms: 0 },
    ]);
    for (let i = 0; i < 50; i++) {
      sim.set(`k${i % 10}`, `v${i}`);
      if (i % 3 === 0) sim.delete(`k${(i + 5) % 10}`);
      sim.step();
    }
    sim.settle();
    expectInSync(sim);
    expect(sim.leader.followers()[0]).toMatchObject({ acked_seq: sim.leader.head, lag: 0, state: "stream" });
  });

  test("the leader reports a follower's lag until it acks", () => {
    const sim = new Sim();
    sim.connect();
    sim.settle();
    sim.set("a", "1");
    sim.set("b", "2");
    expect(sim.leader.followers()[0]).toMatchObject({ acked_seq: 0, lag: 2 });
    sim.clock += 7;
    sim.settle();
    expect(sim.leader.followers()[0]).toMatchObject({ acked_seq: 2, lag: 0, replication_delay_ms: 7, last_ack_ms_ago: 0 });
  });

  test("a follower of another history with a non-zero position gets a full transfer", () => {
    const followerStore = new Store();
    followerStore.set("stale", "from an old leader", 3);
    followerStore.set("a", "old a", 7);
    const follower = new Follower(followerStore, GROUP, CLUSTER, "follower-1");
    follower.historyId = "some-older-history";
    follower.applied = 7;
    const sim = new Sim({ follower, followerStore });
    writeMany(sim, 100);
    sim.connect();
    sim.settle();
    expectInSync(sim);
    expect(followerStore.get("stale")).toBeUndefined();
    expect(sim.leader.stats).toEqual({ tailCatchUps: 0, fullTransfers: 1, resyncs: 0 });
    expect(follower.stats.fullTransfers).toBe(1);
    expect(sim.conn!.framesToFollower[0]).toMatchObject({ type: FrameType.Welcome, mode: WelcomeMode.Snapshot });
  });

  test("a follower claiming to be ahead of the leader gets a full transfer", () => {
    const followerStore = new Store();
    followerStore.set("from-the-future", "x", 999);
    const follower = new Follower(followerStore, GROUP, CLUSTER, "f");
    follower.historyId = HISTORY_ID;
    follower.applied = 1_000;
    const sim = new Sim({ follower, followerStore });
    writeMany(sim, 20);
    sim.connect();
    sim.settle();
    expectInSync(sim, { checkAcked: false });
    expect(sim.leader.stats.fullTransfers).toBe(1);
  });

  test("a follower back within the history catches up by tail, one behind it by full transfer", () => {
    const sim = new Sim({ historyEntries: 10 });
    writeMany(sim, 5);
    sim.connect();
    sim.settle();
    expectInSync(sim);

    sim.disconnect();
    for (let i = 0; i < 8; i++) sim.set(`x${i}`, "within");
    sim.connect();
    sim.settle();
    expectInSync(sim);
    expect(sim.leader.stats).toEqual({ tailCatchUps: 2, fullTransfers: 0, resyncs: 0 });

    sim.disconnect();
    for (let i = 0; i < 30; i++) sim.set(`y${i}`, "beyond");
    sim.delete("x0");
    expect(sim.leader.historyFirstSeq).toBeGreaterThan(sim.follower.applied + 1);
    sim.connect();
    sim.settle();
    expectInSync(sim);
    expect(sim.leader.stats).toEqual({ tailCatchUps: 2, fullTransfers: 1, resyncs: 0 });
    expect(sim.follower.stats.fullTransfers).toBe(1);
  });

  test("writes and deletes made during a multi-chunk full transfer arrive after it", () => {
    const followerStore = new Store();
    const follower = new Follower(followerStore, GROUP, CLUSTER, "f");
    follower.historyId = "other";
    follower.applied = 1;
    const sim = new Sim({ follower, followerStore, caps: [4096, 0, 777, 10_000], chunks: [1000, 3, 65536] });
    const value = "x".repeat(900) + "é€😀";
    for (let i = 0; i < 1500; i++) sim.set(`key-${i}`, `${i}:${value}`);
    sim.connect();
    let writes = 0;
    for (let turn = 0; turn < 5000 && (sim.follower.syncing || sim.follower.stats.fullTransfers === 0); turn++) {
      sim.step();
      sim.set(`during-${writes % 50}`, `w${writes}`);
      if (writes % 4 === 0) sim.delete(`key-${writes}`);
      writes++;
    }
    const chunks = sim.conn!.framesToFollower.filter((f) => f.type === FrameType.SnapshotChunk).length;
    expect(chunks).toBeGreaterThan(2);
    expect(writes).toBeGreaterThan(10);
    sim.settle();
    expectInSync(sim);
    expect(sim.leader.stats.fullTransfers).toBe(1);
  });

  test("a follower stalled until it falls behind the history is resynchronised with a full transfer", () => {
    let open = true;
    const sim = new Sim({ historyEntries: 5 });
    sim.connect();
    sim.conn!.leaderWire.cap = () => (open ? 100_000 : 0);
    sim.settle();
    open = false; // the follower's socket stops taking bytes
    const big = "z".repeat(200_000);
    for (let i = 0; i < 40; i++) {
      sim.set(`big${i % 7}`, `${i}${big}`);
      sim.step();
    }
    expect(sim.conn!.leaderOut.queuedBytes).toBeGreaterThanOrEqual(limits.followerQueuedBytesMax);
    expect(sim.conn!.link.next).toBeLessThan(sim.leader.historyFirstSeq);
    open = true;
    sim.settle();
    expectInSync(sim);
    expect(sim.leader.stats.resyncs).toBe(1);
    expect(sim.follower.stats.fullTransfers).toBe(1);
  });

  test("a follower of another history is reported by what it acked here, never by the position it claimed", () => {
    const followerStore = new Store();
    const follower = new Follower(followerStore, GROUP, CLUSTER, "follower-1");
    follower.historyId = "some-older-history";
    follower.applied = 50;
    const sim = new Sim({ follower, followerStore });
    for (let i = 0; i < 10; i++) sim.set(`k${i}`, "v");
    sim.connect();
    sim.settle();
    expectInSync(sim, { checkAcked: false });
    // The follower has applied exactly the leader's 10 writes; its old 50 belongs to another history.
    const [info] = sim.leader.followers();
    expect(info!.acked_seq).toBe(10);
    expect(info!.lag).toBe(0);
    // Five more writes the follower has not received yet must show as lag.
    sim.disconnect();
    sim.connect();
    sim.settle();
    expect(sim.leader.followers()[0]!.acked_seq).toBe(10);
    for (let i = 0; i < 5; i++) sim.set(`more${i}`, "v");
    expect(sim.leader.followers()[0]!.lag).toBe(5);
  });

  test("a snapshot chunk never exceeds the frame limit the link enforces, even with multi-byte values", () => {
    // 250 values of 1000 three-byte characters, then one value at the 1 MiB limit: all within the
    // configured key and value limits, so a follower must be able to receive them.
    const followerStore = new Store();
    const follower = new Follower(followerStore, GROUP, CLUSTER, "f");
    follower.historyId = "other";
    follower.applied = 1;
    const sim = new Sim({ follower, followerStore });
    for (let i = 0; i < 250; i++) sim.set(`cjk-${i}`, "中".repeat(1000));
    sim.set("big", "b".repeat(limits.valueBytesMax));
    sim.connect();
    sim.settle();
    expect(sim.errors).toEqual([]);
    expectInSync(sim);
  });

  test("follower converges to the leader's exact state for any ops, join point, history and short writes (property)", () => {
    type Op =
      | { k: "set"; key: string; value: string }
      | { k: "del"; key: string }
      | { k: "step"; n: number }
      | { k: "drop" }
      | { k: "reconnect" }
      | { k: "purge" };
    const key = fc.constantFrom("a", "b", "c", "d", "e", "", "\0", "|", "😀", "k\nl");
    const value = fc.oneof(
      fc.string({ unit: "binary", maxLength: 12 }),
      fc.constantFrom("", "\0", "a|b\nc", "😀😀"),
      fc.integer({ min: 100, max: 3000 }).map((n) => "v".repeat(n)),
    );
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 6, arbitrary: fc.record({ k: fc.constant("set" as const), key, value }) },
      { weight: 3, arbitrary: fc.record({ k: fc.constant("del" as const), key }) },
      { weight: 3, arbitrary: fc.record({ k: fc.constant("step" as const), n: fc.integer({ min: 1, max: 4 }) }) },
      { weight: 1, arbitrary: fc.constant({ k: "drop" as const }) },
      { weight: 1, arbitrary: fc.constant({ k: "reconnect" as const }) },
      { weight: 1, arbitrary: fc.constant({ k: "purge" as const }) },
    );
    fc.assert(
      fc.property(
        fc.array(op, { maxLength: 80, size: "max" }),
        fc.nat(60),
        fc.constantFrom("fresh", "foreign"),
        fc.integer({ min: 1, max: 25 }),
        fc.array(fc.integer({ min: 0, max: 400 }), { minLength: 1, maxLength: 8 }).map((c) => [...c, 1 + (c[0] ?? 0)]),
        fc.array(fc.integer({ min: 1, max: 200 }), { minLength: 1, maxLength: 8 }),
        (ops, joinAt, start, historyEntries, caps, chunks) => {
          const followerStore = new Store();
          const follower = new Follower(followerStore, GROUP, CLUSTER, "f");
          if (start === "foreign") {
            followerStore.set("junk", "x", 1);
            follower.historyId = "another-history";
            follower.applied = 1 + (joinAt % 9);
          }
          const sim = new Sim({ follower, followerStore, historyEntries, caps, chunks });
          ops.forEach((o, i) => {
            if (i === joinAt) sim.connect();
            switch (o.k) {
              case "set":
                sim.set(o.key, o.value);
                break;
              case "del":
                sim.delete(o.key);
                break;
              case "step":
                for (let j = 0; j < o.n; j++) sim.step();
                break;
              case "drop":
                if (sim.conn) sim.disconnect();
                break;
              case "reconnect":
                if (!sim.conn && i > joinAt) sim.connect();
                break;
              case "purge":
                sim.leader.purgeTombstones();
                sim.follower.purgeTombstones(historyEntries);
                break;
            }
            expect(sim.errors).toEqual([]);
          });
          if (!sim.conn) sim.connect();
          sim.settle();
          // (acked positions are checked in their own test: a foreign follower's claimed position skews them)
          expectInSync(sim, { checkAcked: start === "fresh" });
          // Versions are the leader's sequences: the follower's agree for every live key.
          for (const [k, e] of sim.leaderStore.snapshot()) expect(followerStore.versionOf(k)).toBe(e.version);
          if (process.env.KV_STATS) console.log(JSON.stringify({ ops: ops.length, head: sim.leader.head, ...sim.leader.stats }));
        },
      ),
      { numRuns: 300 },
    );
  });
});
