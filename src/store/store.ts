/**
 * The versioned in-memory store of one node. Pure: no I/O, no clock.
 *
 * Every write and delete carries the sequence its group's leader gave it, which becomes the key's
 * version. A delete leaves a tombstone (the key's delete version) so that an older write replayed
 * later cannot bring the key back; tombstones are purged once no replica can still need them (see
 * `purgeTombstones`).
 *
 * Layout: keys and values live as bytes, off the JavaScript heap, so the collector never scans
 * the data however large it grows (a JS object and two strings a key cost a writer 1-2 us a write
 * in collections and page faults, and ~270 MiB for a million keys of 100 bytes).
 * - Entries are appended to an arena of 1 MiB buffers (an entry over a quarter of that gets a
 *   buffer of its own). An entry is a 24-byte header (hash, room, version, key and value lengths)
 *   and the key's and the value's characters: one byte each when the string is ASCII, else its
 *   UTF-16 code units, two bytes each. Every JS string is kept exactly, lone surrogates included.
 * - The index is an open-addressing hash table in one Int32Array (linear probing, [hash, buffer + 1,
 *   offset] triples; deletes close their gap by backward shift, so there are no index tombstones).
 *   Growing it copies integers and rehashes nothing.
 * - An overwrite that fits the entry's room (its bytes rounded up to 8) is written in place; a larger
 *   one, or one that would leave empty more than its own size and more than 1 KiB, is appended
 *   and the old entry becomes garbage. A buffer that is less than half live is
 *   compacted: its live entries are copied to the head buffer and it is dropped (at most as many
 *   bytes copied as freed, ~1 MiB at a time).
 * - Reads decode the value into a fresh string (~60 ns for 100 bytes).
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

/** A store's live entries at one moment, decoded as they are iterated. */
export interface Snapshot extends Iterable<[string, Entry]> {
  readonly length: number;
  /** The tombstones at that moment, [key, version of its delete], oldest first. */
  readonly tombstones?: readonly (readonly [string, number])[];
}

/** Size of an arena buffer. */
const CHUNK_BYTES = 1 << 20;
/** An entry larger than this gets a buffer of its own. */
const LARGE_BYTES = CHUNK_BYTES >>> 2;
/** An overwrite stays in place while the room it leaves empty is at most its size or this. */
const SHRINK_SLACK_BYTES = 1024;
/** Entry header: hash i32, room u32, version f64, key length u32, value length u32 (little-endian). */
const HEADER = 24;
/** Header fields as indexes from the entry's first word: 32-bit words (hash 0, room 1, key 4, value 5), 64-bit (version 1). */
const W_ROOM = 1;
const W_KEY = 4;
const W_VALUE = 5;
const D_VERSION = 1;
/** Top bit of a length: the string is stored as UTF-16 code units (else one byte a character, ASCII). */
const WIDE = 0x8000_0000;
const LENGTH = 0x7fff_ffff;
/** Grow the table when it would be fuller than this. */
const LOAD_MAX = 0.7;
/** A table place whose entry is being rewritten: occupied, but pointing at no buffer. */
const MOVING = -1;
/** A place of the old table (while the table is resized) whose entry moved to the new one, or was deleted: probes go on past it. */
const GONE = -2;
/** Old-table places moved to the new table per write while the table is resized. */
const MIGRATE_STEP = 32;
const CAPACITY_MIN = 16;

/** One arena buffer. */
interface Chunk {
  readonly buf: Buffer;
  /** The same bytes as 32-bit and 64-bit words: entries start 8-aligned, so header fields are array reads. */
  readonly u32: Uint32Array;
  readonly i32: Int32Array;
  readonly f64: Float64Array;
  /** Bytes handed out (entries lie back to back from 0). */
  used: number;
  /** Bytes of live entries. */
  live: number;
  /** Creation order: keys() walks buffers oldest first, so entries moved meanwhile lie ahead. */
  readonly epoch: number;
  /** Holds one large entry. */
  readonly single: boolean;
}

