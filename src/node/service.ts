/**
 * The service behind the API: where each request for a key goes (src/routing), forwarding it,
 * reads that fall back to a key's previous owner while keys move, cluster-wide key listings,
 * draining and importing moved keys. The node builds it from its parts (src/node/node.ts).
 */
import type { KeysPage, KeysQuery, KvService, Reply } from "../api/service.ts";
import type { Member, Membership } from "../discovery/membership.ts";
import { UnavailableError } from "../lib/errors.ts";
import { limits, requestBodyBytesMax } from "../lib/limits.ts";
import { pageOfKeys } from "../store/page.ts";
import type { Logger } from "../lib/log.ts";
import type { Follower } from "../replication/follower.ts";
import { type Leader, ReplicationTimeout } from "../replication/leader.ts";
import { HashRing } from "../ring/ring.ts";
import { forward } from "../routing/forward.ts";
import type { RequestLinks } from "../routing/link.ts";
import { RequestOp } from "../protocol/frame.ts";
import { HOPS_MAX, type RequestContext, RingCache, type RoutingView, routeRead, routeWrite } from "../routing/router.ts";
import type { Store } from "../store/store.ts";
import type { NodeConfig } from "./config.ts";
import { type Durability, storageError } from "./durability.ts";
import { Mover } from "./mover.ts";

export interface ServiceDeps {
  /** Forwarded gets, sets and deletes go out on these (binary frames on the cluster port). */
  links: RequestLinks;
  config: NodeConfig;
  nodeId: string;
  store: Store;
  leader: Leader | null;
  follower: Follower | null;
  membership: Membership;
  durability: Durability | null;
  /** Followers' read-your-writes waiters, woken by the node as entries apply. */
  applyWaiters: Set<{ seq: number; resolve: () => void }>;
  /** Broadcast this node's announcement now. */
  announce: () => void;
  /** The /cluster and /health views (src/node/views.ts). */
  cluster: KvService["cluster"];
  health: KvService["health"];
  now: () => number;
  log: Logger;
}

export interface NodeService {
  service: KvService;
  mover: Mover | null;
  currentRing: () => HashRing;
  /** Let requests through: the node has heard its peers (start-up settle). */
  settle: () => void;
  /** Drop the tombstones no longer needed (run every second). */
  purgeTombstones: () => void;
  /** The leader's log failed writes from this sequence on (they will be handed out again). */
  logFailed: (fromSeq: number) => void;
}

/** How long a follower waits for its own leader's page of a cluster listing before it lists its own copy. */
const OWN_LEADER_LISTING_TIMEOUT_MS = 2_000;
/** How long a ring group without a leader holds back tombstone purging, at least (see purgeTombstones). */
const LEADERLESS_HOLD_MS = 120_000;
/** The longest a leader holds its tombstones back while keys may still move in (see purgeTombstones). */
const TOMBSTONE_HOLD_MAX_MS = 15 * 60_000;

/** Rings remembered for ownedSince; an entry older than all of them does not count. */
const RING_EPOCHS_KEPT = 256;

