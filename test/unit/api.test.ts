/**
 * The HTTP API in process: `app.handle(new Request(...))` against an in-memory KvService, so every
 * route, status and JSON shape of the seed README is checked without a socket or a cluster.
 */
import { describe, expect, test } from "bun:test";
import type { Static } from "elysia";
import { bodyBytesMax, createApi, HOPS_HEADER, type KeysPage, type KeysQuery, type KvService, type Reply } from "../../src/api/index.ts";
import type { RequestContext } from "../../src/routing/router.ts";
import type { ClusterReply, HealthReply } from "../../src/api/schemas.ts";

/** A Map-backed KvService: a single leader of group 0 with small limits, and a log of calls. */
class MemoryService implements KvService {
  readonly nodeId = "node-test-1";
  readonly group = 0;
  readonly keyBytesMax: number;
  readonly valueBytesMax: number;
  readonly entries = new Map<string, { value: string; version: number }>();
  readonly calls: { op: "set" | "delete"; key: string; hops: number }[] = [];
  seq = 0;
  /** When set, `set` answers this instead of writing (a leader's answer passed through). */
  setReply: Reply | undefined;

  constructor(limits: { keyBytesMax: number; valueBytesMax: number } = { keyBytesMax: 16, valueBytesMax: 32 }) {
    this.keyBytesMax = limits.keyBytesMax;
    this.valueBytesMax = limits.valueBytesMax;
  }

  get(key: string): Reply {
    const e = this.entries.get(key);
    return e ? { status: 200, body: { key, value: e.value, version: e.version } } : { status: 404, body: { error: "Key not found", key } };
  }

  async set(key: string, value: string, { hops }: RequestContext): Promise<Reply> {
    this.calls.push({ op: "set", key, hops });
    if (this.setReply) return this.setReply;
    const version = ++this.seq;
    this.entries.set(key, { value, version });
    return { status: 200, body: { status: "ok", key, version } };
  }

  async delete(key: string, { hops }: RequestContext): Promise<Reply> {
    this.calls.push({ op: "delete", key, hops });
    const deleted = this.entries.delete(key);
    const version = deleted ? ++this.seq : this.seq;
    return { status: 200, body: { status: "ok", key, deleted, version } };
  }

  keys(q: KeysQuery): KeysPage {
    const all = [...this.entries.keys()].filter((k) => k.startsWith(q.prefix) && (q.cursor === undefined || k > q.cursor)).sort();
    const keys = q.limit === undefined ? all : all.slice(0, q.limit);
    return { keys, count: keys.length, cursor: keys.length < all.length ? keys[keys.length - 1]! : null };
  }

  async drain(): Promise<Reply> {
    return { status: 200, body: { status: "ok", group: this.group, draining: true, keys: this.entries.size } };
  }

  async importEntries(entries: { key: string; value?: string; deleted?: boolean }[]): Promise<Reply> {
    for (const { key, value, deleted } of entries) {
      if (deleted) this.entries.delete(key);
      else if (!this.entries.has(key)) this.entries.set(key, { value: value!, version: ++this.seq });
    }
    return { status: 200, body: { status: "ok", imported: entries.length, skipped: 0, refused: [] } };
  }

  cluster(): Static<typeof ClusterReply> {
    return {
      self_node_id: this.nodeId,
      self_group: this.group,
      is_leader: true,
      nodes: [
        {
          node_id: this.nodeId,
          address: "127.0.0.1:8000",
          api_address: "127.0.0.1:9000",
          group_id: 0,
          is_leader: true,
          term: 1,
          seq: this.seq,
          last_seen_ms_ago: 0,
        },
      ],
      node_count: 1,
      groups: [{ group_id: 0, leader: this.nodeId, members: [this.nodeId], ring_share: 1, keys: this.entries.size, draining: false, moving: false }],
      rebalance: { draining: false, moving: false, moved: 0, passes: 0, last_error: null },
      replication: this.replication(),
      storage: { data_dir: null, durable_seq: this.seq, data_dir_bytes: 0, fsync: "in-memory", log_flushes: 0, log_records: 0, log_failures: 0, snapshots: 0, last_snapshot_seq: 0, torn_bytes_cut: 0 },
      memory: { keys: 0, tombstones: 0, table_places: 16, table_resizing: false, arena_bytes: 0, arena_live_bytes: 0, rss_bytes: 1 },
      discovery: { received: 0, accepted: 0, dropped: {}, sent: 0, send_errors: 0 },
    };
  }

