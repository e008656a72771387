/**
 * The follower side: applies what its leader streams, strictly in sequence order, and says how far
 * it got. A full state transfer is staged aside and swapped in whole at its end, so reads keep
 * seeing the previous (older but whole) state meanwhile. No sockets here.
 */
import { type Frame, FrameType, type PutBytes, WelcomeMode, encodeFrame, putFrameOf } from "../protocol/frame.ts";
import type { Store } from "../store/store.ts";

export interface FollowerStats {
  fullTransfers: number;
  tailCatchUps: number;
  applied: number;
}

/** What a follower tells its node to make durable. */
export interface FollowerHooks {
  /** An entry was applied (a persistent node appends it to its log): its encoded frame, to copy before returning. */
  onEntry?(seq: number, frame: Uint8Array): void;
  /** A full state transfer was installed, or a new history adopted: persist that. */
  onHistory?(historyId: string, seq: number, term: number, kind: "snapshot" | "adopted"): void;
}

export class Follower {
  /** History the applied sequence belongs to ("" before the first sync). */
  historyId = "";
  applied = 0;
  /** Latest head sequence the leader told us about. */
  leaderHead = 0;
  /** Term of the entry at `applied` (what Hello reports, so a leader can tell a diverged log). */
  term = 0;
  private welcomed = false;
  /** A full transfer in progress, staged in a store of its own (as bytes) until its end. */
  private staging: { seq: number; historyId: string; count: number; store: Store } | null = null;
  readonly stats: FollowerStats = { fullTransfers: 0, tailCatchUps: 0, applied: 0 };

  constructor(
    private readonly store: Store,
    private readonly group: number,
    private readonly cluster: string,
    private readonly nodeId: string,
    private readonly hooks: FollowerHooks = {},
    start?: { historyId: string; seq: number; term: number },
  ) {
    if (start) {
      this.historyId = start.historyId;
      this.applied = start.seq;
      this.term = start.term;
    }
  }

  /**
   * A full transfer is on its way (the leader sends SnapshotBegin right behind its Welcome): until
   * it ends, our position is not the leader's (do not acknowledge it).
   */
  get syncing(): boolean {
    return this.staging !== null;
  }

  /** The first frame on a new link: where we are. */
  hello(): Uint8Array {
    this.welcomed = false;
    this.staging = null;
    return encodeFrame({
      type: FrameType.Hello,
      group: this.group,
      term: this.term,
      seq: this.applied,
      cluster: this.cluster,
      nodeId: this.nodeId,
      historyId: this.historyId,
    });
  }

  /** Acknowledge `seq` (the applied sequence, or for a persistent node the durable one). */
  ack(seq = this.applied): Uint8Array {
    return encodeFrame({ type: FrameType.Ack, group: this.group, term: this.term, seq: Math.min(seq, this.applied) });
  }

  /** Forget which history this copy is of: the next link then starts with a full transfer. */
  forgetHistory(): void {
    this.historyId = "";
  }

  /** Forget entries after `seq` as applied (its log lost them): the leader will send them again. */
  rewind(seq: number, term: number): void {
    if (seq < this.applied) {
      this.applied = seq;
      this.term = term;
    }
  }

  /** Apply one frame from the leader. Returns an error text when the link must be closed. */
  onFrame(f: Frame | PutBytes): string | undefined {
    if (f.group !== this.group) return `frame for group ${f.group}, this follower is in group ${this.group}`;
    if (f.seq > this.leaderHead && f.type !== FrameType.Hello) this.leaderHead = f.seq;
    switch (f.type) {
      case FrameType.Welcome:
        // A link starts with the leader's head, which is lower than the last one heard when this
        // is a new leader or a restarted one that kept nothing (else lag would count from the old head).
        this.leaderHead = f.seq;
        this.welcomed = true;
        if (f.mode === WelcomeMode.Tail) {
          if (this.historyId !== f.historyId) {
            this.historyId = f.historyId;
            this.hooks.onHistory?.(f.historyId, this.applied, this.term, "adopted");
          }
          this.stats.tailCatchUps++;
        }
        return undefined;
      case FrameType.SnapshotBegin:
        if (!this.welcomed) return "snapshot before welcome";
        this.staging = { seq: f.seq, historyId: f.historyId, count: f.count, store: this.store.emptyLike() };
        return undefined;
      case FrameType.SnapshotChunk:
        if (!this.staging || f.seq !== this.staging.seq) return "snapshot chunk outside a snapshot";
        for (const e of f.entries) {
          if (this.staging.store.versionOf(e.key) !== 0) {
            this.staging = null; // the link closes; what was staged is not kept through the reconnect
            return `key sent twice in a snapshot: "${e.key.slice(0, 64)}"`;
          }
          this.staging.store.set(e.key, e.value, e.version);
        }
        return undefined;
      case FrameType.SnapshotEnd: {
        const s = this.staging;
        if (!s || f.seq !== s.seq) return "snapshot end outside a snapshot";
        if (s.store.size !== s.count) {
          this.staging = null;
          return `snapshot said it holds ${s.count} keys, it sent ${s.store.size}`;
        }
        this.store.adopt(s.store);
        this.applied = s.seq;
        this.term = f.term;
        this.historyId = s.historyId;
        this.staging = null;
        this.stats.fullTransfers++;
        this.hooks.onHistory?.(s.historyId, s.seq, f.term, "snapshot");
        return undefined;
      }
      case "put-bytes":
      case FrameType.Put:
      case FrameType.Delete: {
        if (!this.welcomed || this.staging) return "entry before the follower was in sync";
        if (f.seq <= this.applied) return undefined; // already have it
        if (f.seq !== this.applied + 1) return `gap in the stream: expected ${this.applied + 1}, got ${f.seq}`;
        let frame: Uint8Array | undefined;
        if (f.type === "put-bytes") {
          // An ASCII key and value go into the store as they are; others are decoded first.
          if (this.store.setAscii(f.buf, f.keyAt, f.keyBytes, f.valueAt, f.valueBytes, f.seq) === undefined) {
            const p = putFrameOf(f);
            this.store.set(p.key, p.value, f.seq);
          }
          if (this.hooks.onEntry) frame = f.buf.subarray(f.start, f.end);
        } else {
          if (f.type === FrameType.Put) this.store.set(f.key, f.value, f.seq);
          else this.store.delete(f.key, f.seq);
          if (this.hooks.onEntry) frame = encodeFrame(f);
        }
        this.applied = f.seq;
        this.term = f.term;
        this.stats.applied++;
        if (frame) this.hooks.onEntry?.(f.seq, frame);
        return undefined;
      }
      case FrameType.Ping:
        return undefined;
      case FrameType.Error:
        return `leader refused: ${f.message}`;
      default:
        return `unexpected frame type ${f.type} from the leader`;
    }
  }

  /** Tombstones older than a leader's history can hold are never needed again. */
  purgeTombstones(keep: number): number {
    return this.store.purgeTombstones(this.applied - keep);
  }
}
