// One identity per message, decided once from the authenticated connection.
//
// An attacker holding only its own credentials ('mallory') names the sender of a
// message twice (duplicate keys, the text name beside the compact integer key, in
// CBOR and in JSON) so that the broker's check and the control plane's decoder
// could read two different senders: itself for the broker, its victim for the
// control plane. Over real TCP with mqtt.js clients, for every message a proplet
// sends, on its per-proplet topic and on the shared one: the forgery is refused
// and counted, and the victim's registration, liveness and task stay untouched.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Decoder } from 'cbor-x';
import type { MqttClient } from 'mqtt';
import { decode, encode, encodeCbor, type MessageKind, type Start } from '../protocol/index.ts';
import { flUpdateTopic, propletSubscriptions, topic } from '../topics/index.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { scope as S, startStack, until, type Stack } from './helpers/stack.ts';

const VICTIM = 'victim';
const MALLORY = 'mallory';

let s: Stack;
let addWasm: string;
let victim: MqttClient;
const victimStarts: Start[] = [];
const victimChunks: Buffer[] = [];
let taskId: string;
let attempt: number | undefined;
let digest: string;

async function counter(name: string, labels: Record<string, string>): Promise<number> {
  const m = s.cp.metrics.registry.getSingleMetric(name);
  if (!m) return 0;
  const { values } = await m.get();
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}
const received = (kind: string): Promise<number> => counter('propeller_messages_received_total', { kind });
const rejected = (reason: string): Promise<number> => counter('propeller_messages_rejected_total', { reason });

function victimIntact(): string | undefined {
  const p = s.cp.registry.get(VICTIM);
  if (!p) return 'victim unregistered';
  if (p.state !== 'alive') return `victim ${p.state}`;
  if (p.device_type !== 'honest' || p.addressing !== 'direct') return `victim re-registered as ${p.device_type}/${p.addressing}`;
  const task = s.cp.tasks.get(taskId);
  if (task?.state !== 'Running') return `victim's task ${task?.state}`;
  return undefined;
}

test.before(async () => {
  await buildExamples();
  addWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  s = await startStack();
  if (process.env.ID_DEBUG) (s.broker as unknown as { log: (...a: unknown[]) => void }).log = (...a: unknown[]) => console.error(...a);
  victim = await s.client(VICTIM);
  victim.on('message', (t, payload) => {
    if (t === topic(S, 'manager.start', VICTIM)) victimStarts.push(decode('manager.start', payload).msg);
    if (t === topic(S, 'registry.server', VICTIM)) victimChunks.push(payload);
  });
  await victim.subscribeAsync(propletSubscriptions(S, VICTIM), { qos: 1 });
  await victim.publishAsync(topic(S, 'proplet.create', VICTIM), encode('proplet.create', { proplet_id: VICTIM, device_type: 'honest', addressing: 'direct', capacity: { max_tasks: 10 } }, 'json'), { qos: 1 });
  await until(() => s.cp.registry.get(VICTIM)?.state === 'alive', 'victim registered');
  // the victim runs a task that never ends by itself
  const task = await s.api.createTask({ name: 'add', file: addWasm, inputs: [1, 2], proplet_id: VICTIM });
  taskId = task.id;
  await s.api.startTask(taskId);
  await until(() => victimStarts.some((m) => m.id === taskId), 'start reached the victim');
  const start = victimStarts.find((m) => m.id === taskId)!;
  attempt = start.attempt;
  digest = start.digest!;
  await victim.publishAsync(topic(S, 'proplet.results', VICTIM), encode('proplet.results', { proplet_id: VICTIM, task_id: taskId, attempt, status: 'running' }, 'json'), { qos: 1 });
  await until(() => s.cp.tasks.get(taskId)?.state === 'Running', 'victim runs its task');
});

test.after.always(async () => {
  await s?.close();
});

