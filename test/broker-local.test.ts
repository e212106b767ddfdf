// The control plane and the embedded broker in one process (`propeller serve`):
// linked without a socket, under the manager account's ACL.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { encode } from '../protocol/index.ts';
import { topic } from '../topics/index.ts';
import { scope as S, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
test.before(async () => {
  await buildExamples();
  s = await startStack();
});
test.after.always(async () => {
  await s?.close();
});

test.serial('the control plane holds no MQTT connection to its own broker, and a task goes there and back', async (t) => {
  t.is(s.broker.connectedClients, 0, 'no socket between the control plane and the broker');
  await s.addProplet('local-a');
  t.is(s.broker.connectedClients, 1);
  const file = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  const task = await s.api.createTask({ name: 'add', file, inputs: [2, 3] }, { start: true });
  await until(async () => (await s.api.getTask(task.id)).state === 'Completed', 'task completed');
  t.deepEqual((await s.api.getTask(task.id)).result?.results, 5);
});

test.serial("what a proplet publishes reaches an in-process subscriber on its stamped topic; the control plane's publishes reach the proplet", async (t) => {
  const link = s.broker.local();
  const seen: string[] = [];
  const end = await link.subscribe(`${topic(S, 'proplet.metrics')}/#`, (tp) => seen.push(tp));
  const dev = await s.client('dev-1');
  await dev.subscribeAsync(topic(S, 'manager.stop', 'dev-1'), { qos: 1 });
  const got = new Promise<Buffer>((resolve) => dev.once('message', (_t, p) => resolve(p)));
  await dev.publishAsync(topic(S, 'proplet.metrics'), Buffer.from(JSON.stringify({ proplet_id: 'dev-1', cpu_percent: 1 })), { qos: 1 });
  await until(() => seen.length === 1, 'metrics delivered in process');
  t.deepEqual(seen, [`${topic(S, 'proplet.metrics')}/dev-1`], 'the broker stamped the sender into the topic');
  const stop = encode('manager.stop', { id: 't-1' }, 'json');
  const sent = await new Promise<Error | undefined>((resolve) => link.publish(topic(S, 'manager.stop', 'dev-1'), Buffer.from(stop), 1, resolve));
  t.is(sent, undefined);
  t.deepEqual(await got, Buffer.from(stop));
  await end();
});

test.serial("its publishes get the manager account's ACL decision: outside the scope is refused, counted and logged", async (t) => {
  const before = s.broker.dropped().outside_scope ?? 0;
  const err = await new Promise<Error | undefined>((resolve) => s.broker.local().publish('m/elsewhere/c/x/messages/control/manager/start', Buffer.from('{}'), 1, resolve));
  t.regex(err?.message ?? '', /outside_scope/);
  t.is(s.broker.dropped().outside_scope, before + 1);
});
