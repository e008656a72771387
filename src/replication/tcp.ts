/**
 * The replication link over TCP (Bun.listen / Bun.connect). Frames are length-prefixed binary
 * (src/protocol/frame.ts); a chunk may end mid-frame and the reader keeps the rest. Garbage or an
 * oversized frame closes that one connection with a log line; the node keeps running.
 */
import type { Logger } from "../lib/log.ts";
import { type Frame, FrameReader, FrameType, type PutBytes, encodeFrame } from "../protocol/frame.ts";
import { Outbox } from "./outbox.ts";

/**
 * A peer that sends nothing for this long is dead (the leader pings every second). Bun's
 * `socket.timeout(s)` is a deadline from when it is armed, not an idle timer (data does not reset
 * it; checked on 1.4.5, see oven-sh/bun#35935), and fires on a 4 s grid: so it is armed again on
 * every chunk received, and must stay above 4 s for that to push it back.
 */
export const LINK_IDLE_TIMEOUT_S = 10;

export interface ServerConn {
  readonly remote: string;
  readonly out: Outbox;
  /** What the handler attached to this connection (a follower link, or a request link). */
  state: unknown;
}

/**
 * Frames handed over during one event-loop turn, written together at its end in one socket write
 * (both sides of a request link). Frames pushed before the connection is open wait for `flush`.
 */
export class TurnBatch {
  private queue: Uint8Array[] = [];
  private scheduled = false;
  /** Bytes waiting for the end of the turn. */
  bytes = 0;

  constructor(private readonly out: () => Outbox | null) {}

  push(frame: Uint8Array): void {
    this.queue.push(frame);
    this.bytes += frame.length;
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.flush());
  }

  flush(): void {
    this.scheduled = false;
    const out = this.out();
    if (!out || this.queue.length === 0) return;
    const q = this.queue;
    this.clear();
    out.send(q.length === 1 ? q[0]! : Buffer.concat(q));
  }

  clear(): void {
    this.queue = [];
    this.bytes = 0;
  }
}

export interface ReplicationServerHandlers {
  /** Frames from one connection; return an error text to close it. */
  onFrames(conn: ServerConn, frames: Frame[]): string | undefined;
  onDrain(conn: ServerConn): void;
  onClose(conn: ServerConn): void;
}

interface ConnData {
  conn: ServerConn;
  reader: FrameReader;
  /** This connection's bytes in unfinished frames, as counted in the server's total. */
  unfinished: number;
  /** `unfinished` when the idle deadline was last pushed back. */
  unfinishedAtArm: number;
}

/** Bytes of unfinished frames all connections of a server may hold together (at least 16 largest frames). */
export const UNFINISHED_BYTES_MAX = 256 << 20;
/** A frame still arriving pushes the idle deadline back for each this many bytes of it. */
const PROGRESS_BYTES = 1 << 20;
/** The clock follower links time their stalls by (Outbox.stalledMs). */
const now = () => performance.now();

export interface ReplicationServer {
  readonly port: number;
  stop(): void;
}

