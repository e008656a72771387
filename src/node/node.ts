/**
 * The composition root: the real clock and sockets around the pure parts. Start order: store,
 * replication listener, HTTP API, discovery (so what we announce is already listening). Stop order:
 * announce leaving, then close sockets.
 */
import { createApi } from "../api/app.ts";
import { type Member, Membership } from "../discovery/membership.ts";
import { Discovery } from "../discovery/udp.ts";
import { frameBytesMax, limits, requestBodyBytesMax } from "../lib/limits.ts";
import type { Logger } from "../lib/log.ts";
import { type Frame, FrameType, type PutBytes } from "../protocol/frame.ts";
import { Follower } from "../replication/follower.ts";
import { type FollowerLink, Leader } from "../replication/leader.ts";
import type { Outbox } from "../replication/outbox.ts";
import { type ClientLink, type ServerConn, connectReplication, listenReplication } from "../replication/tcp.ts";
import { RequestLinks } from "../routing/link.ts";
import { Store } from "../store/store.ts";
import type { NodeConfig } from "./config.ts";
import { Durability } from "./durability.ts";
import { RequestConn, createRequestServer } from "./requests.ts";
import { createService } from "./service.ts";
import { createViews } from "./views.ts";

const PING_INTERVAL_MS = 1000;
const MOVER_TICK_MS = 50;
const START_SETTLE_MS = 150;
/** A follower that could not persist a full transfer asks for another after this long. */
const ADOPTION_RETRY_MS = 5_000;
/** A follower turned away by a leader still starting asks again after at most this long. */
const STARTING_LEADER_RETRY_MS = 200;

export interface RunningNode {
  readonly nodeId: string;
  readonly apiPort: number;
  readonly clusterPort: number;
  stop(): Promise<void>;
}

function randomId(bytes: number): string {
  const b = new Uint8Array(bytes);
  crypto.getRandomValues(b);
  return Buffer.from(b).toString("hex");
}

