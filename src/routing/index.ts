export { forward, type Forwarded, type ForwardOptions, HOPS_HEADER, GROUP_HEADER, NO_FALLBACK_HEADER, NODE_HEADER, SERVED_GROUP_HEADER } from "./forward.ts";
export { routeRead, routeWrite, ownerGroup, RingCache, HOPS_MAX, type Route, type RoutingView, type RequestContext } from "./router.ts";
