/**
 * A node's data directory at work: recovery at start, the write-ahead log with group commit,
 * snapshots when the log grows past -snapshot-bytes (written while the node serves), and the
 * bookkeeping when a follower installs a full state transfer or adopts a new history.
 */
import { join } from "node:path";
import { StorageFullError, UnavailableError } from "../lib/errors.ts";
import type { Logger } from "../lib/log.ts";
import type { Frame } from "../protocol/frame.ts";
import type { Store } from "../store/store.ts";
import { type Identity, type RingEpochs, dirBytes, listFiles, readRings, removeFile, removeRings, removeTemp, unlockDir, walName, writeIdentity, writeRings } from "../wal/files.ts";
import { type FsyncMode, LogWriter } from "../wal/log.ts";
import { encodeRecord } from "../wal/record.ts";
import { type Recovered, recover } from "../wal/recover.ts";
import { writeSnapshot } from "../wal/snapshot.ts";

export interface DurabilityOptions {
  dir: string;
  group: number;
  fsync: FsyncMode;
  fsyncMs: number;
  snapshotBytes: number;
  frameBytesMax: number;
  newId: () => string;
  log: Logger;
}

export interface DurabilityStats {
  data_dir: string;
  durable_seq: number;
  data_dir_bytes: number;
  fsync: FsyncMode;
  log_flushes: number;
  log_records: number;
  log_failures: number;
  snapshots: number;
  last_snapshot_seq: number;
  torn_bytes_cut: number;
}

/** Map a disk error to the API's error: full disk 507, anything else 503. */
export function storageError(e: NodeJS.ErrnoException): Error {
  if (e.code === "ENOSPC" || e.code === "EDQUOT") return new StorageFullError(`Cannot write: the disk is full (${e.code}); reads still work`);
  return new UnavailableError(`Cannot write to the log: ${e.code ?? e.message}; reads still work`);
}

export class Durability {
  identity: Identity;
  writer!: LogWriter;
  private snapshotting = false;
  private snapshotRetryAt = 0;
  private olderWalBytes: number;
  private chain: Promise<void> = Promise.resolve();
  private snapshots = 0;
  /**
   * Adoptions of a new history (a full transfer, or a tail under a new history id) whose snapshot
   * and node.json are not on disk yet: until then a restart would recover the old history, so a
   * follower acknowledges nothing.
   */
  adopting = 0;
  /** Adoptions started; only the last one's completion ends `adopting` and the writer's hold. */
  private adoptions = 0;
  private lastSnapshotSeq: number;
  /** Current history and the sequence its current segment starts after. */
  private history: string;

  private constructor(
    private readonly o: DurabilityOptions,
    readonly recovered: Recovered,
  ) {
    this.identity = recovered.identity;
    this.olderWalBytes = recovered.olderWalBytes;
    this.lastSnapshotSeq = recovered.snapshotSeq;
    this.history = recovered.identity.history_id;
  }

  /** Recover the directory into `store`. `onEntry` sees every replayed log entry. */
  static recover(store: Store, o: DurabilityOptions, onEntry?: (seq: number, term: number, frame: Uint8Array) => void): Durability {
    const r = recover(store, { dir: o.dir, group: o.group, frameBytesMax: o.frameBytesMax, newId: o.newId, log: o.log, onEntry });
    o.log.info("recovered data dir", { dir: o.dir, seq: r.seq, snapshot_seq: r.snapshotSeq, replayed: r.replayed, keys: store.size, torn_bytes_cut: r.tornBytes });
    return new Durability(o, r);
  }

  /** Open the log for appending; durability and failures are reported to the callbacks. */
  async open(onDurable: (seq: number) => void, onFailed: (fromSeq: number, e: NodeJS.ErrnoException) => void): Promise<void> {
    this.writer = await LogWriter.open(this.recovered.walPath, this.recovered.walBytes, {
      mode: this.o.fsync,
      fsyncMs: this.o.fsyncMs,
      durableSeq: this.recovered.seq,
      onDurable,
      onFailed: (from, e) => {
        this.o.log.error("log write failed: refusing writes until the disk works again", { from_seq: from, error: e.code ?? e.message });
        onFailed(from, e);
      },
    });
  }

  /** The rings this node served as a leader of its current history, as saved before it last stopped. */
  loadRings(): RingEpochs["epochs"] {
    const r = readRings(this.o.dir);
    if (r === "damaged") {
      this.o.log.warn("rings.json is damaged: entries written before this start will not count against keys moved in", { dir: this.o.dir });
      return [];
    }
    return r && r.history_id === this.history ? r.epochs : [];
  }

  /**
   * Save the rings served so far (synchronously: they must be on disk before anything is written
   * under the newest one). When that fails, the file is removed instead: no record of the rings
   * is safe (entries from before a restart then count as older), an incomplete one is not.
   */
  saveRings(epochs: RingEpochs["epochs"]): void {
    try {
      writeRings(this.o.dir, { history_id: this.history, epochs });
    } catch (e) {
      this.o.log.error("could not save the rings served: entries written before a restart will not count against keys moved in", { error: (e as NodeJS.ErrnoException).code ?? String(e) });
      try {
        removeRings(this.o.dir);
      } catch {}
    }
  }

  /** A follower's rings.json, from when it last led, would be stale if it led again: drop it. */
  forgetRings(): void {
    removeRings(this.o.dir);
  }

  /** Persist the identity (e.g. a new leader term). */
  saveIdentity(patch: Partial<Identity>): void {
    this.identity = { ...this.identity, ...patch };
    writeIdentity(this.o.dir, this.identity);
  }

