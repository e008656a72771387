import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { crc32, crc32Table } from "../../src/lib/crc32.ts";
import { limits } from "../../src/lib/limits.ts";
import { isWellFormed, utf8Length } from "../../src/lib/utf8.ts";
import {
  DATAGRAM_MAGIC,
  DATAGRAM_VERSION,
  DatagramType,
  FRAME_HEADER_BYTES,
  FrameReader,
  FrameType,
  PROTOCOL_VERSION,
  WelcomeMode,
  decodeDatagram,
  decodeFrame,
  encodeDatagram,
  encodeFrame,
  putFrameOf,
  type Announcement,
  type Frame,
} from "../../src/protocol/index.ts";

const MAX = 1 << 20;

// --- arbitraries -------------------------------------------------------------------------------

/** Well-formed strings (no lone surrogates) with a strong bias towards the awkward characters. */
const awkward = ["\0", "\n", "\r", "|", "😀", "👩‍👩‍👧", "é", "中", "\u{10FFFF}", "\uFFFD", "a", " ", "\\", '"'];
const text = fc.oneof(
  fc.string({ unit: "binary", maxLength: 40 }),
  fc.string({ unit: fc.constantFrom(...awkward), maxLength: 20 }),
  fc.constantFrom("", "\0", "\n", "|", "😀", "a|b\nc\0d😀"),
);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const u53 = fc.oneof(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }), fc.constantFrom(0, 1, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1));
const header = fc.record({ group: u32, term: u53, seq: u53 });

const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  fc.tuple(header, text, text, text).map(([h, cluster, nodeId, historyId]) => ({ type: FrameType.Hello, ...h, cluster, nodeId, historyId }) as Frame),
  fc.tuple(header, text, fc.integer({ min: 0, max: 255 })).map(([h, historyId, mode]) => ({ type: FrameType.Welcome, ...h, historyId, mode }) as Frame),
  fc.tuple(header, text, u32).map(([h, historyId, count]) => ({ type: FrameType.SnapshotBegin, ...h, historyId, count }) as Frame),
  fc
    .tuple(header, fc.array(fc.record({ key: text, value: text, version: u53 }), { maxLength: 8 }))
    .map(([h, entries]) => ({ type: FrameType.SnapshotChunk, ...h, entries }) as Frame),
  header.map((h) => ({ type: FrameType.SnapshotEnd, ...h }) as Frame),
  fc.tuple(header, text, text).map(([h, key, value]) => ({ type: FrameType.Put, ...h, key, value }) as Frame),
  fc.tuple(header, text).map(([h, key]) => ({ type: FrameType.Delete, ...h, key }) as Frame),
  header.map((h) => ({ type: FrameType.Ack, ...h }) as Frame),
  header.map((h) => ({ type: FrameType.Ping, ...h }) as Frame),
  fc.tuple(header, text).map(([h, message]) => ({ type: FrameType.Error, ...h, message }) as Frame),
  fc
    .tuple(header, fc.integer({ min: 0, max: 255 }), fc.integer({ min: 0, max: 255 }), u32, text, text)
    .map(([h, op, flags, hops, key, value]) => ({ type: FrameType.Request, ...h, op, flags, hops, key, value }) as Frame),
  fc.tuple(header, fc.integer({ min: 0, max: 0xffff }), text, text).map(([h, status, nodeId, body]) => ({ type: FrameType.Response, ...h, status, nodeId, body }) as Frame),
);

const concat = (parts: Uint8Array[]): Uint8Array => Buffer.concat(parts);

/**
 * Push `bytes` into a fresh reader cut at the given offsets; returns every frame and any error.
 * With `putsAsBytes`, each Put that comes as bytes is checked against its frame and made into it
 * while its chunk is valid (each chunk pushed is a copy, overwritten after the push).
 */
