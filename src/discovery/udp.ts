/**
 * Discovery over UDP broadcast. Every node binds 0.0.0.0:<discovery port> with SO_REUSEADDR so
 * several nodes on one host share the port (the Go original failed here), announces itself to the
 * subnet broadcast address at start and every heartbeat, and answers a newcomer at once with an
 * announcement of its own so a cluster forms in milliseconds rather than a heartbeat.
 */
import type { Logger } from "../lib/log.ts";
import { type Announcement, DatagramType, decodeDatagram, encodeDatagram } from "../protocol/datagram.ts";
import type { Membership, Observation } from "./membership.ts";

/** Undocumented in Bun's types: 16 = SO_REUSEADDR (see PLATFORM.md, pinned by a test). */
export const SO_REUSEADDR = 16;

export interface DiscoveryOptions {
  cluster: string;
  port: number;
  broadcast: string;
  heartbeatMs: number;
  staleMs: number;
  membership: Membership;
  /** What this node announces; called for every datagram sent. */
  announcement: () => Omit<Announcement, "type" | "cluster">;
  now: () => number;
  log: Logger;
  onChange: (what: Observation | "stale", nodeId: string) => void;
}

export interface DiscoveryStats {
  received: number;
  accepted: number;
  dropped: Record<string, number>;
  sent: number;
  sendErrors: number;
}

type UdpSocket = import("bun").udp.Socket<"buffer">;

export class Discovery {
  private socket: UdpSocket | null = null;
  private heartbeat: ReturnType<typeof setInterval> | null = null;
  private sweeper: ReturnType<typeof setInterval> | null = null;
  private lastAnnounceMs = -Infinity;
  private replyTimer: ReturnType<typeof setTimeout> | null = null;
  readonly stats: DiscoveryStats = { received: 0, accepted: 0, dropped: {}, sent: 0, sendErrors: 0 };

  constructor(private readonly o: DiscoveryOptions) {}

  async start(): Promise<void> {
    const options: import("bun").udp.SocketOptions<"buffer"> = {
      hostname: "0.0.0.0",
      port: this.o.port,
      socket: { data: (_s, buf) => this.receive(buf) },
    };
    // `flags` is not in Bun's type definitions; without it a second node on the host gets EADDRINUSE.
    Object.assign(options, { flags: SO_REUSEADDR });
    const socket = await Bun.udpSocket(options);
    socket.setBroadcast(true);
    this.socket = socket;
    this.announce();
    this.heartbeat = setInterval(() => this.announce(), this.o.heartbeatMs);
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.min(1000, this.o.staleMs / 5)));
  }

  /** Broadcast a datagram. `send` throws on EACCES/ENETUNREACH/EPERM: count it, never crash. */
  private send(type: (typeof DatagramType)[keyof typeof DatagramType]): void {
    if (!this.socket) return;
    try {
      const bytes = encodeDatagram({ ...this.o.announcement(), type, cluster: this.o.cluster });
      this.socket.send(bytes, this.o.port, this.o.broadcast);
      this.stats.sent++;
    } catch (e) {
      this.stats.sendErrors++;
      this.o.log.warn("discovery send failed", { to: `${this.o.broadcast}:${this.o.port}`, error: String(e) });
    }
  }

  announce(): void {
    this.lastAnnounceMs = this.o.now();
    this.send(DatagramType.Announce);
  }

  private receive(buf: Uint8Array): void {
    this.stats.received++;
    const d = decodeDatagram(buf, this.o.cluster);
    if (!d.ok) {
      this.stats.dropped[d.reason] = (this.stats.dropped[d.reason] ?? 0) + 1;
      this.o.log.debug("discovery datagram dropped", { reason: d.reason, bytes: buf.length });
      return;
    }
    this.stats.accepted++;
    const what = this.o.membership.observe(d.message, this.o.now());
    if (what === "full") this.stats.dropped["table-full"] = (this.stats.dropped["table-full"] ?? 0) + 1;
    if (what === "new" || what === "left") this.o.onChange(what, d.message.nodeId);
    else if (what === "updated") this.o.onChange(what, d.message.nodeId);
    // A newcomer learns of us at once, not at our next heartbeat; at most one reply per 50 ms.
    if (what === "new") this.scheduleReply();
  }

  private scheduleReply(): void {
    if (this.replyTimer) return;
    const wait = Math.max(0, 50 - (this.o.now() - this.lastAnnounceMs));
    this.replyTimer = setTimeout(() => {
      this.replyTimer = null;
      this.announce();
    }, wait);
  }

  private sweep(): void {
    for (const m of this.o.membership.sweep(this.o.now(), this.o.staleMs)) {
      this.o.log.info("node stale, removed from membership", { node_id: m.nodeId, address: `${m.host}:${m.clusterPort}` });
      this.o.onChange("stale", m.nodeId);
    }
  }

  /** Tell peers we are leaving, then close. */
  stop(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.sweeper) clearInterval(this.sweeper);
    if (this.replyTimer) clearTimeout(this.replyTimer);
    this.heartbeat = this.sweeper = this.replyTimer = null;
    this.send(DatagramType.Leave);
    this.socket?.close();
    this.socket = null;
  }
}
