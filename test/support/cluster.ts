/**
 * Real kvnode processes for integration tests: each node is `bun src/cli/main.ts` with port 0 for
 * its TCP ports (read back from its "kvnode ready" log line), a discovery port found free, and a
 * cluster name of its own so parallel runs on one host never mix. Every test disposes its cluster.
 */
import type { Subprocess } from "bun";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor } from "./wait.ts";
import { silentLogger } from "../../src/lib/log.ts";
import { RequestOp } from "../../src/protocol/frame.ts";
import { RequestLinks } from "../../src/routing/link.ts";

export const repoRoot = join(import.meta.dir, "..", "..");
export const mainScript = join(repoRoot, "src", "cli", "main.ts");

/**
 * A request as another node forwards it: a Request frame on `n`'s cluster port carrying `hops`
 * (as received) and the group it is meant for. Returns the answer, who served it, and how long it took.
 */
export async function forwardedRequest(
  n: NodeProc,
  op: keyof typeof RequestOp,
  key: string,
  o: { value?: string; hops: number; group: number; noFallback?: boolean; anyReplica?: boolean },
): Promise<{ status: number; body: any; nodeId: string; group: number; ms: number }> {
  const links = new RequestLinks(64 << 20, silentLogger);
  const to = { nodeId: n.nodeId, host: n.host, clusterPort: n.clusterPort, apiPort: n.apiPort, group: n.group, leader: false, draining: false, moving: false, term: 0, seq: 0, historyId: "", keys: 0, lastSeenMs: 0 };
  const t0 = performance.now();
  try {
    // The link adds the hop of this forward: pass one less so the node receives `hops`.
    const r = await links.forward(to, RequestOp[op], key, o.value ?? "", { hops: o.hops - 1, group: o.group, noFallback: o.noFallback, anyReplica: o.anyReplica });
    return { status: r.status, body: r.body, nodeId: r.headers["x-kvnode-node"]!, group: Number(r.headers["x-kvnode-group"]), ms: performance.now() - t0 };
  } finally {
    links.close();
  }
}

/** A UDP port nobody on this host is bound to right now. */
export async function freeUdpPort(): Promise<number> {
  const s = await Bun.udpSocket({ hostname: "0.0.0.0", port: 0 });
  const port = s.port;
  s.close();
  return port;
}

/** A TCP port nobody on this host is bound to right now (for tests that must restart on the same port). */
export function freeTcpPort(): number {
  const s = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = s.port;
  s.stop(true);
  return port;
}

export function uniqueName(prefix = "t"): string {
  return `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`;
}

export interface JsonReply<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export interface NodeOptions {
  leader?: boolean;
  group?: number;
  host?: string;
  /** Fixed ports (only for restart-on-the-same-port tests); 0 by default. */
  port?: number;
  api?: number;
  extra?: string[];
  /** Command prefix, e.g. ["ip", "netns", "exec", "kv1"]. */
  prefix?: string[];
  /** Data directory (reuse one to restart a node on its data); a fresh one under the cluster's temp dir by default. */
  dataDir?: string;
  inMemory?: boolean;
}

export class NodeProc {
  nodeId = "";
  /** The -group it was started with. */
  group = 0;
  dataDir: string | null = null;
  apiPort = 0;
  clusterPort = 0;
  log = "";
  readonly exited: Promise<number>;

  constructor(
    readonly proc: Subprocess<"ignore", "pipe", "pipe">,
    readonly host: string,
  ) {
    this.exited = proc.exited;
    void this.pump(proc.stderr);
    void this.pump(proc.stdout);
  }

  private async pump(stream: ReadableStream<Uint8Array>) {
    const dec = new TextDecoder();
    for await (const chunk of stream) this.log += dec.decode(chunk, { stream: true });
  }

