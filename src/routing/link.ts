/**
 * Forwarding over the cluster port: a request one node passes to another goes as a binary
 * Request frame on a persistent TCP connection to that node's -port, and comes back as a Response
 * frame carrying the API's JSON answer. Many requests are in flight on one connection at once,
 * matched by id; the frames of one event-loop turn go out in one socket write. Compared with an
 * HTTP request per forward, neither side parses HTTP: a forwarded request costs the owner about
 * what a local one does.
 *
 * A peer that cannot be reached, a connection that closes with requests in flight, and a request
 * with no answer within its timeout are all UnavailableError naming the group.
 */
import type { Member } from "../discovery/membership.ts";
import { UnavailableError } from "../lib/errors.ts";
import { limits } from "../lib/limits.ts";
import type { Logger } from "../lib/log.ts";
import { type Frame, FrameType, RequestFlag, RequestOp, encodeFrame } from "../protocol/frame.ts";
import type { Outbox } from "../replication/outbox.ts";
import { type ClientLink, TurnBatch, connectReplication } from "../replication/tcp.ts";
import { type Forwarded, type ForwardOptions, NODE_HEADER, SERVED_GROUP_HEADER } from "./forward.ts";

export type Op = (typeof RequestOp)[keyof typeof RequestOp];

interface Pending {
  resolve(f: Forwarded): void;
  reject(e: Error): void;
  deadline: number;
  timeoutMs: number;
  to: Member;
  group: number;
}

const SWEEP_MS = 100;
/**
 * A link with nothing in flight for this long is closed by us: the peer closes links silent for
 * LINK_IDLE_TIMEOUT_S (10 s), and a request sent just as it did would fail for nothing.
 */
const IDLE_CLOSE_MS = 5_000;

/** One connection to one peer's cluster port. */
class Peer {
  out: Outbox | null = null;
  closed = false;
  /** When the last request was sent (for closing idle links before the peer's idle timeout). */
  lastUsedMs = performance.now();
  private readonly batch = new TurnBatch(() => this.out);
  private nextId = 1;
  readonly pending = new Map<number, Pending>();
  readonly link: ClientLink;

  constructor(
    readonly address: string,
    host: string,
    port: number,
    frameBytesMax: number,
    log: Logger,
    private readonly onGone: (p: Peer, reason: string) => void,
  ) {
    this.link = connectReplication(
      host,
      port,
      frameBytesMax,
      {
        onOpen: (out) => {
          this.out = out;
          this.batch.flush();
        },
        onFrames: (frames) => this.onFrames(frames),
        onClose: (reason) => {
          this.closed = true;
          this.onGone(this, reason);
        },
      },
      log,
    );
  }

  request(frame: (id: number) => Uint8Array, p: Pending): void {
    this.lastUsedMs = performance.now();
    const id = this.nextId++;
    this.pending.set(id, p);
    this.batch.push(frame(id));
  }

  private onFrames(frames: Frame[]): string | undefined {
    for (const f of frames) {
      if (f.type !== FrameType.Response) return `unexpected frame type ${f.type} on a request link`;
      const p = this.pending.get(f.seq);
      if (!p) continue; // timed out already
      this.pending.delete(f.seq);
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(f.body) as Record<string, unknown>;
      } catch {
        p.reject(new UnavailableError(`Group ${p.group}: node ${p.to.nodeId} answered ${f.status} without JSON`, p.group));
        continue;
      }
      p.resolve({ status: f.status, body, headers: { [NODE_HEADER]: f.nodeId, [SERVED_GROUP_HEADER]: String(f.group) } });
    }
    return undefined;
  }
}

export class RequestLinks {
  private readonly peers = new Map<string, Peer>();
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private reaper: ReturnType<typeof setInterval> | null = null;

  constructor(
    private readonly frameBytesMax: number,
    private readonly log: Logger,
    private readonly idleCloseMs = IDLE_CLOSE_MS,
  ) {}

  /** Send one request to `to` (meant for group `o.group`) and wait for its answer. */
  forward(to: Member, op: Op, key: string, value: string, o: ForwardOptions): Promise<Forwarded> {
    const address = `${to.host}:${to.clusterPort}`;
    let peer = this.peers.get(address);
    if (!peer || peer.closed) {
      peer = new Peer(address, to.host, to.clusterPort, this.frameBytesMax, this.log, (p, reason) => this.gone(p, reason));
      this.peers.set(address, peer);
      this.reapIdle();
    }
    const timeoutMs = o.timeoutMs ?? limits.forwardTimeoutMs;
    const flags = (o.noFallback ? RequestFlag.NoFallback : 0) | (o.anyReplica ? RequestFlag.AnyReplica : 0);
    const hops = Math.min(o.hops + 1, 0xffffffff);
    this.sweep();
    return new Promise<Forwarded>((resolve, reject) => {
      peer.request((id) => encodeFrame({ type: FrameType.Request, group: o.group, term: 0, seq: id, op, flags, hops, key, value }), {
        resolve,
        reject,
        deadline: performance.now() + timeoutMs,
        timeoutMs,
        to,
        group: o.group,
      });
    });
  }

  /** A connection ended: fail what was in flight on it; the next request reconnects. */
  private gone(p: Peer, reason: string): void {
    if (this.peers.get(p.address) === p) this.peers.delete(p.address);
    for (const [, q] of p.pending) q.reject(new UnavailableError(`Group ${q.group} is unreachable: node ${q.to.nodeId} at ${p.address} (${reason})`, q.group));
    p.pending.clear();
  }

  /** One shared timer fails overdue requests (a timer per request costs ~15% of a forward). */
  private sweep(): void {
    if (this.sweeper) return;
    this.sweeper = setInterval(() => {
      const now = performance.now();
      let inFlight = 0;
      for (const peer of this.peers.values())
        for (const [id, q] of peer.pending) {
          if (now < q.deadline) {
            inFlight++;
            continue;
          }
          peer.pending.delete(id);
          q.reject(new UnavailableError(`Group ${q.group} is unreachable: node ${q.to.nodeId} at ${peer.address} did not answer within ${q.timeoutMs} ms`, q.group));
        }
      if (inFlight === 0 && this.sweeper) {
        clearInterval(this.sweeper);
        this.sweeper = null;
      }
    }, SWEEP_MS);
    (this.sweeper as { unref?: () => void }).unref?.();
  }

  /** Close the links idle for idleCloseMs (checked every second at most); runs while any link is open. */
  private reapIdle(): void {
    if (this.reaper) return;
    this.reaper = setInterval(() => {
      const now = performance.now();
      for (const p of [...this.peers.values()]) if (p.pending.size === 0 && now - p.lastUsedMs >= this.idleCloseMs) p.link.close();
      if (this.peers.size === 0 && this.reaper) {
        clearInterval(this.reaper);
        this.reaper = null;
      }
    }, Math.min(1_000, this.idleCloseMs / 2));
    (this.reaper as { unref?: () => void }).unref?.();
  }

  /** Open links (for tests). */
  get size(): number {
    return this.peers.size;
  }

  /** Close every connection (node shutdown); requests in flight fail. */
  close(): void {
    for (const p of [...this.peers.values()]) p.link.close();
    this.peers.clear();
    if (this.sweeper) clearInterval(this.sweeper);
    if (this.reaper) clearInterval(this.reaper);
    this.sweeper = this.reaper = null;
  }
}
