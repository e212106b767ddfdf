// One FL round across a fleet of simulated MCU proplets with a tiny model
// (examples/fl-logreg, 9 parameters): round latency from the job's creation to
// its checkpoint, against a baseline measured in the same run on the same
// devices: a plain task fan-out (one hello.wasm task pinned to each device,
// until every result is in). The difference is what FL adds: the model
// download in registry chunks, the update on its own topic, the aggregation.
//
//   npm run bench -- fl-round [--devices 1000] [--rounds 3] [--pool 4]
//
// Everything runs in this process on loopback: broker, control plane, fleet.

import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startFleet } from '../proplet-mcu/sim.ts';
import { scope, startStack, until } from '../test/helpers/stack.ts';
import { printTable } from './stats.ts';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { devices: { type: 'string', default: '1000' }, rounds: { type: 'string', default: '3' }, pool: { type: 'string', default: '4' } } });
  const devices = Number(values.devices);
  const rounds = Number(values.rounds);
  await buildExamples();
  const flWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'fl-logreg.wasm'));
  const hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm')).toString('base64');
  const load0 = loadavg()[0]!;
  const s = await startStack({ health: { checkIntervalMs: 1000, offlineThresholdMs: 120_000, failureThresholdMs: 240_000 } });
  const fleet = await startFleet({
    devices,
    url: s.broker.url,
    scope,
    credentials: (id) => s.creds.issue(id, 'proplet'),
    idStyle: 'name',
    idPrefix: 'flr-',
    heartbeatMs: 30_000,
    runnerPoolSize: Number(values.pool),
    device: { maxTasks: 1, ramBudgetBytes: 512 * 1024 },
  });
  try {
    await fleet.start();
    await fleet.waitOnline(devices, 120_000);
    await until(() => s.cp.registry.size >= devices, 'devices registered', 60_000);
    const ids = fleet.devices.map((d) => d.profile.id);

    // baseline: a plain task to every device, all at once
    const t0 = performance.now();
    const tasks = await Promise.all(ids.map((id) => s.api.createTask({ name: 'hello', file: hello, proplet_id: id }, { start: true })));
    const ids0 = new Set(tasks.map((t) => t.id));
    await until(() => [...ids0].every((id) => ['Completed', 'Failed'].includes(s.cp.tasks.get(id)!.state)), 'fan-out done', 300_000);
    const fanout = performance.now() - t0;
    const failed = [...ids0].filter((id) => s.cp.tasks.get(id)!.state !== 'Completed').length;

    // FL: k = n = every device, `rounds` rounds
    const { ref } = await s.api.pushModel(JSON.parse(readFileSync(new URL('../examples/fl-logreg/initial-model.json', import.meta.url), 'utf8')) as object);
    const { digest } = await s.api.pushModule(flWasm);
    const t1 = performance.now();
    await s.api.createFlJob({
      metadata: { name: 'bench' },
      spec: { experimentId: 'bench', modelRef: ref, taskWasmImage: digest, participants: ids.map((propletId) => ({ propletId })), kOfN: devices, timeoutSeconds: 600, rounds: { total: rounds }, aggregator: { algorithm: 'fedavg' } },
    });
    await until(() => ['Completed', 'Failed'].includes(s.cp.fl.job('bench').status.phase), 'job done', 600_000);
    const total = performance.now() - t1;
    const job = s.cp.fl.job('bench');
    const rs = s.cp.fl.rounds('bench').sort((a, b) => (a.spec.round ?? 0) - (b.spec.round ?? 0));
    const load1 = loadavg()[0]!;
    console.log(`\nfl-round: ${devices} simulated MCU proplets (compact CBOR, 1 KiB packets, models in 512 B chunks), fl-logreg (9 float32), k = n = ${devices}, sandbox pool ${values.pool}, Node ${process.version}, load average ${load0.toFixed(1)} → ${load1.toFixed(1)}; job ${job.status.phase}\n`);
    const rows: (string | number)[][] = [[`baseline: plain task fan-out, 1 hello.wasm per device${failed ? ` (${failed} failed)` : ''}`, fanout, 1]];
    for (const r of rs) {
      const ms = Date.parse(r.status.endTime!) - Date.parse(r.status.startTime!);
      rows.push([`FL ${r.metadata.name}: tasks out → ${r.status.updatesReceived} updates aggregated → checkpoint`, ms, ms / fanout]);
    }
    rows.push([`FL job: ${rounds} rounds, from POST /fl/jobs to Completed`, total, total / fanout]);
    printTable(['measure', 'ms', 'vs fan-out'], rows);
  } finally {
    await fleet.stop();
    await s.close();
  }
}
