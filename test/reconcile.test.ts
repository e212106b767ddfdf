// Reconciliation and attempts: a proplet that re-announces a task it no longer
// owns is told to stop it; a task refused everywhere ends Failed with every
// attempt recorded; a result from an old attempt is ignored and counted.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { decode, encode, type Start } from '../protocol/index.ts';
import { propletSubscriptions, topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`)).toString('base64');

test.before(async () => {
  await buildExamples();
  s = await startStack({ proplets: 1, cp: { maxAttempts: 2 } });
});
test.after.always(async () => {
  await s?.close();
});

/** A hand-driven proplet: registers per-proplet, records what it is sent. */
async function rawProplet(id: string, running: { task_id: string; attempt: number }[] = [], labels: Record<string, string> = {}) {
  const c: MqttClient = await s.client(id);
  const starts: Start[] = [];
  const stops: { id: string; attempt?: number }[] = [];
  c.on('message', (t, payload) => {
    if (t.includes('/manager/start/')) starts.push(decode('manager.start', payload).msg);
    if (t.includes('/manager/stop/')) stops.push(decode('manager.stop', payload).msg);
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', capacity: { max_tasks: 4 }, running, labels }, 'json'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', `${id} registered`);
  return { c, starts, stops };
}

test('a proplet re-announcing a task that runs elsewhere is told to stop it; the current attempt keeps running', async (t) => {
  const task = await s.api.createTask({ name: 'sleep', file: wasm('sleep'), inputs: [1500], proplet_id: 'p1' }, { start: true });
  await until(async () => (await s.api.getTask(task.id)).state === 'Running', 'running on p1');
  const ghost = await rawProplet('ghost', [{ task_id: task.id, attempt: 7 }]);
  await until(() => ghost.stops.some((x) => x.id === task.id), 'stop sent to the ghost');
  t.is(ghost.stops.find((x) => x.id === task.id)!.attempt, 7);
  const now = await s.api.getTask(task.id);
  t.is(now.state, 'Running');
  t.is(now.proplet_id, 'p1');
  t.is(now.attempt, 1);
});

test('a task refused by every proplet ends Failed after maxAttempts with all attempts recorded', async (t) => {
  const a = await rawProplet('refuser-a', [], { role: 'refuser' });
  const b = await rawProplet('refuser-b', [], { role: 'refuser' });
  const refuse = (r: Awaited<ReturnType<typeof rawProplet>>, id: string) =>
    r.c.on('message', (tp, payload) => {
      if (!tp.includes('/manager/start/')) return;
      const m = decode('manager.start', payload).msg;
      void r.c.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: id, task_id: m.id, attempt: m.attempt, status: 'refused', error: 'does not fit' }, 'json'), { qos: 1 });
    });
  refuse(a, 'refuser-a');
  refuse(b, 'refuser-b');
  const task = await s.api.createTask({ name: 'add', file: wasm('add'), inputs: [1, 2], proplet_selector: { match_labels: { role: 'refuser' } } }, { start: true, waitMs: 60_000 });
  t.is(task.state, 'Failed');
  t.regex(task.error!, /gave up after 2 attempts/);
  t.deepEqual(task.attempts.map((x) => x.outcome), ['refused', 'refused']);
  t.deepEqual(task.attempts.map((x) => x.proplet_id).sort(), ['refuser-a', 'refuser-b']);
  t.deepEqual([...(task.excluded_proplets ?? [])].sort(), ['refuser-a', 'refuser-b']);
});

test('a result from an old attempt is ignored and counted, never applied', async (t) => {
  const r = await rawProplet('late');
  const task = await s.api.createTask({ name: 'add', file: wasm('add'), inputs: [1, 2], proplet_id: 'late' }, { start: true });
  await until(() => r.starts.some((x) => x.id === task.id), 'start received');
  const attempt = r.starts.find((x) => x.id === task.id)!.attempt!;
  await r.c.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: 'late', task_id: task.id, attempt: attempt + 5, status: 'completed', results: 99 }, 'json'), { qos: 1 });
  await until(async () => /reason="stale_attempt"\} [1-9]/.test(await s.cp.metrics.registry.getSingleMetricAsString('propeller_results_ignored_total')), 'stale result counted');
  t.not((await s.api.getTask(task.id)).state, 'Completed');
  await r.c.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: 'late', task_id: task.id, attempt, status: 'completed', results: 3 }, 'json'), { qos: 1 });
  const done = await s.api.getTask(task.id, 60_000);
  t.is(done.state, 'Completed');
  t.is(done.result?.results, 3);
});
