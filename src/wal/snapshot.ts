/**
 * Snapshots: the store at one sequence, as records of SnapshotBegin, SnapshotChunk... and
 * SnapshotEnd frames — the same frames a leader streams in a full state transfer. Written in
 * chunks with the event loop free between them (the node keeps serving), to a .tmp file that is
 * fsynced and renamed only when whole.
 */
import { closeSync, openSync, readSync, fstatSync } from "node:fs";
import { open, rename } from "node:fs/promises";
import { join } from "node:path";
import { limits } from "../lib/limits.ts";
import { utf8Length } from "../lib/utf8.ts";
import { type Frame, FrameType, type SnapshotEntry, encodeFrame } from "../protocol/frame.ts";
import type { Snapshot } from "../store/store.ts";
import { fsyncDir, snapName } from "./files.ts";
import { encodeRecord, scanRecords } from "./record.ts";

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

export interface LoadedSnapshot extends SnapshotMeta {
  entries: [string, string, number][];
}

/** Read a whole snapshot; throws naming the file and offset when it is not whole and valid. */
export function readSnapshot(path: string, frameBytesMax: number): LoadedSnapshot {
  const fd = openSync(path, "r");
  let bytes: Buffer;
  try {
    const size = fstatSync(fd).size;
    bytes = Buffer.allocUnsafe(size);
    let off = 0;
    while (off < size) off += readSync(fd, bytes, off, size - off, off);
  } finally {
    closeSync(fd);
  }
  const scan = scanRecords(bytes, frameBytesMax);
  if (scan.end.kind !== "clean") throw new Error(`snapshot ${path} is damaged at offset ${scan.end.offset}: ${scan.end.why}`);
  const frames: Frame[] = scan.frames;
  const begin = frames[0];
  const end = frames[frames.length - 1];
  if (!begin || begin.type !== FrameType.SnapshotBegin || !end || end.type !== FrameType.SnapshotEnd || end.seq !== begin.seq)
    throw new Error(`snapshot ${path} is incomplete`);
  const entries: [string, string, number][] = [];
  for (let i = 1; i < frames.length - 1; i++) {
    const f = frames[i]!;
    if (f.type !== FrameType.SnapshotChunk) throw new Error(`snapshot ${path}: unexpected frame type ${f.type}`);
    for (const e of f.entries) entries.push([e.key, e.value, e.version]);
  }
  return { group: begin.group, term: begin.term, seq: begin.seq, historyId: begin.historyId, entries };
}