  health(): Static<typeof HealthReply> {
    return {
      status: "healthy",
      durable_seq: this.seq,
      data_dir_bytes: 0,
      role: "leader",
      group: this.group,
      keys: this.entries.size,
      node_id: this.nodeId,
      seq: this.seq,
      lag: 0,
      leader_id: this.nodeId,
      followers: [],
    };
  }

  private replication() {
    return {
      role: "leader",
      history_id: "h1",
      seq: this.seq,
      leader_id: this.nodeId,
      leader_seq: this.seq,
      lag: 0,
      connected: true,
      full_transfers: 0,
      tail_catch_ups: 0,
      sync_replicas: 0,
      followers: [],
    };
  }
}

function setup(limits?: { keyBytesMax: number; valueBytesMax: number }) {
  const service = new MemoryService(limits);
  const app = createApi(service);
  const call = (method: string, path: string, init: { body?: RequestInit["body"]; headers?: Record<string, string> } = {}) =>
    app.handle(new Request(`http://localhost${path}`, { method, ...init }));
  const setRaw = (body: RequestInit["body"], headers?: Record<string, string>) => call("POST", "/set", { body, headers });
  const set = (body: unknown, headers: Record<string, string> = { "content-type": "application/json" }) =>
    setRaw(JSON.stringify(body), headers);
  const get = (key: string) => call("GET", `/get?key=${encodeURIComponent(key)}`);
  const del = (key: string) => call("DELETE", `/delete?key=${encodeURIComponent(key)}`);
  return { service, app, call, set, setRaw, get, del };
}

/** Every error answer: the given status, a JSON content type, and {"error": "<non-empty string>"}. */
async function expectError(res: Response, status: number): Promise<Record<string, unknown>> {
  const text = await res.text();
  expect({ status: res.status, text }).toMatchObject({ status });
  expect(res.headers.get("content-type") ?? "").toStartWith("application/json");
  const body = JSON.parse(text) as Record<string, unknown>;
  expect(typeof body.error).toBe("string");
  expect((body.error as string).length).toBeGreaterThan(0);
  return body;
}

async function expectJson(res: Response, status = 200): Promise<any> {
  const text = await res.text();
  expect({ status: res.status, text }).toMatchObject({ status });
  expect(res.headers.get("content-type") ?? "").toStartWith("application/json");
  return JSON.parse(text);
}

