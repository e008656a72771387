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
  /**
   * Groups on the ring, and whether each was last heard draining. A group stays here when its
   * nodes fall silent (its keys answer 503 rather than move to groups that would later be
   * overruled by its older copies); it leaves only when its last member goes after draining.
   */
  private readonly ringed = new Map<number, { draining: boolean }>();
  /** Each group's leader, as leaderOf answers: cleared on every change (it is asked per request). */
  private readonly leaders = new Map<number, Member | undefined>();
  /** Bumped whenever the ring's groups may have changed: callers cache the ring by it. */
  ringVersion = 0;

  constructor(private self: Member) {
    this.members.set(self.nodeId, self);
    this.ringed.set(self.group, { draining: self.draining });
  }

  get selfId(): string {
    return this.self.nodeId;
  }

  /** Replace what this node says about itself (its sequence moves with every write). */
  updateSelf(patch: Partial<Omit<Member, "nodeId">>): void {
    this.self = { ...this.self, ...patch };
    this.members.set(this.self.nodeId, this.self);
    this.leaders.clear();
    this.noteGroup(this.self);
  }

  /** A group drains when its leader says so; its followers' announcements do not change that. */
  private noteGroup(m: Member): void {
    const g = this.ringed.get(m.group);
    if (!g) {
      this.ringed.set(m.group, { draining: m.leader && m.draining });
      this.ringVersion++;
    } else if (m.leader && g.draining !== m.draining) {
      g.draining = m.draining;
      this.ringVersion++;
    }
  }

  /** A member went away: its group leaves the ring only if it was draining and nobody is left. */
  private forget(m: Member): void {
    this.members.delete(m.nodeId);
    this.leaders.clear();
    const g = this.ringed.get(m.group);
    if (g?.draining && !this.some((x) => x.group === m.group)) {
      this.ringed.delete(m.group);
      this.ringVersion++;
    }
  }

  /** Groups the ring is built from: every group on it, minus those draining (unless all are). */
  ringGroups(): number[] {
    const all = [...this.ringed.keys()];
    const live = all.filter((g) => !this.ringed.get(g)!.draining);
    return (live.length > 0 ? live : all).sort((a, b) => a - b);
  }

  /** Groups known to this node: with live members, or silent but still on the ring. */
  knownGroups(): number[] {
    return [...new Set([...this.ringed.keys(), ...this.groups()])].sort((a, b) => a - b);
  }

  isDraining(group: number): boolean {
    return this.ringed.get(group)?.draining ?? false;
  }

  getSelf(): Member {
    return this.self;
  }

  /** Take in one decoded datagram heard at `nowMs`. */
  observe(a: Announcement, nowMs: number): Observation {
    if (a.nodeId === this.self.nodeId) return "ignored";
    if (a.type === DatagramType.Leave) {
      const m = this.members.get(a.nodeId);
      if (!m) return "ignored";
      this.forget(m);
      return "left";
    }
    const known = this.members.get(a.nodeId);
    if (!known && this.members.size >= limits.peersMax) return "full";
    // Groups stay on the ring once heard, so their number is bounded too (found by an audit:
    // datagrams announcing a new group each, then leaving, put 7,045 groups on the ring).
    if (!this.ringed.has(a.group) && this.ringed.size >= limits.groupsMax) return "full";
    // A node restarted on the same address comes back under a new id: forget the old one now
    // rather than after the stale time, so routing never picks the dead incarnation.
    if (!known)
      for (const m of this.members.values())
        if (m.nodeId !== this.self.nodeId && m.host === a.host && m.clusterPort === a.clusterPort) this.members.delete(m.nodeId);
    const { type: _type, cluster: _cluster, ...fields } = a;
    const member = { ...fields, lastSeenMs: nowMs };
    this.members.set(a.nodeId, member);
    this.leaders.clear();
    this.noteGroup(member);
    return known ? "updated" : "new";
  }

  /** Forget nodes not heard from for longer than `staleMs`; returns them. */
  sweep(nowMs: number, staleMs: number): Member[] {
    const gone: Member[] = [];
    for (const m of this.members.values())
      if (m.nodeId !== this.self.nodeId && nowMs - m.lastSeenMs > staleMs) {
        this.forget(m);
        gone.push(m);
      }
    return gone;
  }

  get(nodeId: string): Member | undefined {
    return this.members.get(nodeId);
  }

  /** Whether any member satisfies `p` (no sorted copy: for the request path). */
  some(p: (m: Member) => boolean): boolean {
    for (const m of this.members.values()) if (p(m)) return true;
    return false;
  }

  /** Members of one group, unordered. */
  inGroup(group: number): Member[] {
    const out: Member[] = [];
    for (const m of this.members.values()) if (m.group === group) out.push(m);
    return out;
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
    if (this.leaders.has(group)) return this.leaders.get(group);
    const best = this.leadersOf(group)[0];
    this.leaders.set(group, best);
    return best;
  }
}
