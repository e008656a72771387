/**
 * The REST API: the seed's endpoints with their paths and JSON shapes, plus OpenAPI documentation
 * at /swagger (Swagger UI, served from this node: no CDN) and /swagger/json. The only place where
 * errors become HTTP statuses. Opens no sockets: the node calls `.listen`.
 */
import { openapi } from "@elysiajs/openapi";
import { Elysia } from "elysia";
import { BadRequestError, KvError, StorageFullError, TooLargeError, UnavailableError } from "../lib/errors.ts";
import { requestBodyBytesMax } from "../lib/limits.ts";
import { isWellFormed, utf8Length } from "../lib/utf8.ts";
import { docsAssets } from "./docs.ts";
import { type CountedRoute, RequestCounts, type TimedRoute, createMetrics } from "./metrics.ts";
import { GROUP_HEADER, HOPS_HEADER, NO_FALLBACK_HEADER, NODE_HEADER, SERVED_GROUP_HEADER } from "../routing/forward.ts";
import type { RequestContext } from "../routing/router.ts";
import {
  ClusterReply, DeleteReply, DrainReply, GetQuery, GetReply, HealthReply, ImportBody, ImportReply, KeyQuery, KeysQuery, KeysReply, SetBody, SetReply, errorBody,
} from "./schemas.ts";
import type { KvService, Reply } from "./service.ts";

export { HOPS_HEADER };
const VERSION = "0.1.0";

/** Methods of each route, for 405 answers. */
const routes: Record<string, string[]> = {
  "/set": ["POST"],
  "/get": ["GET"],
  "/delete": ["DELETE"],
  "/keys": ["GET"],
  "/cluster": ["GET"],
  "/health": ["GET"],
  "/metrics": ["GET"],
  "/admin/drain": ["POST"],
  "/internal/import": ["POST"],
};

/** Largest /set body we read: the largest key and value, JSON-escaped (up to 6 bytes a byte). */
export function bodyBytesMax(s: Pick<KvService, "keyBytesMax" | "valueBytesMax">): number {
  return 6 * (s.keyBytesMax + s.valueBytesMax) + 1024;
}

function statusOf(e: KvError): number {
  if (e instanceof BadRequestError) return 400;
  if (e instanceof TooLargeError) return 413;
  if (e instanceof UnavailableError) return 503;
  if (e instanceof StorageFullError) return 507;
  return 500;
}

/**
 * Elysia hands over a query value it cannot percent-decode as the raw text, so a key sent as
 * invalid UTF-8 (`?key=%ED%A0%80`) would be looked up as the literal "%ED%A0%80". Refuse it.
 */
function checkQueryEncoding(request: Request, key: string | undefined, name = "key"): void {
  if (key === undefined || !key.includes("%")) return;
  const q = request.url.indexOf("?");
  for (const part of request.url.slice(q + 1).split("&")) {
    if (!part.startsWith(`${name}=`)) continue;
    try {
      decodeURIComponent(part.slice(name.length + 1).replace(/\+/g, " "));
    } catch {
      throw new BadRequestError(`${name[0]!.toUpperCase()}${name.slice(1)} is not valid percent-encoded UTF-8`);
    }
  }
}

/** The answer for an error thrown while serving a request: our errors by kind, anything else 500. */
export function errorReply(e: unknown): Reply {
  if (e instanceof KvError) {
    const body = e instanceof UnavailableError && e.group !== undefined ? { error: e.message, group: e.group } : { error: e.message };
    return { status: statusOf(e), body };
  }
  return { status: 500, body: { error: `Internal error: ${String((e as Error)?.message ?? e)}` } };
}

export function checkKey(s: Pick<KvService, "keyBytesMax">, key: string | undefined): string {
  if (key === undefined) throw new BadRequestError("Missing key: pass it as ?key=");
  if (key.length === 0) throw new BadRequestError("Key must not be empty");
  if (!isWellFormed(key)) throw new BadRequestError("Key is not valid Unicode (it has a lone surrogate)");
  // A UTF-16 unit is at most 3 UTF-8 bytes: short keys need no counting.
  const n = key.length * 3 <= s.keyBytesMax ? key.length : utf8Length(key);
  if (n > s.keyBytesMax) throw new TooLargeError(`Key is ${n} bytes, limit is ${s.keyBytesMax}`);
  return key;
}

