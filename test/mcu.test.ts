// The constrained (MCU) proplet profile against the real control plane and
// broker over TCP, next to a node proplet: placement within its budget,
// results shaped like the node proplet's, modules in 512-byte registry chunks
// with resume after a dropped connection, CRC-32 and SHA-256 checks with
// injected faults, the bounded receive buffer, and refusal of what does not
// fit its RAM budget.

import test from 'ava';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import wabtInit from 'wabt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { crc32, decode, encode, type Chunk, type Result } from '../protocol/index.ts';
import { Backoff } from '../proplet-mcu/backoff.ts';
import { McuProplet, type McuPropletOptions } from '../proplet-mcu/device.ts';
import { ModuleDownload, type Ask, type DownloadFaults } from '../proplet-mcu/download.ts';
import { peekStart } from '../proplet-core/start-ref.ts';
import { topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

const MCU = '5d0c6f1e-2b7a-4e93-8f41-a96c3d27b810';
const KiB = 1024;

let s: Stack;
let mcu: McuProplet;
const faults: DownloadFaults = {};
const logs: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
/** Every start the MCU received, by task id. */
const startsOnMcu = new Map<string, number>();
const mcuResults: Result[] = [];
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`));

// ---- modules built here from WAT: a large data section, and a large initial memory

let wabt: Awaited<ReturnType<typeof wabtInit>>;
function wat2wasm(name: string, text: string): Buffer {
  const mod = wabt.parseWat(name, text);
  try {
    mod.resolveNames();
    mod.validate();
    return Buffer.from(mod.toBinary({}).buffer);
  } finally {
    mod.destroy();
  }
}

/** Pseudo-random bytes (xorshift32), so the data section cannot shrink or hide a corrupt byte. */
function noise(n: number, seed: number): Uint8Array {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** FNV-1a over the bytes, as the module computes it over its memory (an i32, signed). */
function fnv1a(b: Uint8Array): number {
  let h = 0x811c9dc5 | 0;
  for (const x of b) h = Math.imul(h ^ x, 16777619);
  return h | 0;
}

const ESCAPED = Array.from({ length: 256 }, (_, b) => '\\' + b.toString(16).padStart(2, '0'));

/** A valid module of about `n` bytes: its data section holds `n` bytes that `check` hashes. */
function bigModule(n: number, seed: number): { bytes: Buffer; expected: number } {
  const data = noise(n, seed);
  const pages = Math.ceil(n / 65536);
  const esc = Array.from(data, (b) => ESCAPED[b]!).join('');
  const bytes = wat2wasm(
    'big.wat',
    `(module
      (memory (export "memory") ${pages})
      (data (i32.const 0) "${esc}")
      (func (export "check") (result i32)
        (local $i i32) (local $h i32)
        (local.set $h (i32.const 0x811c9dc5))
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $i) (i32.const ${n})))
            (local.set $h (i32.mul (i32.xor (local.get $h) (i32.load8_u (local.get $i))) (i32.const 16777619)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (local.get $h)))`,
  );
  return { bytes, expected: fnv1a(data) };
}

let big: { bytes: Buffer; expected: number };

const mcuOptions = (): McuPropletOptions => ({
  id: MCU,
  secret: s.creds.issue(MCU, 'proplet'),
  url: s.broker.url,
  scope,
  deviceType: 'esp32',
  labels: { board: 'esp32-s3' },
  ramBudgetBytes: 512 * KiB,
  maxModuleBytes: 256 * KiB,
  maxTasks: 2,
  rxBufferBytes: 1024,
  chunkSize: 512,
  window: 4,
  heartbeatMs: 1000,
  stallMs: 500,
  backoff: { initialMs: 200, maxMs: 2000 },
  // every test here watches a whole download: no module from flash
  flashCacheBytes: 0,
  faults,
  log: (level, msg, fields) => logs.push({ level, msg, ...(fields ? { fields } : {}) }),
});

test.before(async () => {
  await buildExamples();
  wabt = await wabtInit();
  big = bigModule(204_000, 7);
  s = await startStack({ health: { offlineThresholdMs: 3000, failureThresholdMs: 20_000 } });
  await s.addProplet('node-1');
  mcu = new McuProplet(mcuOptions());
  mcu.on('start', (m) => startsOnMcu.set(m.id, (startsOnMcu.get(m.id) ?? 0) + 1));
  mcu.on('result', (r) => mcuResults.push(r));
  await mcu.start();
  await until(() => s.cp.registry.get(MCU)?.state === 'alive', 'MCU registered');
});
test.after.always(async () => {
  await mcu?.close();
  await s?.close();
});

async function run(spec: Parameters<Stack['api']['createTask']>[0]) {
  const t = await s.api.createTask(spec);
  await s.api.startTask(t.id);
  for (let i = 0; i < 60; i++) {
    const x = await s.api.getTask(t.id, 60_000);
    if (['Completed', 'Failed', 'Stopped'].includes(x.state)) return x;
  }
  throw new Error('task did not finish');
}

test.serial('the MCU registers its constrained profile: compact CBOR, direct addressing, budget and buffer', (t) => {
  const p = s.cp.registry.get(MCU)!;
  t.is(p.encoding, 'cbor');
  t.is(p.addressing, 'direct');
  t.is(p.device_type, 'esp32');
  t.is(p.proplet_type, 'external');
  t.deepEqual(p.labels, { board: 'esp32-s3' });
  t.deepEqual(p.capacity, { memory_bytes: 512 * KiB, max_tasks: 2, max_module_bytes: 256 * KiB, max_packet_bytes: 1024 });
});

test.serial('small tasks run on the MCU or the node proplet, pinned or spread, and report results the same way', async (t) => {
  const add = wasm('add').toString('base64');
  const onMcu = await run({ name: 'add', file: add, inputs: [2, 3], proplet_id: MCU });
  const onNode = await run({ name: 'add', file: add, inputs: [2, 3], proplet_id: 'node-1' });
  for (const x of [onMcu, onNode]) {
    t.is(x.state, 'Completed', x.error);
    t.is(x.result!.results, 5);
    t.is(x.result!.exit_code, 0);
  }
  t.is(onMcu.result!.proplet_id, MCU);
  t.is(onNode.result!.proplet_id, 'node-1');
  t.deepEqual(Object.keys(onMcu.result!).sort(), Object.keys(onNode.result!).sort());
  t.deepEqual(onMcu.history.map((h) => h.state), onNode.history.map((h) => h.state));

  const hello = await run({ name: 'hello', file: wasm('hello').toString('base64'), cli_args: ['a1'], env: { GREETING: 'hi' }, proplet_id: MCU });
  t.is(hello.state, 'Completed', hello.error);
  t.regex(hello.result!.stdout!, /Hello from WebAssembly!\na1\n/);
  t.regex(hello.result!.stdout!, /hi/);

  const spread = await Promise.all(Array.from({ length: 6 }, () => run({ name: 'add', file: add, inputs: [1, 2] })));
  for (const x of spread) t.is(x.state, 'Completed', x.error);
  t.deepEqual([...new Set(spread.map((x) => x.proplet_id))].sort(), [MCU, 'node-1'].sort());

  const trap = await run({ name: 'trap', file: wasm('trap').toString('base64'), proplet_id: MCU });
  t.is(trap.state, 'Failed');
  t.regex(trap.error!, /trap/i);
});

test.serial('tasks over the MCU budget or its module limit only ever land on the node proplet', async (t) => {
  const add = wasm('add').toString('base64');
  const tooBig = bigModule(300_000, 11); // > max_module_bytes 256 KiB
  const tasks = await Promise.all([
    ...Array.from({ length: 4 }, () => run({ name: 'add', file: add, inputs: [1, 1], resources: { memory: '8Mi' } })),
    ...Array.from({ length: 2 }, () => run({ name: 'check', file: tooBig.bytes.toString('base64') })),
  ]);
  for (const x of tasks) {
    t.is(x.state, 'Completed', x.error);
    t.is(x.proplet_id, 'node-1');
    t.deepEqual(x.attempts.map((a) => a.proplet_id), ['node-1']);
    t.false(startsOnMcu.has(x.id));
  }
  t.is(tasks[4]!.result!.results, tooBig.expected);
});

test.serial('a 200 KB module reaches the MCU in 512-byte chunks, is verified and runs', async (t) => {
  t.true(big.bytes.length > 200 * 1000 && big.bytes.length <= 256 * KiB, `module is ${big.bytes.length} bytes`);
  const before = { ...mcu.stats, chunkBytes: new Map(mcu.stats.chunkBytes) };
  const sent0 = (await s.cp.metrics.chunksSent.get()).values[0]?.value ?? 0;
  const x = await run({ name: 'check', file: big.bytes.toString('base64'), proplet_id: MCU });
  t.is(x.state, 'Completed', x.error);
  t.is(x.result!.results, big.expected);
  t.is(mcu.stats.startsChunked - before.startsChunked, 1);
  const chunks = Math.ceil(big.bytes.length / 512);
  t.is(mcu.stats.chunksReceived - before.chunksReceived, chunks);
  t.is((mcu.stats.chunkBytes.get(512) ?? 0) - (before.chunkBytes.get(512) ?? 0), chunks - 1);
  t.is(mcu.stats.chunksCorrupt - before.chunksCorrupt, 0);
  t.is(mcu.budget.usedBytes, 0);
  const sent = ((await s.cp.metrics.chunksSent.get()).values[0]?.value ?? 0) - sent0;
  t.true(sent >= chunks, `the control plane sent ${sent} chunks`);
});

test.serial('a connection dropped mid-transfer resumes from the first missing chunk and completes with the digest verified', async (t) => {
  let dropped = false;
  faults.chunkReceived = (_d, idx) => {
    if (idx === 150 && !dropped) {
      dropped = true;
      setImmediate(() => mcu.dropConnection());
    }
  };
  const before = { ...mcu.stats };
  try {
    const x = await run({ name: 'check', file: big.bytes.toString('base64'), proplet_id: MCU });
    t.is(x.state, 'Completed', x.error);
    t.is(x.result!.results, big.expected);
    t.true(dropped);
    t.is(mcu.stats.disconnects - before.disconnects, 1);
    t.true(mcu.stats.downloadsResumed - before.downloadsResumed >= 1);
    t.is(mcu.stats.chunksReceived - before.chunksReceived, Math.ceil(big.bytes.length / 512));
    t.is(mcu.stats.digestMismatches, before.digestMismatches);
    t.true(x.history.some((h) => h.state === 'Running'));
  } finally {
    delete faults.chunkReceived;
  }
  await until(() => s.cp.registry.get(MCU)?.state === 'alive', 'MCU alive again');
});

test.serial('a corrupted chunk is caught by its CRC-32, asked for again, and the task completes', async (t) => {
  let flipped = -1;
  faults.chunkReceived = (_d, idx, data) => {
    if (idx === 42 && flipped < 0) {
      flipped = idx;
      data[17] = data[17]! ^ 0x20;
    }
  };
  const before = { ...mcu.stats };
  try {
    const x = await run({ name: 'check', file: big.bytes.toString('base64'), proplet_id: MCU });
    t.is(x.state, 'Completed', x.error);
    t.is(x.result!.results, big.expected);
    t.is(flipped, 42);
    t.is(mcu.stats.chunksCorrupt - before.chunksCorrupt, 1);
    t.true(mcu.stats.chunkRerequests - before.chunkRerequests >= 1);
  } finally {
    delete faults.chunkReceived;
  }
});

test.serial('a module whose SHA-256 does not match its digest fails and never runs', async (t) => {
  faults.moduleAssembled = (_d, bytes) => {
    bytes[1000] = bytes[1000]! ^ 1; // passes every chunk CRC, as corrupt storage would
  };
  try {
    const x = await s.api.createTask({ name: 'check', file: big.bytes.toString('base64'), proplet_id: MCU });
    await s.api.startTask(x.id);
    const done = await s.api.getTask(x.id, 60_000);
    t.is(done.state, 'Failed');
    t.regex(done.error!, /module digest mismatch: .* discarded without running/);
    t.false(mcuResults.some((r) => r.task_id === x.id && r.status === 'running'));
    t.false(done.history.some((h) => h.state === 'Running'));
  } finally {
    delete faults.moduleAssembled;
  }
});

test.serial('a payload larger than the receive buffer is dropped and reported; a start so dropped is refused', async (t) => {
  const manager = await s.client('mgr-mcu-test', 'manager');
  const refusals: Result[] = [];
  manager.on('message', (_t, p) => {
    const r = decode('proplet.results', p).msg;
    if (r.proplet_id === MCU && r.status === 'refused') refusals.push(r);
  });
  await manager.subscribeAsync(topic(scope, 'proplet.results', MCU), { qos: 1 }); // the broker delivers on the sender's own topic
  const before = mcu.stats.rxDropped;
  const taskId = '0b7c1a52-9d1e-4f3a-8c5b-2e6f7a8b9c0d';
  const start = encode('manager.start', { v: 1, id: taskId, name: 'add', proplet_id: MCU, attempt: 3, file: wasm('add'), env: { BIG: 'x'.repeat(2000) } }, 'cbor');
  t.true(start.length > 1024);
  await manager.publishAsync(topic(scope, 'manager.start', MCU), start, { qos: 1 });
  const stop = encode('manager.stop', { v: 1, id: taskId, proplet_id: MCU }, 'cbor');
  const bigStop = Buffer.concat([stop, Buffer.alloc(1100)]); // garbage past the buffer: dropped before any parsing
  await manager.publishAsync(topic(scope, 'manager.stop', MCU), bigStop, { qos: 1 });
  await until(() => mcu.stats.rxDropped - before === 2 && refusals.length === 1, 'both dropped, the start refused');
  t.is(refusals[0]!.task_id, taskId);
  t.is(refusals[0]!.attempt, 3);
  t.regex(refusals[0]!.error!, new RegExp(`start message of ${start.length} bytes exceeds this device's receive buffer of 1024 bytes`));
  const lines = logs.filter((l) => l.msg === 'payload dropped: larger than the receive buffer');
  t.true(lines.length >= 2);
  t.is(lines.at(-1)!.fields!.limit, 1024);
  t.false(startsOnMcu.has(taskId));
});

