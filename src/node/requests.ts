/**
 * The serving side of request links (src/routing/link.ts): Request frames that arrive on the
 * cluster port are checked like API requests, served by the same service calls with the routing
 * context the frame carries, and answered with Response frames holding the API's JSON answer.
 * Answers of one event-loop turn go out in one socket write.
 */
import { type KvService, type Reply, checkKey, checkValue, errorReply } from "../api/index.ts";
import { type Frame, FrameType, RequestFlag, RequestOp, encodeFrame } from "../protocol/frame.ts";
import { limits } from "../lib/limits.ts";
import type { Outbox } from "../replication/outbox.ts";
import { TurnBatch } from "../replication/tcp.ts";
import { NODE_HEADER, SERVED_GROUP_HEADER } from "../routing/forward.ts";
import type { RequestContext } from "../routing/router.ts";

type RequestFrame = Extract<Frame, { type: typeof FrameType.Request }>;

/** What a connection carrying requests holds (its ServerConn state). */
export class RequestConn {
  private readonly batch: TurnBatch;
  constructor(private readonly out: Outbox) {
    this.batch = new TurnBatch(() => out);
  }

  send(frame: Uint8Array): void {
    if (this.out.closed) return;
    // A peer that sends requests but does not read the answers must not grow our memory.
    if (this.batch.bytes + this.out.queuedBytes + frame.length > limits.requestLinkQueuedBytesMax) {
      this.batch.clear();
      return this.out.abort();
    }
    this.batch.push(frame);
  }
}

export function createRequestServer(s: KvService) {
  const answer = (conn: RequestConn, id: number, r: Reply) => {
    const served = r.headers?.[SERVED_GROUP_HEADER];
    conn.send(
      encodeFrame({
        type: FrameType.Response,
        group: served === undefined ? s.group : Number(served),
        term: 0,
        seq: id,
        status: r.status,
        nodeId: r.headers?.[NODE_HEADER] ?? s.nodeId,
        body: JSON.stringify(r.body),
      }),
    );
  };

  /** Serve one request; its answer is sent when ready (a write waits until it is durable). */
  return (conn: RequestConn, f: RequestFrame): void => {
    const ctx: RequestContext = {
      hops: f.hops,
      targetGroup: f.group,
      noFallback: (f.flags & RequestFlag.NoFallback) !== 0,
      anyReplica: (f.flags & RequestFlag.AnyReplica) !== 0,
    };
    let r: Reply | Promise<Reply>;
    try {
      const key = checkKey(s, f.key);
      if (f.op === RequestOp.Get) r = s.get(key, ctx);
      else if (f.op === RequestOp.Set) {
        checkValue(s, key, f.value);
        r = s.set(key, f.value, ctx);
      } else if (f.op === RequestOp.Delete) r = s.delete(key, ctx);
      else r = { status: 400, body: { error: `Unknown request op ${f.op}` } };
    } catch (e) {
      r = errorReply(e);
    }
    if (r instanceof Promise) r.catch(errorReply).then((x) => answer(conn, f.seq, x));
    else answer(conn, f.seq, r);
  };
}
