// One store suite, run against SQLite and a real PostgreSQL: what is written
// survives a reopen exactly, a tick's writes are one commit, `atomically`
// groups land together or not at all, a write that lost to another writer is
// refused and counted (never silently overwritten), and schemas migrate
// forward but a newer database is refused.

import test, { type ExecutionContext } from 'ava';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { Task } from '../control-plane/model.ts';
import { openStore, parseStoreUrl, StoreError, type StoreLocation } from '../control-plane/open-store.ts';
import { PG_SCHEMA_VERSION } from '../control-plane/pg-store.ts';
import { SQLITE_SCHEMA_VERSION } from '../control-plane/sqlite-store.ts';
import type { RowKey } from '../control-plane/store-rows.ts';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.ts';
import { startStack, until } from './helpers/stack.ts';

const skipPg = process.env.PROPELLER_SKIP_POSTGRES === '1' && !!postgresMissing();
let postgres: Postgres | undefined;
const dirs: string[] = [];

test.before(async () => {
  if (!skipPg && !postgresMissing()) postgres = await startPostgres();
});
test.after.always(async () => {
  await postgres?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

interface Engine {
  name: 'sqlite' | 'postgres';
  fresh(): Promise<StoreLocation>;
}
const ENGINES: Engine[] = [
  {
    name: 'sqlite',
    async fresh() {
      const d = mkdtempSync(join(tmpdir(), 'propeller-store-'));
      dirs.push(d);
      return { engine: 'sqlite', path: join(d, 'state.db') };
    },
  },
  {
    name: 'postgres',
    async fresh() {
      if (!postgres) throw new Error(postgresMissing() ?? 'PostgreSQL did not start');
      return { engine: 'postgres', url: await postgres.createDatabase() };
    },
  },
];

function task(id: string, over: Partial<Task> = {}): Task {
  const at = '2026-12-06T10:00:00.000Z';
  return {
    id,
    name: `t-${id}`,
    cli_args: ['--x', 'ä "quoted" \\ back'],
    inputs: [1, 'two', { three: [3] }],
    env: { A: 'b' },
    daemon: false,
    resources: { cpu_millis: 100 },
    labels: { app: 'demo', 'tier/x': 'edge' },
    state: 'Pending',
    start_requested: false,
    attempt: 0,
    attempts: [],
    history: [{ state: 'Pending', at, reason: 'created' }],
    created_at: at,
    updated_at: at,
    ...over,
  };
}

/** What the control plane does at each transition: mutate the same object, put it again. */
function step(t: Task, state: Task['state'], at: string, extra: Partial<Task> = {}): void {
  Object.assign(t, extra);
  t.state = state;
  t.updated_at = at;
  t.history.push({ state, at, ...(t.proplet_id ? { proplet_id: t.proplet_id, attempt: t.attempt } : {}) });
}

const group = (name: string) => ({ name, selector: {}, scheduling: { algorithm: 'random' as const }, created_at: 'x' });

for (const e of ENGINES) {
  const it = (title: string, fn: (t: ExecutionContext, e: Engine) => Promise<void>) =>
    (e.name === 'postgres' && skipPg ? test.skip : test)(`${e.name}: ${title}`, (t) => fn(t, e));

  it('tasks, their history and every other record survive a reopen exactly', async (t, e) => {
    const loc = await e.fresh();
    const a = await openStore(loc);
    const x = task('x');
    a.tasks.put(x.id, x);
    step(x, 'Scheduled', '2026-12-06T10:00:01.000Z', { proplet_id: 'p1', attempt: 1, start_requested: true, attempts: [{ attempt: 1, proplet_id: 'p1', started_at: '2026-12-06T10:00:01.000Z' }] });
    a.tasks.put(x.id, x);
    step(x, 'Running', '2026-12-06T10:00:02.000Z', { started_at: '2026-12-06T10:00:02.000Z' });
    a.tasks.put(x.id, x);
    step(x, 'Completed', '2026-12-06T10:00:03.000Z', { finished_at: '2026-12-06T10:00:03.000Z', result: { proplet_id: 'p1', attempt: 1, results: [5], at: 'z' } });
    a.tasks.put(x.id, x);
    const bare = task('bare', { history: [] });
    delete (bare as Partial<Task>).labels;
    a.tasks.put(bare.id, bare);
    a.groups.put('g', group('g'));
    a.credentials.put('p', { id: 'p', role: 'proplet', hash: 'sha256$a$b' });
    a.putModule('sha256:00', new Uint8Array([0, 0x61, 0x73, 0x6d]));
    t.deepEqual(a.tasks.get('x'), x, 'the mirror answers at once');
    await a.flush();
    t.is(a.stats.commits, 1, 'one tick, one commit');
    await a.close();
    const b = await openStore(loc);
    t.deepEqual(b.tasks.get('x'), x);
    t.deepEqual(b.tasks.get('bare'), bare);
    t.deepEqual(b.tasks.list().map((y) => y.id), ['x', 'bare'], 'in creation order');
    t.is(b.groups.get('g')?.scheduling.algorithm, 'random');
    t.is(b.credentials.list().length, 1);
    t.deepEqual([...b.getModule('sha256:00')!], [0, 0x61, 0x73, 0x6d]);
    t.true(b.groups.delete('g'));
    t.false(b.groups.delete('g'));
    // a long-lived task whose history is trimmed (first entry kept) is rewritten, not duplicated
    const y = b.tasks.get('x')!;
    for (let i = 0; i < 120; i++) {
      step(y, i % 2 ? 'Running' : 'Scheduled', `2026-12-06T11:00:${String(i % 60).padStart(2, '0')}.${String(i).padStart(3, '0')}Z`);
      if (y.history.length > 100) y.history.splice(1, y.history.length - 100);
      b.tasks.put(y.id, y);
      if (i % 7 === 0) await b.flush();
    }
    await b.close();
    const c = await openStore(loc);
    t.deepEqual(c.tasks.get('x'), y);
    t.is(c.groups.get('g'), undefined);
    await c.close();
  });

  it("a task's spec, written again with each transition, is the one it has now: a replaced value, one added, one removed", async (t, e) => {
    const loc = await e.fresh();
    const a = await openStore(loc);
    const x = task('spec');
    a.tasks.put(x.id, x);
    step(x, 'Scheduled', '2026-12-06T10:00:01.000Z', { proplet_id: 'p1', attempt: 1 });
    a.tasks.put(x.id, x); // same spec values: written from what the last write made of them
    await a.flush();
    x.env = { A: 'c' };
    x.timeout_ms = 5000;
    delete (x as Partial<Task>).daemon;
    step(x, 'Running', '2026-12-06T10:00:02.000Z');
    a.tasks.put(x.id, x);
    await a.close();
    const b = await openStore(loc);
    t.deepEqual(b.tasks.get('spec'), x);
    t.deepEqual(b.tasks.get('spec')?.env, { A: 'c' });
    t.is(b.tasks.get('spec')?.daemon, undefined);
    await b.close();
  });

  it('atomically: a group lands together or not at all, nested groups roll back alone', async (t, e) => {
    const loc = await e.fresh();
    const a = await openStore(loc);
    t.throws(() =>
      a.atomically(() => {
        a.groups.put('h', group('h'));
        throw new Error('crash in the middle');
      }),
    );
    t.is(a.groups.get('h'), undefined, 'the half-done group was rolled back');
    a.atomically(() => {
      a.flCheckpoints.put('cp', { metadata: { name: 'cp' } } as never);
      a.flRounds.put('r', { metadata: { name: 'r' }, status: { phase: 'Completed' } } as never);
      t.throws(() =>
        a.atomically(() => {
          a.flJobs.put('half', { metadata: { name: 'half' } } as never);
          throw new Error('inner');
        }),
      );
      a.flJobs.put('j', { metadata: { name: 'j' }, status: { completedRounds: 1 } } as never);
      t.truthy(a.flRounds.get('r'), 'a group reads its own writes');
    });
    await a.close();
    const b = await openStore(loc);
    t.deepEqual(
      [b.flCheckpoints.get('cp'), b.flRounds.get('r'), b.flJobs.get('j'), b.flJobs.get('half')].map((x) => !!x),
      [true, true, true, false],
    );
    await b.close();
  });

  it('callers waiting for commits in one turn share one transaction, with what that turn still writes', async (t, e) => {
    const loc = await e.fresh();
    const a = await openStore(loc);
    // as API answers do: each awaits flush() for what it wrote
    a.tasks.put('a', task('a'));
    const first = a.flush();
    a.tasks.put('b', task('b'));
    const second = a.flush();
    await Promise.all([first, second]);
    t.is(a.stats.commits, 1, 'one commit for both');
    t.is(a.stats.pending, 0);
    await a.close();
    const b = await openStore(loc);
    t.deepEqual(b.tasks.list().map((x) => x.id), ['a', 'b']);
    await b.close();
  });

  it('a graceful close commits everything pending; deleteTasks removes rows and history in one go', async (t, e) => {
    const loc = await e.fresh();
    const a = await openStore(loc);
    for (let i = 0; i < 500; i++) a.tasks.put(`t${i}`, task(`t${i}`));
    t.is(a.stats.pending, 500);
    await a.close();
    const b = await openStore(loc);
    t.is(b.tasks.list().length, 500);
    const ids = Array.from({ length: 300 }, (_, i) => `t${i}`);
    t.is(b.deleteTasks([...ids, 'nope']), 300);
    t.is(b.tasks.get('t0'), undefined);
    // created and deleted before any commit: never reaches the database
    b.tasks.put('ghost', task('ghost'));
    b.deleteTasks(['ghost']);
    await b.close();
    const c = await openStore(loc);
    t.is(c.tasks.list().length, 200);
    // recreating a deleted id starts a fresh history
    c.tasks.put('t0', task('t0', { name: 'again' }));
    await c.close();
    const d = await openStore(loc);
    t.is(d.tasks.get('t0')?.name, 'again');
    t.is(d.tasks.get('t0')?.history.length, 1);
    await d.close();
  });

  it('two writers on one row: the second is refused, counted, reloaded; never silently overwritten', async (t, e) => {
    const loc = await e.fresh();
    const seed = await openStore(loc);
    seed.tasks.put('x', task('x'));
    seed.groups.put('g', group('g'));
    await seed.close();
    const conflicts: RowKey[] = [];
    const a = await openStore(loc);
    const b = await openStore(loc, { onConflict: (k) => conflicts.push(k) });
    const xa = a.tasks.get('x')!;
    const xb = b.tasks.get('x')!;
    step(xa, 'Scheduled', '2026-12-06T10:00:01.000Z', { proplet_id: 'pa', attempt: 1 });
    a.tasks.put('x', xa);
    a.groups.put('g', { ...group('g'), created_at: 'by a' });
    await a.flush();
    step(xb, 'Scheduled', '2026-12-06T10:00:01.500Z', { proplet_id: 'pb', attempt: 1 });
    b.tasks.put('x', xb);
    b.groups.put('g', { ...group('g'), created_at: 'by b' });
    await b.flush();
    t.is(b.stats.conflicts, 2);
    t.deepEqual(conflicts.map((k) => `${k.kind}/${k.id}`).sort(), ['group/g', 'task/x']);
    t.is(b.tasks.get('x')!.proplet_id, 'pa', 'b reloaded the winner');
    t.is(b.groups.get('g')!.created_at, 'by a');
    // having re-read the row, b can write again
    const again = b.tasks.get('x')!;
    step(again, 'Running', '2026-12-06T10:00:02.000Z');
    b.tasks.put('x', again);
    await b.flush();
    t.is(b.stats.conflicts, 2);
    // and now a is the one behind
    a.tasks.put('x', { ...xa, pending_reason: 'stale' });
    await a.flush();
    t.is(a.stats.conflicts, 1);
    await a.close();
    await b.close();
    const c = await openStore(loc);
    const x = c.tasks.get('x')!;
    t.is(x.state, 'Running');
    t.is(x.proplet_id, 'pa');
    t.is(x.pending_reason, undefined);
    t.deepEqual(x.history.map((h) => h.state), ['Pending', 'Scheduled', 'Running'], 'no history row of the losing write');
    await c.close();
  });

  it('a conflict sets aside only the groups that lost: the rest commit together in one more transaction', async (t, e) => {
    const loc = await e.fresh();
    const seed = await openStore(loc);
    seed.tasks.put('x', task('x'));
    await seed.close();
    const a = await openStore(loc);
    const b = await openStore(loc);
    const xa = a.tasks.get('x')!;
    const xb = b.tasks.get('x')!;
    step(xa, 'Scheduled', '2026-12-06T10:00:01.000Z', { proplet_id: 'pa', attempt: 1 });
    a.tasks.put('x', xa);
    await a.flush();
    const commits = b.stats.commits;
    step(xb, 'Scheduled', '2026-12-06T10:00:01.500Z', { proplet_id: 'pb', attempt: 1 });
    b.tasks.put('x', xb);
    const others = Array.from({ length: 9 }, (_, i) => `n${i}`);
    for (const id of others) b.tasks.put(id, task(id));
    await b.flush();
    // SQLite: the database refuses x's write. PostgreSQL: the change feed may reload x first, and the
    // write is then dropped before it is sent. Either way one conflict, and the rest in one commit.
    t.is(b.stats.conflicts, 1);
    t.is(b.stats.commits - commits, 1, 'the nine other writes in one transaction, not one each');
    await a.close();
    await b.close();
    const c = await openStore(loc);
    t.is(c.tasks.get('x')!.proplet_id, 'pa');
    for (const id of others) t.truthy(c.tasks.get(id), id);
    await c.close();
  });

  it('the HTTP API answers a change only once the store has committed it', async (t, e) => {
    const loc = await e.fresh();
    const store = await openStore(loc);
    // hold every commit while the request is in flight (the store's own tick flushes through the same method)
    const realFlush = store.flush.bind(store);
    const held: (() => void)[] = [];
    let holding = false;
    let flushCalled!: () => void;
    const called = new Promise<void>((r) => (flushCalled = r));
    store.flush = () => {
      if (!holding) return realFlush();
      flushCalled();
      return new Promise<void>((r) => held.push(r)).then(realFlush);
    };
    const release = () => {
      holding = false;
      for (const r of held.splice(0)) r();
    };
    const stack = await startStack({ cp: { store } });
    try {
      let answered = false;
      holding = true;
      const created = stack.api.createTask({ name: 'durable', file: Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]).toString('base64') }).then((x) => {
        answered = true;
        return x;
      });
      await called;
      // the store's own tick and the request's wait both hold; without the wait, the answer comes first
      await until(() => answered || held.length >= 2, 'the answer or the request waiting on the commit');
      t.false(answered, 'no answer while the commit is pending');
      release();
      const task = await created;
      const other = await openStore(loc);
      t.is(other.tasks.get(task.id)?.name, 'durable', 'committed before the answer');
      await other.close();
    } finally {
      release();
      await stack.close();
    }
  });

  it('a database of the second schema loses the secondary task indexes no query reads, and keeps its tasks', async (t, e) => {
    const loc = await e.fresh();
    const s = await openStore(loc);
    s.tasks.put('x', task('x'));
    await s.close();
    // as the second schema left it
    const indexes = `CREATE INDEX tasks_state ON tasks (state); CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;`;
    const left = async (): Promise<string[]> => {
      if (loc.engine === 'sqlite') {
        const db = new Database(loc.path, { readonly: true });
        const names = db.prepare<[], { name: string }>(`SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'tasks' AND sql IS NOT NULL`).all();
        db.close();
        return names.map((r) => r.name);
      }
      const c = new pg.Client({ connectionString: loc.url });
      await c.connect();
      const r = await c.query<{ indexname: string }>(`SELECT indexname FROM pg_indexes WHERE tablename = 'tasks' AND indexname <> 'tasks_pkey'`);
      await c.end();
      return r.rows.map((x) => x.indexname);
    };
    if (loc.engine === 'sqlite') {
      const db = new Database(loc.path);
      db.exec(indexes);
      db.pragma('user_version = 2');
      db.close();
    } else {
      const c = new pg.Client({ connectionString: loc.url });
      await c.connect();
      await c.query(`${indexes} UPDATE propeller_schema SET version = 2`);
      await c.end();
    }
    t.deepEqual((await left()).sort(), ['tasks_finished_at', 'tasks_state']);
    const again = await openStore(loc);
    t.deepEqual(again.tasks.get('x'), task('x'));
    await again.close();
    t.deepEqual(await left(), []);
  });

  it('a database written by a newer version is refused with one clear line', async (t, e) => {
    const loc = await e.fresh();
    await (await openStore(loc)).close();
    if (loc.engine === 'sqlite') {
      const db = new Database(loc.path);
      db.pragma('user_version = 99');
      db.close();
    } else {
      const c = new pg.Client({ connectionString: loc.url });
      await c.connect();
      await c.query('UPDATE propeller_schema SET version = 99');
      await c.end();
    }
    const err = await t.throwsAsync(openStore(loc), { instanceOf: StoreError });
    const known = loc.engine === 'sqlite' ? SQLITE_SCHEMA_VERSION : PG_SCHEMA_VERSION;
    t.true(err!.message.includes(`schema version 99, newer than this propeller-edge knows (${known})`), err!.message);
    t.notRegex(err!.message, /\n/);
  });
}

