/**
 * The layering README.md describes, checked: imports only point down the list, and the pure
 * parts (codecs, ring, store, membership, replication machines, routing decisions) never touch
 * Bun, the disk or the network, so they stay testable in memory.
 */
import { expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const src = join(import.meta.dir, "..", "src");
const layers = ["lib", "protocol", "ring", "store", "wal", "discovery", "replication", "routing", "api", "node", "cli"];
const pure = [
  "protocol/",
  "ring/",
  "store/",
  "discovery/membership.ts",
  "replication/leader.ts",
  "replication/follower.ts",
  "replication/history.ts",
  "replication/outbox.ts",
  "routing/router.ts",
];

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : []));
}

const withoutComments = (code: string) => code.replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");

test("every src folder is a known layer", () => {
  const folders = readdirSync(src, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  expect(folders.filter((f) => !layers.includes(f))).toEqual([]);
});

test("imports only point down the layer list", () => {
  const wrong: string[] = [];
  for (const file of files(src)) {
    const own = relative(src, file).split("/")[0]!;
    for (const m of readFileSync(file, "utf8").matchAll(/from "\.\.\/([a-z]+)\//g)) {
      const target = m[1]!;
      if (layers.indexOf(target) > layers.indexOf(own)) wrong.push(`${relative(src, file)} imports ${target}/ (above ${own}/)`);
    }
  }
  expect(wrong).toEqual([]);
});

test("the pure parts use no Bun API, no disk and no network", () => {
  const wrong: string[] = [];
  for (const file of files(src)) {
    const rel = relative(src, file);
    if (!pure.some((p) => rel === p || (p.endsWith("/") && rel.startsWith(p)))) continue;
    const code = withoutComments(readFileSync(file, "utf8"));
    if (/\bBun\./.test(code)) wrong.push(`${rel} uses Bun.*`);
    for (const m of code.matchAll(/from "node:([a-z/]+)"/g)) wrong.push(`${rel} imports node:${m[1]}`);
    if (/\b(fetch|setTimeout|setInterval|performance\.now|Date\.now|Math\.random)\(/.test(code)) wrong.push(`${rel} reads time, randomness or the network directly`);
  }
  expect(wrong).toEqual([]);
});
