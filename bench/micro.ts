/**
 * Micro-benchmarks of the hot paths (mitata): key hashing, ring lookup, store, replication frame
 * and discovery datagram codecs. mitata prints its own report; bench/index.ts then prints a table
 * of ns/op and ops/s (1e9 / ns) for each.
 */
import * as mitata from "mitata";
import { do_not_optimize } from "mitata";
import { DatagramType, FrameType, decodeDatagram, decodeFrame, encodeDatagram, encodeFrame } from "../src/protocol/index.ts";
import { HashRing, murmur3 } from "../src/ring/index.ts";
import { Store } from "../src/store/index.ts";

/** Where the benchmarks go: mitata's own registry (a full run), or a list measured briefly (--quick). */
export interface MicroApi {
  group(name: string, body: () => void): void;
  bench(name: string, fn: () => unknown): void;
  summary(body: () => void): void;
}

/** Collects the benchmarks with their group names instead of registering them with mitata. */
export function collectingApi(out: { name: string; fn: () => unknown }[]): MicroApi {
  let current = "";
  return {
    group(name, body) {
      current = name;
      body();
      current = "";
    },
    bench(name, fn) {
      out.push({ name: current ? `${current}: ${name}` : name, fn });
    },
    summary(body) {
      body();
    },
  };
}

const mitataApi: MicroApi = {
  group: (name, body) => void mitata.group(name, body),
  bench: (name, fn) => void mitata.bench(name, fn),
  summary: (body) => void mitata.summary(body),
};

export function registerMicro(opts: { quick: boolean }, api: MicroApi = mitataApi): void {
  const { bench, group, summary } = api;
  const keys = Array.from({ length: 4096 }, (_, i) => `user:${i * 7919}:profile`);
  let k = 0;
  const nextKey = () => keys[k++ & 4095]!;

  group("hash", () => {
    bench("murmur3 (24-byte ASCII key)", () => do_not_optimize(murmur3(nextKey())));
    bench("Bun.hash.murmur32v3 (same keys, native baseline)", () => do_not_optimize(Bun.hash.murmur32v3(nextKey())));
  });

  summary(() => {
    group("ring.ownerOf, 150 vnodes a group", () => {
      for (const n of [3, 16, 64]) {
        const ring = new HashRing(Array.from({ length: n }, (_, i) => i));
        bench(`${n} groups`, () => do_not_optimize(ring.ownerOf(nextKey())));
      }
      // The ring as the node builds it: Bun's native murmur3 (same values for well-formed keys).
      const native = new HashRing(Array.from({ length: 64 }, (_, i) => i), undefined, (s) => Bun.hash.murmur32v3(s));
      bench("64 groups, native murmur3 (as the node uses it)", () => do_not_optimize(native.ownerOf(nextKey())));
    });
  });

  const sizes = opts.quick ? [10_000] : [10_000, 1_000_000];
  group("store", () => {
    for (const size of sizes) {
      const store = new Store();
      const storeKeys = Array.from({ length: size }, (_, i) => `key:${i}`);
      const value = "v".repeat(100);
      for (let i = 0; i < size; i++) store.set(storeKeys[i]!, value, i + 1);
      let version = size;
      let i = 0;
      // Random order too: at 1M keys a lookup is then a cache miss, as it is for real traffic.
      const order = Uint32Array.from({ length: 1 << 16 }, () => Math.floor(Math.random() * size));
      let r = 0;
      bench(`get, ${size} keys`, () => do_not_optimize(store.get(storeKeys[i++ % size]!)));
      bench(`get in random order, ${size} keys`, () => do_not_optimize(store.get(storeKeys[order[r++ & 0xffff]!]!)));
      // Baseline: a bare Map of the same keys, looked up the same way (what any JS store pays).
      const plain = new Map(storeKeys.map((k, n) => [k, { value, version: n + 1 }]));
      bench(`baseline: Map.get, ${size} keys`, () => do_not_optimize(plain.get(storeKeys[i++ % size]!)));
      bench(`baseline: Map.get in random order, ${size} keys`, () => do_not_optimize(plain.get(storeKeys[order[r++ & 0xffff]!]!)));
      // As a server looks up: the key is a new string each time (decoded from the request), so
      // its hash is computed and the stored key's characters are compared. Building it is included.
      const freshKey = () => `key:${order[r++ & 0xffff]!}`.normalize();
      bench(`get of a fresh key string, random order, ${size} keys`, () => do_not_optimize(store.get(freshKey())?.version));
      bench(`baseline: Map.get of a fresh key string, random order, ${size} keys`, () => do_not_optimize(plain.get(freshKey())?.version));
      bench(`baseline: building the fresh key string alone`, () => do_not_optimize(freshKey()));
      bench(`set (overwrite), ${size} keys`, () => do_not_optimize(store.set(storeKeys[i++ % size]!, value, ++version)));
      bench(`delete + set, ${size} keys`, () => {
        const key = storeKeys[i++ % size]!;
        store.delete(key, ++version);
        store.set(key, value, ++version);
      });
    }
  });

  group("replication frame (Put, 24-byte key, 100-byte value)", () => {
    const frame = { type: FrameType.Put, group: 0, term: 1, seq: 123456, key: "user:12345:profile:abcde", value: "v".repeat(100) } as const;
    const bytes = encodeFrame(frame);
    bench("encode", () => do_not_optimize(encodeFrame(frame)));
    bench("decode", () => do_not_optimize(decodeFrame(bytes, 0, 1 << 21)));
  });

  group("discovery datagram", () => {
    const a = {
      type: DatagramType.Announce, cluster: "kvnode", nodeId: "a1b2c3d4e5f60718", host: "127.0.0.1",
      clusterPort: 8000, apiPort: 9000, group: 0, leader: true, draining: false, moving: false, term: 1, seq: 42, historyId: "6c1f0e9a2b3d4c5e", keys: 1000,
    } as const;
    const bytes = encodeDatagram(a);
    bench("encode", () => do_not_optimize(encodeDatagram(a)));
    bench("decode", () => do_not_optimize(decodeDatagram(bytes, "kvnode")));
  });
}
