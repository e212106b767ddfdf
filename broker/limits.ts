// Bookkeeping for the broker's connection limits, apart from the sockets so it
// can be tested with a clock: how many connections an account may hold, and a
// record of recent authentication failures by key (remote address, username)
// that expires and never grows past a fixed number of keys.

import type { Role } from './credentials.ts';

export interface ConnectionLimits {
  /** Open connections per proplet username (a group account counts each member id apart). Default 1. */
  proplet: number;
  /** Open connections of the manager account. Default 8. */
  manager: number;
  /** Open connections of the debug account (watchers), and of anonymous clients together. Default 16. */
  debug: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = { proplet: 1, manager: 8, debug: 16 };

export interface AuthBackoff {
  /** Failed CONNECTs from one remote address (or for one username) before back-off starts. Default 10. */
  failures: number;
  /** A key's failures are forgotten this long after its last one, in ms. Default 60000. */
  windowMs: number;
  /** Longest a CONNACK under back-off is held back, in ms. Default 5000. */
  maxDelayMs: number;
}

export const DEFAULT_AUTH_BACKOFF: AuthBackoff = { failures: 10, windowMs: 60_000, maxDelayMs: 5_000 };

export function checkLimits(l: Partial<ConnectionLimits> | undefined): ConnectionLimits {
  const out = { ...DEFAULT_CONNECTION_LIMITS, ...l };
  for (const [k, v] of Object.entries(out)) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`connectionLimits.${k} must be an integer >= 1, got ${v}`);
  }
  return out;
}

export function checkBackoff(b: Partial<AuthBackoff> | false | undefined): AuthBackoff | undefined {
  if (b === false) return undefined;
  const out = { ...DEFAULT_AUTH_BACKOFF, ...b };
  if (!Number.isInteger(out.failures) || out.failures < 1) throw new RangeError(`authBackoff.failures must be an integer >= 1, got ${out.failures}`);
  if (!(out.windowMs > 0)) throw new RangeError(`authBackoff.windowMs must be > 0, got ${out.windowMs}`);
  if (!(out.maxDelayMs >= 0)) throw new RangeError(`authBackoff.maxDelayMs must be >= 0, got ${out.maxDelayMs}`);
  return out;
}

export function limitFor(limits: ConnectionLimits, role: Role): number {
  return limits[role];
}

/** Keys beyond this are dropped oldest first: a spray of addresses or usernames cannot grow the map. */
const MAX_KEYS = 10_000;

/** Recent failures per key, forgotten `windowMs` after the last one. */
export class FailureLog {
  private readonly entries = new Map<string, { n: number; last: number }>();

  constructor(
    private readonly windowMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  /** Failures of `key` still remembered. */
  count(key: string): number {
    const e = this.entries.get(key);
    if (!e) return 0;
    if (this.now() - e.last >= this.windowMs) {
      this.entries.delete(key);
      return 0;
    }
    return e.n;
  }

  fail(key: string): number {
    const n = this.count(key) + 1;
    // re-inserted, so the map stays ordered by last failure and the oldest goes first
    this.entries.delete(key);
    this.entries.set(key, { n, last: this.now() });
    if (this.entries.size > MAX_KEYS) this.entries.delete(this.entries.keys().next().value!);
    return n;
  }

  forget(key: string): void {
    this.entries.delete(key);
  }

  get size(): number {
    return this.entries.size;
  }
}
