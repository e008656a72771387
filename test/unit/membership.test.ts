import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { Membership, type Member } from "../../src/discovery/membership.ts";
import { limits } from "../../src/lib/limits.ts";
import { DatagramType, type Announcement } from "../../src/protocol/datagram.ts";

const self: Member = {
  nodeId: "self",
  host: "127.0.0.1",
  clusterPort: 8000,
  apiPort: 9000,
  group: 0,
  leader: false,
  draining: false,
  moving: false,
  term: 1,
  seq: 0,
  historyId: "",
  keys: 0,
  lastSeenMs: 0,
};

let port = 10_000;
function ann(p: Partial<Announcement> = {}): Announcement {
  return {
    type: DatagramType.Announce,
    cluster: "kvnode",
    nodeId: `n${port}`,
    host: "127.0.0.1",
    clusterPort: port++,
    apiPort: 20_000,
    group: 0,
    leader: false,
    draining: false,
    moving: false,
    term: 1,
    seq: 0,
    historyId: "h",
    keys: 0,
    ...p,
  };
}

describe("Membership", () => {
  test("holds itself from the start", () => {
    const m = new Membership(self);
    expect(m.size).toBe(1);
    expect(m.selfId).toBe("self");
    expect(m.get("self")).toEqual(self);
    expect(m.list()).toEqual([self]);
    expect(m.groups()).toEqual([0]);
  });

  test("a node heard for the first time is new, and every later announcement is an update", () => {
    const m = new Membership(self);
    const a = ann({ nodeId: "a", clusterPort: 8001, seq: 1 });
    expect(m.observe(a, 100)).toBe("new");
    expect(m.get("a")).toEqual({
      nodeId: "a",
      host: a.host,
      clusterPort: 8001,
      apiPort: a.apiPort,
      group: 0,
      leader: false,
      draining: false,
      moving: false,
      term: 1,
      seq: 1,
      historyId: "h",
      keys: 0,
      lastSeenMs: 100,
    });
    expect(m.observe({ ...a, seq: 7, leader: true, apiPort: 9100 }, 200)).toBe("updated");
    expect(m.get("a")).toMatchObject({ seq: 7, leader: true, apiPort: 9100, lastSeenMs: 200 });
    expect(m.size).toBe(2);
  });

  test("a leave datagram removes the node, and one from an unknown node is ignored", () => {
    const m = new Membership(self);
    const a = ann({ nodeId: "a" });
    m.observe(a, 0);
    expect(m.observe({ ...a, type: DatagramType.Leave }, 1)).toBe("left");
    expect(m.get("a")).toBeUndefined();
    expect(m.observe({ ...a, type: DatagramType.Leave }, 2)).toBe("ignored");
    expect(m.size).toBe(1);
  });

  test("its own datagrams, announce or leave, are ignored", () => {
    const m = new Membership(self);
    expect(m.observe(ann({ nodeId: "self", host: "10.0.0.9", group: 5 }), 10)).toBe("ignored");
    expect(m.observe(ann({ nodeId: "self", type: DatagramType.Leave }), 10)).toBe("ignored");
    expect(m.get("self")).toEqual(self);
    expect(m.size).toBe(1);
  });

  test("sweep drops nodes silent for longer than the stale time and returns them", () => {
    const m = new Membership(self);
    m.observe(ann({ nodeId: "old" }), 0);
    m.observe(ann({ nodeId: "edge" }), 70);
    m.observe(ann({ nodeId: "fresh" }), 90);
    const gone = m.sweep(100, 30);
    expect(gone.map((g) => g.nodeId)).toEqual(["old"]);
    expect(m.get("edge")).toBeDefined(); // exactly the stale time: kept
    expect(m.get("fresh")).toBeDefined();
    expect(m.sweep(101, 30).map((g) => g.nodeId)).toEqual(["edge"]);
  });

  test("sweep never drops this node, however old its own time is", () => {
    const m = new Membership(self);
    expect(m.sweep(1e12, 1)).toEqual([]);
    expect(m.get("self")).toEqual(self);
    expect(m.size).toBe(1);
  });

  test("sweeping keeps exactly the nodes heard within the stale time, and self (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.nat(1000), { maxLength: 30 }), fc.nat(1000), fc.integer({ min: 1, max: 500 }), (seen, extra, stale) => {
        const m = new Membership(self);
        seen.forEach((t, i) => m.observe(ann({ nodeId: `p${i}`, clusterPort: 30_000 + i }), t));
        const now = 1000 + extra;
        const gone = m.sweep(now, stale);
        expect(gone.length).toBe(seen.filter((t) => now - t > stale).length);
        expect(m.size).toBe(1 + seen.filter((t) => now - t <= stale).length);
        expect(m.get("self")).toBeDefined();
      }),
      { numRuns: 200 },
    );
  });

  test("a node restarted on the same host and port under a new id replaces the old entry at once", () => {
    const m = new Membership(self);
    m.observe(ann({ nodeId: "old-incarnation", host: "10.0.0.2", clusterPort: 8001, group: 1, leader: true }), 0);
    m.observe(ann({ nodeId: "other-port", host: "10.0.0.2", clusterPort: 8002 }), 0);
    expect(m.observe(ann({ nodeId: "new-incarnation", host: "10.0.0.2", clusterPort: 8001, group: 1, leader: true }), 5)).toBe("new");
    expect(m.get("old-incarnation")).toBeUndefined();
    expect(m.get("other-port")).toBeDefined();
    expect(m.leaderOf(1)?.nodeId).toBe("new-incarnation");
    expect(m.size).toBe(3);
  });

  test("a peer announcing this node's own host and port never evicts this node", () => {
    const m = new Membership(self);
    expect(m.observe(ann({ nodeId: "impostor", host: self.host, clusterPort: self.clusterPort }), 1)).toBe("new");
    expect(m.get("self")).toEqual(self);
  });

  test("updateSelf changes what the table says about this node but not its id", () => {
    const m = new Membership(self);
    m.updateSelf({ seq: 42, leader: true, group: 3 });
    expect(m.getSelf()).toMatchObject({ nodeId: "self", seq: 42, leader: true, group: 3 });
    expect(m.get("self")).toEqual(m.getSelf());
    expect(m.leaderOf(3)?.nodeId).toBe("self");
    expect(m.groups()).toEqual([3]);
  });

  test("leaderOf prefers the higher term, then the lowest node id", () => {
    const m = new Membership(self);
    m.observe(ann({ nodeId: "b", group: 1, leader: true, term: 2 }), 0);
    m.observe(ann({ nodeId: "a", group: 1, leader: true, term: 1 }), 0);
    m.observe(ann({ nodeId: "c", group: 1, leader: true, term: 2 }), 0);
    m.observe(ann({ nodeId: "0-follower", group: 1, leader: false, term: 9 }), 0);
    m.observe(ann({ nodeId: "0-other-group", group: 2, leader: true, term: 9 }), 0);
    expect(m.leaderOf(1)?.nodeId).toBe("b");
    expect(m.leadersOf(1).map((l) => l.nodeId)).toEqual(["b", "c", "a"]);
    expect(m.leaderOf(2)?.nodeId).toBe("0-other-group");
    expect(m.leaderOf(7)).toBeUndefined();
  });

  test("leaderOf is the best claimant whatever order the announcements came in (property)", () => {
    const claim = fc.record({ id: fc.string({ minLength: 1, maxLength: 4 }), term: fc.integer({ min: 1, max: 3 }) });
    fc.assert(
      fc.property(fc.uniqueArray(claim, { selector: (c) => c.id, minLength: 1, maxLength: 8 }), (claims) => {
        const m = new Membership(self);
        claims.forEach((c, i) => m.observe(ann({ nodeId: c.id === "self" ? "self!" : c.id, clusterPort: 40_000 + i, group: 4, leader: true, term: c.term }), 0));
        const ids = claims.map((c) => ({ id: c.id === "self" ? "self!" : c.id, term: c.term }));
        const best = ids.reduce((x, y) => (y.term > x.term || (y.term === x.term && y.id < x.id) ? y : x));
        expect(m.leaderOf(4)?.nodeId).toBe(best.id);
      }),
      { numRuns: 300 },
    );
  });

  test("groups lists every group with a member, ascending and without repeats", () => {
    const m = new Membership({ ...self, group: 5 });
    m.observe(ann({ group: 3 }), 0);
    m.observe(ann({ group: 10 }), 0);
    m.observe(ann({ group: 3 }), 0);
    m.observe(ann({ group: 0 }), 0);
    expect(m.groups()).toEqual([0, 3, 5, 10]);
  });

  test("a group disappears from groups() when its last member leaves or goes stale", () => {
    const m = new Membership(self);
    const a = ann({ nodeId: "a", group: 2 });
    m.observe(a, 0);
    m.observe(ann({ nodeId: "b", group: 3 }), 0);
    expect(m.groups()).toEqual([0, 2, 3]);
    m.observe({ ...a, type: DatagramType.Leave }, 1);
    expect(m.groups()).toEqual([0, 3]);
    m.sweep(1000, 10);
    expect(m.groups()).toEqual([0]);
  });

  test("list orders by group, leaders first, then address", () => {
    const m = new Membership({ ...self, group: 1, host: "127.0.0.2" });
    m.observe(ann({ nodeId: "f2", group: 1, host: "127.0.0.3", clusterPort: 1 }), 0);
    m.observe(ann({ nodeId: "l1", group: 1, host: "127.0.0.9", clusterPort: 1, leader: true }), 0);
    m.observe(ann({ nodeId: "g0", group: 0, host: "127.0.0.5", clusterPort: 1 }), 0);
    m.observe(ann({ nodeId: "f1b", group: 1, host: "127.0.0.1", clusterPort: 2 }), 0);
    m.observe(ann({ nodeId: "f1a", group: 1, host: "127.0.0.1", clusterPort: 1 }), 0);
    expect(m.list().map((x) => x.nodeId)).toEqual(["g0", "l1", "f1a", "f1b", "self", "f2"]);
  });

  test("a full table refuses new nodes but keeps updating known ones", () => {
    const m = new Membership(self);
    for (let i = 1; i < limits.peersMax; i++) m.observe(ann({ nodeId: `p${i}`, host: "10.1.0.1", clusterPort: i }), 0);
    expect(m.size).toBe(limits.peersMax);
    expect(m.observe(ann({ nodeId: "one-too-many", host: "10.2.0.1", clusterPort: 1 }), 1)).toBe("full");
    expect(m.get("one-too-many")).toBeUndefined();
    expect(m.observe(ann({ nodeId: "p1", host: "10.1.0.1", clusterPort: 1, seq: 9 }), 2)).toBe("updated");
    expect(m.get("p1")?.seq).toBe(9);
    expect(m.observe(ann({ nodeId: "p1", type: DatagramType.Leave }), 3)).toBe("left");
    expect(m.observe(ann({ nodeId: "now-fits", host: "10.2.0.1", clusterPort: 1 }), 4)).toBe("new");
  });
});

