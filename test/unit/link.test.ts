/**
 * Request links (src/routing/link.ts): forwarded requests as frames on a peer's cluster port,
 * against fake peers built from Bun.listen, so every failure can be staged.
 */
import { expect, test } from "bun:test";
import type { Member } from "../../src/discovery/membership.ts";
import { UnavailableError } from "../../src/lib/errors.ts";
import { silentLogger } from "../../src/lib/log.ts";
import { type Frame, FrameReader, FrameType, RequestFlag, RequestOp, encodeFrame } from "../../src/protocol/frame.ts";
import { RequestLinks } from "../../src/routing/link.ts";
import { waitFor } from "../support/wait.ts";

const MAX = 1 << 20;

function member(port: number): Member {
  return {
    nodeId: "peer-1", host: "127.0.0.1", clusterPort: port, apiPort: 1, group: 4, leader: true,
    draining: false, moving: false, term: 1, seq: 0, historyId: "h", keys: 0, lastSeenMs: 0,
  };
}

type Req = Extract<Frame, { type: typeof FrameType.Request }>;

/** A fake peer: `onRequests` sees each batch of Request frames and may answer through `reply`. */
function fakePeer(onRequests: (reqs: Req[], reply: (frames: Frame[]) => void, end: () => void) => void, onOpen = () => {}) {
  return Bun.listen<{ reader: FrameReader }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { reader: new FrameReader(MAX) };
        onOpen();
      },
      data(s, chunk) {
        const { frames } = s.data.reader.push(chunk);
        onRequests(frames as Req[], (out) => void s.write(Buffer.concat(out.map((f) => encodeFrame(f)))), () => s.end());
      },
    },
  });
}

const response = (r: Req, status: number, body: string, nodeId = "owner-7", group = 4): Frame => ({ type: FrameType.Response, group, term: 0, seq: r.seq, status, nodeId, body });

test("requests in flight together share one connection and each gets its own answer, whatever the order they come back in", async () => {
  let connections = 0;
  const seen: Req[] = [];
  using peer = fakePeer(
    (reqs, reply) => {
      seen.push(...reqs);
      if (seen.length < 3) return;
      // Answer the three in reverse order.
      reply(seen.toReversed().map((r) => response(r, r.op === RequestOp.Get ? 200 : 201, JSON.stringify({ key: r.key, value: r.value, hops: r.hops, flags: r.flags }))));
    },
    () => connections++,
  );
  const links = new RequestLinks(MAX, silentLogger);
  try {
    const to = member(peer.port);
    const answers = await Promise.all([
      links.forward(to, RequestOp.Get, "a|1", "", { hops: 0, group: 4, anyReplica: true }),
      links.forward(to, RequestOp.Set, "b\n2", "v\0😀", { hops: 1, group: 4 }),
      links.forward(to, RequestOp.Delete, "c", "", { hops: 2, group: 4, noFallback: true }),
    ]);
    expect(answers.map((a) => [a.status, a.body])).toEqual([
      [200, { key: "a|1", value: "", hops: 1, flags: RequestFlag.AnyReplica }],
      [201, { key: "b\n2", value: "v\0😀", hops: 2, flags: 0 }],
      [201, { key: "c", value: "", hops: 3, flags: RequestFlag.NoFallback }],
    ]);
    expect(answers[0]!.headers).toEqual({ "x-kvnode-node": "owner-7", "x-kvnode-group": "4" });
    expect(new Set(seen.map((r) => r.seq)).size).toBe(3);
    expect(seen.every((r) => r.group === 4)).toBe(true);
    expect(connections).toBe(1);
  } finally {
    links.close();
  }
});

test("a peer that accepts but never answers fails the request with UnavailableError naming the group, after about its timeout", async () => {
  using peer = fakePeer(() => {});
  const links = new RequestLinks(MAX, silentLogger);
  try {
    const started = performance.now();
    const err = await links.forward(member(peer.port), RequestOp.Get, "k", "", { hops: 0, group: 4, timeoutMs: 300 }).catch((e) => e);
    const took = performance.now() - started;
    expect(err).toBeInstanceOf(UnavailableError);
    expect((err as UnavailableError).group).toBe(4);
    expect((err as Error).message).toMatch(/Group 4 is unreachable.*did not answer within 300 ms/);
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(2_000);
  } finally {
    links.close();
  }
});

