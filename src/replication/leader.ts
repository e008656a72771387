/**
 * The leader side of a replication group. It numbers every write and delete, applies it to the
 * store, keeps it in the history, and pumps it to each follower in order. Each follower has a
 * position (`next`, `acked`); the pump sends while the follower's socket has room, so a slow
 * follower never grows the leader's memory: if it falls behind the history it is resynchronised
 * with a full state transfer. No sockets here: links talk through an `Outbox`.
 *
 * With a write-ahead log, a write is proposed (numbered, handed to the log), and applied to the
 * store, answered and replicated only once the log says it is durable: readers and followers never
 * see a write that a crash could take back, and a failed fsync rolls the proposals back cleanly.
 * Without one (in-memory), a write is applied at once.
 */
import { assert } from "../lib/assert.ts";
import type { Logger } from "../lib/log.ts";
import { limits } from "../lib/limits.ts";
import { utf8Length } from "../lib/utf8.ts";
import { type Frame, FrameType, WelcomeMode, encodeFrame, type SnapshotEntry } from "../protocol/frame.ts";
import type { Entry, Store } from "../store/store.ts";
import { HISTORY_ENTRY_OVERHEAD_BYTES, History } from "./history.ts";
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
  /**
   * Highest sequence the follower acknowledged in an Ack after its stream began (after any full
   * transfer): what -sync-replicas counts. A Hello's position, or acks during a transfer, do not.
   */
  confirmed: number;
  /** Acks below this (the last full transfer's sequence) are the follower's position before it: ignored. */
  ackFloor: number;
  lastAckMs: number;
  /** Delay between a write and its ack, for the last acked write still in history. */
  lastDelayMs: number;
  /** A full state transfer in progress: the entries still to send. */
  snapshot: { seq: number; term: number; entries: Iterator<[string, Entry]> } | null;
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

/** Where a leader's proposals go to become durable; it answers with `durable()` or `failed()`. */
export interface LeaderLog {
  append(seq: number, frame: Uint8Array): void;
}

export interface LeaderOptions {
  /** Write-ahead log; none for an in-memory node. */
  wal?: LeaderLog;
  /** State the store already holds (recovered): its last sequence, and that entry's term. */
  start?: { seq: number; term: number };
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
  /** Runs `fn` after `ms` (the deadlines of `whenReplicated`); without it those waits never time out. */
  after?: (ms: number, fn: () => void) => void;
}

const SEND_BATCH_BYTES = 256 * 1024;

interface Proposal {
  seq: number;
  key: string;
  /** null for a delete. */
  value: string | null;
  frame: Uint8Array;
}

interface Waiter {
  seq: number;
  resolve(): void;
  reject(e: Error): void;
}

/** A write waiting for `n` followers to acknowledge it (-sync-replicas), until `deadline`. */
interface ReplicaWaiter extends Waiter {
  n: number;
  timeoutMs: number;
  deadline: number;
}

/** Fewer followers than asked acknowledged a write in time: it stays applied on the leader. */
export class ReplicationTimeout extends Error {
  override name = "ReplicationTimeout";
  constructor(
    readonly seq: number,
    readonly confirmed: number,
    readonly wanted: number,
    readonly timeoutMs: number,
  ) {
    super(`${confirmed} of ${wanted} followers confirmed write ${seq} within ${timeoutMs} ms`);
  }
}

export class Leader {
  /** Last sequence handed out. */
  private seq: number;
  /** Last sequence applied (durable): the head followers and readers see. */
  private applied: number;
  private readonly history: History;
  private readonly links = new Set<FollowerLink>();
  private nextLinkId = 1;
  /** Proposals waiting for the log, in sequence order, and the newest pending value of each key. */
  private pending: Proposal[] = [];
  private overlay = new Map<string, Proposal>();
  private waiters: Waiter[] = [];
  /** Writes waiting for followers' acks, in sequence (and so deadline) order; one timer for the first. */
  private replicaWaiters: ReplicaWaiter[] = [];
  private replicaTimerArmed = false;
  readonly stats: LeaderStats = { tailCatchUps: 0, fullTransfers: 0, resyncs: 0 };

