/**
 * The composition root: the real clock and sockets around the pure parts. Start order: store,
 * replication listener, HTTP API, discovery (so what we announce is already listening). Stop order:
 * announce leaving, then close sockets.
 */
import type { Static } from "elysia";
import { createApi } from "../api/app.ts";
import type { ClusterReply, HealthReply } from "../api/schemas.ts";
import type { KeysPage, KeysQuery, KvService, Reply } from "../api/service.ts";
import { forward } from "../routing/forward.ts";
import { HOPS_MAX, type RequestContext, RingCache, type RoutingView, routeRead, routeWrite } from "../routing/router.ts";
import { Mover } from "./mover.ts";
import { Discovery } from "../discovery/udp.ts";
import { type Member, Membership } from "../discovery/membership.ts";
import { UnavailableError } from "../lib/errors.ts";
import { limits, frameBytesMax } from "../lib/limits.ts";
import type { Logger } from "../lib/log.ts";
import { HashRing } from "../ring/ring.ts";
import { Follower } from "../replication/follower.ts";
import { Leader, type FollowerLink } from "../replication/leader.ts";
import { type ClientLink, type ServerConn, connectReplication, listenReplication } from "../replication/tcp.ts";
import { Store } from "../store/store.ts";
import { FrameType, encodeFrame } from "../protocol/frame.ts";
import type { Outbox } from "../replication/outbox.ts";
import { Durability, storageError } from "./durability.ts";
import type { NodeConfig } from "./config.ts";

const PING_INTERVAL_MS = 1000;
const MOVER_TICK_MS = 50;
const START_SETTLE_MS = 150;

export interface RunningNode {
  readonly nodeId: string;
  readonly apiPort: number;
  readonly clusterPort: number;
  stop(): Promise<void>;
}

function randomId(bytes: number): string {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b);
  return Buffer.from(b).toString("hex");
}