function readInPieces(bytes: Uint8Array, cuts: number[], putsAsBytes = false, max = MAX): { frames: Frame[]; errors: string[]; buffered: number } {
  const reader = new FrameReader(max);
  const frames: Frame[] = [];
  const errors: string[] = [];
  const points = [...new Set(cuts.map((c) => Math.min(Math.max(c, 0), bytes.length)))].sort((a, b) => a - b);
  let from = 0;
  for (const to of [...points, bytes.length]) {
    const chunk = Buffer.from(bytes.subarray(from, to));
    const r = reader.push(chunk, putsAsBytes);
    for (const f of r.frames) {
      if (f.type !== "put-bytes") {
        frames.push(f);
        continue;
      }
      const whole = decodeFrame(f.buf.subarray(f.start, f.end), 0, max);
      expect(whole.ok && whole.frame).toEqual(putFrameOf(f));
      expect(f.buf.readUInt32BE(f.keyAt - 4)).toBe(f.keyBytes);
      expect(f.buf.readUInt32BE(f.valueAt - 4)).toBe(f.valueBytes);
      frames.push(putFrameOf(f));
    }
    chunk.fill(0xee);
    if (r.error) errors.push(r.error);
    from = to;
  }
  return { frames, errors, buffered: reader.bufferedBytes };
}

const sample: Frame[] = [
  { type: FrameType.Hello, group: 3, term: 1, seq: 42, cluster: "kvnode", nodeId: "n-1", historyId: "h|1" },
  { type: FrameType.Welcome, group: 3, term: 1, seq: 99, historyId: "h|1", mode: WelcomeMode.Snapshot },
  { type: FrameType.SnapshotBegin, group: 3, term: 1, seq: 99, historyId: "h|1", count: 2 },
  { type: FrameType.SnapshotChunk, group: 3, term: 1, seq: 99, entries: [{ key: "a\0", value: "", version: 7 }, { key: "😀", value: "x\ny", version: 2 ** 53 - 1 }] },
  { type: FrameType.SnapshotEnd, group: 3, term: 1, seq: 99 },
  { type: FrameType.Put, group: 3, term: 1, seq: 100, key: "k|1", value: "v\0\n|😀" },
  { type: FrameType.Delete, group: 3, term: 1, seq: 101, key: "k|1" },
  { type: FrameType.Ack, group: 3, term: 1, seq: 101 },
  { type: FrameType.Ping, group: 3, term: 1, seq: 101 },
  { type: FrameType.Error, group: 0, term: 0, seq: 0, message: "go away" },
  { type: FrameType.Request, group: 2, term: 0, seq: 7, op: 2, flags: 1, hops: 1, key: "k|1", value: "v\0\n|😀" },
  { type: FrameType.Response, group: 2, term: 0, seq: 7, status: 200, nodeId: "n-2", body: '{"status":"ok","key":"k|1","version":3}' },
];

// --- frames ------------------------------------------------------------------------------------

