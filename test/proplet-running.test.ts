// When the node proplet says `running`, over real MQTT: a task whose final
// result is ready before the end of the turn that loaded it (a small pure
// module, run in process) sends only that result; a task that runs on (WASI,
// in a worker) sends `running` first. Either way the final result arrives once
// and the control plane completes the task.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import type { Result } from '../protocol/index.ts';
import { startStack, until, watchResults, type Stack } from './helpers/stack.ts';

let s: Stack;
let results: Result[] = [];
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`));

test.before(async () => {
  await buildExamples();
  s = await startStack({ health: { offlineThresholdMs: 120_000, failureThresholdMs: 240_000 } });
  await s.addProplet('runner-1');
  ({ results } = await watchResults(s, 'running-test-manager'));
});
test.after.always(async () => {
  await s?.close();
});

/** The statuses the proplet sent for a task created and started through the API. */
async function statuses(name: string, inputs: number[]): Promise<{ sent: (string | undefined)[]; result: unknown }> {
  const task = await s.api.createTask({ name, file: wasm(name).toString('base64'), inputs });
  await s.api.startTask(task.id);
  await until(async () => (await s.api.getTask(task.id)).state === 'Completed', `${name} completed`);
  await until(() => results.some((r) => r.task_id === task.id && r.status === 'completed'), `the result of ${name} seen`);
  return { sent: results.filter((r) => r.task_id === task.id).map((r) => r.status), result: (await s.api.getTask(task.id)).result?.results };
}

test.serial('a small task whose result is ready in the same turn sends only its final result; the control plane completes it', async (t) => {
  // the first run compiles the module (asynchronously): its result comes a turn later
  await statuses('add', [1, 1]);
  t.deepEqual(await statuses('add', [40, 2]), { sent: ['completed'], result: 42 });
  // it went from Scheduled to Completed, and still shows when it ran: not before it was sent, not after it ended
  const [task] = (await s.api.listTasks()).tasks.filter((x) => x.name === 'add' && x.result?.results === 42);
  t.deepEqual(task!.history.map((h) => h.state), ['Pending', 'Scheduled', 'Completed']);
  t.truthy(task!.started_at);
  t.true(task!.started_at! >= task!.attempts[0]!.started_at && task!.started_at! <= task!.finished_at!, `${task!.attempts[0]!.started_at} <= ${task!.started_at} <= ${task!.finished_at}`);
});

test.serial('a task that runs on sends running first, then its final result', async (t) => {
  t.deepEqual(await statuses('sleep', [50]), { sent: ['running', 'completed'], result: 50 });
});