  constructor(private readonly o: LeaderOptions) {
    this.seq = this.applied = o.start?.seq ?? 0;
    this.history = new History(o.historyEntries, limits.historyBytesMax, this.seq, o.start?.term ?? 0, HISTORY_ENTRY_OVERHEAD_BYTES);
  }

  /** Put an entry recovered from the log back into the catch-up history (at start-up). */
  restore(seq: number, term: number, frame: Uint8Array): void {
    if (seq <= this.history.lastSeq) return;
    this.history.append(seq, frame, this.o.now(), term);
    this.seq = this.applied = seq;
  }

  get head(): number {
    return this.applied;
  }

  /** The last sequence handed out, durable or not (a write proposed before a ring change is of the ring before). */
  get proposed(): number {
    return this.seq;
  }


  get historyFirstSeq(): number {
    return this.history.firstSeq;
  }

  private header(seq: number) {
    return { group: this.o.group, term: this.o.term, seq };
  }

  private propose(key: string, value: string | null): number {
    const seq = ++this.seq;
    const { group, term } = this.o;
    if (!this.o.wal) {
      // Applied at once; its frame is encoded straight into the history (no frame object, no
      // copy: 0.1-0.6 us of a write's server CPU in four A/B runs, 0.4 on average).
      this.applyToStore(key, value, seq);
      this.history.appendEntry(seq, group, term, key, value, this.o.now());
      this.applied = seq;
      if (this.links.size > 0) this.o.schedule();
      return seq;
    }
    const frame = encodeFrame(value === null ? { type: FrameType.Delete, group, term, seq, key } : { type: FrameType.Put, group, term, seq, key, value });
    const p: Proposal = { seq, key, value, frame };
    this.pending.push(p);
    this.overlay.set(key, p);
    this.o.wal.append(seq, frame);
    return seq;
  }

  private applyToStore(key: string, value: string | null, seq: number): void {
    if (value === null) this.o.store.delete(key, seq);
    else if (!this.o.store.set(key, value, seq)) assert(false, `leader write at ${seq} was older than the store's version of "${key}"`);
  }

  /** A durable proposal: into the store and the history. */
  private apply(p: Proposal): void {
    this.applyToStore(p.key, p.value, p.seq);
    this.history.append(p.seq, p.frame, this.o.now(), this.o.term);
    this.applied = p.seq;
  }

  /** Propose a write; returns its sequence (version). In memory it is applied at once. */
  set(key: string, value: string): number {
    return this.propose(key, value);
  }

  /**
   * Propose a delete; a missing key changes nothing and takes no sequence. When the key's last
   * change is a delete still on its way to the log, `seq` is that delete's (`pending`): the caller
   * must not answer before it is durable, as its own proposer does not (answering at once told a
   * client the key was gone while a read still found it, and a crash could bring it back).
   */
  delete(key: string): { existed: boolean; seq: number; pending: boolean } {
    const p = this.overlay.get(key);
    if (p !== undefined && p.value === null) return { existed: false, seq: p.seq, pending: true };
    const exists = p ? true : this.o.store.get(key) !== undefined;
    if (!exists) return { existed: false, seq: this.applied, pending: false };
    return { existed: true, seq: this.propose(key, null), pending: false };
  }

  /**
   * Whether this leader holds something for `key` that a copy moved in must not overrule: a
   * pending write, or a live value or tombstone at a version `current` accepts (by default any).
   */
  knows(key: string, current: (version: number) => boolean = () => true): boolean {
    if (this.overlay.has(key)) return true;
    const v = this.o.store.versionOf(key);
    return v > 0 && current(v);
  }

  /** Sequence of the last change this leader holds for `key`, pending or applied (0: none). */
  lastChangeOf(key: string): number {
    return this.overlay.get(key)?.seq ?? this.o.store.versionOf(key);
  }

