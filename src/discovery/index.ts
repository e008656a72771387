export { Membership, type Member, type Observation } from "./membership.ts";
export { Discovery, type DiscoveryOptions, type DiscoveryStats, SO_REUSEADDR } from "./udp.ts";
