// A start published straight on MQTT, as another manager would: it reaches only
// the proplet it names, and the result comes back over MQTT. The control plane
// stops a task it never started once a heartbeat names it running, so the
// proplet here sends no periodic heartbeat while the test runs, however long
// its module takes to compile on a busy machine.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { decode, encode } from '../protocol/index.ts';
import { topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`)).toString('base64');

test.before(async () => {
  await buildExamples();
  s = await startStack();
  await s.addProplet('p1', { heartbeatMs: 3_600_000 });
});
test.after.always(async () => {
  await s?.close();
});

test('a start published over MQTT reaches only its proplet, and results come back over MQTT', async (t) => {
  const manager = await s.client('mgr-test', 'manager');
  const results: unknown[] = [];
  // the broker delivers p1's results on p1's own topic, whichever topic p1 published on
  await manager.subscribeAsync(topic(scope, 'proplet.results', 'p1'), { qos: 1 });
  manager.on('message', (_t, payload) => results.push(decode('proplet.results', payload).msg));
  // a raw direct-addressed peer listening on its own topic must not see p1's start
  const other = await s.client('bystander');
  const seen: string[] = [];
  await other.subscribeAsync(topic(scope, 'manager.start', 'bystander'), { qos: 1 });
  other.on('message', (tp) => seen.push(tp));
  const id = '11111111-2222-4333-8444-555555555555';
  await manager.publishAsync(
    topic(scope, 'manager.start', 'p1'),
    encode('manager.start', { id, name: 'add', proplet_id: 'p1', file: Buffer.from(wasm('add'), 'base64'), inputs: [20, 22] }, 'json'),
    { qos: 1 },
  );
  await until(() => results.some((r) => (r as { task_id: string; status: string }).task_id === id && (r as { status: string }).status === 'completed'), 'result over MQTT');
  const done = results.find((r) => (r as { task_id: string; status: string }).task_id === id && (r as { status: string }).status === 'completed') as { results: number; proplet_id: string };
  t.is(done.results, 42);
  t.is(done.proplet_id, 'p1');
  t.deepEqual(seen, []);
  // the control plane never started this task, so it counts the result as ignored
  const metrics = await (await fetch(`${s.apiUrl}/metrics`)).text();
  t.regex(metrics, /propeller_results_ignored_total\{reason="unknown_task"\} [1-9]/);
});
