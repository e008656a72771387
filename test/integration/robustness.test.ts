/**
 * Bad input from the network never crashes or confuses a node: garbage datagrams on the discovery
 * port, garbage frames on the replication port, and a follower too slow for the leader's history.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { connect } from "node:net";
import { join } from "node:path";
import { encodeDatagram, DatagramType, FrameType, encodeFrame, PROTOCOL_VERSION, RequestOp } from "../../src/protocol/index.ts";
import { SO_REUSEADDR } from "../../src/discovery/udp.ts";
import { TestCluster, forwardedRequest, freeUdpPort } from "../support/cluster.ts";
import { waitFor } from "../support/wait.ts";

// Real processes: bun's 5 s default is too short on a busy machine (bunfig has no such setting).
setDefaultTimeout(60_000);

async function udpSender() {
  const s = await Bun.udpSocket({ hostname: "127.0.0.1", port: 0 });
  s.setBroadcast(true);
  return s;
}

/** Send raw bytes to a TCP port; resolves when the peer closes the connection (or after `idleMs` of nothing). */
function tcpSend(port: number, bytes: Uint8Array): Promise<{ closedByPeer: boolean; received: number }> {
  return new Promise((resolve, reject) => {
    let received = 0;
    let done = false;
    const finish = (closedByPeer: boolean) => {
      if (!done) {
        done = true;
        resolve({ closedByPeer, received });
      }
    };
    Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        open(s) {
          s.write(bytes);
        },
        data(_s, d) {
          received += d.length;
        },
        close() {
          finish(true);
        },
        connectError(_s, e) {
          reject(e);
        },
      },
    }).then((s) => setTimeout(() => (finish(false), s.end()), 5_000));
  });
}

/** Run kvnode with `args` until it exits by itself (killed after 15 s): its status and stderr. */
async function runToExit(args: string[]): Promise<{ code: number; stderr: string }> {
  const proc = Bun.spawn([process.execPath, "src/cli/main.ts", ...args], { cwd: join(import.meta.dir, "..", ".."), stderr: "pipe", stdout: "ignore" });
  const timer = setTimeout(() => proc.kill(), 15_000);
  const [code, stderr] = await Promise.all([proc.exited, new Response(proc.stderr).text()]);
  clearTimeout(timer);
  return { code, stderr };
}

describe("the discovery port", () => {
  test("several sockets on one host can bind the same UDP port with SO_REUSEADDR (flags: 16)", async () => {
    // Pins the undocumented Bun option the whole one-host cluster relies on (PLATFORM.md).
    const port = await freeUdpPort();
    const opts = { hostname: "0.0.0.0", port, socket: { data() {} } };
    const a = await Bun.udpSocket(Object.assign({}, opts, { flags: SO_REUSEADDR }));
    const b = await Bun.udpSocket(Object.assign({}, opts, { flags: SO_REUSEADDR }));
    expect(a.port).toBe(port);
    expect(b.port).toBe(port);
    a.close();
    b.close();
  });

  test("garbage, truncated, oversized and foreign-cluster datagrams are dropped and counted; nodes stay healthy", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    const f = await c.start();
    await c.awaitMembership([leader, f], 2);

    const s = await udpSender();
    const valid = encodeDatagram({
      type: DatagramType.Announce, cluster: c.name, nodeId: "feedfacefeedface", host: "127.0.0.1",
      clusterPort: 1, apiPort: 1, group: 0, leader: true, draining: false, moving: false, term: 99, seq: 0, historyId: "x", keys: 0,
    });
    const foreign = encodeDatagram({
      type: DatagramType.Announce, cluster: "someone-else", nodeId: "0123456789abcdef", host: "127.0.0.1",
      clusterPort: 2, apiPort: 2, group: 0, leader: true, draining: false, moving: false, term: 1, seq: 0, historyId: "y", keys: 0,
    });
    const flipped = Uint8Array.from(valid);
    flipped[flipped.length - 3]! ^= 0x40;
    const bad = [
      new TextEncoder().encode("hello there"),
      crypto.getRandomValues(new Uint8Array(300)),
      valid.subarray(0, valid.length - 5),
      flipped,
      new Uint8Array(1400 + 100),
      foreign,
      new Uint8Array(0),
    ];
    for (let round = 0; round < 5; round++) for (const b of bad) s.send(b, c.discoveryPort, "127.255.255.255");
    s.close();

    await waitFor("both nodes to count the dropped datagrams", async () => {
      for (const n of [leader, f]) {
        const d = (await n.cluster()).discovery.dropped;
        const total = Object.values(d as Record<string, number>).reduce((a, b) => a + b, 0);
        if (total < 25) return false;
      }
      return true;
    });
    const d = (await f.cluster()).discovery.dropped;
    expect(d["wrong-cluster"]).toBeGreaterThanOrEqual(5);
    expect(d["too-large"]).toBeGreaterThanOrEqual(5);
    for (const n of [leader, f]) {
      const cl = await n.cluster();
      expect(cl.node_count).toBe(2);
      expect(cl.nodes.map((x: any) => x.node_id)).not.toContain("0123456789abcdef");
      expect((await n.health()).status).toBe("healthy");
    }
    // Replication still works.
    expect((await leader.set("after", "garbage")).status).toBe(200);
    await waitFor("replication after garbage", async () => (await f.get("after")).status === 200);
  });
});

