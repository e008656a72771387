export { Store, type Entry } from "./store.ts";
