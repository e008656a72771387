import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { networkInterfaces } from "node:os";
import { UsageError, argsDef, normalizeArgv, parseConfig } from "../../src/cli/args.ts";
import { broadcastFor } from "../../src/node/broadcast.ts";

const ROOT = "/work/main";

/** The UsageError message parseConfig throws for `argv` (fails the test when it does not throw). */
function usageError(argv: string[]): string {
  try {
    parseConfig(argv);
  } catch (e) {
    expect(e).toBeInstanceOf(UsageError);
    return (e as Error).message;
  }
  throw new Error(`parseConfig(${JSON.stringify(argv)}) did not throw`);
}

describe("parseConfig", () => {
  test("the Go spelling and the usual double-dash spelling give the same config", () => {
    const go = parseConfig(["-port", "8000", "-group", "0", "-leader", "-api", "9000"]);
    const usual = parseConfig(["--port", "8000", "--group=0", "--leader", "--api", "9000"]);
    expect(go).toEqual(usual);
    expect(go).toMatchObject({ port: 8000, group: 0, leader: true, api: 9000 });
  });

  test("single-dash, double-dash, and name=value forms agree for any valid values (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 65535 }), // (-port 0 has its own rules, see the edges test)
        fc.integer({ min: 0, max: 2 ** 31 - 1 }),
        fc.integer({ min: 0, max: 65535 }),
        fc.boolean(),
        fc.stringMatching(/^[a-z][a-z0-9-]{0,20}$/),
        fc.integer({ min: 10, max: 10_000 }),
        (port, group, api, leader, cluster, heartbeat) => {
          const pairs: [string, string][] = [
            ["port", String(port)],
            ["group", String(group)],
            ["api", String(api)],
            ["cluster", cluster],
            ["heartbeat-ms", String(heartbeat)],
            ["stale-ms", String(heartbeat + 1)],
          ];
          const single = pairs.flatMap(([k, v]) => [`-${k}`, v]);
          const double = pairs.flatMap(([k, v]) => [`--${k}`, v]);
          const eq = pairs.map(([k, v]) => `--${k}=${v}`);
          const singleEq = pairs.map(([k, v]) => `-${k}=${v}`);
          const flag = leader ? ["-leader"] : [];
          const a = parseConfig([...single, ...flag]);
          expect(parseConfig([...double, ...flag.map((f) => `-${f}`)])).toEqual(a);
          expect(parseConfig([...eq, ...flag])).toEqual(a);
          expect(parseConfig([...singleEq, ...flag])).toEqual(a);
          expect(a).toMatchObject({ port, group, api, leader, cluster, heartbeatMs: heartbeat, staleMs: heartbeat + 1 });
        },
      ),
      { numRuns: 200 },
    );
  });

  test("every flag left out takes its documented default", () => {
    const c = parseConfig(["-group", "0"]);
    expect(c).toMatchObject({
      port: 8000,
      api: 9000,
      group: 0,
      leader: false,
      host: "127.0.0.1",
      discoveryPort: 7946,
      broadcast: "127.255.255.255",
      cluster: "kvnode",
      heartbeatMs: 5000,
      staleMs: 30000,
      logLevel: "info",
    });
  });

  test("with no flags at all the node is a standalone leader, every other setting at its default", () => {
    const bare = parseConfig([]);
    expect(bare.leader).toBe(true);
    expect({ ...bare, leader: false }).toEqual(parseConfig(["-group", "0"]));
  });

  test("a boolean flag can be turned off explicitly", () => {
    expect(parseConfig(["-leader=false"]).leader).toBe(false);
    expect(parseConfig(["--no-leader"]).leader).toBe(false);
    expect(parseConfig(["-leader=true"]).leader).toBe(true);
  });

  test("an on/off flag with any other value is refused, naming it (citty would take it as on)", () => {
    expect(usageError(["-leader=maybe"])).toContain('-leader: "maybe"');
    expect(usageError(["--in-memory=nope"])).toContain("-in-memory");
    expect(usageError(["-leader="])).toContain("-leader");
    expect(usageError(["-no-leader=false"])).toBe("flag -no-leader takes no value");
    // A flag that takes a value has no -no- form (citty would set it to false and drop the next argument).
    expect(usageError(["-no-data-dir", "x"])).toContain("-data-dir takes a value");
    expect(usageError(["-no-cluster", "x"])).toContain("unknown flag -no-cluster");
  });

  test("a port that is not an integer is refused, naming -port", () => {
    for (const v of ["abc", "80a", "8.5", "", " ", "0x10", "1e3"]) expect(usageError(["-port", v])).toContain("-port");
    expect(usageError(["-port", "abc"])).toContain('"abc"');
  });

  test("a port out of range is refused, naming the flag", () => {
    expect(usageError(["-port", "70000"])).toContain("-port");
    expect(usageError(["-port", "70000"])).toContain("70000");
    expect(usageError(["-port", "-1"])).toContain("-port");
    expect(usageError(["-api", "65536"])).toContain("-api");
    expect(usageError(["-discovery-port", "0"])).toContain("-discovery-port");
    expect(usageError(["-group", "-1"])).toContain("-group");
    expect(usageError(["-group", String(2 ** 31)])).toContain("-group");
  });

  test("the edges of each range are accepted", () => {
    expect(parseConfig(["-port", "1", "-api", "65535"])).toMatchObject({ port: 1, api: 65535 });
    expect(parseConfig(["-port", "65535", "-api", "0"])).toMatchObject({ port: 65535, api: 0 });
    // Port 0 (pick a free one) is accepted for a node that keeps no data named after its port.
    expect(parseConfig(["-port", "0", "-in-memory"]).port).toBe(0);
    expect(parseConfig(["-group", String(2 ** 31 - 1)]).group).toBe(2 ** 31 - 1);
  });

  test("an unknown flag is refused, naming it as given", () => {
    expect(usageError(["--bogus"])).toContain("--bogus");
    expect(usageError(["-bogus", "1"])).toContain("-bogus");
    expect(usageError(["--port", "1", "--bogus=2"])).toContain("--bogus");
  });

  test("0.0.0.0 and non-IPv4 hosts are refused, naming -host", () => {
    expect(usageError(["-host", "0.0.0.0"])).toContain("-host");
    for (const h of ["localhost", "256.1.1.1", "1.2.3", "::1", ""]) expect(usageError(["-host", h])).toContain("-host");
  });

  test("stray positional arguments are refused, quoting them", () => {
    expect(usageError(["foo"])).toContain('"foo"');
    expect(usageError(["-port", "8000", "extra"])).toContain('"extra"');
    expect(usageError(["-leader", "true"])).toContain('"true"');
    expect(() => parseConfig(["--", "-port"])).toThrow(UsageError);
  });

  test("a value flag at the end of the line without its value is refused, naming it", () => {
    expect(usageError(["-port"])).toContain("-port");
    expect(usageError(["-leader", "-cluster"])).toContain("-cluster");
    // Followed by another of its flags: the value was left out (not "-discovery-port" as a port).
    expect(usageError(["-port", "-discovery-port", "31901"])).toBe("flag -port needs a value");
    expect(usageError(["-data-dir", "--in-memory"])).toBe("flag -data-dir needs a value");
    expect(usageError(["-log-level", "-no-leader"])).toBe("flag -log-level needs a value");
  });

  test("a value flag takes the next argument even when it starts with a dash", () => {
    expect(normalizeArgv(["-group", "-1"])).toEqual(["--group", "-1"]);
    expect(usageError(["-group", "-1"])).toContain("out of range");
  });

  test("other bad values are refused, each naming its flag", () => {
    expect(usageError(["-log-level", "loud"])).toContain("-log-level");
    expect(usageError(["-cluster", ""])).toContain("-cluster");
    expect(usageError(["-cluster", "x".repeat(65)])).toContain("-cluster");
    expect(usageError(["-heartbeat-ms", "5"])).toContain("-heartbeat-ms");
    expect(usageError(["-heartbeat-ms", "1000", "-stale-ms", "1000"])).toContain("-stale-ms");
    expect(usageError(["-broadcast", "nope"])).toContain("-broadcast");
    expect(usageError(["-max-key-bytes", "0"])).toContain("-max-key-bytes");
    expect(usageError(["-history-entries", "0"])).toContain("-history-entries");
    expect(usageError(["-data-dir", ""])).toContain("-data-dir");
    expect(usageError(["-sync-replicas", "-1"])).toContain("-sync-replicas");
    expect(usageError(["-sync-replicas", "65"])).toContain("-sync-replicas");
    expect(usageError(["-sync-timeout-ms", "0"])).toContain("-sync-timeout-ms");
  });

  test("-sync-replicas and -sync-timeout-ms default to 0 (answer once the leader has it) and 5000", () => {
    expect(parseConfig(["-leader"])).toMatchObject({ syncReplicas: 0, syncTimeoutMs: 5000 });
    expect(parseConfig(["-leader", "-sync-replicas", "2", "-sync-timeout-ms", "250"])).toMatchObject({ syncReplicas: 2, syncTimeoutMs: 250 });
  });

  test("normalizeArgv rewrites declared single-dash flags and leaves the help flags alone", () => {
    expect(normalizeArgv(["-port", "1", "-leader", "-cluster=x", "--api=2"])).toEqual(["--port", "1", "--leader", "--cluster=x", "--api=2"]);
    expect(normalizeArgv(["-h"])).toEqual(["-h"]);
    expect(normalizeArgv(["-help"])).toEqual(["--help"]);
    expect(normalizeArgv(["--version"])).toEqual(["--version"]);
  });

  test("an explicit -broadcast is used as given", () => {
    expect(parseConfig(["-broadcast", "10.1.2.255"]).broadcast).toBe("10.1.2.255");
  });
});

