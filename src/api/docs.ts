/**
 * Swagger UI's two files, served by the node itself so /swagger works with no internet access.
 * They come from the swagger-ui-dist package (no dependencies but a tiny one), read once.
 */
import { Elysia } from "elysia";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";

const require = createRequire(import.meta.url);

function asset(name: string, type: string): () => Response {
  let bytes: Buffer | null = null;
  return () => {
    bytes ??= readFileSync(join(dirname(require.resolve("swagger-ui-dist/package.json")), name));
    return new Response(bytes, { headers: { "content-type": type, "cache-control": "public, max-age=86400" } });
  };
}

export function docsAssets() {
  return new Elysia({ name: "kvnode-docs-assets" })
    .get("/swagger/assets/swagger-ui-bundle.js", asset("swagger-ui-bundle.js", "text/javascript; charset=utf-8"), { detail: { hide: true } })
    .get("/swagger/assets/swagger-ui.css", asset("swagger-ui.css", "text/css; charset=utf-8"), { detail: { hide: true } });
}
