export { Store, type Entry, type Snapshot } from "./store.ts";
