// Replicas (and a single process on PostgreSQL) losing their database or their
// broker: /health says which and since when (503, not ready; /health/live stays
// 200), writes answer 503 with the reason and change nothing, and when the
// dependency is back (the same PostgreSQL restarted, Mosquitto restarted on the
// same port) everything resumes by itself: the task that ran meanwhile completes
// once, nothing is duplicated, no proplet is declared dead for the broker's silence.

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { pgBinDir, postgresMissing, startPostgres, type OwnPostgres } from './helpers/postgres.ts';
import { metricOf, startProplet, startServe, type Proc, type Serve } from './helpers/procs.ts';
import { tcpRelay } from './helpers/relay.ts';
import { freePort, until } from './helpers/stack.ts';

const missing = postgresMissing() ?? mosquittoMissing();
const cannotHalt = !pgBinDir(); // only a cluster of our own can be stopped and started again
const procs: Proc[] = [];
const dirs: string[] = [];
let mosquitto: Mosquitto | undefined;
let postgres: OwnPostgres | undefined;
let sleepWasm: string;
const TOKEN = 'faults-token';

test.before(async () => {
  if (missing) return;
  await buildExamples();
  sleepWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
  mosquitto = await startMosquitto();
  postgres = await startPostgres({ own: true });
});
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await mosquitto?.stop();
  await postgres?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

// a proplet's result held while the broker was away may reach the owner a little after its next report,
// on a loaded machine more than the offline threshold (the default grace) later
const health = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '2s', FAILURE_THRESHOLD: '4s', RECONNECT_GRACE: '15s' };

async function serve(domain: string, args: string[]): Promise<Serve> {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-faults-'));
  dirs.push(dir);
  const s = await startServe([...args, '--domain', domain, '--http-port', String(await freePort()), '--data-dir', dir, '--api-token', TOKEN], health);
  procs.push(s);
  return s;
}

interface Probe {
  status: number;
  body: { status: string; ready?: boolean; down?: { dependency: string; since: string; for_s: number; error: string }[]; error?: string };
}
const get = async (s: Serve, path: string): Promise<Probe> => {
  const r = await fetch(`${s.apiUrl}${path}`);
  return { status: r.status, body: (await r.json()) as Probe['body'] };
};
const post = async (s: Serve, path: string, body: unknown): Promise<Probe> => {
  const r = await fetch(`${s.apiUrl}${path}`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: r.status, body: (await r.json()) as Probe['body'] };
};
const downOn = async (s: Serve, dependency: string) => {
  const h = await get(s, '/health');
  return h.status === 503 && h.body.status === 'not ready' && h.body.down?.some((d) => d.dependency === dependency && !Number.isNaN(Date.parse(d.since))) === true;
};
const readyOn = async (s: Serve) => (await get(s, '/health')).status === 200;
const completions = (proplets: Proc[]) => {
  const n = new Map<string, number>();
  for (const p of proplets) for (const l of p.logs) if (l.msg === 'task finished' && l.status === 'completed') n.set(l.task_id as string, (n.get(l.task_id as string) ?? 0) + 1);
  return n;
};
const sleepTask = (ms: number) => ({ name: 'sleep', file: sleepWasm, inputs: [ms] });

(missing || cannotHalt ? test.skip : test.serial)('PostgreSQL stopped and restarted: not ready with the reason, writes refused, everything resumes, nothing duplicated', async (t) => {
  const url = await postgres!.createDatabase();
  const replicas = [await serve('pg-loss', ['--broker', mosquitto!.url, '--store', url, '--lease-duration', '2s']), await serve('pg-loss', ['--broker', mosquitto!.url, '--store', url, '--lease-duration', '2s'])];
  // the single process: PostgreSQL store, embedded broker
  const single = await serve('pg-loss', ['--store', await postgres!.createDatabase(), '--mqtt-port', String(await freePort())]);
  const all = [...replicas, single];
  const [a, b] = replicas as [Serve, Serve];
  const proplet = await startProplet(['--id', 'pf-1', '--broker', mosquitto!.url, '--heartbeat', '300ms', '--domain', 'pg-loss']);
  procs.push(proplet);
  await until(async () => (await Promise.all(replicas.map(async (s) => (await s.api.listProplets()).proplets.some((p) => p.state === 'alive')))).every(Boolean), 'both replicas see the proplet');
  for (const s of all) t.is((await get(s, '/health')).body.status, 'ok');

  const t1 = await a.api.createTask(sleepTask(1500), { start: true });
  await until(async () => (await b.api.getTask(t1.id).catch(() => undefined))?.state === 'Running', 'the task runs');
  postgres!.halt!();
  await until(async () => (await Promise.all(all.map((s) => downOn(s, 'store')))).every(Boolean), 'every process says its store is down');
  const h = await get(b, '/health');
  t.regex(h.body.down![0]!.error, /terminat|connect|ECONNREFUSED|closed|lost/i, 'why, in the database driver’s words');
  for (const s of all) t.is((await get(s, '/health/live')).status, 200, 'liveness does not depend on the database');
  t.is(await metricOf(b, 'propeller_dependency_up{dependency="store"}'), 0);
  t.is(await metricOf(b, 'propeller_ready'), 0);
  for (const s of [b, single]) {
    const refused = await post(s, '/tasks', sleepTask(10));
    t.is(refused.status, 503);
    t.regex(refused.body.error!, /^not ready: the state store is unavailable since \S+ \(.+\); nothing was changed, retry later$/);
  }
  // the task finishes on the proplet while the database is away: its result is kept in order
  await until(() => completions([proplet]).get(t1.id) === 1, 'the task finished on the proplet');
  postgres!.resume!();
  await until(async () => (await Promise.all(all.map(readyOn))).every(Boolean), 'every process ready again', 60_000);
  await until(async () => (await Promise.all(replicas.map(async (s) => (await s.api.getTask(t1.id)).state))).every((x) => x === 'Completed'), 'the task completed on both replicas');
  const t2 = await b.api.createTask(sleepTask(10), { start: true });
  await until(async () => (await a.api.getTask(t2.id).catch(() => undefined))?.state === 'Completed', 'a new task runs');
  for (const s of replicas) t.deepEqual((await s.api.listTasks()).tasks.map((x) => x.id).sort(), [t1.id, t2.id].sort(), 'the refused write left nothing behind');
  t.is((await a.api.getTask(t1.id)).attempt, 1);
  t.is(completions([proplet]).get(t1.id), 1, 'completed once');
  t.is((await single.api.listTasks()).tasks.length, 0);
  t.is((await single.api.createTask(sleepTask(10))).state, 'Pending', 'the single process takes writes again');
  t.is(await metricOf(b, 'propeller_ready'), 1);
  const took = a.logs.concat(b.logs).filter((l) => l.msg === 'store reachable again');
  t.true(took.length >= 1, 'the store said it was back');
  await Promise.all([...all, proplet].map((p) => p.kill()));
});

