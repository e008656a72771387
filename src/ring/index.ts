export { HashRing, DEFAULT_VNODES } from "./ring.ts";
export { murmur3 } from "./hash.ts";
