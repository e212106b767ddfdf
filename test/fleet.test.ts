// A thousand simulated MCU proplets on the embedded broker, in the test
// process: each with its own MQTT connection and credentials, connecting at a
// bounded rate, heartbeating every second against an offline threshold of
// ten (room for a busy machine's lag). No proplet may be declared offline while they all heartbeat.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startFleet, type Fleet } from '../proplet-mcu/sim.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

const N = 1000;
const HEARTBEAT = 1000;
let s: Stack;
let fleet: Fleet;
const transitions: string[] = [];

test.before(async () => {
  await buildExamples();
  // a start-ack deadline far above the default: a thousand simulators in this
  // process on a loaded machine answer late, and retrying them is start-ack.test.ts' subject, not this file's
  s = await startStack({
    health: { offlineThresholdMs: 10 * HEARTBEAT, failureThresholdMs: 30 * HEARTBEAT, checkIntervalMs: 250 },
    cp: { startAckTimeoutMs: 60_000 },
  });
  s.cp.registry.on('state', (p, from, reason) => transitions.push(`${p.id}: ${from} -> ${p.state} (${reason})`));
});
test.after.always(async () => {
  await fleet?.stop();
  await s?.close();
});

async function offlineTransitions(): Promise<number> {
  const m = await s.cp.metrics.propletTransitions.get();
  return m.values.filter((v) => v.labels.to !== 'alive').reduce((a, v) => a + v.value, 0);
}

test.serial(`${N} simulated devices connect at a bounded rate, register and heartbeat with no false offline`, async (t) => {
  const t0 = performance.now();
  fleet = await startFleet({
    devices: N,
    url: s.broker.url,
    scope,
    credentials: (id) => s.creds.issue(id, 'proplet'),
    heartbeatMs: HEARTBEAT,
    connectRate: 400,
    device: { ramBudgetBytes: 128 * 1024, maxTasks: 1 },
  });
  // bounds a wait for what never happens; a busy machine only makes it later
  await fleet.waitOnline(N, 180_000);
  await until(() => s.cp.registry.size === N && s.cp.registry.list().every((p) => p.state === 'alive'), `${N} proplets alive`, 60_000);
  const online = performance.now() - t0;
  t.log(`${N} devices online and registered in ${Math.round(online)} ms`);
  const p = s.cp.registry.list()[0]!;
  t.is(p.encoding, 'cbor');
  t.is(p.addressing, 'direct');
  t.is(p.device_type, 'esp32');

  // a window longer than the offline threshold
  const WINDOW = 11 * HEARTBEAT;
  const received0 = await aliveCount();
  const before = fleet.devices.map((d) => d.stats.heartbeats);
  await new Promise((r) => setTimeout(r, WINDOW));
  const sent = fleet.devices.map((d, i) => d.stats.heartbeats - before[i]!);
  const received = (await aliveCount()) - received0;
  t.log(`${sent.reduce((a, b) => a + b, 0)} heartbeats sent, ${received} received by the control plane in ${WINDOW} ms`);
  t.true(sent.every((n) => n >= 2), `every device kept heartbeating (fewest: ${Math.min(...sent)})`);
  t.deepEqual(transitions, [], 'no proplet changed state');
  t.is(await offlineTransitions(), 0);
  t.true(s.cp.registry.list().every((x) => x.state === 'alive'));
  const c = fleet.counts();
  t.is(c.connected, N);
  t.is(c.reconnecting, 0);
});

test.serial('tasks placed on the fleet run and report', async (t) => {
  const add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  const finals = new Map<string, string[]>();
  for (const d of fleet.devices) {
    d.on('result', (r) => {
      if (r.status !== 'running') finals.set(r.task_id, [...(finals.get(r.task_id) ?? []), `${d.id}: ${r.status}`]);
    });
  }
  const before = fleet.counts().tasksCompleted;
  const tasks = await Promise.all(Array.from({ length: 100 }, (_, i) => s.api.createTask({ name: 'add', file: add, inputs: [i, 1] }, { start: true, waitMs: 60_000 })));
  const ids = new Set(fleet.devices.map((d) => d.id));
  for (const [i, x] of tasks.entries()) {
    t.is(x.state, 'Completed', x.error);
    t.is(x.result!.results, i + 1);
    t.true(ids.has(x.proplet_id!));
  }
  t.log(`100 tasks ran on ${new Set(tasks.map((x) => x.proplet_id)).size} devices`);
  // a start acknowledged late on a loaded machine moves on and is stopped where it was late: that run is not a completion
  const twice = [...finals].filter(([, l]) => l.filter((x) => x.endsWith(': completed')).length > 1);
  t.deepEqual(twice, [], `no task completed twice (every final result: ${JSON.stringify([...finals].filter(([, l]) => l.length > 1))})`);
  t.is(fleet.counts().tasksCompleted - before, 100);
  t.deepEqual(transitions, []);
});

async function aliveCount(): Promise<number> {
  const m = await s.cp.metrics.messagesReceived.get();
  return m.values.find((v) => v.labels.kind === 'proplet.alive')?.value ?? 0;
}
