export { startNode, type RunningNode } from "./node.ts";
export { type NodeConfig, defaults } from "./config.ts";
export { broadcastFor, isIPv4 } from "./broadcast.ts";