describe("the API port", () => {
  test("a second node on a port another node serves fails to start, naming the port; the first keeps serving", async () => {
    await using c = await TestCluster.create();
    const n = await c.start({ leader: true, inMemory: true });
    const args = c.args({ inMemory: true, api: n.apiPort, group: 1, leader: true });
    const { code, stderr } = await runToExit(args);
    expect(code).toBe(1);
    expect(stderr).toContain(`port ${n.apiPort} in use`);
    expect((await n.set("still", "here")).status).toBe(200);
    expect((await n.get("still")).body).toEqual({ key: "still", value: "here", version: 1 });
  });

  test("a second node on a cluster port another node serves fails to start, naming the port", async () => {
    await using c = await TestCluster.create();
    const n = await c.start({ leader: true, inMemory: true });
    const args = c.args({ inMemory: true, port: n.clusterPort, group: 1, leader: true });
    const { code, stderr } = await runToExit(args);
    expect(code).toBe(1);
    expect(stderr).toContain(`Is port ${n.clusterPort} in use?`);
    expect((await n.set("still", "here")).status).toBe(200);
  });
});

describe("starting and stopping", () => {
  test("a follower that hears no leader of its group says so at start, and follows one that starts later", async () => {
    await using c = await TestCluster.create();
    const f = await c.start({ inMemory: true });
    expect(f.log).toMatch(/WARN no leader known for this group yet/);
    expect((await f.set("k", "v")).status).toBe(503);
    const l = await c.start({ leader: true, inMemory: true });
    await c.awaitInSync(l, f);
    expect((await f.set("k", "v")).status).toBe(200);
    expect(f.log).toMatch(/following leader/);
  });

  test("a second -leader for a group that has one refuses to start, naming it; the followers keep their data", async () => {
    await using c = await TestCluster.create();
    const a = await c.start({ leader: true });
    const f = await c.start({});
    for (let i = 0; i < 10; i++) expect((await a.set(`k${i}`, `v${i}`)).status).toBe(200);
    await c.awaitInSync(a, f);
    // A fresh node has term 1, as the leader does: it would have won on a lower node id half the time.
    // Started twice on the same data dir (as a restart-on-failure service would): a refused start
    // must not leave a higher term behind that wins the second time.
    const args = c.args({ leader: true, dataDir: c.newDataDir() });
    for (let attempt = 0; attempt < 2; attempt++) {
      const { code, stderr } = await runToExit(args);
      expect(code).toBe(1);
      expect(stderr).toContain(`group 0 already has a leader (node ${a.nodeId}`);
    }
    expect((await f.health()).keys).toBe(10);
    expect((await a.set("more", "1")).status).toBe(200);
    await c.awaitInSync(a, f);
    expect((await f.get("more")).body.value).toBe("1");
  });
});

