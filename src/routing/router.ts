/**
 * Where a request for a key goes. Pure: it reads the ring and the membership it is given.
 *
 * The owner of a key is its group on the ring of the membership's groups minus draining ones
 * (Membership.ringGroups). A write or delete is
 * served by the owner group's leader; a read by this node when it is in the owner group, else by
 * the owner's leader (or any member of the owner when the request accepts a replica's copy).
 *
 * No loops: a forwarded request names the group it was sent to (`targetGroup`), and a node never
 * sends a request naming a group on to another group, whatever its own ring says. Within the group
 * it can go at most once more (follower to leader). So a request crosses at most two hops even
 * when two nodes briefly disagree about the ring; the hop count is checked as well.
 */
import type { Member } from "../discovery/membership.ts";
import { HashRing } from "../ring/ring.ts";

export interface RoutingView {
  selfId: string;
  selfGroup: number;
  leaderOf(group: number): Member | undefined;
  membersOf(group: number): Member[];
}

export interface RequestContext {
  hops: number;
  /** The group a forwarding node sent this to; absent on a client's request. */
  targetGroup?: number;
  /** A read that accepts a follower's (possibly slightly stale) copy. */
  anyReplica?: boolean;
  /** A read the owner must not pass on to a previous owner (it already is that fallback). */
  noFallback?: boolean;
}

export type Route =
  | { kind: "local"; group: number }
  | { kind: "forward"; group: number; to: Member }
  | { kind: "unavailable"; group: number; why: string };

export const HOPS_MAX = 3;

export function ownerGroup(key: string, ring: HashRing, ctx: RequestContext, selfGroup: number): number {
  return ctx.targetGroup ?? ring.ownerOf(key) ?? selfGroup;
}

export function routeWrite(key: string, ring: HashRing, v: RoutingView, ctx: RequestContext): Route {
  const group = ownerGroup(key, ring, ctx, v.selfGroup);
  if (ctx.hops >= HOPS_MAX) return { kind: "unavailable", group, why: `request already forwarded ${ctx.hops} times` };
  const leader = v.leaderOf(group);
  if (!leader) return { kind: "unavailable", group, why: `no leader known for group ${group}` };
  if (leader.nodeId === v.selfId) return { kind: "local", group };
  return { kind: "forward", group, to: leader };
}

export function routeRead(key: string, ring: HashRing, v: RoutingView, ctx: RequestContext): Route {
  const group = ownerGroup(key, ring, ctx, v.selfGroup);
  if (group === v.selfGroup) return { kind: "local", group };
  if (ctx.hops >= HOPS_MAX) return { kind: "unavailable", group, why: `request already forwarded ${ctx.hops} times` };
  const leader = v.leaderOf(group);
  if (leader && !ctx.anyReplica) return { kind: "forward", group, to: leader };
  const members = v.membersOf(group);
  if (members.length === 0) return { kind: "unavailable", group, why: `no member of group ${group} is known` };
  // Any member will do: spread reads by key so one follower's cache stays warm for its keys.
  const pick = members[Math.abs(hashCode(key)) % members.length]!;
  return { kind: "forward", group, to: leader && !ctx.anyReplica ? leader : pick };
}

function hashCode(s: string): number {
  let h = 0;
  for (let i = 0; i < s.length; i++) h = (Math.imul(h, 31) + s.charCodeAt(i)) | 0;
  return h;
}

/** A ring cached per set of groups: rebuilt only when the groups change. */
export class RingCache {
  private version = -1;
  private key = "";
  private ring: HashRing;
  private previous: HashRing | null = null;
  changedAtMs = 0;

  constructor(private readonly hash?: (s: string) => number) {
    this.ring = new HashRing([], undefined, hash);
  }

  /** The ring of `groups()`, recomputed only when `version` moved and the groups really changed. */
  get(version: number, groups: () => readonly number[], now: () => number): HashRing {
    if (version === this.version) return this.ring;
    this.version = version;
    const gs = groups();
    const key = gs.join(",");
    if (key !== this.key) {
      if (this.key !== "") {
        this.previous = this.ring;
        this.changedAtMs = now();
      }
      this.key = key;
      this.ring = new HashRing(gs, undefined, this.hash);
    }
    return this.ring;
  }

  /** The ring before the last change (for reads of keys still being moved). */
  get before(): HashRing | null {
    return this.previous;
  }
}
