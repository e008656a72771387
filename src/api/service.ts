/** What the API needs from a node. The node implements it; tests can implement it in memory. */
import type { Static } from "elysia";
import type { ClusterReply, HealthReply } from "./schemas.ts";

/** An answer decided elsewhere (a leader we forwarded to), passed through as is. */
export interface Reply {
  status: number;
  body: Record<string, unknown>;
}

export interface KvService {
  readonly nodeId: string;
  readonly group: number;
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  get(key: string): { value: string; version: number } | undefined;
  /** Write (on the leader) or forward (from a follower). `hops` counts forwards so far. */
  set(key: string, value: string, hops: number): Promise<Reply>;
  delete(key: string, hops: number): Promise<Reply>;
  keys(): string[];
  cluster(): Static<typeof ClusterReply>;
  health(): Static<typeof HealthReply>;
}