describe("the replication port", () => {
  test("garbage and oversized frames close that connection; the node keeps serving and replicating", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    const f = await c.start();
    await c.awaitInSync(leader, f);

    const header = (type: number, extra: number[] = []) => {
      const b = Buffer.alloc(26 + extra.length);
      b.writeUInt32BE(22 + extra.length, 0);
      b[4] = PROTOCOL_VERSION;
      b[5] = type;
      Buffer.from(extra).copy(b, 26);
      return b;
    };
    const hugeLength = Buffer.from([0xff, 0xff, 0xff, 0xf0, PROTOCOL_VERSION, 1]);
    const wrongVersion = Buffer.from([0, 0, 0, 30, 99, 1, 0, 0]);
    const unknownType = header(200);
    const truncatedHello = header(FrameType.Hello, [0, 0, 0, 50, 1, 2]);
    const ackBeforeHello = encodeFrame({ type: FrameType.Ack, group: 0, term: 0, seq: 5 });
    const wrongCluster = encodeFrame({ type: FrameType.Hello, group: 0, term: 0, seq: 0, cluster: "other", nodeId: "n", historyId: "" });
    const wrongGroup = encodeFrame({ type: FrameType.Hello, group: 3, term: 0, seq: 0, cluster: c.name, nodeId: "n", historyId: "" });
    const http = new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    // A request link that then sends something other than a Request.
    const requestThenHello = Buffer.concat([
      encodeFrame({ type: FrameType.Request, group: 0, term: 0, seq: 1, op: RequestOp.Get, flags: 0, hops: 1, key: "k", value: "" }),
      encodeFrame({ type: FrameType.Hello, group: 0, term: 0, seq: 0, cluster: c.name, nodeId: "n", historyId: "" }),
    ]);
    const random = crypto.getRandomValues(new Uint8Array(4096));

    for (const port of [leader.clusterPort, f.clusterPort])
      for (const bytes of [hugeLength, wrongVersion, unknownType, truncatedHello, ackBeforeHello, wrongCluster, wrongGroup, http, random, requestThenHello]) {
        const r = await tcpSend(port, bytes);
        expect(r.closedByPeer).toBe(true);
      }

    expect(leader.log).toMatch(/closing replication connection/);
    for (const n of [leader, f]) expect((await n.health()).status).toBe("healthy");
    expect((await leader.set("still", "works")).status).toBe(200);
    await waitFor("replication after garbage frames", async () => (await f.get("still")).status === 200);
    expect((await leader.cluster()).replication.followers.length).toBe(1);
  });

  test("a frame trickling in a byte at a time is closed after the idle time; the node keeps replicating", async () => {
    // Found by an audit: each byte pushed the idle deadline back, so a frame never finished held
    // its connection (and up to a largest frame of memory) for as long as bytes kept coming.
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true, inMemory: true });
    const f = await c.start({ inMemory: true });
    await c.awaitInSync(leader, f);
    const start = Buffer.alloc(100_000);
    start.writeUInt32BE(1_000_000, 0);
    start[4] = PROTOCOL_VERSION;
    start[5] = FrameType.Request;
    let closed = false;
    const socket = await Bun.connect({ hostname: "127.0.0.1", port: leader.clusterPort, socket: { data() {}, close: () => void (closed = true) } });
    socket.write(start);
    const trickle = setInterval(() => socket.write(new Uint8Array([0])), 500);
    try {
      const opened = performance.now();
      await waitFor("the leader to close the stalled connection", () => closed, 25_000, 100);
      // The idle deadline (10 s), on Bun's 4 s timer grid.
      expect(performance.now() - opened).toBeLessThan(20_000);
    } finally {
      clearInterval(trickle);
      socket.end();
    }
    expect(leader.log).toMatch(/stalled mid-frame/);
    expect((await leader.set("after", "stall")).status).toBe(200);
    await waitFor("replication after the stalled connection", async () => (await f.get("after")).status === 200);
  }, 40_000);

  test("forwarded requests with bad input get the API's error answers; the node keeps serving", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true, inMemory: true, extra: ["-max-key-bytes", "16", "-max-value-bytes", "32"] });
    const f = await c.start({ inMemory: true, extra: ["-max-key-bytes", "16", "-max-value-bytes", "32"] });
    await c.awaitInSync(leader, f);
    for (const n of [leader, f]) {
      const cases: [string, Promise<{ status: number; body: any }>, number][] = [
        ["empty key", forwardedRequest(n, "Get", "", { hops: 1, group: 0 }), 400],
        ["key too large", forwardedRequest(n, "Delete", "k".repeat(17), { hops: 1, group: 0 }), 413],
        ["value too large", forwardedRequest(n, "Set", "k", { value: "v".repeat(33), hops: 1, group: 0 }), 413],
        ["missing key", forwardedRequest(n, "Get", "absent", { hops: 1, group: 0 }), 404],
      ];
      for (const [what, pending, status] of cases) {
        const r = await pending;
        expect({ what, node: n.nodeId, status: r.status, error: typeof r.body.error }).toEqual({ what, node: n.nodeId, status, error: "string" });
      }
    }
    // A forwarded write through the follower lands on the leader and reads back through both.
    const w = await forwardedRequest(f, "Set", "k", { value: "v", hops: 1, group: 0 });
    expect(w).toMatchObject({ status: 200, nodeId: leader.nodeId, group: 0 });
    for (const n of [leader, f]) expect((await forwardedRequest(n, "Get", "k", { hops: 1, group: 0 })).body).toMatchObject({ key: "k", value: "v" });
    for (const n of [leader, f]) expect((await n.health()).status).toBe("healthy");
  });

  test("a request link whose peer never reads its answers is closed before they outgrow their bound", async () => {
    await using c = await TestCluster.create();
    const n = await c.start({ leader: true, inMemory: true });
    expect((await n.set("big", "x".repeat(1 << 20))).status).toBe(200);
    // 200 reads of a 1 MiB value, pipelined on one connection that never reads: ~200 MiB of answers.
    const frames = Buffer.concat(
      Array.from({ length: 200 }, (_, i) => encodeFrame({ type: FrameType.Request, group: 0, term: 0, seq: i + 1, op: RequestOp.Get, flags: 0, hops: 1, key: "big", value: "" })),
    );
    const sock = connect({ host: "127.0.0.1", port: n.clusterPort });
    let closed = false;
    sock.on("close", () => (closed = true));
    sock.on("error", () => {});
    sock.pause(); // never read
    sock.write(frames);
    await waitFor("the node to close the request link", () => closed, 30_000);
    const rss = Number(/^VmRSS:\s+(\d+) kB/m.exec(await Bun.file(`/proc/${n.proc.pid}/status`).text())?.[1]) * 1024;
    // Loose: the answers built before the close are garbage not yet collected; unbounded, ~200 MiB would stay queued on top.
    expect(rss).toBeLessThan(320 * 1024 * 1024);
    expect((await n.health()).status).toBe("healthy");
    expect((await n.get("big")).body.value.length).toBe(1 << 20);
  }, 60_000);
});