test.serial('a result finished while offline is sent after the reconnect, before the registration, and the task is not run again', async (t) => {
  const before = { ...mcu.stats };
  const onRunning = (r: Result) => {
    if (r.status === 'running') mcu.dropConnection({ offlineMs: 700 });
  };
  mcu.on('result', onRunning);
  try {
    const x = await run({ name: 'sleep', file: wasm('sleep').toString('base64'), inputs: [50], proplet_id: MCU });
    t.is(x.state, 'Completed', x.error);
    t.is(x.result!.results, 50);
    t.is(x.attempts.length, 1, 'not placed again');
    t.is(mcu.stats.resultsDeferred - before.resultsDeferred, 1);
    t.is(mcu.stats.disconnects - before.disconnects, 1);
  } finally {
    mcu.off('result', onRunning);
  }
  await until(() => s.cp.registry.get(MCU)?.state === 'alive', 'MCU alive again');
});

test.serial('a task that does not fit the RAM budget is refused, and the control plane never sends it there again', async (t) => {
  // 9 pages of initial memory = 576 KiB: over the 512 KiB budget, which placement cannot know from the task
  const fat = wat2wasm('fat.wat', '(module (memory 9) (func (export "seven") (result i32) (i32.const 7)))');
  const tasks = await Promise.all(Array.from({ length: 4 }, () => run({ name: 'seven', file: fat.toString('base64') })));
  let refusedOnMcu = 0;
  for (const x of tasks) {
    t.is(x.state, 'Completed', x.error);
    t.is(x.result!.results, 7);
    t.is(x.proplet_id, 'node-1');
    const onMcu = x.attempts.filter((a) => a.proplet_id === MCU);
    t.true(onMcu.length <= 1);
    if (onMcu.length === 1) {
      refusedOnMcu++;
      t.is(onMcu[0]!.outcome, 'refused');
      t.regex(onMcu[0]!.error!, /needs 589\d+ bytes of RAM \(module \d+ \+ linear memory 589824\), \d+ of the 524288-byte budget free/);
      t.deepEqual(x.excluded_proplets, [MCU]);
      t.is(startsOnMcu.get(x.id), 1);
    }
  }
  t.true(refusedOnMcu >= 1, 'round robin offered at least one of them to the MCU first');
  // Only the MCU matches this one: once refused, nothing can take it, and the placement
  // passes that keep retrying it (every second) never offer it to the MCU again.
  const only = await s.api.createTask({ name: 'seven', file: fat.toString('base64'), proplet_selector: { match_device_types: ['esp32'] } });
  await s.api.startTask(only.id);
  await until(async () => (await s.api.getTask(only.id)).excluded_proplets?.includes(MCU) === true, 'refused by the MCU');
  await new Promise((r) => setTimeout(r, 2500));
  const waiting = await s.api.getTask(only.id);
  t.is(waiting.state, 'Pending');
  t.regex(waiting.pending_reason ?? '', /refused it before/);
  t.is(startsOnMcu.get(only.id), 1);
  t.deepEqual(waiting.attempts.map((a) => [a.proplet_id, a.outcome]), [[MCU, 'refused']]);
  await s.api.stopTask(only.id);
  t.is(mcu.budget.usedBytes, 0);
});

