/**
 * Log and snapshot files are sequences of records: a u32 CRC-32 of the frame, then a replication
 * frame exactly as it travels on the wire (u32 length + header + payload, src/protocol/frame.ts).
 * One format for the write-ahead log, snapshots and the full state transfer. Pure.
 *
 *   0  u32 crc32   of the frame bytes that follow
 *   4  frame       u32 length, version, type, group, term, seq, payload
 */
import { crc32 } from "../lib/crc32.ts";
import { type Frame, decodeFrame } from "../protocol/frame.ts";

export const RECORD_OVERHEAD_BYTES = 4;

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

/**
 * Read every record in `bytes`. A record that is cut short, or that fails its checksum as the very
 * last record, is a torn tail; any other bad record is corruption. Never throws.
 */
export function scanRecords(bytes: Uint8Array, frameBytesMax: number): Scan {
  const frames: Frame[] = [];
  let off = 0;
  while (off < bytes.length) {
    const rest = bytes.length - off;
    const torn = (why: string): Scan => ({ frames, validBytes: off, end: { kind: "torn", offset: off, bytes: rest, why } });
    if (rest < 8) return torn("record header cut short");
    const sum = ((bytes[off]! << 24) | (bytes[off + 1]! << 16) | (bytes[off + 2]! << 8) | bytes[off + 3]!) >>> 0;
    const len = ((bytes[off + 4]! << 24) | (bytes[off + 5]! << 16) | (bytes[off + 6]! << 8) | bytes[off + 7]!) >>> 0;
    const end = off + 8 + len;
    if (len > frameBytesMax) {
      // A length this large is garbage. At the tail it is a torn length field; earlier, corruption.
      return end >= bytes.length || len > bytes.length ? torn(`record length ${len} is beyond the file`) : { frames, validBytes: off, end: { kind: "corrupt", offset: off, why: `record length ${len} over the limit ${frameBytesMax}` } };
    }
    if (end > bytes.length) return torn(`record of ${len + 8} bytes cut short at ${rest}`);
    if (crc32(bytes, off + 4, end) !== sum) {
      if (end === bytes.length) return torn("checksum mismatch in the last record");
      return { frames, validBytes: off, end: { kind: "corrupt", offset: off, why: "checksum mismatch" } };
    }
    const d = decodeFrame(bytes, off + 4, frameBytesMax);
    if (!d.ok) return { frames, validBytes: off, end: { kind: "corrupt", offset: off, why: `checksum matches but the frame does not decode: ${d.reason}` } };
    frames.push(d.frame);
    off = end;
  }
  return { frames, validBytes: off, end: { kind: "clean" } };
}
