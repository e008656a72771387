/**
 * The cluster port's TCP server (listenReplication) against clients that send frames and never
 * finish them: real sockets on 127.0.0.1, port 0.
 */
import { expect, test } from "bun:test";
import { silentLogger } from "../../src/lib/log.ts";
import { PROTOCOL_VERSION } from "../../src/protocol/index.ts";
import { listenReplication } from "../../src/replication/tcp.ts";
import { happensWithin, waitFor } from "../support/wait.ts";

/** The first `sent` bytes of a frame whose length prefix says `length`. */
function frameStart(length: number, sent: number): Buffer {
  const b = Buffer.alloc(sent);
  b.writeUInt32BE(length, 0);
  b[4] = PROTOCOL_VERSION;
  b[5] = 1;
  return b;
}

/** A raw client: sends `bytes`, then tells whether the server closed it. */
async function client(port: number, bytes: Uint8Array) {
  const state = { closed: false };
  const socket = await Bun.connect({ hostname: "127.0.0.1", port, socket: { data() {}, close: () => void (state.closed = true) } });
  socket.write(bytes);
  return { state, end: () => socket.end() };
}

test("unfinished frames across connections are bounded: the connection that would pass the bound is closed, the others are not", async () => {
  // Found by an audit: 300 connections each holding most of a largest frame took 1.2 GiB.
  const frames: number[] = [];
  const server = listenReplication("127.0.0.1", 0, 2 << 20, { onFrames: (_c, fs) => void frames.push(fs.length), onDrain() {}, onClose() {} }, silentLogger, 1 << 20);
  const clients: Awaited<ReturnType<typeof client>>[] = [];
  try {
    for (let i = 0; i < 3; i++) clients.push(await client(server.port, frameStart(1_500_000, 400_000)));
    // 1.2 MB in all with the third: over the 1 MiB bound.
    await waitFor("the third connection to be closed", () => clients[2]!.state.closed, 5_000);
    expect([clients[0]!.state.closed, clients[1]!.state.closed]).toEqual([false, false]);
    // Once one of the others goes, there is room again.
    clients[0]!.end();
    await waitFor("the first connection to be gone", () => clients[0]!.state.closed);
    clients.push(await client(server.port, frameStart(1_500_000, 400_000)));
    expect(await happensWithin(500, () => clients[3]!.state.closed)).toBe(false);
    expect(frames).toEqual([]);
  } finally {
    for (const c of clients) c.end();
    server.stop();
  }
});
