// What a proplet cannot take or send in full, over real MQTT: a start it
// cannot take is answered with an explicit refusal naming the reason (both
// proplet kinds), and output over the result cap arrives once, cut with its
// marker, within the protocol's limits.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { McuProplet } from '../proplet-mcu/device.ts';
import { encode, type Encoding, type Result, type Start } from '../protocol/index.ts';
import { topic } from '../topics/index.ts';
import { TRUNCATED_MARKER } from '../wasm-runtime/index.ts';
import { scope, startStack, until, watchResults, type Stack } from './helpers/stack.ts';

const MCU = '0b5f7c1e-8a2d-4c3b-9e6f-1a2b3c4d5e6f';
let s: Stack;
let manager: MqttClient;
let mcu: McuProplet;
let results: Result[] = [];
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`));

test.before(async () => {
  await buildExamples();
  // liveness is not what this file tests: thresholds no busy machine reaches
  s = await startStack({ health: { offlineThresholdMs: 120_000, failureThresholdMs: 240_000 } });
  await s.addProplet('big', { memoryBytes: 8 << 20 });
  mcu = new McuProplet({ id: MCU, secret: s.creds.issue(MCU, 'proplet'), url: s.broker.url, scope, ramBudgetBytes: 256 << 10, rxBufferBytes: 2048, heartbeatMs: 1000 });
  await mcu.start();
  await until(() => s.cp.registry.get(MCU)?.state === 'alive', 'MCU registered');
  // the control plane's role: it may publish starts on any proplet's topic and read results
  ({ client: manager, results } = await watchResults(s, 'limits-test-manager'));
});
test.after.always(async () => {
  await mcu?.close();
  await s?.close();
});

async function refusalOf(proplet: string, start: Start, encoding: Encoding): Promise<Result> {
  await manager.publishAsync(topic(scope, 'manager.start', proplet), encode('manager.start', start, encoding), { qos: 1 });
  await until(() => results.some((r) => r.task_id === start.id && r.status !== 'running'), `the answer to ${start.id}`);
  const answers = results.filter((r) => r.task_id === start.id);
  return answers.at(-1)!;
}

test('node: a start whose module is over the protocol limit (17 MiB) is refused with the limit, not dropped', async (t) => {
  const r = await refusalOf('big', { v: 1, id: 'huge-module', proplet_id: 'big', attempt: 1, name: 'x', file: new Uint8Array(17 << 20) }, 'json');
  t.is(r.status, 'refused');
  t.is(r.attempt, 1);
  t.regex(r.error!, /cannot take this start .*file.*16777216/);
});

test('node: a start over its RAM budget is refused with the numbers', async (t) => {
  const r = await refusalOf('big', { v: 1, id: 'too-much-memory', proplet_id: 'big', attempt: 2, name: 'add', file: wasm('add'), memory_bytes: 64 << 20 }, 'json');
  t.is(r.status, 'refused');
  t.is(r.attempt, 2);
  t.regex(r.error!, /needs \d+ bytes of RAM \(module \d+ \+ linear memory 67108864\), 8388608 of the 8388608-byte budget free/);
});

test('MCU: a start naming a module over its limit is refused before any chunk is asked for', async (t) => {
  const before = mcu.stats.chunkRequests;
  const r = await refusalOf(MCU, { v: 1, id: 'mcu-huge', proplet_id: MCU, attempt: 1, name: 'x', digest: `sha256:${'a'.repeat(64)}`, module_size: 17 << 20 }, 'cbor');
  t.is(r.status, 'refused');
  t.regex(r.error!, /module of 17825792 bytes exceeds this proplet's limit of \d+/);
  t.is(mcu.stats.chunkRequests, before);
});

test('MCU: a start that fits the buffer but does not decode is refused with the reason', async (t) => {
  const start = { v: 1, id: 'mcu-bad-name', proplet_id: MCU, attempt: 4, name: 'n'.repeat(300), file: wasm('add') } as Start;
  const r = await refusalOf(MCU, start, 'cbor');
  t.is(r.status, 'refused');
  t.is(r.attempt, 4);
  t.regex(r.error!, /cannot take this start: .*name/);
});

test('output over the 1 MiB cap arrives once, cut with its marker, and the task completes on its first attempt', async (t) => {
  // hello prints its arguments: 256 of 4 KiB are just over the cap
  const task = await s.api.createTask({ name: 'hello', file: wasm('hello').toString('base64'), cli_args: Array.from({ length: 256 }, (_, i) => String(i % 10).repeat(4096)), proplet_id: 'big' });
  await s.api.startTask(task.id);
  await until(async () => ['Completed', 'Failed'].includes((await s.api.getTask(task.id)).state), 'the task ends');
  const done = await s.api.getTask(task.id);
  t.is(done.state, 'Completed', done.error);
  t.is(done.attempts.length, 1, JSON.stringify(done.attempts));
  const stdout = done.result?.stdout ?? '';
  t.true(stdout.endsWith(TRUNCATED_MARKER));
  t.true(Buffer.byteLength(stdout) <= 1 << 20);
  t.is(results.filter((r) => r.task_id === task.id && r.status === 'completed').length, 1);
});
