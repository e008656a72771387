/**
 * The versioned in-memory store of one node. Pure: no I/O, no clock.
 *
 * Every write and delete carries the sequence its group's leader gave it, which becomes the key's
 * version. A delete leaves a tombstone (the key's delete version) so that an older write replayed
 * later cannot bring the key back; tombstones are purged once no replica can still need them (see
 * `purgeTombstones`).
 *
 * Layout, chosen for the garbage collector. A JS `Map` of a million keys is one object: once a
 * key is inserted, JavaScriptCore's next young-generation collection rescans all of it, and each
 * doubling rehashes it whole. Under a stream of new keys that was tens of milliseconds, many
 * times a second (SET p99 46 ms at 600k keys). So:
 * - the index is an open-addressing hash table in one Int32Array (linear probing, [hash, slot + 1]
 *   pairs; deletes close their gap by backward shift, so there are no index tombstones). The
 *   collector never scans it, and growing it copies integers, rehashing nothing;
 * - each key has a small Slot object (key, value, version). An overwrite changes its Slot in
 *   place, so the collector rescans that one object;
 * - the slots are listed in chunks of CHUNK references. An insert writes one chunk (the last, or
 *   the one holding a freed slot), so the collector rescans CHUNK references, not the store.
 * The key hash is FNV-1a over UTF-16 code units with a per-process seed (the node picks it at
 * random): cheap for the short, freshly parsed keys requests carry. It is not a keyed
 * cryptographic hash, so keys crafted to collide can still slow the table down, as they can a Map.
 * Tombstones are rare and live in a plain Map.
 */
import { assert } from "../lib/assert.ts";

export interface Entry {
  readonly value: string;
  readonly version: number;
}

/** Slots a chunk of the slot directory holds. */
const CHUNK_BITS = 10;
const CHUNK = 1 << CHUNK_BITS;
/** Grow the table when it would be fuller than this. */
const LOAD_MAX = 0.7;
const CAPACITY_MIN = 16;

/** A key's entry; overwrites change it in place (handed out as a read-only Entry). */
class Slot implements Entry {
  constructor(
    readonly key: string,
    public value: string,
    public version: number,
  ) {}
}

/**
 * 32-bit hash of a key's UTF-16 code units: FNV-1a, then murmur3's finaliser so that the low bits
 * the table uses depend on every character. `seed` varies it per process.
 */
export function hashKey(key: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) | 0;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

export interface StoreOptions {
  /** Seed of the key hash (the node picks a random one, so that keys chosen to collide are not known in advance). */
  seed?: number;
  /** The key hash; tests pass a weak one to force collisions. */
  hash?: (key: string, seed: number) => number;
  /** Initial table capacity (a power of two). */
  capacity?: number;
}

export class Store {
  private readonly seed: number;
  private readonly hash: (key: string, seed: number) => number;
  /** [hash, slot + 1] pairs; slot + 1 = 0 marks an empty place. */
  private table: Int32Array;
  private mask: number;
  private count = 0;
  /** The slot directory: slot s is chunks[s >>> CHUNK_BITS][s & (CHUNK - 1)], undefined when free. */
  private chunks: (Slot | undefined)[][] = [];
  /** Slots ever handed out (slots below it are live or on the free list). */
  private slots = 0;
  private free: number[] = [];
  /** Deleted keys and the version of their delete. */
  private readonly dead = new Map<string, number>();
  /** Tombstones in version order, for purging. */
  private tombstones: { key: string; version: number }[] = [];
  private tombstoneHead = 0;

  constructor(o: StoreOptions = {}) {
    this.seed = o.seed ?? 0;
    this.hash = o.hash ?? hashKey;
    const capacity = Math.max(CAPACITY_MIN, o.capacity ?? CAPACITY_MIN);
    assert((capacity & (capacity - 1)) === 0, "store capacity must be a power of two");
    this.table = new Int32Array(2 * capacity);
    this.mask = capacity - 1;
  }

  /** Number of live keys. */
  get size(): number {
    return this.count;
  }

  get tombstoneCount(): number {
    return this.dead.size;
  }

  /** Places in the hash table. */
  get capacity(): number {
    return this.mask + 1;
  }

  /** The key's hash as an int32 (what the table stores; an injected hash may return any number). */
  private hashOf(key: string): number {
    return this.hash(key, this.seed) | 0;
  }

  /** Table position of `key` (whose hash is `h`), or -1 - (the empty position where it would go). */
  private find(key: string, h: number): number {
    const t = this.table;
    const mask = this.mask;
    for (let p = h & mask; ; p = (p + 1) & mask) {
      const s = t[2 * p + 1]!;
      if (s === 0) return -1 - p;
      if (t[2 * p] === h && this.slot(s - 1).key === key) return p;
    }
  }

  private slot(n: number): Slot {
    return this.chunks[n >>> CHUNK_BITS]![n & (CHUNK - 1)]!;
  }

  /** The live entry of `key`, or undefined when missing or deleted. It shows later overwrites: read what you need at once. */
  get(key: string): Entry | undefined {
    const p = this.find(key, this.hashOf(key));
    return p < 0 ? undefined : this.slot(this.table[2 * p + 1]! - 1);
  }

  /** Version of the key including tombstones; 0 when the store has never seen it. */
  versionOf(key: string): number {
    const p = this.find(key, this.hashOf(key));
    if (p >= 0) return this.slot(this.table[2 * p + 1]! - 1).version;
    return this.dead.get(key) ?? 0;
  }

