// `propeller serve --store postgres://…` as a user runs it: tasks run on a node
// proplet, kill -9 the control plane mid-run, a restart on the same database
// has every task once and completes them once. A wrong, unreachable or newer
// store is one line on stderr and a non-zero exit.

import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { PG_SCHEMA_VERSION } from '../control-plane/pg-store.ts';
import { BIN, startProplet, startServe, type Proc } from './helpers/procs.ts';
import { postgresMissing, startPostgres, type Postgres } from './helpers/postgres.ts';
import { freePort, until } from './helpers/stack.ts';

const skip = process.env.PROPELLER_SKIP_POSTGRES === '1' && !!postgresMissing();
const it = skip ? test.skip : test.serial;
const exec = promisify(execFile);
let postgres: Postgres;
let sleepWasm: string;
const procs: Proc[] = [];
const dataDir = mkdtempSync(join(tmpdir(), 'propeller-pg-serve-'));

test.before(async () => {
  if (skip) return;
  await buildExamples();
  sleepWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
  postgres = await startPostgres();
});
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await postgres?.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

async function serveFails(...args: string[]): Promise<{ code: number; stderr: string }> {
  try {
    await exec('node', [BIN, 'serve', '--mqtt-port', '0', '--http-port', '0', '--data-dir', dataDir, ...args], { timeout: 60_000 });
    return { code: 0, stderr: '' };
  } catch (e) {
    const err = e as { code: number; stderr: string };
    return { code: err.code, stderr: err.stderr };
  }
}

it('a wrong, unreachable or newer store: one line on stderr, non-zero exit, no stack trace', async (t) => {
  const closed = await freePort();
  const cases: [string[], RegExp][] = [
    [['--store', 'mysql://h/db'], /^propeller: store URL "mysql:\/\/h\/db" is neither postgres:\/\/USER@HOST:PORT\/DB nor sqlite:PATH$/],
    [['--store', `postgres://nobody:secret@127.0.0.1:${closed}/x`], /^propeller: cannot use the PostgreSQL store postgres:\/\/nobody:\*\*\*@127\.0\.0\.1:\d+\/x: connection refused/],
  ];
  const url = await postgres.createDatabase();
  const missing = new URL(url);
  missing.pathname = '/no_such_db';
  cases.push([['--store', missing.toString()], /^propeller: cannot use the PostgreSQL store .*: database "no_such_db" does not exist$/]);
  // a database a newer propeller-edge has migrated
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query('CREATE TABLE propeller_schema (version integer NOT NULL); INSERT INTO propeller_schema VALUES (7)');
  await c.end();
  cases.push([['--store', url], new RegExp(String.raw`^propeller: the PostgreSQL database .* has schema version 7, newer than this propeller-edge knows \(${PG_SCHEMA_VERSION}\): run a newer propeller-edge$`)]);
  for (const [args, re] of cases) {
    const r = await serveFails(...args);
    t.not(r.code, 0, args.join(' '));
    const lines = r.stderr.trim().split('\n');
    t.is(lines.length, 1, r.stderr);
    t.regex(lines[0]!, re);
  }
  // STORE_URL is read too
  const env = await exec('node', [BIN, 'serve', '--mqtt-port', '0', '--http-port', '0', '--data-dir', dataDir], { env: { ...process.env, STORE_URL: 'redis://x' }, timeout: 60_000 }).catch((e) => e as { code: number; stderr: string });
  t.regex((env as { stderr: string }).stderr, /store URL "redis:\/\/x"/);
});

it('serve --store postgres: kill -9 mid-run, restart on the same database: every task there once, each completed once', async (t) => {
  const store = await postgres.createDatabase();
  const health = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '2s', FAILURE_THRESHOLD: '5s' };
  const args = ['--mqtt-port', String(await freePort()), '--http-port', String(await freePort()), '--store', store, '--data-dir', dataDir];
  const serve = await startServe(args, health);
  procs.push(serve);
  const proplets: Proc[] = [];
  for (const id of ['pg-1', 'pg-2']) {
    const { secret } = await serve.api.addProplet(id);
    const p = await startProplet(['--id', id, `--secret=${secret}`, '--broker', serve.brokerUrl, '--heartbeat', '200ms', '--max-tasks', '4']);
    procs.push(p);
    proplets.push(p);
  }
  await until(async () => (await serve.api.listProplets()).proplets.filter((p) => p.state === 'alive').length === 2, 'proplets alive', 20_000);
  const done = await serve.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [10] }, { start: true, waitMs: 20_000 });
  t.is(done.state, 'Completed');
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) ids.push((await serve.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [1500] }, { start: true })).id);
  const pending = await serve.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [10] });
  await until(async () => (await Promise.all(ids.map((id) => serve.api.getTask(id)))).every((x) => x.state === 'Running'), 'running', 20_000);
  await serve.kill('SIGKILL');

  const again = await startServe(args, health);
  procs.push(again);
  const all = await again.api.listTasks();
  t.deepEqual(all.tasks.map((x) => x.id).sort(), [done.id, ...ids, pending.id].sort(), 'every task once');
  t.is((await again.api.getTask(done.id)).result?.results, 10);
  await until(async () => (await Promise.all(ids.map((id) => again.api.getTask(id)))).every((x) => x.state === 'Completed'), 'completed after restart', 40_000);
  const completions = new Map<string, number>();
  for (const p of proplets) for (const l of p.logs) if (l.msg === 'task finished' && l.status === 'completed') completions.set(l.task_id as string, (completions.get(l.task_id as string) ?? 0) + 1);
  for (const id of ids) {
    const x = await again.api.getTask(id);
    t.is(x.attempt, 1, `task ${id} kept its attempt`);
    t.is(x.result?.results, 1500);
    t.is(completions.get(id), 1, `task ${id} completed once`);
  }
  t.is((await again.api.getTask(pending.id)).state, 'Pending');
  // the rows are there for SQL, not only for this process
  const c = new pg.Client({ connectionString: store });
  await c.connect();
  const r = await c.query<{ state: string; n: string }>('SELECT state, count(*) AS n FROM tasks GROUP BY state ORDER BY state');
  await c.end();
  t.deepEqual(r.rows.map((x) => `${x.state}:${x.n}`), ['Completed:5', 'Pending:1']);
  await again.kill('SIGTERM');
});
