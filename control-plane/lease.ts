// One owner at a time for the work that must not run twice across replicas
// (batch placement, liveness sweeps, cron firing, FL round closing): a lease row
// in PostgreSQL with a fencing token.
//
// - Expiry is computed by the database's clock, so replicas' clocks never
//   compare with each other.
// - A holder counts its own deadline from the moment it *sent* the renewal, so
//   it steps down no later than the row expires for everyone else.
// - Each acquisition by a new holder increments the token; writes made on the
//   lease's behalf check it in their own transaction (`fence`), so a holder that
//   was paused past its lease (GC, a stopped VM) cannot write after a successor
//   took over.

import type { Pool, PoolClient } from 'pg';

export const LEASE_TABLE_SQL = `CREATE TABLE IF NOT EXISTS propeller_leases (
  name text PRIMARY KEY,
  holder text NOT NULL,
  token bigint NOT NULL,
  expires_at timestamptz NOT NULL
)`;

/** Creates the table once; replicas starting together serialise on an advisory lock (CREATE ... IF NOT EXISTS alone races). */
export async function ensureLeaseTable(pool: Pool): Promise<void> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN');
    await c.query("SELECT pg_advisory_xact_lock(hashtext('propeller_leases'))");
    await c.query(LEASE_TABLE_SQL);
    await c.query('COMMIT');
  } catch (e) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw e;
  } finally {
    c.release();
  }
}

export class FencedError extends Error {
  override name = 'FencedError';
}

/** What an owner-only write carries: the lease it was made under and that lease's token at the time. */
export interface Fence {
  name: string;
  holder: string;
  token: number;
}

/**
 * Throws FencedError unless the lease row still names this holder and token and
 * has not expired, checked inside the caller's transaction. FOR SHARE: a
 * successor's takeover (an UPDATE of that row) waits for this transaction, so
 * what it commits is seen by the successor, never interleaved with it.
 */
export async function checkFence(client: Pick<PoolClient, 'query'>, f: Fence): Promise<void> {
  if (f.token < 0) throw new FencedError('owner-only work by a replica that does not hold the lease');
  const r = await client.query(
    'SELECT 1 FROM propeller_leases WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > clock_timestamp() FOR SHARE',
    [f.name, f.holder, f.token],
  );
  if (r.rowCount !== 1) throw new FencedError(`lease ${f.name} token ${f.token} is no longer current: another replica owns the work now`);
}

export interface LeaseOptions {
  pool: Pool;
  /** What the lease guards, e.g. 'propeller/control'. */
  name: string;
  /** This replica, unique among replicas (e.g. host:port:pid). */
  holder: string;
  /** How long a holder may go without renewing; a successor takes over at most this + retryMs after the holder dies. */
  ttlMs: number;
  /** How often a holder renews and a non-holder tries; default min(ttl/3, 1 s). */
  retryMs?: number;
  onAcquired?: (token: number) => void;
  onLost?: (reason: string) => void;
  /** While false, this replica does not take the lease, and hands it over if it holds it (e.g. its broker is away). */
  eligible?: () => boolean;
  log?: (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;
}

export class PgLease {
  private held?: { token: number; deadline: number };
  private timer?: NodeJS.Timeout;
  private deadlineTimer?: NodeJS.Timeout;
  private stopped = false;
  private busy = false;

  constructor(private o: LeaseOptions) {}

  /** The fencing token while this replica holds the lease. */
  get token(): number | undefined {
    if (this.held && performance.now() >= this.held.deadline) this.lose('not renewed in time');
    return this.held?.token;
  }

  get isHolder(): boolean {
    return this.token !== undefined;
  }

  /** The fence owner-only writes carry while this replica holds the lease. */
  current(): Fence | undefined {
    const token = this.token;
    return token === undefined ? undefined : { name: this.o.name, holder: this.o.holder, token };
  }

  /** The database refused a write under our token: another replica holds the lease. */
  stepDown(reason: string): void {
    this.lose(reason);
  }

