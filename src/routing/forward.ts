/**
 * Forwarding a request to another node's API. fetch keeps connections alive and reuses them;
 * every forward carries the hop count and the group it is meant for, and has a timeout. An owner
 * that cannot be reached is a 503 naming the group.
 */
import type { Member } from "../discovery/membership.ts";
import { UnavailableError } from "../lib/errors.ts";
import { limits } from "../lib/limits.ts";

export const HOPS_HEADER = "x-kvnode-hops";
export const GROUP_HEADER = "x-kvnode-target-group";
export const NO_FALLBACK_HEADER = "x-kvnode-no-fallback";
export const NODE_HEADER = "x-kvnode-node";
export const SERVED_GROUP_HEADER = "x-kvnode-group";

export interface Forwarded {
  status: number;
  body: Record<string, unknown>;
  headers: Record<string, string>;
}

export interface ForwardOptions {
  hops: number;
  group: number;
  noFallback?: boolean;
  timeoutMs?: number;
}

export async function forward(to: Member, method: string, pathAndQuery: string, body: string | undefined, o: ForwardOptions): Promise<Forwarded> {
  const url = `http://${to.host}:${to.apiPort}${pathAndQuery}`;
  const headers: Record<string, string> = { [HOPS_HEADER]: String(o.hops + 1), [GROUP_HEADER]: String(o.group) };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (o.noFallback) headers[NO_FALLBACK_HEADER] = "1";
  let res: Response;
  try {
    res = await fetch(url, { method, body, headers, signal: AbortSignal.timeout(o.timeoutMs ?? limits.forwardTimeoutMs) });
  } catch (e) {
    throw new UnavailableError(`Group ${o.group} is unreachable: node ${to.nodeId} at ${to.host}:${to.apiPort} did not answer (${(e as Error).message})`, o.group);
  }
  let json: Record<string, unknown>;
  try {
    json = (await res.json()) as Record<string, unknown>;
  } catch {
    throw new UnavailableError(`Group ${o.group}: node ${to.nodeId} answered ${res.status} without JSON`, o.group);
  }
  return {
    status: res.status,
    body: json,
    headers: {
      [NODE_HEADER]: res.headers.get(NODE_HEADER) ?? to.nodeId,
      [SERVED_GROUP_HEADER]: res.headers.get(SERVED_GROUP_HEADER) ?? String(o.group),
    },
  };
}
