/**
 * Log and snapshot files are sequences of records: a u32 CRC-32 of the frame, then a replication
 * frame exactly as it travels on the wire (u32 length + header + payload, src/protocol/frame.ts).
 * One format for the write-ahead log, snapshots and the full state transfer. Pure.
 *
 *   0  u32 crc32   of the frame bytes that follow
 *   4  frame       u32 length, version, type, group, term, seq, payload
 */
import { crc32 } from "../lib/crc32.ts";
import { FRAME_HEADER_BYTES, type Frame, PROTOCOL_VERSION, decodeFrame } from "../protocol/frame.ts";

/** Wrap encoded frame bytes into a record. */
export function encodeRecord(frame: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(4 + frame.length);
  out.writeUInt32BE(crc32(frame), 0);
  out.set(frame, 4);
  return out;
}

export type ScanEnd =
  /** Every byte was a whole, valid record. */
  | { kind: "clean" }
  /** The last record is cut short or fails its checksum and nothing follows it: what a crash leaves. */
  | { kind: "torn"; offset: number; bytes: number; why: string }
  /** A bad record with more bytes after it: the log is damaged, not merely cut. */
  | { kind: "corrupt"; offset: number; why: string };

export interface Scan {
  frames: Frame[];
  /** Bytes of whole valid records from the start (where a torn tail is cut). */
  validBytes: number;
  end: ScanEnd;
}

/** The big-endian u32 at `at` (a record's checksum at 0, its frame's length at 4). */
const u32At = (b: Uint8Array, at: number): number => ((b[at]! << 24) | (b[at + 1]! << 16) | (b[at + 2]! << 8) | b[at + 3]!) >>> 0;

/** True when a whole, valid record starts at some offset in [from, end of bytes). */
function validRecordAfter(bytes: Uint8Array, from: number, frameBytesMax: number): boolean {
  for (let off = from; off + 8 + FRAME_HEADER_BYTES - 4 <= bytes.length; off++) {
    const len = u32At(bytes, off + 4);
    if (len < FRAME_HEADER_BYTES - 4 || len > frameBytesMax || off + 8 + len > bytes.length) continue;
    if (bytes[off + 8] !== PROTOCOL_VERSION) continue;
    const sum = u32At(bytes, off);
    if (crc32(bytes, off + 4, off + 8 + len) === sum) return true;
  }
  return false;
}

/**
 * True when the bytes from `off` are the start of a record that runs past the end of `bytes`
 * (a header cut short, or a declared length within the limit that ends beyond them): more bytes
 * could make it whole. A reader taking a file in pieces carries such a record over to the next
 * piece, whatever `scanRecords` guessed from what follows it in this one.
 */
export function recordRunsPastEnd(bytes: Uint8Array, off: number, frameBytesMax: number): boolean {
  const rest = bytes.length - off;
  if (rest < 8) return true;
  const len = u32At(bytes, off + 4);
  return len <= frameBytesMax && off + 8 + len > bytes.length;
}

/**
 * Read every record in `bytes`. A bad record (cut short, a length beyond the file or the limit,
 * a checksum mismatch) is a torn tail only when no valid record starts anywhere after it: that
 * is what a crash leaves. Otherwise it is corruption, even when its damaged length field makes it
 * look like the tail, so recovery never cuts good records off. Never throws (unless `onFrame`
 * does). With `onFrame`, each frame goes to it as it is read instead of into `frames` (a
 * snapshot's entries are then not all held at once), with the frame's own bytes (a view into
 * `bytes`, valid while they are).
 */
export function scanRecords(bytes: Uint8Array, frameBytesMax: number, onFrame?: (f: Frame, frameBytes: Uint8Array) => void): Scan {
  const frames: Frame[] = [];
  let off = 0;
  while (off < bytes.length) {
    const rest = bytes.length - off;
    const bad = (why: string): Scan =>
      validRecordAfter(bytes, off + 1, frameBytesMax)
        ? { frames, validBytes: off, end: { kind: "corrupt", offset: off, why: `${why}, and valid records follow it` } }
        : { frames, validBytes: off, end: { kind: "torn", offset: off, bytes: rest, why } };
    if (rest < 8) return bad("record header cut short");
    const sum = u32At(bytes, off);
    const len = u32At(bytes, off + 4);
    const end = off + 8 + len;
    if (len > frameBytesMax) return bad(`record length ${len} over the limit ${frameBytesMax}`);
    if (end > bytes.length) return bad(`record of ${len + 8} bytes cut short at ${rest}`);
    if (crc32(bytes, off + 4, end) !== sum) return bad("checksum mismatch");
    const d = decodeFrame(bytes, off + 4, frameBytesMax);
    if (!d.ok) return { frames, validBytes: off, end: { kind: "corrupt", offset: off, why: `checksum matches but the frame does not decode: ${d.reason}` } };
    if (onFrame) onFrame(d.frame, bytes.subarray(off + 4, end));
    else frames.push(d.frame);
    off = end;
  }
  return { frames, validBytes: off, end: { kind: "clean" } };
}