export function checkValue(s: Pick<KvService, "valueBytesMax">, key: string, value: string): void {
  if (!isWellFormed(value)) throw new BadRequestError(`Cannot set "${key.slice(0, 64)}": value is not valid Unicode (it has a lone surrogate)`);
  const n = value.length > s.valueBytesMax / 3 ? utf8Length(value) : value.length;
  if (n > s.valueBytesMax) throw new TooLargeError(`Cannot set "${key.slice(0, 64)}": value is ${n} bytes, limit is ${s.valueBytesMax}`);
}

const malformed = (e: unknown): never => {
  throw new BadRequestError(`Malformed JSON body: ${(e as Error).message}`);
};

/**
 * A JSON body of at most `limit` bytes. With a declared length within the limit it is parsed
 * natively from the bytes, in one promise (three nested async calls here cost 0.2-0.7 us of a
 * write's 12-14 us of server CPU in A/B runs); without one (chunked), the text is read first so
 * an oversized body is refused before it is parsed.
 */
function parseJsonBody(request: Request, limit: number): Promise<unknown> {
  const declared = request.headers.get("content-length");
  if (declared !== null) {
    const n = Number(declared);
    if (n > limit) return Promise.reject(new TooLargeError(`Request body is ${n} bytes, limit is ${limit}`));
    return request.json().catch(malformed);
  }
  return request.text().then((text) => {
    // In bytes, as a declared length is (a UTF-16 unit is at most 3 of them: short texts need no counting).
    if (text.length * 3 > limit && utf8Length(text) > limit) throw new TooLargeError(`Request body is over ${limit} bytes`);
    try {
      return JSON.parse(text) as unknown;
    } catch (e) {
      return malformed(e);
    }
  });
}

/**
 * The /set body: JSON whatever the content-type (curl -d sends form encoding), a clear error for
 * malformed JSON or a missing or mistyped field, 413 for an oversized body. Other fields are ignored.
 */
function setBodyOf(request: Request, limit: number): Promise<{ key: string; value: string }> {
  return parseJsonBody(request, limit).then(checkSetBody);
}

function checkSetBody(b: unknown): { key: string; value: string } {
  const body = b as { key?: unknown; value?: unknown } | null;
  if (typeof body !== "object" || body === null || Array.isArray(body)) throw new BadRequestError('Invalid field "body": Expected object');
  const { key, value } = body;
  if (typeof key !== "string") throw new BadRequestError(`Invalid field "key": ${key === undefined ? "Expected required property" : "Expected string"}`);
  if (typeof value !== "string") throw new BadRequestError(`Invalid field "value": ${value === undefined ? "Expected required property" : "Expected string"}`);
  return { key, value };
}

/** Routing context a forwarding node put in the headers (none on a client's request). */
function contextOf(request: Request, anyReplica = false): RequestContext {
  const h = request.headers;
  const hops = Number(h.get(HOPS_HEADER) ?? 0);
  const g = h.get(GROUP_HEADER);
  const group = g === null ? undefined : Number(g);
  return {
    hops: Number.isInteger(hops) && hops >= 0 ? hops : 0,
    targetGroup: group !== undefined && Number.isInteger(group) && group >= 0 ? group : undefined,
    noFallback: h.get(NO_FALLBACK_HEADER) === "1",
    anyReplica,
  };
}

/**
 * A request to /get, /set or /delete comes from a client: nodes forward these over the cluster
 * port. The routes do not read headers at all (building a request's Headers costs ~5% of a GET),
 * so a client cannot pose as a forwarding node.
 */
const CLIENT: RequestContext = Object.freeze({ hops: 0, targetGroup: undefined, noFallback: false, anyReplica: false });
const CLIENT_ANY: RequestContext = Object.freeze({ ...CLIENT, anyReplica: true });

/**
 * Elysia's `set`; `counted` is the status an answer was counted under (see onError), `t0` when a
 * timed route's handler began (performance.now()), until its duration is recorded.
 */
type Setter = { status?: number | string; headers: Record<string, string | number>; counted?: number; t0?: number };

const isTimed = (route: string): route is TimedRoute => route === "/get" || route === "/set" || route === "/delete";

/** Record how long a timed request took, once. */
function timed(counts: RequestCounts, route: CountedRoute, set: Setter): void {
  if (set.t0 === undefined || !isTimed(route)) return;
  counts.time(route, performance.now() - set.t0);
  set.t0 = undefined;
}