/** What each message would do to the victim if the control plane took the second sender. */
function harmful(kind: MessageKind): Record<string, unknown> {
  switch (kind) {
    case 'proplet.create':
      return { device_type: 'forged', addressing: 'shared' };
    case 'proplet.alive':
      return { status: 'offline' };
    case 'proplet.results':
      return { task_id: taskId, attempt, status: 'completed', results: 'forged' };
    case 'proplet.metrics':
      return { cpu_percent: 99 };
    case 'registry.proplet':
      return { digest, chunk_size: 64, next: 0, window: 1 };
    case 'fl.update':
      return { round_id: 'r1', task_id: taskId, num_samples: 1, error: 'forged' };
    default:
      throw new Error(kind);
  }
}

const cborDecoder = new Decoder({ useRecords: false, mapsAsObjects: false } as ConstructorParameters<typeof Decoder>[0]);

/** A CBOR map written pair by pair, so that one key can appear twice (no encoder would write that). */
function cborMap(pairs: [unknown, unknown][]): Buffer {
  return Buffer.concat([Buffer.from([0xa0 | pairs.length]), ...pairs.flatMap(([k, v]) => [encodeCbor(k), encodeCbor(v)])]);
}

/** The other fields of a forged message, in compact CBOR form (integer keys). */
function cborRest(kind: MessageKind): [unknown, unknown][] {
  const m = cborDecoder.decode(encode(kind, { proplet_id: 'x', ...harmful(kind) } as never, 'cbor')) as Map<number, unknown>;
  m.delete(1);
  return [...m];
}

/** The other fields as JSON members, without braces. */
function jsonRest(kind: MessageKind): string {
  return encode(kind, { proplet_id: 'x', ...harmful(kind) } as never, 'json').toString().slice(1, -1).replace('"proplet_id":"x",', '').replace(',"proplet_id":"x"', '');
}

/** Ways of naming the sender twice: the attacker's own id first (what a first-wins reader sees), the victim's last. */
const WAYS: Record<string, (kind: MessageKind) => Buffer> = {
  'CBOR duplicate integer key': (k) => cborMap([[1, MALLORY], ...cborRest(k), [1, VICTIM]]),
  'CBOR duplicate text key': (k) => cborMap([['proplet_id', MALLORY], ...cborRest(k), ['proplet_id', VICTIM]]),
  'CBOR text name, then integer key': (k) => cborMap([['proplet_id', MALLORY], ...cborRest(k), [1, VICTIM]]),
  'CBOR integer key, then text name': (k) => cborMap([[1, MALLORY], ...cborRest(k), ['proplet_id', VICTIM]]),
  'JSON duplicate key': (k) => Buffer.from(`{"proplet_id":"${MALLORY}",${jsonRest(k)},"proplet_id":"${VICTIM}"}`),
  'JSON duplicate key, escaped': (k) => Buffer.from(`{"proplet_id":"${MALLORY}",${jsonRest(k)},"proplet\\u005fid":"${VICTIM}"}`),
};