describe("replication frames", () => {
  test("every frame type survives encode then decode unchanged", () => {
    const seen = new Set<number>();
    for (const f of sample) {
      const bytes = encodeFrame(f);
      const d = decodeFrame(bytes, 0, MAX);
      expect(d).toEqual({ ok: true, frame: f, next: bytes.length });
      seen.add(f.type);
    }
    expect([...seen].sort((a, b) => a - b)).toEqual(Object.values(FrameType).sort((a, b) => a - b));
  });

  test("a random frame of any type and any unicode content round-trips exactly (property)", () => {
    fc.assert(
      fc.property(frameArb, (f) => {
        const bytes = encodeFrame(f);
        const d = decodeFrame(bytes, 0, MAX);
        expect(d.ok).toBe(true);
        if (!d.ok) return;
        expect(d.frame).toEqual(f);
        expect(d.next).toBe(bytes.length);
      }),
      { numRuns: 2000 },
    );
  });

  test("the length prefix counts exactly the bytes after it and the header is 26 bytes", () => {
    fc.assert(
      fc.property(frameArb, (f) => {
        const bytes = encodeFrame(f);
        const len = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(0);
        expect(len).toBe(bytes.length - 4);
        expect(bytes.length).toBeGreaterThanOrEqual(FRAME_HEADER_BYTES);
        expect(bytes[4]).toBe(PROTOCOL_VERSION);
        expect(bytes[5]).toBe(f.type);
      }),
      { numRuns: 300 },
    );
  });

  test("a frame decodes at a non-zero offset and reports where the next one starts", () => {
    const a = encodeFrame(sample[5]!);
    const b = encodeFrame(sample[6]!);
    const buf = concat([a, b]);
    const first = decodeFrame(buf, 0, MAX);
    expect(first.ok && first.next).toBe(a.length);
    const second = decodeFrame(buf, a.length, MAX);
    expect(second).toEqual({ ok: true, frame: sample[6]!, next: buf.length });
  });

  test("lone surrogates are sent as U+FFFD without corrupting the frame or the ones after it", () => {
    const f: Frame = { type: FrameType.Put, group: 0, term: 1, seq: 1, key: "a\uD800b", value: "\uDC00" };
    const next: Frame = { type: FrameType.Delete, group: 0, term: 1, seq: 2, key: "z" };
    const { frames, errors } = readInPieces(concat([encodeFrame(f), encodeFrame(next)]), []);
    expect(errors).toEqual([]);
    expect(frames).toEqual([{ ...f, key: "a\uFFFDb", value: "\uFFFD" }, next]);
  });

  test("every strict prefix of a frame is need-more, never an error", () => {
    for (const f of sample) {
      const bytes = encodeFrame(f);
      for (let n = 0; n < bytes.length; n++) expect(decodeFrame(bytes.subarray(0, n), 0, MAX)).toEqual({ ok: false, reason: "need-more" });
    }
  });

  test("a length above the limit is refused as too-large from the first four bytes alone", () => {
    const prefix = new Uint8Array(4);
    new DataView(prefix.buffer).setUint32(0, 1001);
    expect(decodeFrame(prefix, 0, 1000)).toEqual({ ok: false, reason: "too-large" });
    new DataView(prefix.buffer).setUint32(0, 0xffffffff);
    expect(decodeFrame(prefix, 0, MAX)).toEqual({ ok: false, reason: "too-large" });
    // Through the reader too: the error comes before any of the body arrived.
    const reader = new FrameReader(1000);
    expect(reader.push(prefix).error).toBe("too-large");
  });

  test("a frame exactly at the limit is accepted and one byte over is too-large", () => {
    const f: Frame = { type: FrameType.Put, group: 0, term: 1, seq: 1, key: "k", value: "v".repeat(100) };
    const bytes = encodeFrame(f);
    const len = bytes.length - 4;
    expect(decodeFrame(bytes, 0, len).ok).toBe(true);
    expect(decodeFrame(bytes, 0, len - 1)).toEqual({ ok: false, reason: "too-large" });
  });

  test("a length too short to hold the header is too-small", () => {
    const buf = new Uint8Array(4 + 21);
    new DataView(buf.buffer).setUint32(0, 21);
    buf[4] = PROTOCOL_VERSION;
    expect(decodeFrame(buf, 0, MAX)).toEqual({ ok: false, reason: "too-small" });
  });

  test("a wrong version byte is bad-version, as soon as that byte has arrived", () => {
    const bytes = Buffer.from(encodeFrame(sample[5]!));
    bytes[4] = PROTOCOL_VERSION + 1;
    expect(decodeFrame(bytes, 0, MAX)).toEqual({ ok: false, reason: "bad-version" });
    expect(decodeFrame(bytes.subarray(0, 5), 0, MAX)).toEqual({ ok: false, reason: "bad-version" });
    bytes[4] = 0;
    expect(new FrameReader(MAX).push(bytes.subarray(0, 5)).error).toBe("bad-version");
  });

  test("an unknown frame type is bad-type", () => {
    for (const t of [0, 13, 200, 255]) {
      const bytes = Buffer.from(encodeFrame(sample[7]!));
      bytes[5] = t;
      expect(decodeFrame(bytes, 0, MAX)).toEqual({ ok: false, reason: "bad-type" });
    }
  });

  test("bytes left over inside the frame, or strings running past its end, are malformed", () => {
    // Ack with 3 extra bytes counted in its length.
    const ack = encodeFrame(sample[7]!);
    const longer = Buffer.concat([ack, Buffer.from([1, 2, 3])]);
    longer.writeUInt32BE(ack.length - 4 + 3, 0);
    expect(decodeFrame(longer, 0, MAX)).toEqual({ ok: false, reason: "malformed" });
    // Put whose key claims more bytes than the frame holds.
    const put = Buffer.from(encodeFrame({ type: FrameType.Put, group: 0, term: 1, seq: 1, key: "abc", value: "d" }));
    put.writeUInt32BE(1000, FRAME_HEADER_BYTES);
    expect(decodeFrame(put, 0, MAX)).toEqual({ ok: false, reason: "malformed" });
    // A snapshot chunk claiming 2^32-1 entries is refused without allocating them.
    const chunk = Buffer.from(encodeFrame({ type: FrameType.SnapshotChunk, group: 0, term: 1, seq: 1, entries: [] }));
    chunk.writeUInt32BE(0xffffffff, FRAME_HEADER_BYTES);
    expect(decodeFrame(chunk, 0, MAX)).toEqual({ ok: false, reason: "malformed" });
  });

  test("a sequence at or beyond 2^53 is malformed rather than silently rounded", () => {
    const bytes = Buffer.from(encodeFrame(sample[7]!));
    bytes.writeUInt32BE(0x00200000, 18); // seq high word: 2^53
    expect(decodeFrame(bytes, 0, MAX)).toEqual({ ok: false, reason: "malformed" });
  });
});

