/**
 * The membership table: who is in the cluster, as last announced. Pure: time comes in as
 * arguments, datagrams come in decoded. The table always holds this node itself.
 */
import type { Announcement } from "../protocol/datagram.ts";
import { DatagramType } from "../protocol/datagram.ts";
import { limits } from "../lib/limits.ts";

/** What a node last announced about itself (see the datagram fields), and when we heard it. */
export type Member = Omit<Announcement, "type" | "cluster"> & {
  /** Clock time the node was last heard from (for self: now). */
  lastSeenMs: number;
};

export type Observation = "new" | "updated" | "left" | "ignored" | "full";

export class Membership {
  private readonly members = new Map<string, Member>();

  constructor(private self: Member) {
    this.members.set(self.nodeId, self);
  }

  get selfId(): string {
    return this.self.nodeId;
  }

  /** Replace what this node says about itself (its sequence moves with every write). */
  updateSelf(patch: Partial<Omit<Member, "nodeId">>): void {
    this.self = { ...this.self, ...patch };
    this.members.set(this.self.nodeId, this.self);
  }

  getSelf(): Member {
    return this.self;
  }

  /** Take in one decoded datagram heard at `nowMs`. */
  observe(a: Announcement, nowMs: number): Observation {
    if (a.nodeId === this.self.nodeId) return "ignored";
    if (a.type === DatagramType.Leave) return this.members.delete(a.nodeId) ? "left" : "ignored";
    const known = this.members.get(a.nodeId);
    if (!known && this.members.size >= limits.peersMax) return "full";
    // A node restarted on the same address comes back under a new id: forget the old one now
    // rather than after the stale time, so routing never picks the dead incarnation.
    if (!known)
      for (const m of this.members.values())
        if (m.nodeId !== this.self.nodeId && m.host === a.host && m.clusterPort === a.clusterPort) this.members.delete(m.nodeId);
    const { type: _type, cluster: _cluster, ...fields } = a;
    this.members.set(a.nodeId, { ...fields, lastSeenMs: nowMs });
    return known ? "updated" : "new";
  }

  /** Forget nodes not heard from for longer than `staleMs`; returns them. */
  sweep(nowMs: number, staleMs: number): Member[] {
    const gone: Member[] = [];
    for (const m of this.members.values())
      if (m.nodeId !== this.self.nodeId && nowMs - m.lastSeenMs > staleMs) {
        this.members.delete(m.nodeId);
        gone.push(m);
      }
    return gone;
  }

  get(nodeId: string): Member | undefined {
    return this.members.get(nodeId);
  }

  /** All members, self included, ordered by group then address. */
  list(): Member[] {
    return [...this.members.values()].sort(
      (a, b) => a.group - b.group || Number(b.leader) - Number(a.leader) || a.host.localeCompare(b.host) || a.clusterPort - b.clusterPort,
    );
  }

  get size(): number {
    return this.members.size;
  }

  /** Groups with at least one live member, ascending. */
  groups(): number[] {
    return [...new Set([...this.members.values()].map((m) => m.group))].sort((a, b) => a - b);
  }

  /** Leaders claiming `group`, best first: highest term, then lowest node id. */
  leadersOf(group: number): Member[] {
    return [...this.members.values()]
      .filter((m) => m.group === group && m.leader)
      .sort((a, b) => b.term - a.term || (a.nodeId < b.nodeId ? -1 : a.nodeId > b.nodeId ? 1 : 0));
  }

  leaderOf(group: number): Member | undefined {
    return this.leadersOf(group)[0];
  }
}
