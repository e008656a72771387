export { assert, AssertionError } from "./assert.ts";
export { KvError, BadRequestError, TooLargeError, UnavailableError, StorageFullError } from "./errors.ts";
export { limits, frameBytesMax } from "./limits.ts";
export { crc32 } from "./crc32.ts";
export { utf8Length, isWellFormed } from "./utf8.ts";
export { type Logger, type LogLevel, type Fields, logLevels, createLogger, silentLogger } from "./log.ts";