describe("FrameReader", () => {
  const stream = concat(sample.map((f) => encodeFrame(f)));

  test("reassembles a stream split into two pieces at every possible cut point", () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      const r = readInPieces(stream, [cut]);
      expect(r.errors).toEqual([]);
      expect(r.frames).toEqual(sample);
      expect(r.buffered).toBe(0);
    }
  });

  test("reassembles a stream fed one byte at a time", () => {
    const cuts = Array.from({ length: stream.length }, (_, i) => i);
    const r = readInPieces(stream, cuts);
    expect(r.errors).toEqual([]);
    expect(r.frames).toEqual(sample);
  });

  test("reassembles random frames split at random cut points (property)", () => {
    fc.assert(
      fc.property(fc.array(frameArb, { minLength: 1, maxLength: 12 }), fc.array(fc.nat(), { maxLength: 30 }), (frames, rawCuts) => {
        const bytes = concat(frames.map((f) => encodeFrame(f)));
        const r = readInPieces(
          bytes,
          rawCuts.map((c) => c % (bytes.length + 1)),
        );
        expect(r.errors).toEqual([]);
        expect(r.frames).toEqual(frames);
        expect(r.buffered).toBe(0);
      }),
      { numRuns: 500 },
    );
  });

  test("with putsAsBytes, Puts come as their bytes and the stream reads exactly as without, damaged or not (property)", () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { minLength: 1, maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 3 }),
        fc.constantFrom(MAX, 64),
        (list, rawCuts, edits, max) => {
          const bytes = Buffer.from(concat(list.map((f) => encodeFrame(f))));
          for (const [at, v] of edits) bytes[at % bytes.length] = v;
          const cuts = rawCuts.map((c) => c % (bytes.length + 1));
          expect(readInPieces(bytes, cuts, true, max)).toEqual(readInPieces(bytes, cuts, false, max));
        },
      ),
      { numRuns: 2000 },
    );
    // Undamaged, every Put of the sample comes through.
    expect(readInPieces(stream, [17, 100], true).frames).toEqual(sample);
  });

  test("keeps exactly the unfinished tail of a frame buffered", () => {
    const a = encodeFrame(sample[0]!);
    const b = encodeFrame(sample[1]!);
    const reader = new FrameReader(MAX);
    const r1 = reader.push(concat([a, b.subarray(0, 7)]));
    expect(r1.frames).toEqual([sample[0]!]);
    expect(reader.bufferedBytes).toBe(7);
    const r2 = reader.push(b.subarray(7));
    expect(r2.frames).toEqual([sample[1]!]);
    expect(reader.bufferedBytes).toBe(0);
  });

  test("returns the frames before a bad one together with the error", () => {
    const bad = Buffer.from(encodeFrame(sample[8]!));
    bad[4] = 9;
    const r = new FrameReader(MAX).push(concat([encodeFrame(sample[7]!), bad]));
    expect(r.frames).toEqual([sample[7]!]);
    expect(r.error).toBe("bad-version");
  });
});

