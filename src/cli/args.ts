/**
 * Flags: argv becomes a validated NodeConfig, or one line saying which flag is wrong. Both the Go
 * spelling the seed README documents (`-port 8000 -leader`) and the usual one (`--port=8000`) work:
 * citty only knows the second, so single-dash long flags we declare are rewritten first.
 */
import type { ArgsDef, ParsedArgs } from "citty";
import { parseArgs } from "citty";
import { type LogLevel, logLevels } from "../lib/log.ts";
import { broadcastFor, isIPv4 } from "../node/broadcast.ts";
import { type NodeConfig, defaults } from "../node/config.ts";
import { type FsyncMode, fsyncModes } from "../wal/log.ts";
import { join } from "node:path";

export const argsDef = {
  port: { type: "string", description: "TCP port for cluster communication (replication); 0 picks a free one", default: String(defaults.port), valueHint: "int" },
  group: { type: "string", description: "Replication group id", default: String(defaults.group), valueHint: "int" },
  leader: { type: "boolean", description: "Make this node the leader of its group (on by itself when kvnode runs with no flags at all)", default: false },
  api: { type: "string", description: "HTTP API port; 0 picks a free one", default: String(defaults.api), valueHint: "int" },
  host: { type: "string", description: "IPv4 address to bind and advertise", default: defaults.host, valueHint: "ip" },
  "discovery-port": { type: "string", description: "UDP port for discovery broadcasts (shared by every node of a host)", default: String(defaults.discoveryPort), valueHint: "int" },
  broadcast: { type: "string", description: "Broadcast address for discovery (default: the broadcast address of -host's subnet, 127.255.255.255 on loopback)", valueHint: "ip" },
  cluster: { type: "string", description: "Cluster name; datagrams of other clusters are ignored", default: defaults.cluster, valueHint: "name" },
  "heartbeat-ms": { type: "string", description: "Milliseconds between discovery announcements", default: String(defaults.heartbeatMs), valueHint: "ms" },
  "stale-ms": { type: "string", description: "Milliseconds of silence after which a node is dropped from membership", default: String(defaults.staleMs), valueHint: "ms" },
  "log-level": { type: "string", description: `Log level: ${logLevels.join(", ")}`, default: defaults.logLevel, valueHint: "level" },
  "max-key-bytes": { type: "string", description: "Largest key in UTF-8 bytes", default: String(defaults.keyBytesMax), valueHint: "bytes" },
  "max-value-bytes": { type: "string", description: "Largest value in UTF-8 bytes", default: String(defaults.valueBytesMax), valueHint: "bytes" },
  "data-dir": { type: "string", description: "Directory for this node's data (default: ./data/<port>)", valueHint: "path" },
  "in-memory": { type: "boolean", description: "Keep no data on disk (a cache; a restart starts empty)", default: false },
  fsync: { type: "string", description: "When a write is answered: always (after its fsync), batch (after the fsync of its -fsync-ms window), never (once the OS has it)", default: defaults.fsync, valueHint: "mode" },
  "fsync-ms": { type: "string", description: "Group-commit window of -fsync batch, in ms", default: String(defaults.fsyncMs), valueHint: "ms" },
  "snapshot-bytes": { type: "string", description: "Log size past which a snapshot is written and the log it covers dropped", default: String(defaults.snapshotBytes), valueHint: "bytes" },
  "sync-replicas": { type: "string", description: "Leader: answer a write only once this many followers also have it (in their log, or in memory if -in-memory); 0 answers once the leader has it", default: String(defaults.syncReplicas), valueHint: "int" },
  "sync-timeout-ms": { type: "string", description: "How long a write waits for -sync-replicas followers before it is answered 503", default: String(defaults.syncTimeoutMs), valueHint: "ms" },
  "history-entries": { type: "string", description: "Writes a leader keeps to catch followers up without a full transfer (also bounded to 64 MiB)", default: String(defaults.historyEntries), valueHint: "int" },
} as const satisfies ArgsDef;

export class UsageError extends Error {
  override name = "UsageError";
}

const names = new Set(Object.keys(argsDef));
const builtins = new Set(["help", "h", "version", "v"]);

/**
 * Rewrite `-name` / `-name=v` into `--name` / `--name=v` for declared names, and refuse unknown
 * flags and stray arguments. Everything after `--` is left alone (and refused: we take none).
 */
export function normalizeArgv(raw: readonly string[]): string[] {
  // No flags at all: a working standalone node, i.e. the leader of group 0 with every default.
  // With any flag, a node leads only when given -leader (the seed's follower commands).
  if (raw.length === 0) return ["--leader"];
  const out: string[] = [];
  for (let i = 0; i < raw.length; i++) {
    const a = raw[i]!;
    if (a === "--") throw new UsageError(`unexpected argument after "--": kvnode takes only flags`);
    const m = /^(--?)([A-Za-z][\w-]*)(=.*)?$/.exec(a);
    if (!m) {
      throw new UsageError(`unexpected argument "${a}": flags start with - (see --help)`);
    }
    const [, dashes, name, rest = ""] = m;
    const bare = name!.startsWith("no-") && names.has(name!.slice(3)) ? name!.slice(3) : name!;
    if (builtins.has(name!)) {
      out.push(name!.length === 1 ? `-${name}` : `--${name}`);
      continue;
    }
    if (!names.has(bare)) throw new UsageError(`unknown flag ${dashes}${name} (see --help)`);
    const def = argsDef[bare as keyof typeof argsDef];
    // citty takes any -leader=<word> as on, and ignores a value after -no-leader: only true and
    // false are values of an on/off flag, and its -no- form takes none.
    if (bare !== name && def.type === "string") throw new UsageError(`unknown flag ${dashes}${name}: -${bare} takes a value, it has no -no- form (see --help)`);
    if (bare !== name && rest !== "") throw new UsageError(`flag ${dashes}${name} takes no value`);
    if (def.type === "boolean" && rest !== "" && rest !== "=true" && rest !== "=false")
      throw new UsageError(`invalid value for -${name}: "${rest.slice(1)}" is not true or false`);
    out.push(`--${name}${rest}`);
    // A flag that takes a value takes the next argument, even one starting with "-" (-group -1),
    // unless that is one of our flags: then the value was left out.
    if (def.type === "string" && rest === "") {
      const next = raw[i + 1];
      const flag = next === undefined ? null : /^--?([A-Za-z][\w-]*)(=.*)?$/.exec(next);
      const ours = (f: string) => names.has(f) || builtins.has(f) || (f.startsWith("no-") && names.has(f.slice(3)));
      if (next === undefined || (flag && ours(flag[1]!))) throw new UsageError(`flag -${name} needs a value`);
      out.push(raw[++i]!);
    }
  }
  return out;
}

