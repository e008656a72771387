/**
 * Start-up recovery: load the newest snapshot of the current history, replay the log segments after
 * it in sequence order, cut a torn tail (what a crash leaves) with a log line saying how many
 * bytes, and stop with an error naming the file and offset on anything else. Never a silent
 * partial load.
 */
import { readFileSync, truncateSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../lib/log.ts";
import { type Frame, FrameType } from "../protocol/frame.ts";
import type { Store } from "../store/store.ts";
import { type Identity, ensureDir, listFiles, lockDir, removeTemp, readIdentity, removeFile, walName, writeIdentity } from "./files.ts";
import { scanRecords } from "./record.ts";
import { loadSnapshot } from "./snapshot.ts";

export class RecoveryError extends Error {
  override name = "RecoveryError";
}

export interface RecoveryOptions {
  dir: string;
  group: number;
  frameBytesMax: number;
  newId: () => string;
  log: Logger;
  /**
   * Every replayed log entry, in order, with its frame's bytes as logged (a view into the segment
   * read: copy them to keep them). A leader rebuilds its catch-up history from them.
   */
  onEntry?: (seq: number, term: number, frame: Uint8Array) => void;
}

export interface Recovered {
  identity: Identity;
  /** Last sequence in the store, and the term of that entry. */
  seq: number;
  term: number;
  snapshotSeq: number;
  snapshotTerm: number;
  /** Segment to append to, and its valid size. */
  walPath: string;
  walBytes: number;
  /** Bytes of older segments still needed (not covered by the snapshot). */
  olderWalBytes: number;
  tornBytes: number;
  replayed: number;
}

export function recover(store: Store, o: RecoveryOptions): Recovered {
  ensureDir(o.dir);
  lockDir(o.dir);
  // A snapshot or node.json cut short by a crash: the whole file it was to replace is still here.
  for (const name of removeTemp(o.dir)) o.log.info("removed an unfinished file", { file: name });
  let identity = readIdentity(o.dir);
  if (!identity) {
    // node.json is written before any log or snapshot and only ever replaced whole: files
    // without it mean it was lost. Starting afresh would take them for an older history and
    // delete them.
    const orphans = listFiles(o.dir);
    if (orphans.length > 0)
      throw new RecoveryError(
        `data dir ${o.dir} holds ${orphans.length} log and snapshot file${orphans.length === 1 ? "" : "s"} (${orphans[0]!.name}...) but no node.json: restore node.json, or move the files away to start empty`,
      );
    identity = { node_id: o.newId(), history_id: o.newId(), term: 0, group: o.group };
    writeIdentity(o.dir, identity);
    o.log.info("new data dir", { dir: o.dir, node_id: identity.node_id });
  } else if (identity.group !== o.group) {
    throw new RecoveryError(`data dir ${o.dir} holds group ${identity.group}, not group ${o.group}: use another -data-dir`);
  }
  const H = identity.history_id;
  const files = listFiles(o.dir);
  for (const f of files)
    if (f.history !== H) {
      removeFile(o.dir, f.name);
      o.log.info("removed file of an older history", { file: f.name });
    }
  const snaps = files.filter((f) => f.kind === "snap" && f.history === H);
  const wals = files.filter((f) => f.kind === "wal" && f.history === H);

  let seq = 0;
  let term = 0;
  let snapshotSeq = 0;
  let snapshotTerm = 0;
  const newest = snaps[snaps.length - 1];
  if (newest) {
    let s;
    try {
      s = loadSnapshot(join(o.dir, newest.name), o.frameBytesMax, store);
    } catch (e) {
      throw new RecoveryError((e as Error).message);
    }
    seq = snapshotSeq = s.seq;
    term = snapshotTerm = s.term;
    for (const old of snaps.slice(0, -1)) removeFile(o.dir, old.name);
  }

  let tornBytes = 0;
  let replayed = 0;
  let olderWalBytes = 0;
  let current: { path: string; bytes: number } | null = null;
  for (let i = 0; i < wals.length; i++) {
    const w = wals[i]!;
    const path = join(o.dir, w.name);
    const last = i === wals.length - 1;
    const next = wals[i + 1];
    // A segment followed by one that starts at or before the snapshot is wholly covered by it.
    if (next && next.seq <= snapshotSeq + 1) {
      removeFile(o.dir, w.name);
      continue;
    }
    const bytes = readFileSync(path);
    // Entries are applied as they are read (no array of a whole segment's frames). A segment found
    // corrupt further on still stops the start-up, with the store half-filled but never served.
    const scan = scanRecords(bytes, o.frameBytesMax, (f, frameBytes) => {
      if (f.type !== FrameType.Put && f.type !== FrameType.Delete)
        throw new RecoveryError(`log ${path} holds a frame of type ${f.type} at sequence ${f.seq}`);
      if (f.seq <= seq) return;
      if (f.seq !== seq + 1) throw new RecoveryError(`log ${path} jumps from sequence ${seq} to ${f.seq}: entries are missing`);
      apply(store, f);
      seq = f.seq;
      term = f.term;
      replayed++;
      o.onEntry?.(f.seq, f.term, frameBytes);
    });
    if (scan.end.kind === "corrupt") throw new RecoveryError(`log ${path} is corrupt at offset ${scan.end.offset}: ${scan.end.why}`);
    if (scan.end.kind === "torn") {
      if (!last) throw new RecoveryError(`log ${path} is cut short at offset ${scan.end.offset} (${scan.end.why}) but is not the last segment`);
      truncateSync(path, scan.validBytes);
      tornBytes = scan.end.bytes;
      o.log.warn("cut a torn tail off the log", { file: path, offset: scan.end.offset, bytes: scan.end.bytes, why: scan.end.why });
    }
    if (last) current = { path, bytes: scan.validBytes };
    else olderWalBytes += scan.validBytes;
  }
  if (!current) current = { path: join(o.dir, walName(H, seq + 1)), bytes: 0 };
  return { identity, seq, term, snapshotSeq, snapshotTerm, walPath: current.path, walBytes: current.bytes, olderWalBytes, tornBytes, replayed };
}

function apply(store: Store, f: Frame): void {
  if (f.type === FrameType.Put) store.set(f.key, f.value, f.seq);
  else if (f.type === FrameType.Delete) store.delete(f.key, f.seq);
}
