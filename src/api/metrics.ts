/**
 * GET /metrics: the node in Prometheus' text format, through prom-client.
 *
 * - The API's answers by route and status. They are counted as plain integers where a request is
 *   answered (a prom-client `inc` with labels costs ~150 ns, 1-2% of a write's CPU) and handed to
 *   prom-client's counters at each scrape.
 * - How long /get, /set and /delete took, as a histogram by route: bucket counts kept the same
 *   way, and given to the registry as a histogram of its own at each scrape.
 * - The node's state, read at each scrape from the same view as /cluster: keys, sequences, lag,
 *   storage, membership, rebalancing, discovery.
 * - prom-client's default process metrics (CPU, resident memory, open files, event-loop lag,
 *   heap), less those Bun does not fill in (they would read 0 or Bun's stand-in Node version).
 */
import type { Static } from "elysia";
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import type { ClusterReply } from "./schemas.ts";

/** Routes answers are counted under; any other path counts as "other" (so labels stay few). */
export const COUNTED_ROUTES = ["/set", "/get", "/delete", "/keys", "/cluster", "/health", "/metrics", "/admin/drain", "/internal/import", "other"] as const;
export type CountedRoute = (typeof COUNTED_ROUTES)[number];

/** Upper bounds (seconds) of the request duration buckets: 0.25 ms to 5 s (a forward times out at 5 s). */
export const DURATION_BUCKETS = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5] as const;
/** The routes timed: the data path. */
export const TIMED_ROUTES = ["/get", "/set", "/delete"] as const;
export type TimedRoute = (typeof TIMED_ROUTES)[number];

/** Answers by route and status since the node started: an array slot per status, so counting is one increment. */
export class RequestCounts {
  private readonly byRoute = new Map<string, Float64Array>(COUNTED_ROUTES.map((r) => [r, new Float64Array(600)]));
  /** Per timed route: a count per bucket (non-cumulative; the last is +Inf), then the sum of seconds. */
  readonly durations = new Map<string, Float64Array>(TIMED_ROUTES.map((r) => [r, new Float64Array(DURATION_BUCKETS.length + 2)]));

  add(route: CountedRoute, status: number, n = 1): void {
    this.byRoute.get(route)![status >= 100 && status < 600 ? status : 500]! += n;
  }

  /** One request of `route` took `ms` milliseconds. */
  time(route: TimedRoute, ms: number): void {
    const a = this.durations.get(route)!;
    const s = ms / 1000;
    let i = 0;
    while (i < DURATION_BUCKETS.length && s > DURATION_BUCKETS[i]!) i++;
    a[i]!++;
    a[DURATION_BUCKETS.length + 1]! += s;
  }

  /** The route an answer to `path` counts under. */
  static routeOf(path: string): CountedRoute {
    return (COUNTED_ROUTES as readonly string[]).includes(path) ? (path as CountedRoute) : "other";
  }

  *entries(): Iterable<[route: string, status: number, count: number]> {
    for (const [route, a] of this.byRoute) for (let status = 100; status < 600; status++) if (a[status]! > 0) yield [route, status, a[status]!];
  }
}

type ClusterView = Static<typeof ClusterReply>;

/** prom-client defaults that read nothing true under Bun: zeros, empty, or the Node version Bun pretends to be. */
const NOT_UNDER_BUN = [
  "nodejs_active_resources", "nodejs_active_resources_total", "nodejs_active_handles", "nodejs_active_handles_total",
  "nodejs_active_requests", "nodejs_active_requests_total", "nodejs_heap_space_size_total_bytes",
  "nodejs_heap_space_size_used_bytes", "nodejs_heap_space_size_available_bytes", "nodejs_version_info",
  "nodejs_gc_duration_seconds", "process_heap_bytes",
];

/**
 * The /metrics of one node: `scrape` gives the text of a scrape. `view` is read once a scrape;
 * `counts` are the API's answers.
 */
