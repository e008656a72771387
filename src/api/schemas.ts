/** Request and response schemas: they validate requests and document the API at /swagger. */
import { Type } from "@sinclair/typebox";
import { t } from "elysia";
const Int = Type.Integer;

const errorFields = {
  error: t.String({ description: "What went wrong, in one line" }),
  key: t.Optional(t.String({ description: "The key, when the answer is about one" })),
  group: t.Optional(Int({ description: "The group that could not be reached or written, on a 503" })),
};

/** An error answer (every one is a JSON object of this shape); `when` documents what gives it. */
export const errorBody = (when: string) => t.Object(errorFields, { description: when });

/**
 * Request schemas allow fields and parameters they do not name (a client's extra field or a
 * cache-busting ?_=123 is ignored, not refused): the app does not normalize requests (see app.ts).
 */
const open = { additionalProperties: true } as const;

export const SetBody = t.Object(
  {
    key: t.String({ description: "Any UTF-8 string, 1 byte up to the key limit (default 1 KiB)" }),
    value: t.String({ description: "Any UTF-8 string up to the value limit (default 1 MiB)" }),
  },
  open,
);

export const SetReply = t.Object({
  status: t.Literal("ok"),
  key: t.String(),
  version: Int({ description: "Sequence the group's leader gave this write" }),
});

export const GetReply = t.Object({
  key: t.String(),
  value: t.String(),
  version: Int({ description: "Sequence of the write that set this value" }),
});

export const DeleteReply = t.Object({
  status: t.Literal("ok"),
  key: t.String(),
  deleted: t.Boolean({ description: "false when the key did not exist" }),
  version: Int({ description: "Sequence of the delete (the group's head when nothing was deleted)" }),
});

export const KeysReply = t.Object({
  keys: t.Array(t.String()),
  count: Int(),
  cursor: t.Optional(t.Union([t.String(), t.Null()], { description: "With limit: pass as cursor for the next page; null on the last page" })),
});

/**
 * `key` is required: a request without it is refused before the handler runs, and app.ts words
 * that refusal as the handler would ("Missing key: pass it as ?key=").
 */
export const KeyQuery = t.Object({ key: t.String({ description: "The key" }) }, open);

export const GetQuery = t.Object({
  key: t.String({ description: "The key" }),
  replica: t.Optional(t.String({ description: "any: a follower of the owner group may answer (possibly a few ms stale)" })),
}, open);

export const KeysQuery = t.Object({
  scope: t.Optional(t.String({ description: "node (default: this node's keys, as the original) or cluster (every group's keys, deduplicated)" })),
  prefix: t.Optional(t.String({ description: "Only keys starting with this" })),
  limit: t.Optional(t.String({ description: "Largest page (1..10000); the scope=cluster default is 1000" })),
  cursor: t.Optional(t.String({ description: "The cursor of the previous page" })),
}, open);

export const DrainReply = t.Object({
  status: t.Literal("ok"),
  group: Int(),
  draining: t.Boolean(),
  keys: Int({ description: "Keys the group still holds" }),
});

export const ImportBody = t.Object(
  {
    from_group: t.Optional(Int()),
    entries: t.Array(
      t.Object({ key: t.String(), value: t.Optional(t.String()), deleted: t.Optional(t.Literal(true, { description: "A tombstone: the key was deleted on the sending group" })) }, open),
    ),
  },
  open,
);

export const ImportReply = t.Object({
  status: t.Literal("ok"),
  imported: Int(),
  skipped: Int({ description: "Keys this group had already seen (a newer write or delete wins)" }),
  refused: t.Array(t.String(), { description: "Keys this group does not own on its ring" }),
});

const NodeView = t.Object({
  node_id: t.String(),
  address: t.String({ description: "host:port of the replication (cluster) port" }),
  api_address: t.String({ description: "host:port of the HTTP API" }),
  group_id: Int(),
  is_leader: t.Boolean(),
  term: Int(),
  seq: Int({ description: "Leader: head sequence. Follower: applied sequence (as last announced)" }),
  last_seen_ms_ago: Int(),
});

