export { Leader, type FollowerLink, type FollowerInfo, type LeaderStats, type LeaderOptions, type LeaderLog } from "./leader.ts";
export { Follower, type FollowerStats, type FollowerHooks } from "./follower.ts";
export { History } from "./history.ts";
export { Outbox, type Wire } from "./outbox.ts";
export { listenReplication, connectReplication, type ServerConn, type ReplicationServer, type ClientLink, LINK_IDLE_TIMEOUT_S } from "./tcp.ts";