describe("the broadcast address", () => {
  test("on loopback it is 127.255.255.255", () => {
    for (const host of ["127.0.0.1", "127.0.0.2", "127.1.2.3"]) expect(parseConfig(["-host", host]).broadcast).toBe("127.255.255.255");
  });

  test("for each IPv4 address of this machine it is the subnet's, never 255.255.255.255", () => {
    for (const list of Object.values(networkInterfaces()))
      for (const i of list ?? []) {
        if (i.family !== "IPv4" || i.netmask === "255.255.255.255") continue;
        const c = parseConfig(["-host", i.address]);
        expect(c.broadcast).not.toBe("255.255.255.255");
      }
  });

  const toIp = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
  const iface = (address: string, netmask: string) => ({
    eth0: [{ address, netmask, family: "IPv4" as const, mac: "00:00:00:00:00:00", internal: false, cidr: null }],
  });

  test("is derived as address | ~netmask from the interface holding the address (property)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 8, max: 30 }), fc.integer({ min: 0x0a000000, max: 0x0affffff }), (bits, addr) => {
        const mask = (0xffffffff << (32 - bits)) >>> 0;
        const host = toIp(addr);
        const r = broadcastFor(host, iface(host, toIp(mask)) as unknown as ReturnType<typeof networkInterfaces>);
        expect(r).toEqual({ ok: true, address: toIp((addr | ~mask) >>> 0) });
        expect(r.ok && r.address).not.toBe("255.255.255.255");
      }),
      { numRuns: 300 },
    );
  });

  test("a host no interface has, or a /32 interface, asks for -broadcast instead of guessing", () => {
    const none = broadcastFor("10.9.9.9", {});
    expect(none.ok).toBe(false);
    const slash32 = broadcastFor("10.0.0.1", iface("10.0.0.1", "255.255.255.255") as unknown as ReturnType<typeof networkInterfaces>);
    expect(slash32.ok).toBe(false);
    expect(usageError(["-host", "203.0.113.77"])).toContain("-broadcast");
  });

  test("is never 255.255.255.255, even for an interface with a /0 netmask", () => {
    // The module promises it never derives the limited broadcast address (it would leave the machine).
    const r = broadcastFor("10.0.0.5", iface("10.0.0.5", "0.0.0.0") as unknown as ReturnType<typeof networkInterfaces>);
    expect(r.ok ? r.address : "refused").not.toBe("255.255.255.255");
  });
});