test('a download keeps at most a window in flight, asks again for what is stale, and fails on a registry error', async (t) => {
  const bytes = noise(5000, 3);
  const digest = 'sha256:' + createHash('sha256').update(bytes).digest('hex');
  const asks: Ask[] = [];
  const d = new ModuleDownload({ digest, size: bytes.length, chunkSize: 512, window: 4, maxBytes: 1 << 20, stallMs: 60, request: (a) => (asks.push(a), true) });
  const chunk = (idx: number): Chunk => {
    const data = bytes.subarray(idx * 512, Math.min(bytes.length, (idx + 1) * 512));
    return { digest, idx, total: 10, data, crc32: crc32(data), size: bytes.length };
  };
  t.deepEqual(asks, [{ next: 0, window: 4 }]);
  d.onChunk(chunk(0));
  t.is(asks.length, 1, 'one of four arrived: less than half the window free');
  d.onChunk(chunk(1));
  t.deepEqual(asks[1], { next: 4, window: 2 });
  // 2 and 3 never come: after the stall time they are asked again by index
  await until(() => asks.some((a) => 'missing' in a), 'stale chunks asked again', 2000);
  const again = asks.find((a): a is { missing: number[] } => 'missing' in a)!;
  t.true(again.missing.includes(2) && again.missing.includes(3) && again.missing.length <= 4, JSON.stringify(again));
  for (const i of [2, 3, 4, 5, 6, 7, 8, 9]) d.onChunk(chunk(i));
  t.deepEqual(await d.promise, bytes);
  t.true(asks.every((a) => !('window' in a) || a.window <= 4));

  const e = new ModuleDownload({ digest, size: bytes.length, chunkSize: 512, window: 4, maxBytes: 1 << 20, request: () => true });
  e.onChunk({ digest, idx: 0, total: 1, data: new Uint8Array(0), crc32: 0, error: `unknown module ${digest}` });
  await t.throwsAsync(e.promise, { message: /the registry cannot serve sha256:.*: unknown module/ });
  const f = new ModuleDownload({ digest, size: bytes.length, chunkSize: 512, window: 4, maxBytes: 1 << 20, request: () => true });
  f.onChunk({ ...chunk(0), total: 5 });
  await t.throwsAsync(f.promise, { message: /cut the module into 5 chunks, expected 10 of 512 bytes/ });
  const g = new ModuleDownload({ digest, size: bytes.length, chunkSize: 512, window: 4, maxBytes: 4096, request: () => true });
  await t.throwsAsync(g.promise, { message: /module of 5000 bytes exceeds this device's limit of 4096/ });
});

test('the cheap start peek reads task id, proplet id and attempt from a prefix only', (t) => {
  const full = encode('manager.start', { v: 1, id: '9a41e7c2-63d8-4f0b-b5a9-0e7d2c81f4a6', name: 'add', proplet_id: MCU, attempt: 2, env: { A: 'x'.repeat(5000) } }, 'cbor');
  t.deepEqual(peekStart(full.subarray(0, 80)), { id: '9a41e7c2-63d8-4f0b-b5a9-0e7d2c81f4a6', proplet_id: MCU, attempt: 2 });
  t.deepEqual(peekStart(encode('manager.start', { id: 'task-1' }, 'cbor')), { id: 'task-1' });
  t.is(peekStart(full.subarray(0, 10)), undefined);
  t.is(peekStart(Buffer.from('{"id":"x"}')), undefined);
});

test('reconnect backoff grows with jitter up to its cap and resets', (t) => {
  let r = 0;
  const b = new Backoff({ initialMs: 100, maxMs: 1000, factor: 2 }, () => (r++ % 2 === 0 ? 0 : 1));
  const delays = Array.from({ length: 7 }, () => b.next());
  t.deepEqual(delays, [50, 200, 200, 800, 500, 1000, 500]);
  b.reset();
  t.is(b.ceiling(), 100);
});

test.serial('a device that heartbeats within its keepalive sends no PINGREQ (what it sends keeps the connection alive)', async (t) => {
  const id = 'mcu-quiet';
  // not mcuOptions(): it issues the main MCU's secret again, which cuts that device's connection
  const dev = new McuProplet({ id, secret: s.creds.issue(id, 'proplet'), url: s.broker.url, scope, deviceType: 'esp32', keepaliveSec: 2, heartbeatMs: 200, log: () => {} });
  await dev.start();
  const pings: number[] = [];
  const client = (dev as unknown as { client: { on(e: 'packetsend', f: (p: { cmd: string }) => void): void } }).client;
  client.on('packetsend', (p) => {
    if (p.cmd === 'pingreq') pings.push(Date.now());
  });
  const from = dev.stats.heartbeats;
  // 20 heartbeats at QoS 0: two keepalive periods at least
  await until(() => dev.stats.heartbeats >= from + 20, '20 heartbeats');
  await dev.close();
  t.deepEqual(pings, []);
});

test.serial('both proplet kinds send heartbeats at QoS 0, the one after a task at QoS 1 behind its result, everything else at QoS 1', async (t) => {
  const watch = await s.client(`watch-${Date.now()}`, 'debug');
  const seen = new Map<string, number>();
  /** Per proplet, what it sent after the registration, in arrival order: kind, status of a result, QoS. */
  const order = new Map<string, string[]>();
  watch.on('message', (tp, payload, packet) => {
    const [kind, id] = tp.split('/').slice(-2) as [string, string];
    const key = `${kind}/${id} qos ${packet.qos}`;
    seen.set(key, (seen.get(key) ?? 0) + 1);
    const status = kind === 'results' ? ` ${decode('proplet.results', payload, { propletId: id }).msg.status}` : '';
    order.set(id, [...(order.get(id) ?? []), `${kind}${status} qos ${packet.qos}`]);
  });
  await watch.subscribeAsync([topic(scope, 'proplet.alive') + '/+', topic(scope, 'proplet.create') + '/+', topic(scope, 'proplet.results') + '/+'], { qos: 1 });
  const unknownBefore = await unknownPropletDrops();
  const node = await s.addProplet(`qos-node-${Date.now()}`);
  await until(() => [...seen.keys()].filter((k) => k.includes(MCU) || k.includes(node.id)).length >= 3, 'heartbeats of both and a registration');
  await until(() => [...seen.keys()].some((k) => k.startsWith(`alive/${MCU}`)), 'an MCU heartbeat');
  const keys = [...seen.keys()].filter((k) => k.includes(MCU) || k.includes(node.id)).sort();
  t.deepEqual(keys, [`alive/${MCU} qos 0`, `alive/${node.id} qos 0`, `create/${node.id} qos 1`].sort(), 'delivered at the QoS they were published with (a QoS 1 subscription)');
  // a heartbeat sent with the registration could overtake it and be dropped as from an unknown proplet
  t.is(await unknownPropletDrops(), unknownBefore, 'no heartbeat arrived before its registration');

  const add = wasm('add').toString('base64');
  for (const id of [MCU, node.id]) {
    order.set(id, []);
    const x = await run({ name: 'add', file: add, inputs: [2, 3], proplet_id: id });
    t.is(x.state, 'Completed', x.error);
    await until(() => order.get(id)!.includes('alive qos 1'), `the heartbeat after the task on ${id}`);
    const sent = order.get(id)!.filter((m) => m !== 'alive qos 0'); // periodic ones may fall anywhere
    // the node proplet leaves running out when the result is ready in the turn that loaded the task
    const expected = id === MCU || sent[0] === 'results running qos 1' ? ['results running qos 1', 'results completed qos 1', 'alive qos 1'] : ['results completed qos 1', 'alive qos 1'];
    t.deepEqual(sent.slice(0, expected.length), expected, `${id}: the heartbeat after the task comes behind its result`);
  }
  await watch.endAsync();
});

async function unknownPropletDrops(): Promise<number> {
  const m = await s.cp.metrics.messagesRejected.get();
  return m.values.filter((v) => v.labels.reason === 'unknown_proplet').reduce((a, v) => a + v.value, 0);
}