describe("the groups on the ring", () => {
  test("at most limits.groupsMax groups are taken, however many come and leave; known groups still take new nodes", () => {
    // Found by an audit: an Announce and a Leave per new group put 7,045 groups on the ring.
    const m = new Membership(self);
    let n = 0;
    for (let g = 1; g < limits.groupsMax + 500; g++) {
      m.observe(ann({ nodeId: `n${g}`, group: g, host: "10.1.0.1", clusterPort: g }), 0);
      m.observe(ann({ nodeId: `n${g}`, type: DatagramType.Leave }), 0);
      n++;
    }
    expect(n).toBeGreaterThan(limits.groupsMax);
    expect(m.ringGroups().length).toBe(limits.groupsMax);
    expect(m.observe(ann({ nodeId: "new-group", group: 999_999, host: "10.2.0.1", clusterPort: 1 }), 1)).toBe("full");
    expect(m.observe(ann({ nodeId: "in-group-1", group: 1, host: "10.2.0.1", clusterPort: 2 }), 1)).toBe("new");
    expect(m.ringGroups()).not.toContain(999_999);
  });

  test("a group whose nodes all fall silent stays on the ring, so its keys are not re-owned", () => {
    const m = new Membership(self);
    m.observe(ann({ nodeId: "g1-leader", group: 1, leader: true }), 0);
    m.observe(ann({ nodeId: "g1-follower", group: 1 }), 0);
    expect(m.ringGroups()).toEqual([0, 1]);
    m.sweep(10_000, 1_000);
    expect(m.groups()).toEqual([0]);
    expect(m.ringGroups()).toEqual([0, 1]);
    expect(m.knownGroups()).toEqual([0, 1]);
  });

  test("a draining group leaves the ring at once and is forgotten when its last member goes", () => {
    const m = new Membership(self);
    const leader = ann({ nodeId: "g2-leader", group: 2, leader: true });
    const follower = ann({ nodeId: "g2-follower", group: 2 });
    m.observe(leader, 0);
    m.observe(follower, 0);
    m.observe({ ...leader, draining: true }, 1);
    // A follower's announcement (draining: false) does not undo its leader's drain.
    m.observe({ ...follower, seq: 9 }, 2);
    expect(m.isDraining(2)).toBe(true);
    expect(m.ringGroups()).toEqual([0]);
    m.observe({ ...leader, type: DatagramType.Leave }, 3);
    expect(m.knownGroups()).toEqual([0, 2]);
    m.observe({ ...follower, type: DatagramType.Leave }, 4);
    expect(m.knownGroups()).toEqual([0]);
    // The same group id may come back later as new capacity.
    m.observe(ann({ nodeId: "g2-new", group: 2, leader: true }), 5);
    expect(m.ringGroups()).toEqual([0, 2]);
  });

  test("when every group is draining, the ring keeps them all rather than none", () => {
    const m = new Membership({ ...self, leader: true, draining: true });
    expect(m.ringGroups()).toEqual([0]);
  });
});

describe("leaderOf, asked on every request", () => {
  test("follows every change: a leader joins, a higher term appears, leaders leave or go stale, self changes", () => {
    const m = new Membership(self);
    expect(m.leaderOf(5)).toBeUndefined();
    const a = ann({ nodeId: "a", group: 5, leader: true, term: 1 });
    m.observe(a, 0);
    expect(m.leaderOf(5)?.nodeId).toBe("a");
    m.observe(ann({ nodeId: "b", group: 5, leader: true, term: 2 }), 1);
    expect(m.leaderOf(5)?.nodeId).toBe("b");
    m.observe(ann({ nodeId: "b", group: 5, leader: true, term: 2, type: DatagramType.Leave }), 2);
    expect(m.leaderOf(5)?.nodeId).toBe("a");
    m.sweep(10_000, 1_000);
    expect(m.leaderOf(5)).toBeUndefined();
    expect(m.leaderOf(0)).toBeUndefined();
    m.updateSelf({ leader: true });
    expect(m.leaderOf(0)?.nodeId).toBe("self");
  });
});