const FollowerView = t.Object({
  node_id: t.String(),
  address: t.String(),
  state: t.String({ description: "snapshot (full transfer in progress) or stream" }),
  acked_seq: Int(),
  lag: Int({ description: "Writes the follower has not acknowledged yet" }),
  last_ack_ms_ago: Int(),
  replication_delay_ms: Int({ description: "Time from a write to its acknowledgement, for the last one acked" }),
});

export const ReplicationView = t.Object({
  role: t.String(),
  history_id: t.String(),
  seq: Int({ description: "Leader: head. Follower: applied" }),
  leader_id: t.Union([t.String(), t.Null()]),
  leader_seq: Int({ description: "Follower: the leader's head as last heard" }),
  lag: Int({ description: "Follower: leader_seq - seq" }),
  connected: t.Boolean({ description: "Follower: link to the leader is up and in sync" }),
  full_transfers: Int(),
  tail_catch_ups: Int(),
  sync_replicas: Int({ description: "Leader: followers that must acknowledge a write before it is answered (-sync-replicas)" }),
  followers: t.Array(FollowerView),
});

export const StorageView = t.Object({
  data_dir: t.Union([t.String(), t.Null()], { description: "null when running -in-memory" }),
  durable_seq: Int({ description: "Highest sequence on disk (in memory: the applied one)" }),
  data_dir_bytes: Int(),
  fsync: t.String({ description: "always, batch, never, or in-memory" }),
  log_flushes: Int({ description: "Group commits: one write and one fsync each" }),
  log_records: Int(),
  log_failures: Int(),
  snapshots: Int(),
  last_snapshot_seq: Int(),
  torn_bytes_cut: Int({ description: "Bytes of a torn log tail cut off at start-up" }),
});

export const MemoryView = t.Object({
  keys: Int({ description: "Live keys in this node's store" }),
  tombstones: Int({ description: "Deleted keys remembered until no replica can need them" }),
  table_places: Int({ description: "Places in the store's hash table (grows at 70% full, shrinks below 17.5%)" }),
  table_resizing: t.Boolean({ description: "A resize of the table is moving entries, a few a write" }),
  arena_bytes: Int({ description: "Bytes of the buffers holding keys and values" }),
  arena_live_bytes: Int({ description: "Bytes of live entries in them (the rest is garbage awaiting compaction)" }),
  rss_bytes: Int({ description: "Resident memory of the process" }),
});

export const ClusterReply = t.Object({
  self_node_id: t.String(),
  self_group: Int(),
  is_leader: t.Boolean(),
  nodes: t.Array(NodeView),
  node_count: Int(),
  groups: t.Array(
    t.Object({
      group_id: Int(),
      leader: t.Union([t.String(), t.Null()], { description: "Node id of the group's leader" }),
      members: t.Array(t.String()),
      ring_share: t.Number({ description: "Fraction of the hash ring this group owns (0 while draining)" }),
      keys: Int({ description: "Keys its leader holds (as last announced)" }),
      draining: t.Boolean(),
      moving: t.Boolean({ description: "Its leader is moving keys to their new owners" }),
    }),
  ),
  rebalance: t.Object({
    draining: t.Boolean({ description: "This node's group is draining" }),
    moving: t.Boolean({ description: "This node (a leader) is moving keys out" }),
    moved: Int({ description: "Keys this node moved out since it started" }),
    passes: Int(),
    last_error: t.Union([t.String(), t.Null()]),
  }),
  replication: ReplicationView,
  storage: StorageView,
  memory: MemoryView,
  discovery: t.Object({
    received: Int(),
    accepted: Int(),
    dropped: t.Record(t.String(), Int()),
    sent: Int(),
    send_errors: Int(),
  }),
});

export const HealthReply = t.Object({
  status: t.String({ description: "healthy" }),
  role: t.String({ description: "leader or follower" }),
  group: Int(),
  keys: Int(),
  node_id: t.String(),
  seq: Int(),
  durable_seq: Int({ description: "Highest sequence on disk" }),
  data_dir_bytes: Int({ description: "Size of the data directory" }),
  lag: Int(),
  leader_id: t.Union([t.String(), t.Null()]),
  followers: t.Array(FollowerView),
});
