// The control plane on an external broker: Debian's Mosquitto, started by this
// test on a free loopback port. Nothing but the URL changes.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ControlPlaneClient } from '../control-plane/client.ts';
import { ControlPlane } from '../control-plane/index.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { NodeProplet } from '../proplet-node/proplet.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { scope, until } from './helpers/stack.ts';

let broker: Mosquitto | undefined;
let url: string;

test.before(async () => {
  if (mosquittoMissing()) return;
  await buildExamples();
  broker = await startMosquitto();
  url = broker.url;
});

test.after.always(async () => {
  await broker?.stop();
});

test('tasks run with Mosquitto as the broker', async (t) => {
  if (!broker) {
    if (process.env.PROPELLER_SKIP_MOSQUITTO === '1') return t.pass('mosquitto not installed; skipped on request');
    return t.fail('mosquitto not found: install the mosquitto package (.ci/run does)');
  }
  const cp = new ControlPlane({ scope, mqtt: { url, clientId: 'cp-ext', trustPayloadSender: true }, http: { port: 0, noAuth: true }, health: { checkIntervalMs: 100, offlineThresholdMs: 5000, failureThresholdMs: 10000 } });
  const port = await cp.start();
  const p = new NodeProplet({ id: 'ext-1', url, scope, heartbeatMs: 500 });
  await p.start();
  try {
    await until(() => cp.registry.get('ext-1')?.state === 'alive', 'proplet registered through mosquitto');
    const api = new ControlPlaneClient(`http://127.0.0.1:${port}`);
    const task = await api.createTask({ name: 'add', file: readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64'), inputs: [7, 8] });
    await api.startTask(task.id);
    const done = await api.getTask(task.id, 60_000);
    t.is(done.state, 'Completed', done.error);
    t.is(done.result?.results, 15);
    // credentials live in the external broker, not here
    await t.throwsAsync(api.addProplet('x'), { message: /managed by the external broker/ });
  } finally {
    await p.close();
    await cp.close();
  }
});
