/**
 * MurmurHash3 x86_32 (Austin Appleby), seed 0, over the UTF-8 bytes of a string.
 *
 * The UTF-8 encoding is done inline, code point by code point, so hashing a key allocates
 * nothing. Lone surrogates hash as U+FFFD, as TextEncoder would encode them. The result matches
 * the reference implementation on the same bytes (see test/unit/ring.test.ts for its vectors).
 */
const C1 = 0xcc9e2d51;
const C2 = 0x1b873593;

function mixK(k: number): number {
  k = Math.imul(k, C1);
  k = (k << 15) | (k >>> 17);
  return Math.imul(k, C2);
}

function mixH(h: number, k: number): number {
  h ^= mixK(k);
  h = (h << 13) | (h >>> 19);
  return (Math.imul(h, 5) + 0xe6546b64) | 0;
}

export function murmur3(s: string, seed = 0): number {
  let h = seed | 0;
  let block = 0; // up to 4 pending bytes, little-endian
  let fill = 0; // bytes in `block`
  let total = 0;
  const push = (b: number) => {
    block |= b << (fill * 8);
    if (++fill === 4) {
      h = mixH(h, block);
      block = 0;
      fill = 0;
    }
    total++;
  };
  const n = s.length;
  for (let i = 0; i < n; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      // Inline the common ASCII case.
      block |= c << (fill * 8);
      if (++fill === 4) {
        h = mixH(h, block);
        block = 0;
        fill = 0;
      }
      total++;
      continue;
    }
    if (c >= 0xd800 && c <= 0xdfff) {
      const d = i + 1 < n ? s.charCodeAt(i + 1) : 0;
      if (c <= 0xdbff && d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      } else c = 0xfffd;
    }
    if (c < 0x800) {
      push(0xc0 | (c >> 6));
      push(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      push(0xe0 | (c >> 12));
      push(0x80 | ((c >> 6) & 0x3f));
      push(0x80 | (c & 0x3f));
    } else {
      push(0xf0 | (c >> 18));
      push(0x80 | ((c >> 12) & 0x3f));
      push(0x80 | ((c >> 6) & 0x3f));
      push(0x80 | (c & 0x3f));
    }
  }
  if (fill > 0) h ^= mixK(block);
  h ^= total;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
