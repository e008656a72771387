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
  /** A read any member of the group may answer (over request links; HTTP puts it in the query). */
  anyReplica?: boolean;
  timeoutMs?: number;
}

/**
 * Forwards in flight, with their deadlines. One shared sweep aborts the overdue ones: a timer per
 * request (AbortSignal.timeout) cost ~15% of forwarded throughput. Deadlines are kept to within
 * the sweep interval.
 */
const inflight = new Map<AbortController, number>();
const SWEEP_MS = 100;
let sweeper: ReturnType<typeof setInterval> | null = null;

function withDeadline(timeoutMs: number): AbortController {
  const c = new AbortController();
  inflight.set(c, performance.now() + timeoutMs);
  if (!sweeper) {
    sweeper = setInterval(() => {
      const now = performance.now();
      for (const [ctl, deadline] of inflight)
        if (now >= deadline) {
          inflight.delete(ctl);
          ctl.abort(new DOMException(`no answer within ${timeoutMs} ms`, "TimeoutError"));
        }
      if (inflight.size === 0 && sweeper) {
        clearInterval(sweeper);
        sweeper = null;
      }
    }, SWEEP_MS);
    (sweeper as { unref?: () => void }).unref?.();
  }
  return c;
}

export async function forward(to: Member, method: string, pathAndQuery: string, body: string | undefined, o: ForwardOptions): Promise<Forwarded> {
  const url = `http://${to.host}:${to.apiPort}${pathAndQuery}`;
  const headers: Record<string, string> = { [HOPS_HEADER]: String(o.hops + 1), [GROUP_HEADER]: String(o.group) };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (o.noFallback) headers[NO_FALLBACK_HEADER] = "1";
  const ctl = withDeadline(o.timeoutMs ?? limits.forwardTimeoutMs);
  let res: Response;
  let json: Record<string, unknown>;
  try {
    try {
      res = await fetch(url, { method, body, headers, signal: ctl.signal });
    } catch (e) {
      throw new UnavailableError(`Group ${o.group} is unreachable: node ${to.nodeId} at ${to.host}:${to.apiPort} did not answer (${(e as Error).message})`, o.group);
    }
    try {
      json = (await res.json()) as Record<string, unknown>;
    } catch {
      throw new UnavailableError(`Group ${o.group}: node ${to.nodeId} answered ${res.status} without JSON`, o.group);
    }
  } finally {
    inflight.delete(ctl);
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
