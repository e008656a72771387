/** Forwarding to another node: a peer that never answers gets a 503 naming its group, in time. */
import { expect, test } from "bun:test";
import type { Member } from "../../src/discovery/membership.ts";
import { UnavailableError } from "../../src/lib/errors.ts";
import { forward } from "../../src/routing/forward.ts";

function member(port: number): Member {
  return {
    nodeId: "silent", host: "127.0.0.1", clusterPort: 1, apiPort: port, group: 4, leader: true,
    draining: false, moving: false, term: 1, seq: 0, historyId: "h", keys: 0, lastSeenMs: 0,
  };
}

test("a forward to a node that accepts but never answers fails with UnavailableError naming the group, after about its timeout", async () => {
  // Accepts connections and reads requests, never writes a byte back.
  using silent = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const started = performance.now();
  const err = await forward(member(silent.port), "GET", "/get?key=k", undefined, { hops: 0, group: 4, timeoutMs: 300 }).catch((e) => e);
  const took = performance.now() - started;
  expect(err).toBeInstanceOf(UnavailableError);
  expect((err as UnavailableError).group).toBe(4);
  expect((err as Error).message).toMatch(/Group 4 is unreachable/);
  expect(took).toBeGreaterThanOrEqual(290);
  expect(took).toBeLessThan(2_000);
});

test("a forward to a closed port fails at once with UnavailableError", async () => {
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  const err = await forward(member(port), "POST", "/set", "{}", { hops: 1, group: 4, timeoutMs: 5_000 }).catch((e) => e);
  expect(err).toBeInstanceOf(UnavailableError);
});
