/**
 * The seed README's scenarios, run as it tells a user to run them: real kvnode processes on one
 * host, sharing the discovery port.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { TestCluster } from "../support/cluster.ts";
import { waitFor } from "../support/wait.ts";

// Real processes: bun's 5 s default is too short on a busy machine (bunfig has no such setting).
setDefaultTimeout(60_000);

describe("the seed README's 3-node group on one host", () => {
  test("write to the leader, read from both followers, delete, keys, cluster, health", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    const f1 = await c.start();
    const f2 = await c.start();
    await c.awaitMembership([leader, f1, f2], 3);

    const set = await leader.set("username", "alice");
    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({ status: "ok", key: "username" });
    for (const k of ["email", "city"]) expect((await leader.set(k, `${k}-value`)).status).toBe(200);

    for (const f of [f1, f2]) {
      const got = await waitFor(`username on follower ${f.nodeId}`, async () => {
        const r = await f.get("username");
        return r.status === 200 ? r : false;
      });
      expect(got.body).toMatchObject({ key: "username", value: "alice" });
    }

    for (const n of [leader, f1, f2]) await c.awaitInSync(leader, n);
    for (const n of [leader, f1, f2]) {
      const keys = await n.request("/keys");
      expect(keys.body).toEqual({ keys: ["city", "email", "username"], count: 3 });
    }

    const del = await leader.del("username");
    expect(del.body).toMatchObject({ status: "ok", deleted: true });
    for (const f of [f1, f2]) await waitFor(`delete to reach ${f.nodeId}`, async () => (await f.get("username")).status === 404);
    expect((await leader.del("username")).body).toMatchObject({ status: "ok", deleted: false });

    const health = await leader.health();
    expect(health).toMatchObject({ status: "healthy", role: "leader", group: 0, keys: 2 });
    expect(await f1.health()).toMatchObject({ status: "healthy", role: "follower", group: 0, keys: 2 });

    const cluster = await f2.cluster();
    expect(cluster).toMatchObject({ self_node_id: f2.nodeId, self_group: 0, is_leader: false, node_count: 3 });
    const byId = Object.fromEntries(cluster.nodes.map((n: any) => [n.node_id, n]));
    expect(byId[leader.nodeId]).toMatchObject({ address: `127.0.0.1:${leader.clusterPort}`, group_id: 0, is_leader: true });
    expect(byId[f1.nodeId]).toMatchObject({ address: `127.0.0.1:${f1.clusterPort}`, group_id: 0, is_leader: false });
    expect(cluster.groups).toHaveLength(1);
    expect(cluster.groups[0]).toMatchObject({ group_id: 0, leader: leader.nodeId, ring_share: 1, draining: false });
    expect([...cluster.groups[0].members].sort()).toEqual([leader.nodeId, f1.nodeId, f2.nodeId].sort());

    const lc = await leader.cluster();
    expect(lc.replication.followers.map((f: any) => f.node_id).sort()).toEqual([f1.nodeId, f2.nodeId].sort());
    for (const f of lc.replication.followers) expect(f.lag).toBeGreaterThanOrEqual(0);
  });

  test("a write or delete sent to a follower is forwarded to the leader, and readable there at once", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    const f1 = await c.start();
    const f2 = await c.start();
    await c.awaitMembership([leader, f1, f2], 3);
    await c.awaitInSync(leader, f1);

    const value = "pipe|newline\nnul\u0000emoji😀 and ünïcödé";
    const r = await f1.set("odd key|\n😀", value);
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ status: "ok", key: "odd key|\n😀" });
    // Read-your-writes through the follower that forwarded the write.
    expect((await f1.get("odd key|\n😀")).body).toMatchObject({ value });
    expect((await leader.get("odd key|\n😀")).body).toMatchObject({ value });
    await waitFor("the forwarded write on the other follower", async () => (await f2.get("odd key|\n😀")).body.value === value);

    const d = await f2.del("odd key|\n😀");
    expect(d.body).toMatchObject({ status: "ok", deleted: true });
    expect((await f2.get("odd key|\n😀")).status).toBe(404);
    expect((await leader.get("odd key|\n😀")).status).toBe(404);
  });

  test("read-your-writes through a follower holds right after its leader is killed and restarted", async () => {
    // Found by an audit: after the leader came back, the follower relinked seconds later (doubled
    // reconnect delays), so a write through it waited its 1 s, was answered, and a read right
    // after found the older value (3 of 6 rounds). Reads now go to the leader until it has caught
    // up, and a restarted leader is relinked to at once.
    // A long stale time: the follower keeps trying its dead leader (a short one stops the tries).
    await using c = await TestCluster.create({ heartbeatMs: 200, staleMs: 60_000 });
    let leader = await c.start({ leader: true });
    const f = await c.start({ extra: ["-log-level", "debug"] }); // it logs each failed reconnect
    await c.awaitInSync(leader, f);
    const failedReconnects = () => f.log.split("link to leader failed").length - 1;
    const stale: string[] = [];
    for (let round = 1; round <= 4; round++) {
      const before = failedReconnects();
      await leader.kill9();
      // Down until the follower has failed to reconnect 5 times: its delay has grown to 1.6 s.
      await waitFor("the follower to fail 5 reconnects", async () => failedReconnects() - before >= 5, 20_000, 20);
      leader = await c.start({ leader: true, dataDir: leader.dataDir! });
      const value = `round ${round}`;
      await waitFor("a write through the follower to be acknowledged", async () => (await f.set("ryw", value)).status === 200, 20_000, 10);
      const r = await f.get("ryw");
      if (r.body.value !== value) stale.push(`round ${round}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    expect(stale).toEqual([]);
  }, 90_000);

  test("a follower with no leader in its group answers writes with 503 and a JSON error", async () => {
    await using c = await TestCluster.create();
    const lonely = await c.start({ group: 7 });
    const r = await lonely.set("k", "v");
    expect(r.status).toBe(503);
    expect(r.body.error).toMatch(/no leader/i);
    expect((await lonely.del("k")).status).toBe(503);
    expect(await lonely.health()).toMatchObject({ status: "healthy", role: "follower", group: 7 });
  });
});

describe("several groups on one host", () => {
  test("two groups of two: any node takes any key, it is stored on its owner group only, and /cluster shows both groups", async () => {
    await using c = await TestCluster.create();
    const l0 = await c.start({ leader: true, group: 0 });
    const f0 = await c.start({ group: 0 });
    const l1 = await c.start({ leader: true, group: 1 });
    const f1 = await c.start({ group: 1 });
    const all = [l0, f0, l1, f1];
    await c.awaitMembership(all, 4);

    const keys = Array.from({ length: 60 }, (_, i) => `key-${i}`);
    for (const [i, k] of keys.entries()) {
      const n = all[i % 4]!;
      const r = await n.set(k, `v-${k}`);
      expect(r.status).toBe(200);
      // A forwarded answer names the group that stored the key; otherwise the node asked did.
      expect(["0", "1"]).toContain(r.headers.get("x-kvnode-group") ?? String(n.group));
    }
    await c.awaitInSync(l0, f0);
    await c.awaitInSync(l1, f1);
    const [k0, k1] = [(await f0.request("/keys")).body.keys as string[], (await f1.request("/keys")).body.keys as string[]];
    // Sharded: every key on exactly one group, both groups used, nothing lost.
    expect(k0.length).toBeGreaterThan(5);
    expect(k1.length).toBeGreaterThan(5);
    expect([...k0, ...k1].sort()).toEqual([...keys].sort());
    expect(k0.filter((k) => k1.includes(k))).toEqual([]);
    for (const n of all) for (const k of [keys[0]!, keys[59]!]) expect((await n.get(k)).body.value).toBe(`v-${k}`);

    const cl = await f0.cluster();
    expect(cl.node_count).toBe(4);
    expect(cl.groups.map((g: any) => [g.group_id, g.leader, g.members.length])).toEqual([
      [0, l0.nodeId, 2],
      [1, l1.nodeId, 2],
    ]);
    const total = cl.groups.reduce((s: number, g: any) => s + g.ring_share, 0);
    expect(total).toBeCloseTo(1, 4);
    for (const g of cl.groups) expect(g.ring_share).toBeGreaterThan(0.25);
  });
});

describe("followers that start late or restart end up with exactly the leader's data", () => {
  async function writeMany(node: { set(k: string, v: string): Promise<{ status: number }> }, n: number, prefix: string) {
    const batch = 50;
    for (let i = 0; i < n; i += batch) {
      const rs = await Promise.all(Array.from({ length: Math.min(batch, n - i) }, (_, j) => node.set(`${prefix}${i + j}`, `value-${i + j}`)));
      for (const r of rs) expect(r.status).toBe(200);
    }
  }

  test("a follower started after 1000 writes and deletes catches up", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    await writeMany(leader, 1000, "k");
    for (let i = 0; i < 1000; i += 10) expect((await leader.del(`k${i}`)).body.deleted).toBe(true);

    const late = await c.start();
    await c.awaitInSync(leader, late);
    const [lk, fk] = await Promise.all([leader.request("/keys"), late.request("/keys")]);
    expect(lk.body.count).toBe(900);
    expect(fk.body).toEqual(lk.body);
    expect((await late.get("k999")).body).toMatchObject({ value: "value-999" });
    expect((await late.get("k10")).status).toBe(404);
  });

  test("a follower killed and restarted catches up with what it missed", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    const f = await c.start();
    await writeMany(leader, 200, "a");
    await c.awaitInSync(leader, f);

    await f.kill9();
    await writeMany(leader, 300, "b");
    await leader.del("a0");

    const again = await c.start();
    await c.awaitInSync(leader, again);
    const [lk, fk] = await Promise.all([leader.request("/keys"), again.request("/keys")]);
    expect(lk.body.count).toBe(499);
    expect(fk.body).toEqual(lk.body);
  });

  test("a follower whose link drops reconnects and catches up (leader restarted keeps nothing: full transfer)", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true });
    const f = await c.start();
    await writeMany(leader, 100, "x");
    await c.awaitInSync(leader, f);

    // The in-memory leader restarts empty under a new history: the follower must drop the old data.
    await leader.stop();
    const leader2 = await c.start({ leader: true });
    await leader2.set("fresh", "1");
    await c.awaitInSync(leader2, f);
    expect((await f.request("/keys")).body).toEqual({ keys: ["fresh"], count: 1 });
    const fc = await f.cluster();
    expect(fc.replication.full_transfers).toBeGreaterThanOrEqual(1);
    // Its lag counts from the new leader's head, not the old one's (it showed 99 behind).
    expect({ leader_seq: fc.replication.leader_seq, lag: fc.replication.lag, health_lag: (await f.health()).lag }).toEqual({ leader_seq: 1, lag: 0, health_lag: 0 });
  });
});

describe("membership", () => {
  test("a leader stopped with SIGTERM exits 0 and disappears from its peers' /cluster at once", async () => {
    await using c = await TestCluster.create({ heartbeatMs: 200, staleMs: 60_000 });
    const leader = await c.start({ leader: true });
    const f1 = await c.start();
    const f2 = await c.start();
    await c.awaitMembership([leader, f1, f2], 3);
    expect(await leader.stop("SIGTERM")).toBe(0);
    // staleMs is a minute: only the leave announcement can remove it this fast.
    await c.awaitMembership([f1, f2], 2, 5_000);
    for (const f of [f1, f2]) expect((await f.cluster()).nodes.map((n: any) => n.node_id)).not.toContain(leader.nodeId);
  });

  test("a node killed with SIGKILL is dropped after the stale time", async () => {
    await using c = await TestCluster.create({ heartbeatMs: 100, staleMs: 800 });
    const leader = await c.start({ leader: true });
    const f1 = await c.start();
    await c.awaitMembership([leader, f1], 2);
    await leader.kill9();
    await c.awaitMembership([f1], 1, 5_000);
    expect((await f1.set("k", "v")).status).toBe(503);
  });

  test("SIGINT also shuts a node down cleanly with status 0", async () => {
    await using c = await TestCluster.create();
    const n = await c.start({ leader: true });
    expect(await n.stop("SIGINT")).toBe(0);
    expect(n.log).toMatch(/kvnode stopped/);
  });
});

describe("a node's memory in /cluster", () => {
  test("shows the store's keys, table and buffers, and the buffers shrink after most keys are deleted", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true, inMemory: true });
    const value = "m".repeat(1000);
    const n = 3000; // ~3 MiB of entries: several 1 MiB buffers
    for (let i = 0; i < n; i += 100) {
      const rs = await Promise.all(Array.from({ length: 100 }, (_, j) => leader.set(`mem${i + j}`, value)));
      for (const r of rs) expect(r.status).toBe(200);
    }
    const full = (await leader.cluster()).memory;
    expect(full.keys).toBe(n);
    expect(full.table_places * 0.7).toBeGreaterThanOrEqual(n);
    expect(full.arena_live_bytes).toBeGreaterThanOrEqual(n * 1000);
    expect(full.arena_bytes).toBeGreaterThanOrEqual(full.arena_live_bytes);
    expect(full.arena_bytes).toBeLessThan(full.arena_live_bytes + 2 * 2 ** 20);
    expect(full.rss_bytes).toBeGreaterThan(full.arena_bytes);
    for (let i = 0; i < n; i += 100) {
      const rs = await Promise.all(Array.from({ length: 100 }, (_, j) => (j % 10 === 0 ? null : leader.del(`mem${i + j}`))));
      for (const r of rs) if (r) expect(r.body.deleted).toBe(true);
    }
    const after = (await leader.cluster()).memory;
    expect(after.keys).toBe(n / 10);
    expect(after.tombstones).toBe(n - n / 10);
    expect(after.arena_bytes).toBeLessThan(full.arena_bytes / 2);
    expect((await leader.get("mem10")).body.value).toBe(value);
  });
});
