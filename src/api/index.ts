export { createApi, bodyBytesMax, checkKey, checkValue, errorReply, HOPS_HEADER, type Api } from "./app.ts";
export type { KvService, Reply, KeysQuery, KeysPage } from "./service.ts";
export * as schemas from "./schemas.ts";
