/**
 * Rebalancing, on a group's leader: keys this group no longer owns on the ring (a new group took
 * them, or this group is draining) move to their owners in bounded batches while both sides keep
 * serving. Only keys whose owner changed move. A batch is imported by the owner's leader only for
 * keys it has never seen, so a write or delete that reached the new owner first is never undone;
 * then the keys are deleted here, each only if nobody changed it meanwhile. Passes repeat until
 * one finds nothing to move.
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
  /** Tell the cluster at once that moving started or stopped. */
  announce: () => void;
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

interface Item {
  key: string;
  value: string;
  version: number;
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
  private failedThisPass = false;
  private busy = false;

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
    }
    if (!this.iter) {
      if (!this.moving && this.passes > 0 && !this.draining && key === this.settledRing) return;
      this.iter = this.d.store.keys();
      this.foundThisPass = 0;
      this.failedThisPass = false;
    }
    const batches = new Map<number, Item[]>();
    let bytes = 0;
    let count = 0;
    for (let n = 0; n < SCAN_PER_TICK && count < BATCH_ENTRIES && bytes < BATCH_BYTES; n++) {
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
      if (!e) continue;
      let list = batches.get(owner);
      if (!list) batches.set(owner, (list = []));
      list.push({ key: next.value, value: e.value, version: e.version });
      bytes += next.value.length + e.value.length + 32;
      count++;
      this.foundThisPass++;
    }
    if (count === 0) return;
    this.setMoving(true);
    for (const [owner, items] of batches) await this.send(owner, items);
  }

  private settledRing = "";

  private async send(owner: number, items: Item[]): Promise<void> {
    const to = this.d.leaderOf(owner);
    if (!to) {
      this.failedThisPass = true;
      this.lastError = `no leader known for group ${owner}`;
      return;
    }
    const r = await forward(to, "POST", "/internal/import", JSON.stringify({ from_group: this.d.group, entries: items.map(({ key, value }) => ({ key, value })) }), { hops: 0, group: owner });
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
      const seq = this.d.leader.deleteIfVersion(it.key, it.version);
      if (seq !== undefined) last = seq;
      moved++;
    }
    if (last > 0) await this.d.durable(last);
    this.moved += moved;
  }
}
