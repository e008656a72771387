/** Time is injected so pure code can be driven by a simulated clock in tests. */
export interface Clock {
  /** Milliseconds, monotonic within a process. */
  now(): number;
}

export const systemClock: Clock = { now: () => performance.now() };