describe("the kvnode command", () => {
  async function run(args: string[]) {
    const p = Bun.spawn([process.execPath, "src/cli/main.ts", ...args], {
      cwd: ROOT,
      stdout: "pipe",
      stderr: "pipe",
      env: { ...process.env, NO_COLOR: "1" },
    });
    const timer = setTimeout(() => p.kill(), 10_000);
    const [stdout, stderr, status] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text(), p.exited]);
    clearTimeout(timer);
    return { stdout, stderr, status };
  }
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping ANSI colours
  const plain = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, "");

  test("a bad -port exits with status 2 and one stderr line naming -port", async () => {
    const r = await run(["-port", "abc"]);
    expect(r.status).toBe(2);
    const lines = r.stderr.split("\n").filter((l) => l.length > 0);
    expect(lines.length).toBe(1);
    expect(lines[0]).toContain("-port");
    expect(r.stderr.endsWith("\n")).toBe(true);
  });

  test("an unknown flag exits with status 2 and one stderr line naming it", async () => {
    const r = await run(["--bogus"]);
    expect(r.status).toBe(2);
    const lines = r.stderr.split("\n").filter((l) => l.length > 0);
    expect(lines.length).toBe(1);
    expect(lines[0]).toContain("--bogus");
  });

  test("--help exits 0 and mentions every flag and the default discovery port", async () => {
    const r = await run(["--help"]);
    expect(r.status).toBe(0);
    const out = plain(r.stdout + r.stderr);
    for (const name of Object.keys(argsDef)) expect(out).toContain(name);
    for (const name of Object.keys(argsDef)) expect(out).toMatch(new RegExp(`-${name}\\b`));
    expect(out).toContain("7946");
  });
});
