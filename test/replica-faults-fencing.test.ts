// Fencing: the lease's owner is paused (SIGSTOP) between placing a task and
// committing that placement, past its lease; another replica takes over; the
// old owner is resumed (SIGCONT). Its placement carries a stale fencing token:
// the database refuses it, it is counted, the old owner steps down and sends no
// start; the new owner places the task, which runs once.
//
// The commit is held open with a row lock a test connection takes on the task
// (as a slow database would), so that the pause falls inside that window.

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import pg from 'pg';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { postgresMissing, testPostgres } from './helpers/postgres.ts';
import { BIN, metricOf, startProplet, startServe, type Proc, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const missing = postgresMissing() ?? mosquittoMissing();
const procs: Proc[] = [];
const dirs: string[] = [];
let mosquitto: Mosquitto | undefined;
let sleepWasm: string;
const TOKEN = 'fence-token';
const LEASE_MS = 2000;

test.before(async () => {
  if (missing) return;
  await buildExamples();
  sleepWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
  mosquitto = await startMosquitto();
});
test.after.always(async () => {
  for (const p of procs) p.proc.kill('SIGCONT');
  await Promise.all(procs.map((p) => p.kill()));
  await mosquitto?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function replica(store: string): Promise<Serve> {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-fence-'));
  dirs.push(dir);
  const s = await startServe(
    ['--broker', mosquitto!.url, '--store', store, '--domain', 'fence', '--lease-duration', `${LEASE_MS}ms`, '--http-port', String(await freePort()), '--data-dir', dir, '--api-token', TOKEN],
    { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '20s', FAILURE_THRESHOLD: '40s' },
  );
  procs.push(s);
  return s;
}

(missing ? test.skip : test.serial)('an owner paused past its lease cannot commit its placement: refused, counted, it steps down, the task runs once', async (t) => {
  const store = await testPostgres();
  const first = await replica(store);
  await until(() => first.logs.some((l) => l.msg === 'lease acquired'), 'the first replica owns the lease');
  const second = await replica(store);
  const [a, b] = [first, second];
  const proplet = await startProplet(['--id', 'fence-1', '--broker', mosquitto!.url, '--heartbeat', '300ms', '--domain', 'fence']);
  procs.push(proplet);
  await until(async () => (await Promise.all([a, b].map(async (s) => (await s.api.listProplets()).proplets.some((p) => p.state === 'alive')))).every(Boolean), 'both replicas see the proplet');
  const task = await a.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [200] });
  await until(async () => (await b.api.getTask(task.id).catch(() => undefined)) !== undefined, 'the other replica has the task');

  // a slow database: the task's row is locked, so the owner's next commit waits
  const db = new pg.Client({ connectionString: store });
  await db.connect();
  t.teardown(() => db.end());
  await db.query('BEGIN');
  await db.query('SELECT id FROM tasks WHERE id = $1 FOR UPDATE', [task.id]);
  // started through the owner: it places the task at once, in its memory; the commit waits on the lock
  const started = fetch(`${a.apiUrl}/tasks/${task.id}/start`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` } });
  await until(async () => (await metricOf(a, 'propeller_tasks_total{state="Scheduled"}')) === 1, 'the owner placed the task (not committed)');
  a.proc.kill('SIGSTOP');
  const stoppedAt = Date.now();
  await until(() => b.logs.some((l) => l.msg === 'lease acquired'), 'the other replica takes the lease over', 30_000);
  const takeover = Date.parse(b.logs.find((l) => l.msg === 'lease acquired')!.t as string) - stoppedAt;
  t.log(`takeover ${takeover} ms after the owner was paused (lease ${LEASE_MS} ms)`);
  await db.query('ROLLBACK');
  a.proc.kill('SIGCONT');
  t.is((await started).status, 200, 'the start itself (not owner-only) is committed');

  await until(async () => (await b.api.getTask(task.id)).state === 'Completed', 'the task completed', 30_000).catch(async (e) => {
    t.log(JSON.stringify(await b.api.getTask(task.id)));
    t.log(JSON.stringify(a.logs.filter((l) => l.level !== 'debug').slice(-10)));
    throw e;
  });
  await until(() => a.logs.some((l) => l.msg === 'owner write refused: another replica owns the lease now; dropped'), 'the old owner was told its write was refused');
  t.true((await metricOf(a, 'propeller_store_fenced_total')) >= 1, 'the refused writes are counted');
  t.false(a.logs.slice(a.logs.findIndex((l) => l.msg === 'owner write refused: another replica owns the lease now; dropped')).some((l) => l.msg === 'lease acquired'), 'it stepped down');
  t.is(await metricOf(a, 'propeller_tasks_dispatched_total{addressing="direct"}'), 0, 'the old owner sent no start');
  const done = await b.api.getTask(task.id);
  t.is(done.attempt, 1, 'placed once');
  t.is(done.history.filter((h) => h.state === 'Scheduled').length, 1);
  const runs = proplet.logs.filter((l) => l.msg === 'task finished' && l.task_id === task.id);
  t.is(runs.length, 1, 'ran once');
  // the old owner's view came back to what the database has
  await until(async () => (await a.api.getTask(task.id)).state === 'Completed', "the old owner's view follows");
});

test('--lease-duration: a bad value is one line and exit 2', async (t) => {
  const exec = promisify(execFile);
  for (const [args, env] of [[['--lease-duration', 'soon'], {}], [['--lease-duration', '200ms'], {}], [[], { LEASE_DURATION: '-3s' }]] as [string[], Record<string, string>][]) {
    const r = await exec('node', [BIN, 'serve', '--http-port', '0', '--mqtt-port', '0', ...args], { env: { ...process.env, ...env }, timeout: 60_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    t.is(r.code, 2, JSON.stringify(args));
    const lines = r.stderr.trim().split('\n');
    t.is(lines.length, 1, r.stderr);
    t.regex(lines[0]!, /^propeller: --lease-duration \(LEASE_DURATION\) must be a duration of at least 1s, such as 5s or 2500ms; got "/);
  }
});
