import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { DEFAULT_VNODES, HashRing, murmur3 } from "../../src/ring/index.ts";

/**
 * MurmurHash3_x86_32 straight from the reference C code (Austin Appleby, smhasher), over bytes.
 * Written independently of src/ring/hash.ts, which encodes UTF-8 inline.
 */
function murmur3Bytes(data: Uint8Array, seed = 0): number {
  const c1 = 0xcc9e2d51;
  const c2 = 0x1b873593;
  const len = data.length;
  const nblocks = len >> 2;
  let h1 = seed >>> 0;
  for (let i = 0; i < nblocks; i++) {
    const p = i * 4;
    let k1 = data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16) | (data[p + 3]! << 24);
    k1 = Math.imul(k1, c1);
    k1 = (k1 << 15) | (k1 >>> 17);
    k1 = Math.imul(k1, c2);
    h1 ^= k1;
    h1 = (h1 << 13) | (h1 >>> 19);
    h1 = (Math.imul(h1, 5) + 0xe6546b64) | 0;
  }
  const tail = nblocks * 4;
  const rest = len & 3;
  if (rest > 0) {
    let k1 = 0;
    if (rest === 3) k1 ^= data[tail + 2]! << 16;
    if (rest >= 2) k1 ^= data[tail + 1]! << 8;
    k1 ^= data[tail]!;
    k1 = Math.imul(k1, c1);
    k1 = (k1 << 15) | (k1 >>> 17);
    k1 = Math.imul(k1, c2);
    h1 ^= k1;
  }
  h1 ^= len;
  h1 ^= h1 >>> 16;
  h1 = Math.imul(h1, 0x85ebca6b);
  h1 ^= h1 >>> 13;
  h1 = Math.imul(h1, 0xc2b2ae35);
  h1 ^= h1 >>> 16;
  return h1 >>> 0;
}

const utf8 = new TextEncoder();

/** Published MurmurHash3_x86_32 vectors (smhasher / widely quoted test tables). */
const vectors: [string, number, number][] = [
  ["", 0, 0x00000000],
  ["", 1, 0x514e28b7],
  ["", 0xffffffff, 0x81f16f39],
  ["\0\0\0\0", 0, 0x2362f9de],
  ["hello", 0, 0x248bfa47],
  ["abc", 0, 0xb3dd93fa],
  ["Hello, world!", 0, 0xc0363e43],
  ["The quick brown fox jumps over the lazy dog", 0, 0x2e4ff723],
  ["a", 0x9747b28c, 0x7fa09ea6],
  ["ab", 0x9747b28c, 0x74875592],
  ["abcd", 0x9747b28c, 0xf0478627],
  ["aaaa", 0x9747b28c, 0x5a97808a],
  ["Hello, world!", 0x9747b28c, 0x24884cba],
];

describe("murmur3", () => {
  test("matches the published MurmurHash3_x86_32 vectors", () => {
    for (const [s, seed, want] of vectors) {
      expect(murmur3Bytes(utf8.encode(s), seed)).toBe(want); // the reference in this file is right
      expect(murmur3(s, seed)).toBe(want);
    }
  });

  test("defaults to seed 0", () => {
    expect(murmur3("hello")).toBe(0x248bfa47);
    expect(murmur3("")).toBe(0);
  });

  test("agrees with Bun's own murmur32v3 on the vectors", () => {
    for (const [s, seed, want] of vectors) expect(Bun.hash.murmur32v3(s, seed) >>> 0).toBe(want);
  });

  test("equals the byte reference over the UTF-8 bytes of any well-formed string (property)", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary", maxLength: 64 }), fc.integer({ min: 0, max: 0xffffffff }), (s, seed) => {
        expect(murmur3(s, seed)).toBe(murmur3Bytes(utf8.encode(s), seed));
      }),
      { numRuns: 3000 },
    );
  });

  test("equals the byte reference on strings of raw UTF-16 units, lone surrogates hashing as U+FFFD (property)", () => {
    const unit = fc.oneof(
      fc.integer({ min: 0, max: 0xffff }),
      fc.integer({ min: 0xd800, max: 0xdfff }), // surrogates, paired or not
      fc.integer({ min: 0, max: 0x7f }),
    );
    fc.assert(
      fc.property(fc.array(unit, { maxLength: 40 }), (units) => {
        const s = String.fromCharCode(...units);
        expect(murmur3(s)).toBe(murmur3Bytes(utf8.encode(s)));
      }),
      { numRuns: 3000 },
    );
  });

  test("covers every tail length and every UTF-8 width", () => {
    for (const ch of ["a", "é", "中", "😀", "\0", "\u07ff", "\u0800", "\uffff", "\u{10000}", "\u{10ffff}"])
      for (let n = 0; n < 9; n++) {
        const s = ch.repeat(n) + "x".repeat(n % 4);
        expect(murmur3(s)).toBe(murmur3Bytes(utf8.encode(s)));
      }
  });

  test("always returns an unsigned 32-bit integer (property)", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), (s) => {
        const h = murmur3(s);
        expect(Number.isInteger(h) && h >= 0 && h <= 0xffffffff).toBe(true);
      }),
    );
  });
});