function int(flag: string, v: string, min: number, max: number): number {
  if (!/^-?\d+$/.test(v.trim())) throw new UsageError(`invalid value for -${flag}: "${v}" is not an integer`);
  const n = Number(v);
  if (n < min || n > max) throw new UsageError(`invalid value for -${flag}: ${n} is out of range ${min}..${max}`);
  return n;
}

function bool(flag: string, v: unknown): boolean {
  if (typeof v === "boolean") return v;
  if (v === "true") return true;
  if (v === "false") return false;
  throw new UsageError(`invalid value for -${flag}: "${String(v)}" is not true or false`);
}

/** Turn parsed flags into a NodeConfig; throws UsageError naming the flag. */
export function toConfig(args: ParsedArgs<typeof argsDef>): NodeConfig {
  const host = String(args.host);
  if (!isIPv4(host)) throw new UsageError(`invalid value for -host: "${host}" is not an IPv4 address`);
  if (host === "0.0.0.0") throw new UsageError(`invalid value for -host: 0.0.0.0 cannot be advertised to peers; give this machine's address`);
  let broadcast = String(args.broadcast ?? "");
  if (broadcast === "") {
    const b = broadcastFor(host);
    if (!b.ok) throw new UsageError(`cannot derive -broadcast: ${b.error}`);
    broadcast = b.address;
  } else if (!isIPv4(broadcast)) throw new UsageError(`invalid value for -broadcast: "${broadcast}" is not an IPv4 address`);
  const logLevel = String(args["log-level"]);
  if (!logLevels.includes(logLevel as LogLevel)) throw new UsageError(`invalid value for -log-level: "${logLevel}" is not one of ${logLevels.join(", ")}`);
  const cluster = String(args.cluster);
  if (cluster.length === 0 || Buffer.byteLength(cluster) > 64) throw new UsageError(`invalid value for -cluster: must be 1 to 64 bytes`);
  const fsync = String(args.fsync);
  if (!fsyncModes.includes(fsync as FsyncMode)) throw new UsageError(`invalid value for -fsync: "${fsync}" is not one of ${fsyncModes.join(", ")}`);
  const port = int("port", String(args.port), 0, 65535);
  const inMemory = bool("in-memory", args["in-memory"]);
  let dataDir: string | null = null;
  if (!inMemory) {
    if (args["data-dir"] !== undefined && String(args["data-dir"]) === "") throw new UsageError("invalid value for -data-dir: it is empty (leave the flag out for the default, data/<port>)");
    dataDir = args["data-dir"] === undefined ? "" : String(args["data-dir"]);
    if (dataDir === "") {
      if (port === 0) throw new UsageError("-port 0 needs -data-dir (the default data dir is named after the port) or -in-memory");
      dataDir = join("data", String(port));
    }
  } else if (args["data-dir"] !== undefined) throw new UsageError("-in-memory and -data-dir exclude each other");
  const heartbeatMs = int("heartbeat-ms", String(args["heartbeat-ms"]), 10, 3_600_000);
  const staleMs = int("stale-ms", String(args["stale-ms"]), 10, 86_400_000);
  if (staleMs <= heartbeatMs) throw new UsageError(`invalid value for -stale-ms: ${staleMs} must be greater than -heartbeat-ms ${heartbeatMs}`);
  return {
    port,
    group: int("group", String(args.group), 0, 2 ** 31 - 1),
    leader: bool("leader", args.leader),
    api: int("api", String(args.api), 0, 65535),
    host,
    discoveryPort: int("discovery-port", String(args["discovery-port"]), 1, 65535),
    broadcast,
    cluster,
    heartbeatMs,
    staleMs,
    logLevel: logLevel as LogLevel,
    keyBytesMax: int("max-key-bytes", String(args["max-key-bytes"]), 1, 64 * 1024),
    valueBytesMax: int("max-value-bytes", String(args["max-value-bytes"]), 0, 64 * 1024 * 1024),
    historyEntries: int("history-entries", String(args["history-entries"]), 1, 100_000_000),
    dataDir,
    fsync: fsync as FsyncMode,
    fsyncMs: int("fsync-ms", String(args["fsync-ms"]), 0, 10_000),
    snapshotBytes: int("snapshot-bytes", String(args["snapshot-bytes"]), 4096, 2 ** 40),
    syncReplicas: int("sync-replicas", String(args["sync-replicas"]), 0, 64),
    syncTimeoutMs: int("sync-timeout-ms", String(args["sync-timeout-ms"]), 1, 600_000),
  };
}

/** argv (without the program) to a config: the whole path, for tests. */
export function parseConfig(raw: readonly string[]): NodeConfig {
  return toConfig(parseArgs(normalizeArgv(raw), argsDef));
}
