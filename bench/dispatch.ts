// Dispatch: tasks created, started and awaited through the HTTP API, run on
// local node proplets over MQTT. Baselines measured in the same run: the bare
// wasm runner (the floor: no HTTP, no MQTT) and an empty HTTP round trip.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { WasmRunner } from '../wasm-runtime/index.ts';
import { startStack } from '../test/helpers/stack.ts';
import { printTable, summarize, type Summary } from './stats.ts';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { tasks: { type: 'string', default: '1000' }, concurrency: { type: 'string', default: '50' }, proplets: { type: 'string', default: '2' } } });
  const n = Number(values.tasks);
  const conc = Number(values.concurrency);
  await buildExamples();
  const add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm'));
  const file = add.toString('base64');

  // Baseline 1: the runner alone, warm pool, same module.
  const runner = new WasmRunner({ poolSize: 4 });
  const floor: number[] = [];
  for (let i = 0; i < n + 50; i++) {
    const t0 = performance.now();
    const r = await runner.run({ taskId: `b${i}`, module: add, name: 'add', args: ['add'], env: {}, inputs: [1, 2], timeoutMs: 5000, maxMemoryBytes: 1 << 24 });
    if (!r.ok) throw new Error(`runner baseline failed: ${r.error}`);
    if (i >= 50) floor.push(performance.now() - t0);
  }
  await runner.close();

  const s = await startStack({ proplet: { maxTasks: 16, heartbeatMs: 5000 } });
  for (let i = 1; i <= Number(values.proplets); i++) await s.addProplet(`bench-${i}`);

  // Baseline 2: an empty HTTP round trip to the same API.
  const http: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await s.api.health();
    http.push(performance.now() - t0);
  }

  // Propeller's way: three requests. And the one-request form: POST /tasks?start=true&wait=...
  const threeCalls = async () => {
    const task = await s.api.createTask({ name: 'add', file, inputs: [1, 2] });
    await s.api.startTask(task.id);
    return s.api.getTask(task.id, 10_000);
  };
  const oneCall = () => s.api.createTask({ name: 'add', file, inputs: [1, 2] }, { start: true, waitMs: 10_000 });
  const timed = async (f: typeof oneCall) => {
    const t0 = performance.now();
    const done = await f();
    const client = performance.now() - t0;
    if (done.state !== 'Completed') throw new Error(`task ${done.id} ended ${done.state}: ${done.error}`);
    return { client, server: Date.parse(done.finished_at!) - Date.parse(done.created_at) };
  };
  const sequential = async (f: typeof oneCall) => {
    for (let i = 0; i < 50; i++) await timed(f); // warm-up
    const client: number[] = [];
    const server: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < n; i++) {
      const r = await timed(f);
      client.push(r.client);
      server.push(r.server);
    }
    return { client, server, perSec: n / ((performance.now() - t0) / 1000) };
  };
  const concurrent = async (f: typeof oneCall) => {
    const client: number[] = [];
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: conc }, async () => {
        while (next++ < n) client.push((await timed(f)).client);
      }),
    );
    return { client, perSec: n / ((performance.now() - t0) / 1000) };
  };
  const seq3 = await sequential(threeCalls);
  const seq1 = await sequential(oneCall);
  const par1 = await concurrent(oneCall);
  await s.close();

  const row = (name: string, x: Summary, perSec?: number) => [name, x.n, x.p50, x.p99, x.max, perSec ?? '-'];
  console.log(`\ndispatch: ${n} tasks (add.wasm, ${add.length} B inline), ${values.proplets} local node proplets, Node ${process.version}\n`);
  printTable(
    ['measure', 'n', 'p50 ms', 'p99 ms', 'max ms', 'tasks/s'],
    [
      row('baseline: runner alone (warm pool)', summarize(floor)),
      row('baseline: empty HTTP round trip', summarize(http)),
      row('create, start, get?wait: sequential', summarize(seq3.client), seq3.perSec),
      row('POST /tasks?start&wait: sequential', summarize(seq1.client), seq1.perSec),
      row('  same, server clock (created→finished)', summarize(seq1.server)),
      row(`POST /tasks?start&wait: ${conc} concurrent`, summarize(par1.client), par1.perSec),
    ],
  );
  const sq = summarize(seq1.client);
  const fl = summarize(floor);
  console.log(`\nratio one-request sequential p50 / runner-alone p50: ${(sq.p50 / fl.p50).toFixed(1)}x; goal p50 <= 2 ms, p99 <= 10 ms: ${sq.p50 <= 2 && sq.p99 <= 10 ? 'met' : 'not met'}`);
}
