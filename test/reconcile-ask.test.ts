// A proplet reporting without a task the control plane has running there is
// first asked how it ended (a stop for that attempt), not at once given the task
// again: its answer, the result it kept, completes the task on that attempt; no
// answer within the grace, or a run the question stopped, places it again. A
// start never acknowledged (no running result) was lost: placed again at once.
// Real broker, hand-driven proplets over MQTT.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { decode, encode, type Result, type Start, type Stop } from '../protocol/index.ts';
import { propletSubscriptions, topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
let file: string;

test.before(async () => {
  await buildExamples();
  file = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
  s = await startStack({ proplets: 0, cp: { reconcileGraceMs: 200 } });
});
test.after.always(async () => {
  await s?.close();
});

/** A proplet that takes a pinned task, says it runs, then reports running nothing until it is asked about it. */
async function asked(id: string): Promise<{ c: MqttClient; start: Start; stop: Stop; taskId: string; send(r: Omit<Result, 'v' | 'proplet_id' | 'task_id'>): Promise<unknown> }> {
  const c = await s.client(id);
  const starts: Start[] = [];
  const stops: Stop[] = [];
  c.on('message', (t, payload) => {
    if (t.includes('/manager/start/')) starts.push(decode('manager.start', payload).msg);
    if (t.includes('/manager/stop/')) stops.push(decode('manager.stop', payload).msg);
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', capacity: { max_tasks: 4 }, running: [] }, 'json'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', `${id} registered`);
  const task = await s.api.createTask({ name: 'sleep', file, inputs: [10], proplet_id: id }, { start: true });
  await until(() => starts.some((x) => x.id === task.id), 'start received');
  const start = starts.find((x) => x.id === task.id)!;
  const send = (r: Omit<Result, 'v' | 'proplet_id' | 'task_id'>) => c.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: id, task_id: task.id, ...r }, 'json'), { qos: 1 });
  await send({ attempt: start.attempt, status: 'running' });
  await until(async () => (await s.api.getTask(task.id)).state === 'Running', 'it runs');
  await until(async () => {
    await c.publishAsync(topic(scope, 'proplet.alive'), encode('proplet.alive', { proplet_id: id, status: 'alive', running_tasks: 0, running: [] }, 'json'), { qos: 1 });
    return stops.some((x) => x.id === task.id);
  }, 'asked how it ended');
  return { c, start, stop: stops.find((x) => x.id === task.id)!, taskId: task.id, send };
}

test('asked, the proplet answers with the result it kept: completed on the first attempt', async (t) => {
  const a = await asked('ask-answers');
  t.is(a.stop.attempt, a.start.attempt, 'the question names the attempt');
  await a.send({ attempt: a.start.attempt, status: 'completed', results: 7 });
  const done = await s.api.getTask(a.taskId, 60_000);
  t.is(done.state, 'Completed');
  t.is(done.result?.results, 7);
  t.is(done.attempts.length, 1);
});

test('asked, no answer within the grace: placed again', async (t) => {
  const a = await asked('ask-silent');
  await until(async () => (await s.api.getTask(a.taskId)).attempt === a.start.attempt! + 1, 'placed again');
  const x = await s.api.getTask(a.taskId);
  t.is(x.attempts[0]!.outcome, 'evacuated');
  t.regex(x.history.find((h) => h.state === 'Pending' && h.reason?.includes('no longer runs it'))!.reason!, /proplet ask-silent no longer runs it/);
});

test('the question stopped a run whose start the report had overtaken: placed again, not failed', async (t) => {
  const a = await asked('ask-stopped');
  await a.send({ attempt: a.start.attempt, status: 'stopped', error: 'stopped' });
  await until(async () => (await s.api.getTask(a.taskId)).attempt === a.start.attempt! + 1, 'placed again');
  const x = await s.api.getTask(a.taskId);
  t.not(x.state, 'Failed');
  t.is(x.attempts[0]!.outcome, 'evacuated');
});

test('a start never acknowledged is not asked about: placed again at once', async (t) => {
  const id = 'ask-lost-start';
  const c = await s.client(id);
  const stops: Stop[] = [];
  c.on('message', (tp, payload) => {
    if (tp.includes('/manager/stop/')) stops.push(decode('manager.stop', payload).msg);
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', capacity: { max_tasks: 4 }, running: [] }, 'json'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', `${id} registered`);
  const task = await s.api.createTask({ name: 'sleep', file, inputs: [10], proplet_id: id }, { start: true });
  await until(async () => {
    await c.publishAsync(topic(scope, 'proplet.alive'), encode('proplet.alive', { proplet_id: id, status: 'alive', running_tasks: 0, running: [] }, 'json'), { qos: 1 });
    return (await s.api.getTask(task.id)).attempt === 2;
  }, 'placed again');
  t.false(stops.some((x) => x.id === task.id && x.attempt === 1), 'not asked');
});
