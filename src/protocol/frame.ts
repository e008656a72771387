/**
 * Frames on the cluster port: replication between a leader and its followers, and requests one
 * node forwards to another (Request / Response, on links of their own).
 *
 * Every frame: u32 length of what follows, then a 22-byte header and a payload (big-endian):
 *
 *   0  u32 length   bytes after this field (22 + payload), at most the link's frame limit
 *   4  u8  version  PROTOCOL_VERSION
 *   5  u8  type     FrameType
 *   6  u32 group    replication group
 *  10  u64 term     leader term (history epoch); 1 until leader election exists
 *  18  u64 seq      sequence the frame is about (entry seq, acked seq, snapshot seq, request id)
 *  26  payload      per type, strings as u32 byte length + UTF-8 bytes
 *
 * Binary safe: keys and values are length-prefixed, so any character (NUL, newline, `|`) passes.
 */
import { Reader, Short, Writer, asBuffer } from "./_bytes.ts";

export const PROTOCOL_VERSION = 1;
export const FRAME_HEADER_BYTES = 26;

/** ONLY APPEND TO THIS LIST: the numbers are on the wire. */
export const FrameType = {
  Hello: 1,
  Welcome: 2,
  SnapshotBegin: 3,
  SnapshotChunk: 4,
  SnapshotEnd: 5,
  Put: 6,
  Delete: 7,
  Ack: 8,
  Ping: 9,
  Error: 10,
  Request: 11,
  Response: 12,
} as const;
export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

export const WelcomeMode = { Tail: 0, Snapshot: 1 } as const;

/** What a forwarded Request asks for. ONLY APPEND: on the wire. */
export const RequestOp = { Get: 1, Set: 2, Delete: 3 } as const;
/** Bits of a Request's flags. */
export const RequestFlag = { NoFallback: 1, AnyReplica: 2 } as const;

export interface Header {
  group: number;
  term: number;
  seq: number;
}

export interface SnapshotEntry {
  key: string;
  value: string;
  version: number;
}

export type Frame =
  | (Header & { type: typeof FrameType.Hello; cluster: string; nodeId: string; historyId: string })
  | (Header & { type: typeof FrameType.Welcome; historyId: string; mode: number })
  | (Header & { type: typeof FrameType.SnapshotBegin; historyId: string; count: number })
  | (Header & { type: typeof FrameType.SnapshotChunk; entries: SnapshotEntry[] })
  | (Header & { type: typeof FrameType.SnapshotEnd })
  | (Header & { type: typeof FrameType.Put; key: string; value: string })
  | (Header & { type: typeof FrameType.Delete; key: string })
  | (Header & { type: typeof FrameType.Ack })
  | (Header & { type: typeof FrameType.Ping })
  | (Header & { type: typeof FrameType.Error; message: string })
  /** group: the group it is meant for; seq: the request id, echoed in the Response. */
  | (Header & { type: typeof FrameType.Request; op: number; flags: number; hops: number; key: string; value: string })
  /** group: the group of the node that served it; body: the API's JSON answer. */
  | (Header & { type: typeof FrameType.Response; status: number; nodeId: string; body: string });

/**
 * Not a frame type on the wire: a Put frame left as its bytes, as `FrameReader.push(chunk, true)`
 * hands it over. A follower copies the key and value into its store as they are, without making
 * strings of them. `buf` is the received chunk: valid only until the handler returns.
 */
export interface PutBytes extends Header {
  type: "put-bytes";
  buf: Buffer;
  /** The whole frame is buf[start, end). */
  start: number;
  end: number;
  /** The key's and the value's UTF-8 bytes. */
  keyAt: number;
  keyBytes: number;
  valueAt: number;
  valueBytes: number;
}

