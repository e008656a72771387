/**
 * The composition root: the real clock and sockets around the pure parts. Start order: store,
 * replication listener, HTTP API, discovery (so what we announce is already listening). Stop order:
 * announce leaving, then close sockets.
 */
import type { Static } from "elysia";
import { createApi } from "../api/app.ts";
import { HOPS_HEADER } from "../api/app.ts";
import type { ClusterReply, HealthReply } from "../api/schemas.ts";
import type { KvService, Reply } from "../api/service.ts";
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
    term,
    seq: 0,
    historyId,
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

  // --- the service behind the API
  const forward = async (method: string, path: string, body: string | undefined, hops: number): Promise<Reply> => {
    const target = membership.leaderOf(config.group);
    if (!target) throw new UnavailableError(`No leader known for group ${config.group}: cannot accept writes`);
    if (hops >= limits.forwardHopsMax) throw new UnavailableError(`Request forwarded ${hops} times without reaching the leader of group ${config.group}`);
    const url = `http://${target.host}:${target.apiPort}${path}`;
    try {
      const res = await fetch(url, {
        method,
        body,
        headers: { "content-type": "application/json", [HOPS_HEADER]: String(hops + 1) },
        signal: AbortSignal.timeout(limits.forwardTimeoutMs),
      });
      const json = (await res.json()) as Record<string, unknown>;
      return { status: res.status, body: json };
    } catch (e) {
      throw new UnavailableError(`Leader of group ${config.group} (${target.nodeId} at ${target.host}:${target.apiPort}) is unreachable: ${(e as Error).message}`);
    }
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

  const service: KvService = {
    nodeId,
    group: config.group,
    keyBytesMax: config.keyBytesMax,
    valueBytesMax: config.valueBytesMax,
    get: (key) => {
      const e = store.get(key);
      return e ? { value: e.value!, version: e.version } : undefined;
    },
    async set(key, value, hops) {
      if (leader) {
        const seq = leader.set(key, value);
        await durableOrThrow(seq);
        return { status: 200, body: { status: "ok", key, version: seq } };
      }
      const r = await forward("POST", "/set", JSON.stringify({ key, value }), hops);
      if (r.status === 200 && typeof r.body.version === "number") await awaitApplied(r.body.version);
      return r;
    },
    async delete(key, hops) {
      if (leader) {
        const { existed, seq } = leader.delete(key);
        if (existed) await durableOrThrow(seq);
        return { status: 200, body: { status: "ok", key, deleted: existed, version: seq } };
      }
      const r = await forward("DELETE", `/delete?key=${encodeURIComponent(key)}`, undefined, hops);
      if (r.status === 200 && r.body.deleted === true && typeof r.body.version === "number") await awaitApplied(r.body.version);
      return r;
    },
    keys: () => [...store.keys()].sort(),
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
    const ring = new HashRing(membership.groups());
    const shares = ring.shares();
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
      groups: ring.groups.map((g) => ({
        group_id: g,
        leader: membership.leaderOf(g)?.nodeId ?? null,
        members: members.filter((m) => m.group === g).map((m) => m.nodeId),
        ring_share: Math.round((shares.get(g) ?? 0) * 1e6) / 1e6,
      })),
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
        term: leader ? term : follower!.term,
        seq: position(),
        historyId: leader ? historyId : follower!.historyId,
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

  const timers = [
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