export function createService(d: ServiceDeps): NodeService {
  const { links, config, nodeId, store, leader, follower, membership, durability, applyWaiters, now, log } = d;
  // --- routing: any node serves any key (src/routing)
  // Bun's native murmur3 (same values as src/ring/hash.ts for well-formed strings; keys are checked).
  const nativeHash = (s: string) => Bun.hash.murmur32v3(s);
  const rings = new RingCache(nativeHash);
  /**
   * The rings this leader has served under, each with the last sequence applied before it (a
   * write still pending then was for a key owned under both). What the store holds for a key
   * counts against a copy moved in only if it was written while this group owned the key and the
   * group has owned it ever since (see ownedSince). A leader with a data dir saves them
   * (rings.json) at each change, before anything is written under the new ring, and starts from
   * them (`restored`): without them, a restart in the middle of a move let the old owner's copies
   * overwrite every write and delete made on this group before the restart.
   */
  const ringEpochs: { seq: number; ring: HashRing; known: readonly number[]; restored: boolean }[] = (leader && durability ? durability.loadRings() : []).map((e) => ({
    seq: e.seq,
    ring: new HashRing(e.groups, undefined, nativeHash),
    known: e.known ?? e.groups,
    restored: true,
  }));
  // A follower keeps no rings: the ones it saved when it last led say nothing of the rings since.
  if (!leader) durability?.forgetRings();
  /** Save the ring epochs (a leader with a data dir), atomically, before writing under a new one. */
  const saveRings = () => durability?.saveRings(ringEpochs.map((e) => ({ seq: e.seq, groups: [...e.ring.groups], known: [...e.known] })));
  /**
   * Groups known when the last ring this leader served before it started began, draining ones
   * included (found by review: a group still draining, not on that ring, counted as new), if it
   * saved its rings.
   */
  const lastRingBefore = ringEpochs.length > 0 ? new Set(ringEpochs.at(-1)!.known) : null;
  /**
   * Whether the ring may have changed while this node was down: a group has been known since it
   * started that was not on the last ring it served before. (A group that joined meanwhile may
   * have taken writes for this group's keys. While this node is down, one that drains again
   * cannot hand them back, so it is still around; but it may be down itself at this node's
   * start, and a group that first appears later cannot be told from one that joins later: so
   * any group new to the last ring, whenever it appears, counts. Found by review: judging once,
   * at the start-up settle, lost every write such a group had made.) Once true, stays true.
   */
  let changedWhileDown = lastRingBefore === null;
  const checkGroups = (groups: Iterable<number>) => {
    if (changedWhileDown) return;
    for (const g of groups) if (!lastRingBefore!.has(g)) changedWhileDown = true;
  };
  /** The start-up settle is over: requests and moves are served (nothing is written before). */
  let isSettled = false;
  let lastRing: HashRing | null = null;
  const currentRing = () => {
    const r = rings.get(membership.ringVersion, () => membership.ringGroups(), now);
    // Recorded from the settle on: before it nothing is written, and the partial rings of a
    // node still hearing its peers would make the next start see groups as new.
    if (r !== lastRing && !changedWhileDown) checkGroups(r.groups);
    if (r !== lastRing && isSettled) {
      lastRing = r;
      if (leader) {
        // From the last write handed out: one still on its way to the log was made under the ring before (review).
        ringEpochs.push({ seq: leader.proposed, ring: r, known: membership.knownGroups(), restored: false });
        if (ringEpochs.length > RING_EPOCHS_KEPT) ringEpochs.shift();
        saveRings();
      }
    }
    return r;
  };
  /**
   * Whether this group owned `key` when its entry at `version` was written and has owned it on
   * every ring since. A tombstone left when the key moved out (or any entry from before the key
   * went to another group and came back) does not: the copy coming back is newer. Entries older
   * than the rings kept do not count either, nor entries from before this start when the rings
   * were not saved or may have changed while the node was down.
   */
  const ownedSince = (key: string, version: number): boolean => ownership(key, version) === "owned";
  /**
   * ownedSince, told apart: "not-owned" when the rings show a ring since `version` on which this
   * group did not own the key; "unknown" when they cannot say (older than the rings kept, or the
   * ring may have changed while this node was down).
   */
  const ownership = (key: string, version: number): "owned" | "not-owned" | "unknown" => {
    let i = epochAt(version);
    if (i < 0) return "unknown";
    for (let j = i; j < ringEpochs.length; j++) if (ringEpochs[j]!.ring.ownerOf(key) !== config.group) return "not-owned";
    if (ringEpochs[i]!.restored) {
      checkGroups(membership.knownGroups());
      if (changedWhileDown) return "unknown";
    }
    return "owned";
  };
  /** Index of the ring epoch in force when the write at `version` was made; -1 if none is kept. */
  const epochAt = (version: number): number => {
    let i = ringEpochs.length - 1;
    while (i >= 0 && ringEpochs[i]!.seq >= version) i--;
    return i;
  };
  /**
   * Whether this group's tombstone at `version` is a delete made while it owned the key (on the
   * ring in force then): only such a delete goes to the key's owner when keys move. The delete
   * left by moving a key out, or one of a ring not kept (a follower just promoted keeps none),
   * stays here (found by review: replayed from the log at a restart, move-out deletes were sent
   * and deleted the owner's live values whenever its rings could not vouch for them).
   */
  const ownTombstone = (key: string, version: number): boolean => {
    const i = epochAt(version);
    if (i < 0 || ringEpochs[i]!.ring.ownerOf(key) !== config.group) return false;
    // Only a delete of this group's latest time owning the key: once it lost the key and owned it
    // again, an older delete may predate writes made on the owner in between (found by review: a
    // drain cancelled and sent again deleted the writes made on the owner during the first one).
    let lost = false;
    for (let j = i + 1; j < ringEpochs.length; j++) {
      const owns = ringEpochs[j]!.ring.ownerOf(key) === config.group;
      if (!owns) lost = true;
      else if (lost) return false;
    }
    return true;
  };
  const routing: RoutingView = {
    selfId: nodeId,
    selfGroup: config.group,
    leaderOf: (g) => membership.leaderOf(g),
    membersOf: (g) => membership.inGroup(g),
  };
  /** Keys may still be on their previous owner: some leader says it is moving, or the ring just changed. */
  const settleMs = 2 * config.heartbeatMs + 1000;
  const startedMs = now();
  // A node that just joined has no ring before its first one, but keys are on their way to it all the same.
  const rebalancing = () => now() - (rings.before !== null ? rings.changedAtMs : startedMs) < settleMs || membership.some((m) => m.moving);
  /**
   * Whether keys may still be on another group's leader, on their way here: keys are moving or
   * the ring just changed (rebalancing), a group has no leader (it may come back and go on moving:
   * found by review), or a group's leader changed within two settle periods (one back from a
   * restart moves again only after its own start-up settle: found by an audit, deletes made then
   * left no tombstone and the keys came back). A group without a leader counts for a restart's
   * time only (LEADERLESS_HOLD_MS, or 4 stale times): a group gone for good stays on the ring.
   */
  const groupLeaders = new Map<number, { who: string; since: number }>();
  const leaderlessWarned = new Set<number>();
  const leaderlessHoldMs = Math.max(LEADERLESS_HOLD_MS, 4 * config.staleMs);
  // Asked on every read that misses: the answer is kept for 10 ms (it walks the groups), unless
  // the ring changed meanwhile (a delete routed here by a ring just changed must see it).
  let elsewhereAtMs = -Infinity;
  let elsewhereRing = -1;
  let elsewhere = true;
  const keysMayBeElsewhere = (): boolean => {
    const t = now();
    if (t - elsewhereAtMs < 10 && elsewhereRing === membership.ringVersion) return elsewhere;
    currentRing(); // the ring in use, so that a change just heard counts (rings.changedAtMs)
    elsewhereAtMs = t;
    elsewhereRing = membership.ringVersion;
    return (elsewhere = lookElsewhere(t));
  };
  const lookElsewhere = (t: number): boolean => {
    let maybe = rebalancing();
    // Known groups, draining ones included (a draining group whose leader restarts stops moving).
    for (const g of membership.knownGroups()) {
      if (g === config.group) continue;
      const l = membership.leaderOf(g);
      const who = l ? `${l.nodeId}/${l.term}` : "";
      let seen = groupLeaders.get(g);
      if (seen === undefined || seen.who !== who) {
        groupLeaders.set(g, (seen = { who, since: t }));
        leaderlessWarned.delete(g);
      }
      if (who !== "") {
        if (t - seen.since < 2 * settleMs) maybe = true;
      } else if (t - seen.since < leaderlessHoldMs) maybe = true;
      else if (!leaderlessWarned.has(g) && leaderlessWarned.add(g))
        log.warn("a group on the ring has had no leader for a while: tombstones are purged again (if it comes back holding keys that moved, a delete made here meanwhile can be undone)", { group: g, ms: Math.round(t - seen.since) });
    }
    return maybe;
  };
  /**
   * Drop the tombstones no replica can need. A follower keeps -history-entries of them. A leader
   * keeps those its history may still replay, and, while keys may be elsewhere and for two settle
   * periods after, every one: one may be all that keeps a copy still held by another group from
   * undoing a delete made here (found by an audit: a move larger than the history outlived the
   * tombstones of its first deletes). But not for more than TOMBSTONE_HOLD_MAX_MS: a move stuck
   * for good (its owner gone) would keep them forever (found by review).
   */
  let unquietAtMs = startedMs;
  /** The leader's head each call over the last TOMBSTONE_HOLD_MAX_MS (the first is at least that old, once there is one). */
  const heads: { at: number; seq: number }[] = [];
  let heldTooLongWarned = false;
  const purgeTombstones = () => {
    if (!leader) {
      // A follower keeps no hold, but it looks each second, so that a group's leader change
      // starts its window when it is heard, not at this node's first miss after it (review).
      keysMayBeElsewhere();
      return void follower!.purgeTombstones(config.historyEntries);
    }
    const t = now();
    heads.push({ at: t, seq: leader.head });
    while (heads.length > 1 && t - heads[1]!.at >= TOMBSTONE_HOLD_MAX_MS) heads.shift();
    if (keysMayBeElsewhere()) unquietAtMs = t;
    if (t - unquietAtMs >= 2 * settleMs + 1000) {
      leader.purgeTombstones();
      heldTooLongWarned = false; // warned again the next time
    } else if (t - heads[0]!.at >= TOMBSTONE_HOLD_MAX_MS && leader.purgeTombstones(heads[0]!.seq) > 0 && !heldTooLongWarned) {
      heldTooLongWarned = true;
      log.warn("keys have been moving (or a group has had no leader) for a long time: tombstones older than the hold are purged again; a copy still to move in can undo a delete that old", { hold_ms: TOMBSTONE_HOLD_MAX_MS });
    }
  };
  /** Where a key this group owns was before this group joined: its owner on the ring without us. */
  let withoutUsKey = "";
  let withoutUs = new HashRing([], undefined, nativeHash);
  const ownerWithoutUs = (key: string) => {
    const gs = currentRing().groups.filter((g) => g !== config.group);
    if (gs.join(",") !== withoutUsKey) {
      withoutUsKey = gs.join(",");
      withoutUs = new HashRing(gs, undefined, nativeHash);
    }
    return withoutUs.ownerOf(key);
  };
  const mover = leader
    ? new Mover({
        group: config.group,
        store,
        leader,
        ring: currentRing,
        leaderOf: (g) => membership.leaderOf(g),
        durable: (seq) => durableOrThrow(seq),
        ownTombstone,
        bodyBytesMax: requestBodyBytesMax(config.keyBytesMax, config.valueBytesMax),
        announce: () => {
          membership.updateSelf({ moving: mover!.moving, draining: mover!.draining });
          d.announce();
        },
        log,
      })
    : null;

  /** Requests wait for the start-up settle (below), so the first one already routes with every group. */
  let settle!: () => void;
  const settled = new Promise<void>((r) => (settle = () => {
    checkGroups(membership.knownGroups());
    isSettled = true;
    r();
  }));
  const notFound = (key: string): Reply => ({ status: 404, body: { error: "Key not found", key } });
  const enc = encodeURIComponent;

  /** A miss while keys move: ask our leader (it may have the key before we do), then the previous owner. */
  const fallbackRead = async (key: string, ctx: RequestContext): Promise<Reply> => {
    const tries: [Member, number][] = [];
    const own = membership.leaderOf(config.group);
    if (!leader && own) tries.push([own, config.group]);
    for (const prev of new Set([rings.before?.ownerOf(key), ownerWithoutUs(key)])) {
      if (prev === undefined || prev === config.group) continue;
      const m = membership.leaderOf(prev) ?? routing.membersOf(prev)[0];
      if (m) tries.push([m, prev]);
    }
    // The key may move in while we ask the previous owner (it imports to us before it deletes):
    // look here (or at our leader) once more last.
    if (!leader && own) tries.push([own, config.group]);
    for (const [m, g] of tries) {
      try {
        const r = await links.forward(m, RequestOp.Get, key, "", { hops: ctx.hops, group: g, noFallback: true });
        if (r.status === 200) return r;
      } catch {}
    }
    const e = store.get(key);
    if (e) return { status: 200, body: { key, value: e.value, version: e.version } };
    return notFound(key);
  };

  /** A request sent to us as the owner that our ring gives to another group: pass it on once, never back. */
  const misdirected = (key: string, ctx: RequestContext): { to: Member; group: number } | undefined => {
    if (ctx.targetGroup === undefined) return undefined;
    const owner = currentRing().ownerOf(key);
    if (owner === undefined || owner === config.group) return undefined;
    const to = membership.leaderOf(owner);
    if (!to || ctx.hops + 1 >= HOPS_MAX) throw new UnavailableError(`Nodes disagree about the owner of "${key.slice(0, 64)}" (group ${config.group} or ${owner}): retry shortly`, owner);
    return { to, group: owner };
  };

  const localKeys = (q: KeysQuery): KeysPage => {
    const { keys, cursor } = pageOfKeys(store.keys(), q.prefix, q.cursor, q.limit);
    return { keys, count: keys.length, cursor };
  };

  const clusterKeys = async (q: KeysQuery, ctx: RequestContext): Promise<KeysPage> => {
    const limit = q.limit ?? 1000;
    const qs = `scope=node&prefix=${enc(q.prefix)}&limit=${limit}${q.cursor !== undefined ? `&cursor=${enc(q.cursor)}` : ""}`;
    const pages = await Promise.all(
      membership.knownGroups().map(async (g): Promise<KeysPage> => {
        // A follower asks its leader for its own group's page: its copy may lag keys moving in,
        // which their sender deletes once the leader has them (found by an audit: 129-645 keys
        // missing from listings through a follower while a cancelled drain moved keys back).
        if (g === config.group) {
          const l = leader ? undefined : membership.leaderOf(g);
          if (!l) return localKeys({ ...q, limit });
          // A follower whose leader cannot answer lists its own copy, unless keys may be moving
          // in, which only the leader has (found by review: every listing through the followers
          // of a hung or dead leader was a 503 until it went stale).
          const r = await forward(l, "GET", `/keys?${qs}`, undefined, { hops: ctx.hops, group: g, timeoutMs: OWN_LEADER_LISTING_TIMEOUT_MS }).catch(() => null);
          if (r?.status === 200) return r.body as unknown as KeysPage;
          if (!keysMayBeElsewhere()) return localKeys({ ...q, limit });
          throw new UnavailableError(`Cannot list keys of group ${g}: its leader does not answer (${r ? r.status : "unreachable"}) while keys may be moving into it`, g);
        }
        const m = membership.leaderOf(g) ?? routing.membersOf(g)[0];
        if (!m) throw new UnavailableError(`Cannot list keys: no member of group ${g} is known`, g);
        const r = await forward(m, "GET", `/keys?${qs}`, undefined, { hops: ctx.hops, group: g });
        if (r.status !== 200) throw new UnavailableError(`Cannot list keys of group ${g}: ${r.status} ${String(r.body.error ?? "")}`, g);
        return r.body as unknown as KeysPage;
      }),
    );
    const merged = [...new Set(pages.flatMap((p) => p.keys))].sort();
    const keys = merged.slice(0, limit);
    const more = merged.length > limit || pages.some((p) => p.cursor !== null);
    return { keys, count: keys.length, cursor: more && keys.length > 0 ? keys[keys.length - 1]! : null };
  };

  /**
   * Read-your-writes through a follower: wait (briefly) until our copy has the forwarded write.
   * If it has not by then (the follower is relinking, after its leader restarted, say), the write
   * is answered all the same, and this follower's reads go to the leader until it has applied it
   * (found by an audit: a read right after such a write found the older value).
   */
  const awaitApplied = (seq: number) =>
    new Promise<void>((resolve) => {
      if (!follower || follower.applied >= seq) return resolve();
      const w = { seq, resolve };
      applyWaiters.add(w);
      setTimeout(() => {
        if (!applyWaiters.delete(w)) return;
        // The write's sequence is of the history its leader announces (ours may be another while
        // a full transfer is staged: found by review).
        const historyId = membership.leaderOf(config.group)?.historyId ?? follower.historyId;
        if (seq > behind.seq || historyId !== behind.historyId) {
          if (behind.seq === 0) log.info("writes acknowledged through this follower are not applied here yet: its reads go to the leader until they are", { seq, applied: follower.applied });
          behind = { seq, historyId };
        }
        resolve();
      }, limits.forwardApplyWaitMs);
    });
  /** The highest such write, and the history it belongs to. */
  let behind = { seq: 0, historyId: "" };
  /**
   * Whether this follower must send a read to its leader: it has not applied a write acknowledged
   * through it. Over once it has, in that history, or once the leader is on another history (it
   * restarted without that write's history: a full transfer of the new one is all there is).
   */
  const lagsOwnWrites = (): boolean => {
    if (behind.seq === 0) return false;
    const leaderHistory = membership.leaderOf(config.group)?.historyId;
    const caughtUp = follower!.historyId === behind.historyId && follower!.applied >= behind.seq;
    if (caughtUp || (leaderHistory !== undefined && leaderHistory !== behind.historyId && follower!.historyId === leaderHistory)) {
      log.info("caught up with the writes acknowledged through this follower: reads are served here again", { seq: behind.seq, applied: follower!.applied });
      behind = { seq: 0, historyId: "" };
      return false;
    }
    return true;
  };

  /** Answer a write only once it is durable (at once in memory); map disk errors to 507/503. */
  const durableOrThrow = async (seq: number) => {
    if (!durability) return;
    try {
      await leader!.whenApplied(seq);
    } catch (e) {
      throw storageError(e as NodeJS.ErrnoException);
    }
  };

  // -sync-replicas: a write is answered once that many followers acknowledged it as well.
  const syncN = config.syncReplicas;
  /** Refuse a write before it is made when too few followers are linked to take it. */
  const replicasUp = (what: string) => {
    if (syncN === 0) return;
    const k = leader!.connectedFollowers();
    if (k < syncN)
      throw new UnavailableError(`Cannot ${what}: -sync-replicas ${syncN} needs ${syncN} follower${syncN === 1 ? "" : "s"} linked to this leader, ${k} ${k === 1 ? "is" : "are"}`, config.group);
  };
  /** Answer a write once it is durable here and, with -sync-replicas, acknowledged by that many followers. */
  const committed = async (seq: number) => {
    await durableOrThrow(seq);
    if (syncN === 0) return;
    try {
      await leader!.whenReplicated(seq, syncN, config.syncTimeoutMs);
    } catch (e) {
      if (!(e instanceof ReplicationTimeout)) throw e;
      throw new UnavailableError(
        `Write ${seq} is kept on the leader, but only ${e.confirmed} of ${e.wanted} followers confirmed it within ${e.timeoutMs} ms (-sync-replicas): it is not undone, and reaches them once they catch up`,
        config.group,
      );
    }
  };

  /** A forwarded write of our own group: wait until our copy has it, so a read here sees it. */
  const ownGroupWrite = async (r: Reply, group: number) => {
    if (group === config.group && r.status === 200 && typeof r.body.version === "number") await awaitApplied(r.body.version);
    return r;
  };

  const service: KvService = {
    nodeId,
    group: config.group,
    keyBytesMax: config.keyBytesMax,
    valueBytesMax: config.valueBytesMax,
    get(key, ctx): Reply | Promise<Reply> {
      if (!isSettled) return settled.then(() => service.get(key, ctx));
      const route = routeRead(key, currentRing(), routing, ctx);
      if (route.kind === "unavailable") throw new UnavailableError(`Cannot read "${key.slice(0, 64)}": ${route.why}`, route.group);
      if (route.kind === "forward")
        return links.forward(route.to, RequestOp.Get, key, "", { hops: ctx.hops, group: route.group, anyReplica: ctx.anyReplica });
      // Named for our group by a node whose ring is behind ours: pass it on to the owner once.
      const other = ctx.noFallback ? undefined : misdirected(key, ctx);
      if (other) return links.forward(other.to, RequestOp.Get, key, "", { hops: ctx.hops, group: other.group, anyReplica: ctx.anyReplica });
      if (follower && lagsOwnWrites()) {
        const l = membership.leaderOf(config.group);
        if (!l || ctx.hops >= HOPS_MAX)
          throw new UnavailableError(`Cannot read "${key.slice(0, 64)}": this follower has not yet applied writes acknowledged through it, and its group's leader cannot be asked`, config.group);
        return links.forward(l, RequestOp.Get, key, "", { hops: ctx.hops, group: config.group, noFallback: ctx.noFallback });
      }
      const e = store.get(key);
      if (e) return { status: 200, body: { key, value: e.value, version: e.version } };
      // A tombstone here means the key was deleted here: a copy still on its previous owner is older.
      if (!ctx.noFallback && store.versionOf(key) === 0 && keysMayBeElsewhere()) return fallbackRead(key, ctx);
      return notFound(key);
    },
    // Not async: an in-memory leader answers a local write at once, without a promise per layer.
    set(key, value, ctx): Reply | Promise<Reply> {
      if (!isSettled) return settled.then(() => service.set(key, value, ctx));
      const route = routeWrite(key, currentRing(), routing, ctx);
      if (route.kind === "unavailable") throw new UnavailableError(`Cannot write "${key.slice(0, 64)}": ${route.why}`, route.group);
      if (route.kind === "forward") return links.forward(route.to, RequestOp.Set, key, value, { hops: ctx.hops, group: route.group }).then((r) => ownGroupWrite(r, route.group));
      const other = misdirected(key, ctx);
      if (other) return links.forward(other.to, RequestOp.Set, key, value, { hops: ctx.hops, group: other.group });
      replicasUp(`write "${key.slice(0, 64)}"`);
      const seq = leader!.set(key, value);
      const ok: Reply = { status: 200, body: { status: "ok", key, version: seq } };
      return durability || syncN > 0 ? committed(seq).then(() => ok) : ok;
    },
    async delete(key, ctx) {
      if (!isSettled) await settled;
      const route = routeWrite(key, currentRing(), routing, ctx);
      if (route.kind === "unavailable") throw new UnavailableError(`Cannot delete "${key.slice(0, 64)}": ${route.why}`, route.group);
      if (route.kind === "forward") return ownGroupWrite(await links.forward(route.to, RequestOp.Delete, key, "", { hops: ctx.hops, group: route.group }), route.group);
      const other = misdirected(key, ctx);
      if (other) return links.forward(other.to, RequestOp.Delete, key, "", { hops: ctx.hops, group: other.group });
      replicasUp(`delete "${key.slice(0, 64)}"`);
      let { existed, seq, pending } = leader!.delete(key);
      // A delete of it is on its way to the log: answered with that delete, once it is durable.
      let wrote = existed || pending;
      if (!wrote && !ctx.noFallback && keysMayBeElsewhere()) {
        // The key may not have moved here yet: a tombstone keeps the move from bringing it back.
        const ring = currentRing();
        existed = (await fallbackRead(key, ctx)).status === 200;
        // If the ring changed during the read and the key is no longer this group's, the delete
        // goes to its owner now: a tombstone made here would be of a ring on which this group
        // does not own the key, and would never be moved on (found by review).
        if (currentRing() !== ring && currentRing().ownerOf(key) !== config.group) {
          const r = await service.delete(key, ctx);
          if (existed && r.status === 200) r.body.deleted = true; // the new owner may not see the copy this read found
          return r;
        }
        seq = leader!.tombstone(key);
        wrote = true;
      }
      if (wrote) await committed(seq);
      else {
        // Nothing to write: the key's last change (an earlier delete, say) must be as committed as
        // this delete would have been (found by an audit: the retry of a delete that had timed out
        // under -sync-replicas was answered 200 at once, with no follower holding it).
        const last = leader!.lastChangeOf(key);
        if (last > 0) await committed(last);
      }
      return { status: 200, body: { status: "ok", key, deleted: existed, version: seq } };
    },
    // After the start-up settle, as reads are: before it, a node knows only some groups, and its
    // listing was silently partial (found by an audit).
    keys: async (q, ctx) => {
      if (!isSettled) await settled;
      return q.scope === "cluster" && ctx.targetGroup === undefined ? clusterKeys(q, ctx) : localKeys(q);
    },
    async drain(ctx) {
      if (!leader) {
        const to = membership.leaderOf(config.group);
        if (!to) throw new UnavailableError(`Cannot drain group ${config.group}: no leader known`, config.group);
        return forward(to, "POST", "/admin/drain", undefined, { hops: ctx.hops, group: config.group });
      }
      const others = membership.ringGroups().filter((g) => g !== config.group && !membership.isDraining(g));
      if (others.length === 0) throw new UnavailableError(`Cannot drain group ${config.group}: no other group to take its keys`, config.group);
      if (!mover!.draining) {
        mover!.draining = true;
        log.info("draining: moving every key of this group to the other groups", { group: config.group, keys: store.size });
        membership.updateSelf({ draining: true });
        d.announce();
      }
      return { status: 200, body: { status: "ok", group: config.group, draining: true, keys: store.size } };
    },
    async importEntries(entries, ctx) {
      // After the start-up settle, so that every group around is known (see unchangedWhileDown).
      if (!isSettled) await settled;
      if (!leader) {
        const to = membership.leaderOf(config.group);
        if (!to) throw new UnavailableError(`Cannot import into group ${config.group}: no leader known`, config.group);
        return forward(to, "POST", "/internal/import", JSON.stringify({ entries }), { hops: ctx.hops, group: config.group });
      }
      replicasUp(`import keys into group ${config.group}`);
      const ring = currentRing();
      let imported = 0;
      let skipped = 0;
      // The answer waits for what it reports: the imports, and the changes that made keys skip
      // (the sender deletes its copy of a skipped key, so a skipping change still on its way to
      // the log, which could yet fail, must not be taken as held: found by review).
      let last = 0;
      const refused: string[] = [];
      for (const { key, value, deleted } of entries) {
        if (ring.ownerOf(key) !== config.group) {
          refused.push(key);
          continue;
        }
        // A copy moved in overwrites what the rings cannot vouch for; a delete moved in removes only
        // what they show is older than a ring on which this group did not own the key (review).
        // Where nothing of the key is held, it is recorded: a copy still on its way from a third
        // group must not bring the key back (review: skipping it did, after two drains).
        const seq =
          deleted === true
            ? leader.setIfUnknown(key, null, (v) => ownership(key, v) !== "not-owned")
            : leader.setIfUnknown(key, value!, (v) => ownedSince(key, v));
        if (seq === undefined) {
          skipped++;
          last = Math.max(last, leader.lastChangeOf(key));
        } else {
          imported++;
          last = Math.max(last, seq);
        }
      }
      if (last > 0) await committed(last);
      return { status: 200, body: { status: "ok", imported, skipped, refused } };
    },
    cluster: () => d.cluster(),
    health: () => d.health(),
  };

  /**
   * The log failed writes from `fromSeq` on: their sequences will be handed out again, to writes
   * made under the ring in force now, so a ring that began among them begins before them instead
   * (found by review: such a write counted as the ring before's, and an older copy moved in over it).
   */
  const logFailed = (fromSeq: number) => {
    let changed = false;
    for (const e of ringEpochs)
      if (e.seq >= fromSeq) {
        e.seq = fromSeq - 1;
        changed = true;
      }
    if (changed) saveRings();
  };

  return { service, mover, currentRing, settle, purgeTombstones, logFailed };
}
