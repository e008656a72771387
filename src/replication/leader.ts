/**
 * The leader side of a replication group. It numbers every write and delete, applies it to the
 * store, keeps it in the history, and pumps it to each follower in order. Each follower has a
 * position (`next`, `acked`); the pump sends while the follower's socket has room, so a slow
 * follower never grows the leader's memory: if it falls behind the history it is resynchronised
 * with a full state transfer. No sockets here: links talk through an `Outbox`.
 */
import { assert } from "../lib/assert.ts";
import type { Logger } from "../lib/log.ts";
import { limits } from "../lib/limits.ts";
import { type Frame, FrameType, WelcomeMode, encodeFrame, type SnapshotEntry } from "../protocol/frame.ts";
import type { Entry, Store } from "../store/store.ts";
import { History } from "./history.ts";
import type { Outbox } from "./outbox.ts";

export interface FollowerLink {
  readonly id: number;
  readonly address: string;
  readonly out: Outbox;
  nodeId: string;
  mode: "handshake" | "snapshot" | "stream";
  /** Next sequence to send. */
  next: number;
  /** Highest sequence the follower says it applied. */
  acked: number;
  lastAckMs: number;
  /** Delay between a write and its ack, for the last acked write still in history. */
  lastDelayMs: number;
  snapshot: { seq: number; entries: [string, Entry][]; index: number } | null;
}

export interface FollowerInfo {
  node_id: string;
  address: string;
  state: FollowerLink["mode"];
  acked_seq: number;
  lag: number;
  last_ack_ms_ago: number;
  replication_delay_ms: number;
}

export interface LeaderStats {
  tailCatchUps: number;
  fullTransfers: number;
  resyncs: number;
}

export interface LeaderOptions {
  store: Store;
  group: number;
  term: number;
  historyId: string;
  cluster: string;
  /** Writes kept for tail catch-up (the history is also bounded by limits.historyBytesMax). */
  historyEntries: number;
  now: () => number;
  log: Logger;
  /** Asks the caller to run `pumpAll` soon (batches the writes of one event-loop turn). */
  schedule: () => void;
}

const SEND_BATCH_BYTES = 256 * 1024;

export class Leader {
  private seq = 0;
  private readonly history: History;
  private readonly links = new Set<FollowerLink>();
  private nextLinkId = 1;
  readonly stats: LeaderStats = { tailCatchUps: 0, fullTransfers: 0, resyncs: 0 };

  constructor(private readonly o: LeaderOptions) {
    this.history = new History(o.historyEntries, limits.historyBytesMax, 0);
  }

  get head(): number {
    return this.seq;
  }

  get historyFirstSeq(): number {
    return this.history.firstSeq;
  }

  private header(seq: number) {
    return { group: this.o.group, term: this.o.term, seq };
  }

  private record(frame: Frame): void {
    this.history.append(frame.seq, encodeFrame(frame), this.o.now());
    if (this.links.size > 0) this.o.schedule();
  }

  /** Apply a write locally and queue it for every follower; returns its sequence (version). */
  set(key: string, value: string): number {
    const seq = ++this.seq;
    const applied = this.o.store.set(key, value, seq);
    assert(applied, `leader write at ${seq} was older than the store's version of "${key}"`);
    this.record({ type: FrameType.Put, ...this.header(seq), key, value });
    return seq;
  }

  /** Delete locally and replicate; a missing key changes nothing and takes no sequence. */
  delete(key: string): { existed: boolean; seq: number } {
    if (this.o.store.get(key) === undefined) return { existed: false, seq: this.seq };
    const seq = ++this.seq;
    this.o.store.delete(key, seq);
    this.record({ type: FrameType.Delete, ...this.header(seq), key });
    return { existed: true, seq };
  }

  /** Tombstones older than the history can no longer matter: a follower that old gets a snapshot. */
  purgeTombstones(): number {
    return this.o.store.purgeTombstones(this.history.firstSeq - 1);
  }

  attach(out: Outbox, address: string): FollowerLink {
    const link: FollowerLink = {
      id: this.nextLinkId++,
      address,
      out,
      nodeId: "",
      mode: "handshake",
      next: 0,
      acked: 0,
      lastAckMs: this.o.now(),
      lastDelayMs: 0,
      snapshot: null,
    };
    this.links.add(link);
    return link;
  }

  detach(link: FollowerLink): void {
    this.links.delete(link);
  }

  /** Handle one frame from a follower. Returns an error text when the link must be closed. */
  onFrame(link: FollowerLink, f: Frame): string | undefined {
    if (f.group !== this.o.group) return `frame for group ${f.group} on a link of group ${this.o.group}`;
    if (f.type === FrameType.Hello) return this.hello(link, f);
    if (f.type === FrameType.Ack) {
      if (link.mode === "handshake") return "ack before hello";
      if (f.seq > this.seq) return `ack of ${f.seq} beyond head ${this.seq}`;
      if (f.seq > link.acked) {
        const t = this.history.timeOf(f.seq);
        if (t !== undefined) link.lastDelayMs = this.o.now() - t;
        link.acked = f.seq;
      }
      link.lastAckMs = this.o.now();
      return undefined;
    }
    return `unexpected frame type ${f.type} from a follower`;
  }

