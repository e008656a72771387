/**
 * The node's service with a real Leader, Store and Membership and a log that fails on command:
 * how ring epochs follow a failed log write (found by review).
 */
import { expect, test } from "bun:test";
import { Membership } from "../../src/discovery/membership.ts";
import { silentLogger } from "../../src/lib/log.ts";
import { defaults } from "../../src/node/config.ts";
import { createService } from "../../src/node/service.ts";
import { Leader } from "../../src/replication/leader.ts";
import { HashRing } from "../../src/ring/ring.ts";
import { RequestLinks } from "../../src/routing/link.ts";
import { Store } from "../../src/store/store.ts";

const RING_01 = new HashRing([0, 1], undefined, (s) => Bun.hash.murmur32v3(s));

test("a ring that began among writes the log then failed begins before them: a write made under it is not taken for older than a copy moved in", async () => {
  // Found by review: a ring began at the last proposed sequence; the log failed it, its sequence
  // went to a client write under the new ring, and that write counted as the ring before's.
  const k = Array.from({ length: 1000 }, (_, i) => `k${i}`).find((x) => RING_01.ownerOf(x) === 1)!; // group 1's on [0, 1], ours on [0]
  const x = Array.from({ length: 1000 }, (_, i) => `x${i}`).find((x) => RING_01.ownerOf(x) === 0)!;
  const store = new Store();
  const leader = new Leader({ wal: { append() {} }, store, group: 0, term: 1, historyId: "h", cluster: "c", historyEntries: 1000, now: () => 0, log: silentLogger, schedule() {} });
  const member = (nodeId: string, group: number, draining: boolean) => ({ nodeId, host: "127.0.0.1", clusterPort: 1, apiPort: 1, group, leader: true, draining, moving: false, term: 1, seq: 0, historyId: "h", keys: 0 });
  const membership = new Membership({ ...member("self", 0, false), lastSeenMs: 0 });
  membership.observe({ type: 1, cluster: "c", ...member("g1", 1, false) } as never, 0);
  const links = new RequestLinks(1 << 20, silentLogger);
  const { service, settle, logFailed } = createService({
    links, config: { ...defaults, group: 0, leader: true, dataDir: null }, nodeId: "self", store, leader, follower: null, membership, durability: null,
    applyWaiters: new Set(), announce() {}, cluster: (() => ({})) as never, health: (() => ({})) as never, now: () => 0, log: silentLogger,
  } as never);
  try {
    settle();
    void service.set(x, "on its way to the log", { hops: 0 } as never); // proposed, not durable
    membership.observe({ type: 1, cluster: "c", ...member("g1", 1, true) } as never, 0); // group 1 drains: k is ours now
    await service.get(x, { hops: 0 } as never); // the service takes the new ring
    leader.failed(1, new Error("EIO"));
    logFailed(1);
    const w = (await service.set(k, "NEW, acknowledged", { hops: 0 } as never)) as unknown as { body: { version: number } };
    leader.durable(w.body.version);
    const imported = service.importEntries([{ key: k, value: "OLD, from group 1" }], { hops: 0, targetGroup: 0 } as never);
    leader.durable(leader.proposed);
    expect(((await imported) as { body: unknown }).body).toMatchObject({ imported: 0, skipped: 1 });
    expect(store.get(k)?.value).toBe("NEW, acknowledged");
  } finally {
    links.close();
  }
});

test("a follower's lag counts its leader's announced head in the same history, not only what its link brought", async () => {
  // Found by an audit: while relinking, a follower hundreds of writes behind showed lag 0.
  const { createViews } = await import("../../src/node/views.ts");
  const { Follower } = await import("../../src/replication/follower.ts");
  const store = new Store();
  const follower = new Follower(store, 0, "c", "self", {}, { historyId: "h1", seq: 5, term: 1 });
  const member = (nodeId: string, leader: boolean, seq: number, historyId: string) => ({ nodeId, host: "127.0.0.1", clusterPort: 1, apiPort: 1, group: 0, leader, draining: false, moving: false, term: 1, seq, historyId, keys: 0 });
  const membership = new Membership({ ...member("self", false, 5, "h1"), lastSeenMs: 0 });
  const views = createViews({
    config: { ...defaults, group: 0, leader: false, dataDir: null }, nodeId: "self", historyId: "h1", store, leader: null, follower, membership, durability: null, mover: null,
    currentRing: () => new HashRing([0]), discoveryStats: () => ({ received: 0, accepted: 0, dropped: {}, sent: 0, sendErrors: 0 }), linkUp: () => false, now: () => 0,
  } as never);
  membership.observe({ type: 1, cluster: "c", ...member("L", true, 25, "h1") } as never, 0);
  expect(views.health().lag).toBe(20);
  expect(views.cluster().replication.leader_seq).toBe(25);
  // A leader on another history (restarted in memory, say): its sequence says nothing of ours.
  membership.observe({ type: 1, cluster: "c", ...member("L", true, 3, "h2") } as never, 0);
  expect(views.health().lag).toBe(0);
});
