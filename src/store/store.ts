/**
 * The versioned in-memory store of one node. Pure: no I/O, no clock.
 *
 * Every write and delete carries the sequence its group's leader gave it, which becomes the key's
 * version. A delete leaves a tombstone (value null) so that an older write replayed later cannot
 * bring the key back; tombstones are purged once no replica can still need them (see
 * `purgeTombstones`). Entries are immutable: a write replaces the entry object, so a copy of the
 * map's entries is a consistent snapshot.
 */
import { assert } from "../lib/assert.ts";

export interface Entry {
  /** null marks a tombstone. */
  readonly value: string | null;
  readonly version: number;
}

export class Store {
  private readonly map = new Map<string, Entry>();
  /** Tombstones in version order, for purging. */
  private tombstones: { key: string; version: number }[] = [];
  private tombstoneHead = 0;
  private live = 0;

  /** Number of live keys. */
  get size(): number {
    return this.live;
  }

  get tombstoneCount(): number {
    return this.map.size - this.live;
  }

  /** The live entry of `key`, or undefined when missing or deleted. */
  get(key: string): Entry | undefined {
    const e = this.map.get(key);
    return e === undefined || e.value === null ? undefined : e;
  }

  /** Version of the key including tombstones; 0 when the store has never seen it. */
  versionOf(key: string): number {
    return this.map.get(key)?.version ?? 0;
  }

  /**
   * Apply a write at `version`. A write older than what the store holds for the key (a replay) is
   * ignored; returns whether it was applied.
   */
  set(key: string, value: string, version: number): boolean {
    const old = this.map.get(key);
    if (old !== undefined && old.version >= version) return false;
    if (old === undefined || old.value === null) this.live++;
    this.map.set(key, { value, version });
    return true;
  }

  /** Apply a delete at `version`; returns whether a live key was removed. */
  delete(key: string, version: number): boolean {
    const old = this.map.get(key);
    if (old !== undefined && old.version >= version) return false;
    const existed = old !== undefined && old.value !== null;
    if (existed) this.live--;
    this.map.set(key, { value: null, version });
    this.tombstones.push({ key, version });
    return existed;
  }

  /** Drop tombstones with version <= `version`: no replica can replay anything older. */
  purgeTombstones(version: number): number {
    let purged = 0;
    const t = this.tombstones;
    while (this.tombstoneHead < t.length && t[this.tombstoneHead]!.version <= version) {
      const { key, version: v } = t[this.tombstoneHead++]!;
      const e = this.map.get(key);
      if (e !== undefined && e.value === null && e.version === v) {
        this.map.delete(key);
        purged++;
      }
    }
    if (this.tombstoneHead > 1024 && this.tombstoneHead * 2 > t.length) {
      this.tombstones = t.slice(this.tombstoneHead);
      this.tombstoneHead = 0;
    }
    return purged;
  }

  /** Live keys, in insertion order. */
  *keys(): IterableIterator<string> {
    for (const [k, e] of this.map) if (e.value !== null) yield k;
  }

  /** A consistent copy of the live entries, cheap: entries are shared, not cloned. */
  snapshot(): [string, Entry][] {
    const out: [string, Entry][] = [];
    for (const kv of this.map) if (kv[1].value !== null) out.push(kv);
    return out;
  }

  /** Replace the whole content (a full state transfer). */
  replaceAll(entries: Iterable<readonly [string, string, number]>): void {
    this.map.clear();
    this.tombstones = [];
    this.tombstoneHead = 0;
    this.live = 0;
    for (const [k, v, version] of entries) {
      assert(!this.map.has(k), `duplicate key in state transfer: "${k}"`);
      this.map.set(k, { value: v, version });
      this.live++;
    }
  }
}
