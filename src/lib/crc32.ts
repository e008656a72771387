/** CRC-32 (IEEE 802.3, the zlib one), table driven. Pure: used by datagrams and, later, the log. */
const table = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

/** The same CRC-32 in the runtime's native code (Bun.hash.crc32, ~30-200x faster), when there is one. */
const native: ((data: Uint8Array) => number) | undefined = (globalThis as { Bun?: { hash: { crc32(d: Uint8Array): number } } }).Bun?.hash.crc32;

export function crc32(bytes: Uint8Array, start = 0, end = bytes.length): number {
  if (native) return native(start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end)) >>> 0;
  return crc32Table(bytes, start, end);
}

/** The portable table-driven version (and the reference the native one is tested against). */
export function crc32Table(bytes: Uint8Array, start = 0, end = bytes.length): number {
  let c = -1;
  for (let i = start; i < end; i++) c = table[(c ^ bytes[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