export function listenReplication(host: string, port: number, frameBytesMax: number, h: ReplicationServerHandlers, log: Logger, unfinishedMax = Math.max(UNFINISHED_BYTES_MAX, 16 * frameBytesMax)): ReplicationServer {
  /**
   * Bytes of unfinished frames across connections. Bounded (found by an audit: 300 connections
   * each sending all but the end of a largest frame, then a byte every few seconds, held 1.2 GiB),
   * as is the time one frame may take: the idle deadline is pushed back only by a whole frame,
   * when nothing is left half-received, or by each MiB of a large frame still arriving, so a frame
   * trickling in is closed after LINK_IDLE_TIMEOUT_S.
   */
  let unfinished = 0;
  const refuse = (socket: { end(): void }, remote: string, why: string, out?: Outbox) => {
    log.warn("closing replication connection", { remote, reason: why });
    out?.send(encodeFrame({ type: FrameType.Error, group: 0, term: 0, seq: 0, message: why }));
    socket.end();
  };
  const server = Bun.listen<ConnData>({
    hostname: host,
    port,
    socket: {
      open(socket) {
        const remote = `${socket.remoteAddress}`;
        socket.data = { conn: { remote, out: new Outbox(socket, now), state: undefined }, reader: new FrameReader(frameBytesMax), unfinished: 0, unfinishedAtArm: 0 };
        socket.timeout(LINK_IDLE_TIMEOUT_S);
      },
      data(socket, chunk) {
        const d = socket.data;
        if (d.conn.out.closed) return;
        const { frames, error } = d.reader.push(chunk);
        unfinished += d.reader.bufferedBytes - d.unfinished;
        d.unfinished = d.reader.bufferedBytes;
        if (frames.length > 0 || d.unfinished === 0 || d.unfinished - d.unfinishedAtArm >= PROGRESS_BYTES) {
          socket.timeout(LINK_IDLE_TIMEOUT_S);
          d.unfinishedAtArm = d.unfinished;
        }
        const err = frames.length > 0 ? h.onFrames(d.conn, frames) : undefined;
        if (error) refuse(socket, d.conn.remote, `bad frame: ${error}`);
        else if (err) refuse(socket, d.conn.remote, err, d.conn.out);
        else if (unfinished > unfinishedMax) refuse(socket, d.conn.remote, `too many bytes of unfinished frames on this port (${unfinished}, limit ${unfinishedMax})`);
      },
      drain(socket) {
        if (socket.data.conn.out.flush()) h.onDrain(socket.data.conn);
      },
      timeout(socket) {
        const stalled = socket.data.unfinished > 0;
        log.warn(stalled ? "replication connection stalled mid-frame, closing" : "replication connection idle, closing", { remote: socket.data.conn.remote, unfinished_bytes: socket.data.unfinished });
        socket.end();
      },
      close(socket) {
        unfinished -= socket.data.unfinished;
        socket.data.unfinished = 0;
        socket.data.conn.out.closed = true;
        h.onClose(socket.data.conn);
      },
      error(socket, e) {
        log.warn("replication connection error", { remote: socket.data?.conn.remote, error: String(e) });
      },
    },
  });
  return { port: server.port, stop: () => server.stop(true) };
}

export interface ClientHandlers<F = Frame> {
  /** Hand Put frames over as PutBytes (a follower's link: it stores them as they are). */
  putsAsBytes?: F extends Frame ? false : true;
  onOpen(out: Outbox): void;
  onFrames(frames: F[], out: Outbox): string | undefined;
  onClose(reason: string): void;
}

export interface ClientLink {
  close(): void;
}

/** Connect to a leader. `onClose` is called exactly once, whether the connect failed or the link ended. */
export function connectReplication<F extends Frame | PutBytes = Frame>(host: string, port: number, frameBytesMax: number, h: ClientHandlers<F>, log: Logger): ClientLink {
  let closed = false;
  let reason = "closed";
  let sock: { end(): void } | null = null;
  const finish = () => {
    if (closed) return;
    closed = true;
    h.onClose(reason);
  };
  const reader = new FrameReader(frameBytesMax);
  let out: Outbox | null = null;
  Bun.connect<undefined>({
    hostname: host,
    port,
    socket: {
      open(socket) {
        sock = socket;
        if (closed) return void socket.end();
        out = new Outbox(socket, now);
        socket.timeout(LINK_IDLE_TIMEOUT_S);
        h.onOpen(out);
      },
      data(socket, chunk) {
        if (closed || !out) return;
        socket.timeout(LINK_IDLE_TIMEOUT_S);
        const { frames, error } = reader.push(chunk, h.putsAsBytes === true) as { frames: F[]; error?: string };
        const err = frames.length > 0 ? h.onFrames(frames, out) : undefined;
        if (error || err) {
          reason = error ? `bad frame from leader: ${error}` : err!;
          log.warn("closing link to leader", { leader: `${host}:${port}`, reason });
          socket.end();
        }
      },
      drain() {
        out?.flush();
      },
      timeout(socket) {
        reason = "leader silent";
        socket.end();
      },
      close() {
        finish();
      },
      error(_s, e) {
        reason = String(e);
      },
      connectError(_s, e) {
        reason = `connect failed: ${e}`;
        finish();
      },
    },
  }).catch((e) => {
    reason = `connect failed: ${e}`;
    finish();
  });
  return {
    close() {
      if (sock) sock.end();
      finish();
    },
  };
}