describe("POST /set", () => {
  test("answers {status: ok, key, version} for a JSON body with content-type application/json", async () => {
    const { set, service } = setup();
    const body = await expectJson(await set({ key: "username", value: "alice" }));
    expect(body).toEqual({ status: "ok", key: "username", version: 1 });
    expect(service.entries.get("username")).toEqual({ value: "alice", version: 1 });
  });

  test("accepts a JSON body sent with no content-type header", async () => {
    const { app, service } = setup();
    const request = new Request("http://localhost/set", {
      method: "POST",
      body: new TextEncoder().encode(JSON.stringify({ key: "city", value: "Paris" })),
    });
    expect(request.headers.get("content-type")).toBeNull();
    const body = await expectJson(await app.handle(request));
    expect(body).toMatchObject({ status: "ok", key: "city" });
    expect(typeof body.version).toBe("number");
    expect(service.entries.get("city")?.value).toBe("Paris");
  });

  test("accepts a JSON body labelled as a form (what curl -d sends) or as text", async () => {
    const { set, get } = setup({ keyBytesMax: 64, valueBytesMax: 64 });
    const types = { form: "application/x-www-form-urlencoded", text: "text/plain;charset=utf-8" };
    for (const [key, type] of Object.entries(types)) {
      const body = await expectJson(await set({ key, value: type }, { "content-type": type }));
      expect(body).toMatchObject({ status: "ok", key });
    }
    expect(await expectJson(await get("form"))).toMatchObject({ key: "form", value: types.form });
    expect(await expectJson(await get("text"))).toMatchObject({ key: "text", value: types.text });
  });

  test("overwrites a key and gives the new write a higher version", async () => {
    const { set, get } = setup();
    const first = await expectJson(await set({ key: "k", value: "one" }));
    const second = await expectJson(await set({ key: "k", value: "two" }));
    expect(second.version).toBeGreaterThan(first.version);
    expect(await expectJson(await get("k"))).toEqual({ key: "k", value: "two", version: second.version });
  });

  test("the public /set does not read forwarding headers: a client cannot pose as a node", async () => {
    const { set, service } = setup();
    await set({ key: "a", value: "1" }, { "content-type": "application/json", [HOPS_HEADER]: "2" });
    expect(service.calls.map((c) => c.hops)).toEqual([0]);
  });

  test("answers a status the service passed through (a leader's 503) with that status and body", async () => {
    const { set, service } = setup();
    service.setReply = { status: 503, body: { error: "No leader known for group 0", group: 0 } };
    const res = await set({ key: "k", value: "v" });
    const body = await expectError(res, 503);
    expect(body).toEqual({ error: "No leader known for group 0", group: 0 });
  });

  test.each([
    ["malformed JSON", "{bad", { "content-type": "application/json" }],
    ["malformed JSON with no content-type", "{bad", undefined],
    ["truncated JSON", '{"key":"a","value":', { "content-type": "application/json" }],
    ["an empty body", "", { "content-type": "application/json" }],
  ] as const)("answers 400 with {error} for %s", async (_, raw, headers) => {
    const { setRaw, service } = setup();
    await expectError(await setRaw(raw, headers), 400);
    expect(service.calls).toEqual([]);
  });

  test.each([
    ["a missing key", { value: "v" }],
    ["a missing value", { key: "k" }],
    ["a value that is a number", { key: "k", value: 1 }],
    ["a value that is null", { key: "k", value: null }],
    ["a value that is an object", { key: "k", value: { nested: "x" } }],
    ["a key that is a number", { key: 7, value: "v" }],
    ["a body that is an array", ["k", "v"]],
    ["a body that is null", null],
    ["a body that is a string", "k=v"],
  ])("answers 400 with {error} for %s", async (_, body) => {
    const { set, service } = setup();
    await expectError(await set(body), 400);
    expect(service.calls).toEqual([]);
  });

  test("answers 400 for an empty key", async () => {
    const { set, service } = setup();
    const body = await expectError(await set({ key: "", value: "v" }), 400);
    expect(body.error).toContain("empty");
    expect(service.calls).toEqual([]);
  });

  test("answers 400 for a key or value with a lone surrogate (not valid UTF-8)", async () => {
    const { set, setRaw, service } = setup();
    await expectError(await set({ key: "\ud800", value: "v" }), 400);
    await expectError(await set({ key: "a\udc00b", value: "v" }), 400);
    await expectError(await set({ key: "k", value: "x\ud83d" }), 400);
    // The same, written as JSON escapes by hand.
    await expectError(await setRaw('{"key":"\\ud800","value":"v"}'), 400);
    expect(service.calls).toEqual([]);
  });

  test("takes a key of exactly keyBytesMax bytes and answers 413 for one byte more", async () => {
    const { set, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    expect(await expectJson(await set({ key: "k".repeat(16), value: "v" }))).toMatchObject({ status: "ok" });
    expect(await expectJson(await set({ key: "é".repeat(8), value: "v" }))).toMatchObject({ status: "ok" }); // 16 bytes
    await expectError(await set({ key: "k".repeat(17), value: "v" }), 413);
    // 9 code units but 18 bytes: the limit is in UTF-8 bytes.
    const body = await expectError(await set({ key: "é".repeat(9), value: "v" }), 413);
    expect(body.error).toContain("16");
    expect(service.calls).toHaveLength(2);
  });

  test("takes a value of exactly valueBytesMax bytes and answers 413 for one byte more", async () => {
    const { set, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    expect(await expectJson(await set({ key: "a", value: "v".repeat(32) }))).toMatchObject({ status: "ok" });
    expect(await expectJson(await set({ key: "b", value: "€".repeat(10) + "xx" }))).toMatchObject({ status: "ok" }); // 32 bytes
    await expectError(await set({ key: "c", value: "v".repeat(33) }), 413);
    // 11 code units but 33 bytes.
    const body = await expectError(await set({ key: "d", value: "€".repeat(11) }), 413);
    expect(body.error).toContain("32");
    await expectError(await set({ key: "e", value: "😀".repeat(9) }), 413); // 18 code units, 36 bytes
    expect(service.keys({ scope: "node", prefix: "" }).keys).toEqual(["a", "b"]);
  });

  test("answers 413 for a body larger than the limit, with or without a declared length", async () => {
    const { setRaw, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    const limit = bodyBytesMax(service);
    const huge = JSON.stringify({ key: "k", value: "v".repeat(limit) });
    await expectError(await setRaw(huge), 413);
    await expectError(await setRaw(huge, { "content-type": "application/json", "content-length": String(huge.length) }), 413);
    // Valid, small JSON padded with whitespace past the limit.
    await expectError(await setRaw(JSON.stringify({ key: "k", value: "v" }) + " ".repeat(limit)), 413);
    // A streamed body (no content-length) is cut off too.
    const bytes = new TextEncoder().encode(huge);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes);
        c.close();
      },
    });
    await expectError(await setRaw(stream), 413);
    expect(service.calls).toEqual([]);
  });

  test("a streamed body is measured in bytes, as a declared length is: multi-byte text past the limit is 413 either way", async () => {
    // Found by an audit: a chunked body was measured in UTF-16 units, so 3-byte characters passed.
    const { setRaw, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    const limit = bodyBytesMax(service);
    const body = JSON.stringify({ key: "k", value: "v" }) + "\u3000".repeat(Math.ceil(limit / 3) + 10); // 3 UTF-8 bytes, 1 UTF-16 unit each
    const bytes = new TextEncoder().encode(body);
    expect(body.length).toBeLessThan(limit);
    expect(bytes.length).toBeGreaterThan(limit);
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes);
        c.close();
      },
    });
    await expectError(await setRaw(stream), 413);
    await expectError(await setRaw(body, { "content-length": String(bytes.length) }), 413);
    expect(service.calls).toEqual([]);
  });
});