(skipPg ? test.skip : test)('postgres: replicas on one database see each other\'s commits (change feed); a write over a change it had not seen is refused', async (t) => {
  const loc = await ENGINES[1]!.fresh();
  const changed: string[] = [];
  const conflicts: string[] = [];
  const a = await openStore(loc);
  const b = await openStore(loc, { onChange: (k) => changed.push(`${k.kind}/${k.id}`), onConflict: (k) => conflicts.push(`${k.kind}/${k.id}`) });
  const x = task('x');
  a.tasks.put('x', x);
  a.groups.put('g', group('g'));
  await a.flush();
  await until(() => !!b.tasks.get('x') && !!b.groups.get('g'), 'b sees a\'s new rows');
  t.deepEqual(b.tasks.get('x'), x);
  step(x, 'Scheduled', '2026-12-06T10:00:01.000Z', { proplet_id: 'pa', attempt: 1 });
  a.tasks.put('x', x);
  a.groups.delete('g');
  await a.flush();
  await until(() => b.tasks.get('x')?.state === 'Scheduled' && !b.groups.get('g'), 'b sees the update and the delete');
  t.deepEqual(b.tasks.get('x'), x, 'history included');
  t.true(changed.includes('task/x') && changed.includes('group/g'));
  t.is(a.stats.conflicts + b.stats.conflicts, 0, 'following each other is not a conflict');
  // b writes over x without having seen a's next change: refused, whichever comes first (feed or commit)
  const xb = b.tasks.get('x')!;
  step(x, 'Running', '2026-12-06T10:00:02.000Z');
  a.tasks.put('x', x);
  await a.flush();
  step(xb, 'Failed', '2026-12-06T10:00:02.500Z', { error: 'b thinks so' });
  b.tasks.put('x', xb);
  await b.flush();
  t.is(b.stats.conflicts, 1);
  t.deepEqual(conflicts, ['task/x']);
  t.is(b.tasks.get('x')?.state, 'Running', 'b has a\'s change');
  await until(() => a.tasks.get('x')?.state === 'Running' && a.stats.pending === 0, 'a settled');
  t.is(a.tasks.get('x')?.error, undefined, 'b\'s write never landed');
  await a.close();
  await b.close();
});