const keys = (n: number, prefix = "key-") => Array.from({ length: n }, (_, i) => `${prefix}${i}`);

describe("HashRing", () => {
  test("an empty ring owns nothing", () => {
    const ring = new HashRing([]);
    expect(ring.size).toBe(0);
    expect(ring.ownerOf("anything")).toBeUndefined();
    expect(ring.ownerOfHash(0)).toBeUndefined();
    expect(ring.shares().size).toBe(0);
  });

  test("a ring of one group gives every key to it without hashing the key", () => {
    let hashed = 0;
    const ring = new HashRing([4], undefined, (s) => (hashed++, murmur3(s)));
    const built = hashed; // the ring's own 150 points
    for (const k of ["a", "", "😀", "key:123"]) expect(ring.ownerOf(k)).toBe(4);
    expect(hashed).toBe(built);
    expect(new HashRing([4, 5]).ownerOf("a")).toBe(new HashRing([4, 5]).ownerOfHash(murmur3("a")));
  });

  test("places 150 virtual nodes per group by default", () => {
    expect(DEFAULT_VNODES).toBe(150);
    for (const n of [1, 2, 3, 7]) expect(new HashRing(Array.from({ length: n }, (_, i) => i)).size).toBe(150 * n);
    expect(new HashRing([0, 1], 10).size).toBe(20);
  });

  test("counts a group listed twice once", () => {
    const ring = new HashRing([2, 2, 1]);
    expect(ring.groups).toEqual([1, 2]);
    expect(ring.size).toBe(300);
  });

  test("refuses negative or fractional groups and non-positive vnode counts", () => {
    expect(() => new HashRing([-1])).toThrow();
    expect(() => new HashRing([1.5])).toThrow();
    expect(() => new HashRing([0], 0)).toThrow();
  });

  test("a single group owns every key", () => {
    const ring = new HashRing([7]);
    for (const k of keys(500)) expect(ring.ownerOf(k)).toBe(7);
    expect(ring.shares().get(7)).toBeCloseTo(1, 12);
  });

  test("ownerOf is deterministic and the same for rings built from the same groups in any order (property)", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 0, max: 1000 }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.string({ unit: "binary", maxLength: 20 }), { minLength: 1, maxLength: 50 }),
        fc.infiniteStream(fc.nat()),
        (groups, ks, rnd) => {
          const shuffled = [...groups];
          for (let i = shuffled.length - 1; i > 0; i--) {
            const j = rnd.next().value % (i + 1);
            [shuffled[i], shuffled[j]] = [shuffled[j]!, shuffled[i]!];
          }
          const a = new HashRing(groups, 20);
          const b = new HashRing([...shuffled, ...shuffled], 20);
          for (const k of ks) {
            const owner = a.ownerOf(k);
            expect(groups).toContain(owner!);
            expect(a.ownerOf(k)).toBe(owner);
            expect(b.ownerOf(k)).toBe(owner);
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  test("ownerOf(key) is the owner of the key's murmur3 hash, wrapping past the top of the ring", () => {
    const ring = new HashRing([0, 1, 2]);
    for (const k of keys(200)) expect(ring.ownerOf(k)).toBe(ring.ownerOfHash(murmur3(k)));
    // Past the highest point: the first point owns it.
    expect(ring.ownerOfHash(0xffffffff)).toBe(ring.ownerOfHash(0));
  });

  test("each of three groups owns a sane share and the shares sum to 1", () => {
    for (const groups of [[0, 1, 2], [1, 2, 3], [5, 9, 100]]) {
      const shares = new HashRing(groups).shares();
      expect([...shares.keys()]).toEqual(groups);
      let sum = 0;
      for (const s of shares.values()) {
        expect(s).toBeGreaterThan(0.2);
        expect(s).toBeLessThan(0.47);
        sum += s;
      }
      expect(sum).toBeCloseTo(1, 9);
    }
  });

  test("shares sum to 1 for any set of groups (property)", () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.nat(10_000), { minLength: 1, maxLength: 8 }), (groups) => {
        const shares = new HashRing(groups, 30).shares();
        expect([...shares.values()].reduce((a, b) => a + b, 0)).toBeCloseTo(1, 9);
      }),
      { numRuns: 100 },
    );
  });

  test("the keys each group gets track its share", () => {
    const ring = new HashRing([0, 1, 2]);
    const shares = ring.shares();
    const counts = new Map<number, number>();
    const ks = keys(30_000);
    for (const k of ks) counts.set(ring.ownerOf(k)!, (counts.get(ring.ownerOf(k)!) ?? 0) + 1);
    for (const [g, s] of shares) expect(Math.abs(counts.get(g)! / ks.length - s)).toBeLessThan(0.03);
  });

  test("adding a fourth group moves about a quarter of the keys, and only to the new group", () => {
    const before = new HashRing([0, 1, 2]);
    const after = new HashRing([0, 1, 2, 3]);
    let moved = 0;
    for (const k of keys(20_000)) {
      const a = before.ownerOf(k);
      const b = after.ownerOf(k);
      if (a !== b) {
        moved++;
        expect(b).toBe(3);
      }
    }
    expect(moved / 20_000).toBeGreaterThan(0.15);
    expect(moved / 20_000).toBeLessThan(0.35);
  });

  test("removing a group moves only that group's keys (property)", () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.nat(50), { minLength: 2, maxLength: 5 }), fc.nat(), (groups, pick) => {
        const gone = groups[pick % groups.length]!;
        const full = new HashRing(groups, 40);
        const less = new HashRing(
          groups.filter((g) => g !== gone),
          40,
        );
        for (const k of keys(300, `p${pick}-`)) {
          const a = full.ownerOf(k);
          if (a !== gone) expect(less.ownerOf(k)).toBe(a!);
        }
      }),
      { numRuns: 60 },
    );
  });
});

describe("the native hash the node uses", () => {
  test("Bun.hash.murmur32v3 equals murmur3 for any well-formed string (the node hashes keys with it)", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 80 }), (s) => {
        expect(Bun.hash.murmur32v3(s) >>> 0).toBe(murmur3(s));
      }),
      { numRuns: 3000 },
    );
    for (const s of ["", "user:42", "ключ", "鍵|\n\u0000", "😀😀", "a".repeat(1024)]) expect(Bun.hash.murmur32v3(s) >>> 0).toBe(murmur3(s));
  });

  test("a ring built with the native hash gives every key the same owner as the reference ring", () => {
    const groups = [0, 1, 2, 3, 4];
    const native = new HashRing(groups, 150, (s) => Bun.hash.murmur32v3(s));
    const reference = new HashRing(groups);
    for (let i = 0; i < 5000; i++) expect(native.ownerOf(`key-${i}-é`)).toBe(reference.ownerOf(`key-${i}-é`));
  });
});
