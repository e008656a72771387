/**
 * Snapshots: the store at one sequence, as records of SnapshotBegin, SnapshotChunk... and
 * SnapshotEnd frames — the same frames a leader streams in a full state transfer — with the
 * store's tombstones as Delete frames before the end (a tombstone can be all that keeps a key
 * moved in later from undoing a delete). Written in
 * chunks with the event loop free between them (the node keeps serving), to a .tmp file that is
 * fsynced and renamed only when whole.
 */
import { closeSync, openSync, readSync, fstatSync } from "node:fs";
import { open, rename } from "node:fs/promises";
import { join } from "node:path";
import { limits } from "../lib/limits.ts";
import { utf8Length } from "../lib/utf8.ts";
import { type Frame, FrameType, type SnapshotEntry, encodeFrame } from "../protocol/frame.ts";
import type { Snapshot, Store } from "../store/store.ts";
import { fsyncDir, snapName } from "./files.ts";
import { encodeRecord, recordRunsPastEnd, scanRecords } from "./record.ts";

/** Bytes a snapshot is read by, at a time. */
const SNAPSHOT_READ_BYTES = 4 << 20;

export interface SnapshotMeta {
  group: number;
  term: number;
  seq: number;
  historyId: string;
}

/** Encode a snapshot chunk by chunk; yields record bytes. */
export function* snapshotRecords(meta: SnapshotMeta, entries: Snapshot): Generator<Buffer> {
  const h = { group: meta.group, term: meta.term, seq: meta.seq };
  yield encodeRecord(encodeFrame({ type: FrameType.SnapshotBegin, ...h, historyId: meta.historyId, count: entries.length }));
  let chunk: SnapshotEntry[] = [];
  let bytes = 0;
  for (const [key, e] of entries) {
    chunk.push({ key, value: e.value, version: e.version });
    bytes += 16 + utf8Length(key) + utf8Length(e.value);
    if (bytes >= limits.snapshotChunkBytes) {
      yield encodeRecord(encodeFrame({ type: FrameType.SnapshotChunk, ...h, entries: chunk }));
      chunk = [];
      bytes = 0;
    }
  }
  if (chunk.length > 0) yield encodeRecord(encodeFrame({ type: FrameType.SnapshotChunk, ...h, entries: chunk }));
  for (const [key, version] of entries.tombstones ?? []) yield encodeRecord(encodeFrame({ type: FrameType.Delete, group: meta.group, term: meta.term, seq: version, key }));
  yield encodeRecord(encodeFrame({ type: FrameType.SnapshotEnd, ...h }));
}

/** Write a snapshot file; resolves with its name once it is durable. */
export async function writeSnapshot(dir: string, meta: SnapshotMeta, entries: Snapshot): Promise<{ name: string; bytes: number }> {
  const name = snapName(meta.historyId, meta.seq);
  const tmp = join(dir, `${name}.tmp`);
  const fh = await open(tmp, "w");
  let total = 0;
  try {
    for (const rec of snapshotRecords(meta, entries)) {
      let off = 0;
      while (off < rec.length) off += (await fh.write(rec, off, rec.length - off)).bytesWritten;
      total += rec.length;
    }
    await fh.datasync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, name));
  fsyncDir(dir);
  return { name, bytes: total };
}

/**
 * Read a whole snapshot into `store` (its content is replaced): entries go into a store staged
 * beside it as each chunk record is read, and the store takes the staged content over at the end.
 * Throws naming the file, and the offset when it is damaged, if it is not whole and valid; the
 * store is then unchanged.
 */
export function loadSnapshot(path: string, frameBytesMax: number, store: Store): SnapshotMeta & { keys: number } {
  const staged = store.emptyLike();
  /** Tombstones read, checked at the end: a key listed live in any chunk must not have one. */
  const tombstones: [string, number][] = [];
  let begin: (Frame & { type: typeof FrameType.SnapshotBegin }) | null = null;
  let end: Frame | null = null;
  let wrong: string | null = null;
  const onFrame = (f: Frame) => {
    if (wrong !== null) return;
    if (begin === null) {
      if (f.type === FrameType.SnapshotBegin) begin = f;
      else wrong = `starts with a frame of type ${f.type}`;
    } else if (end !== null) wrong = "has frames after its end";
    else if (f.type === FrameType.SnapshotEnd) end = f;
    else if (f.type === FrameType.SnapshotChunk) for (const e of f.entries) staged.set(e.key, e.value, e.version);
    else if (f.type === FrameType.Delete) {
      // A tombstone: of a key not live in the snapshot, deleted at or before it.
      if (f.seq > begin.seq || staged.versionOf(f.key) !== 0) wrong = `has a tombstone of "${f.key.slice(0, 64)}" at ${f.seq} that does not fit`;
      else {
        staged.delete(f.key, f.seq);
        tombstones.push([f.key, f.seq]);
      }
    } else wrong = `holds a frame of type ${f.type}`;
  };
  // Read a few MiB at a time (not the whole file: a million keys are ~110 MB of it), carrying a
  // record cut at the end of a read over to the next.
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    let carry: Buffer = Buffer.alloc(0);
    for (let pos = 0; pos < size || carry.length > 0; ) {
      const n = Math.min(SNAPSHOT_READ_BYTES, size - pos);
      const piece = Buffer.allocUnsafe(carry.length + n);
      carry.copy(piece, 0);
      for (let got = 0; got < n; ) got += readSync(fd, piece, carry.length + got, n - got, pos + got);
      const at = pos - carry.length; // file offset of piece[0]
      pos += n;
      const scan = scanRecords(piece, frameBytesMax, onFrame);
      // A record cut by the end of this read is carried over, even when scanRecords calls it
      // corrupt: it looks past the cut for valid records, and a value may hold bytes that are one.
      if (scan.end.kind === "clean") carry = Buffer.alloc(0);
      else if (pos < size && recordRunsPastEnd(piece, scan.validBytes, frameBytesMax)) carry = piece.subarray(scan.validBytes);
      else throw new Error(`snapshot ${path} is damaged at offset ${at + scan.end.offset}: ${scan.end.why}`);
      if (wrong !== null) throw new Error(`snapshot ${path} ${wrong}`);
    }
  } finally {
    closeSync(fd);
  }
  const b = begin as (Frame & { type: typeof FrameType.SnapshotBegin }) | null;
  const e = end as Frame | null;
  if (!b || !e || e.seq !== b.seq) throw new Error(`snapshot ${path} is incomplete`);
  for (const [key, version] of tombstones)
    if (staged.get(key) !== undefined || staged.versionOf(key) !== version) throw new Error(`snapshot ${path} has a tombstone of "${key.slice(0, 64)}" at ${version} that does not fit`);
  // A key listed twice would leave fewer keys than the snapshot says it holds.
  if (staged.size !== b.count) throw new Error(`snapshot ${path} says it holds ${b.count} keys, its entries make ${staged.size}`);
  store.adopt(staged);
  return { group: b.group, term: b.term, seq: b.seq, historyId: b.historyId, keys: b.count };
}
