/**
 * Every bound kvnode keeps, in one place. Units go last in names. Key and value limits can be
 * changed from the command line; the rest are derived from them or fixed here.
 */
export const limits = {
  /** Default largest key, in UTF-8 bytes (-max-key-bytes). */
  keyBytesMax: 1024,
  /** Default largest value, in UTF-8 bytes (-max-value-bytes). */
  valueBytesMax: 1 << 20,
  /** Largest discovery datagram we send or accept. Fits an Ethernet MTU with room to spare. */
  datagramBytesMax: 1400,
  /** Largest string field in a datagram (cluster name, node id, host, history id). */
  datagramStringBytesMax: 255,
  /** Target size of one snapshot chunk frame during a full state transfer. */
  snapshotChunkBytes: 256 * 1024,
  /** Replication history the leader keeps for catching followers up without a full transfer. */
  historyEntriesMax: 200_000,
  historyBytesMax: 64 * 1024 * 1024,
  /** Longest a durable write waits before it is sent to the followers, so sends are batched. */
  replicationBatchMs: 1,
  /** Bytes queued to one follower's socket beyond which the pump waits for `drain`. */
  followerQueuedBytesMax: 4 * 1024 * 1024,
  /** A follower link whose queued bytes make no progress for this long is closed. */
  followerStallMs: 20_000,
  /** Full state transfers a leader runs at once (each holds a copy of the store until it ends). */
  fullTransfersMax: 4,
  /** Answers queued on one request link that its peer does not read, beyond which it is closed. */
  requestLinkQueuedBytesMax: 64 * 1024 * 1024,
  /** Forwarding: timeout of one forwarded request (the hop bound is HOPS_MAX in src/routing). */
  forwardTimeoutMs: 5_000,
  /** How long a follower that forwarded a write waits to apply it locally (read-your-writes). */
  forwardApplyWaitMs: 1_000,
  /** Reconnect backoff of a follower's link to its leader. */
  reconnectBackoffMinMs: 50,
  reconnectBackoffMaxMs: 2_000,
  /** Peers remembered in the membership table; datagrams from more are dropped. */
  peersMax: 4096,
  /** Groups on the ring (announcements of more are dropped as table-full). */
  groupsMax: 1024,
} as const;

/** Largest frame on the replication link: one entry of the largest key and value, plus headers. */
export function frameBytesMax(keyBytesMax: number, valueBytesMax: number): number {
  return Math.max(keyBytesMax + valueBytesMax + 1024, limits.snapshotChunkBytes + keyBytesMax + valueBytesMax + 1024);
}

/**
 * Largest HTTP request body a node takes (Bun's maxRequestBodySize): the largest key and value
 * JSON-escaped (up to 6 bytes a byte), plus room. A batch of keys moved to another group is kept
 * within it, so nodes must run the same key and value limits.
 */
export function requestBodyBytesMax(keyBytesMax: number, valueBytesMax: number): number {
  return 6 * (keyBytesMax + valueBytesMax) + 64 * 1024;
}