  append(seq: number, frame: Uint8Array): void {
    this.writer.append(seq, encodeRecord(frame));
  }

  get durableSeq(): number {
    return this.writer.durableSeq;
  }

  /**
   * When the log has grown past -snapshot-bytes, write a snapshot of the store at `seq` and drop
   * the log it covers. The caller gives the store's state at `seq` (applied entries only).
   */
  maybeSnapshot(seq: number, term: number, store: Store, now: number): void {
    if (this.snapshotting || now < this.snapshotRetryAt) return;
    if (this.writer.segmentBytes + this.olderWalBytes < this.o.snapshotBytes) return;
    this.snapshotting = true;
    const entries = store.snapshot(true);
    const history = this.history;
    // Later records go to a new segment; the ones before it are covered by the snapshot.
    this.olderWalBytes += this.writer.segmentBytes;
    this.writer.rollTo(join(this.o.dir, walName(history, seq + 1)));
    this.chain = this.chain.then(async () => {
      const started = performance.now();
      try {
        const { name, bytes } = await writeSnapshot(this.o.dir, { group: this.o.group, term, seq, historyId: history }, entries);
        this.dropCovered(history, seq, name);
        this.olderWalBytes = 0;
        this.snapshots++;
        this.lastSnapshotSeq = seq;
        this.o.log.info("snapshot written", { file: name, seq, keys: entries.length, bytes, ms: Math.round(performance.now() - started) });
      } catch (e) {
        this.snapshotRetryAt = performance.now() + 5_000;
        this.o.log.error("snapshot failed, will retry", { seq, error: (e as NodeJS.ErrnoException).code ?? String(e) });
        removeTemp(this.o.dir);
      } finally {
        this.snapshotting = false;
      }
    });
  }

  /** Remove snapshots other than `keep` and log segments wholly before `seq`. */
  private dropCovered(history: string, seq: number, keep: string): void {
    for (const f of listFiles(this.o.dir)) {
      if (f.history !== history) continue;
      if (f.kind === "snap" && f.name !== keep) removeFile(this.o.dir, f.name);
      if (f.kind === "wal" && f.seq <= seq) {
        // A segment starting at or before `seq` holds only entries <= seq: the next one starts at seq+1.
        const next = listFiles(this.o.dir).find((g) => g.kind === "wal" && g.history === history && g.seq > f.seq);
        if (next && next.seq <= seq + 1) removeFile(this.o.dir, f.name);
      }
    }
  }

  /**
   * A follower installed a full state transfer (or adopted a new history at `seq`): make that the
   * directory's history. Order: snapshot of the new state, then node.json, then the old files go.
   * A crash in between recovers the old history whole, and the leader sends the transfer again.
   */
  adoptHistory(historyId: string, seq: number, term: number, store: Store, kind: "snapshot" | "adopted", onDone?: () => void, onFailed?: () => void): void {
    this.history = historyId;
    const id = ++this.adoptions;
    this.adopting = 1;
    // Nothing after `seq` of the new history is on disk yet (what the old one had says nothing);
    // a transfer's `seq` itself is, once its snapshot is written (acknowledged only after that).
    // The new history's records wait in memory until its snapshot and node.json are on disk (and
    // the old history's files are gone: an earlier adoption's cleanup would delete them otherwise).
    this.writer.restartAt(kind === "snapshot" ? seq : Math.min(this.writer.durableSeq, seq), join(this.o.dir, walName(historyId, seq + 1)), true);
    const entries = kind === "snapshot" ? store.snapshot(true) : null;
    this.chain = this.chain.then(async () => {
      try {
        if (entries) {
          const { name } = await writeSnapshot(this.o.dir, { group: this.o.group, term, seq, historyId }, entries);
          this.lastSnapshotSeq = seq;
          this.o.log.info("full state transfer made durable", { file: name, seq, keys: entries.length });
        }
        this.saveIdentity({ history_id: historyId });
        for (const f of listFiles(this.o.dir)) if (f.history !== historyId) removeFile(this.o.dir, f.name);
        this.olderWalBytes = 0;
        // A later adoption is under way: its own completion ends the hold.
        if (id !== this.adoptions) return;
        this.adopting = 0;
        this.writer.release();
        onDone?.();
      } catch (e) {
        // Still adopting: this node acknowledges nothing more until it restarts (its disk holds the
        // old history) or a later transfer is made durable; what the hold would keep is dropped.
        removeTemp(this.o.dir);
        if (id === this.adoptions) this.writer.discardHeld();
        this.o.log.error("could not persist the new history: acknowledging nothing until a new transfer is made durable", { history_id: historyId, error: (e as NodeJS.ErrnoException).code ?? String(e) });
        if (id === this.adoptions) onFailed?.();
      }
    });
  }

  stats(): DurabilityStats {
    let bytes = 0;
    try {
      bytes = dirBytes(this.o.dir);
    } catch {}
    return {
      data_dir: this.o.dir,
      durable_seq: this.writer.durableSeq,
      data_dir_bytes: bytes,
      fsync: this.o.fsync,
      log_flushes: this.writer.stats.flushes,
      log_records: this.writer.stats.records,
      log_failures: this.writer.stats.failures,
      snapshots: this.snapshots,
      last_snapshot_seq: this.lastSnapshotSeq,
      torn_bytes_cut: this.recovered.tornBytes,
    };
  }

  async close(): Promise<void> {
    await this.chain;
    if (!(await this.writer.close()))
      this.o.log.error("the log still holds writes that were refused (503/507) and could not be cut off: they will be replayed at the next start", { dir: this.o.dir });
    unlockDir(this.o.dir);
  }
}

export type { Frame };