test("a closed port fails at once, and the next request tries again", async () => {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  const links = new RequestLinks(MAX, silentLogger);
  try {
    const started = performance.now();
    const err = await links.forward(member(port), RequestOp.Set, "k", "v", { hops: 0, group: 4, timeoutMs: 5_000 }).catch((e) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(performance.now() - started).toBeLessThan(2_000);
    // Something listens there now: the link reconnects instead of remembering the failure.
    using peer = Bun.listen<{ reader: FrameReader }>({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.data = { reader: new FrameReader(MAX) };
        },
        data(s, chunk) {
          for (const f of s.data.reader.push(chunk).frames) s.write(encodeFrame(response(f as Req, 200, '{"ok":true}')));
        },
      },
    });
    void peer;
    expect((await links.forward(member(port), RequestOp.Get, "k", "", { hops: 0, group: 4 })).body).toEqual({ ok: true });
  } finally {
    links.close();
  }
});

test("a connection that closes with requests in flight fails them all at once", async () => {
  using peer = fakePeer((_reqs, _reply, end) => end());
  const links = new RequestLinks(MAX, silentLogger);
  try {
    const started = performance.now();
    const errs = await Promise.all([1, 2, 3].map((i) => links.forward(member(peer.port), RequestOp.Get, `k${i}`, "", { hops: 0, group: 4, timeoutMs: 5_000 }).catch((e) => e)));
    for (const e of errs) expect(e).toBeInstanceOf(UnavailableError);
    expect(performance.now() - started).toBeLessThan(2_000);
  } finally {
    links.close();
  }
});

test("an answer that is not JSON fails that request only; garbage on the link closes it and fails the rest", async () => {
  using peer = fakePeer((reqs, reply) => {
    for (const r of reqs) {
      if (r.key === "bad-json") reply([response(r, 200, "{not json")]);
      else if (r.key === "good") reply([response(r, 200, '{"fine":1}')]);
    }
  });
  const links = new RequestLinks(MAX, silentLogger);
  try {
    const to = member(peer.port);
    const bad = await links.forward(to, RequestOp.Get, "bad-json", "", { hops: 0, group: 4 }).catch((e) => e);
    expect(bad).toBeInstanceOf(UnavailableError);
    expect((bad as Error).message).toMatch(/without JSON/);
    expect((await links.forward(to, RequestOp.Get, "good", "", { hops: 0, group: 4 })).body).toEqual({ fine: 1 });
  } finally {
    links.close();
  }
  // A peer that answers with a frame that is not a Response: the link is dropped, the request fails.
  using odd = fakePeer((reqs, reply) => reply(reqs.map((r) => ({ type: FrameType.Ping, group: 4, term: 0, seq: r.seq }) as Frame)));
  const links2 = new RequestLinks(MAX, silentLogger);
  try {
    const err = await links2.forward(member(odd.port), RequestOp.Get, "k", "", { hops: 0, group: 4, timeoutMs: 5_000 }).catch((e) => e);
    expect(err).toBeInstanceOf(UnavailableError);
  } finally {
    links2.close();
  }
});

test("a link with nothing in flight is closed after its idle time, before the peer's own idle timeout; the next request reconnects", async () => {
  let opened = 0;
  let closed = 0;
  using peer = Bun.listen<{ reader: FrameReader }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(s) {
        s.data = { reader: new FrameReader(MAX) };
        opened++;
      },
      data(s, chunk) {
        for (const f of s.data.reader.push(chunk).frames) s.write(encodeFrame(response(f as Req, 200, '{"ok":true}')));
      },
      close() {
        closed++;
      },
    },
  });
  const links = new RequestLinks(MAX, silentLogger, 300);
  try {
    const to = member(peer.port);
    expect((await links.forward(to, RequestOp.Get, "k", "", { hops: 0, group: 4 })).status).toBe(200);
    expect(links.size).toBe(1);
    await waitFor("the idle link to close", () => links.size === 0 && closed === 1, 3_000);
    expect((await links.forward(to, RequestOp.Get, "k", "", { hops: 0, group: 4 })).status).toBe(200);
    expect(opened).toBe(2);
  } finally {
    links.close();
  }
});
