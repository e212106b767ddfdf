// The replicas' lease in a real PostgreSQL: one holder at a time, takeover after
// a holder dies, a graceful hand-over, and fencing of a holder that lost it.

import test from 'ava';
import pg from 'pg';
import { FencedError, PgLease } from '../control-plane/lease.ts';
import { until } from './helpers/stack.ts';
import { testPostgres } from './helpers/postgres.ts';

let url: string | undefined;
const pools: pg.Pool[] = [];
const leases: PgLease[] = [];

test.before(async () => {
  url = await testPostgres();
});
test.after.always(async () => {
  for (const l of leases) await l.stop();
  for (const p of pools) await p.end().catch(() => undefined);
});

function pool(): pg.Pool {
  const p = new pg.Pool({ connectionString: url, max: 2 });
  p.on('error', () => {}); // a pool ended under a crash test reports its clients' errors here
  pools.push(p);
  return p;
}

interface Seen {
  events: string[];
  /** Called as a holder acquires, before anything else runs. */
  onAcquired?: (holder: string) => void;
}

function lease(name: string, holder: string, ttlMs: number, seen: Seen, p = pool(), retryMs?: number): PgLease {
  const l = new PgLease({
    pool: p,
    name,
    holder,
    ttlMs,
    retryMs,
    onAcquired: (token) => {
      seen.onAcquired?.(holder);
      seen.events.push(`${holder} acquired ${token}`);
    },
    onLost: () => seen.events.push(`${holder} lost`),
  });
  leases.push(l);
  return l;
}

test('one holder at a time; when it dies the other takes over, after the dead one stepped down', async (t) => {
  const seen: Seen = { events: [] };
  const poolA = pool();
  const a = lease('crash', 'a', 600, seen, poolA);
  await a.start();
  const b = lease('crash', 'b', 600, seen);
  await b.start();
  t.true(a.isHolder);
  t.false(b.isHolder);
  t.deepEqual(seen.events, ['a acquired 1']);
  // a's database connection dies: it can no longer renew
  let aHeldWhenBAcquired: boolean | undefined;
  seen.onAcquired = () => (aHeldWhenBAcquired = a.isHolder);
  await poolA.end();
  await until(() => b.isHolder, 'b takes over');
  // the safety property: when b holds the lease, a no longer acts as holder (its own deadline passed first)
  t.false(aHeldWhenBAcquired);
  t.false(a.isHolder);
  t.is(b.token, 2, 'a new token');
  t.deepEqual(seen.events.filter((e) => e.startsWith('a')), ['a acquired 1', 'a lost'], 'a stepped down');
});

test('a graceful stop hands the lease over at once, without waiting for it to expire', async (t) => {
  const seen: Seen = { events: [] };
  const a = lease('handover', 'a', 120_000, seen);
  await a.start();
  const b = lease('handover', 'b', 120_000, seen, pool(), 20);
  await b.start();
  t.false(b.isHolder);
  await a.stop();
  // well before the 2-minute lease could have expired
  await until(() => b.isHolder, 'b holds the lease');
  t.deepEqual(seen.events, ['a acquired 1', 'b acquired 2']);
});

test('a holder whose token is no longer current is fenced inside its own transaction', async (t) => {
  const seen: Seen = { events: [] };
  const p = pool();
  const a = lease('fence', 'a', 60_000, seen, p);
  await a.start();
  const c = await p.connect();
  try {
    await c.query('BEGIN');
    await a.fence(c);
    await c.query('COMMIT');
    // a successor took over while a was paused (the row changed under it)
    await p.query("UPDATE propeller_leases SET holder = 'z', token = token + 1 WHERE name = 'fence'");
    await c.query('BEGIN');
    await t.throwsAsync(a.fence(c), { instanceOf: FencedError });
    await c.query('ROLLBACK');
  } finally {
    c.release();
  }
  t.false(a.isHolder);
  t.deepEqual(seen.events, ['a acquired 1', 'a lost']);
  const other = lease('fence-2', 'x', 60_000, seen);
  const c2 = await p.connect();
  try {
    await t.throwsAsync(other.fence(c2), { instanceOf: FencedError, message: /not the holder/ });
  } finally {
    c2.release();
  }
});