/** The Put frame a PutBytes stands for, with its key and value as strings. */
export function putFrameOf(p: PutBytes): Extract<Frame, { type: typeof FrameType.Put }> {
  const b = p.buf as Buffer & { utf8Slice(start: number, end: number): string };
  return { type: FrameType.Put, group: p.group, term: p.term, seq: p.seq, key: b.utf8Slice(p.keyAt, p.keyAt + p.keyBytes), value: b.utf8Slice(p.valueAt, p.valueAt + p.valueBytes) };
}

export type DecodeFailure = "need-more" | "too-large" | "too-small" | "bad-version" | "bad-type" | "malformed";
export type Decoded = { ok: true; frame: Frame; next: number } | { ok: false; reason: DecodeFailure };

function begin(w: Writer, type: FrameTypeCode, h: Header): void {
  w.u32(0).u8(PROTOCOL_VERSION).u8(type).u32(h.group).u64(h.term).u64(h.seq);
}

function finish(w: Writer): Buffer {
  w.patchU32(0, w.length - 4);
  return w.bytes();
}

/** Bytes of a Put frame (value a string) or a Delete frame (value null) of `key`. */
export function entryFrameBytes(key: string, value: string | null): number {
  return FRAME_HEADER_BYTES + 4 + Buffer.byteLength(key) + (value === null ? 0 : 4 + Buffer.byteLength(value));
}

/**
 * Write a Put frame (value a string) or a Delete frame (value null) at `at` in `b`; `len` is its
 * entryFrameBytes. Put and Delete are the hot path (every write, every replica, every log record):
 * the leader writes them straight into its history, other callers into one exact allocation.
 */
export function writeEntryFrame(b: Buffer, at: number, len: number, group: number, term: number, seq: number, key: string, value: string | null): void {
  b.writeUInt32BE(len - 4, at);
  b[at + 4] = PROTOCOL_VERSION;
  b[at + 5] = value === null ? FrameType.Delete : FrameType.Put;
  b.writeUInt32BE(group >>> 0, at + 6);
  b.writeUInt32BE(Math.floor(term / 2 ** 32), at + 10);
  b.writeUInt32BE(term % 2 ** 32, at + 14);
  b.writeUInt32BE(Math.floor(seq / 2 ** 32), at + 18);
  b.writeUInt32BE(seq % 2 ** 32, at + 22);
  // The same UTF-8 bytes Buffer.byteLength counted (a lone surrogate is 3 bytes in both).
  const kn = b.write(key, at + 30, "utf8");
  b.writeUInt32BE(kn, at + 26);
  if (value !== null) {
    const vn = len - (FRAME_HEADER_BYTES + 8 + kn);
    b.writeUInt32BE(vn, at + 30 + kn);
    b.write(value, at + 34 + kn, vn, "utf8");
  }
}

function encodeEntry(h: Header, key: string, value: string | null): Buffer {
  const len = entryFrameBytes(key, value);
  const b = Buffer.allocUnsafe(len);
  writeEntryFrame(b, 0, len, h.group, h.term, h.seq, key, value);
  return b;
}

/** Encode one frame. Big frames (entries, chunks) size the buffer up front. */
export function encodeFrame(f: Frame): Buffer {
  if (f.type === FrameType.Put) return encodeEntry(f, f.key, f.value);
  if (f.type === FrameType.Delete) return encodeEntry(f, f.key, null);
  const w = new Writer(128);
  begin(w, f.type, f);
  switch (f.type) {
    case FrameType.Hello:
      w.str32(f.cluster).str32(f.nodeId).str32(f.historyId);
      break;
    case FrameType.Welcome:
      w.str32(f.historyId).u8(f.mode);
      break;
    case FrameType.SnapshotBegin:
      w.str32(f.historyId).u32(f.count);
      break;
    case FrameType.SnapshotChunk:
      w.u32(f.entries.length);
      for (const e of f.entries) w.str32(e.key).str32(e.value).u64(e.version);
      break;
    case FrameType.Error:
      w.str32(f.message);
      break;
    case FrameType.Request:
      w.u8(f.op).u8(f.flags).u32(f.hops).str32(f.key).str32(f.value);
      break;
    case FrameType.Response:
      w.u16(f.status).str32(f.nodeId).str32(f.body);
      break;
    case FrameType.SnapshotEnd:
    case FrameType.Ack:
    case FrameType.Ping:
      break;
    default:
      throw new Error(`cannot encode frame type ${(f as Frame).type}`);
  }
  return finish(w);
}

