// End to end over real TCP: broker, control plane, HTTP API and node proplets.

import test from 'ava';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`)).toString('base64');

test.before(async () => {
  await buildExamples();
  s = await startStack({ proplets: 2 });
});
test.after.always(async () => {
  await s?.close();
});

async function run(spec: Parameters<Stack['api']['createTask']>[0]) {
  const t = await s.api.createTask(spec);
  await s.api.startTask(t.id);
  for (let i = 0; i < 100; i++) {
    const x = await s.api.getTask(t.id, 60_000);
    if (['Completed', 'Failed', 'Stopped'].includes(x.state)) return x;
  }
  throw new Error('task did not finish');
}

test('a WASI module runs through the HTTP API and its output comes back', async (t) => {
  const task = await run({ name: 'hello', file: wasm('hello'), cli_args: ['a1'], env: { GREETING: 'hi there' } });
  t.is(task.state, 'Completed', task.error);
  t.regex(task.result!.stdout!, /Hello from WebAssembly!/);
  t.regex(task.result!.stdout!, /a1/);
  t.regex(task.result!.stdout!, /hi there/);
  t.is(task.result!.exit_code, 0);
  t.deepEqual(
    task.history.map((h) => h.state),
    ['Pending', 'Scheduled', 'Running', 'Completed'],
  );
  for (const h of task.history) t.false(Number.isNaN(Date.parse(h.at)));
});

test('a core module export is called with inputs and its value returned', async (t) => {
  const add = await run({ name: 'add', file: wasm('add'), inputs: [2, 3] });
  t.is(add.state, 'Completed', add.error);
  t.is(add.result!.results, 5);
  const fib = await run({ name: 'fib', file: wasm('add'), inputs: [90] });
  t.is(String(fib.result!.results), '2880067194370816120');
  const r = await s.api.results(add.id);
  t.is(r.results, 5);
  t.is(r.state, 'Completed');
});

test('a module is fetched from an http image_url; a missing one fails with the reason', async (t) => {
  const bytes = Buffer.from(wasm('add'), 'base64');
  const srv = createServer((req, res) => {
    if (req.url === '/add.wasm') res.writeHead(200, { 'content-type': 'application/wasm' }).end(bytes);
    else res.writeHead(404).end();
  }).listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  try {
    const ok = await run({ name: 'add', image_url: `${base}/add.wasm`, inputs: [4, 5] });
    t.is(ok.state, 'Completed', ok.error);
    t.is(ok.result!.results, 9);
    const missing = await run({ name: 'add', image_url: `${base}/nope.wasm` });
    t.is(missing.state, 'Failed');
    t.regex(missing.error!, /cannot fetch .*nope.wasm: HTTP 404/);
  } finally {
    srv.close();
  }
});

test('a pinned task runs on its proplet', async (t) => {
  for (const id of ['p1', 'p2', 'p2']) {
    const task = await run({ name: 'add', file: wasm('add'), inputs: [1, 1], proplet_id: id });
    t.is(task.result!.proplet_id, id);
    t.is(task.proplet_id, id);
  }
});

test('round robin spreads tasks over both proplets', async (t) => {
  const tasks = await Promise.all(Array.from({ length: 6 }, () => run({ name: 'add', file: wasm('add'), inputs: [1, 2] })));
  const on = new Set(tasks.map((x) => x.proplet_id));
  t.deepEqual([...on].sort(), ['p1', 'p2']);
});

test('trap, time limit and memory limit end Failed with a clear reason; the proplet stays healthy', async (t) => {
  const trap = await run({ name: 'trap', file: wasm('trap'), proplet_id: 'p1' });
  t.is(trap.state, 'Failed');
  t.regex(trap.error!, /trap/i);
  const loop = await run({ name: 'loop', file: wasm('loop'), proplet_id: 'p1', timeout_ms: 300 });
  t.is(loop.state, 'Failed');
  t.regex(loop.error!, /time limit of 300 ms/);
  const grow = await run({ name: 'grow', file: wasm('grow'), proplet_id: 'p1', resources: { memory: '2Mi' } });
  t.is(grow.state, 'Failed');
  t.regex(grow.error!, /memory limit/);
  const after = await run({ name: 'hello', file: wasm('hello'), proplet_id: 'p1' });
  t.is(after.state, 'Completed');
  t.is(s.cp.registry.get('p1')!.state, 'alive');
});

test('stop kills a running daemon task', async (t) => {
  const d = await s.api.createTask({ name: 'daemon', file: wasm('daemon'), daemon: true, proplet_id: 'p2' });
  await s.api.startTask(d.id);
  await until(async () => (await s.api.getTask(d.id)).state === 'Running', 'daemon running');
  await s.api.stopTask(d.id);
  t.is((await s.api.getTask(d.id)).state, 'Stopped');
  await until(() => s.proplets.find((p) => p.id === 'p2')!.runningTasks === 0, 'daemon killed on the proplet');
});

test('metrics carry the seed names', async (t) => {
  const text = await (await fetch(`${s.apiUrl}/metrics`)).text();
  for (const name of ['propeller_proplets_total', 'propeller_tasks_total', 'propeller_task_duration_seconds', 'propeller_proplet_health_status']) {
    t.regex(text, new RegExp(`^# TYPE ${name} `, "m"), name);
  }
  t.regex(text, /propeller_proplet_health_status\{proplet_id="p1",device_type="node"\} 1/);
});
