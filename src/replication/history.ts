/**
 * The leader's recent history: the encoded frames of the last writes and deletes, by sequence,
 * bounded in entries and bytes. A follower whose next sequence is still here is caught up from
 * it; one that fell behind its start gets a full state transfer instead. Pure.
 *
 * Frames are copied into 1 MiB arena chunks, back to back, and indexed in typed arrays: a write
 * leaves no object of its own behind (a Uint8Array per write cost ~200 bytes of overhead and GC
 * work per entry), and a run of frames goes to a follower as one view, without concatenation.
 * An in-memory leader encodes its Put and Delete frames straight into the arena (appendEntry), so
 * a write allocates no frame of its own. Chunks are never reused: one dropped from the front
 * stays valid for as long as a view into it is still queued on a socket.
 */
import { assert } from "../lib/assert.ts";
import { entryFrameBytes, writeEntryFrame } from "../protocol/frame.ts";

/** What one entry costs beyond its frame bytes: its slots in the five index arrays. */
export const HISTORY_ENTRY_OVERHEAD_BYTES = 32;

const CHUNK_BYTES = 1 << 20;
const INDEX_START = 1024;

export class History {
  // Ring-buffer index, `cap` slots; entry i (0 = oldest) is at (start + i) % cap.
  private cap = 0;
  private start = 0;
  private count = 0;
  private chunkOf = new Int32Array(0);
  private offsetOf = new Int32Array(0);
  private lengthOf = new Int32Array(0);
  private timeOfSlot = new Float64Array(0);
  private termOf = new Float64Array(0);
  /** Arena chunks; chunks[i] is chunk number chunkBase + i. The last one is being filled. */
  private chunks: Buffer[] = [];
  private chunkBase = 0;
  private used = 0;
  private bytes = 0;
  /** Sequence of the oldest entry; the history holds firstSeq..lastSeq. */
  private first: number;

  constructor(
    private readonly entriesMax: number,
    private readonly bytesMax: number,
    /** Sequence the history starts after (the store's state before it), and that entry's term. */
    startAfter = 0,
    private baseTerm = 0,
    /** Bytes counted per entry on top of its frame (the leader passes HISTORY_ENTRY_OVERHEAD_BYTES). */
    private readonly entryOverheadBytes = 0,
  ) {
    assert(entriesMax >= 1, "history must hold at least one entry");
    this.first = startAfter + 1;
  }

  get firstSeq(): number {
    return this.first;
  }

  get lastSeq(): number {
    return this.first + this.count - 1;
  }

  get byteSize(): number {
    return this.bytes;
  }

  get length(): number {
    return this.count;
  }

  private slot(i: number): number {
    const s = this.start + i;
    return s >= this.cap ? s - this.cap : s;
  }

  private grow(): void {
    const cap = Math.min(Math.max(INDEX_START, this.cap * 2), this.entriesMax + 1);
    const copy = <T extends Int32Array | Float64Array>(old: T, make: (n: number) => T): T => {
      const out = make(cap);
      for (let i = 0; i < this.count; i++) out[i] = old[this.slot(i)]!;
      return out;
    };
    this.chunkOf = copy(this.chunkOf, (n) => new Int32Array(n));
    this.offsetOf = copy(this.offsetOf, (n) => new Int32Array(n));
    this.lengthOf = copy(this.lengthOf, (n) => new Int32Array(n));
    this.timeOfSlot = copy(this.timeOfSlot, (n) => new Float64Array(n));
    this.termOf = copy(this.termOf, (n) => new Float64Array(n));
    this.cap = cap;
    this.start = 0;
  }

  /** Append an encoded frame. */
  append(seq: number, frame: Uint8Array, timeMs: number, term = 0): void {
    this.reserve(seq, frame.length).set(frame, this.used);
    this.commit(frame.length, timeMs, term);
  }

  /**
   * Append the Put frame of `key` = `value` (a Delete frame when `value` is null) at `seq` in
   * `group` and `term`, encoding it in place: the bytes encodeFrame would give, without a frame
   * of its own.
   */
  appendEntry(seq: number, group: number, term: number, key: string, value: string | null, timeMs: number): void {
    const len = entryFrameBytes(key, value);
    writeEntryFrame(this.reserve(seq, len), this.used, len, group, term, seq, key, value);
    this.commit(len, timeMs, term);
  }

