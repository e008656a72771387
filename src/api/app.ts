/**
 * The REST API: the seed's endpoints with their paths and JSON shapes, plus OpenAPI documentation
 * at /swagger (Swagger UI, served from this node: no CDN) and /swagger/json. The only place where
 * errors become HTTP statuses. Opens no sockets: the node calls `.listen`.
 */
import { openapi } from "@elysiajs/openapi";
import { Elysia } from "elysia";
import { BadRequestError, KvError, StorageFullError, TooLargeError, UnavailableError } from "../lib/errors.ts";
import { isWellFormed, utf8Length } from "../lib/utf8.ts";
import { docsAssets } from "./docs.ts";
import { ClusterReply, DeleteReply, ErrorBody, GetReply, HealthReply, KeyQuery, KeysReply, SetBody, SetReply } from "./schemas.ts";
import type { KvService } from "./service.ts";

export const HOPS_HEADER = "x-kvnode-hops";
const VERSION = "0.1.0";

/** Methods of each route, for 405 answers. */
const routes: Record<string, string[]> = {
  "/set": ["POST"],
  "/get": ["GET"],
  "/delete": ["DELETE"],
  "/keys": ["GET"],
  "/cluster": ["GET"],
  "/health": ["GET"],
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

function checkKey(s: KvService, key: string | undefined): string {
  if (key === undefined) throw new BadRequestError("Missing key: pass it as ?key=");
  if (key.length === 0) throw new BadRequestError("Key must not be empty");
  if (!isWellFormed(key)) throw new BadRequestError("Key is not valid Unicode (it has a lone surrogate)");
  const n = utf8Length(key);
  if (n > s.keyBytesMax) throw new TooLargeError(`Key is ${n} bytes, limit is ${s.keyBytesMax}`);
  return key;
}

function checkValue(s: KvService, key: string, value: string): void {
  if (!isWellFormed(value)) throw new BadRequestError(`Cannot set "${key.slice(0, 64)}": value is not valid Unicode (it has a lone surrogate)`);
  const n = value.length > s.valueBytesMax / 3 ? utf8Length(value) : value.length;
  if (n > s.valueBytesMax) throw new TooLargeError(`Cannot set "${key.slice(0, 64)}": value is ${n} bytes, limit is ${s.valueBytesMax}`);
}

async function parseJsonBody(request: Request, limit: number): Promise<unknown> {
  const declared = Number(request.headers.get("content-length") ?? 0);
  if (declared > limit) throw new TooLargeError(`Request body is ${declared} bytes, limit is ${limit}`);
  const text = await request.text();
  if (text.length > limit) throw new TooLargeError(`Request body is over ${limit} bytes`);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new BadRequestError(`Malformed JSON body: ${(e as Error).message}`);
  }
}

function hopsOf(request: Request): number {
  const h = Number(request.headers.get(HOPS_HEADER) ?? 0);
  return Number.isInteger(h) && h >= 0 ? h : 0;
}

/** A validation failure, told in one line: which field and what was expected. */
function describeValidation(error: unknown): string {
  const all = (error as { all?: { path?: string; message?: string }[] }).all;
  const first = all?.[0];
  if (!first) return "Invalid request";
  const field = (first.path ?? "").replace(/^\//, "") || "body";
  return `Invalid field "${field}": ${first.message ?? "wrong type"}`;
}

export function createApi(s: KvService) {
  const bodyLimit = bodyBytesMax(s);
  const errors = { 400: ErrorBody, 404: ErrorBody, 413: ErrorBody, 503: ErrorBody, 507: ErrorBody } as const;
  return new Elysia({ name: "kvnode-api" })
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
              "Distributed key-value store for Bun. Writes and deletes sent to a follower are forwarded to its group's leader. Errors are JSON objects with an error field.",
          },
        },
      }),
    )
    .onRequest(({ set }) => {
      set.headers["x-kvnode-node"] = s.nodeId;
      set.headers["x-kvnode-group"] = String(s.group);
    })
    .onError(({ code, error, set, request, path }) => {
      // Our parser's errors reach here wrapped in Elysia's ParseError (code "PARSE"), as its cause.
      const kv = error instanceof KvError ? error : (error as { cause?: unknown })?.cause;
      if (kv instanceof KvError) {
        set.status = statusOf(kv);
        return { error: kv.message };
      }
      if (code === "VALIDATION" && (error as { type?: string }).type === "response") {
        set.status = 500;
        return { error: `Internal error: the answer did not match its schema (${describeValidation(error)})` };
      }
      if (code === "VALIDATION") {
        set.status = 400;
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
      set.status = 500;
      return { error: `Internal error: ${String((error as Error)?.message ?? error)}` };
    })
    .post(
      "/set",
      async ({ body, request, set }) => {
        const key = checkKey(s, body.key);
        checkValue(s, key, body.value);
        const r = await s.set(key, body.value, hopsOf(request));
        set.status = r.status;
        return r.body as never;
      },
      {
        // Our own parser: JSON whatever the content-type (curl -d sends form encoding), with a
        // clear error for malformed JSON and 413 for an oversized body.
        parse: [({ request }) => parseJsonBody(request, bodyLimit), "json"],
        body: SetBody,
        response: { 200: SetReply, ...errors },
        detail: { summary: "Set a key to a value", description: "On a follower the write is forwarded to its group's leader and answered as the leader answers." },
      },
    )
    .get(
      "/get",
      ({ query, set }) => {
        const key = checkKey(s, query.key);
        const e = s.get(key);
        if (!e) {
          set.status = 404;
          return { error: "Key not found", key };
        }
        return { key, value: e.value, version: e.version };
      },
      { query: KeyQuery, response: { 200: GetReply, ...errors }, detail: { summary: "Read a key from this node" } },
    )
    .delete(
      "/delete",
      async ({ query, request, set }) => {
        const key = checkKey(s, query.key);
        const r = await s.delete(key, hopsOf(request));
        set.status = r.status;
        return r.body as never;
      },
      { query: KeyQuery, response: { 200: DeleteReply, ...errors }, detail: { summary: "Delete a key", description: "Forwarded to the group's leader when sent to a follower." } },
    )
    .get(
      "/keys",
      () => {
        const keys = s.keys();
        return { keys, count: keys.length };
      },
      { response: { 200: KeysReply }, detail: { summary: "List this node's keys" } },
    )
    .get("/cluster", () => s.cluster(), { response: { 200: ClusterReply }, detail: { summary: "Membership, groups, ring shares, replication" } })
    .get("/health", () => s.health(), { response: { 200: HealthReply }, detail: { summary: "Liveness and role of this node" } });
}

export type Api = ReturnType<typeof createApi>;