describe("decoders on hostile input", () => {
  test("random bytes never make decodeFrame or FrameReader.push throw (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.integer({ min: 0, max: 1 << 16 }), fc.nat(), (bytes, max, cut) => {
        const d = decodeFrame(bytes, 0, max);
        if (d.ok) expect(d.next).toBeLessThanOrEqual(bytes.length);
        const reader = new FrameReader(max);
        const at = cut % (bytes.length + 1);
        const first = reader.push(bytes.subarray(0, at));
        if (!first.error) reader.push(bytes.subarray(at));
      }),
      { numRuns: 5000 },
    );
  });

  test("valid frames with random bytes overwritten never make the decoders throw (property)", () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { minLength: 1, maxLength: 4 }),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }),
        (frames, edits) => {
          const bytes = Buffer.from(concat(frames.map((f) => encodeFrame(f))));
          for (const [at, v] of edits) bytes[at % bytes.length] = v;
          const d = decodeFrame(bytes, 0, MAX);
          if (d.ok) expect(d.next).toBeLessThanOrEqual(bytes.length);
          new FrameReader(MAX).push(bytes);
        },
      ),
      { numRuns: 5000 },
    );
  });

  test("random bytes never make decodeDatagram throw (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 1500 }), fc.option(fc.string({ maxLength: 8 })), (bytes, cluster) => {
        decodeDatagram(bytes, cluster ?? undefined);
      }),
      { numRuns: 3000 },
    );
  });

  test("random bytes behind a valid datagram prefix never make decodeDatagram throw (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 400 }), fc.constantFrom(1, 2, 3), (body, type) => {
        const buf = Buffer.alloc(8 + body.length);
        buf.writeUInt16BE(DATAGRAM_MAGIC, 0);
        buf[2] = DATAGRAM_VERSION;
        buf[3] = type;
        buf.set(body, 8);
        // Make the checksum right so the decoder goes on to parse the fields.
        const withSum = Buffer.from(buf);
        withSum.writeUInt32BE(crc(withSum.subarray(8)), 4);
        decodeDatagram(buf);
        const d = decodeDatagram(withSum);
        if (!d.ok) expect(["malformed", "wrong-cluster"]).toContain(d.reason);
      }),
      { numRuns: 3000 },
    );
  });
});

// --- datagrams ---------------------------------------------------------------------------------