/**
 * Send a Reply: status and body, and x-kvnode-node / x-kvnode-group naming the node that served it
 * when that is not the node asked (a forwarded answer) or when the asker is a node (`own`).
 */
function answer(counts: RequestCounts, route: CountedRoute, r: Reply, set: Setter, own?: Record<string, string>): never {
  counts.add(route, r.status);
  set.counted = r.status;
  timed(counts, route, set);
  // Elysia answers a plain 200 on a faster path when the status was never assigned (~7% of a GET).
  if (r.status !== 200) set.status = r.status;
  const h = r.headers ?? own;
  if (h) Object.assign(set.headers, h);
  return r.body as never;
}

function limitOf(v: string | undefined, fallback: number | undefined): number | undefined {
  if (v === undefined || v === "") return fallback;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 10_000) throw new BadRequestError(`Invalid limit "${v}": use an integer from 1 to 10000`);
  return n;
}

/** A validation failure, told in one line: which field and what was expected. */
function describeValidation(error: unknown): string {
  const all = (error as { all?: { path?: string; message?: string }[] }).all;
  const first = all?.[0];
  if (!first) return "Invalid request";
  const field = (first.path ?? "").replace(/^\//, "") || "body";
  return `Invalid field "${field}": ${first.message ?? "wrong type"}`;
}

/** The answer to a request that failed (thrown error, validation, unknown path or method); sets its status. */
function errorAnswer(code: unknown, error: unknown, set: Setter, request: Request, path: string): Record<string, unknown> {
  // Our parser's errors reach here wrapped in Elysia's ParseError (code "PARSE"), as its cause.
  const kv = error instanceof KvError ? error : (error as { cause?: unknown })?.cause;
  if (kv instanceof KvError) {
    const r = errorReply(kv);
    set.status = r.status;
    return r.body;
  }
  if (code === "VALIDATION" && (error as { type?: string }).type === "response") {
    set.status = 500;
    return { error: `Internal error: the answer did not match its schema (${describeValidation(error)})` };
  }
  if (code === "VALIDATION") {
    set.status = 400;
    // The key-taking routes' schemas require ?key= (so the document says so): word its absence as the handlers did.
    const v = error as { type?: string; value?: unknown; all?: { path?: string }[] };
    if (v.type === "query" && v.all?.[0]?.path === "/key" && (v.value as { key?: unknown } | undefined)?.key === undefined) return { error: "Missing key: pass it as ?key=" };
    return { error: describeValidation(error) };
  }
  if (code === "PARSE") {
    set.status = 400;
    return { error: "Malformed request body" };
  }
  if (code === "NOT_FOUND") {
    const allowed = routes[path];
    if (allowed && !allowed.includes(request.method)) {
      set.status = 405;
      set.headers["allow"] = allowed.join(", ");
      return { error: `Method ${request.method} not allowed on ${path}: use ${allowed.join(", ")}` };
    }
    set.status = 404;
    return { error: `No such endpoint: ${request.method} ${path}` };
  }
  const r = errorReply(error);
  set.status = r.status;
  return r.body;
}

export function createApi(s: KvService) {
  const bodyLimit = bodyBytesMax(s);
  const counts = new RequestCounts();
  const metrics = createMetrics(() => s.cluster(), counts);
  // The error answers each route can give, for the OpenAPI document (any route can also answer
  // 500 for a bug, and 405 for another method).
  const e400 = errorBody("Bad request: a missing, empty or malformed key, or invalid Unicode");
  const e413 = errorBody("The key is over -max-key-bytes");
  const e503 = errorBody("The group owning the key has no reachable leader (or member, for a read), or its log cannot be written");
  const e507 = errorBody("The disk of the owning group's leader is full");
  const keyErrors = { 400: e400, 413: e413, 503: e503 } as const;
  const setErrors = {
    400: errorBody("Malformed JSON, a missing or non-string key or value, an empty key, or invalid Unicode"),
    413: errorBody("The key, the value or the body is over its limit (-max-key-bytes, -max-value-bytes)"),
    503: errorBody(
      "The owning group has no reachable leader, its log cannot be written, or -sync-replicas is not met (after a timeout the write is kept: its outcome is unknown)",
    ),
    507: e507,
  } as const;
  /** Headers naming this node, on answers to another node's HTTP forwards (/keys, drain, import). */
  const own = { [NODE_HEADER]: s.nodeId, [SERVED_GROUP_HEADER]: String(s.group) };

  // The handlers of /get, /set and /delete (nodes forward these over the cluster port instead:
  // src/routing/link.ts and src/node/requests.ts).
  const readKey = (query: { key?: string; replica?: string }, request: Request, set: Setter, ctx: RequestContext) => {
    checkQueryEncoding(request, query.key);
    const key = checkKey(s, query.key);
    if (query.replica !== undefined && query.replica !== "any" && query.replica !== "leader")
      throw new BadRequestError(`Invalid replica "${query.replica}": use any or leader`);
    const r = s.get(key, ctx);
    if (r instanceof Promise) return r.then((x) => answer(counts, "/get", x, set)) as never;
    return answer(counts, "/get", r, set);
  };
  const writeKey = (body: { key: string; value: string }, ctx: RequestContext, set: Setter) => {
    const key = checkKey(s, body.key);
    checkValue(s, key, body.value);
    const r = s.set(key, body.value, ctx);
    if (r instanceof Promise) return r.then((x) => answer(counts, "/set", x, set)) as never;
    return answer(counts, "/set", r, set);
  };
  const deleteKey = async (query: { key?: string }, request: Request, set: Setter, ctx: RequestContext) => {
    checkQueryEncoding(request, query.key);
    const key = checkKey(s, query.key);
    return answer(counts, "/delete", await s.delete(key, ctx), set);
  };
  // normalize: false. Elysia's default rebuilds every body, query and answer to drop fields the
  // schema does not name; for /set that was a sixth of the server's CPU per request (16.5 against
  // 20.1 µs in A/B runs). The schemas are still checked, and without normalizing Elysia refuses a
  // field a schema does not name: request schemas allow them (schemas.ts), and answers are built
  // with exactly their schema's fields (one that is not is a 500, which the tests would show).
  // standardHostname: false. By default Elysia looks for the path from the 12th character of the
  // URL, assuming a host of at least 4 characters: a client reaching a node as http://kv/ (a short
  // service name on port 80) got 404 on every route (found by an audit).
  return new Elysia({ name: "kvnode-api", normalize: false, handler: { standardHostname: false } })
    .use(docsAssets())
    .use(
      openapi({
        path: "/swagger",
        specPath: "/swagger/json",
        provider: "swagger-ui",
        exclude: { paths: [/^\/swagger/] },
        swagger: {
          // An absolute spec url works whether the page is opened as /swagger or /swagger/.
          ...({ url: "/swagger/json" } as object),
          cdn: "/swagger/assets/swagger-ui-bundle.js",
          theme: "/swagger/assets/swagger-ui.css",
          autoDarkMode: false,
        },
        documentation: {
          info: {
            title: "kvnode",
            version: VERSION,
            description:
              "Distributed key-value store for Bun. Any node takes any key: requests go to the group that owns the key on the hash ring. Errors are JSON objects with an error field.",
          },
        },
      }),
    )
    .onError(({ code, error, set, request, path }) => {
      const route = RequestCounts.routeOf(path);
      // An answer that failed its schema was counted when it was made: it becomes this 500 instead.
      const counted = (set as Setter).counted;
      if (counted !== undefined) counts.add(route, counted, -1);
      const body = errorAnswer(code, error, set, request, path);
      counts.add(route, Number(set.status ?? 500));
      timed(counts, route, set);
      return body;
    })
    // The body is read and checked here, not by an Elysia parse hook and body schema: that path
    // cost about a tenth of /set's CPU (14.4 against 16.0 us a request in A/B runs). The schema
    // still documents it.
    .post("/set", ({ request, set }) => {
      (set as Setter).t0 = performance.now();
      return setBodyOf(request, bodyLimit).then((b) => writeKey(b, CLIENT, set)) as never;
    }, {
      response: { 200: SetReply, ...setErrors },
      detail: {
        summary: "Set a key to a value",
        description: "Any node accepts any key: the write is forwarded to the leader of the group that owns the key on the ring, and answered as that leader answers.",
        requestBody: { required: true, content: { "application/json": { schema: SetBody } } },
      },
    })
    .get("/get", ({ query, request, set }) => {
      (set as Setter).t0 = performance.now();
      return readKey(query, request, set, query.replica === "any" ? CLIENT_ANY : CLIENT);
    }, {
      query: GetQuery,
      response: { 200: GetReply, 404: errorBody("No such key (never set, or deleted)"), ...keyErrors },
      detail: {
        summary: "Read a key",
        description:
          "A node of the owning group answers from its own copy; any other node forwards to the owning group's leader (or, with replica=any, to any of its members).",
      },
    })
    .delete("/delete", ({ query, request, set }) => {
      (set as Setter).t0 = performance.now();
      return deleteKey(query, request, set, CLIENT);
    }, {
      query: KeyQuery,
      response: { 200: DeleteReply, ...keyErrors, 507: e507 },
      detail: { summary: "Delete a key", description: "Forwarded to the leader of the group that owns the key." },
    })
    .get(
      "/keys",
      async ({ query, request }) => {
        const scope = query.scope ?? "node";
        checkQueryEncoding(request, query.prefix, "prefix");
        checkQueryEncoding(request, query.cursor, "cursor");
        if (scope !== "node" && scope !== "cluster") throw new BadRequestError(`Invalid scope "${scope}": use node or cluster`);
        const page = await s.keys(
          { scope, prefix: query.prefix ?? "", limit: limitOf(query.limit, scope === "cluster" ? 1000 : undefined), cursor: query.cursor || undefined },
          contextOf(request),
        );
        counts.add("/keys", 200);
        return query.limit !== undefined || scope === "cluster" ? page : { keys: page.keys, count: page.count };
      },
      {
        query: KeysQuery,
        response: { 200: KeysReply, 400: errorBody("An invalid scope, limit or cursor"), 503: errorBody("With scope=cluster: no member of some group answered") },
        detail: {
          summary: "List keys",
          description: "Without parameters: every key this node holds, sorted (as the original). scope=cluster lists every group's keys, deduplicated, a page at a time.",
        },
      },
    )
    .post("/admin/drain", async ({ request, set }) => answer(counts, "/admin/drain", await s.drain(contextOf(request)), set, own), {
      response: { 200: DrainReply, 503: errorBody("No leader of this group is known, or no other group exists to take its keys") },
      detail: { summary: "Drain this node's group", description: "Moves the group's keys to the other groups; once /cluster shows it holds 0 keys, its nodes can be stopped." },
    })
    .post("/internal/import", async ({ body, request, set }) => {
      // Checked as /set checks a write (found by an audit: an oversized value taken here could
      // never be replicated or even read back from the log, and a lone surrogate split the copies).
      for (const e of body.entries) {
        const key = checkKey(s, e.key);
        if (e.deleted === true) continue;
        if (typeof e.value !== "string") throw new BadRequestError(`Invalid entry "${key.slice(0, 64)}": give a string value, or "deleted": true`);
        checkValue(s, key, e.value);
      }
      return answer(counts, "/internal/import", await s.importEntries(body.entries, contextOf(request)), set, own);
    }, {
      parse: [({ request }) => parseJsonBody(request, requestBodyBytesMax(s.keyBytesMax, s.valueBytesMax)), "json"],
      body: ImportBody,
      response: { 200: ImportReply, ...setErrors },
      detail: { hide: true },
    })
    .get("/cluster", () => {
      const v = s.cluster();
      counts.add("/cluster", 200);
      return v;
    }, { response: { 200: ClusterReply }, detail: { summary: "Membership, groups, ring shares, replication" } })
    .get("/health", () => {
      const v = s.health();
      counts.add("/health", 200);
      return v;
    }, { response: { 200: HealthReply }, detail: { summary: "Liveness and role of this node" } })
    .get(
      "/metrics",
      async () => {
        const text = await metrics.scrape();
        counts.add("/metrics", 200);
        return new Response(text, { headers: { "content-type": metrics.contentType } });
      },
      {
        detail: {
          summary: "Prometheus metrics",
          description:
            "The node in Prometheus' text format: answers by route and status, keys, sequences, replication lag, storage, membership, rebalancing, discovery, and the process (CPU, memory, event-loop lag).",
          responses: { 200: { description: "Prometheus text exposition format 0.0.4", content: { "text/plain": { schema: { type: "string" } } } } },
        },
      },
    );
}

export type Api = ReturnType<typeof createApi>;