  /**
   * Write `key` (a value, or null: a delete) only if this leader knows nothing current of it (a
   * key or a delete moved in must not undo a newer write or delete made here). `current` tells
   * whether what the store holds at a version still counts (the service: only what was written
   * while this group owned the key, and owned it ever since).
   */
  setIfUnknown(key: string, value: string | null, current?: (version: number) => boolean): number | undefined {
    return this.knows(key, current) ? undefined : this.propose(key, value);
  }

  /**
   * Delete `key` only if its last change is still the one at `version`: a key moved out that
   * nobody changed since, or a tombstone whose delete its owner has taken. A tombstone is
   * superseded by a new delete, of the ring in force now, so it is never sent again, even when
   * the log is replayed (found by review: forgetting it in memory only let a restart send it
   * again, over newer writes).
   */
  deleteIfVersion(key: string, version: number): number | undefined {
    if (this.overlay.has(key) || this.o.store.versionOf(key) !== version) return undefined;
    return this.propose(key, null);
  }

  /** Record a delete even of a key this leader does not hold (so a copy moved in later stays deleted). */
  tombstone(key: string): number {
    return this.propose(key, null);
  }

  /** Resolves once `seq` is applied (durable); rejects when the log failed to write it. */
  whenApplied(seq: number): Promise<void> {
    if (seq <= this.applied) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ seq, resolve, reject }));
  }

  /** Follower nodes linked to this leader (streaming, or taking a full transfer); a node on two links, an old one not yet closed, counts once. */
  connectedFollowers(): number {
    const nodes = new Set<string>();
    for (const l of this.links) if (l.mode !== "handshake") nodes.add(l.nodeId);
    return nodes.size;
  }

  /** Each follower node's highest confirmed sequence (a node on two links, an old one not yet closed, counts once). */
  private confirmedByNode(): Map<string, number> {
    const best = new Map<string, number>();
    for (const l of this.links) if (l.confirmed > (best.get(l.nodeId) ?? 0)) best.set(l.nodeId, l.confirmed);
    return best;
  }

  /** Followers that acknowledged `seq` (a persistent follower acknowledges what its log holds). */
  confirmedBy(seq: number): number {
    let n = 0;
    for (const v of this.confirmedByNode().values()) if (v >= seq) n++;
    return n;
  }

  /** The highest sequence at least `n` followers acknowledged (0 when fewer than n have). */
  private confirmedUpTo(n: number): number {
    const v = [...this.confirmedByNode().values()].sort((a, b) => b - a);
    return v.length < n ? 0 : v[n - 1]!;
  }

  /**
   * Resolves once `n` followers acknowledged `seq` (applied, and on disk for a persistent one);
   * rejects with ReplicationTimeout after `timeoutMs`. The write stays applied either way.
   */
  whenReplicated(seq: number, n: number, timeoutMs: number): Promise<void> {
    if (seq <= this.confirmedUpTo(n)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.replicaWaiters.push({ seq, n, timeoutMs, deadline: this.o.now() + timeoutMs, resolve, reject });
      if (this.replicaWaiters.length === 1) this.armReplicaTimer(timeoutMs);
    });
  }

  /** Settle the replica waiters that are confirmed or past their deadline, in sequence order. */
  private settleReplicaWaiters(): void {
    const ws = this.replicaWaiters;
    if (ws.length === 0) return;
    const now = this.o.now();
    let n = -1;
    let upTo = 0;
    let i = 0;
    for (; i < ws.length; i++) {
      const w = ws[i]!;
      if (w.n !== n) {
        n = w.n;
        upTo = this.confirmedUpTo(n);
      }
      if (w.seq <= upTo) w.resolve();
      else if (now >= w.deadline) w.reject(new ReplicationTimeout(w.seq, this.confirmedBy(w.seq), w.n, w.timeoutMs));
      else break;
    }
    if (i > 0) this.replicaWaiters = ws.slice(i);
  }

  /** One timer, for the first waiter's deadline (later ones come due after it). */
  private armReplicaTimer(ms: number): void {
    if (this.replicaTimerArmed || !this.o.after) return;
    this.replicaTimerArmed = true;
    this.o.after(ms, () => {
      this.replicaTimerArmed = false;
      this.settleReplicaWaiters();
      const first = this.replicaWaiters[0];
      if (first) this.armReplicaTimer(Math.max(1, first.deadline - this.o.now()));
    });
  }

  /** The log has everything up to `seq` on disk: apply, answer and replicate it. */
  durable(seq: number): void {
    let i = 0;
    for (; i < this.pending.length && this.pending[i]!.seq <= seq; i++) {
      const p = this.pending[i]!;
      this.apply(p);
      if (this.overlay.get(p.key) === p) this.overlay.delete(p.key);
    }
    if (i > 0) this.pending = this.pending.slice(i);
    let w = 0;
    for (; w < this.waiters.length && this.waiters[w]!.seq <= this.applied; w++) this.waiters[w]!.resolve();
    if (w > 0) this.waiters = this.waiters.slice(w);
    if (i > 0 && this.links.size > 0) this.o.schedule();
  }

  /** The log could not write proposals from `fromSeq` on: forget them and fail their writers. */
  failed(fromSeq: number, error: Error): void {
    assert(fromSeq === this.applied + 1, `log failed at ${fromSeq} but ${this.applied} is the last applied`);
    this.pending = [];
    this.overlay.clear();
    this.seq = this.applied;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(error);
  }

  /** Term of the entry at `seq` (this leader's term when the history no longer knows it). */
  termAt(seq: number): number {
    return this.history.termAt(seq) ?? this.o.term;
  }

  /** Tombstones older than the history can no longer matter: a follower that old gets a snapshot. */
  purgeTombstones(upTo = Number.POSITIVE_INFINITY): number {
    return this.o.store.purgeTombstones(Math.min(this.history.firstSeq - 1, upTo));
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
      confirmed: 0,
      ackFloor: 0,
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
      // During a full transfer, and for a while after (acks in flight), the follower reports the
      // position it had before it: not one of our entries.
      if (link.mode === "snapshot" || f.seq < link.ackFloor) return undefined;
      if (f.seq > this.applied) return `ack of ${f.seq} beyond head ${this.applied}`;
      if (f.seq > link.acked) {
        const t = this.history.timeOf(f.seq);
        if (t !== undefined) link.lastDelayMs = this.o.now() - t;
        link.acked = f.seq;
      }
      if (f.seq > link.confirmed) {
        link.confirmed = f.seq;
        this.settleReplicaWaiters();
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
    link.acked = 0;
    // The follower's data is a prefix of ours when it comes from our history (or it has nothing),
    // and the history still holds everything after it: then the tail is enough.
    // The follower's last entry must be ours, of the same term: a leader that lost entries it had
    // shipped (a power cut with fsync never) would otherwise leave the follower silently diverged.
    const sameHistory = f.historyId === this.o.historyId || f.seq === 0;
    const sameEntry = f.seq === 0 || this.history.termAt(f.seq) === f.term;
    if (sameHistory && sameEntry && f.seq <= this.applied && this.history.covers(f.seq + 1)) {
      link.mode = "stream";
      link.next = f.seq + 1;
      link.acked = f.seq; // what it holds is ours: a real position
      this.stats.tailCatchUps++;
      link.out.send(encodeFrame({ type: FrameType.Welcome, ...this.header(this.applied), historyId: this.o.historyId, mode: WelcomeMode.Tail }));
      this.o.log.info("follower joined, streaming from its position", { node_id: f.nodeId, from_seq: f.seq + 1, head: this.applied });
    } else {
      const busy = this.transfersBusy();
      if (busy) return busy;
      link.out.send(encodeFrame({ type: FrameType.Welcome, ...this.header(this.applied), historyId: this.o.historyId, mode: WelcomeMode.Snapshot }));
      this.startSnapshot(link, `follower at ${f.seq} (term ${f.term}) of history "${f.historyId}"`);
    }
    this.pump(link);
    return undefined;
  }

  /**
   * Why a new full transfer must wait, if it must: each holds a copy of the store until it ends,
   * so at most limits.fullTransfersMax run at once (found by an audit: 20 peers that said Hello
   * and never read held 20 copies, 1 GiB).
   */
  private transfersBusy(): string | undefined {
    let n = 0;
    for (const l of this.links) if (l.mode === "snapshot") n++;
    if (n >= limits.fullTransfersMax) return `busy: ${n} full state transfers are in progress, at most ${limits.fullTransfersMax} at once; try again shortly`;
    return undefined;
  }

  private startSnapshot(link: FollowerLink, why: string): void {
    const entries = this.o.store.snapshot();
    const seq = this.applied;
    link.mode = "snapshot";
    link.ackFloor = seq;
    link.snapshot = { seq, term: this.termAt(seq), entries: entries[Symbol.iterator]() };
    this.stats.fullTransfers++;
    link.out.send(encodeFrame({ type: FrameType.SnapshotBegin, group: this.o.group, term: link.snapshot.term, seq, historyId: this.o.historyId, count: entries.length }));
    this.o.log.info("full state transfer to follower", { node_id: link.nodeId, keys: entries.length, seq, why });
  }

  /** Send to one follower while its socket has room. */
  pump(link: FollowerLink): void {
    const out = link.out;
    while (!out.closed && out.queuedBytes < limits.followerQueuedBytesMax) {
      if (link.mode === "snapshot") {
        this.sendSnapshotChunk(link);
        continue;
      }
      if (link.mode !== "stream" || link.next > this.applied) return;
      if (!this.history.covers(link.next)) {
        const busy = this.transfersBusy();
        if (busy) {
          this.o.log.warn("follower fell behind the history and needs a full transfer: closing its link until one can start", { node_id: link.nodeId, reason: busy });
          out.send(encodeFrame({ type: FrameType.Error, group: this.o.group, term: 0, seq: 0, message: busy }));
          out.end();
          return;
        }
        this.stats.resyncs++;
        this.startSnapshot(link, `follower fell behind the history (next ${link.next}, history starts at ${this.history.firstSeq})`);
        continue;
      }
      const { parts, count } = this.history.run(link.next, SEND_BATCH_BYTES);
      for (const p of parts) out.send(p);
      link.next += count;
    }
  }

  private sendSnapshotChunk(link: FollowerLink): void {
    const snap = link.snapshot!;
    const chunk: SnapshotEntry[] = [];
    let bytes = 0;
    let done = false;
    while (bytes < limits.snapshotChunkBytes) {
      const next = snap.entries.next();
      if (next.done) {
        done = true;
        break;
      }
      const [key, e] = next.value;
      chunk.push({ key, value: e.value, version: e.version });
      bytes += 16 + utf8Length(key) + utf8Length(e.value);
    }
    const h = { group: this.o.group, term: snap.term, seq: snap.seq };
    if (chunk.length > 0) link.out.send(encodeFrame({ type: FrameType.SnapshotChunk, ...h, entries: chunk }));
    if (done) {
      link.out.send(encodeFrame({ type: FrameType.SnapshotEnd, ...h }));
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
    const frame = encodeFrame({ type: FrameType.Ping, ...this.header(this.applied) });
    for (const link of this.links) {
      // A follower that takes nothing from its socket for this long is cut off: in a full
      // transfer its link holds a copy of the store (found by an audit: peers that never read
      // but sent an Ack now and then, which kept the idle timeout away, held one each for good).
      const stalled = link.out.stalledMs();
      if (stalled > limits.followerStallMs) {
        this.o.log.warn("follower has read nothing for a while: closing its link", { node_id: link.nodeId, address: link.address, state: link.mode, stalled_ms: Math.round(stalled), queued_bytes: link.out.queuedBytes });
        link.out.abort();
        continue;
      }
      if (link.mode !== "handshake") link.out.send(frame);
    }
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
        lag: this.applied - l.acked,
        last_ack_ms_ago: Math.round(now - l.lastAckMs),
        replication_delay_ms: Math.round(l.lastDelayMs),
      }));
  }
}
