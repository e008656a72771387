/** A node's validated configuration. The CLI builds it from flags; tests build it directly. */
import type { LogLevel } from "../lib/log.ts";
import { limits } from "../lib/limits.ts";
import type { FsyncMode } from "../wal/log.ts";

export interface NodeConfig {
  /** Cluster (replication) TCP port; 0 picks a free one. */
  port: number;
  group: number;
  leader: boolean;
  /** HTTP API port; 0 picks a free one. */
  api: number;
  /** Address to bind and advertise. */
  host: string;
  discoveryPort: number;
  /** Where announcements go; derived from `host`'s subnet when not given. */
  broadcast: string;
  cluster: string;
  heartbeatMs: number;
  staleMs: number;
  logLevel: LogLevel;
  keyBytesMax: number;
  valueBytesMax: number;
  /** Writes the leader keeps for catching followers up without a full transfer. */
  historyEntries: number;
  /** Data directory; null keeps everything in memory (-in-memory). */
  dataDir: string | null;
  fsync: FsyncMode;
  fsyncMs: number;
  /** Log size past which a snapshot is written and the log it covers dropped. */
  snapshotBytes: number;
  /** A leader answers a write once this many followers acknowledged it too (0: once it is durable here). */
  syncReplicas: number;
  /** How long a write waits for those acknowledgements before it is answered 503. */
  syncTimeoutMs: number;
}

export const defaults: NodeConfig = {
  port: 8000,
  group: 0,
  leader: false,
  api: 9000,
  host: "127.0.0.1",
  discoveryPort: 7946,
  broadcast: "",
  cluster: "kvnode",
  heartbeatMs: 5000,
  staleMs: 30000,
  logLevel: "info",
  keyBytesMax: limits.keyBytesMax,
  valueBytesMax: limits.valueBytesMax,
  historyEntries: limits.historyEntriesMax,
  dataDir: "data/8000",
  fsync: "batch",
  fsyncMs: 2,
  snapshotBytes: 64 * 1024 * 1024,
  syncReplicas: 0,
  syncTimeoutMs: 5000,
};
