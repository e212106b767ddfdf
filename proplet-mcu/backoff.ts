// Reconnect delays: exponential with "equal jitter" (half fixed, half random),
// capped, and reset once a connection has proved good. Thousands of devices
// that lost the broker at the same moment therefore come back spread out
// instead of in one thundering herd.

export interface BackoffOptions {
  /** First delay before jitter (default 500 ms). */
  initialMs: number;
  /** Cap of the delay before jitter (default 30 s). */
  maxMs: number;
  /** Growth per failed attempt (default 2). */
  factor: number;
  /** A connection that stayed up this long resets the delay (default 10 s). */
  stableMs: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000, factor: 2, stableMs: 10_000 };

export class Backoff {
  readonly o: BackoffOptions;
  private attempt = 0;

  constructor(o: Partial<BackoffOptions> = {}, private readonly random: () => number = Math.random) {
    this.o = { ...DEFAULT_BACKOFF, ...o };
  }

  /** Failed attempts since the last reset. */
  get attempts(): number {
    return this.attempt;
  }

  /** The ceiling of the next delay, before jitter. */
  ceiling(): number {
    return Math.min(this.o.maxMs, this.o.initialMs * this.o.factor ** Math.min(this.attempt, 30));
  }

  /** The next delay: in [ceiling/2, ceiling]. */
  next(): number {
    const c = this.ceiling();
    this.attempt++;
    return Math.round(c / 2 + this.random() * (c / 2));
  }

  reset(): void {
    this.attempt = 0;
  }
}
