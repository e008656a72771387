export { encodeRecord, scanRecords, type Scan, type ScanEnd } from "./record.ts";
export { LogWriter, type FsyncMode, fsyncModes, type LogStats } from "./log.ts";
export { writeSnapshot, loadSnapshot, snapshotRecords, type SnapshotMeta } from "./snapshot.ts";
export { recover, RecoveryError, type Recovered } from "./recover.ts";
export * from "./files.ts";
