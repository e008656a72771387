/**
 * Rebalancing, on a group's leader: keys this group no longer owns on the ring (a new group took
 * them, or this group is draining) move to their owners in bounded batches while both sides keep
 * serving. Only keys whose owner changed move. A batch is imported by the owner's leader only for
 * keys it has never seen, so a write or delete that reached the new owner first is never undone;
 * then the keys are deleted here, each only if nobody changed it meanwhile. Tombstones of deletes
 * made here while this group owned the key move too, as deletes, in batches of their own (found
 * by an audit: deletes made on the new owners during a drain came back when the drain was
 * cancelled, as the old owner still held the keys); one the owner has taken is superseded here
 * by a delete of the current ring, which is never sent.
 * Passes repeat until one finds nothing to move.
 */
import type { Member } from "../discovery/membership.ts";
import type { Logger } from "../lib/log.ts";
import type { Leader } from "../replication/leader.ts";
import type { HashRing } from "../ring/ring.ts";
import { forward } from "../routing/forward.ts";
import type { Store } from "../store/store.ts";

export interface MoverDeps {
  group: number;
  store: Store;
  leader: Leader;
  ring: () => HashRing;
  leaderOf: (group: number) => Member | undefined;
  /** Resolves once `seq` is durable here. */
  durable: (seq: number) => Promise<void>;
  /** Whether the tombstone of `key` at `version` is a delete made while this group owned the key (one to send). */
  ownTombstone: (key: string, version: number) => boolean;
  /** Tell the cluster at once that moving started or stopped. */
  announce: () => void;
  /** Largest request body the owners take (their maxRequestBodySize): no batch is larger. */
  bodyBytesMax: number;
  log: Logger;
}

export interface MoveProgress {
  draining: boolean;
  moving: boolean;
  moved: number;
  passes: number;
  last_error: string | null;
}

const SCAN_PER_TICK = 5_000;
const BATCH_ENTRIES = 500;
const BATCH_BYTES = 256 * 1024;
/** A batch body's bytes around its entries. */
const BODY_OVERHEAD_BYTES = 1024;

interface Item {
  key: string;
  /** null: a tombstone (the key was deleted here at `version`). */
  value: string | null;
  version: number;
  /** The entry as it goes in the batch's JSON, and its length in bytes. */
  json: string;
  bytes: number;
  owner: number;
}

export class Mover {
  draining = false;
  moving = false;
  moved = 0;
  passes = 0;
  lastError: string | null = null;
  private iter: Iterator<string> | null = null;
  private ringKey = "";
  private foundThisPass = 0;
  /** A key scanned that did not fit the last batch: first in the next. */
  private held: Item | null = null;
  private failedThisPass = false;
  private busy = false;
  /** Owners that refused a batch of tombstones as malformed (a node of an older version): warned once. */
  private noTombstones = new Set<number>();

  constructor(private readonly d: MoverDeps) {}

  progress(): MoveProgress {
    return { draining: this.draining, moving: this.moving, moved: this.moved, passes: this.passes, last_error: this.lastError };
  }

