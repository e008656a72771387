/**
 * The seed README's 3-node group, each node on a "host" of its own: three network namespaces on a
 * private bridge with a subnet picked for this run (PLATFORM.md, "Several hosts on one machine").
 * Nodes get `-host 10.a.b.i` and derive the broadcast address 10.a.b.255 from the interface's
 * netmask, so discovery crosses the bridge as it would cross a LAN. The bridge itself has
 * 10.a.b.254 so this (root-namespace) process can reach the nodes' HTTP APIs; nothing else routes
 * there (ip_forward stays as it is, the namespaces have no default route).
 *
 * Needs root and `ip netns`; skipped with a printed reason otherwise. Everything it creates is
 * named after this run and removed in afterAll, when setup fails, and at process exit.
 */
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { rmSync } from "node:fs";
import { type NodeProc, TestCluster } from "../support/cluster.ts";
import { waitFor } from "../support/wait.ts";

// Real processes: bun's 5 s default is too short on a busy machine (bunfig has no such setting).
setDefaultTimeout(60_000);

interface Run {
  ok: boolean;
  out: string;
  err: string;
}

function run(cmd: string[]): Run {
  const r = Bun.spawnSync(cmd, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  return { ok: r.exitCode === 0, out: r.stdout.toString(), err: r.stderr.toString().trim() };
}

function must(cmd: string[]): string {
  const r = run(cmd);
  if (!r.ok) throw new Error(`\`${cmd.join(" ")}\` failed: ${r.err}`);
  return r.out;
}

function randomHex(chars: number): string {
  const b = new Uint8Array(Math.ceil(chars / 2));
  crypto.getRandomValues(b);
  return Buffer.from(b).toString("hex").slice(0, chars);
}

function randomInt(min: number, max: number): number {
  const b = new Uint32Array(1);
  crypto.getRandomValues(b);
  return min + (b[0]! % (max - min + 1));
}

/** Why these tests cannot run here, or null when they can (probed by really adding a namespace). */
function skipReason(): string | null {
  if (process.platform !== "linux") return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return `network namespaces need root (uid is ${process.getuid?.()})`;
  if (!Bun.which("ip")) return "the `ip` command (iproute2) is not installed";
  const probe = `kvprobe${randomHex(6)}`;
  const add = run(["ip", "netns", "add", probe]);
  if (!add.ok) return `\`ip netns add\` is not permitted: ${add.err}`;
  const del = run(["ip", "netns", "del", probe]);
  if (!del.ok) return `\`ip netns del ${probe}\` failed: ${del.err}`;
  return null;
}

const reason = skipReason();
if (reason) console.log(`netns.test.ts: skipping the network-namespace tests: ${reason}`);

// ---------- IPv4 helpers for picking a subnet nobody routes yet

function ipToInt(ip: string): number {
  return ip.split(".").reduce((n, p) => (n << 8) | Number(p), 0) >>> 0;
}

/** Every IPv4 prefix in any routing table of the root namespace, as [network, bits]. */
function routedPrefixes(): [number, number][] {
  const types = new Set(["unicast", "local", "broadcast", "multicast", "throw", "unreachable", "prohibit", "blackhole", "nat", "anycast"]);
  const out: [number, number][] = [];
  for (const line of must(["ip", "-4", "route", "show", "table", "all"]).split("\n")) {
    const words = line.trim().split(/\s+/);
    let dst = words[0] ?? "";
    if (types.has(dst)) dst = words[1] ?? "";
    if (dst === "" || dst === "default") continue;
    const [addr, bits = "32"] = dst.split("/");
    if (!/^\d+\.\d+\.\d+\.\d+$/.test(addr!)) continue;
    out.push([ipToInt(addr!), Number(bits)]);
  }
  return out;
}

function overlaps(a: [number, number], b: [number, number]): boolean {
  const bits = Math.min(a[1], b[1]);
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return ((a[0] & mask) >>> 0) === ((b[0] & mask) >>> 0);
}

/** "10.a.b" with a in 100..250: a /24 that no route of this machine covers (the default route aside). */
function pickSubnet(): string {
  const routed = routedPrefixes();
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = `10.${randomInt(100, 250)}.${randomInt(0, 255)}`;
    const mine: [number, number] = [ipToInt(`${base}.0`), 24];
    if (!routed.some((r) => overlaps(r, mine))) return base;
  }
  throw new Error("could not find a free 10.x.y.0/24 subnet in 50 attempts");
}