test('sqlite: a file of the first schema (one JSON document per record) migrates to rows', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'propeller-store-'));
  dirs.push(d);
  const path = join(d, 'state.db');
  const old = new Database(path);
  old.exec(`CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id));
            CREATE TABLE modules (digest TEXT PRIMARY KEY, bytes BLOB NOT NULL);`);
  old.pragma('user_version = 1');
  const x = task('x');
  step(x, 'Scheduled', '2026-12-06T10:00:01.000Z', { proplet_id: 'p1', attempt: 1 });
  old.prepare('INSERT INTO records VALUES (?, ?, ?)').run('task', 'x', JSON.stringify(x));
  old.prepare('INSERT INTO records VALUES (?, ?, ?)').run('group', 'g', JSON.stringify(group('g')));
  old.close();
  const s = await openStore({ engine: 'sqlite', path });
  t.deepEqual(s.tasks.get('x'), x);
  t.is(s.groups.get('g')?.name, 'g');
  const y = s.tasks.get('x')!;
  step(y, 'Running', '2026-12-06T10:00:02.000Z');
  s.tasks.put('x', y);
  await s.close();
  const db = new Database(path, { readonly: true });
  t.is(db.pragma('user_version', { simple: true }), SQLITE_SCHEMA_VERSION);
  t.deepEqual(db.prepare('SELECT state, attempt, proplet_id FROM tasks').all(), [{ state: 'Running', attempt: 1, proplet_id: 'p1' }], 'queryable columns');
  t.is((db.prepare('SELECT count(*) AS n FROM task_history').get() as { n: number }).n, 3);
  db.close();
});

test('store URLs: postgres, sqlite, and anything else refused by name', (t) => {
  t.deepEqual(parseStoreUrl('postgres://u@h:5432/db'), { engine: 'postgres', url: 'postgres://u@h:5432/db' });
  t.deepEqual(parseStoreUrl('sqlite:/var/x.db'), { engine: 'sqlite', path: '/var/x.db' });
  t.deepEqual(parseStoreUrl('sqlite:rel/x.db'), { engine: 'sqlite', path: 'rel/x.db' });
  t.throws(() => parseStoreUrl('mysql://h/db'), { instanceOf: StoreError, message: /neither postgres:\/\/USER@HOST:PORT\/DB nor sqlite:PATH/ });
  t.throws(() => parseStoreUrl('sqlite:'), { instanceOf: StoreError });
});
