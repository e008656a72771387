/**
 * The write-ahead log writer, with group commit. Records queue in memory; one flush writes all of
 * them with one write and (unless fsync is "never") one fdatasync, then reports the highest
 * sequence now durable. While a flush is in flight new records gather for the next one, so many
 * concurrent clients share one fsync.
 *
 *   always  flush as soon as the event loop turn ends; a write is answered after its fsync
 *   batch   wait up to `fsyncMs` to gather more records, then flush; answered after the fsync
 *   never   write to the OS without fsync; answered once the OS has the bytes
 *
 * A failed write or fsync fails every queued record and cuts the segment back to its last durable
 * size: the node stays up and writes resume once the disk does. The failed sequences are used
 * again, so nothing is written after a failure until that cut has succeeded: a later flush (or
 * close) tries it first, and fails its own batch while the cut still fails. Otherwise a record
 * that was refused could sit before an acknowledged one with the same sequence, and recovery,
 * which keeps the first, would bring back the refused write and drop the acknowledged one.
 */
import { existsSync } from "node:fs";
import type { FileHandle } from "node:fs/promises";
import { open } from "node:fs/promises";
import { dirname } from "node:path";
import { fsyncDir } from "./files.ts";

/** Open a segment for appending; a new file's directory entry is made durable too. */
async function openSegment(path: string): Promise<FileHandle> {
  const created = !existsSync(path);
  const fh = await open(path, "a");
  if (created) fsyncDir(dirname(path));
  return fh;
}

export type FsyncMode = "always" | "batch" | "never";

/** A batch this large is flushed without waiting for the rest of its window. */
const BATCH_BYTES_MAX = 1 << 20;
export const fsyncModes: readonly FsyncMode[] = ["always", "batch", "never"];

export interface LogWriterOptions {
  mode: FsyncMode;
  fsyncMs: number;
  /** Everything up to this sequence is on disk already. */
  durableSeq: number;
  onDurable(seq: number): void;
  /** Records from `fromSeq` on were not written; `error` says why. */
  onFailed(fromSeq: number, error: NodeJS.ErrnoException): void;
}

export interface LogStats {
  flushes: number;
  records: number;
  bytes: number;
  failures: number;
}

export class LogWriter {
  private queue: Uint8Array[] = [];
  private queueFirstSeq = 0;
  private queueLastSeq = 0;
  private queuedBytes = 0;
  /** When the oldest queued record arrived: the batch window counts from there. */
  private queuedSinceMs = 0;
  private flushing = false;
  private inflight: Promise<void> = Promise.resolve();
  private scheduled = false;
  private nextPath: string | null = null;
  private closed = false;
  /** A failed flush may have left bytes after `segmentBytes` that are not yet cut off. */
  private tailDirty = false;
  durableSeq: number;
  /** restartAt's hold: nothing is written until release(). */
  private holding = false;
  /** discardHeld(): records are dropped, not queued, until the next restartAt. */
  private discarding = false;
  /** Bumped by restartAt: a flush begun before it belongs to a history given up. */
  private generation = 0;
  readonly stats: LogStats = { flushes: 0, records: 0, bytes: 0, failures: 0 };

  private constructor(
    private fh: FileHandle,
    /** Durable bytes of the current segment. */
    public segmentBytes: number,
    private readonly o: LogWriterOptions,
  ) {
    this.durableSeq = o.durableSeq;
  }

  static async open(path: string, segmentBytes: number, o: LogWriterOptions): Promise<LogWriter> {
    const fh = await openSegment(path);
    return new LogWriter(fh, segmentBytes, o);
  }

  /** Queue one record (already encoded) for `seq`; sequences must come in order. */
  append(seq: number, record: Uint8Array): void {
    if (this.discarding) return;
    if (this.queue.length === 0) {
      this.queueFirstSeq = seq;
      this.queuedSinceMs = performance.now();
    }
    this.queue.push(record);
    this.queueLastSeq = seq;
    this.queuedBytes += record.length;
    this.kick();
  }

  /** Start the next flush with a new segment file (the caller named it by its first sequence). */
  rollTo(path: string): void {
    this.nextPath = path;
  }

  /**
   * Go on in a new history (a follower that installed a full transfer at `seq`, or adopted a new
   * history id at `seq`): the next records go to the new segment at `path`, and what the old
   * history left does not count. Records queued and not yet written are dropped (they would land
   * in the new segment, where recovery would take them for entries of the new history), and a
   * flush in flight reports nothing when it ends (its sequences are the old history's: durableSeq
   * would jump past records of the new one that are not on disk).
   *
   * With `hold`, records are kept in memory until `release()`: a full transfer's records must not
   * reach the disk before its snapshot does (found by an audit: killed in between, a follower
   * of the same history found a log segment starting past the end of its old log, and refused
   * to start on the gap).
   */
  restartAt(seq: number, path: string, hold = false): void {
    this.holding = hold;
    this.discarding = false;
    this.tailDirty = false; // what a failure left is in the old segment, which goes
    this.queue = [];
    this.queuedBytes = 0;
    this.generation++;
    this.durableSeq = seq;
    this.nextPath = path;
  }

