/**
 * Consistent-hash ring of replication groups. Each group owns `vnodes` points, the murmur3 hash of
 * the string `"<group>#<i>"` for i in 0..vnodes-1; a key belongs to the group of the first point
 * clockwise from murmur3(key) (wrapping past 2^32-1). Ties between points sort by group id, so
 * every node that knows the same groups computes the same owner for every key. Pure.
 */
import { assert } from "../lib/assert.ts";
import { murmur3 } from "./hash.ts";

export const DEFAULT_VNODES = 150;
const SPACE = 2 ** 32;

export class HashRing {
  /** Point hashes, ascending. */
  private readonly points: Uint32Array;
  /** owners[i] is the group of points[i]. */
  private readonly owners: Int32Array;
  readonly groups: readonly number[];

  /**
   * `hash` must compute murmur3 as defined above (a native implementation may be passed in; the
   * unit tests check Bun.hash.murmur32v3 gives the same values).
   */
  constructor(
    groups: Iterable<number>,
    readonly vnodes = DEFAULT_VNODES,
    private readonly hash: (s: string) => number = murmur3,
  ) {
    assert(Number.isInteger(vnodes) && vnodes > 0, "vnodes must be a positive integer");
    this.groups = [...new Set(groups)].sort((a, b) => a - b);
    const pts: { h: number; g: number }[] = [];
    for (const g of this.groups) {
      assert(Number.isInteger(g) && g >= 0, `group must be a non-negative integer, got ${g}`);
      for (let i = 0; i < vnodes; i++) pts.push({ h: this.hash(`${g}#${i}`) >>> 0, g });
    }
    pts.sort((a, b) => a.h - b.h || a.g - b.g);
    this.points = Uint32Array.from(pts, (p) => p.h);
    this.owners = Int32Array.from(pts, (p) => p.g);
  }

  get size(): number {
    return this.points.length;
  }

  /** The group owning `key`, or undefined on an empty ring. */
  ownerOf(key: string): number | undefined {
    // One group owns every key: no hash to compute (the usual single-group cluster).
    if (this.groups.length === 1) return this.groups[0];
    return this.ownerOfHash(this.hash(key) >>> 0);
  }

  ownerOfHash(h: number): number | undefined {
    const pts = this.points;
    const n = pts.length;
    if (n === 0) return undefined;
    // Binary search for the first point >= h.
    let lo = 0;
    let hi = n;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (pts[mid]! < h) lo = mid + 1;
      else hi = mid;
    }
    return this.owners[lo === n ? 0 : lo];
  }

  /** Fraction of the hash space each group owns; the fractions sum to 1. */
  shares(): Map<number, number> {
    const out = new Map<number, number>(this.groups.map((g) => [g, 0]));
    const n = this.points.length;
    for (let i = 0; i < n; i++) {
      // Point i owns the arc (points[i-1], points[i]].
      const prev = i === 0 ? this.points[n - 1]! - SPACE : this.points[i - 1]!;
      const g = this.owners[i]!;
      out.set(g, out.get(g)! + (this.points[i]! - prev) / SPACE);
    }
    return out;
  }
}
