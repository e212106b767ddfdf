// The PostgreSQL store's side of fencing, against a real database: writes made
// in asOwner carry the lease's token and commit only while the lease row still
// has it; under a stale token they are refused, counted, reloaded and reported,
// while the other writes of the same tick commit. And its outage: set while the
// database is away, cleared when a commit goes through again.

import test from 'ava';
import pg from 'pg';
import { ensureLeaseTable, type Fence } from '../control-plane/lease.ts';
import type { Task } from '../control-plane/model.ts';
import { openStore } from '../control-plane/open-store.ts';
import type { RowKey } from '../control-plane/store-rows.ts';
import { pgBinDir, postgresMissing, startPostgres, type OwnPostgres } from './helpers/postgres.ts';
import { taskFixture } from './helpers/task-fixture.ts';
import { until } from './helpers/stack.ts';

const missing = postgresMissing();
const cannotHalt = !pgBinDir(); // only a cluster of our own can be stopped and started again
let postgres: OwnPostgres | undefined;

test.before(async () => {
  if (!missing) postgres = await startPostgres({ own: true });
});
test.after.always(async () => {
  await postgres?.stop();
});

const task = (id: string, state: Task['state'] = 'Pending'): Task => taskFixture(id, { state });

(missing ? test.skip : test.serial)('owner writes under a stale token are refused, counted and reloaded; the others of the tick commit', async (t) => {
  const url = await postgres!.createDatabase();
  const admin = new pg.Pool({ connectionString: url, max: 1 });
  t.teardown(() => admin.end());
  await ensureLeaseTable(admin);
  await admin.query("INSERT INTO propeller_leases VALUES ('plane', 'me', 7, now() + interval '1 hour')");
  let fence: Fence | undefined = { name: 'plane', holder: 'me', token: 7 };
  const fenced: string[] = [];
  const conflicts: RowKey[] = [];
  const store = await openStore({ engine: 'postgres', url }, { fence: () => fence, onFenced: (why) => fenced.push(why), onConflict: (k) => conflicts.push(k) });
  t.teardown(() => store.close());

  store.tasks.put('a', task('a'));
  store.asOwner(() => store.tasks.put('b', task('b')));
  await store.flush();
  t.deepEqual((await admin.query('SELECT id FROM tasks ORDER BY id')).rows.map((r) => r.id), ['a', 'b'], 'the current token commits');

  // another replica took the lease over
  await admin.query("UPDATE propeller_leases SET holder = 'other', token = 8");
  store.asOwner(() => store.tasks.put('b', { ...task('b', 'Scheduled'), attempt: 1 }));
  store.tasks.put('a', { ...task('a'), labels: { seen: 'yes' } });
  await store.flush();
  t.is(store.stats.fenced, 1, 'counted');
  t.is(fenced.length, 1, 'reported, so the replica steps down');
  t.regex(fenced[0]!, /token 7 is no longer current/);
  t.is(store.tasks.get('b')!.state, 'Pending', "the mirror is back to the database's row");
  t.true(conflicts.some((k) => k.kind === 'task' && k.id === 'b'), 'the owner is told to re-read it');
  const rows = (await admin.query<{ id: string; state: string; labels: Record<string, string> }>('SELECT id, state, labels FROM tasks ORDER BY id')).rows;
  t.deepEqual(rows.map((r) => [r.id, r.state]), [['a', 'Pending'], ['b', 'Pending']]);
  t.deepEqual(rows[0]!.labels, { seen: 'yes' }, 'the write that was not owner-only committed in the same tick');

  // owner work by a replica that holds no lease at all is refused as well
  fence = undefined;
  store.asOwner(() => store.tasks.put('c', task('c')));
  await store.flush();
  t.is(store.stats.fenced, 2);
  t.is(store.tasks.get('c'), undefined);
});

(missing || cannotHalt ? test.skip : test.serial)('the outage: set while PostgreSQL is stopped, with the reason; cleared once a commit goes through', async (t) => {
  const url = await postgres!.createDatabase();
  const store = await openStore({ engine: 'postgres', url });
  t.teardown(() => store.close());
  t.is(store.outage(), undefined);
  postgres!.halt!();
  const since = Date.now();
  store.tasks.put('x', task('x'));
  await t.throwsAsync(store.flush());
  const o = store.outage();
  t.truthy(o, 'down');
  t.true(o!.since >= since - 1000 && o!.since <= Date.now());
  t.regex(o!.error, /terminat|ECONNREFUSED|connect|closed/i);
  postgres!.resume!();
  await until(async () => {
    await store.flush().catch(() => {});
    return store.outage() === undefined;
  }, 'the store up again');
  t.is(store.tasks.get('x')!.id, 'x');
  t.is(store.stats.pending, 0, 'the write made while it was away is committed');
});
