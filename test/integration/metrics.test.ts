/**
 * GET /metrics on real nodes: Prometheus text that parses, answers counted by route and status
 * exactly, and the node's state (keys, sequences, replication, storage) as /cluster shows it.
 */
import { describe, expect, setDefaultTimeout, test } from "bun:test";
import { type NodeProc, TestCluster } from "../support/cluster.ts";
import { waitFor } from "../support/wait.ts";

// Real processes: bun's 5 s default is too short on a busy machine (bunfig has no such setting).
setDefaultTimeout(60_000);

/**
 * One sample line: name, optional {labels}, value (the text format's grammar, less exemplars and
 * timestamps; Prometheus reads NaN and Inf in any case, as Go's ParseFloat does).
 */
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (-?[0-9.eE+-]+|[Nn][Aa][Nn]|[+-][Ii][Nn][Ff])$/;

interface Scrape {
  contentType: string;
  /** Samples by name and label text, e.g. `kvnode_http_requests_total{route="/set",status="200"}`. */
  samples: Map<string, number>;
  /** Names declared by a # TYPE line, with their type. */
  types: Map<string, string>;
}

async function scrape(n: NodeProc): Promise<Scrape> {
  const res = await fetch(`${n.url}/metrics`);
  expect(res.status).toBe(200);
  const text = await res.text();
  const samples = new Map<string, number>();
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("# HELP ")) continue;
    const t = /^# TYPE (\S+) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) {
      types.set(t[1]!, t[2]!);
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not a Prometheus sample line: ${JSON.stringify(line)}`);
    samples.set(m[1]! + (m[2] ?? ""), Number(m[3]));
  }
  return { contentType: res.headers.get("content-type") ?? "", samples, types };
}

const requests = (s: Scrape, route: string, status: number) => s.samples.get(`kvnode_http_requests_total{route="${route}",status="${status}"}`) ?? 0;

describe("GET /metrics", () => {
  test("counts a leader's answers by route and status, and shows its follower's lag; the follower shows its own state", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true, inMemory: true });
    const follower = await c.start({});
    await c.awaitInSync(leader, follower);

    for (let i = 0; i < 5; i++) expect((await leader.set(`k${i}`, `v${i}`)).status).toBe(200);
    expect((await leader.del("k0")).status).toBe(200);
    expect((await leader.get("nobody")).status).toBe(404);
    expect((await leader.request("/set", { method: "POST", body: "{not json" })).status).toBe(400);
    expect((await leader.request("/no-such-path")).status).toBe(404);
    expect((await leader.request("/set", { method: "PUT" })).status).toBe(405);
    await c.awaitInSync(leader, follower);
    // The leader hears the follower's acknowledgement, and the follower's log is flushed, a moment later.
    await waitFor("the leader to see its follower's acknowledgement", async () => (await scrape(leader)).samples.get(`kvnode_follower_lag{follower="${follower.nodeId}"}`) === 0);
    await waitFor("the follower's log to hold every write", async () => (await scrape(follower)).samples.get("kvnode_durable_seq") === 6);

    const l = await scrape(leader);
    expect(l.contentType).toStartWith("text/plain; version=0.0.4");
    expect({
      set200: requests(l, "/set", 200),
      set400: requests(l, "/set", 400),
      set405: requests(l, "/set", 405),
      delete200: requests(l, "/delete", 200),
      get404: requests(l, "/get", 404),
      other404: requests(l, "other", 404),
    }).toEqual({ set200: 5, set400: 1, set405: 1, delete200: 1, get404: 1, other404: 1 });
    expect(l.types.get("kvnode_http_requests_total")).toBe("counter");
    // Request durations: every /set answered from its handler (the 400 too; not the 405, which no handler saw).
    expect(l.types.get("kvnode_http_request_duration_seconds")).toBe("histogram");
    expect({
      set: l.samples.get('kvnode_http_request_duration_seconds_count{route="/set"}'),
      del: l.samples.get('kvnode_http_request_duration_seconds_count{route="/delete"}'),
      get: l.samples.get('kvnode_http_request_duration_seconds_count{route="/get"}'),
      setInf: l.samples.get('kvnode_http_request_duration_seconds_bucket{le="+Inf",route="/set"}'),
    }).toEqual({ set: 6, del: 1, get: 1, setInf: 6 });
    expect(l.samples.get('kvnode_http_request_duration_seconds_sum{route="/set"}')).toBeGreaterThan(0);
    expect(l.samples.get("kvnode_keys")).toBe(4);
    expect(l.samples.get("kvnode_is_leader")).toBe(1);
    expect(l.samples.get("kvnode_seq")).toBe(6);
    expect(l.samples.get("kvnode_followers")).toBe(1);
    expect(l.samples.get(`kvnode_follower_lag{follower="${follower.nodeId}"}`)).toBe(0);
    expect(l.samples.get(`kvnode_info{node_id="${leader.nodeId}",group="0",role="leader",bun="${Bun.version}"}`)).toBe(1);
    // prom-client's process series, less those Bun does not fill in.
    expect(l.types.get("nodejs_eventloop_lag_seconds")).toBe("gauge");
    expect(l.types.has("nodejs_version_info")).toBe(false);
    expect(l.types.has("nodejs_heap_space_size_total_bytes")).toBe(false);
    expect(l.samples.get("kvnode_cluster_nodes")).toBe(2);
    expect(l.samples.get("process_resident_memory_bytes")).toBeGreaterThan(1 << 20);

    const f = await scrape(follower);
    expect(f.samples.get("kvnode_is_leader")).toBe(0);
    expect(f.samples.get("kvnode_keys")).toBe(4);
    expect(f.samples.get("kvnode_seq")).toBe(6);
    expect(f.samples.get("kvnode_replication_connected")).toBe(1);
    expect(f.samples.get("kvnode_replication_lag")).toBe(0);
    // The follower has a data dir: its log was written and flushed.
    expect(f.samples.get("kvnode_log_records_total")).toBeGreaterThanOrEqual(6);
    expect(f.samples.get("kvnode_log_flushes_total")).toBeGreaterThan(0);
    expect(f.samples.get("kvnode_data_dir_bytes")).toBeGreaterThan(0);
    expect(requests(f, "/set", 200)).toBe(0);

    // Counters only grow: one more write and one more scrape show up, nothing else changes.
    expect((await leader.set("k9", "v9")).status).toBe(200);
    const l2 = await scrape(leader);
    expect({ set200: requests(l2, "/set", 200), metrics200: requests(l2, "/metrics", 200), get404: requests(l2, "/get", 404) }).toEqual({
      set200: 6,
      metrics200: requests(l, "/metrics", 200) + 1,
      get404: 1,
    });
  });

  test("a follower with no leader says so: not connected, and its group has no leader", async () => {
    await using c = await TestCluster.create();
    const follower = await c.start({ inMemory: true });
    const f = await scrape(follower);
    expect(f.samples.get("kvnode_replication_connected")).toBe(0);
    expect(f.samples.get("kvnode_cluster_groups_without_leader")).toBe(1);
  });

  test("a leader shows a stopped follower's growing lag, and its recovery", async () => {
    await using c = await TestCluster.create();
    const leader = await c.start({ leader: true, inMemory: true });
    const follower = await c.start({ inMemory: true });
    await c.awaitInSync(leader, follower);
    follower.proc.kill("SIGSTOP");
    try {
      for (let i = 0; i < 20; i++) expect((await leader.set(`k${i}`, "v")).status).toBe(200);
      const lagOf = async () => (await scrape(leader)).samples.get(`kvnode_follower_lag{follower="${follower.nodeId}"}`);
      expect(await lagOf()).toBe(20);
      follower.proc.kill("SIGCONT");
      await waitFor("the follower's lag to fall back to 0", async () => (await lagOf()) === 0);
    } finally {
      follower.proc.kill("SIGCONT");
    }
  });
});
