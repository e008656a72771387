/**
 * The OpenAPI documentation: /swagger/json must be a valid OpenAPI 3.1 document (checked by
 * @seriousme/openapi-schema-validator against the official OAS 3.1 JSON Schema) that documents
 * every endpoint, and /swagger must be a Swagger UI page that loads only from this node.
 */
import { Validator } from "@seriousme/openapi-schema-validator";
import { describe, expect, test } from "bun:test";
import type { Static } from "elysia";
import { createApi, type KvService } from "../../src/api/index.ts";
import type { ClusterReply, HealthReply } from "../../src/api/schemas.ts";

/** Enough of a KvService to build the app; the docs never call it. */
const service: KvService = {
  nodeId: "node-docs",
  group: 0,
  keyBytesMax: 1024,
  valueBytesMax: 1 << 20,
  get: (key) => ({ status: 404, body: { error: "Key not found", key } }),
  set: async (key) => ({ status: 200, body: { status: "ok", key, version: 1 } }),
  delete: async (key) => ({ status: 200, body: { status: "ok", key, deleted: false, version: 0 } }),
  keys: () => ({ keys: [], count: 0, cursor: null }),
  drain: async () => ({ status: 200, body: { status: "ok", group: 0, draining: true, keys: 0 } }),
  importEntries: async () => ({ status: 200, body: { status: "ok", imported: 0, skipped: 0, refused: [] } }),
  cluster: () => ({}) as Static<typeof ClusterReply>,
  health: () => ({}) as Static<typeof HealthReply>,
};

const app = createApi(service);
const fetchLocal = (path: string) => app.handle(new Request(`http://localhost${path}`));

type Json = Record<string, any>;

async function specDocument(): Promise<Json> {
  const res = await fetchLocal("/swagger/json");
  expect(res.status).toBe(200);
  expect(res.headers.get("content-type") ?? "").toStartWith("application/json");
  return (await res.json()) as Json;
}

/** The validator's verdict, with its errors spelled out so a failure says what to fix. */
async function validate(doc: Json): Promise<{ valid: boolean; version: string; errors: string }> {
  const validator = new Validator();
  const result = await validator.validate(structuredClone(doc));
  return { valid: result.valid, version: validator.version, errors: JSON.stringify(result.errors ?? [], null, 2) };
}

const endpoints = [
  { path: "/set", method: "post", takes: "body" },
  { path: "/get", method: "get", takes: "key" },
  { path: "/delete", method: "delete", takes: "key" },
  { path: "/keys", method: "get", takes: "paging" },
  { path: "/cluster", method: "get", takes: "nothing" },
  { path: "/health", method: "get", takes: "nothing" },
  { path: "/admin/drain", method: "post", takes: "nothing" },
  { path: "/metrics", method: "get", takes: "nothing" },
] as const;
/** Endpoints answering JSON (/metrics answers Prometheus text). */
const jsonEndpoints = endpoints.filter((e) => e.path !== "/metrics");