export async function startNode(config: NodeConfig, log: Logger): Promise<RunningNode> {
  const now = () => performance.now();
  const store = new Store();
  const frameMax = frameBytesMax(config.keyBytesMax, config.valueBytesMax);

  // --- data dir: recover before anything listens, so what we announce is what we hold.
  let nodeId = randomId(8);
  let historyId = randomId(8);
  let term = config.leader ? 1 : 0;
  let durability: Durability | null = null;
  const replayed: [number, number, Uint8Array][] = [];
  if (config.dataDir) {
    durability = Durability.recover(
      store,
      { dir: config.dataDir, group: config.group, fsync: config.fsync, fsyncMs: config.fsyncMs, snapshotBytes: config.snapshotBytes, frameBytesMax: frameMax, newId: () => randomId(8), log },
      config.leader ? (seq, t, frame) => replayed.push([seq, t, frame]) : undefined,
    );
    nodeId = durability.identity.node_id;
    historyId = durability.identity.history_id;
    if (config.leader) {
      // Every start as leader is a new term: entries written from now on are told apart from any
      // this node wrote before and may have lost (fsync never and a power cut).
      term = Math.max(durability.identity.term, durability.recovered.term) + 1;
      durability.saveIdentity({ term });
    }
  }
  const rec = durability?.recovered;

  let pumpScheduled = false;
  const leader = config.leader
    ? new Leader({
        store,
        group: config.group,
        term,
        historyId,
        cluster: config.cluster,
        historyEntries: config.historyEntries,
        wal: durability ? { append: (seq, frame) => durability.append(seq, frame) } : undefined,
        start: rec ? { seq: rec.snapshotSeq, term: rec.snapshotTerm } : undefined,
        now,
        log,
        schedule: () => {
          if (pumpScheduled) return;
          pumpScheduled = true;
          setImmediate(() => {
            pumpScheduled = false;
            leader!.pumpAll();
          });
        },
      })
    : null;
  for (const [seq, t, frame] of replayed) leader!.restore(seq, t, frame);
  replayed.length = 0;
  const follower = leader
    ? null
    : new Follower(
        store,
        config.group,
        config.cluster,
        nodeId,
        durability
          ? {
              onEntry: (seq, f) => durability.append(seq, encodeFrame(f)),
              onHistory: (h, seq, t, kind) => durability.adoptHistory(h, seq, t, store, kind),
            }
          : {},
        rec ? { historyId, seq: rec.seq, term: rec.term } : undefined,
      );
  let linkOut: Outbox | null = null;
  if (durability) {
    await durability.open(
      (seq) => {
        if (leader) {
          leader.durable(seq);
          durability.maybeSnapshot(leader.head, leader.termAt(leader.head), store, now());
        } else {
          linkOut?.send(follower!.ack(seq));
          durability.maybeSnapshot(follower!.applied, follower!.term, store, now());
        }
      },
      (fromSeq, e) => {
        if (leader) leader.failed(fromSeq, e);
        else {
          // Our copy is ahead of our log: start over from the leader (entries re-apply harmlessly).
          follower!.rewind(0, 0);
          link?.close();
        }
      },
    );
  }

  // --- replication listener: every node listens; only a leader accepts followers.
  const replication = listenReplication(
    config.host,
    config.port,
    frameMax,
    {
      onFrames(conn: ServerConn, frames) {
        if (!leader) return `this node is not a leader (group ${config.group})`;
        let link = conn.state as FollowerLink | undefined;
        if (!link) link = conn.state = leader.attach(conn.out, conn.remote);
        for (const f of frames) {
          const err = leader.onFrame(link, f);
          if (err) return err;
        }
        return undefined;
      },
      onDrain(conn) {
        if (leader && conn.state) leader.pump(conn.state as FollowerLink);
      },
      onClose(conn) {
        if (leader && conn.state) {
          const link = conn.state as FollowerLink;
          leader.detach(link);
          if (link.nodeId) log.info("follower disconnected", { node_id: link.nodeId, acked_seq: link.acked });
        }
      },
    },
    log,
  );
  const clusterPort = replication.port;

  // --- membership and discovery
  const membership = new Membership({
    nodeId,
    host: config.host,
    clusterPort,
    apiPort: 0, // set once the API listens
    group: config.group,
    leader: config.leader,
    draining: false,
    moving: false,
    term,
    seq: 0,
    historyId,
    keys: 0,
    lastSeenMs: now(),
  });
  const position = () => (leader ? leader.head : follower!.applied);

  // --- follower link to the group's leader
  let link: ClientLink | null = null;
  let linkTarget: Member | null = null;
  let linkUp = false;
  let backoffMs: number = limits.reconnectBackoffMinMs;
  let reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  let stopping = false;
  const applyWaiters = new Set<{ seq: number; resolve: () => void }>();

  const wakeWaiters = () => {
    if (applyWaiters.size === 0) return;
    for (const w of applyWaiters)
      if (follower!.applied >= w.seq) {
        applyWaiters.delete(w);
        w.resolve();
      }
  };

  const connectToLeader = () => {
    if (!follower || stopping || link) return;
    const target = membership.leaderOf(config.group);
    if (!target || target.nodeId === nodeId) return;
    linkTarget = target;
    const address = `${target.host}:${target.clusterPort}`;
    log.debug("connecting to leader", { leader: target.nodeId, address });
    link = connectReplication(
      target.host,
      target.clusterPort,
      frameMax,
      {
        onOpen(out) {
          linkOut = out;
          out.send(follower.hello());
        },
        onFrames(frames, out) {
          const before = follower.applied;
          for (const f of frames) {
            const err = follower.onFrame(f);
            if (err) return err;
            if (f.type === FrameType.Ping) out.send(follower.ack(durability ? durability.durableSeq : follower.applied));
          }
          if (!linkUp && !follower.syncing && frames.some((f) => f.type === FrameType.Welcome || f.type === FrameType.SnapshotEnd)) {
            linkUp = true;
            backoffMs = limits.reconnectBackoffMinMs;
            log.info("in sync with leader", { leader: target.nodeId, address, seq: follower.applied });
          }
          if (follower.applied !== before || frames.some((f) => f.type === FrameType.SnapshotEnd)) {
            // A persistent follower acknowledges what is on its disk, when the log says so.
            if (!durability) out.send(follower.ack());
            wakeWaiters();
          }
          return undefined;
        },
        onClose(reason) {
          const wasUp = linkUp;
          link = null;
          linkOut = null;
          linkUp = false;
          linkTarget = null;
          if (stopping) return;
          if (wasUp) log.warn("lost link to leader", { leader: target.nodeId, address, reason });
          else log.debug("link to leader failed", { address, reason });
          scheduleReconnect();
        },
      },
      log,
    );
  };

  const scheduleReconnect = () => {
    if (reconnectTimer || stopping) return;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      connectToLeader();
    }, backoffMs);
    backoffMs = Math.min(backoffMs * 2, limits.reconnectBackoffMaxMs);
  };

  /** On membership changes: follow the right leader. */
  const reconcile = () => {
    if (!follower) return;
    const target = membership.leaderOf(config.group);
    if (link && (!target || !linkTarget || target.nodeId !== linkTarget.nodeId)) {
      log.info("group leader changed, relinking", { from: linkTarget?.nodeId, to: target?.nodeId ?? null });
      link.close();
      return;
    }
    if (!link && !reconnectTimer) connectToLeader();
  };

  // --- routing: any node serves any key (src/routing)
  // Bun's native murmur3 (same values as src/ring/hash.ts for well-formed strings; keys are checked).
  const nativeHash = (s: string) => Bun.hash.murmur32v3(s);
  const rings = new RingCache(nativeHash);
  const currentRing = () => rings.get(membership.ringVersion, () => membership.ringGroups(), now());
  const routing: RoutingView = {
    selfId: nodeId,
    selfGroup: config.group,
    leaderOf: (g) => membership.leaderOf(g),
    membersOf: (g) => membership.list().filter((m) => m.group === g),
  };
  /** Keys may still be on their previous owner: some leader says it is moving, or the ring just changed. */
  const settleMs = 2 * config.heartbeatMs + 1000;
  const startedMs = now();
  // A node that just joined has no ring before its first one, but keys are on their way to it all the same.
  const rebalancing = () => membership.list().some((m) => m.moving) || now() - (rings.before !== null ? rings.changedAtMs : startedMs) < settleMs;
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
        announce: () => {
          membership.updateSelf({ moving: mover!.moving, draining: mover!.draining });
          discovery.announce();
        },
        log,
      })
    : null;

  /** Requests wait for the start-up settle (below), so the first one already routes with every group. */
  let isSettled = false;
  let settle!: () => void;
  const settled = new Promise<void>((r) => (settle = () => ((isSettled = true), r())));
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
        const r = await forward(m, "GET", `/get?key=${enc(key)}`, undefined, { hops: ctx.hops, group: g, noFallback: true });
        if (r.status === 200) return r;
      } catch {}
    }
    const e = store.get(key);
    if (e) return { status: 200, body: { key, value: e.value!, version: e.version } };
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
    const all: string[] = [];
    for (const k of store.keys()) if (k.startsWith(q.prefix) && (q.cursor === undefined || k > q.cursor)) all.push(k);
    all.sort();
    if (q.limit === undefined || all.length <= q.limit) return { keys: all, count: all.length, cursor: null };
    const keys = all.slice(0, q.limit);
    return { keys, count: keys.length, cursor: keys[keys.length - 1]! };
  };

  const clusterKeys = async (q: KeysQuery, ctx: RequestContext): Promise<KeysPage> => {
    const limit = q.limit ?? 1000;
    const qs = `scope=node&prefix=${enc(q.prefix)}&limit=${limit}${q.cursor !== undefined ? `&cursor=${enc(q.cursor)}` : ""}`;
    const pages = await Promise.all(
      membership.knownGroups().map(async (g): Promise<KeysPage> => {
        if (g === config.group) return localKeys({ ...q, limit });
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

  /** Read-your-writes through a follower: wait (briefly) until our copy has the forwarded write. */
  const awaitApplied = (seq: number) =>
    new Promise<void>((resolve) => {
      if (!follower || follower.applied >= seq) return resolve();
      const w = { seq, resolve };
      applyWaiters.add(w);
      setTimeout(() => {
        if (applyWaiters.delete(w)) resolve();
      }, limits.forwardApplyWaitMs);
    });

  /** Answer a write only once it is durable (at once in memory); map disk errors to 507/503. */
  const durableOrThrow = async (seq: number) => {
    if (!durability) return;
    try {
      await leader!.whenApplied(seq);
    } catch (e) {
      throw storageError(e as NodeJS.ErrnoException);
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
        return forward(route.to, "GET", `/get?key=${enc(key)}${ctx.anyReplica ? "&replica=any" : ""}`, undefined, { hops: ctx.hops, group: route.group });
      // Named for our group by a node whose ring is behind ours: pass it on to the owner once.
      const other = ctx.noFallback ? undefined : misdirected(key, ctx);
      if (other) return forward(other.to, "GET", `/get?key=${enc(key)}${ctx.anyReplica ? "&replica=any" : ""}`, undefined, { hops: ctx.hops, group: other.group });
      const e = store.get(key);
      if (e) return { status: 200, body: { key, value: e.value!, version: e.version } };
      // A tombstone here means the key was deleted here: a copy still on its previous owner is older.
      if (!ctx.noFallback && rebalancing() && store.versionOf(key) === 0) return fallbackRead(key, ctx);
      return notFound(key);
    },
    async set(key, value, ctx) {
      if (!isSettled) await settled;
      const route = routeWrite(key, currentRing(), routing, ctx);
      if (route.kind === "unavailable") throw new UnavailableError(`Cannot write "${key.slice(0, 64)}": ${route.why}`, route.group);
      const body = JSON.stringify({ key, value });
      if (route.kind === "forward") return ownGroupWrite(await forward(route.to, "POST", "/set", body, { hops: ctx.hops, group: route.group }), route.group);
      const other = misdirected(key, ctx);
      if (other) return forward(other.to, "POST", "/set", body, { hops: ctx.hops, group: other.group });
      const seq = leader!.set(key, value);
      await durableOrThrow(seq);
      return { status: 200, body: { status: "ok", key, version: seq } };
    },
    async delete(key, ctx) {
      if (!isSettled) await settled;
      const route = routeWrite(key, currentRing(), routing, ctx);
      if (route.kind === "unavailable") throw new UnavailableError(`Cannot delete "${key.slice(0, 64)}": ${route.why}`, route.group);
      const path = `/delete?key=${enc(key)}`;
      if (route.kind === "forward") return ownGroupWrite(await forward(route.to, "DELETE", path, undefined, { hops: ctx.hops, group: route.group }), route.group);
      const other = misdirected(key, ctx);
      if (other) return forward(other.to, "DELETE", path, undefined, { hops: ctx.hops, group: other.group });
      let { existed, seq } = leader!.delete(key);
      if (!existed && rebalancing() && !ctx.noFallback) {
        // The key may not have moved here yet: a tombstone keeps the move from bringing it back.
        existed = (await fallbackRead(key, ctx)).status === 200;
        seq = leader!.tombstone(key);
      }
      if (seq > leader!.head) await durableOrThrow(seq);
      return { status: 200, body: { status: "ok", key, deleted: existed, version: seq } };
    },
    keys: (q, ctx) => (q.scope === "cluster" && ctx.targetGroup === undefined ? clusterKeys(q, ctx) : localKeys(q)),
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
        discovery.announce();
      }
      return { status: 200, body: { status: "ok", group: config.group, draining: true, keys: store.size } };
    },
    async importEntries(entries, ctx) {
      if (!leader) {
        const to = membership.leaderOf(config.group);
        if (!to) throw new UnavailableError(`Cannot import into group ${config.group}: no leader known`, config.group);
        return forward(to, "POST", "/internal/import", JSON.stringify({ entries }), { hops: ctx.hops, group: config.group });
      }
      const ring = currentRing();
      let imported = 0;
      let skipped = 0;
      let last = 0;
      const refused: string[] = [];
      for (const { key, value } of entries) {
        if (ring.ownerOf(key) !== config.group) {
          refused.push(key);
          continue;
        }
        const seq = leader.setIfUnknown(key, value);
        if (seq === undefined) skipped++;
        else {
          imported++;
          last = seq;
        }
      }
      if (last > 0) await durableOrThrow(last);
      return { status: 200, body: { status: "ok", imported, skipped, refused } };
    },
    cluster: () => clusterView(),
    health: () => healthView(),
  };

  const replicationView = () => {
    const leaderMember = membership.leaderOf(config.group);
    const fstats = follower?.stats;
    return {
      role: leader ? "leader" : "follower",
      history_id: leader ? historyId : follower!.historyId,
      seq: position(),
      leader_id: leaderMember?.nodeId ?? null,
      leader_seq: leader ? leader.head : follower!.leaderHead,
      lag: leader ? 0 : Math.max(0, follower!.leaderHead - follower!.applied),
      connected: leader ? true : linkUp,
      full_transfers: leader ? leader.stats.fullTransfers : fstats!.fullTransfers,
      tail_catch_ups: leader ? leader.stats.tailCatchUps : fstats!.tailCatchUps,
      followers: leader
        ? leader.followers().map((f) => {
            const m = membership.get(f.node_id);
            return m ? { ...f, address: `${m.host}:${m.clusterPort}` } : f;
          })
        : [],
    };
  };

  const clusterView = (): Static<typeof ClusterReply> => {
    const t = now();
    const members = membership.list();
    const shares = currentRing().shares();
    const ds = discovery.stats;
    return {
      self_node_id: nodeId,
      self_group: config.group,
      is_leader: config.leader,
      nodes: members.map((m) => ({
        node_id: m.nodeId,
        address: `${m.host}:${m.clusterPort}`,
        api_address: `${m.host}:${m.apiPort}`,
        group_id: m.group,
        is_leader: m.leader,
        term: m.term,
        seq: m.nodeId === nodeId ? position() : m.seq,
        last_seen_ms_ago: m.nodeId === nodeId ? 0 : Math.max(0, Math.round(t - m.lastSeenMs)),
      })),
      node_count: members.length,
      groups: membership.knownGroups().map((g) => {
        const ms = members.filter((m) => m.group === g);
        const lead = membership.leaderOf(g);
        return {
          group_id: g,
          leader: lead?.nodeId ?? null,
          members: ms.map((m) => m.nodeId),
          ring_share: Math.round((shares.get(g) ?? 0) * 1e6) / 1e6,
          keys: lead ? (lead.nodeId === nodeId ? store.size : lead.keys) : Math.max(0, ...ms.map((m) => m.keys)),
          draining: membership.isDraining(g),
          moving: ms.some((m) => m.moving),
        };
      }),
      rebalance: mover ? mover.progress() : { draining: membership.getSelf().draining, moving: false, moved: 0, passes: 0, last_error: null },
      replication: replicationView(),
      storage: storageView(),
      discovery: { received: ds.received, accepted: ds.accepted, dropped: { ...ds.dropped }, sent: ds.sent, send_errors: ds.sendErrors },
    };
  };

  const storageView = () => {
    if (!durability) return { data_dir: null, durable_seq: position(), data_dir_bytes: 0, fsync: "in-memory", log_flushes: 0, log_records: 0, log_failures: 0, snapshots: 0, last_snapshot_seq: 0, torn_bytes_cut: 0 };
    return durability.stats();
  };

  const healthView = (): Static<typeof HealthReply> => {
    const r = replicationView();
    const st = storageView();
    return {
      durable_seq: st.durable_seq,
      data_dir_bytes: st.data_dir_bytes,
      status: "healthy",
      role: r.role,
      group: config.group,
      keys: store.size,
      node_id: nodeId,
      seq: r.seq,
      lag: r.lag,
      leader_id: r.leader_id,
      followers: r.followers,
    };
  };

  // --- HTTP API
  const app = createApi(service);
  const http = Bun.serve({
    hostname: config.host,
    port: config.api,
    maxRequestBodySize: 6 * (config.keyBytesMax + config.valueBytesMax) + 64 * 1024,
    fetch: app.fetch,
    error: (e) => Response.json({ error: `Internal error: ${e.message}` }, { status: 500 }),
  });
  const apiPort = http.port!;
  membership.updateSelf({ apiPort });

  const discovery = new Discovery({
    cluster: config.cluster,
    port: config.discoveryPort,
    broadcast: config.broadcast,
    heartbeatMs: config.heartbeatMs,
    staleMs: config.staleMs,
    membership,
    now,
    log,
    announcement: () => {
      const self = membership.getSelf();
      return {
        nodeId,
        host: self.host,
        clusterPort,
        apiPort,
        group: config.group,
        leader: config.leader,
        draining: self.draining,
        moving: self.moving,
        term: leader ? term : follower!.term,
        seq: position(),
        historyId: leader ? historyId : follower!.historyId,
        keys: store.size,
      };
    },
    onChange: (what, id) => {
      if (what === "new") {
        const m = membership.get(id);
        if (m) log.info("node joined", { node_id: id, address: `${m.host}:${m.clusterPort}`, group: m.group, leader: m.leader });
        if (m && m.leader && m.group === config.group && config.leader) log.warn("another node claims to lead this group", { node_id: id, address: `${m.host}:${m.clusterPort}` });
      } else if (what === "left") log.info("node left", { node_id: id });
      reconcile();
    },
  });
  try {
    await discovery.start();
  } catch (e) {
    http.stop(true);
    replication.stop();
    throw new Error(`Cannot bind discovery port ${config.discoveryPort}/udp: ${(e as Error).message}`);
  }
  // Peers answer a newcomer's first announcement within ~50 ms: give them that long, so the ring
  // this node routes with holds every group from its first request.
  await new Promise((r) => setTimeout(r, Math.min(START_SETTLE_MS, config.heartbeatMs)));
  settle();

  const timers = [
    setInterval(() => void mover?.tick(), MOVER_TICK_MS),
    setInterval(() => {
      leader?.ping();
    }, PING_INTERVAL_MS),
    setInterval(() => {
      if (leader) leader.purgeTombstones();
      else follower!.purgeTombstones(config.historyEntries);
    }, 1000),
  ];
  reconcile();

  log.info("kvnode ready", {
    node_id: nodeId,
    role: leader ? "leader" : "follower",
    group: config.group,
    cluster: config.cluster,
    api: `http://${config.host}:${apiPort}`,
    cluster_port: clusterPort,
    discovery: `${config.discoveryPort}/udp`,
    broadcast: config.broadcast,
  });

  return {
    nodeId,
    apiPort,
    clusterPort,
    async stop() {
      if (stopping) return;
      stopping = true;
      for (const t of timers) clearInterval(t);
      if (reconnectTimer) clearTimeout(reconnectTimer);
      discovery.stop();
      link?.close();
      replication.stop();
      await http.stop(true);
      for (const w of applyWaiters) w.resolve();
      await durability?.close();
      log.info("kvnode stopped", { node_id: nodeId });
    },
  };
}