const KINDS: MessageKind[] = ['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'registry.proplet', 'fl.update'];

function topicsFor(kind: MessageKind): [string, string][] {
  if (kind === 'fl.update') return [['per-proplet', flUpdateTopic(S, 'r1', MALLORY)]];
  const k = kind as Exclude<MessageKind, 'fl.update' | 'manager.start' | 'manager.stop' | 'registry.server'>;
  return [
    ['per-proplet', topic(S, k, MALLORY)],
    ['shared', topic(S, k)],
  ];
}

/** Publishes one forged message from a fresh attacker connection; resolves once it was refused or reached the control plane. */
async function forge(kind: MessageKind, t: string, payload: Buffer): Promise<{ closed: boolean }> {
  const before = await received(kind);
  const c = await s.client(MALLORY);
  let closed = false;
  c.on('close', () => (closed = true));
  c.publish(t, payload, { qos: 1 });
  await until(async () => closed || (await received(kind)) > before, 'the forgery refused or delivered');
  // an honest marker from the victim, through the same broker and subscription, comes after anything forged
  const marks = await received('proplet.alive');
  await victim.publishAsync(topic(S, 'proplet.alive', VICTIM), encode('proplet.alive', { proplet_id: VICTIM, status: 'alive' }, 'json'), { qos: 1 });
  await until(async () => (await received('proplet.alive')) > marks, 'the marker processed');
  c.end(true);
  return { closed };
}

for (const kind of KINDS) {
  for (const [where, t] of topicsFor(kind)) {
    for (const [way, build] of Object.entries(WAYS)) {
      test.serial(`${kind} on the ${where} topic, ${way}: refused, counted, the victim untouched`, async (tt) => {
        const payload = build(kind);
        const dropsBefore = s.broker.dropped().duplicate_field ?? 0;
        const chunksBefore = victimChunks.length;
        const receivedBefore = await received(kind);
        const { closed } = await forge(kind, t, payload);
        tt.true(closed, 'the broker closed the forger\'s connection');
        tt.is((s.broker.dropped().duplicate_field ?? 0) - dropsBefore, 1, 'counted as duplicate_field');
        const marker = kind === 'proplet.alive' ? 1 : 0; // forge() sends one honest heartbeat
        tt.is(await received(kind), receivedBefore + marker, 'the control plane never saw it');
        tt.is(victimIntact(), undefined);
        tt.is(victimChunks.length, chunksBefore, 'no chunk went to the victim');
      });
    }
  }
}

test.serial('the control plane refuses a map that names the sender twice even when a trusted account delivers it', async (t) => {
  // behind an external broker nothing may have checked the payload: the decoder refuses on its own
  const manager = await s.client('relay', 'manager');
  const before = await rejected('duplicate_field');
  await manager.publishAsync(topic(S, 'proplet.results', MALLORY), WAYS['CBOR text name, then integer key']!('proplet.results'), { qos: 1 });
  await manager.publishAsync(topic(S, 'proplet.alive', MALLORY), WAYS['JSON duplicate key']!('proplet.alive'), { qos: 1 });
  await until(async () => (await rejected('duplicate_field')) - before === 2, 'both refused by the decoder');
  t.is(victimIntact(), undefined);
});

test.serial('a proplet message without a proplet id in its topic is refused by the control plane', async (t) => {
  // only the embedded broker's stamping puts the id there; a message that skipped it is not trusted
  const manager = await s.client('relay2', 'manager');
  const before = await rejected('no_topic_id');
  await manager.publishAsync(topic(S, 'proplet.alive'), encode('proplet.alive', { proplet_id: VICTIM, status: 'offline' }, 'json'), { qos: 1 });
  await until(async () => (await rejected('no_topic_id')) - before === 1, 'refused for want of a topic id');
  t.is(victimIntact(), undefined);
});

test.serial('Propeller-style JSON on the shared topics: the broker delivers it on the sender\'s own topic, and a result without proplet_id is the sender\'s', async (t) => {
  const spy = await s.client('spy', 'manager');
  const seen: string[] = [];
  spy.on('message', (tp) => seen.push(tp));
  await spy.subscribeAsync(topic(S, 'proplet.alive', 'legacy-1'), { qos: 1 });
  const legacy = await s.client('legacy-1');
  await legacy.subscribeAsync(topic(S, 'manager.start'), { qos: 1 });
  const starts: Start[] = [];
  legacy.on('message', (_tp, p) => starts.push(decode('manager.start', p).msg));
  await legacy.publishAsync(topic(S, 'proplet.create'), Buffer.from(JSON.stringify({ proplet_id: 'legacy-1', device_type: 'python-worker' })), { qos: 1 });
  await legacy.publishAsync(topic(S, 'proplet.alive'), Buffer.from(JSON.stringify({ proplet_id: 'legacy-1', status: 'alive' })), { qos: 1 });
  await until(() => s.cp.registry.get('legacy-1')?.state === 'alive' && seen.length > 0, 'legacy proplet registered');
  t.deepEqual(seen, [topic(S, 'proplet.alive', 'legacy-1')]);
  const task = await s.api.createTask({ name: 'add', file: addWasm, inputs: [2, 3], proplet_id: 'legacy-1' });
  await s.api.startTask(task.id);
  await until(() => starts.some((m) => m.id === task.id), 'start on the shared topic');
  // no proplet_id in the result: attributed to the authenticated sender
  await legacy.publishAsync(topic(S, 'proplet.results'), Buffer.from(JSON.stringify({ task_id: task.id, results: 5 })), { qos: 1 });
  const done = await s.api.getTask(task.id, 60_000);
  t.is(done.state, 'Completed', done.error);
  t.is(done.result?.proplet_id, 'legacy-1');
});

// ---- the three attacks of issue 12, end to end ----

test.serial('attack: completing another proplet\'s running task with an aliased sender fails', async (t) => {
  const { closed } = await forge('proplet.results', topic(S, 'proplet.results'), WAYS['CBOR text name, then integer key']!('proplet.results'));
  t.true(closed);
  t.is(s.cp.tasks.get(taskId)?.state, 'Running');
  t.is(victimIntact(), undefined);
});

test.serial('attack: marking another proplet offline with an aliased sender fails', async (t) => {
  const { closed } = await forge('proplet.alive', topic(S, 'proplet.alive'), WAYS['CBOR text name, then integer key']!('proplet.alive'));
  t.true(closed);
  t.is(s.cp.registry.get(VICTIM)?.state, 'alive');
});

test.serial('attack: re-registering another proplet with shared addressing to read its starts fails', async (t) => {
  const { closed } = await forge('proplet.create', topic(S, 'proplet.create'), WAYS['CBOR text name, then integer key']!('proplet.create'));
  t.true(closed);
  // the attacker listens on the shared start topic; the victim's next start, env secret included, must not come there
  const eve = await s.client(MALLORY);
  const stolen: string[] = [];
  eve.on('message', (_tp, p) => stolen.push(p.toString('latin1')));
  await eve.subscribeAsync(topic(S, 'manager.start'), { qos: 1 });
  const task = await s.api.createTask({ name: 'add', file: addWasm, inputs: [1, 1], proplet_id: VICTIM, env: { SECRET: 'hunter2' } });
  await s.api.startTask(task.id);
  await until(() => victimStarts.some((m) => m.id === task.id), 'the victim got its start on its own topic');
  t.is(victimStarts.find((m) => m.id === task.id)?.env?.SECRET, 'hunter2');
  t.false(stolen.some((p) => p.includes('hunter2')), 'the secret never reached the shared topic');
  t.is(s.cp.registry.get(VICTIM)?.addressing, 'direct');
});

test.serial('a result larger than its proplet\'s declared memory is refused before parsing (the profile bounds it)', async (t) => {
  const tiny = await s.client('tiny-mcu');
  await tiny.publishAsync(topic(S, 'proplet.create', 'tiny-mcu'), encode('proplet.create', { proplet_id: 'tiny-mcu', device_type: 'esp32', capacity: { memory_bytes: 8192 } }, 'cbor'), { qos: 1 });
  await until(() => s.cp.registry.get('tiny-mcu')?.state === 'alive', 'tiny registered');
  const before = await rejected('too_large');
  const big = encode('proplet.results', { proplet_id: 'tiny-mcu', task_id: 't', status: 'completed', stdout: 'x'.repeat(64 * 1024) }, 'cbor');
  await tiny.publishAsync(topic(S, 'proplet.results', 'tiny-mcu'), big, { qos: 1 });
  await until(async () => (await rejected('too_large')) - before >= 1, 'refused as too large for its profile');
  t.is((await rejected('too_large')) - before, 1, 'refused once, as too large for its profile');
});