/** Where the frame starting at `offset` ends, once it is all in `buf`; else why not. */
function frameEnd(buf: Uint8Array, offset: number, frameBytesMax: number): number | DecodeFailure {
  if (buf.length - offset < 4) return "need-more";
  const len = ((buf[offset]! << 24) | (buf[offset + 1]! << 16) | (buf[offset + 2]! << 8) | buf[offset + 3]!) >>> 0;
  if (len > frameBytesMax) return "too-large";
  if (len < FRAME_HEADER_BYTES - 4) return "too-small";
  // The version is checked before waiting for the whole frame, so garbage is refused at once.
  if (buf.length - offset >= 5 && buf[offset + 4] !== PROTOCOL_VERSION) return "bad-version";
  const end = offset + 4 + len;
  return buf.length < end ? "need-more" : end;
}

/** decodeFrame of the whole Put frame at buf[offset, end), leaving its key and value as bytes; null when malformed. */
function decodePutBytes(buf: Buffer, offset: number, end: number): PutBytes | null {
  const r = new Reader(buf, offset + 6, end);
  try {
    const group = r.u32();
    const term = r.u64();
    const seq = r.u64();
    const keyAt = r.skip32();
    const valueAt = r.skip32();
    if (!r.done()) return null;
    return { type: "put-bytes", group, term, seq, buf, start: offset, end, keyAt, keyBytes: valueAt - 4 - keyAt, valueAt, valueBytes: end - valueAt };
  } catch (e) {
    if (e instanceof Short) return null;
    throw e;
  }
}

/**
 * Decode the frame starting at `offset`. Never throws: returns "need-more" when the buffer ends
 * inside the frame, and a reason when the bytes cannot be a frame of ours.
 */
export function decodeFrame(buf: Uint8Array, offset: number, frameBytesMax: number): Decoded {
  const end = frameEnd(buf, offset, frameBytesMax);
  if (typeof end !== "number") return { ok: false, reason: end };
  const r = new Reader(buf, offset + 5, end);
  try {
    const type = r.u8();
    const group = r.u32();
    const term = r.u64();
    const seq = r.u64();
    let frame: Frame;
    // Entries first, and built field by field: they are nearly every frame on a replication link.
    if (type === FrameType.Put) frame = { type, group, term, seq, key: r.str32(), value: r.str32() };
    else if (type === FrameType.Delete) frame = { type, group, term, seq, key: r.str32() };
    else {
      const h: Header = { group, term, seq };
      switch (type) {
        case FrameType.Hello:
          frame = { type, ...h, cluster: r.str32(), nodeId: r.str32(), historyId: r.str32() };
          break;
        case FrameType.Welcome:
          frame = { type, ...h, historyId: r.str32(), mode: r.u8() };
          break;
        case FrameType.SnapshotBegin:
          frame = { type, ...h, historyId: r.str32(), count: r.u32() };
          break;
        case FrameType.SnapshotChunk: {
          const n = r.u32();
          // Each entry takes at least 16 bytes: a count larger than the frame allows is garbage.
          if (n * 16 > end - r.pos) return { ok: false, reason: "malformed" };
          const entries: SnapshotEntry[] = new Array(n);
          for (let i = 0; i < n; i++) entries[i] = { key: r.str32(), value: r.str32(), version: r.u64() };
          frame = { type, ...h, entries };
          break;
        }
        case FrameType.Error:
          frame = { type, ...h, message: r.str32() };
          break;
        case FrameType.Request:
          frame = { type, ...h, op: r.u8(), flags: r.u8(), hops: r.u32(), key: r.str32(), value: r.str32() };
          break;
        case FrameType.Response:
          frame = { type, ...h, status: r.u16(), nodeId: r.str32(), body: r.str32() };
          break;
        case FrameType.SnapshotEnd:
        case FrameType.Ack:
        case FrameType.Ping:
          frame = { type, ...h };
          break;
        default:
          return { ok: false, reason: "bad-type" };
      }
    }
    if (!r.done()) return { ok: false, reason: "malformed" };
    return { ok: true, frame, next: end };
  } catch (e) {
    if (e instanceof Short) return { ok: false, reason: "malformed" };
    throw e;
  }
}