  /** One bounded step: scan some keys, send what is misplaced, delete what the owner took. */
  async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      await this.step();
    } catch (e) {
      this.lastError = String((e as Error).message ?? e);
      this.failedThisPass = true;
    } finally {
      this.busy = false;
    }
  }

  /**
   * Say "moving" from the start, until a first pass has looked at every key: a leader back from a
   * restart may hold keys another group owns now, and until it finds them the owners must take it
   * that keys may still come (found by review: with a large store and a few such keys, a delete
   * made there before the scan reached them left no tombstone).
   */
  start(): void {
    this.setMoving(true);
  }

  private setMoving(on: boolean): void {
    if (this.moving === on) return;
    this.moving = on;
    this.d.log.info(on ? "moving keys to their owners" : "no keys left to move", { group: this.d.group, moved: this.moved });
    this.d.announce();
  }

  private async step(): Promise<void> {
    const ring = this.d.ring();
    const key = ring.groups.join(",");
    if (key !== this.ringKey) {
      this.ringKey = key;
      this.iter = null;
      this.held = null;
    }
    if (!this.iter) {
      if (!this.moving && this.passes > 0 && !this.draining && key === this.settledRing) return;
      this.iter = scan(this.d.store);
      this.foundThisPass = 0;
      this.failedThisPass = false;
    }
    // By owner, live entries and tombstones apart (an older node refuses tombstones: see send).
    const batches = new Map<number, Item[]>();
    // Bodies stay within what the owners take (found by an audit: with small -max-value-bytes,
    // every 256 KiB batch was cut off by the owner's HTTP server, and nothing ever moved).
    const budget = Math.min(BATCH_BYTES, this.d.bodyBytesMax - BODY_OVERHEAD_BYTES);
    let bytes = 0;
    let count = 0;
    const add = (it: Item) => {
      const b = 2 * it.owner + (it.value === null ? 1 : 0);
      let list = batches.get(b);
      if (!list) batches.set(b, (list = []));
      list.push(it);
      bytes += it.bytes;
      count++;
    };
    if (this.held) {
      const it = this.held;
      this.held = null;
      if (this.d.store.versionOf(it.key) === it.version) add(it); // else it changed meanwhile: the scan finds it again
    }
    for (let n = 0; n < SCAN_PER_TICK && count < BATCH_ENTRIES && bytes < budget; n++) {
      const next = this.iter.next();
      if (next.done) {
        this.passes++;
        this.iter = null;
        if (this.foundThisPass === 0 && !this.failedThisPass) {
          this.settledRing = key;
          this.setMoving(false);
        }
        break;
      }
      const owner = ring.ownerOf(next.value);
      if (owner === undefined || owner === this.d.group) continue;
      const e = this.d.store.get(next.value);
      const version = e ? e.version : this.d.store.versionOf(next.value);
      if (version === 0) continue;
      if (!e && (this.noTombstones.has(owner) || !this.d.ownTombstone(next.value, version))) continue;
      const value = e ? e.value : null;
      const json = JSON.stringify(value === null ? { key: next.value, deleted: true } : { key: next.value, value });
      const it: Item = { key: next.value, value, version, json, bytes: Buffer.byteLength(json) + 1, owner };
      this.foundThisPass++;
      // At least one key a batch (the largest key and value fit the owner's limit).
      if (count > 0 && bytes + it.bytes > budget) {
        this.held = it;
        break;
      }
      add(it);
    }
    if (count === 0) return;
    this.setMoving(true);
    for (const [b, items] of batches) await this.send(b >> 1, items);
  }

  private settledRing = "";

  private async send(owner: number, items: Item[]): Promise<void> {
    const to = this.d.leaderOf(owner);
    if (!to) {
      this.failedThisPass = true;
      this.lastError = `no leader known for group ${owner}`;
      return;
    }
    const body = `{"from_group":${this.d.group},"entries":[${items.map((it) => it.json).join(",")}]}`;
    const r = await forward(to, "POST", "/internal/import", body, { hops: 0, group: owner });
    if (r.status === 400 && items[0]!.value === null && /entries\/\d+\/value|Expected required property|give a string value/.test(JSON.stringify(r.body))) {
      // A node of an older version, which takes values only: its keys still move, without the
      // deletes (they stay here, to be sent once it is upgraded and this leader restarts).
      this.noTombstones.add(owner);
      this.d.log.warn("the owner refused moved deletes (an older version?): its keys move without them", { group: owner, answer: JSON.stringify(r.body).slice(0, 200) });
      return;
    }
    if (r.status !== 200) {
      this.failedThisPass = true;
      this.lastError = `group ${owner} refused the batch: ${r.status} ${JSON.stringify(r.body).slice(0, 200)}`;
      return;
    }
    const refused = new Set((r.body.refused as string[] | undefined) ?? []);
    if (refused.size > 0) this.failedThisPass = true; // the owner disagrees about the ring: try again later
    let last = 0;
    let moved = 0;
    // The ring may have changed while the batch was away: a key this group owns again stays (a
    // delete made now would count as this owner's own and refuse the copy coming back).
    const ring = this.d.ring();
    for (const it of items) {
      if (refused.has(it.key) || ring.ownerOf(it.key) === this.d.group) continue;
      // The owner has a tombstone's delete: supersede it here with one that is never sent again,
      // unless the key has moved on meanwhile (the next pass sends it to its new owner: review).
      if (it.value === null && ring.ownerOf(it.key) !== owner) continue;
      const seq = this.d.leader.deleteIfVersion(it.key, it.version);
      if (seq !== undefined) last = seq;
      if (it.value !== null) moved++;
    }
    if (last > 0) await this.d.durable(last);
    this.moved += moved;
  }
}

/** What a pass looks at: every live key, then every tombstone. */
function* scan(store: Store): Generator<string> {
  yield* store.keys();
  yield* store.tombstoneKeys();
}