export function createMetrics(view: () => ClusterView, counts: RequestCounts): { contentType: string; scrape: () => Promise<string> } {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  for (const name of NOT_UNDER_BUN) registry.removeSingleMetric(name);
  const registers = [registry];
  const gauge = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name: `kvnode_${name}`, help, labelNames, registers });
  const counter = (name: string, help: string, labelNames: string[] = []) => new Counter({ name: `kvnode_${name}`, help, labelNames, registers });

  const info = gauge("info", "Always 1; the labels say which node this is, and the Bun it runs on", ["node_id", "group", "role", "bun"]);
  const isLeader = gauge("is_leader", "1 on the leader of its group, 0 on a follower");
  const keys = gauge("keys", "Live keys in this node's store");
  const tombstones = gauge("tombstones", "Deleted keys remembered until no replica can need them");
  const arenaBytes = gauge("store_arena_bytes", "Bytes of the buffers holding keys and values");
  const arenaLive = gauge("store_arena_live_bytes", "Bytes of live entries in those buffers");
  const seq = gauge("seq", "Leader: the last sequence handed out. Follower: the last applied");
  const durableSeq = gauge("durable_seq", "Highest sequence on this node's disk (in memory: the applied one)");
  const lag = gauge("replication_lag", "Follower: writes it is behind its leader (0 on a leader)");
  const connected = gauge("replication_connected", "Follower: 1 while its link to the leader is up and in sync (1 on a leader)");
  const followers = gauge("followers", "Leader: followers linked to it");
  const followerLag = gauge("follower_lag", "Leader: writes a follower has not acknowledged", ["follower"]);
  const followerDelay = gauge("follower_replication_delay_seconds", "Leader: time from a write to a follower's acknowledgement, for the last one it acknowledged", ["follower"]);
  const syncReplicas = gauge("sync_replicas", "Leader: followers that must acknowledge a write before it is answered (-sync-replicas)");
  const dataDirBytes = gauge("data_dir_bytes", "Size of the data directory (0 in memory)");
  const nodes = gauge("cluster_nodes", "Nodes this node knows of, itself included");
  const groups = gauge("cluster_groups", "Groups this node knows of");
  const groupsLeaderless = gauge("cluster_groups_without_leader", "Known groups with no leader known: their keys answer 503");
  const draining = gauge("draining", "1 while this node's group is draining");
  const moving = gauge("moving", "1 while this node (a leader) is moving keys to their new owners");

  // Cumulative figures of the view, handed to prom-client counters as the increase since the last scrape.
  const requests = counter("http_requests_total", "Answers of this node's HTTP API, by route and status", ["route", "status"]);
  const cumulative: [Counter, (v: ClusterView) => number][] = [
    [counter("full_transfers_total", "Full state transfers (leader: sent; follower: received)"), (v) => v.replication.full_transfers],
    [counter("tail_catch_ups_total", "Catch-ups from the leader's history (leader: served; follower: received)"), (v) => v.replication.tail_catch_ups],
    [counter("log_flushes_total", "Group commits of the log: one write and one fsync each"), (v) => v.storage.log_flushes],
    [counter("log_records_total", "Records written to the log"), (v) => v.storage.log_records],
    [counter("log_failures_total", "Failed log writes or fsyncs (the writes they held were refused)"), (v) => v.storage.log_failures],
    [counter("snapshots_total", "Snapshots written"), (v) => v.storage.snapshots],
    [counter("keys_moved_total", "Keys this node moved to other groups (rebalancing)"), (v) => v.rebalance.moved],
    [counter("discovery_datagrams_received_total", "Discovery datagrams received"), (v) => v.discovery.received],
    [counter("discovery_datagrams_sent_total", "Discovery datagrams sent"), (v) => v.discovery.sent],
    [counter("discovery_send_errors_total", "Discovery datagrams that could not be sent"), (v) => v.discovery.send_errors],
  ];
  const dropped = counter("discovery_datagrams_dropped_total", "Discovery datagrams refused, by reason", ["reason"]);
  // A histogram read from counts.durations at each scrape (prom-client's own would cost a labelled
  // observe per request): the registry takes any object with a name, help, type and get().
  const durationName = "kvnode_http_request_duration_seconds";
  const durationHelp = "Time from the start of a /get, /set or /delete handler to its answer (body read, routing, forwarding, the log, -sync-replicas), errors included";
  registry.registerMetric({
    name: durationName,
    help: durationHelp,
    type: "histogram",
    aggregator: "sum",
    get: async () => {
      const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
      for (const [route, a] of counts.durations) {
        let n = 0;
        DURATION_BUCKETS.forEach((le, i) => values.push({ metricName: `${durationName}_bucket`, labels: { le, route }, value: (n += a[i]!) }));
        n += a[DURATION_BUCKETS.length]!;
        values.push({ metricName: `${durationName}_bucket`, labels: { le: "+Inf", route }, value: n });
        values.push({ metricName: `${durationName}_sum`, labels: { route }, value: a[DURATION_BUCKETS.length + 1]! });
        values.push({ metricName: `${durationName}_count`, labels: { route }, value: n });
      }
      return { name: durationName, help: durationHelp, type: "histogram", aggregator: "sum", values };
    },
  } as unknown as Parameters<Registry["registerMetric"]>[0]);
  const reported = new Map<unknown, number>();
  /** Add to a counter what a cumulative figure grew since the last scrape. */
  const advance = (c: Counter, total: number, labels: Record<string, string> = {}, id: unknown = c) => {
    const was = reported.get(id) ?? 0;
    if (total > was) c.inc(labels, total - was);
    reported.set(id, Math.max(was, total));
  };
  const ids = new Map<string, object>();
  const idOf = (s: string) => {
    let id = ids.get(s);
    if (!id) ids.set(s, (id = {}));
    return id;
  };

  const update = () => {
    const v = view();
    const r = v.replication;
    info.reset();
    info.set({ node_id: v.self_node_id, group: String(v.self_group), role: r.role, bun: Bun.version }, 1);
    isLeader.set(r.role === "leader" ? 1 : 0);
    keys.set(v.memory.keys);
    tombstones.set(v.memory.tombstones);
    arenaBytes.set(v.memory.arena_bytes);
    arenaLive.set(v.memory.arena_live_bytes);
    seq.set(r.seq);
    durableSeq.set(v.storage.durable_seq);
    lag.set(r.lag);
    connected.set(r.connected ? 1 : 0);
    followers.set(r.followers.length);
    followerLag.reset();
    followerDelay.reset();
    for (const f of r.followers) {
      followerLag.set({ follower: f.node_id }, f.lag);
      followerDelay.set({ follower: f.node_id }, f.replication_delay_ms / 1000);
    }
    syncReplicas.set(r.sync_replicas);
    dataDirBytes.set(v.storage.data_dir_bytes);
    nodes.set(v.node_count);
    groups.set(v.groups.length);
    groupsLeaderless.set(v.groups.filter((g) => g.leader === null).length);
    draining.set(v.rebalance.draining ? 1 : 0);
    moving.set(v.rebalance.moving ? 1 : 0);
    for (const [c, of] of cumulative) advance(c, of(v));
    for (const [reason, n] of Object.entries(v.discovery.dropped)) advance(dropped, n, { reason }, idOf(`dropped ${reason}`));
    for (const [route, status, n] of counts.entries()) advance(requests, n, { route, status: String(status) }, idOf(`${route} ${status}`));
  };

  return {
    contentType: registry.contentType,
    scrape: () => {
      update();
      return registry.metrics();
    },
  };
}