describe("a follower too slow for the leader's history", () => {
  test("is resynchronised with a full transfer instead of growing the leader's memory, and ends identical", async () => {
    await using c = await TestCluster.create({ heartbeatMs: 200, staleMs: 60_000 });
    const leader = await c.start({ leader: true, extra: ["-history-entries", "100"] });
    const f = await c.start();
    await c.awaitInSync(leader, f);
    const before = (await f.cluster()).replication.full_transfers;

    // Freeze the follower: its socket buffers fill, the leader's pump stops at its bound, and the
    // history (100 writes) moves past the follower's position.
    f.proc.kill("SIGSTOP");
    try {
      const value = "v".repeat(4096);
      for (let i = 0; i < 4000; i += 100) {
        const rs = await Promise.all(Array.from({ length: 100 }, (_, j) => leader.set(`big${i + j}`, value)));
        for (const r of rs) expect(r.status).toBe(200);
      }
      await leader.del("big0");
    } finally {
      f.proc.kill("SIGCONT");
    }
    await c.awaitInSync(leader, f, 30_000);
    const [lk, fk] = await Promise.all([leader.request("/keys"), f.request("/keys")]);
    expect(lk.body.count).toBe(3999);
    expect(fk.body).toEqual(lk.body);
    expect((await f.cluster()).replication.full_transfers).toBeGreaterThan(before);
    expect(leader.log).toMatch(/fell behind the history/);
  });
});