/** Independent bitwise CRC-32 (IEEE), to build datagrams by hand. */
function crc(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

const dgText = (minLength = 0) =>
  fc.oneof(fc.string({ unit: "binary", minLength, maxLength: 60 }), fc.string({ unit: fc.constantFrom(...awkward), minLength, maxLength: 60 })).filter((s) => Buffer.byteLength(s) <= 255);

const announcementArb: fc.Arbitrary<Announcement> = fc.record({
  type: fc.constantFrom(DatagramType.Announce, DatagramType.Leave),
  cluster: dgText(),
  nodeId: dgText(1),
  host: dgText(),
  clusterPort: fc.integer({ min: 0, max: 65535 }),
  apiPort: fc.integer({ min: 0, max: 65535 }),
  group: u32,
  leader: fc.boolean(),
  draining: fc.boolean(),
  moving: fc.boolean(),
  term: u53,
  seq: u53,
  historyId: dgText(),
  keys: u53,
});

const announcement: Announcement = {
  type: DatagramType.Announce,
  cluster: "kvnode",
  nodeId: "node-1",
  host: "127.0.0.1",
  clusterPort: 8000,
  apiPort: 9000,
  group: 2,
  leader: true,
  draining: false,
  moving: true,
  term: 1,
  seq: 12345,
  historyId: "h-abc",
  keys: 777,
};

describe("discovery datagrams", () => {
  test("an announcement round-trips", () => {
    expect(decodeDatagram(encodeDatagram(announcement), "kvnode")).toEqual({ ok: true, message: announcement });
    expect(decodeDatagram(encodeDatagram({ ...announcement, type: DatagramType.Leave, leader: false }))).toEqual({
      ok: true,
      message: { ...announcement, type: DatagramType.Leave, leader: false },
    });
  });

  test("random announcements round-trip exactly (property)", () => {
    fc.assert(
      fc.property(announcementArb, (m) => {
        const bytes = encodeDatagram(m);
        expect(bytes.length).toBeLessThanOrEqual(limits.datagramBytesMax);
        expect(decodeDatagram(bytes, m.cluster)).toEqual({ ok: true, message: m });
      }),
      { numRuns: 1000 },
    );
  });

  test("a datagram with every string at its 255-byte maximum and the largest numbers stays within 1400 bytes", () => {
    for (const s of ["x".repeat(255), "é".repeat(127) + "x", "中".repeat(85), "😀".repeat(63) + "abc"]) {
      expect(Buffer.byteLength(s)).toBe(255);
      const m: Announcement = {
        ...announcement,
        cluster: s,
        nodeId: s,
        host: s,
        historyId: s,
        clusterPort: 65535,
        apiPort: 65535,
        group: 0xffffffff,
        term: Number.MAX_SAFE_INTEGER,
        seq: Number.MAX_SAFE_INTEGER,
      };
      const bytes = encodeDatagram(m);
      expect(bytes.length).toBeLessThanOrEqual(1400);
      expect(decodeDatagram(bytes, s)).toEqual({ ok: true, message: m });
    }
  });

  test("a string field over 255 bytes is refused at encode time", () => {
    for (const field of ["cluster", "nodeId", "host", "historyId"] as const)
      expect(() => encodeDatagram({ ...announcement, [field]: "é".repeat(128) })).toThrow(RangeError);
  });

  test("every single flipped bit makes the datagram rejected", () => {
    const bytes = encodeDatagram(announcement);
    for (let bit = 0; bit < bytes.length * 8; bit++) {
      const copy = Buffer.from(bytes);
      copy[bit >> 3]! ^= 1 << (bit & 7);
      const d = decodeDatagram(copy, "kvnode");
      expect(d.ok).toBe(false);
      // Past the 8-byte header, only the checksum can catch it.
      if (bit >= 64 && !d.ok) expect(d.reason).toBe("bad-checksum");
    }
  });

  test("a random flipped bit in a random announcement is rejected (property)", () => {
    fc.assert(
      fc.property(announcementArb, fc.nat(), (m, pick) => {
        const bytes = Buffer.from(encodeDatagram(m));
        const bit = pick % (bytes.length * 8);
        bytes[bit >> 3]! ^= 1 << (bit & 7);
        expect(decodeDatagram(bytes).ok).toBe(false);
      }),
      { numRuns: 2000 },
    );
  });

  test("a datagram of another cluster is wrong-cluster, and accepted without a filter", () => {
    const bytes = encodeDatagram(announcement);
    expect(decodeDatagram(bytes, "other")).toEqual({ ok: false, reason: "wrong-cluster" });
    expect(decodeDatagram(bytes, "kvnod")).toEqual({ ok: false, reason: "wrong-cluster" });
    expect(decodeDatagram(bytes).ok).toBe(true);
  });

  test("a buffer larger than 1400 bytes is too-large whatever it holds", () => {
    expect(decodeDatagram(new Uint8Array(1401))).toEqual({ ok: false, reason: "too-large" });
    const padded = Buffer.concat([encodeDatagram(announcement), Buffer.alloc(1401)]);
    expect(decodeDatagram(padded, "kvnode")).toEqual({ ok: false, reason: "too-large" });
  });

  test("wrong magic, wrong version, short buffers, trailing bytes and an empty node id are refused", () => {
    const good = encodeDatagram(announcement);
    const magic = Buffer.from(good);
    magic[0] = 0;
    expect(decodeDatagram(magic)).toEqual({ ok: false, reason: "bad-magic" });
    const version = Buffer.from(good);
    version[2] = DATAGRAM_VERSION + 1;
    expect(decodeDatagram(version)).toEqual({ ok: false, reason: "bad-version" });
    expect(decodeDatagram(good.subarray(0, 7))).toEqual({ ok: false, reason: "malformed" });
    for (let n = 8; n < good.length; n++) expect(decodeDatagram(good.subarray(0, n)).ok).toBe(false);
    // Trailing byte with a checksum that covers it.
    const trailing = Buffer.concat([good, Buffer.from([0])]);
    trailing.writeUInt32BE(crc(trailing.subarray(8)), 4);
    expect(decodeDatagram(trailing)).toEqual({ ok: false, reason: "malformed" });
    expect(decodeDatagram(encodeDatagram({ ...announcement, nodeId: "" }))).toEqual({ ok: false, reason: "malformed" });
  });

  test("the checksum is the standard CRC-32 of everything after the 8-byte header", () => {
    const bytes = encodeDatagram(announcement);
    expect(bytes.readUInt32BE(4)).toBe(crc(bytes.subarray(8)));
  });
});

// --- byte helpers the codecs rely on -----------------------------------------------------------

describe("crc32 and utf8Length", () => {
  test("the native crc32 equals the portable table version on random bytes and ranges", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 5000 }), fc.nat(), fc.nat(), (bytes, a, b) => {
        const start = bytes.length ? a % bytes.length : 0;
        const end = bytes.length ? start + (b % (bytes.length - start + 1)) : 0;
        expect(crc32(bytes)).toBe(crc32Table(bytes));
        expect(crc32(bytes, start, end)).toBe(crc32Table(bytes, start, end));
      }),
      { numRuns: 500 },
    );
    expect(crc32Table(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
  });

  test("crc32 gives the standard check value and 0 for no bytes", () => {
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
    expect(crc32(new Uint8Array(0))).toBe(0);
  });

  test("crc32 of a range equals crc32 of that range copied out, and matches a bitwise reference (property)", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), fc.nat(), fc.nat(), (bytes, a, b) => {
        const start = a % (bytes.length + 1);
        const end = start + (b % (bytes.length - start + 1));
        expect(crc32(bytes, start, end)).toBe(crc(bytes.slice(start, end)));
        expect(crc32(bytes)).toBe(crc(bytes));
      }),
      { numRuns: 500 },
    );
  });

  test("utf8Length equals the encoded length of any string, lone surrogates counted as U+FFFD (property)", () => {
    const units = fc.array(fc.oneof(fc.integer({ min: 0, max: 0xffff }), fc.integer({ min: 0xd800, max: 0xdfff })), { maxLength: 40 });
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: "binary" }), units.map((u) => String.fromCharCode(...u))), (s) => {
        expect(utf8Length(s)).toBe(Buffer.byteLength(s, "utf8"));
        expect(utf8Length(s)).toBe(new TextEncoder().encode(s).length);
      }),
      { numRuns: 1000 },
    );
  });

  test("isWellFormed tells strings with a lone surrogate apart", () => {
    expect(isWellFormed("a😀b")).toBe(true);
    expect(isWellFormed("a\uD800b")).toBe(false);
    expect(isWellFormed("\uDC00")).toBe(false);
    expect(isWellFormed("")).toBe(true);
  });
});