  async start(): Promise<void> {
    await ensureLeaseTable(this.o.pool);
    await this.tick();
    this.schedule();
  }

  /** Throws FencedError unless this replica still holds the lease, checked inside the caller's transaction. */
  async fence(client: PoolClient): Promise<void> {
    const f = this.current();
    if (!f) throw new FencedError(`not the holder of lease ${this.o.name}`);
    try {
      await checkFence(client, f);
    } catch (e) {
      if (e instanceof FencedError) this.lose('fenced: another replica holds the lease');
      throw e;
    }
  }

  /** Stops renewing and hands the lease over at once (a graceful stop). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.deadlineTimer);
    const token = this.held?.token;
    this.held = undefined;
    if (token !== undefined) {
      await this.o.pool
        .query('UPDATE propeller_leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND token = $3', [this.o.name, this.o.holder, token])
        .catch(() => undefined);
    }
  }

  private get retryMs(): number {
    return this.o.retryMs ?? Math.min(this.o.ttlMs / 3, 1000);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      void this.tick().finally(() => this.schedule());
    }, this.retryMs);
    this.timer.unref();
  }

  /** One attempt: renew what we hold, or take what has expired. */
  private async tick(): Promise<void> {
    if (this.busy || this.stopped) return;
    if (this.o.eligible && !this.o.eligible()) return this.handOver('this replica is not ready');
    this.busy = true;
    const sent = performance.now();
    const ttl = `${Math.ceil(this.o.ttlMs)} milliseconds`;
    try {
      const r = await this.o.pool.query<{ holder: string; token: string }>(
        `INSERT INTO propeller_leases (name, holder, token, expires_at) VALUES ($1, $2, 1, now() + $3::interval)
         ON CONFLICT (name) DO UPDATE SET
           token = CASE WHEN propeller_leases.holder = EXCLUDED.holder AND propeller_leases.expires_at > now() THEN propeller_leases.token ELSE propeller_leases.token + 1 END,
           holder = EXCLUDED.holder,
           expires_at = EXCLUDED.expires_at
         WHERE propeller_leases.holder = EXCLUDED.holder OR propeller_leases.expires_at <= now()
         RETURNING holder, token`,
        [this.o.name, this.o.holder, ttl],
      );
      if (this.stopped) return;
      const row = r.rows[0];
      if (!row) {
        if (this.held) this.lose('another replica holds the lease');
        return;
      }
      const token = Number(row.token);
      if (this.held && this.held.token !== token) this.lose('the lease expired before it was renewed');
      const fresh = !this.held;
      this.held = { token, deadline: sent + this.o.ttlMs };
      // step down at the deadline even if nothing asks for the token meanwhile
      clearTimeout(this.deadlineTimer);
      this.deadlineTimer = setTimeout(() => void this.token, Math.max(0, this.held.deadline - performance.now()));
      this.deadlineTimer.unref();
      if (fresh) {
        this.o.log?.('info', 'lease acquired', { lease: this.o.name, holder: this.o.holder, token });
        this.o.onAcquired?.(token);
      }
    } catch (e) {
      // unreachable database: keep what we hold until our own deadline, then step down (the getter does)
      this.o.log?.('warn', 'lease renewal failed', { lease: this.o.name, error: (e as Error).message });
    } finally {
      this.busy = false;
    }
  }

  /** Gives the lease up at once so that a ready replica takes it. */
  private handOver(reason: string): void {
    const token = this.held?.token;
    if (token === undefined) return;
    this.lose(reason);
    void this.o.pool.query('UPDATE propeller_leases SET expires_at = now() WHERE name = $1 AND holder = $2 AND token = $3', [this.o.name, this.o.holder, token]).catch(() => undefined);
  }

  private lose(reason: string): void {
    if (!this.held) return;
    this.held = undefined;
    this.o.log?.('warn', 'lease lost', { lease: this.o.name, holder: this.o.holder, reason });
    this.o.onLost?.(reason);
  }
}
