/**
 * Durability.adoptHistory (a follower taking a full transfer, or a new history id) with real files:
 * the new history's log records wait until its snapshot and node.json are on disk; a failed
 * transfer does not keep records in memory; only the last of overlapping adoptions ends the wait.
 */
import { afterEach, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { frameBytesMax } from "../../src/lib/limits.ts";
import { silentLogger } from "../../src/lib/log.ts";
import { Durability } from "../../src/node/durability.ts";
import { FrameType, encodeFrame } from "../../src/protocol/frame.ts";
import { Store } from "../../src/store/store.ts";
import { snapName } from "../../src/wal/files.ts";
import { waitFor } from "../support/wait.ts";

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

let ids = 0;
const options = (dir: string) => ({ dir, group: 0, fsync: "always" as const, fsyncMs: 2, snapshotBytes: 1 << 30, frameBytesMax: frameBytesMax(1024, 1 << 20), newId: () => `a${++ids}`, log: silentLogger });

async function open(dir = mkdtempSync(join(tmpdir(), "kvnode-durability-test-"))) {
  dirs.push(dir);
  const store = new Store();
  const d = Durability.recover(store, options(dir));
  await d.open(() => {}, () => {});
  return { dir, store, d };
}
const put = (seq: number) => encodeFrame({ type: FrameType.Put, group: 0, term: 1, seq, key: `k${seq}`, value: "v".repeat(100) });

test("a transfer that cannot be made durable keeps no records in memory, and a later transfer that can ends the wait (found by review)", async () => {
  const { dir, store, d } = await open();
  mkdirSync(join(dir, `${snapName("bb01", 10)}.tmp`)); // its snapshot cannot be written (EISDIR)
  store.set("x", "1", 10);
  let failed = 0;
  d.adoptHistory("bb01", 10, 1, store, "snapshot", undefined, () => void failed++);
  for (let s = 11; s <= 2000; s++) d.append(s, put(s));
  await waitFor("the failed transfer's records to be dropped", () => d.writer.queued === 0 && failed === 1);
  for (let s = 2001; s <= 2100; s++) d.append(s, put(s));
  expect({ queued: d.writer.queued, adopting: d.adopting }).toEqual({ queued: 0, adopting: 1 });
  let done = false;
  d.adoptHistory("bb01", 3000, 1, store, "snapshot", () => void (done = true));
  for (let s = 3001; s <= 3100; s++) d.append(s, put(s));
  await waitFor("the second transfer to be durable", () => done && d.durableSeq === 3100);
  expect(d.adopting).toBe(0);
  await d.close();
  const again = new Store();
  expect(Durability.recover(again, options(dir)).recovered.seq).toBe(3100);
});

test("a transfer, then a new history id before the transfer is on disk: the records of the new history are kept (found by review)", async () => {
  const { dir, store, d } = await open();
  for (let i = 0; i < 20_000; i++) store.set(`key${i}`, "x".repeat(50), 1);
  d.adoptHistory("cc01", 0, 1, store, "snapshot");
  d.adoptHistory("cc02", 0, 1, store, "adopted");
  for (let s = 1; s <= 50; s++) d.append(s, put(s));
  await waitFor("the new history's records to be durable", () => d.adopting === 0 && d.durableSeq === 50);
  await d.close();
  const again = new Store();
  const r = Durability.recover(again, options(dir));
  expect({ seq: r.recovered.seq, history: r.identity.history_id }).toEqual({ seq: 50, history: "cc02" });
});