  get url(): string {
    return `http://${this.host}:${this.apiPort}`;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async request<T = any>(path: string, init?: RequestInit): Promise<JsonReply<T>> {
    const res = await fetch(this.url + path, { ...init, signal: AbortSignal.timeout(10_000) });
    const text = await res.text();
    let body: any = text;
    try {
      body = JSON.parse(text);
    } catch {}
    return { status: res.status, body, headers: res.headers };
  }

  set(key: string, value: string) {
    return this.request("/set", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ key, value }) });
  }
  get(key: string) {
    return this.request(`/get?key=${encodeURIComponent(key)}`);
  }
  del(key: string) {
    return this.request(`/delete?key=${encodeURIComponent(key)}`, { method: "DELETE" });
  }
  async health() {
    return (await this.request("/health")).body;
  }
  async cluster() {
    return (await this.request("/cluster")).body;
  }

  /** Clean stop (SIGTERM); resolves with the exit code. */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number> {
    if (this.alive) this.proc.kill(signal);
    return await this.exited;
  }

  async kill9(): Promise<void> {
    if (this.alive) this.proc.kill("SIGKILL");
    await this.exited;
  }
}

export class TestCluster implements AsyncDisposable {
  readonly nodes: NodeProc[] = [];
  /** Temp directory holding the nodes' data dirs; removed on dispose. */
  readonly dir = mkdtempSync(join(tmpdir(), "kvnode-test-"));
  private dirs = 0;

  /** A fresh data dir path inside the cluster's temp dir. */
  newDataDir(): string {
    return join(this.dir, `node-${++this.dirs}`);
  }

  constructor(
    readonly discoveryPort: number,
    readonly name: string,
    readonly timing = { heartbeatMs: 200, staleMs: 1500 },
  ) {}

  static async create(timing?: { heartbeatMs: number; staleMs: number }): Promise<TestCluster> {
    return new TestCluster(await freeUdpPort(), uniqueName(), timing);
  }

  args(o: NodeOptions): string[] {
    return [
      "-port", String(o.port ?? 0),
      "-api", String(o.api ?? 0),
      "-group", String(o.group ?? 0),
      ...(o.leader ? ["-leader"] : []),
      "-host", o.host ?? "127.0.0.1",
      "-discovery-port", String(this.discoveryPort),
      "-cluster", this.name,
      "-heartbeat-ms", String(this.timing.heartbeatMs),
      "-stale-ms", String(this.timing.staleMs),
      ...(o.inMemory ? ["-in-memory"] : ["-data-dir", o.dataDir!]),
      ...(o.extra ?? []),
    ];
  }

  /** Start a node and wait for its "kvnode ready" line. */
  async start(o: NodeOptions = {}): Promise<NodeProc> {
    const host = o.host ?? "127.0.0.1";
    if (!o.inMemory && !o.dataDir) o = { ...o, dataDir: this.newDataDir() };
    const proc = Bun.spawn([...(o.prefix ?? []), process.execPath, mainScript, ...this.args(o)], {
      cwd: repoRoot,
      stdin: "ignore",
      stdout: "pipe",
      stderr: "pipe",
    });
    const node = new NodeProc(proc, host);
    node.dataDir = o.inMemory ? null : o.dataDir!;
    node.group = o.group ?? 0;
    this.nodes.push(node);
    try {
      await waitFor("the node's ready line", () => /kvnode ready/.test(node.log) || !node.alive, 15_000);
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- node log ---\n${node.log}`);
    }
    const m = /kvnode ready node_id=(\w+) .*api=http:\/\/[\d.]+:(\d+) cluster_port=(\d+)/.exec(node.log);
    if (!m) throw new Error(`node did not start:\n${node.log}`);
    node.nodeId = m[1]!;
    node.apiPort = Number(m[2]);
    node.clusterPort = Number(m[3]);
    return node;
  }

  /** Wait until every given node sees exactly `count` nodes in its /cluster. */
  async awaitMembership(nodes: NodeProc[], count: number, timeoutMs = 10_000): Promise<void> {
    await waitFor(`${nodes.length} nodes to each see ${count} members`, async () => {
      for (const n of nodes) if ((await n.cluster()).node_count !== count) return false;
      return true;
    }, timeoutMs);
  }

  /** Wait until `follower` has applied everything its leader has (same seq, lag 0, in sync). */
  async awaitInSync(leader: NodeProc, follower: NodeProc, timeoutMs = 15_000): Promise<void> {
    await waitFor(`follower ${follower.nodeId} to catch up with leader ${leader.nodeId}`, async () => {
      const [l, f] = await Promise.all([leader.health(), follower.cluster()]);
      return f.replication.connected && f.replication.seq === l.seq && f.replication.history_id !== "";
    }, timeoutMs);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await Promise.all(this.nodes.map((n) => n.kill9()));
    rmSync(this.dir, { recursive: true, force: true });
  }
}
