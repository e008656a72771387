/**
 * The versioned in-memory store of one node. Pure: no I/O, no clock.
 *
 * Every write and delete carries the sequence its group's leader gave it, which becomes the key's
 * version. A delete leaves a tombstone (the key's delete version) so that an older write replayed
 * later cannot bring the key back; tombstones are purged once no replica can still need them (see
 * `purgeTombstones`). Live entries and tombstones are kept in separate maps, so a read is a single
 * hash lookup that touches nothing else.
 *
 * An overwrite updates the key's entry in place instead of putting a new one in the map: once a map
 * is written, JavaScriptCore's next young-generation collection rescans all of it, which at a
 * million keys is a pause of tens of milliseconds for every collection (only inserts and deletes
 * write the map now). So an entry from `get` shows later writes: read what you need at once.
 * `snapshot` copies what it returns.
 */
import { assert } from "../lib/assert.ts";

export interface Entry {
  readonly value: string;
  readonly version: number;
}

/** The mutable entry the map holds (handed out as a read-only Entry). */
class Slot implements Entry {
  constructor(
    public value: string,
    public version: number,
  ) {}
}

export class Store {
  private readonly live = new Map<string, Slot>();
  /** Deleted keys and the version of their delete. */
  private readonly dead = new Map<string, number>();
  /** Tombstones in version order, for purging. */
  private tombstones: { key: string; version: number }[] = [];
  private tombstoneHead = 0;

  /** Number of live keys. */
  get size(): number {
    return this.live.size;
  }

  get tombstoneCount(): number {
    return this.dead.size;
  }

  /** The live entry of `key`, or undefined when missing or deleted. */
  get(key: string): Entry | undefined {
    return this.live.get(key);
  }

  /** Version of the key including tombstones; 0 when the store has never seen it. */
  versionOf(key: string): number {
    return this.live.get(key)?.version ?? this.dead.get(key) ?? 0;
  }

  /**
   * Apply a write at `version`. A write older than what the store holds for the key (a replay) is
   * ignored; returns whether it was applied.
   */
  set(key: string, value: string, version: number): boolean {
    const old = this.live.get(key);
    if (old !== undefined) {
      if (old.version >= version) return false;
      old.value = value;
      old.version = version;
      return true;
    }
    if (this.dead.size > 0) {
      const deletedAt = this.dead.get(key);
      if (deletedAt !== undefined) {
        if (deletedAt >= version) return false;
        this.dead.delete(key);
      }
    }
    this.live.set(key, new Slot(value, version));
    return true;
  }

  /** Apply a delete at `version`; returns whether a live key was removed. */
  delete(key: string, version: number): boolean {
    const old = this.live.get(key);
    if (old !== undefined) {
      if (old.version >= version) return false;
      this.live.delete(key);
    } else {
      const deletedAt = this.dead.get(key);
      if (deletedAt !== undefined && deletedAt >= version) return false;
    }
    this.dead.set(key, version);
    this.tombstones.push({ key, version });
    return old !== undefined;
  }

  /** Drop tombstones with version <= `version`: no replica can replay anything older. */
  purgeTombstones(version: number): number {
    let purged = 0;
    const t = this.tombstones;
    while (this.tombstoneHead < t.length && t[this.tombstoneHead]!.version <= version) {
      const { key, version: v } = t[this.tombstoneHead++]!;
      if (this.dead.get(key) === v) {
        this.dead.delete(key);
        purged++;
      }
    }
    if (this.tombstoneHead > 1024 && this.tombstoneHead * 2 > t.length) {
      this.tombstones = t.slice(this.tombstoneHead);
      this.tombstoneHead = 0;
    }
    return purged;
  }

  /** Live keys, in insertion order (a key deleted and written again counts as new). */
  keys(): IterableIterator<string> {
    return this.live.keys();
  }

  /** A consistent copy of the live entries (later writes do not change it). */
  snapshot(): [string, Entry][] {
    const out: [string, Entry][] = new Array(this.live.size);
    let i = 0;
    for (const [k, e] of this.live) out[i++] = [k, { value: e.value, version: e.version }];
    return out;
  }

  /** Replace the whole content (a full state transfer). */
  replaceAll(entries: Iterable<readonly [string, string, number]>): void {
    this.live.clear();
    this.dead.clear();
    this.tombstones = [];
    this.tombstoneHead = 0;
    for (const [k, v, version] of entries) {
      assert(!this.live.has(k), `duplicate key in state transfer: "${k}"`);
      this.live.set(k, new Slot(v, version));
    }
  }
}
