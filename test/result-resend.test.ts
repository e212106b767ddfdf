// A broker restarting empty forgets the control plane's subscriptions: a proplet
// that reconnects first publishes the result it held to nobody (QoS 1, acknowledged
// by the broker, gone). The control plane, hearing the proplet report without the
// task, asks how it ended (a stop for that attempt); the proplet kept the result
// and sends it again: the task completes once, on its first attempt. Real Mosquitto,
// `propeller serve --broker` and a node proplet as processes.

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { mosquittoMissing, startMosquitto } from './helpers/mosquitto.ts';
import { startProplet, startServe, type Proc } from './helpers/procs.ts';
import { tcpRelay } from './helpers/relay.ts';
import { freePort, until } from './helpers/stack.ts';

const missing = mosquittoMissing();
const finished = (p: Proc, id: string) => p.logs.filter((l) => l.msg === 'task finished' && l.status === 'completed' && l.task_id === id).length;

(missing ? test.skip : test)('a result published into a broker that restarted empty is asked for again: the task completes once, on attempt 1', async (t) => {
  await buildExamples();
  const mosquitto = await startMosquitto();
  t.teardown(() => mosquitto.stop());
  // the control plane behind a relay: it comes back after the proplet did
  const relay = await tcpRelay(mosquitto.port);
  t.teardown(() => relay.close());
  const dir = mkdtempSync(join(tmpdir(), 'propeller-resend-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const health = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '2s', FAILURE_THRESHOLD: '4s', RECONNECT_GRACE: '1s' };
  const cp = await startServe(['--broker', relay.url, '--domain', 'resend', '--http-port', String(await freePort()), '--data-dir', dir, '--api-token', 'resend-token'], health);
  t.teardown(() => cp.kill());
  const proplet = await startProplet(['--id', 'rs-1', '--broker', mosquitto.url, '--heartbeat', '300ms', '--domain', 'resend']);
  t.teardown(() => proplet.kill());
  await until(async () => (await cp.api.listProplets()).proplets.some((p) => p.id === 'rs-1' && p.state === 'alive'), 'the proplet registered');

  const file = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
  const task = await cp.api.createTask({ name: 'sleep', file, inputs: [3000] }, { start: true });
  await until(async () => (await cp.api.getTask(task.id)).state === 'Running', 'the task runs');
  await mosquitto.restart(async () => {
    relay.open = false;
    await until(() => proplet.logs.some((l) => l.msg === 'result kept for the next connection' && l.task_id === task.id), 'the task finished while the broker was away', 60_000);
  });
  // the proplet is back first: its result goes to a broker where nobody subscribes yet
  await until(() => finished(proplet, task.id) === 1, 'the proplet sent its result into the empty broker', 60_000);
  relay.open = true;
  await until(async () => (await cp.api.getTask(task.id)).state === 'Completed', 'the task completed', 60_000);
  const done = await cp.api.getTask(task.id);
  if (done.attempts.length !== 1) t.log(JSON.stringify(done.history));
  t.is(done.attempts.length, 1, 'not placed again');
  t.is(done.result?.attempt, 1);
  t.true(proplet.logs.some((l) => l.msg === 'result sent again' && l.task_id === task.id && l.attempt === 1), 'the proplet answered the question with the result it kept');
  // a later task runs normally, and by then a second run of the first would have been seen
  const next = await cp.api.createTask({ name: 'sleep', file, inputs: [10] }, { start: true });
  await until(async () => (await cp.api.getTask(next.id)).state === 'Completed', 'a new task runs');
  t.is(finished(proplet, task.id), 1, 'run once');
});
