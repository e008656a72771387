export { Leader, type FollowerLink, type FollowerInfo, type LeaderStats, type LeaderOptions } from "./leader.ts";
export { Follower, type FollowerStats } from "./follower.ts";
export { History } from "./history.ts";
export { Outbox, type Wire } from "./outbox.ts";
export { listenReplication, connectReplication, type ServerConn, type ReplicationServer, type ClientLink, LINK_IDLE_TIMEOUT_S } from "./tcp.ts";
