// Each scheduler with three proplets over real MQTT: how tasks spread, groups,
// selectors and hybrid type preference, through the HTTP API.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Algorithm } from '../control-plane/model.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startStack, type Stack } from './helpers/stack.ts';

let sleep: string;
test.before(async () => {
  await buildExamples();
  sleep = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
});

async function stackWith(type: Algorithm): Promise<Stack> {
  const s = await startStack({ cp: { scheduler: { type } } });
  await s.addProplet('edge-1', { labels: { zone: 'edge' }, deviceType: 'rpi', capabilities: ['wasm', 'sensor'] });
  await s.addProplet('edge-2', { labels: { zone: 'edge' }, deviceType: 'rpi', capabilities: ['wasm'] });
  await s.addProplet('pod-1', { labels: { zone: 'cloud' }, propletType: 'k8s', maxTasks: 8 });
  return s;
}

/** Starts n sleeping tasks and returns how many landed on each proplet while they run. */
async function spread(s: Stack, n: number, extra: Record<string, unknown> = {}, ms = 300) {
  const tasks = await Promise.all(Array.from({ length: n }, () => s.api.createTask({ name: 'sleep', file: sleep, inputs: [ms], ...extra }, { start: true })));
  const per: Record<string, number> = {};
  for (const x of tasks) {
    const t = await s.api.getTask(x.id);
    const at = t.proplet_id ?? 'pending';
    per[at] = (per[at] ?? 0) + 1;
  }
  const done = await Promise.all(tasks.map((x) => s.api.getTask(x.id, 60_000)));
  for (const d of done) if (d.state !== 'Completed') throw new Error(`task ${d.id} ended ${d.state}: ${d.error ?? d.pending_reason}`);
  return per;
}

for (const type of ['round-robin', 'least-loaded', 'resource-aware', 'random'] as Algorithm[]) {
  test(`${type}: tasks spread over the proplets`, async (t) => {
    const s = await stackWith(type);
    try {
      const per = await spread(s, 6);
      t.is(per.pending, undefined);
      const used = Object.keys(per).length;
      if (type === 'random') t.true(used >= 2, JSON.stringify(per));
      else t.is(used, 3, JSON.stringify(per));
      if (type === 'round-robin' || type === 'least-loaded') t.deepEqual(Object.values(per), [2, 2, 2], JSON.stringify(per));
    } finally {
      await s.close();
    }
  });
}

test('hybrid: edge keywords go to external proplets, compute keywords and k8s preference to pods', async (t) => {
  const s = await stackWith('hybrid');
  try {
    const edge = await spread(s, 2, { labels: { kind: 'sensor' } });
    t.true(Object.keys(edge).every((k) => k === 'edge-1' || k === 'edge-2'), JSON.stringify(edge));
    t.is(Object.values(edge).reduce((a, b) => a + b, 0), 2);
    const compute = await spread(s, 2, { labels: { kind: 'ml' } });
    t.deepEqual(Object.keys(compute), ['pod-1'], JSON.stringify(compute));
    const pref = await spread(s, 1, { preferred_proplet_type: 'k8s' });
    t.deepEqual(Object.keys(pref), ['pod-1']);
  } finally {
    await s.close();
  }
});

test('selectors, groups and their limits decide placement; a task nobody fits waits with the reason', async (t) => {
  const s = await stackWith('round-robin');
  try {
    const cap = await spread(s, 2, { proplet_selector: { match_capabilities: ['sensor'] } });
    t.deepEqual(Object.keys(cap), ['edge-1']);
    const g = await fetch(`${s.apiUrl}/proplet-groups`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'edge-devices', selector: { matchLabels: { zone: 'edge' } }, scheduling: { algorithm: 'least-loaded', maxTasksPerProplet: 1 } }),
    });
    t.is(g.status, 201);
    const group = await g.json();
    t.is(group.status.total_proplets, 2);
    t.is(group.status.available_proplets, 2);
    // long tasks, stopped once placement is seen, so a slow machine cannot free a slot meanwhile
    const inGroup = await Promise.all([0, 1, 2].map((i) => s.api.createTask({ name: 'sleep', labels: { i: String(i) }, file: sleep, inputs: [30_000], proplet_group: 'edge-devices' }, { start: true })));
    await new Promise((r) => setTimeout(r, 100));
    const where = await Promise.all(inGroup.map(async (x) => (await s.api.getTask(x.id)).proplet_id ?? 'pending'));
    // one per proplet at most: the third waits until one frees up
    t.deepEqual([...where].sort(), ['edge-1', 'edge-2', 'pending']);
    t.regex((await s.api.getTask(inGroup[where.indexOf('pending')]!.id)).pending_reason ?? '', /at capacity/);
    const T0 = Date.now();
    await Promise.all(inGroup.map((x) => s.api.stopTask(x.id)));
    t.log('stopped', Date.now() - T0);
    const none = await s.api.createTask({ name: 'x', file: sleep, inputs: [1], proplet_selector: { match_device_types: ['esp32'] } }, { start: true });
    await new Promise((r) => setTimeout(r, 50));
    const waiting = await s.api.getTask(none.id);
    t.is(waiting.state, 'Pending');
    t.regex(waiting.pending_reason!, /device type/);
    const unknown = await s.api.createTask({ name: 'x', file: sleep, inputs: [1], proplet_group: 'nope' }, { start: true });
    await new Promise((r) => setTimeout(r, 50));
    t.regex((await s.api.getTask(unknown.id)).pending_reason!, /proplet group nope does not exist/);
    const bad = await fetch(`${s.apiUrl}/proplet-groups`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'g', scheduling: { algorithm: 'fastest' } }) });
    t.is(bad.status, 400);
    t.is((await bad.json()).field, 'scheduling.algorithm');
    t.log('before close', Date.now() - T0);
  } finally {
    const T1 = Date.now();
    await s.close();
    console.log('close took', Date.now() - T1);
  }
});