export async function startNode(config: NodeConfig, log: Logger): Promise<RunningNode> {
  const now = () => performance.now();
  const store = new Store({ seed: crypto.getRandomValues(new Int32Array(1))[0]! });
  const frameMax = frameBytesMax(config.keyBytesMax, config.valueBytesMax);

  // --- data dir: recover before anything listens, so what we announce is what we hold.
  let nodeId = randomId(8);
  let historyId = randomId(8);
  let term = config.leader ? 1 : 0;
  let durability: Durability | null = null;
  const replayed: [number, number, Uint8Array][] = [];
  if (config.dataDir) {
    durability = Durability.recover(
      store,
      { dir: config.dataDir, group: config.group, fsync: config.fsync, fsyncMs: config.fsyncMs, snapshotBytes: config.snapshotBytes, frameBytesMax: frameMax, newId: () => randomId(8), log },
      config.leader ? (seq, t, frame) => replayed.push([seq, t, frame]) : undefined,
    );
    nodeId = durability.identity.node_id;
    historyId = durability.identity.history_id;
    if (config.leader) {
      // Every start as leader is a new term: entries written from now on are told apart from any
      // this node wrote before and may have lost (fsync never and a power cut).
      // Saved once this node has claimed the group (below): a start refused for a rival leader
      // must not leave a higher term behind, or starting it again would outrank that leader.
      term = Math.max(durability.identity.term, durability.recovered.term) + 1;
    }
  }
  const rec = durability?.recovered;

  let pumpScheduled = false;
  /** A -leader node takes followers only once it heard no other leader of its group (at start). */
  let claimed = false;
  const leader = config.leader
    ? new Leader({
        store,
        group: config.group,
        term,
        historyId,
        cluster: config.cluster,
        historyEntries: config.historyEntries,
        wal: durability ? { append: (seq, frame) => durability.append(seq, frame) } : undefined,
        start: rec ? { seq: rec.snapshotSeq, term: rec.snapshotTerm } : undefined,
        now,
        log,
        // Replication goes out at most every limits.replicationBatchMs: a socket write to a
        // follower costs a syscall (on loopback, the receiver's work too), and per event-loop
        // turn these writes took a fifth of a busy leader's time. With -sync-replicas every
        // write waits for the followers, so that wait would be added to each: they go out at
        // the end of the event-loop turn instead.
        schedule: () => {
          if (pumpScheduled) return;
          pumpScheduled = true;
          const pump = () => {
            pumpScheduled = false;
            leader!.pumpAll();
          };
          if (config.syncReplicas > 0) setImmediate(pump);
          else setTimeout(pump, limits.replicationBatchMs);
        },
        after: (ms, fn) => void setTimeout(fn, ms).unref(),
      })
    : null;
  for (const [seq, t, frame] of replayed) leader!.restore(seq, t, frame);
  replayed.length = 0;
  const follower = leader
    ? null
    : new Follower(
        store,
        config.group,
        config.cluster,
        nodeId,
        durability
          ? {
              onEntry: (seq, frame) => durability.append(seq, frame),
              onHistory: (h, seq, t, kind) =>
                durability.adoptHistory(
                  h, seq, t, store, kind,
                  () => linkOut && sendAck(linkOut, durability.durableSeq),
                  // Not on disk: ask again, with a full transfer, after a pause (found by review:
                  // a reconnect alone resumed the same history by tail, and nothing was ever persisted).
                  () => void setTimeout(() => {
                    if (durability.adopting === 0) return; // a later transfer made it meanwhile
                    follower!.forgetHistory();
                    link?.close();
                  }, ADOPTION_RETRY_MS).unref(),
                ),
            }
          : {},
        rec ? { historyId, seq: rec.seq, term: rec.term } : undefined,
      );
  let linkOut: Outbox | null = null;
  /**
   * Acknowledge `seq` to the leader (the follower caps it at what it applied), but not while a
   * full transfer is on its way or its new history is not yet on disk: our position then says
   * nothing about the leader's entries, and -sync-replicas counts acknowledgements.
   */
  const sendAck = (out: Outbox, seq: number) => {
    if (follower!.syncing || (durability !== null && durability.adopting > 0)) return;
    out.send(follower!.ack(seq));
  };
  /** The service's ring epochs follow a failed log write (set once the service exists). */
  let ringsAfterFailure = (_fromSeq: number) => {};
  if (durability) {
    await durability.open(
      (seq) => {
        if (leader) {
          leader.durable(seq);
          durability.maybeSnapshot(leader.head, leader.termAt(leader.head), store, now());
        } else {
          if (linkOut) sendAck(linkOut, seq);
          durability.maybeSnapshot(follower!.applied, follower!.term, store, now());
        }
      },
      (fromSeq, e) => {
        if (leader) {
          leader.failed(fromSeq, e);
          ringsAfterFailure(fromSeq);
        } else {
          // Our copy is ahead of our log: start over from the leader (entries re-apply harmlessly).
          follower!.rewind(0, 0);
          link?.close();
        }
      },
    );
  }

  // --- cluster port: every node serves forwarded requests; only a leader accepts followers.
  let serveRequest: ReturnType<typeof createRequestServer> | null = null;
  let replication: ReturnType<typeof listenReplication>;
  try {
    replication = listenReplication(
      config.host,
      config.port,
      frameMax,
      {
        onFrames(conn: ServerConn, frames) {
          // A connection whose first frame is a Request carries forwarded requests (any node serves them).
          if (conn.state === undefined && frames[0]!.type === FrameType.Request) {
            conn.state = new RequestConn(conn.out);
          }
          if (conn.state instanceof RequestConn) {
            if (!serveRequest) return "this node is still starting";
            for (const f of frames) {
              if (f.type !== FrameType.Request) return `unexpected frame type ${f.type} on a request link`;
              serveRequest(conn.state, f);
            }
            return undefined;
          }
          if (!leader) return `this node is not a leader (group ${config.group})`;
          if (!claimed) return "this node is still starting: it leads only if no other leader of its group answers";
          let link = conn.state as FollowerLink | undefined;
          if (!link) link = conn.state = leader.attach(conn.out, conn.remote);
          for (const f of frames) {
            const err = leader.onFrame(link, f);
            if (err) return err;
          }
          return undefined;
        },
        onDrain(conn) {
          if (leader && conn.state && !(conn.state instanceof RequestConn)) leader.pump(conn.state as FollowerLink);
        },
        onClose(conn) {
          if (leader && conn.state && !(conn.state instanceof RequestConn)) {
            const link = conn.state as FollowerLink;
            leader.detach(link);
            if (link.nodeId) log.info("follower disconnected", { node_id: link.nodeId, acked_seq: link.acked });
          }
        },
      },
      log,
    );
  } catch (e) {
    await durability?.close();
    throw new Error(`Cannot listen on cluster port ${config.host}:${config.port} (-port): ${(e as Error).message}. Is port ${config.port} in use?`);
  }
  const clusterPort = replication.port;

  // --- membership and discovery
  const membership = new Membership({
    nodeId,
    host: config.host,
    clusterPort,
    apiPort: 0, // set once the API listens
    group: config.group,
    leader: config.leader,
    draining: false,
    moving: false,
    term,
    seq: 0,
    historyId,
    keys: 0,
    lastSeenMs: now(),
  });
  const position = () => (leader ? leader.head : follower!.applied);

  // --- follower link to the group's leader
  let link: ClientLink | null = null;
  let linkTarget: Member | null = null;
  let linkUp = false;
  let backoffMs: number = limits.reconnectBackoffMinMs;
  let reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  /** The leader the last link went to (node, term and address), to tell a restarted or new one. */
  let triedLeader = "";
  let stopping = false;
  const applyWaiters = new Set<{ seq: number; resolve: () => void }>();

  const wakeWaiters = () => {
    if (applyWaiters.size === 0) return;
    for (const w of applyWaiters)
      if (follower!.applied >= w.seq) {
        applyWaiters.delete(w);
        w.resolve();
      }
  };

  const connectToLeader = () => {
    if (!follower || stopping || link) return;
    const target = membership.leaderOf(config.group);
    if (!target || target.nodeId === nodeId) return;
    linkTarget = target;
    const address = `${target.host}:${target.clusterPort}`;
    triedLeader = `${target.nodeId}/${target.term}/${address}`;
    log.debug("connecting to leader", { leader: target.nodeId, address });
    link = connectReplication<Frame | PutBytes>(
      target.host,
      target.clusterPort,
      frameMax,
      {
        // Entries are stored from the received bytes, without strings of their keys and values.
        putsAsBytes: true,
        onOpen(out) {
          linkOut = out;
          out.send(follower.hello());
        },
        onFrames(frames, out) {
          const before = follower.applied;
          for (const f of frames) {
            const err = follower.onFrame(f);
            if (err) return err;
            if (f.type === FrameType.Ping) sendAck(out, durability ? durability.durableSeq : follower.applied);
          }
          if (!linkUp && !follower.syncing && frames.some((f) => f.type === FrameType.Welcome || f.type === FrameType.SnapshotEnd)) {
            linkUp = true;
            backoffMs = limits.reconnectBackoffMinMs;
            log.info("following leader", { leader: target.nodeId, address, from_seq: follower.applied, leader_seq: follower.leaderHead });
          }
          if (follower.applied !== before || frames.some((f) => f.type === FrameType.SnapshotEnd)) {
            // A persistent follower acknowledges what is on its disk, when the log says so.
            if (!durability) sendAck(out, follower.applied);
            wakeWaiters();
          }
          return undefined;
        },
        onClose(reason) {
          const wasUp = linkUp;
          link = null;
          linkOut = null;
          linkUp = false;
          linkTarget = null;
          if (stopping) return;
          if (wasUp) log.warn("lost link to leader", { leader: target.nodeId, address, reason });
          else log.debug("link to leader failed", { address, reason });
          // A leader still starting takes followers once its start-up settle is over: ask again
          // soon rather than backing off further (found by an audit: with the doubled delays a
          // follower relinked seconds after its restarted leader was serving).
          if (reason.includes("still starting")) backoffMs = Math.min(backoffMs, STARTING_LEADER_RETRY_MS);
          scheduleReconnect();
        },
      },
      log,
    );
  };

  const scheduleReconnect = () => {
    if (reconnectTimer || stopping) return;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null;
      connectToLeader();
    }, backoffMs);
    backoffMs = Math.min(backoffMs * 2, limits.reconnectBackoffMaxMs);
  };

  /** On membership changes: follow the right leader. */
  const reconcile = () => {
    if (!follower) return;
    const target = membership.leaderOf(config.group);
    const keyOf = (m: Member) => `${m.nodeId}/${m.term}/${m.host}:${m.clusterPort}`;
    if (link && (!target || !linkTarget || keyOf(target) !== keyOf(linkTarget))) {
      log.info("group leader changed, relinking", { from: linkTarget?.nodeId, to: target?.nodeId ?? null });
      link.close();
      return;
    }
    // A leader other than the one last tried (restarted: a new term; or moved) is tried at once.
    if (!link && reconnectTimer && target && keyOf(target) !== triedLeader) {
      clearTimeout(reconnectTimer);
      reconnectTimer = null;
      backoffMs = limits.reconnectBackoffMinMs;
    }
    if (!link && !reconnectTimer) connectToLeader();
  };

  // --- the service behind the API (src/node/service.ts)
  // Forwarded requests go out on request links (src/routing/link.ts): their answers can be the
  // JSON of a whole value, each byte escaped as up to 6.
  const links = new RequestLinks(requestBodyBytesMax(config.keyBytesMax, config.valueBytesMax), log);
  const { service, mover, currentRing, settle, purgeTombstones, logFailed } = createService({
    links,
    config,
    nodeId,
    store,
    leader,
    follower,
    membership,
    durability,
    applyWaiters,
    announce: () => discovery.announce(),
    cluster: () => clusterView(),
    health: () => healthView(),
    now,
    log,
  });
  ringsAfterFailure = logFailed;

  serveRequest = createRequestServer(service);

  const { cluster: clusterView, health: healthView } = createViews({
    config,
    nodeId,
    historyId,
    store,
    leader,
    follower,
    membership,
    durability,
    mover,
    currentRing,
    discoveryStats: () => discovery.stats,
    linkUp: () => linkUp,
    now,
  });

  // --- HTTP API
  const app = createApi(service);
  const http = Bun.serve({
    hostname: config.host,
    port: config.api,
    maxRequestBodySize: requestBodyBytesMax(config.keyBytesMax, config.valueBytesMax),
    fetch: app.fetch,
    error: (e) => Response.json({ error: `Internal error: ${e.message}` }, { status: 500 }),
  });
  const apiPort = http.port!;
  membership.updateSelf({ apiPort });

  const discovery = new Discovery({
    cluster: config.cluster,
    port: config.discoveryPort,
    broadcast: config.broadcast,
    heartbeatMs: config.heartbeatMs,
    staleMs: config.staleMs,
    membership,
    now,
    log,
    announcement: () => {
      const self = membership.getSelf();
      return {
        nodeId,
        host: self.host,
        clusterPort,
        apiPort,
        group: config.group,
        leader: config.leader,
        draining: self.draining,
        moving: self.moving,
        term: leader ? term : follower!.term,
        seq: position(),
        historyId: leader ? historyId : follower!.historyId,
        keys: store.size,
      };
    },
    onChange: (what, id) => {
      if (what === "new") {
        const m = membership.get(id);
        if (m) log.info("node joined", { node_id: id, address: `${m.host}:${m.clusterPort}`, group: m.group, leader: m.leader });
        if (m && m.leader && m.group === config.group && config.leader) log.warn("another node claims to lead this group", { node_id: id, address: `${m.host}:${m.clusterPort}` });
      } else if (what === "left") log.info("node left", { node_id: id });
      reconcile();
    },
  });
  try {
    await discovery.start();
  } catch (e) {
    http.stop(true);
    replication.stop();
    throw new Error(`Cannot bind discovery port ${config.discoveryPort}/udp: ${(e as Error).message}`);
  }
  // Peers answer a newcomer's first announcement within ~50 ms: give them that long, so the ring
  // this node routes with holds every group from its first request.
  await new Promise((r) => setTimeout(r, Math.min(START_SETTLE_MS, config.heartbeatMs)));
  /** Announce leaving and close every socket (stop, or a start refused below). */
  const closeSockets = async () => {
    discovery.stop();
    link?.close();
    links.close();
    replication.stop();
    await http.stop(true);
  };
  // A second -leader for a group that already has one would win on a tie of terms half the time
  // (lowest node id), and its followers would swap their data for its empty store. Refuse. (Until
  // here it turned followers away, so none has; they go back to the leader they had.)
  const rival = leader ? membership.leadersOf(config.group).find((m) => m.nodeId !== nodeId && m.term >= term) : undefined;
  if (rival) {
    await closeSockets();
    await durability?.close();
    throw new Error(
      `group ${config.group} already has a leader (node ${rival.nodeId} at ${rival.host}:${rival.clusterPort}, term ${rival.term}): start this node without -leader to follow it, or stop that leader first`,
    );
  }
  claimed = true;
  if (leader && durability) durability.saveIdentity({ term });
  settle();
  mover?.start();

  const timers = [
    setInterval(() => void mover?.tick(), MOVER_TICK_MS),
    setInterval(() => {
      leader?.ping();
    }, PING_INTERVAL_MS),
    setInterval(purgeTombstones, 1000),
  ];
  reconcile();

  if (!leader && !membership.leaderOf(config.group))
    log.warn("no leader known for this group yet: its keys cannot be written (503) until a node of the group runs with -leader (any flag given makes a node a follower unless it has -leader)", { group: config.group });
  if (!leader && config.syncReplicas > 0) log.warn("-sync-replicas is a leader's setting: this follower ignores it (its leader's own flag counts)", { sync_replicas: config.syncReplicas });
  log.info("kvnode ready", {
    node_id: nodeId,
    role: leader ? "leader" : "follower",
    group: config.group,
    cluster: config.cluster,
    api: `http://${config.host}:${apiPort}`,
    cluster_port: clusterPort,
    discovery: `${config.discoveryPort}/udp`,
    broadcast: config.broadcast,
  });

  return {
    nodeId,
    apiPort,
    clusterPort,
    async stop() {
      if (stopping) return;
      stopping = true;
      for (const t of timers) clearInterval(t);
      if (reconnectTimer) clearTimeout(reconnectTimer);
      await closeSockets();
      for (const w of applyWaiters) w.resolve();
      await durability?.close();
      log.info("kvnode stopped", { node_id: nodeId });
    },
  };
}
