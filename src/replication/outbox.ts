/**
 * What we owe one socket. Bun's `socket.write` does not buffer: it returns how many bytes it took
 * (often fewer under load, -1 once closing). The rest waits here until `drain`. Callers bound
 * what they add by looking at `queuedBytes` (the leader's pump does), so this never grows unbounded.
 */
export interface Wire {
  write(bytes: Uint8Array): number;
  end(): void;
  /** Close at once, dropping what the kernel still holds (a peer that does not read never gets an end). */
  terminate?(): void;
}

export class Outbox {
  private queue: Uint8Array[] = [];
  private head = 0;
  queuedBytes = 0;
  closed = false;
  /** Since when bytes have waited in the queue without any going out (null: none wait). */
  private waitingSinceMs: number | null = null;

  /** `clock` (milliseconds) times how long queued bytes wait; without one, stalledMs is always 0. */
  constructor(
    private readonly wire: Wire,
    private readonly clock: () => number = () => 0,
  ) {}

  send(bytes: Uint8Array): void {
    if (this.closed || bytes.length === 0) return;
    if (this.head === this.queue.length) {
      const n = this.wire.write(bytes);
      if (n < 0) {
        this.closed = true;
        return;
      }
      if (n === bytes.length) return;
      bytes = bytes.subarray(n);
    }
    if (this.waitingSinceMs === null) this.waitingSinceMs = this.clock();
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
  }

  /** How long queued bytes have waited without any of them going out; 0 when none wait. */
  stalledMs(now = this.clock()): number {
    return this.waitingSinceMs === null ? 0 : now - this.waitingSinceMs;
  }

  /** Write what is queued; true when everything went out. Call from `drain`. */
  flush(): boolean {
    while (this.head < this.queue.length) {
      const b = this.queue[this.head]!;
      const n = this.wire.write(b);
      if (n < 0) {
        this.closed = true;
        return false;
      }
      this.queuedBytes -= n;
      if (n > 0) this.waitingSinceMs = this.clock();
      if (n < b.length) {
        this.queue[this.head] = b.subarray(n);
        return false;
      }
      this.head++;
    }
    this.queue = [];
    this.head = 0;
    this.waitingSinceMs = null;
    return true;
  }

  end(): void {
    this.closed = true;
    this.wire.end();
  }

  /** Drop everything queued and close the connection at once. */
  abort(): void {
    this.closed = true;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    this.waitingSinceMs = null;
    if (this.wire.terminate) this.wire.terminate();
    else this.wire.end();
  }
}