  /**
   * Schedule the next flush. always/never: after this event-loop turn (setImmediate: Bun's
   * setTimeout(0) costs about a millisecond). batch: the window opens with the oldest queued
   * record and closes after -fsync-ms, or earlier, at the first turn in which no record arrived
   * (with closed-loop clients every writer is already in the batch: waiting would only add
   * latency), or when the batch reaches 1 MiB.
   */
  /** End restartAt's hold: what is queued is written. */
  release(): void {
    this.holding = false;
    this.kick();
  }

  /**
   * The hold will not end (the transfer could not be made durable): drop what it holds, and every
   * record appended until the next restartAt, so that memory stays bounded (found by review).
   */
  discardHeld(): void {
    if (!this.holding) return;
    this.queue = [];
    this.queuedBytes = 0;
    this.discarding = true;
  }

  private kick(): void {
    if (this.flushing || this.scheduled || this.queue.length === 0 || this.closed || this.holding) return;
    this.scheduled = true;
    let seen = -1;
    const check = () => {
      if (this.closed) return void (this.scheduled = false);
      const waited = performance.now() - this.queuedSinceMs;
      const ripe = this.o.mode !== "batch" || this.queue.length === seen || waited >= this.o.fsyncMs || this.queuedBytes >= BATCH_BYTES_MAX;
      if (!ripe) {
        seen = this.queue.length;
        setImmediate(check);
        return;
      }
      this.scheduled = false;
      this.inflight = this.flush();
    };
    setImmediate(check);
  }

  private async flush(): Promise<void> {
    if (this.flushing || this.queue.length === 0 || this.holding) return;
    this.flushing = true;
    const batch = this.queue;
    const first = this.queueFirstSeq;
    const last = this.queueLastSeq;
    const bytes = this.queuedBytes;
    const generation = this.generation;
    this.queue = [];
    this.queuedBytes = 0;
    try {
      // Cut what an earlier failure left before anything else: also before moving to a new
      // segment, which would leave those records in the middle of the log.
      if (this.tailDirty) await this.cutBack();
      // A history given up while this flush waited: its records must not reach the new segment.
      if (generation === this.generation && this.nextPath) {
        const path = this.nextPath;
        const next = await openSegment(path);
        if (generation !== this.generation) {
          await next.close(); // restartAt meanwhile named another segment: keep its path
        } else {
          const old = this.fh;
          this.fh = next;
          this.segmentBytes = 0;
          this.nextPath = null;
          await old.close();
        }
      }
      if (generation === this.generation) {
        const buf = batch.length === 1 ? batch[0]! : Buffer.concat(batch, bytes);
        let off = 0;
        while (off < buf.length) off += (await this.fh.write(buf, off, buf.length - off)).bytesWritten;
        if (this.o.mode !== "never") await this.fh.datasync();
        this.segmentBytes += bytes;
      }
      // Given up meanwhile: these sequences are the old history's, and its file goes.
      if (generation === this.generation) {
        this.durableSeq = last;
        this.stats.flushes++;
        this.stats.records += batch.length;
        this.stats.bytes += bytes;
        this.o.onDurable(last);
      }
    } catch (e) {
      this.stats.failures++;
      // Records of a history given up meanwhile have nothing to cut (their file goes) or refuse.
      if (generation === this.generation) {
        // Whatever part of the batch reached the file must go: the sequences will be reused.
        this.tailDirty = true;
        await this.cutBack().catch(() => {});
        // Records queued meanwhile come after the failed ones: they fail too.
        const failedFrom = first;
        this.queue = [];
        this.queuedBytes = 0;
        this.o.onFailed(failedFrom, e as NodeJS.ErrnoException);
      }
    } finally {
      this.flushing = false;
    }
    this.kick();
  }

  /** Cut the segment back to its durable size (throws while the disk refuses). */
  private async cutBack(): Promise<void> {
    await this.fh.truncate(this.segmentBytes);
    await this.fh.datasync();
    this.tailDirty = false;
  }

  get queued(): number {
    return this.queue.length;
  }

  /**
   * Flush what is queued and close the file. Resolves false when records of a failed write could
   * not be cut off: they will be read back at the next start.
   */
  async close(): Promise<boolean> {
    this.closed = true; // no new flushes scheduled: what is queued is flushed here
    await this.inflight;
    if (this.holding) this.queue = []; // records of a transfer whose snapshot never made it: not ours to write
    if (this.queue.length > 0) await this.flush();
    if (this.tailDirty) await this.cutBack().catch(() => {});
    await this.fh.close();
    return !this.tailDirty;
  }
}