describe("GET /get", () => {
  test("answers {key, value} (plus version) for a stored key", async () => {
    const { set, get } = setup();
    await set({ key: "username", value: "alice" });
    const body = await expectJson(await get("username"));
    expect(body).toEqual({ key: "username", value: "alice", version: 1 });
  });

  test("answers 404 with a JSON error naming the key when it is missing", async () => {
    const { get } = setup();
    const body = await expectError(await get("nobody"), 404);
    expect(body.key).toBe("nobody");
  });

  test("answers 400 for a missing or empty key parameter and 413 for an oversized key", async () => {
    const { call, get } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    expect((await expectError(await call("GET", "/get"), 400)).error).toBe("Missing key: pass it as ?key=");
    expect((await expectError(await call("GET", "/get?key="), 400)).error).toBe("Key must not be empty");
    expect((await expectError(await call("GET", "/get?other=1&replica=any"), 400)).error).toBe("Missing key: pass it as ?key=");
    await expectError(await get("k".repeat(17)), 413);
  });
});

describe("DELETE /delete", () => {
  test('answers {"status":"ok","deleted":true} for a stored key and deleted:false after', async () => {
    const { set, del, get } = setup();
    await set({ key: "k", value: "v" });
    const first = await expectJson(await del("k"));
    expect(first).toMatchObject({ status: "ok", key: "k", deleted: true });
    await expectError(await get("k"), 404);
    const second = await expectJson(await del("k"));
    expect(second).toMatchObject({ status: "ok", key: "k", deleted: false });
    expect(typeof second.version).toBe("number");
  });

  test("answers 400 for a missing or empty key and 413 for an oversized one", async () => {
    const { call, del, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    expect((await expectError(await call("DELETE", "/delete"), 400)).error).toBe("Missing key: pass it as ?key=");
    await expectError(await call("DELETE", "/delete?key="), 400);
    await expectError(await del("k".repeat(17)), 413);
    expect(service.calls).toEqual([]);
  });
});

describe("POST /internal/import (keys moved in from another group)", () => {
  test("checks every key and value as /set does: empty, oversized or not valid Unicode refuses the batch, nothing imported", async () => {
    // Found by an audit: it took anything, and a value over the limit then stopped replication for good.
    const { call, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    const importing = (entries: unknown) => call("POST", "/internal/import", { body: JSON.stringify({ entries }), headers: { "content-type": "application/json" } });
    await expectError(await importing([{ key: "ok", value: "v" }, { key: "", value: "v" }]), 400);
    await expectError(await importing([{ key: "ok", value: "v" }, { key: "k".repeat(17), value: "v" }]), 413);
    await expectError(await importing([{ key: "ok", value: "v" }, { key: "big", value: "v".repeat(33) }]), 413);
    await expectError(await importing([{ key: "ok", value: "v" }, { key: "bad", value: "a\udc00" }]), 400);
    expect(service.entries.size).toBe(0);
    expect(await expectJson(await importing([{ key: "ok", value: "v".repeat(32) }]))).toMatchObject({ imported: 1 });
  });

  test("takes a tombstone as deleted: true without a value; an entry with neither is refused", async () => {
    const { call, service } = setup();
    const importing = (entries: unknown) => call("POST", "/internal/import", { body: JSON.stringify({ entries }), headers: { "content-type": "application/json" } });
    expect((await expectError(await importing([{ key: "a", value: "1" }, { key: "b" }]), 400)).error).toContain('give a string value, or "deleted": true');
    await expectError(await importing([{ key: "b", deleted: false }]), 400);
    expect(service.entries.size).toBe(0);
    await expectJson(await importing([{ key: "a", value: "1" }, { key: "b", value: "2" }]));
    await expectJson(await importing([{ key: "a", deleted: true }]));
    expect([...service.entries.keys()]).toEqual(["b"]);
  });
});

describe("GET /keys", () => {
  test("answers {keys: [], count: 0} for an empty store", async () => {
    const { call } = setup();
    expect(await expectJson(await call("GET", "/keys"))).toEqual({ keys: [], count: 0 });
  });

  test("answers {keys, count} with every stored key", async () => {
    const { call, set } = setup();
    for (const key of ["username", "email", "city"]) await set({ key, value: "x" });
    const body = await expectJson(await call("GET", "/keys"));
    expect(body.count).toBe(3);
    expect([...body.keys].sort()).toEqual(["city", "email", "username"]);
  });
});

describe("GET /health and GET /cluster", () => {
  test("answer the service's own views as JSON", async () => {
    const { call, set, service } = setup();
    await set({ key: "a", value: "1" });
    expect(await expectJson(await call("GET", "/health"))).toEqual(service.health());
    const cluster = await expectJson(await call("GET", "/cluster"));
    expect(cluster).toEqual(service.cluster());
    expect(cluster).toMatchObject({ self_node_id: "node-test-1", self_group: 0, is_leader: true, node_count: 1 });
  });
});

describe("methods and paths", () => {
  test.each([
    ["PUT", "/set", "POST"],
    ["GET", "/set", "POST"],
    ["POST", "/get", "GET"],
    ["DELETE", "/get", "GET"],
    ["GET", "/delete", "DELETE"],
    ["POST", "/keys", "GET"],
    ["POST", "/health", "GET"],
    ["PATCH", "/cluster", "GET"],
  ])("%s %s answers 405 with Allow: %s and a JSON error", async (method, path, allow) => {
    const { call } = setup();
    const res = await call(method, path, method === "GET" || method === "DELETE" ? {} : { body: "{}" });
    expect(res.headers.get("allow")).toBe(allow);
    const body = await expectError(res, 405);
    expect(body.error).toContain(allow);
  });

  test.each(["/nope", "/set/extra", "/GET", "/"])("GET %s answers 404 with a JSON error", async (path) => {
    const { call } = setup();
    await expectError(await call("GET", path), 404);
  });

  test("POST to an unknown path answers 404 with a JSON error", async () => {
    const { call } = setup();
    await expectError(await call("POST", "/put", { body: "{}" }), 404);
  });
});

describe("fields and parameters the API does not name", () => {
  test("are ignored, not refused: an extra body field, a cache-busting query parameter", async () => {
    const { set, call, service } = setup();
    expect(await expectJson(await set({ key: "k", value: "v", ttl: 5, note: { a: 1 } }))).toEqual({ status: "ok", key: "k", version: 1 });
    expect(service.entries.get("k")).toEqual({ value: "v", version: 1 });
    expect(await expectJson(await call("GET", "/get?key=k&_=1732790000"))).toEqual({ key: "k", value: "v", version: 1 });
    expect(await expectJson(await call("GET", "/keys?_=1"))).toEqual({ keys: ["k"], count: 1 });
    expect(await expectJson(await call("DELETE", "/delete?key=k&_=2"))).toEqual({ status: "ok", key: "k", deleted: true, version: 2 });
  });

  test("a wrong type in a named field is still refused with 400 naming it", async () => {
    const { set } = setup();
    const body = await expectError(await set({ key: "k", value: 5, extra: true }), 400);
    expect(String(body.error)).toContain("value");
  });
});

describe("error answers", () => {
  test("every error answer is JSON with an error string", async () => {
    const { call, set, setRaw, get, service } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    const cases: [string, Promise<Response>, number][] = [
      ["malformed JSON", setRaw("{"), 400],
      ["missing key", set({ value: "v" }), 400],
      ["empty key", set({ key: "", value: "v" }), 400],
      ["value not a string", set({ key: "k", value: 5 }), 400],
      ["lone surrogate", set({ key: "\udfff", value: "v" }), 400],
      ["key too large", set({ key: "k".repeat(17), value: "v" }), 413],
      ["value too large", set({ key: "k", value: "v".repeat(33) }), 413],
      ["body too large", setRaw(" ".repeat(bodyBytesMax(service) + 1)), 413],
      ["missing key on GET", get(""), 400],
      ["not found", get("absent"), 404],
      ["wrong method", call("PUT", "/set", { body: "{}" }), 405],
      ["unknown path", call("GET", "/unknown"), 404],
    ];
    for (const [name, pending, status] of cases) {
      const res = await pending;
      const body = await res.text();
      expect({ name, status: res.status, body }).toMatchObject({ name, status });
      expect({ name, type: res.headers.get("content-type")?.split(";")[0] }).toEqual({ name, type: "application/json" });
      const parsed = JSON.parse(body) as { error?: unknown };
      expect({ name, error: typeof parsed.error }).toEqual({ name, error: "string" });
    }
  });
});

describe("GET /metrics", () => {
  test("counts each answer once by route and status, an answer that failed its schema as the 500 it became", async () => {
    const { service, set, get, app } = setup();
    expect((await set({ key: "k", value: "v" })).status).toBe(200);
    expect((await get("k")).status).toBe(200);
    expect((await get("nope")).status).toBe(404);
    // Found by review: such an answer was counted as 200 and as 500.
    service.setReply = { status: 200, body: { status: "ok", key: "k", version: "x" as unknown as number } };
    expect((await set({ key: "k", value: "v" })).status).toBe(500);
    const text = await (await app.handle(new Request("http://localhost/metrics"))).text();
    const counted = text.split("\n").filter((l) => l.startsWith("kvnode_http_requests_total{")).sort();
    expect(counted).toEqual(
      [
        'kvnode_http_requests_total{route="/set",status="200"} 1',
        'kvnode_http_requests_total{route="/set",status="500"} 1',
        'kvnode_http_requests_total{route="/get",status="200"} 1',
        'kvnode_http_requests_total{route="/get",status="404"} 1',
      ].sort(),
    );
    // Timed once each, errors included; buckets cumulative up to +Inf; routes not timed are absent.
    const hist = text.split("\n").filter((l) => l.startsWith("kvnode_http_request_duration_seconds"));
    expect(text).toContain("# TYPE kvnode_http_request_duration_seconds histogram");
    const sample = (name: string) => Number(hist.find((l) => l.startsWith(name))?.split(" ")[1]);
    expect(sample('kvnode_http_request_duration_seconds_count{route="/set"}')).toBe(2);
    expect(sample('kvnode_http_request_duration_seconds_count{route="/get"}')).toBe(2);
    expect(sample('kvnode_http_request_duration_seconds_count{route="/delete"}')).toBe(0);
    expect(sample('kvnode_http_request_duration_seconds_bucket{le="+Inf",route="/get"}')).toBe(2);
    expect(sample('kvnode_http_request_duration_seconds_bucket{le="5",route="/get"}')).toBe(2);
    expect(sample('kvnode_http_request_duration_seconds_sum{route="/get"}')).toBeGreaterThan(0);
    expect(hist.some((l) => l.includes('route="/health"'))).toBe(false);
    const les = hist.filter((l) => l.startsWith('kvnode_http_request_duration_seconds_bucket{') && l.includes('route="/set"')).map((l) => Number(l.split(" ")[1]));
    expect(les.length).toBe(15);
    expect([...les].sort((a, b) => a - b)).toEqual(les); // cumulative
  });
});

describe("short host names", () => {
  test("a client reaching the node by a 1-3 character name (http://kv/) is served like any other", async () => {
    // Found by an audit: Elysia looked for the path from the 12th character, so every route was 404.
    const { app } = setup();
    for (const host of ["a", "kv", "db:80", "abc", "abcd", "127.0.0.1:9000"]) {
      const set = await app.handle(new Request(`http://${host}/set`, { method: "POST", body: JSON.stringify({ key: `k-${host}`, value: "v" }) }));
      expect({ host, status: set.status }).toEqual({ host, status: 200 });
      const get = await app.handle(new Request(`http://${host}/get?key=${encodeURIComponent(`k-${host}`)}`));
      expect({ host, status: get.status, value: ((await get.json()) as { value: string }).value }).toEqual({ host, status: 200, value: "v" });
      expect((await app.handle(new Request(`http://${host}/health`))).status).toBe(200);
      expect((await app.handle(new Request(`http://${host}/nope`))).status).toBe(404);
    }
  });
});

describe("headers", () => {
  test("answers served by the node asked carry no x-kvnode headers", async () => {
    const { call, set, get } = setup();
    for (const res of [await set({ key: "k", value: "v" }), await get("k"), await call("DELETE", "/delete?key=k")]) {
      expect(res.status).toBe(200);
      expect(res.headers.get("x-kvnode-node")).toBeNull();
      expect(res.headers.get("x-kvnode-group")).toBeNull();
    }
  });

  test("a forwarded answer names the node that served it", async () => {
    const { set, service } = setup();
    service.setReply = { status: 200, body: { status: "ok", key: "k", version: 7 }, headers: { "x-kvnode-node": "owner-9", "x-kvnode-group": "3" } };
    const res = await set({ key: "k", value: "v" });
    expect(await expectJson(res)).toEqual({ status: "ok", key: "k", version: 7 });
    expect(res.headers.get("x-kvnode-node")).toBe("owner-9");
    expect(res.headers.get("x-kvnode-group")).toBe("3");
  });
});

describe("unicode", () => {
  const samples: [string, string][] = [
    ["nul\u0000key", "nul\u0000value"],
    ["line\nbreak", "two\nlines\r\n"],
    ["pipe|key", "a|b|c"],
    ["emoji 😀🔑", "value 🎉 with emoji"],
    ["日本語のキー", "值"],
    ["query chars ?&=#%+ /", "+%20&"],
    ["tab\tand \"quotes\" and \\", "\u0001\u001f\u007f"],
  ];

  test("keys and values with NUL, newlines, '|', emoji and URL characters round-trip", async () => {
    const { call, set, get, del } = setup({ keyBytesMax: 1024, valueBytesMax: 4096 });
    for (const [key, value] of samples) {
      expect(await expectJson(await set({ key, value }))).toMatchObject({ status: "ok", key });
    }
    for (const [key, value] of samples) {
      expect(await expectJson(await get(key))).toMatchObject({ key, value });
    }
    const listed = await expectJson(await call("GET", "/keys"));
    expect([...listed.keys].sort()).toEqual(samples.map(([k]) => k).sort());
    expect(listed.count).toBe(samples.length);
    for (const [key] of samples) {
      expect(await expectJson(await del(key))).toMatchObject({ status: "ok", key, deleted: true });
    }
    expect(await expectJson(await call("GET", "/keys"))).toEqual({ keys: [], count: 0 });
  });

  test("a key over the limit only in bytes (emoji) is refused on every route", async () => {
    const { set, get, del } = setup({ keyBytesMax: 16, valueBytesMax: 32 });
    const key = "😀".repeat(5); // 10 code units, 20 bytes
    await expectError(await set({ key, value: "v" }), 413);
    await expectError(await get(key), 413);
    await expectError(await del(key), 413);
  });
});

describe("keys in the query string", () => {
  test("a key (or /keys prefix or cursor) that is not valid percent-encoded UTF-8 is refused with 400, while a literal % (sent as %25) works", async () => {
    const service = new MemoryService({ keyBytesMax: 64, valueBytesMax: 64 });
    const app = createApi(service);
    const call = (path: string, method = "GET") => app.handle(new Request(`http://localhost${path}`, { method }));
    for (const [path, method] of [
      ["/get?key=%ED%A0%80", "GET"],
      ["/delete?key=%E0%A4%A", "DELETE"],
      ["/get?key=%FF", "GET"],
      ["/keys?prefix=%E9", "GET"],
      ["/keys?limit=5&cursor=%ED%A0%80", "GET"],
    ] as const) {
      const r = await call(path, method);
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: string }).error).toMatch(/percent-encoded UTF-8/);
    }
    await service.set("100%ED", "v", { hops: 0 });
    const ok = await call("/get?key=100%25ED");
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ key: "100%ED", value: "v" });
    expect((await call("/get?key=caf%C3%A9")).status).toBe(404);
  });
});
