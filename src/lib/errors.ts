/**
 * Errors for conditions that callers handle. The API maps each to one HTTP status in one place
 * (src/api/errors.ts); messages state the action, quote values and have no trailing period.
 */
export class KvError extends Error {
  override name = "KvError";
}

/** The request itself is wrong: missing key, malformed JSON, wrong type. */
export class BadRequestError extends KvError {
  override name = "BadRequestError";
}

/** A key or value is larger than the configured limit. */
export class TooLargeError extends KvError {
  override name = "TooLargeError";
}

/** This node cannot serve the request now (no leader known, leader unreachable). */
export class UnavailableError extends KvError {
  override name = "UnavailableError";
  constructor(
    message: string,
    /** The group that could not be reached, when there is one. */
    readonly group?: number,
  ) {
    super(message);
  }
}

/** The disk is full: writes are refused (507) until space returns; reads go on. */
export class StorageFullError extends KvError {
  override name = "StorageFullError";
}
