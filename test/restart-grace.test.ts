// After kill -9 and a restart of `propeller serve`, a task placed before the
// restart is not placed again while its proplet reconnects: a proplet that
// finished it meanwhile reports without it and then delivers the result, and
// that result completes the task on its first attempt.

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { decode, encode, type Start } from '../protocol/index.ts';
import { propletSubscriptions, scope as mkScope, topic } from '../topics/index.ts';
import { startServe, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const scope = mkScope('propeller', 'control');
const cleanup: (() => unknown)[] = [];
test.before(() => buildExamples());
test.after.always(async () => {
  for (const f of cleanup.reverse()) await f();
});

/** A proplet driven by hand over real MQTT: it records the starts it is sent. */
async function proplet(brokerUrl: string, id: string, secret: string, starts: Start[], running: { task_id: string; attempt: number }[]): Promise<MqttClient> {
  const c = await mqtt.connectAsync(brokerUrl, { protocolVersion: 4, username: id, password: secret, reconnectPeriod: 0 });
  cleanup.push(() => c.endAsync(true));
  c.on('message', (t, payload) => {
    if (t.includes('/manager/start/')) starts.push(decode('manager.start', payload).msg);
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', capacity: { max_tasks: 4 }, running }, 'json'), { qos: 1 });
  return c;
}

test('kill -9, restart: a task whose proplet finished it while the control plane was down completes on attempt 1, not placed again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-grace-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  const args = ['--mqtt-port', String(await freePort()), '--http-port', String(await freePort()), '--data-dir', dir];
  // liveness far away: only the reconnect grace decides here
  const env = { HEALTH_CHECK_INTERVAL: '1s', OFFLINE_THRESHOLD: '60s', FAILURE_THRESHOLD: '120s' };
  let serve: Serve = await startServe(args, env);
  cleanup.push(() => serve.kill());
  const { secret } = await serve.api.addProplet('dev');
  const starts: Start[] = [];
  const before = await proplet(serve.brokerUrl, 'dev', secret, starts, []);
  await until(async () => (await serve.api.getProplet('dev')).state === 'alive', 'dev registered');
  const hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm')).toString('base64');
  const task = await serve.api.createTask({ name: 'hello', file: hello, proplet_id: 'dev' }, { start: true });
  await until(() => starts.length === 1, 'start received');
  const attempt = starts[0]!.attempt!;
  await before.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: 'dev', task_id: task.id, attempt, status: 'running' }, 'json'), { qos: 1 });
  await until(async () => (await serve.api.getTask(task.id)).state === 'Running', 'running');
  // let the attempt age past the in-flight grace a report is normally given
  await new Promise((r) => setTimeout(r, 6_000));

  await serve.kill('SIGKILL');
  await before.endAsync(true);
  serve = await startServe(args, env);

  // the proplet finished the task while the control plane was down: it reports without it, then sends the result
  const after = await proplet(serve.brokerUrl, 'dev', secret, starts, []);
  await until(async () => (await serve.api.getProplet('dev')).last_seen > new Date(Date.now() - 5000).toISOString(), 'dev reconnected');
  // give a wrongly re-placed start time to show up before the result settles it
  await new Promise((r) => setTimeout(r, 1000));
  await after.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: 'dev', task_id: task.id, attempt, status: 'completed', exit_code: 0, stdout: 'done\n' }, 'json'), { qos: 1 });
  const done = await serve.api.getTask(task.id, 20_000);
  t.is(done.state, 'Completed');
  t.is(done.attempt, 1);
  t.is(starts.length, 1, 'no second start was sent');
  t.is(done.result?.stdout, 'done\n');
});
