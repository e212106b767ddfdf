// One of N control planes on one PostgreSQL store and one external broker. The
// work that must have one owner at a time (batch placement, liveness sweeps,
// cron firing) runs only on the holder of a lease in PostgreSQL
// (control-plane/lease.ts); every replica serves the HTTP API and consumes its
// share of the proplets' results.

import pg from 'pg';
import { PgLease, type Fence } from './lease.ts';
import { silent, type Logger } from './log.ts';

export interface ReplicaOptions {
  /** The PostgreSQL store's URL: the lease lives beside the state it guards. */
  url: string;
  /** What the lease guards: one control plane (domain and channel). */
  name: string;
  /** This replica, unique among them. */
  holder: string;
  /** A dead owner's work is taken over within this + 1 s. Default 5 s. */
  leaseMs?: number;
  /** While false (broker or store away), this replica neither takes the lease nor keeps it. */
  eligible?: () => boolean;
  log?: Logger;
}

export const DEFAULT_LEASE_MS = 5000;

export class Replica {
  private pool: pg.Pool;
  private lease: PgLease;
  private acquired: (() => void)[] = [];

  constructor(o: ReplicaOptions) {
    this.pool = new pg.Pool({ connectionString: o.url, max: 2 });
    this.pool.on('error', () => {}); // a lost connection shows as the next query's error
    const log = o.log ?? silent;
    this.lease = new PgLease({
      pool: this.pool,
      name: o.name,
      holder: o.holder,
      ttlMs: o.leaseMs ?? DEFAULT_LEASE_MS,
      ...(o.eligible ? { eligible: o.eligible } : {}),
      onAcquired: (token) => {
        log('info', 'this replica owns placement, liveness and cron', { holder: o.holder, token });
        for (const f of this.acquired) f();
      },
      onLost: (reason) => log('warn', 'this replica no longer owns placement, liveness and cron', { holder: o.holder, reason }),
      log: (level, msg, fields) => log(level, msg, fields),
    });
  }

  isOwner(): boolean {
    return this.lease.isHolder;
  }
  /** What owner-only writes carry (the store checks it when it commits them). */
  fence(): Fence | undefined {
    return this.lease.current();
  }
  /** The store refused a write under this replica's token: another replica owns the lease. */
  stepDown(reason: string): void {
    this.lease.stepDown(reason);
  }
  /** Runs f each time this replica becomes the owner (to catch up on what it did not do meanwhile). */
  onAcquired(f: () => void): void {
    this.acquired.push(f);
  }
  /** A module another replica stored: the store's mirror loads modules only at start. */
  async module(digest: string): Promise<Uint8Array | undefined> {
    const r = await this.pool.query<{ bytes: Buffer }>('SELECT bytes FROM modules WHERE digest = $1', [digest]);
    const b = r.rows[0]?.bytes;
    return b && new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  }
  async start(): Promise<void> {
    await this.lease.start();
  }
  /** Hands the lease over at once. */
  async stop(): Promise<void> {
    await this.lease.stop();
    await this.pool.end().catch(() => {});
  }
}
