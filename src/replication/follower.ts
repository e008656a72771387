/**
 * The follower side: applies what its leader streams, strictly in sequence order, and says how far
 * it got. A full state transfer is staged aside and swapped in whole at its end, so reads keep
 * seeing the previous (older but whole) state meanwhile. No sockets here.
 */
import { type Frame, FrameType, WelcomeMode, encodeFrame } from "../protocol/frame.ts";
import type { Store } from "../store/store.ts";

export interface FollowerStats {
  fullTransfers: number;
  tailCatchUps: number;
  applied: number;
}

export class Follower {
  /** History the applied sequence belongs to ("" before the first sync). */
  historyId = "";
  applied = 0;
  /** Latest head sequence the leader told us about. */
  leaderHead = 0;
  term = 0;
  private welcomed = false;
  private staging: { seq: number; historyId: string; entries: [string, string, number][] } | null = null;
  readonly stats: FollowerStats = { fullTransfers: 0, tailCatchUps: 0, applied: 0 };

  constructor(
    private readonly store: Store,
    private readonly group: number,
    private readonly cluster: string,
    private readonly nodeId: string,
  ) {}

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

  ack(): Uint8Array {
    return encodeFrame({ type: FrameType.Ack, group: this.group, term: this.term, seq: this.applied });
  }

  /** Apply one frame from the leader. Returns an error text when the link must be closed. */
  onFrame(f: Frame): string | undefined {
    if (f.group !== this.group) return `frame for group ${f.group}, this follower is in group ${this.group}`;
    if (f.term > this.term) this.term = f.term;
    if (f.seq > this.leaderHead && f.type !== FrameType.Hello) this.leaderHead = f.seq;
    switch (f.type) {
      case FrameType.Welcome:
        this.welcomed = true;
        if (f.mode === WelcomeMode.Tail) {
          this.historyId = f.historyId;
          this.stats.tailCatchUps++;
        }
        return undefined;
      case FrameType.SnapshotBegin:
        if (!this.welcomed) return "snapshot before welcome";
        this.staging = { seq: f.seq, historyId: f.historyId, entries: [] };
        return undefined;
      case FrameType.SnapshotChunk:
        if (!this.staging || f.seq !== this.staging.seq) return "snapshot chunk outside a snapshot";
        for (const e of f.entries) this.staging.entries.push([e.key, e.value, e.version]);
        return undefined;
      case FrameType.SnapshotEnd: {
        const s = this.staging;
        if (!s || f.seq !== s.seq) return "snapshot end outside a snapshot";
        this.store.replaceAll(s.entries);
        this.applied = s.seq;
        this.historyId = s.historyId;
        this.staging = null;
        this.stats.fullTransfers++;
        return undefined;
      }
      case FrameType.Put:
      case FrameType.Delete:
        if (!this.welcomed || this.staging) return "entry before the follower was in sync";
        if (f.seq <= this.applied) return undefined; // already have it
        if (f.seq !== this.applied + 1) return `gap in the stream: expected ${this.applied + 1}, got ${f.seq}`;
        if (f.type === FrameType.Put) this.store.set(f.key, f.value, f.seq);
        else this.store.delete(f.key, f.seq);
        this.applied = f.seq;
        this.stats.applied++;
        return undefined;
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
