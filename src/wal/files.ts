/**
 * The data directory. Everything kvnode keeps on disk is here, and only `src/wal` touches disk.
 *
 *   node.json                      identity: node id, current history id, leader term
 *   LOCK                           pid of the node using the directory
 *   snap-<history>-<seq>.snap      snapshot of the store at <seq> (records, see record.ts)
 *   wal-<history>-<firstSeq>.log   write-ahead log segment starting at <firstSeq>
 *   rings.json                     a leader's rings: the groups of each ring it served, from which sequence
 *
 * Sequences in names are 16 zero-padded decimal digits so names sort in sequence order. Files are
 * written to a `.tmp` name, fsynced and renamed, and the directory fsynced, so a visible snapshot
 * or node.json is always whole.
 */
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface Identity {
  node_id: string;
  history_id: string;
  /** Incremented each time this node starts as a leader. */
  term: number;
  group: number;
}

export const pad = (n: number) => String(n).padStart(16, "0");
export const snapName = (history: string, seq: number) => `snap-${history}-${pad(seq)}.snap`;
export const walName = (history: string, first: number) => `wal-${history}-${pad(first)}.log`;

export interface DirFile {
  kind: "snap" | "wal";
  history: string;
  seq: number;
  name: string;
}

export function listFiles(dir: string): DirFile[] {
  const out: DirFile[] = [];
  for (const name of readdirSync(dir)) {
    const m = /^(snap|wal)-([0-9a-f]+)-(\d{16})\.(snap|log)$/.exec(name);
    if (m) out.push({ kind: m[1] as "snap" | "wal", history: m[2]!, seq: Number(m[3]), name });
  }
  return out.sort((a, b) => a.seq - b.seq);
}

/**
 * Remove the files being written when a write was cut short (a crash, a failed snapshot): `*.tmp`,
 * never read (directories too, which kvnode never makes). Returns their names.
 */
export function removeTemp(dir: string): string[] {
  const names = readdirSync(dir).filter((name) => name.endsWith(".tmp"));
  for (const name of names) rmSync(join(dir, name), { force: true, recursive: true });
  return names;
}

export function fsyncDir(dir: string): void {
  const fd = openSync(dir, "r");
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Write a small file atomically: tmp, fsync, rename, fsync the directory. */
export function writeAtomic(dir: string, name: string, data: string | Uint8Array): void {
  const tmp = join(dir, `${name}.tmp`);
  const fd = openSync(tmp, "w");
  try {
    writeFileSync(fd, data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dir, name));
  fsyncDir(dir);
}

export function readIdentity(dir: string): Identity | undefined {
  const p = join(dir, "node.json");
  if (!existsSync(p)) return undefined;
  let j: Identity;
  try {
    j = JSON.parse(readFileSync(p, "utf8")) as Identity;
  } catch (e) {
    throw new Error(`${p} is damaged (${(e as Error).message}): it names this node and its history; restore it from a backup, or move the data dir away to start empty`);
  }
  if (typeof j !== "object" || j === null || typeof j.node_id !== "string" || typeof j.history_id !== "string" || typeof j.term !== "number")
    throw new Error(`${p} is not a kvnode identity file`);
  return j;
}

export function writeIdentity(dir: string, id: Identity): void {
  writeAtomic(dir, "node.json", JSON.stringify(id, null, 2) + "\n");
}

/** The rings a leader served under, each with the last sequence applied before it, in one history. */
export interface RingEpochs {
  history_id: string;
  /** `known`: every group known when the ring began, draining ones (not on the ring) included. */
  epochs: { seq: number; groups: number[]; known?: number[] }[];
}

/** rings.json: undefined when missing, "damaged" when unreadable (either way no ring before this start is known). */
export function readRings(dir: string): RingEpochs | "damaged" | undefined {
  const p = join(dir, "rings.json");
  if (!existsSync(p)) return undefined;
  try {
    const j = JSON.parse(readFileSync(p, "utf8")) as RingEpochs;
    const ok =
      typeof j === "object" &&
      j !== null &&
      typeof j.history_id === "string" &&
      Array.isArray(j.epochs) &&
      j.epochs.every(
        (e) =>
          Number.isSafeInteger(e?.seq) &&
          Array.isArray(e.groups) &&
          e.groups.every((g) => Number.isSafeInteger(g) && g >= 0) &&
          (e.known === undefined || (Array.isArray(e.known) && e.known.every((g) => Number.isSafeInteger(g) && g >= 0))),
      );
    return ok ? j : "damaged";
  } catch {
    return "damaged";
  }
}

export function writeRings(dir: string, r: RingEpochs): void {
  writeAtomic(dir, "rings.json", JSON.stringify(r) + "\n");
}

export function removeRings(dir: string): void {
  rmSync(join(dir, "rings.json"), { force: true, recursive: true });
}

/** Take the directory for this process; refuse when another live process holds it. */
export function lockDir(dir: string, pid = process.pid): void {
  const p = join(dir, "LOCK");
  if (existsSync(p)) {
    const other = Number(readFileSync(p, "utf8").trim());
    if (Number.isInteger(other) && other > 0 && other !== pid && isAlive(other))
      throw new Error(`data dir ${dir} is in use by process ${other} (remove ${p} if that is wrong)`);
  }
  writeFileSync(p, `${pid}\n`);
}

export function unlockDir(dir: string): void {
  rmSync(join(dir, "LOCK"), { force: true });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export function ensureDir(dir: string): void {
  mkdirSync(dir, { recursive: true });
}

/** Bytes of kvnode's files in the directory. */
export function dirBytes(dir: string): number {
  let n = 0;
  for (const name of readdirSync(dir)) {
    try {
      n += statSync(join(dir, name)).size;
    } catch {}
  }
  return n;
}

export function removeFile(dir: string, name: string): void {
  rmSync(join(dir, name), { force: true });
}
