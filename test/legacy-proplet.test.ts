// Backward compatibility: a proplet that speaks Propeller's protocol as it is
// (the Python client of seed 003) works unchanged but for its MQTT username and
// password. It registers with plain JSON, listens on the shared start topic and
// keeps only messages carrying its own proplet_id.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
let add: string;

test.before(async () => {
  await buildExamples();
  add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  s = await startStack({ proplets: 1 });
});
test.after.always(async () => {
  await s?.close();
});

/** The seed's PropletClient, line for line in spirit: topic strings written by hand as a foreign client would. */
async function legacyClient(deviceId: string, secret: string) {
  const base = `m/propeller/c/control/messages`;
  const client = await mqtt.connectAsync(s.broker.url, { protocolVersion: 4, username: deviceId, password: secret, reconnectPeriod: 0 });
  const received: Record<string, unknown>[] = [];
  client.on('message', async (_t, buf) => {
    const payload = JSON.parse(buf.toString());
    received.push(payload);
    if (payload.proplet_id !== deviceId) return;
    // execute the task: the module's export named by the task, with its inputs
    const { instance } = await WebAssembly.instantiate(Buffer.from(payload.file, 'base64'));
    const fn = instance.exports[payload.name] as (...a: number[]) => number;
    const results = fn(...payload.inputs);
    client.publish(`${base}/control/proplet/results`, JSON.stringify({ task_id: payload.id, results, proplet_id: deviceId }));
  });
  await client.subscribeAsync(`${base}/control/manager/start`);
  client.publish(`${base}/control/proplet/create`, JSON.stringify({ proplet_id: deviceId, device_type: 'python-worker', capabilities: ['wasm', 'python'] }));
  client.publish(`${base}/control/proplet/alive`, JSON.stringify({ proplet_id: deviceId, status: 'alive' }));
  return { client, received };
}

test('a Propeller-protocol proplet registers, takes its start on the shared topic and reports results', async (t) => {
  const { secret } = await s.api.addProplet('py-1');
  const { secret: secret2 } = await s.api.addProplet('py-2');
  const py1 = await legacyClient('py-1', secret);
  const py2 = await legacyClient('py-2', secret2);
  await until(() => s.cp.registry.get('py-1')?.state === 'alive' && s.cp.registry.get('py-2')?.state === 'alive', 'legacy proplets registered');
  const p = s.cp.registry.get('py-1')!;
  t.is(p.addressing, 'shared');
  t.is(p.device_type, 'python-worker');
  t.deepEqual(p.capabilities, ['wasm', 'python']);

  const task = await s.api.createTask({ name: 'add', file: add, inputs: [40, 2], proplet_id: 'py-1' });
  await s.api.startTask(task.id);
  const done = await s.api.getTask(task.id, 60_000);
  t.is(done.state, 'Completed', done.error);
  t.is(done.result?.results, 42);
  t.is(done.result?.proplet_id, 'py-1');
  // the shared topic is a broadcast: py-2 saw the start too and ignored it, as Propeller's clients do
  t.true(py2.received.some((m) => m.id === task.id && m.proplet_id === 'py-1'));
  // the node proplet, addressed per proplet, never saw it
  const metrics = await s.cp.metrics.registry.getSingleMetricAsString('propeller_tasks_dispatched_total');
  t.regex(metrics, /addressing="shared"\} 1/);
  await py1.client.endAsync();
  await py2.client.endAsync();
});

test('with credentials but a forged id, a legacy client cannot speak for another proplet', async (t) => {
  const { secret } = await s.api.addProplet('py-3');
  const c = await mqtt.connectAsync(s.broker.url, { protocolVersion: 4, username: 'py-3', password: secret, reconnectPeriod: 0 });
  const closed = new Promise<void>((r) => c.once('close', () => r()));
  c.publish('m/propeller/c/control/messages/control/proplet/create', JSON.stringify({ proplet_id: 'p1', device_type: 'evil' }));
  await closed;
  await new Promise((r) => setTimeout(r, 50));
  t.is(s.cp.registry.get('p1')!.device_type, 'node');
  c.end(true);
});
