// A result the control plane drops at its edge (over its proplet's size bound,
// malformed, an unknown field) fails its task at once with the reason, when the
// topic names the proplet and the task id can be read; the task is not left to
// be re-run into a misleading "no longer runs it". Real broker, real clients.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { decode, encode, encodeCbor, type Start } from '../protocol/index.ts';
import { topic } from '../topics/index.ts';
import { scope as S, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
let addWasm: string;
test.before(async () => {
  await buildExamples();
  addWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  s = await startStack();
});
test.after.always(() => s?.close());

const counter = async (c: { get(): Promise<{ values: { labels: Record<string, unknown>; value: number }[] }> }, labels: Record<string, string>): Promise<number> =>
  (await c.get()).values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
const rejected = (reason: string) => counter(s.cp.metrics.messagesRejected, { kind: 'proplet.results', reason });
const ignored = (reason: string) => counter(s.cp.metrics.resultsIgnored, { reason });

/** A hand-driven device with 8 KiB of memory: registers on its own topics and hands back each start it gets. */
async function device(id: string): Promise<{ c: MqttClient; starts: Start[] }> {
  const c = await s.client(id);
  const starts: Start[] = [];
  c.on('message', (_t, p) => starts.push(decode('manager.start', p).msg as Start));
  await c.subscribeAsync(topic(S, 'manager.start', id), { qos: 1 });
  await c.publishAsync(topic(S, 'proplet.create', id), encode('proplet.create', { proplet_id: id, device_type: 'esp32', encoding: 'cbor', addressing: 'direct', capacity: { memory_bytes: 8192 } }, 'cbor'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', `${id} registered`);
  return { c, starts };
}

async function started(d: { c: MqttClient; starts: Start[] }, id: string): Promise<Start> {
  const task = await s.api.createTask({ name: 'add', file: addWasm, inputs: [1, 2], proplet_id: id });
  await s.api.startTask(task.id);
  await until(() => d.starts.some((m) => m.id === task.id), 'the start reached the device');
  const start = d.starts.find((m) => m.id === task.id)!;
  // it acknowledges: the task runs there
  await d.c.publishAsync(topic(S, 'proplet.results', id), encode('proplet.results', { proplet_id: id, task_id: task.id, attempt: start.attempt, status: 'running' }, 'cbor'), { qos: 1 });
  await until(async () => (await s.api.getTask(task.id)).state === 'Running', 'running');
  return start;
}

const cases: [string, (id: string, st: Start) => Buffer, string, RegExp][] = [
  ['over the proplet\'s memory bound', (id, st) => encode('proplet.results', { proplet_id: id, task_id: st.id, attempt: st.attempt, status: 'completed', stdout: 'x'.repeat(64 * 1024) }, 'cbor'), 'too_large', /^result refused: too_large: result of \d+ bytes from a proplet with 8192 bytes of memory$/],
  ['with an unknown compact key', (id, st) => encodeCbor(new Map<number | string, unknown>([['proplet_id', id], ['task_id', st.id], ['attempt', st.attempt], ['status', 'completed'], [99, 1]])), '', /^result refused: \w+: .*99/],
  ['with a malformed field', (id, st) => encodeCbor(new Map<number | string, unknown>([[0, 1], ['proplet_id', id], ['task_id', st.id], ['attempt', st.attempt], ['status', 'done?']])), '', /^result refused: \w+: .*status/],
];

for (const [i, [what, payload, reason, error]] of cases.entries()) {
  test.serial(`a result ${what} fails its task at once, with the reason; the next result of that attempt is ignored`, async (t) => {
    const id = `mcu-${i}`;
    const d = await device(id);
    const st = await started(d, id);
    await d.c.publishAsync(topic(S, 'proplet.results', id), payload(id, st), { qos: 1 });
    await until(async () => (await s.api.getTask(st.id)).state === 'Failed', 'the task failed');
    const task = await s.api.getTask(st.id);
    t.regex(task.error ?? '', error);
    t.is(task.attempts?.length ?? 1, 1, 'not re-run');
    if (reason) t.true((await rejected(reason)) >= 1, 'counted as a dropped message');
    // the device tries again with a result that fits: that attempt is over
    const before = await ignored('not_running_there');
    await d.c.publishAsync(topic(S, 'proplet.results', id), encode('proplet.results', { proplet_id: id, task_id: st.id, attempt: st.attempt, status: 'completed', results: 3 }, 'cbor'), { qos: 1 });
    await until(async () => (await ignored('not_running_there')) > before, 'the late result ignored');
    t.is((await s.api.getTask(st.id)).state, 'Failed');
  });
}

test.serial("a device's refused result naming another proplet's task changes nothing there", async (t) => {
  const victim = await device('victim');
  const st = await started(victim, 'victim');
  const eve = await device('eve');
  const before = await ignored('not_running_there');
  await eve.c.publishAsync(topic(S, 'proplet.results', 'eve'), encode('proplet.results', { proplet_id: 'eve', task_id: st.id, attempt: st.attempt, status: 'completed', stdout: 'x'.repeat(64 * 1024) }, 'cbor'), { qos: 1 });
  await until(async () => (await ignored('not_running_there')) > before, 'attributed to eve, who does not run it');
  t.is((await s.api.getTask(st.id)).state, 'Running');
});

test.serial('a result whose task id cannot be read is only dropped and counted', async (t) => {
  const d = await device('mcu-garbled');
  const st = await started(d, 'mcu-garbled');
  const before = await rejected('invalid');
  await d.c.publishAsync(topic(S, 'proplet.results', 'mcu-garbled'), encodeCbor(new Map([['proplet_id', 'mcu-garbled'], ['status', 'completed']])), { qos: 1 });
  await until(async () => (await rejected('invalid')) > before, 'dropped: no task id');
  t.is((await s.api.getTask(st.id)).state, 'Running');
});
