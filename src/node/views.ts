/**
 * What /cluster and /health show: membership, groups and ring shares, replication positions and
 * lag, storage, rebalancing and discovery counters, read from the node's parts when asked.
 */
import type { Static } from "elysia";
import type { ClusterReply, HealthReply } from "../api/schemas.ts";
import type { Membership } from "../discovery/membership.ts";
import type { DiscoveryStats } from "../discovery/udp.ts";
import type { Follower } from "../replication/follower.ts";
import type { Leader } from "../replication/leader.ts";
import type { HashRing } from "../ring/ring.ts";
import type { Store } from "../store/store.ts";
import type { NodeConfig } from "./config.ts";
import type { Durability } from "./durability.ts";
import type { Mover } from "./mover.ts";

export interface ViewDeps {
  config: NodeConfig;
  nodeId: string;
  historyId: string;
  store: Store;
  leader: Leader | null;
  follower: Follower | null;
  membership: Membership;
  durability: Durability | null;
  mover: Mover | null;
  currentRing: () => HashRing;
  discoveryStats: () => DiscoveryStats;
  /** A follower's link to its leader is up and in sync. */
  linkUp: () => boolean;
  now: () => number;
}

export function createViews(d: ViewDeps): { cluster: () => Static<typeof ClusterReply>; health: () => Static<typeof HealthReply> } {
  const { config, nodeId, historyId, store, leader, follower, membership, durability, mover, currentRing, now } = d;
  const position = () => (leader ? leader.head : follower!.applied);
  /**
   * A follower's view of its leader's head: the highest it heard on its link, or in the leader's
   * announcements of the same history (found by an audit: while relinking, lag read 0 on a
   * follower hundreds of writes behind).
   */
  const leaderHead = () => {
    const m = membership.leaderOf(config.group);
    return Math.max(follower!.leaderHead, m && m.historyId === follower!.historyId ? m.seq : 0);
  };
  const replicationView = () => {
    const leaderMember = membership.leaderOf(config.group);
    const fstats = follower?.stats;
    return {
      role: leader ? "leader" : "follower",
      history_id: leader ? historyId : follower!.historyId,
      seq: position(),
      leader_id: leaderMember?.nodeId ?? null,
      leader_seq: leader ? leader.head : leaderHead(),
      lag: leader ? 0 : Math.max(0, leaderHead() - follower!.applied),
      connected: leader ? true : d.linkUp(),
      full_transfers: leader ? leader.stats.fullTransfers : fstats!.fullTransfers,
      tail_catch_ups: leader ? leader.stats.tailCatchUps : fstats!.tailCatchUps,
      sync_replicas: leader ? config.syncReplicas : 0,
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
    const ds = d.discoveryStats();
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
      memory: memoryView(),
      discovery: { received: ds.received, accepted: ds.accepted, dropped: { ...ds.dropped }, sent: ds.sent, send_errors: ds.sendErrors },
    };
  };

  const storageView = () => {
    if (!durability) return { data_dir: null, durable_seq: position(), data_dir_bytes: 0, fsync: "in-memory", log_flushes: 0, log_records: 0, log_failures: 0, snapshots: 0, last_snapshot_seq: 0, torn_bytes_cut: 0 };
    return durability.stats();
  };

  const memoryView = () => {
    const arena = store.arenaBytes;
    return {
      keys: store.size,
      tombstones: store.tombstoneCount,
      table_places: store.capacity,
      table_resizing: store.resizing,
      arena_bytes: arena.held,
      arena_live_bytes: arena.live,
      rss_bytes: process.memoryUsage.rss(),
    };
  };

  const healthView = (): Static<typeof HealthReply> => {
    const r = replicationView();
    const st = storageView();
    return {
      status: "healthy",
      role: r.role,
      group: config.group,
      keys: store.size,
      node_id: nodeId,
      seq: r.seq,
      durable_seq: st.durable_seq,
      data_dir_bytes: st.data_dir_bytes,
      lag: r.lag,
      leader_id: r.leader_id,
      followers: r.followers,
    };
  };

  return { cluster: clusterView, health: healthView };
}