/**
 * 32-bit hash of a key's UTF-16 code units: FNV-1a, then murmur3's finaliser so that the low bits
 * the table uses depend on every character. `seed` varies it per process.
 */
export function hashKey(key: string, seed: number): number {
  let h = (0x811c9dc5 ^ seed) | 0;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  return finalise(h);
}

/** hashKey of the ASCII key in bytes [at, at + n) of `b`: the same number as of the string. */
function hashAscii(b: Buffer, at: number, n: number, seed: number): number {
  let h = (0x811c9dc5 ^ seed) | 0;
  for (let i = at; i < at + n; i++) h = Math.imul(h ^ b[i]!, 0x01000193);
  return finalise(h);
}

/** murmur3's 32-bit finaliser. */
function finalise(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

/** Whether bytes [at, at + n) of `b` are all ASCII. */
function isAscii(b: Buffer, at: number, n: number): boolean {
  let or = 0;
  for (let i = at; i < at + n; i++) or |= b[i]!;
  return or < 0x80;
}

/** A string's stored length field: its length, with WIDE when it is not all ASCII. */
const lengthField = (s: string): number => (Buffer.byteLength(s, "utf8") === s.length ? s.length : (s.length | WIDE) >>> 0);
/** Bytes a length field stands for. */
const bytesOf = (field: number): number => (field & WIDE ? 2 * (field & LENGTH) : field);
const align8 = (n: number) => (n + 7) & ~7;

/** Buffer's native latin1 methods (Bun has them; @types/node does not declare them): 2.4x and 1.15x faster than write/toString. */
type Latin1 = { latin1Write(s: string, at: number): number; latin1Slice(start: number, end: number): string };

function writeString(buf: Buffer, at: number, s: string, field: number): void {
  if (field & WIDE) buf.write(s, at, "utf16le");
  else (buf as Buffer & Latin1).latin1Write(s, at);
}

function readString(buf: Buffer, at: number, field: number): string {
  return field & WIDE ? buf.toString("utf16le", at, at + 2 * (field & LENGTH)) : (buf as Buffer & Latin1).latin1Slice(at, at + field);
}

export interface StoreOptions {
  /** Seed of the key hash (the node picks a random one, so that keys chosen to collide are not known in advance). */
  seed?: number;
  /** The key hash; tests pass a weak one to force collisions. */
  hash?: (key: string, seed: number) => number;
  /** Initial table capacity (a power of two). */
  capacity?: number;
  /** Old-table places moved per write while resizing (tests make it small, so that resizes stay in progress). */
  migrateStep?: number;
}

export class Store {
  private readonly seed: number;
  private readonly hash: (key: string, seed: number) => number;
  /** [hash, chunk + 1, offset] triples; chunk + 1 = 0 marks an empty place. */
  private table: Int32Array;
  private mask: number;
  /**
   * While the table is resized, the previous one: its entries move to `table` a few places per
   * write (`step`), so no write pays for a whole rehash (it was 40 ms at 1.5M keys, 73 ms at 3M).
   * Lookups try `table`, then `old`. Places below `migrated` are moved; a moved or deleted entry
   * of `old` is marked GONE, so that probes go on past it.
   */
  private old: Int32Array | null = null;
  private oldMask = 0;
  private migrated = 0;
  private readonly migrateStep: number;
  /** The table in which the last `locate` or `positionOf` found its entry. */
  private foundIn!: Int32Array;
  private count = 0;
  /** Arena buffers by number; undefined when dropped (numbers are reused). */
  private chunks: (Chunk | undefined)[] = [];
  private freeChunks: number[] = [];
  /** The buffer new entries go to. */
  private head = -1;
  /** The chunk of the last append (saves returning a pair). */
  private appended = -1;
  private epochs = 0;
  /** Deleted keys and the version of their delete. */
  private readonly dead = new Map<string, number>();
  /** Tombstones in version order, for purging. */
  private tombstones: { key: string; version: number }[] = [];
  private tombstoneHead = 0;
  /** setAscii's key and value, in the bytes of `src`, while it runs. */
  private src: Buffer | null = null;
  private srcKeyAt = 0;
  private srcKeyBytes = 0;
  private srcValueAt = 0;

  constructor(o: StoreOptions = {}) {
    this.seed = o.seed ?? 0;
    this.hash = o.hash ?? hashKey;
    const capacity = Math.max(CAPACITY_MIN, o.capacity ?? CAPACITY_MIN);
    assert((capacity & (capacity - 1)) === 0, "store capacity must be a power of two");
    this.table = new Int32Array(3 * capacity);
    this.mask = capacity - 1;
    this.migrateStep = o.migrateStep ?? MIGRATE_STEP;
  }

  /** Number of live keys. */
  get size(): number {
    return this.count;
  }

  get tombstoneCount(): number {
    return this.dead.size;
  }

  /** Places in the hash table (the new one, while resizing). */
  get capacity(): number {
    return this.mask + 1;
  }

  /** Whether a resize of the table is in progress. */
  get resizing(): boolean {
    return this.old !== null;
  }

  /** Bytes of arena buffers held, and of live entries in them. */
  get arenaBytes(): { held: number; live: number } {
    let held = 0;
    let live = 0;
    for (const c of this.chunks) {
      if (c === undefined) continue;
      held += c.buf.length;
      live += c.live;
    }
    return { held, live };
  }

  /** The key's hash as an int32 (what the table stores; an injected hash may return any number). */
  private hashOf(key: string): number {
    return this.hash(key, this.seed) | 0;
  }

  /** Whether the entry at `at` of `c` holds `key`. */
  private holds(c: Chunk, at: number, key: string): boolean {
    const field = c.u32[(at >>> 2) + W_KEY]!;
    const n = field & LENGTH;
    if (n !== key.length) return false;
    const b = c.buf;
    let i = at + HEADER;
    if (field & WIDE) {
      for (let k = 0; k < n; k++, i += 2) if ((b[i]! | (b[i + 1]! << 8)) !== key.charCodeAt(k)) return false;
    } else {
      for (let k = 0; k < n; k++, i++) if (b[i] !== key.charCodeAt(k)) return false;
    }
    return true;
  }

  /** Position of `key` (whose hash is `h`) in table `t`, or -1 - (the empty position where it would go). */
  private probe(t: Int32Array, mask: number, key: string, h: number): number {
    for (let p = h & mask; ; p = (p + 1) & mask) {
      const c = t[3 * p + 1]!;
      if (c === 0) return -1 - p;
      if (c > 0 && t[3 * p] === h && this.holds(this.chunks[c - 1]!, t[3 * p + 2]!, key)) return p;
    }
  }

  /**
   * Position of `key` in the table, or in the old one while resizing (`foundIn` says which); or
   * -1 - (the empty position of the table where it would go).
   */
  private locate(key: string, h: number): number {
    const p = this.probe(this.table, this.mask, key, h);
    this.foundIn = this.table;
    if (p >= 0 || this.old === null) return p;
    const q = this.probe(this.old, this.oldMask, key, h);
    if (q < 0) return p;
    this.foundIn = this.old;
    return q;
  }

  /** probe() of the key in `src` at srcKeyAt (setAscii's): ASCII bytes, compared as stored. */
  private probeBytes(t: Int32Array, mask: number, h: number): number {
    const src = this.src!;
    const from = this.srcKeyAt;
    const n = this.srcKeyBytes;
    for (let p = h & mask; ; p = (p + 1) & mask) {
      const ci = t[3 * p + 1]!;
      if (ci === 0) return -1 - p;
      if (ci <= 0 || t[3 * p] !== h) continue;
      const c = this.chunks[ci - 1]!;
      const at = t[3 * p + 2]!;
      if (c.u32[(at >>> 2) + W_KEY] !== n) continue; // also unequal when stored WIDE
      const b = c.buf;
      let k = 0;
      for (let i = at + HEADER; k < n && b[i] === src[from + k]; k++, i++);
      if (k === n) return p;
    }
  }

  /** locate() of the key in `src` (setAscii's). */
  private locateBytes(h: number): number {
    const p = this.probeBytes(this.table, this.mask, h);
    this.foundIn = this.table;
    if (p >= 0 || this.old === null) return p;
    const q = this.probeBytes(this.old, this.oldMask, h);
    if (q < 0) return p;
    this.foundIn = this.old;
    return q;
  }

  /** Position pointing at the entry at `at` of chunk `n` (whose hash is `h`), in `foundIn`; or -1 if none does (garbage). */
  private positionOf(h: number, n: number, at: number): number {
    for (let t: Int32Array | null = this.table, mask = this.mask; t !== null; t = t === this.old ? null : this.old, mask = this.oldMask) {
      for (let p = h & mask; ; p = (p + 1) & mask) {
        const c = t[3 * p + 1]!;
        if (c === 0) break;
        if (c === n + 1 && t[3 * p + 2] === at) {
          this.foundIn = t;
          return p;
        }
      }
    }
    return -1;
  }

  /** The live entry of `key` (a copy), or undefined when missing or deleted. */
  get(key: string): Entry | undefined {
    const p = this.locate(key, this.hashOf(key));
    if (p < 0) return undefined;
    const t = this.foundIn;
    const c = this.chunks[t[3 * p + 1]! - 1]!;
    const at = t[3 * p + 2]!;
    const value = readString(c.buf, at + HEADER + bytesOf(c.u32[(at >>> 2) + W_KEY]!), c.u32[(at >>> 2) + W_VALUE]!);
    return { value, version: c.f64[(at >>> 3) + D_VERSION]! };
  }

  /** Version of the key including tombstones; 0 when the store has never seen it. */
  versionOf(key: string): number {
    const p = this.locate(key, this.hashOf(key));
    const t = this.foundIn;
    if (p >= 0) return this.chunks[t[3 * p + 1]! - 1]!.f64[(t[3 * p + 2]! >>> 3) + D_VERSION]!;
    return this.dead.get(key) ?? 0;
  }

  /**
   * Apply a write at `version`. A write older than what the store holds for the key (a replay) is
   * ignored; returns whether it was applied.
   */
  set(key: string, value: string, version: number): boolean {
    if (this.old !== null) this.step(this.migrateStep);
    const h = this.hashOf(key);
    return this.put(this.locate(key, h), h, key, -1, value, lengthField(value), version);
  }

  /**
   * set() of a key and value given as UTF-8 bytes of `src` (a replication frame's), copied into
   * the arena as they are: no strings are made of them. Only when both are ASCII (UTF-8 bytes and
   * the arena's one byte a character then agree) and the store hashes with hashKey; otherwise
   * returns undefined and changes nothing (decode them and call set).
   */
  setAscii(src: Buffer, keyAt: number, keyBytes: number, valueAt: number, valueBytes: number, version: number): boolean | undefined {
    if (this.hash !== hashKey || !isAscii(src, keyAt, keyBytes) || !isAscii(src, valueAt, valueBytes)) return undefined;
    if (this.old !== null) this.step(this.migrateStep);
    const h = hashAscii(src, keyAt, keyBytes, this.seed);
    this.src = src;
    this.srcKeyAt = keyAt;
    this.srcKeyBytes = keyBytes;
    this.srcValueAt = valueAt;
    try {
      return this.put(this.locateBytes(h), h, null, keyBytes, null, valueBytes, version);
    } finally {
      this.src = null;
    }
  }

  /**
   * The write of set(): `p` is where locate() found the key (or where it would go). A null key or
   * value is in `src` (at srcKeyAt, srcValueAt), as ASCII bytes. A key field of -1: work it out
   * from `key` if it is needed (a new key).
   */
  private put(p: number, h: number, key: string | null, keyField: number, value: string | null, valueField: number, version: number): boolean {
    if (p >= 0) {
      const t = this.foundIn;
      const n = t[3 * p + 1]! - 1;
      const at = t[3 * p + 2]!;
      const c = this.chunks[n]!;
      if (c.f64[(at >>> 3) + D_VERSION]! >= version) return false;
      keyField = c.u32[(at >>> 2) + W_KEY]!;
      const keyBytes = bytesOf(keyField);
      const need = keyBytes + bytesOf(valueField);
      const room = c.u32[(at >>> 2) + W_ROOM]!;
      // In place when it fits and does not leave most of a large room empty (a 1 MiB value
      // overwritten by a short one moves, so its room is given back).
      if (need <= room && room - need <= Math.max(need, SHRINK_SLACK_BYTES)) {
        this.writeField(c.buf, at + HEADER + keyBytes, value, valueField, this.srcValueAt);
        c.u32[(at >>> 2) + W_VALUE] = valueField;
        c.f64[(at >>> 3) + D_VERSION] = version;
        return true;
      }
      // Too large for its room (or far too small): the old entry becomes garbage and the write is
      // appended anew, its key copied from the old entry (a released buffer is dropped or
      // compacted, never written to again). Meanwhile the table points nowhere (MOVING keeps
      // probes going), so that compaction, of the old buffer or of the old head, does not copy
      // the old entry.
      t[3 * p + 1] = MOVING;
      this.release(n, at);
      // An entry leaving a buffer of its own goes to a new buffer of its own, whatever its size:
      // the head is older, and a keys() walk between the two would never see it there.
      const to = this.append(h, keyField, c.buf, at + HEADER, null, value, valueField, version, c.single);
      t[3 * p + 1] = this.appended + 1;
      t[3 * p + 2] = to;
      return true;
    }
    if (this.dead.size > 0) {
      const k = key ?? (this.src as Buffer & Latin1).latin1Slice(this.srcKeyAt, this.srcKeyAt + keyField);
      const deletedAt = this.dead.get(k);
      if (deletedAt !== undefined) {
        if (deletedAt >= version) return false;
        this.dead.delete(k);
      }
    }
    if (keyField < 0) keyField = lengthField(key!);
    if (this.count + 1 > LOAD_MAX * (this.mask + 1)) {
      this.resize(2 * (this.mask + 1));
      p = key !== null ? this.probe(this.table, this.mask, key, h) : this.probeBytes(this.table, this.mask, h);
    }
    const to = this.append(h, keyField, this.src, this.srcKeyAt, key, value, valueField, version);
    p = -1 - p;
    this.table[3 * p] = h;
    this.table[3 * p + 1] = this.appended + 1;
    this.table[3 * p + 2] = to;
    this.count++;
    return true;
  }

  /** Write a string field: `s`, or when null, `field` ASCII bytes of `src` from `srcAt`. */
  private writeField(buf: Buffer, at: number, s: string | null, field: number, srcAt: number): void {
    if (s !== null) writeString(buf, at, s, field);
    else this.src!.copy(buf, at, srcAt, srcAt + field);
  }

  /**
   * Write an entry into the arena; returns its offset, in chunk `this.appended`. The key is `key`,
   * or when null, bytes of `keyFrom` at `keyAt` already in stored form (an old entry's, or ASCII).
   * With `own` (an entry that had a buffer of its own), it gets one again, however small: moved to
   * the head, which is older, it would fall behind a keys() walk between the two. (Such an entry
   * keeps a small buffer of its own until it is deleted: a few hundred bytes of objects.)
   */
  private append(h: number, keyField: number, keyFrom: Buffer | null, keyAt: number, key: string | null, value: string | null, valueField: number, version: number, own = false): number {
    const keyBytes = bytesOf(keyField);
    const room = align8(keyBytes + bytesOf(valueField));
    const size = HEADER + room;
    let n: number;
    if (own || size > LARGE_BYTES) {
      n = this.newChunk(size, true);
    } else {
      n = this.head;
      if (n < 0 || this.chunks[n]!.used + size > CHUNK_BYTES) n = this.newHead();
    }
    const c = this.chunks[n]!;
    const at = c.used;
    c.i32[at >>> 2] = h;
    c.u32[(at >>> 2) + W_ROOM] = room;
    c.f64[(at >>> 3) + D_VERSION] = version;
    c.u32[(at >>> 2) + W_KEY] = keyField;
    c.u32[(at >>> 2) + W_VALUE] = valueField;
    if (key !== null) writeString(c.buf, at + HEADER, key, keyField);
    else keyFrom!.copy(c.buf, at + HEADER, keyAt, keyAt + keyBytes);
    this.writeField(c.buf, at + HEADER + keyBytes, value, valueField, this.srcValueAt);
    c.used += size;
    c.live += size;
    this.appended = n;
    return at;
  }

  /**
   * Start a new head buffer. The old head was exempt from compaction while entries went to it:
   * check it now (once it is no longer the head, only a release of one of its entries would).
   */
  private newHead(): number {
    const old = this.head;
    this.head = this.newChunk(CHUNK_BYTES, false);
    if (old >= 0) {
      const c = this.chunks[old]!;
      if (c.live === 0) this.dropChunk(old);
      else if (2 * c.live < c.used) this.compact(old);
    }
    return this.head;
  }

  private newChunk(bytes: number, single: boolean): number {
    // Never from Buffer's shared pool: the word views need the buffer to start 8-aligned.
    const buf = Buffer.allocUnsafeSlow(bytes);
    const { buffer, byteOffset, length } = buf;
    const c: Chunk = { buf, u32: new Uint32Array(buffer, byteOffset, length >>> 2), i32: new Int32Array(buffer, byteOffset, length >>> 2), f64: new Float64Array(buffer, byteOffset, length >>> 3), used: 0, live: 0, epoch: this.epochs++, single };
    const n = this.freeChunks.pop() ?? this.chunks.length;
    this.chunks[n] = c;
    return n;
  }

  /** The entry at `at` of chunk `n` is garbage now: drop its chunk when empty, compact it when mostly garbage. */
  private release(n: number, at: number): void {
    const c = this.chunks[n]!;
    c.live -= HEADER + c.u32[(at >>> 2) + W_ROOM]!;
    if (n === this.head) return;
    if (c.live === 0) this.dropChunk(n);
    else if (!c.single && 2 * c.live < c.used) this.compact(n);
  }

  private dropChunk(n: number): void {
    this.chunks[n] = undefined;
    this.freeChunks.push(n);
  }

  /** Copy the live entries of chunk `n` to the head and drop it. */
  private compact(n: number): void {
    const c = this.chunks[n]!;
    for (let at = 0; at < c.used; at += HEADER + c.u32[(at >>> 2) + W_ROOM]!) {
      const h = c.i32[at >>> 2]!;
      const p = this.positionOf(h, n, at);
      if (p < 0) continue;
      const t = this.foundIn; // before newHead(), whose compaction may look up other entries
      const bytes = HEADER + bytesOf(c.u32[(at >>> 2) + W_KEY]!) + bytesOf(c.u32[(at >>> 2) + W_VALUE]!);
      const size = HEADER + align8(bytes - HEADER);
      let m = this.head;
      if (m < 0 || this.chunks[m]!.used + size > CHUNK_BYTES) m = this.newHead();
      const d = this.chunks[m]!;
      const to = d.used;
      c.buf.copy(d.buf, to, at, at + bytes);
      d.u32[(to >>> 2) + W_ROOM] = size - HEADER;
      d.used += size;
      d.live += size;
      t[3 * p + 1] = m + 1;
      t[3 * p + 2] = to;
    }
    this.dropChunk(n);
  }

  /**
   * Start moving to a table of `capacity` places. One resize at a time: one still in progress is
   * finished first (it can only be when deletes and inserts alternate at the thresholds).
   */
  private resize(capacity: number): void {
    if (this.old !== null) this.step(Infinity);
    this.old = this.table;
    this.oldMask = this.mask;
    this.migrated = 0;
    this.table = new Int32Array(3 * capacity);
    this.mask = capacity - 1;
    this.step(this.migrateStep);
  }

  /** Move the entries of up to `places` places of the old table to the table. */
  private step(places: number): void {
    const old = this.old!;
    const t = this.table;
    const mask = this.mask;
    const end = Math.min(this.oldMask + 1, this.migrated + places);
    let i = this.migrated;
    for (; i < end; i++) {
      const c = old[3 * i + 1]!;
      if (c <= 0) continue;
      const h = old[3 * i]!;
      let p = h & mask;
      while (t[3 * p + 1] !== 0) p = (p + 1) & mask;
      t[3 * p] = h;
      t[3 * p + 1] = c;
      t[3 * p + 2] = old[3 * i + 2]!;
      old[3 * i + 1] = GONE;
    }
    this.migrated = i;
    if (i > this.oldMask) this.old = null;
  }

  /** Take the entry at position `p` of `t` out: close the gap (backward shift), then release its bytes. */
  private removeAt(t: Int32Array, p: number): void {
    const n = t[3 * p + 1]! - 1;
    const at = t[3 * p + 2]!;
    this.count--;
    if (t === this.old) {
      // The old table only empties: a mark keeps the probe paths through this place.
      t[3 * p + 1] = GONE;
      this.release(n, at);
      return;
    }
    const mask = this.mask;
    let hole = p;
    for (let q = (p + 1) & mask; t[3 * q + 1] !== 0; q = (q + 1) & mask) {
      const home = t[3 * q]! & mask;
      // Move q into the hole when the hole lies on q's probe path (from its home to q).
      if (((q - home) & mask) >= ((q - hole) & mask)) {
        t[3 * hole] = t[3 * q]!;
        t[3 * hole + 1] = t[3 * q + 1]!;
        t[3 * hole + 2] = t[3 * q + 2]!;
        hole = q;
      }
    }
    t[3 * hole] = 0;
    t[3 * hole + 1] = 0;
    t[3 * hole + 2] = 0;
    // Give memory back after mass deletes: halve the table below a quarter of the growth load.
    if (this.old === null && this.mask + 1 > CAPACITY_MIN && this.count < (LOAD_MAX / 4) * (this.mask + 1)) this.resize((this.mask + 1) / 2);
    this.release(n, at);
  }

  /** Apply a delete at `version`; returns whether a live key was removed. */
  delete(key: string, version: number): boolean {
    if (this.old !== null) this.step(this.migrateStep);
    const p = this.locate(key, this.hashOf(key));
    if (p >= 0) {
      const t = this.foundIn;
      const c = this.chunks[t[3 * p + 1]! - 1]!;
      if (c.f64[(t[3 * p + 2]! >>> 3) + D_VERSION]! >= version) return false;
      this.removeAt(t, p);
    } else {
      const deletedAt = this.dead.get(key);
      if (deletedAt !== undefined && deletedAt >= version) return false;
    }
    this.dead.set(key, version);
    this.tombstones.push({ key, version });
    return p >= 0;
  }

  /** Keys that have a tombstone. Safe while the store changes (a Map's iterator). */
  tombstoneKeys(): IterableIterator<string> {
    return this.dead.keys();
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
   * Live entries as [chunk, offset], oldest buffer first. Safe while the store changes: an entry
   * moved meanwhile (compacted, or overwritten by a larger value) moves to the newest buffer, ahead.
   */
  private *live(): Generator<[Chunk, number]> {
    let epoch = -1;
    let list = this.chunks;
    for (;;) {
      // The whole content was replaced (adopt, replaceAll): walk the new one from its start.
      if (this.chunks !== list) {
        list = this.chunks;
        epoch = -1;
      }
      let n = -1;
      for (let m = 0; m < this.chunks.length; m++) {
        const c = this.chunks[m];
        if (c !== undefined && c.epoch > epoch && (n < 0 || c.epoch < this.chunks[n]!.epoch)) n = m;
      }
      if (n < 0) return;
      const c = this.chunks[n]!;
      epoch = c.epoch;
      // c.used grows while c is the head; the walk stops if c is compacted away meanwhile.
      for (let at = 0; at < c.used && this.chunks[n] === c; at += HEADER + c.u32[(at >>> 2) + W_ROOM]!) {
        if (this.positionOf(c.i32[at >>> 2]!, n, at) >= 0) yield [c, at];
      }
    }
  }

  /**
   * Live keys, oldest first. Safe while the store changes: a key live throughout the iteration is
   * visited at least once, twice if it was moved meanwhile from a place already passed (compacted,
   * or overwritten by a larger value, or the whole content replaced); a key written or deleted
   * meanwhile may be missed or seen twice.
   */
  *keys(): IterableIterator<string> {
    for (const [c, at] of this.live()) yield readString(c.buf, at + HEADER, c.u32[(at >>> 2) + W_KEY]!);
  }

  /**
   * A consistent copy of the live entries: later writes do not change it. Taking it copies the
   * table and the arena's bytes (a memcpy of about the data's size, ~0.1 s for a million keys
   * of 100 bytes); the entries are decoded one by one as it is iterated, in table order.
   */
  /** With `tombstones`, the snapshot lists them too (sorted: a durable snapshot keeps them; a full transfer does not need them). */
  snapshot(tombstones = false): Snapshot {
    if (this.old !== null) this.step(Infinity);
    const bufs = this.chunks.map((c) => (c === undefined ? undefined : Buffer.from(c.buf.subarray(0, c.used))));
    const table = this.table.slice();
    const dead = tombstones ? Array.from(this.dead).sort((a, b) => a[1] - b[1]) : undefined;
    return {
      length: this.count,
      tombstones: dead,
      *[Symbol.iterator]() {
        for (let p = 0; p < table.length; p += 3) {
          const n = table[p + 1]!;
          if (n === 0) continue;
          const b = bufs[n - 1]!;
          const at = table[p + 2]!;
          const keyField = b.readUInt32LE(at + 4 * W_KEY);
          const key = readString(b, at + HEADER, keyField);
          const value = readString(b, at + HEADER + bytesOf(keyField), b.readUInt32LE(at + 4 * W_VALUE));
          yield [key, { value, version: b.readDoubleLE(at + 8 * D_VERSION) }];
        }
      },
    };
  }

  /** A new, empty store with this one's hash, seed and options (to stage a full transfer in). */
  emptyLike(): Store {
    return new Store({ seed: this.seed, hash: this.hash, migrateStep: this.migrateStep });
  }

  /** Take over the whole content of `other` (a staged full transfer), which is left empty. */
  adopt(other: Store): void {
    assert(other.seed === this.seed && other.hash === this.hash, "a store can only adopt one with the same hash");
    this.table = other.table;
    this.mask = other.mask;
    this.old = other.old;
    this.oldMask = other.oldMask;
    this.migrated = other.migrated;
    this.count = other.count;
    this.chunks = other.chunks;
    this.freeChunks = other.freeChunks;
    this.head = other.head;
    this.epochs = other.epochs;
    this.dead.clear();
    for (const [k, v] of other.dead) this.dead.set(k, v);
    this.tombstones = other.tombstones;
    this.tombstoneHead = other.tombstoneHead;
    other.replaceAll([]);
  }

  /** Replace the whole content (a full state transfer). */
  replaceAll(entries: Iterable<readonly [string, string, number]>): void {
    this.table = new Int32Array(3 * CAPACITY_MIN);
    this.mask = CAPACITY_MIN - 1;
    this.old = null;
    this.count = 0;
    this.chunks = [];
    this.freeChunks = [];
    this.head = -1;
    this.dead.clear();
    this.tombstones = [];
    this.tombstoneHead = 0;
    for (const [k, v, version] of entries) {
      assert(this.locate(k, this.hashOf(k)) < 0, `duplicate key in state transfer: "${k}"`);
      this.set(k, v, version);
    }
  }
}