  /** The chunk the next frame (of `length` bytes, at `used`) goes into. */
  private reserve(seq: number, length: number): Buffer {
    // Checked before the message is built: a template literal as argument is built on every call.
    if (seq !== this.lastSeq + 1) assert(false, `history append out of order: ${seq} after ${this.lastSeq}`);
    if (this.count === this.cap) this.grow();
    let cur = this.chunks[this.chunks.length - 1];
    if (cur === undefined || cur.length - this.used < length) {
      // Not zeroed: only the bytes of appended frames are ever read.
      cur = Buffer.allocUnsafe(Math.max(CHUNK_BYTES, length));
      this.chunks.push(cur);
      this.used = 0;
    }
    return cur;
  }

  /** Index the frame of `length` bytes just written at `used`. */
  private commit(length: number, timeMs: number, term: number): void {
    const s = this.slot(this.count++);
    this.chunkOf[s] = this.chunkBase + this.chunks.length - 1;
    this.offsetOf[s] = this.used;
    this.lengthOf[s] = length;
    this.timeOfSlot[s] = timeMs;
    this.termOf[s] = term;
    this.used += length;
    this.bytes += length + this.entryOverheadBytes;
    while (this.count > 1 && (this.count > this.entriesMax || this.bytes > this.bytesMax)) this.dropOldest();
  }

  private dropOldest(): void {
    const s = this.start;
    this.bytes -= this.lengthOf[s]! + this.entryOverheadBytes;
    this.baseTerm = this.termOf[s]!;
    this.start = s + 1 === this.cap ? 0 : s + 1;
    this.count--;
    this.first++;
    // Chunks before the new oldest entry's are no longer referenced by the index.
    const firstChunk = this.count > 0 ? this.chunkOf[this.start]! : this.chunkBase + this.chunks.length - 1;
    if (firstChunk > this.chunkBase) {
      this.chunks.splice(0, firstChunk - this.chunkBase);
      this.chunkBase = firstChunk;
    }
  }

  /** Term of the entry at `seq`, when the history knows it (it knows the one just before it too). */
  termAt(seq: number): number | undefined {
    if (seq === this.first - 1) return this.baseTerm;
    if (seq < this.first || seq > this.lastSeq) return undefined;
    return this.termOf[this.slot(seq - this.first)];
  }

  /** True when the history can supply every frame from `seq` on. */
  covers(seq: number): boolean {
    return seq >= this.first && seq <= this.lastSeq + 1;
  }

  private frameAt(i: number): Uint8Array {
    const s = this.slot(i);
    const o = this.offsetOf[s]!;
    return this.chunks[this.chunkOf[s]! - this.chunkBase]!.subarray(o, o + this.lengthOf[s]!);
  }

  /** Frames from `from` on, each on its own, at most `bytesMax` bytes of them (at least one). */
  slice(from: number, bytesMax: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    this.runs(from, bytesMax, (i) => out.push(this.frameAt(i)));
    return out;
  }

  /**
   * Frames from `from` on, at most `bytesMax` bytes of them (at least one), as few contiguous views
   * as the arena allows (one per chunk they span); `count` is how many frames they hold.
   */
  run(from: number, bytesMax: number): { parts: Uint8Array[]; count: number } {
    const parts: Uint8Array[] = [];
    let chunk = -1;
    let begin = 0;
    let end = 0;
    const count = this.runs(from, bytesMax, (i) => {
      const s = this.slot(i);
      if (this.chunkOf[s] !== chunk || this.offsetOf[s] !== end) {
        if (chunk >= 0) parts.push(this.chunks[chunk - this.chunkBase]!.subarray(begin, end));
        chunk = this.chunkOf[s]!;
        begin = this.offsetOf[s]!;
      }
      end = this.offsetOf[s]! + this.lengthOf[s]!;
    });
    if (chunk >= 0) parts.push(this.chunks[chunk - this.chunkBase]!.subarray(begin, end));
    return { parts, count };
  }

  /** Visit the index of each frame of a batch from `from`; returns how many. */
  private runs(from: number, bytesMax: number, visit: (i: number) => void): number {
    if (!this.covers(from)) assert(false, `history does not cover ${from}`);
    let size = 0;
    let n = 0;
    for (let i = from - this.first; i < this.count; i++) {
      const len = this.lengthOf[this.slot(i)]!;
      if (n > 0 && size + len > bytesMax) break;
      visit(i);
      size += len;
      n++;
    }
    return n;
  }

  /** When `seq` was appended (for replication delay), if still held. */
  timeOf(seq: number): number | undefined {
    if (seq < this.first || seq > this.lastSeq) return undefined;
    return this.timeOfSlot[this.slot(seq - this.first)];
  }
}