  private hello(link: FollowerLink, f: Extract<Frame, { type: typeof FrameType.Hello }>): string | undefined {
    if (link.mode !== "handshake") return "second hello on one link";
    if (f.cluster !== this.o.cluster) return `follower is in cluster "${f.cluster}", not "${this.o.cluster}"`;
    link.nodeId = f.nodeId;
    link.acked = f.seq;
    // The follower's data is a prefix of ours when it comes from our history (or it has nothing),
    // and the history still holds everything after it: then the tail is enough.
    const sameHistory = f.historyId === this.o.historyId || f.seq === 0;
    if (sameHistory && f.seq <= this.seq && this.history.covers(f.seq + 1)) {
      link.mode = "stream";
      link.next = f.seq + 1;
      this.stats.tailCatchUps++;
      link.out.send(encodeFrame({ type: FrameType.Welcome, ...this.header(this.seq), historyId: this.o.historyId, mode: WelcomeMode.Tail }));
      this.o.log.info("follower joined, streaming from its position", { node_id: f.nodeId, from_seq: f.seq + 1, head: this.seq });
    } else {
      link.out.send(encodeFrame({ type: FrameType.Welcome, ...this.header(this.seq), historyId: this.o.historyId, mode: WelcomeMode.Snapshot }));
      this.startSnapshot(link, `follower at ${f.seq} of history "${f.historyId}"`);
    }
    this.pump(link);
    return undefined;
  }

  private startSnapshot(link: FollowerLink, why: string): void {
    const entries = this.o.store.snapshot();
    link.mode = "snapshot";
    link.snapshot = { seq: this.seq, entries, index: 0 };
    this.stats.fullTransfers++;
    link.out.send(encodeFrame({ type: FrameType.SnapshotBegin, ...this.header(this.seq), historyId: this.o.historyId, count: entries.length }));
    this.o.log.info("full state transfer to follower", { node_id: link.nodeId, keys: entries.length, seq: this.seq, why });
  }

  /** Send to one follower while its socket has room. */
  pump(link: FollowerLink): void {
    const out = link.out;
    while (!out.closed && out.queuedBytes < limits.followerQueuedBytesMax) {
      if (link.mode === "snapshot") {
        this.sendSnapshotChunk(link);
        continue;
      }
      if (link.mode !== "stream" || link.next > this.seq) return;
      if (!this.history.covers(link.next)) {
        this.stats.resyncs++;
        this.startSnapshot(link, `follower fell behind the history (next ${link.next}, history starts at ${this.history.firstSeq})`);
        continue;
      }
      const frames = this.history.slice(link.next, SEND_BATCH_BYTES);
      out.send(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
      link.next += frames.length;
    }
  }

  private sendSnapshotChunk(link: FollowerLink): void {
    const snap = link.snapshot!;
    const chunk: SnapshotEntry[] = [];
    let bytes = 0;
    while (snap.index < snap.entries.length && bytes < limits.snapshotChunkBytes) {
      const [key, e] = snap.entries[snap.index++]!;
      chunk.push({ key, value: e.value!, version: e.version });
      bytes += 16 + key.length + e.value!.length;
    }
    if (chunk.length > 0) link.out.send(encodeFrame({ type: FrameType.SnapshotChunk, ...this.header(snap.seq), entries: chunk }));
    if (snap.index >= snap.entries.length) {
      link.out.send(encodeFrame({ type: FrameType.SnapshotEnd, ...this.header(snap.seq) }));
      link.mode = "stream";
      link.next = snap.seq + 1;
      link.snapshot = null;
    }
  }

  pumpAll(): void {
    for (const link of this.links) if (link.mode !== "handshake") this.pump(link);
  }

  /** Keep-alive and position: each follower answers with an ack. */
  ping(): void {
    const frame = encodeFrame({ type: FrameType.Ping, ...this.header(this.seq) });
    for (const link of this.links) if (link.mode !== "handshake") link.out.send(frame);
  }

  followers(): FollowerInfo[] {
    const now = this.o.now();
    return [...this.links]
      .filter((l) => l.mode !== "handshake")
      .map((l) => ({
        node_id: l.nodeId,
        address: l.address,
        state: l.mode,
        acked_seq: l.acked,
        lag: this.seq - l.acked,
        last_ack_ms_ago: Math.round(now - l.lastAckMs),
        replication_delay_ms: Math.round(l.lastDelayMs),
      }));
  }
}