  /**
   * Apply a write at `version`. A write older than what the store holds for the key (a replay) is
   * ignored; returns whether it was applied.
   */
  set(key: string, value: string, version: number): boolean {
    const h = this.hashOf(key);
    let p = this.find(key, h);
    if (p >= 0) {
      // In place: the collector rescans this one small object, not the directory.
      const e = this.slot(this.table[2 * p + 1]! - 1);
      if (e.version >= version) return false;
      e.value = value;
      e.version = version;
      return true;
    }
    if (this.dead.size > 0) {
      const deletedAt = this.dead.get(key);
      if (deletedAt !== undefined) {
        if (deletedAt >= version) return false;
        this.dead.delete(key);
      }
    }
    if (this.count + 1 > LOAD_MAX * (this.mask + 1)) {
      this.resize(2 * (this.mask + 1));
      p = this.find(key, h);
    }
    this.insertAt(-1 - p, h, new Slot(key, value, version));
    return true;
  }

  private insertAt(p: number, h: number, e: Slot): void {
    let n = this.free.pop();
    if (n === undefined) {
      n = this.slots++;
      if ((n & (CHUNK - 1)) === 0) this.chunks.push(new Array<Slot | undefined>(CHUNK).fill(undefined));
    }
    this.chunks[n >>> CHUNK_BITS]![n & (CHUNK - 1)] = e;
    this.table[2 * p] = h;
    this.table[2 * p + 1] = n + 1;
    this.count++;
  }

  private resize(capacity: number): void {
    const old = this.table;
    const t = new Int32Array(2 * capacity);
    const mask = capacity - 1;
    for (let i = 0; i < old.length; i += 2) {
      const s = old[i + 1]!;
      if (s === 0) continue;
      const h = old[i]!;
      let p = h & mask;
      while (t[2 * p + 1] !== 0) p = (p + 1) & mask;
      t[2 * p] = h;
      t[2 * p + 1] = s;
    }
    this.table = t;
    this.mask = mask;
  }

  /** Take the entry at table position `p` out: free its slot and close the gap (backward shift). */
  private removeAt(p: number): void {
    const t = this.table;
    const n = t[2 * p + 1]! - 1;
    this.chunks[n >>> CHUNK_BITS]![n & (CHUNK - 1)] = undefined;
    this.free.push(n);
    this.count--;
    const mask = this.mask;
    let hole = p;
    for (let q = (p + 1) & mask; t[2 * q + 1] !== 0; q = (q + 1) & mask) {
      const home = t[2 * q]! & mask;
      // Move q into the hole when the hole lies on q's probe path (from its home to q).
      if (((q - home) & mask) >= ((q - hole) & mask)) {
        t[2 * hole] = t[2 * q]!;
        t[2 * hole + 1] = t[2 * q + 1]!;
        hole = q;
      }
    }
    t[2 * hole] = 0;
    t[2 * hole + 1] = 0;
    // Give memory back after mass deletes: halve the table below a quarter of the growth load.
    if (this.mask + 1 > CAPACITY_MIN && this.count < (LOAD_MAX / 4) * (this.mask + 1)) this.resize((this.mask + 1) / 2);
  }

  /** Apply a delete at `version`; returns whether a live key was removed. */
  delete(key: string, version: number): boolean {
    const p = this.find(key, this.hashOf(key));
    if (p >= 0) {
      if (this.slot(this.table[2 * p + 1]! - 1).version >= version) return false;
      this.removeAt(p);
    } else {
      const deletedAt = this.dead.get(key);
      if (deletedAt !== undefined && deletedAt >= version) return false;
    }
    this.dead.set(key, version);
    this.tombstones.push({ key, version });
    return p >= 0;
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

  /**
   * Live keys, in slot order. Safe while the store changes: a key live throughout the iteration is
   * visited once; a key inserted, or deleted and written again, meanwhile may be missed or seen twice.
   */
  *keys(): IterableIterator<string> {
    for (let n = 0; n < this.slots; n++) {
      const e = this.chunks[n >>> CHUNK_BITS]![n & (CHUNK - 1)];
      if (e !== undefined) yield e.key;
    }
  }

  /** A consistent copy of the live entries (later writes do not change it). */
  snapshot(): [string, Entry][] {
    const out: [string, Entry][] = new Array(this.count);
    let i = 0;
    for (let n = 0; n < this.slots; n++) {
      const e = this.chunks[n >>> CHUNK_BITS]![n & (CHUNK - 1)];
      if (e !== undefined) out[i++] = [e.key, { value: e.value, version: e.version }];
    }
    return out;
  }

  /** Replace the whole content (a full state transfer). */
  replaceAll(entries: Iterable<readonly [string, string, number]>): void {
    this.table = new Int32Array(2 * CAPACITY_MIN);
    this.mask = CAPACITY_MIN - 1;
    this.count = 0;
    this.chunks = [];
    this.slots = 0;
    this.free = [];
    this.dead.clear();
    this.tombstones = [];
    this.tombstoneHead = 0;
    for (const [k, v, version] of entries) {
      const h = this.hashOf(k);
      let p = this.find(k, h);
      assert(p < 0, `duplicate key in state transfer: "${k}"`);
      if (this.count + 1 > LOAD_MAX * (this.mask + 1)) {
        this.resize(2 * (this.mask + 1));
        p = this.find(k, h);
      }
      this.insertAt(-1 - p, h, new Slot(k, v, version));
    }
  }
}