// ---------- the hosts

const HOSTS = 3;

class Lab {
  readonly id = randomHex(4);
  readonly bridge = `kvb${this.id}`;
  readonly subnet = reason ? "10.0.0" : pickSubnet();
  readonly ns = Array.from({ length: HOSTS }, (_, i) => `kv${this.id}-${i + 1}`);
  /** Root-namespace end of each host's veth pair (at most 15 characters). */
  readonly veth = Array.from({ length: HOSTS }, (_, i) => `kv${this.id}v${i + 1}`);
  /** What this run created, so teardown removes exactly that and nothing else. */
  private created = { bridge: false, ns: new Set<string>(), veth: new Set<string>() };
  cluster: TestCluster | null = null;

  ip(i: number): string {
    return `${this.subnet}.${i + 1}`;
  }

  setUp(): void {
    must(["ip", "link", "add", this.bridge, "type", "bridge"]);
    this.created.bridge = true;
    must(["ip", "link", "set", this.bridge, "up"]);
    for (let i = 0; i < HOSTS; i++) {
      const ns = this.ns[i]!;
      must(["ip", "netns", "add", ns]);
      this.created.ns.add(ns);
      must(["ip", "link", "add", this.veth[i]!, "type", "veth", "peer", "name", "eth0", "netns", ns]);
      this.created.veth.add(this.veth[i]!);
      must(["ip", "link", "set", this.veth[i]!, "master", this.bridge]);
      must(["ip", "link", "set", this.veth[i]!, "up"]);
      must(["ip", "-n", ns, "addr", "add", `${this.ip(i)}/24`, "brd", `${this.subnet}.255`, "dev", "eth0"]);
      must(["ip", "-n", ns, "link", "set", "eth0", "up"]);
      must(["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The root namespace's way in: only this /24, only over our bridge.
    must(["ip", "addr", "add", `${this.subnet}.254/24`, "brd", `${this.subnet}.255`, "dev", this.bridge]);
    for (let i = 0; i < HOSTS; i++) {
      const route = must(["ip", "-4", "route", "get", this.ip(i)]);
      if (!route.includes(`dev ${this.bridge}`)) throw new Error(`${this.ip(i)} does not route over ${this.bridge}: ${route.trim()}`);
    }
  }

  /** Start the nodes: the leader on host 1, followers on hosts 2 and 3. */
  async startNodes(): Promise<NodeProc[]> {
    this.cluster = await TestCluster.create();
    const nodes: NodeProc[] = [];
    for (let i = 0; i < HOSTS; i++) nodes.push(await this.cluster.start({ host: this.ip(i), leader: i === 0, prefix: ["ip", "netns", "exec", this.ns[i]!] }));
    return nodes;
  }

  /** Kill the nodes (SIGKILL, waited for), then remove namespaces, veths and the bridge. Idempotent. */
  async tearDown(): Promise<void> {
    const c = this.cluster;
    this.cluster = null;
    if (c) await Promise.all(c.nodes.map((n) => Promise.race([n.kill9(), new Promise((r) => setTimeout(r, 5_000))])));
    if (c) rmSync(c.dir, { recursive: true, force: true }); // the nodes' data dirs
    this.tearDownSync();
  }

  /** The synchronous part, also used from process.on("exit") where nothing can be awaited. */
  tearDownSync(): void {
    for (const n of this.cluster?.nodes ?? []) if (n.alive) n.proc.kill("SIGKILL");
    const problems: string[] = [];
    for (const ns of this.created.ns) {
      const r = run(["ip", "netns", "del", ns]);
      if (r.ok || !run(["ip", "netns", "list"]).out.split("\n").some((l) => l.split(" ")[0] === ns)) this.created.ns.delete(ns);
      else problems.push(`ip netns del ${ns}: ${r.err}`);
    }
    // Deleting a namespace deletes its eth0 and with it our end of the pair; remove any left.
    for (const v of this.created.veth) {
      if (run(["ip", "link", "show", "dev", v]).ok) {
        const r = run(["ip", "link", "del", v]);
        if (!r.ok) {
          problems.push(`ip link del ${v}: ${r.err}`);
          continue;
        }
      }
      this.created.veth.delete(v);
    }
    if (this.created.bridge) {
      const r = run(["ip", "link", "del", this.bridge]);
      if (r.ok || !run(["ip", "link", "show", "dev", this.bridge]).ok) this.created.bridge = false;
      else problems.push(`ip link del ${this.bridge}: ${r.err}`);
    }
    if (problems.length > 0) console.error(`netns.test.ts teardown left things behind:\n${problems.join("\n")}`);
  }

  leftovers(): string[] {
    const names = [...this.ns, ...this.veth, this.bridge];
    const seen = `${run(["ip", "netns", "list"]).out}\n${run(["ip", "-o", "link"]).out}`;
    return names.filter((n) => new RegExp(`(^|[\\s:])${n}([\\s:@]|$)`, "m").test(seen));
  }
}

const keysOf = async (n: NodeProc) => (await n.request("/keys")).body as { keys: string[]; count: number };

describe.skipIf(reason !== null)(`kvnode across three network-namespace hosts${reason ? ` (skipped: ${reason})` : ""}`, () => {
  const lab = new Lab();
  const onExit = () => lab.tearDownSync();
  let leader: NodeProc;
  let f2: NodeProc; // on host 2
  let f3: NodeProc; // on host 3

  beforeAll(async () => {
    process.on("exit", onExit);
    try {
      lab.setUp();
      [leader, f2, f3] = (await lab.startNodes()) as [NodeProc, NodeProc, NodeProc];
    } catch (e) {
      const logs = (lab.cluster?.nodes ?? []).map((n) => `--- ${n.host} ---\n${n.log}`).join("\n");
      await lab.tearDown();
      throw new Error(`${(e as Error).message}\n${logs}`);
    }
  }, 60_000);

  afterAll(async () => {
    await lab.tearDown();
    process.off("exit", onExit);
    expect(lab.leftovers()).toEqual([]);
  }, 30_000);

  test("each node derives its subnet's broadcast address and finds the others on the bridge", async () => {
    const b = lab.subnet;
    for (const n of [leader, f2, f3]) expect(n.log).toContain(`broadcast=${b}.255`);
    await lab.cluster!.awaitMembership([leader, f2, f3], 3, 15_000);

    const lc = await leader.cluster();
    expect(lc).toMatchObject({ self_node_id: leader.nodeId, self_group: 0, is_leader: true, node_count: 3 });
    const byId = Object.fromEntries(lc.nodes.map((m: any) => [m.node_id, m]));
    expect(byId[leader.nodeId]).toMatchObject({ address: `${b}.1:${leader.clusterPort}`, api_address: `${b}.1:${leader.apiPort}`, is_leader: true });
    expect(byId[f2.nodeId]).toMatchObject({ address: `${b}.2:${f2.clusterPort}`, api_address: `${b}.2:${f2.apiPort}`, group_id: 0, is_leader: false });
    expect(byId[f3.nodeId]).toMatchObject({ address: `${b}.3:${f3.clusterPort}`, api_address: `${b}.3:${f3.apiPort}`, group_id: 0, is_leader: false });
    expect(lc.groups).toHaveLength(1);
    expect(lc.groups[0]).toMatchObject({ group_id: 0, leader: leader.nodeId, ring_share: 1, draining: false });
    expect([...lc.groups[0].members].sort()).toEqual([leader.nodeId, f2.nodeId, f3.nodeId].sort());
    expect(lc.discovery.accepted).toBeGreaterThan(0);
    expect(lc.discovery.send_errors).toBe(0);

    // The followers see the leader at host 1's address, and link to it there.
    for (const f of [f2, f3]) {
      const fc = await f.cluster();
      expect(fc.nodes.find((m: any) => m.node_id === leader.nodeId)).toMatchObject({ address: `${b}.1:${leader.clusterPort}`, is_leader: true });
      expect(fc.replication.leader_id).toBe(leader.nodeId);
    }
    await waitFor("the leader to list both followers on its replication links", async () => {
      const ids = (await leader.cluster()).replication.followers.map((f: any) => f.node_id).sort();
      return JSON.stringify(ids) === JSON.stringify([f2.nodeId, f3.nodeId].sort());
    }, 15_000);
  }, 40_000);

  test("a write to the leader is read on both followers, a write through a follower reaches the other, a delete reaches both", async () => {
    const set = await leader.set("username", "alice");
    expect(set.status).toBe(200);
    expect(set.body).toMatchObject({ status: "ok", key: "username" });
    for (const k of ["email", "city"]) expect((await leader.set(k, `${k}-value`)).status).toBe(200);
    for (const f of [f2, f3]) {
      const got = await waitFor(`username on the follower at ${f.host}`, async () => {
        const r = await f.get("username");
        return r.status === 200 ? r : false;
      });
      expect(got.body).toMatchObject({ key: "username", value: "alice" });
    }

    // Through host 2's follower: forwarded over the bridge to host 1, replicated to host 3.
    const fw = await f2.set("via-host-2", "forwarded");
    expect(fw.status).toBe(200);
    expect(fw.body).toMatchObject({ status: "ok", key: "via-host-2" });
    expect((await f2.get("via-host-2")).body).toMatchObject({ value: "forwarded" });
    expect((await leader.get("via-host-2")).body).toMatchObject({ value: "forwarded" });
    await waitFor("the forwarded write on host 3", async () => (await f3.get("via-host-2")).body.value === "forwarded");

    const del = await leader.del("username");
    expect(del.body).toMatchObject({ status: "ok", deleted: true });
    for (const f of [f2, f3]) await waitFor(`the delete to reach ${f.host}`, async () => (await f.get("username")).status === 404);
    expect((await f2.get("username")).body.error).toBeString();
  }, 40_000);

  test("/keys and /health agree on every host", async () => {
    for (const f of [f2, f3]) await lab.cluster!.awaitInSync(leader, f);
    const expected = { keys: ["city", "email", "via-host-2"], count: 3 };
    for (const n of [leader, f2, f3]) expect(await keysOf(n)).toEqual(expected);
    expect(await leader.health()).toMatchObject({ status: "healthy", role: "leader", group: 0, keys: 3, node_id: leader.nodeId, lag: 0 });
    for (const f of [f2, f3]) expect(await f.health()).toMatchObject({ status: "healthy", role: "follower", group: 0, keys: 3, node_id: f.nodeId, leader_id: leader.nodeId });
  }, 30_000);

  test("a host cut off from the bridge catches up to identical /keys once its link is back", async () => {
    await lab.cluster!.awaitInSync(leader, f2);
    const before = (await f2.cluster()).replication;
    must(["ip", "link", "set", lab.veth[1]!, "down"]);
    try {
      // The cut is real: the leader stops hearing host 2 and drops it after the stale time.
      await lab.cluster!.awaitMembership([leader, f3], 2, 15_000);

      for (let i = 0; i < 20; i++) expect((await leader.set(`during-cut-${i}`, `v${i}`)).status).toBe(200);
      expect((await leader.del("email")).body).toMatchObject({ deleted: true });
      expect((await leader.set("city", "changed during the cut")).status).toBe(200);
      await lab.cluster!.awaitInSync(leader, f3);
    } finally {
      must(["ip", "link", "set", lab.veth[1]!, "up"]);
    }

    await lab.cluster!.awaitMembership([leader, f2, f3], 3, 15_000);
    await lab.cluster!.awaitInSync(leader, f2, 30_000);
    const lk = await keysOf(leader);
    expect(lk.count).toBe(22);
    expect(await keysOf(f2)).toEqual(lk);
    expect(await keysOf(f3)).toEqual(lk);
    expect((await f2.get("city")).body).toMatchObject({ value: "changed during the cut" });
    expect((await f2.get("email")).status).toBe(404);
    expect(await f2.health()).toMatchObject({ role: "follower", keys: 22, lag: 0 });
    // It came back over a new link that resumed from its position, under the same history.
    const after = (await f2.cluster()).replication;
    expect(after.history_id).toBe(before.history_id);
    expect(after.tail_catch_ups + after.full_transfers).toBeGreaterThan(before.tail_catch_ups + before.full_transfers);
  }, 60_000);
});