describe("GET /swagger/json", () => {
  test("is an OpenAPI 3.1 document that passes the OAS 3.1 schema validator", async () => {
    const doc = await specDocument();
    expect(doc.openapi).toMatch(/^3\.1\.\d+$/);
    const verdict = await validate(doc);
    expect({ valid: verdict.valid, errors: verdict.errors }).toEqual({ valid: true, errors: "[]" });
    expect(verdict.version).toBe("3.1");
  });

  test("the validator is strict enough to reject a broken copy (a response without description)", async () => {
    const doc = structuredClone(await specDocument());
    delete doc.paths["/keys"].get.responses["200"].description;
    expect((await validate(doc)).valid).toBe(false);
  });

  test("documents exactly the API's endpoints and none of the docs or internal routes", async () => {
    const doc = await specDocument();
    expect(Object.keys(doc.paths).sort()).toEqual(endpoints.map((e) => e.path).sort());
    for (const { path, method } of endpoints) {
      expect({ path, methods: Object.keys(doc.paths[path]) }).toEqual({ path, methods: [method] });
    }
  });

  test.each(jsonEndpoints)("$method $path has a JSON schema for its 200 response", async ({ path, method }) => {
    const op = (await specDocument()).paths[path]?.[method];
    expect(op).toBeDefined();
    expect(typeof op.summary).toBe("string");
    const ok = op.responses?.["200"];
    expect(typeof ok?.description).toBe("string");
    const schema = ok?.content?.["application/json"]?.schema;
    expect(schema).toBeDefined();
    expect(schema.type).toBe("object");
    expect(Object.keys(schema.properties ?? {}).length).toBeGreaterThan(0);
  });

  test("POST /set documents a required JSON request body with string key and value", async () => {
    const op = (await specDocument()).paths["/set"].post;
    expect(op.requestBody?.required).toBe(true);
    const schema = op.requestBody?.content?.["application/json"]?.schema;
    expect({ content: Object.keys(op.requestBody?.content ?? {}), schema }).toMatchObject({
      content: expect.arrayContaining(["application/json"]),
      schema: {
        type: "object",
        required: expect.arrayContaining(["key", "value"]),
        properties: { key: { type: "string" }, value: { type: "string" } },
      },
    });
  });

  test.each(endpoints.filter((e) => e.takes === "key"))("$method $path documents the key query parameter", async ({ path, method }) => {
    const op = (await specDocument()).paths[path][method];
    const key = (op.parameters ?? []).find((p: Json) => p.name === "key");
    expect(key).toMatchObject({ in: "query", required: true, schema: { type: "string" } });
    expect(op.requestBody).toBeUndefined();
  });

  test.each(endpoints.filter((e) => e.takes === "nothing"))("$method $path takes no parameters or body", async ({ path, method }) => {
    const op = (await specDocument()).paths[path][method];
    expect(op.requestBody).toBeUndefined();
    expect(op.parameters ?? []).toEqual([]);
  });

  test("get /keys documents its optional scope, prefix, limit and cursor parameters", async () => {
    const op = (await specDocument()).paths["/keys"].get;
    expect(op.requestBody).toBeUndefined();
    const params = (op.parameters ?? []).map((p: Json) => [p.name, p.in, p.required]);
    expect(params.sort()).toEqual([["cursor", "query", false], ["limit", "query", false], ["prefix", "query", false], ["scope", "query", false]]);
  });

  test("get /metrics documents a text/plain answer", async () => {
    const op = (await specDocument()).paths["/metrics"].get;
    expect(typeof op.summary).toBe("string");
    expect(op.responses["200"]).toMatchObject({ description: expect.stringContaining("Prometheus"), content: { "text/plain": { schema: { type: "string" } } } });
  });

  test("each endpoint documents the error answers it can give, and only those, each with what gives it", async () => {
    const doc = await specDocument();
    const errors: Record<string, string[]> = {
      "/set": ["400", "413", "503", "507"],
      "/get": ["400", "404", "413", "503"],
      "/delete": ["400", "413", "503", "507"],
      "/keys": ["400", "503"],
      "/admin/drain": ["503"],
      "/cluster": [],
      "/health": [],
      "/metrics": [],
    };
    for (const { path, method } of endpoints) {
      const responses = doc.paths[path][method].responses as Json;
      expect({ path, statuses: Object.keys(responses).filter((s) => s !== "200").sort() }).toEqual({ path, statuses: errors[path]! });
      for (const status of errors[path]!) {
        const r = responses[status];
        const schema = r?.content?.["application/json"]?.schema;
        expect({ path, status, required: schema?.required, error: schema?.properties?.error?.type }).toEqual({ path, status, required: ["error"], error: "string" });
        // Says when it is given, not just the shape.
        expect(r.description).not.toMatch(/^Response for status/);
      }
    }
  });
});

/** The src/href of every <script> and <link> tag in a page. */
function assetUrls(html: string): string[] {
  const urls: string[] = [];
  for (const tag of html.match(/<(script|link)\b[^>]*>/gi) ?? []) {
    const url = tag.match(/\b(?:src|href)\s*=\s*["']([^"']*)["']/i)?.[1];
    if (url !== undefined) urls.push(url);
  }
  return urls;
}

describe("GET /swagger", () => {
  for (const page of ["/swagger", "/swagger/"]) {
    test(`${page} is an HTML Swagger UI page whose assets are all on this node`, async () => {
      const res = await fetchLocal(page);
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type") ?? "").toStartWith("text/html");
      const html = await res.text();
      expect(html).toContain("SwaggerUIBundle");
      expect(html).not.toMatch(/unpkg|jsdelivr|cdnjs|googleapis/i);
      const urls = assetUrls(html);
      expect(urls.length).toBeGreaterThanOrEqual(2);
      for (const url of urls) {
        // Same origin: an absolute path, no scheme and no protocol-relative "//host".
        expect(url).not.toMatch(/^[a-z][a-z0-9+.-]*:/i);
        expect(url).not.toStartWith("//");
        expect(url).toStartWith("/");
      }
      // No other absolute URL in any src/href either.
      expect(html).not.toMatch(/(?:src|href)\s*=\s*["']\s*(?:https?:)?\/\//i);
    });
  }

  test("both assets it references answer 200 with JavaScript and CSS", async () => {
    const urls = assetUrls(await (await fetchLocal("/swagger")).text());
    const script = urls.find((u) => u.endsWith(".js"));
    const style = urls.find((u) => u.endsWith(".css"));
    expect({ script, style }).toEqual({ script: expect.any(String), style: expect.any(String) });

    const js = await fetchLocal(script!);
    expect(js.status).toBe(200);
    expect(js.headers.get("content-type") ?? "").toMatch(/^(text|application)\/javascript/);
    const jsText = await js.text();
    expect(jsText.length).toBeGreaterThan(100_000);
    expect(jsText).toContain("SwaggerUIBundle");

    const css = await fetchLocal(style!);
    expect(css.status).toBe(200);
    expect(css.headers.get("content-type") ?? "").toStartWith("text/css");
    const cssText = await css.text();
    expect(cssText.length).toBeGreaterThan(10_000);
    expect(cssText).toContain(".swagger-ui");
  });

  test('points Swagger UI at the spec with the absolute url "/swagger/json"', async () => {
    const html = await (await fetchLocal("/swagger")).text();
    const config = html.match(/SwaggerUIBundle\((\{[\s\S]*?\})\)/)?.[1];
    expect(config).toBeDefined();
    const parsed = JSON.parse(config!) as { url?: string; urls?: unknown };
    expect(parsed.url).toBe("/swagger/json");
    expect(parsed.urls).toBeUndefined();
  });
});
