// No start silently dropped: one of our proplets that does not acknowledge a
// start within START_ACK_TIMEOUT is taken as having refused it, and the task
// moves on at once with that reason, long before the proplet would be
// declared failed. Our own proplets acknowledge, so they never hit it.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
let add: string;

test.before(async () => {
  await buildExamples();
  add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  // failure threshold far beyond the deadline: the task must not wait for it
  s = await startStack({ health: { offlineThresholdMs: 60_000, failureThresholdMs: 120_000 }, cp: { startAckTimeoutMs: 2000 } });
});
test.after.always(async () => {
  await s?.close();
});

test.serial('a start our proplet never acknowledges is refused after the deadline and the task runs elsewhere', async (t) => {
  // registers as one of ours (per-proplet topics), beats, and drops every start on the floor
  const mute = await s.client('mute');
  const starts: string[] = [];
  const stops: string[] = [];
  const startTopic = topic(scope, 'manager.start', 'mute');
  mute.on('message', (tp, payload) => {
    const m = JSON.parse(payload.toString()) as { id: string; attempt: number };
    (tp === startTopic ? starts : stops).push(`${m.id}#${m.attempt}`);
  });
  await mute.subscribeAsync([startTopic, topic(scope, 'manager.stop', 'mute')], { qos: 1 });
  await mute.publishAsync(topic(scope, 'proplet.create', 'mute'), JSON.stringify({ proplet_id: 'mute', addressing: 'direct', device_type: 'node' }), { qos: 1 });
  await until(() => s.cp.registry.get('mute')?.state === 'alive', 'mute registered');
  await s.addProplet('p1');

  // spread over both: the ones sent to the mute proplet move to p1 after the deadline
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    const task = await s.api.createTask({ name: 'add', file: add, inputs: [i, 1] });
    await s.api.startTask(task.id);
    ids.push(task.id);
  }
  let refused = 0;
  for (const [i, id] of ids.entries()) {
    const done = await s.api.getTask(id, 20_000);
    t.is(done.state, 'Completed', done.error);
    t.is(done.result?.proplet_id, 'p1');
    t.is(done.result?.results, i + 1);
    const first = done.attempts[0]!;
    if (first.proplet_id === 'mute') {
      refused++;
      t.is(first.outcome, 'refused');
      t.regex(first.error ?? '', /start not acknowledged within 2 s \(START_ACK_TIMEOUT\)/);
    }
  }
  t.true(refused >= 1, 'placement sent some to the mute proplet');
  t.is(starts.length, refused);
  // told to drop each start it never acknowledged: one that arrived late must not run beside its replacement
  await until(() => stops.length === refused, 'a stop for each unacknowledged start');
  t.deepEqual(stops.sort(), starts.sort());
  t.is(s.cp.registry.get('mute')!.state, 'alive'); // not failed: the tasks did not wait for that
});

test.serial('our node proplet acknowledges every start: with the same deadline nothing is refused', async (t) => {
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) {
    const task = await s.api.createTask({ name: 'add', file: add, inputs: [i, 1], proplet_id: 'p1' });
    await s.api.startTask(task.id);
    ids.push(task.id);
  }
  for (const [i, id] of ids.entries()) {
    const done = await s.api.getTask(id, 10_000);
    t.is(done.state, 'Completed', done.error);
    t.is(done.result?.results, i + 1);
    t.is(done.attempts.length, 1);
  }
});