/**
 * Accumulates the chunks of a byte stream and yields whole frames. Keeps the leftover of a frame
 * cut across chunks; copies only when a frame spans chunks.
 */
export class FrameReader {
  /** The start of an unfinished frame, as received (copies: a chunk's memory is not ours to keep). */
  private parts: Uint8Array[] = [];
  private partsBytes = 0;
  /** Bytes that frame needs in all, once its length prefix has arrived (else 0). */
  private need = 0;
  constructor(private readonly frameBytesMax: number) {}

  /**
   * Push a chunk; returns the whole frames in it, or the reason the stream is not ours. With
   * `putsAsBytes`, Put frames come as PutBytes (views of this chunk: use them before returning).
   */
  push(chunk: Uint8Array): { frames: Frame[]; error?: DecodeFailure };
  push(chunk: Uint8Array, putsAsBytes: boolean): { frames: (Frame | PutBytes)[]; error?: DecodeFailure };
  push(chunk: Uint8Array, putsAsBytes = false): { frames: (Frame | PutBytes)[]; error?: DecodeFailure } {
    // A frame still short after this chunk: keep the chunk and decode nothing (joining everything
    // on every chunk copied a frame arriving in small pieces over and over: found by an audit).
    // (Once its version byte is in, so that garbage is still refused as soon as it arrives.)
    if (this.partsBytes >= 5 && this.partsBytes + chunk.length < this.need) {
      this.parts.push(Uint8Array.prototype.slice.call(chunk));
      this.partsBytes += chunk.length;
      return { frames: [] };
    }
    // One Buffer over the chunk: the decoder reads strings from it without a view per string.
    let buf: Buffer = asBuffer(chunk);
    if (this.partsBytes > 0) {
      const joined = Buffer.allocUnsafe(this.partsBytes + chunk.length);
      let at = 0;
      for (const p of this.parts) {
        joined.set(p, at);
        at += p.length;
      }
      joined.set(chunk, at);
      buf = joined;
      this.parts = [];
      this.partsBytes = 0;
      this.need = 0;
    }
    const frames: (Frame | PutBytes)[] = [];
    let off = 0;
    while (off < buf.length) {
      if (putsAsBytes && buf.length - off > 5 && buf[off + 5] === FrameType.Put) {
        const end = frameEnd(buf, off, this.frameBytesMax);
        if (typeof end === "number") {
          const p = decodePutBytes(buf, off, end);
          if (p === null) return { frames, error: "malformed" };
          frames.push(p);
          off = end;
          continue;
        }
      }
      const d = decodeFrame(buf, off, this.frameBytesMax);
      if (d.ok) {
        frames.push(d.frame);
        off = d.next;
        continue;
      }
      if (d.reason === "need-more") {
        const rest = Buffer.from(buf.subarray(off)); // a copy: the chunk's memory is not ours to keep
        this.parts = [rest];
        this.partsBytes = rest.length;
        this.need = rest.length >= 4 ? 4 + rest.readUInt32BE(0) : 0;
        break;
      }
      return { frames, error: d.reason };
    }
    return { frames };
  }

  get bufferedBytes(): number {
    return this.partsBytes;
  }
}
