/**
 * Discovery datagrams, broadcast over UDP. At most 1400 bytes, big-endian:
 *
 *   0  u16 magic    0x4b56 ("KV")
 *   2  u8  version  DATAGRAM_VERSION
 *   3  u8  type     DatagramType
 *   4  u32 crc32    of bytes 8..end
 *   8  str8 cluster, str8 nodeId, str8 host        (u8 byte length + UTF-8)
 *      u16 clusterPort, u16 apiPort, u32 group,
 *      u8 flags (bit 0: leader, bit 1: draining its keys away, bit 2: moving keys to other groups)
 *      u64 term, u64 seq (leader: head sequence; follower: applied sequence), str8 historyId,
 *      u64 keys (live keys this node holds)
 *
 * Anything else on the port (garbage, other versions, other clusters) is dropped and counted.
 */
import { crc32 } from "../lib/crc32.ts";
import { limits } from "../lib/limits.ts";
import { Reader, Short, Writer } from "./_bytes.ts";

export const DATAGRAM_MAGIC = 0x4b56;
export const DATAGRAM_VERSION = 1;

/** ONLY APPEND TO THIS LIST. */
export const DatagramType = { Announce: 1, Leave: 2 } as const;
export type DatagramTypeCode = (typeof DatagramType)[keyof typeof DatagramType];

export interface Announcement {
  type: DatagramTypeCode;
  cluster: string;
  nodeId: string;
  host: string;
  clusterPort: number;
  apiPort: number;
  group: number;
  leader: boolean;
  /** Its group is being drained: the ring leaves it out. */
  draining: boolean;
  /** Moving keys it no longer owns to their owners (reads may ask it meanwhile). */
  moving: boolean;
  term: number;
  seq: number;
  historyId: string;
  keys: number;
}

export type DatagramFailure = "too-large" | "bad-magic" | "bad-version" | "bad-checksum" | "malformed" | "wrong-cluster";
export type DecodedDatagram = { ok: true; message: Announcement } | { ok: false; reason: DatagramFailure };

export function encodeDatagram(m: Announcement): Buffer {
  for (const s of [m.cluster, m.nodeId, m.host, m.historyId])
    if (Buffer.byteLength(s) > limits.datagramStringBytesMax) throw new RangeError(`datagram string too long: "${s.slice(0, 40)}..."`);
  const w = new Writer(128);
  w.u16(DATAGRAM_MAGIC).u8(DATAGRAM_VERSION).u8(m.type).u32(0);
  w.str8(m.cluster).str8(m.nodeId).str8(m.host);
  w.u16(m.clusterPort).u16(m.apiPort).u32(m.group).u8((m.leader ? 1 : 0) | (m.draining ? 2 : 0) | (m.moving ? 4 : 0));
  w.u64(m.term).u64(m.seq).str8(m.historyId).u64(m.keys);
  const out = w.bytes();
  w.patchU32(4, crc32(out, 8));
  return out;
}

/** Decode a datagram; `cluster` filters out other clusters sharing the port. Never throws. */
export function decodeDatagram(buf: Uint8Array, cluster?: string): DecodedDatagram {
  if (buf.length > limits.datagramBytesMax) return { ok: false, reason: "too-large" };
  if (buf.length < 8) return { ok: false, reason: "malformed" };
  if (((buf[0]! << 8) | buf[1]!) !== DATAGRAM_MAGIC) return { ok: false, reason: "bad-magic" };
  if (buf[2] !== DATAGRAM_VERSION) return { ok: false, reason: "bad-version" };
  const r = new Reader(buf, 3, buf.length);
  try {
    const type = r.u8();
    const sum = r.u32();
    if (crc32(buf, 8) !== sum) return { ok: false, reason: "bad-checksum" };
    if (type !== DatagramType.Announce && type !== DatagramType.Leave) return { ok: false, reason: "malformed" };
    const clusterName = r.str8();
    const nodeId = r.str8();
    const host = r.str8();
    const clusterPort = r.u16();
    const apiPort = r.u16();
    const group = r.u32();
    const flags = r.u8();
    const message: Announcement = {
      type,
      cluster: clusterName,
      nodeId,
      host,
      clusterPort,
      apiPort,
      group,
      leader: (flags & 1) !== 0,
      draining: (flags & 2) !== 0,
      moving: (flags & 4) !== 0,
      term: r.u64(),
      seq: r.u64(),
      historyId: r.str8(),
      keys: r.u64(),
    };
    if (!r.done() || message.nodeId.length === 0) return { ok: false, reason: "malformed" };
    if (cluster !== undefined && message.cluster !== cluster) return { ok: false, reason: "wrong-cluster" };
    return { ok: true, message };
  } catch (e) {
    if (e instanceof Short) return { ok: false, reason: "malformed" };
    throw e;
  }
}