(missing ? test.skip : test.serial)('Mosquitto stopped and restarted on its port: not ready, writes refused, proplets not declared dead, the task completes once', async (t) => {
  const url = await (postgres ? postgres.createDatabase() : (await import('./helpers/postgres.ts')).testPostgres());
  const replicas = [await serve('broker-loss', ['--broker', mosquitto!.url, '--store', url, '--lease-duration', '2s']), await serve('broker-loss', ['--broker', mosquitto!.url, '--store', url, '--lease-duration', '2s'])];
  const [a, b] = replicas as [Serve, Serve];
  // a single process on the same broker (SQLite, a domain of its own): not ready too, but it keeps taking writes
  const single = await serve('broker-single', ['--broker', mosquitto!.url]);
  let kept = '';
  // the proplet behind a relay: it comes back only after the control plane has (the other order: test/result-resend.test.ts)
  const relay = await tcpRelay(mosquitto!.port);
  t.teardown(() => relay.close());
  const proplet = await startProplet(['--id', 'pf-2', '--broker', relay.url, '--heartbeat', '300ms', '--domain', 'broker-loss']);
  procs.push(proplet);
  await until(async () => (await Promise.all(replicas.map(async (s) => (await s.api.listProplets()).proplets.some((p) => p.id === 'pf-2' && p.state === 'alive')))).every(Boolean), 'both replicas see the proplet');
  const t1 = await a.api.createTask(sleepTask(1500), { start: true });
  await until(async () => (await b.api.getTask(t1.id).catch(() => undefined))?.state === 'Running', 'the task runs');
  await mosquitto!.restart(async () => {
    relay.open = false;
    await until(() => downOn(single, 'broker'), 'the single process says its broker is down');
    const taken = await post(single, '/tasks', { name: 'kept' });
    t.is(taken.status, 201, 'a single process keeps a write made while its broker is away');
    kept = (taken.body as { id?: string }).id!;
    await until(async () => (await Promise.all(replicas.map((s) => downOn(s, 'broker')))).every(Boolean), 'both replicas say the broker is down');
    const refused = await post(a, '/tasks', sleepTask(10));
    t.is(refused.status, 503);
    t.regex(refused.body.error!, /^not ready: the MQTT broker is unavailable since /);
    // away for longer than FAILURE_THRESHOLD: silence during an outage is not a proplet's death
    await until(async () => ((await get(a, '/health')).body.down?.[0]?.for_s ?? 0) >= 5, 'the broker away for 5 s');
  });
  await until(async () => (await Promise.all([...replicas, single].map(readyOn))).every(Boolean), 'both replicas and the single process ready again', 60_000);
  t.is((await single.api.getTask(kept)).name, 'kept');
  // the proplet comes back after the control plane did: the result it held is heard
  relay.open = true;
  await until(async () => (await a.api.getTask(t1.id)).state === 'Completed', 'the task completed', 60_000).catch(async (e) => {
    t.log(JSON.stringify(await a.api.getTask(t1.id)));
    t.log(JSON.stringify(proplet.logs.slice(-6)));
    throw e;
  });
  const t2 = await b.api.createTask(sleepTask(10), { start: true });
  await until(async () => (await a.api.getTask(t2.id).catch(() => undefined))?.state === 'Completed', 'a new task runs');
  const x = await a.api.getTask(t1.id);
  if (x.attempt !== 1) {
    t.log(JSON.stringify(x.history), JSON.stringify(a.logs.concat(b.logs).filter((l) => l.level !== 'debug' && l.msg !== 'mqtt error' && l.msg !== 'mqtt reconnecting').map((l) => [l.t, l.msg, l.reason ?? l.task_id ?? ''])));
    t.log(JSON.stringify(proplet.logs.filter((l) => l.msg !== 'mqtt error')));
  }
  t.is(x.attempt, 1, 'not placed again');
  t.is(completions([proplet]).get(t1.id), 1, 'completed once');
  const dead = a.logs.concat(b.logs).filter((l) => l.msg === 'proplet state' && l.to === 'failed');
  t.deepEqual(dead, [], 'no proplet declared failed for the outage');
  t.deepEqual((await a.api.listTasks()).tasks.map((x) => x.id).sort(), [t1.id, t2.id].sort());
  await Promise.all([...replicas, single, proplet].map((p) => p.kill()));
});
