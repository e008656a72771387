/**
 * The leader's recent history: the encoded frames of the last writes and deletes, by sequence,
 * bounded in entries and bytes. A follower whose next sequence is still here is caught up from
 * it; one that fell behind its start gets a full state transfer instead. Pure.
 */
import { assert } from "../lib/assert.ts";

/**
 * What one entry costs beyond its frame bytes (the Buffer object and its slot, a time and a term
 * in their arrays), so the byte bound is a bound on memory, not on payload. Measured roughly with
 * bench/memory.ts: ~340 bytes held per 141-byte frame.
 */
export const HISTORY_ENTRY_OVERHEAD_BYTES = 200;

export class History {
  private frames: Uint8Array[] = [];
  private times: number[] = [];
  private terms: number[] = [];
  private head = 0;
  private bytes = 0;
  /** Sequence of frames[head]; the history holds firstSeq..lastSeq. */
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
    this.first = startAfter + 1;
  }

  get firstSeq(): number {
    return this.first;
  }

  get lastSeq(): number {
    return this.first + (this.frames.length - this.head) - 1;
  }

  get byteSize(): number {
    return this.bytes;
  }

  get length(): number {
    return this.frames.length - this.head;
  }

  append(seq: number, frame: Uint8Array, timeMs: number, term = 0): void {
    assert(seq === this.lastSeq + 1, `history append out of order: ${seq} after ${this.lastSeq}`);
    this.frames.push(frame);
    this.times.push(timeMs);
    this.terms.push(term);
    this.bytes += frame.length + this.entryOverheadBytes;
    while (this.length > 1 && (this.length > this.entriesMax || this.bytes > this.bytesMax)) {
      this.bytes -= this.frames[this.head]!.length + this.entryOverheadBytes;
      this.baseTerm = this.terms[this.head]!;
      this.head++;
      this.first++;
    }
    if (this.head > 4096 && this.head * 2 > this.frames.length) {
      this.frames = this.frames.slice(this.head);
      this.times = this.times.slice(this.head);
      this.terms = this.terms.slice(this.head);
      this.head = 0;
    }
  }

  /** Term of the entry at `seq`, when the history knows it (it knows the one just before it too). */
  termAt(seq: number): number | undefined {
    if (seq === this.first - 1) return this.baseTerm;
    if (seq < this.first || seq > this.lastSeq) return undefined;
    return this.terms[this.head + (seq - this.first)];
  }

  /** True when the history can supply every frame from `seq` on. */
  covers(seq: number): boolean {
    return seq >= this.first && seq <= this.lastSeq + 1;
  }

  /** Frames from `from` on, at most `bytesMax` bytes of them (at least one). */
  slice(from: number, bytesMax: number): Uint8Array[] {
    assert(this.covers(from), `history does not cover ${from}`);
    const out: Uint8Array[] = [];
    let size = 0;
    for (let i = this.head + (from - this.first); i < this.frames.length; i++) {
      const f = this.frames[i]!;
      if (out.length > 0 && size + f.length > bytesMax) break;
      out.push(f);
      size += f.length;
    }
    return out;
  }

  /** When `seq` was appended (for replication delay), if still held. */
  timeOf(seq: number): number | undefined {
    if (seq < this.first || seq > this.lastSeq) return undefined;
    return this.times[this.head + (seq - this.first)];
  }
}
