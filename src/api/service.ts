/** What the API needs from a node. The node implements it; tests can implement it in memory. */
import type { Static } from "elysia";
import type { RequestContext } from "../routing/router.ts";
import type { ClusterReply, HealthReply } from "./schemas.ts";

/** An answer decided here or by the node a request was forwarded to, passed through as is. */
export interface Reply {
  status: number;
  body: Record<string, unknown>;
  /** Set on a forwarded answer: which node and group served it. */
  headers?: Record<string, string>;
}

export interface KeysQuery {
  scope: "node" | "cluster";
  prefix: string;
  /** Largest page; undefined: every key (the seed's /keys). */
  limit?: number;
  /** Keys after this one (the `cursor` of the previous page). */
  cursor?: string;
}

export interface KeysPage {
  keys: string[];
  count: number;
  /** Pass as `cursor` for the next page; null on the last one. */
  cursor: string | null;
}

export interface KvService {
  readonly nodeId: string;
  readonly group: number;
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  /** Read here, or from the group that owns the key. */
  get(key: string, ctx: RequestContext): Reply | Promise<Reply>;
  /** Write on the owner group's leader (here, or forwarded). */
  set(key: string, value: string, ctx: RequestContext): Reply | Promise<Reply>;
  delete(key: string, ctx: RequestContext): Promise<Reply>;
  keys(q: KeysQuery, ctx: RequestContext): KeysPage | Promise<KeysPage>;
  /** Move this group's keys to the other groups, so it can be shut down. */
  drain(ctx: RequestContext): Promise<Reply>;
  /** Keys moved in from another group (rebalancing). */
  /** Keys moved in from another group: a value, or `deleted` for a tombstone (a delete made there). */
  importEntries(entries: ImportEntry[], ctx: RequestContext): Promise<Reply>;
  cluster(): Static<typeof ClusterReply>;
  health(): Static<typeof HealthReply>;
}

export type ImportEntry = { key: string; value?: string; deleted?: boolean };
