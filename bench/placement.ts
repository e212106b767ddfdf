// Placement: decisions per CPU-second of placeBatch over synthetic fleets of
// 1k, 10k and 100k proplets (--sizes), per algorithm, against a baseline
// measured in the same run on the same input: the linear reference of the
// same algorithm (one scan of every proplet per decision) over the first
// --baseline tasks (or --baseline-ms, whichever ends first). The indexed
// results must equal the linear ones: a mismatch is printed and fails the
// run. Rates are per CPU-second of this process (the machine may be shared);
// the wall rate is printed beside them.
// Goal: ≥ 20,000 decisions per CPU-second for every algorithm at every size
// (kube-scheduler's own load-test threshold is 100 pods/s).

import { availableParallelism, loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Algorithm, Proplet, PropletGroup, Task } from '../control-plane/model.ts';
import { DEFAULT_HYBRID, INITIAL_STATE, placeBatch, type Load, type SchedDecision, type SchedulerConfig } from '../control-plane/scheduling/index.ts';
import { printTable } from './stats.ts';
import { ALGORITHMS } from '../control-plane/groups.ts';
import { seeded } from '../test/helpers/seeded.ts';

const GOAL = 20_000;


const KiB = 1024;
const MiB = 1024 * KiB;
const T0 = '2024-01-01T00:00:00.000Z';

export interface Fleet {
  proplets: Proplet[];
  load: Map<string, Load>;
  groups: Map<string, PropletGroup>;
  tasks: Task[];
}

export function fleet(nProplets: number, nTasks: number, seed = 1): Fleet {
  const rnd = seeded(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const zones = ['north', 'south', 'east', 'west'];
  const proplets: Proplet[] = [];
  const load = new Map<string, Load>();
  for (let i = 0; i < nProplets; i++) {
    const r = rnd();
    const kind = r < 0.4 ? 'esp32' : r < 0.65 ? 'rpi' : 'node';
    const k8s = kind === 'node' && rnd() < 0.85;
    const caps = ['wasm'];
    if (kind === 'esp32') caps.push('wifi', ...(rnd() < 0.7 ? ['sensor'] : []));
    if (kind === 'rpi') caps.push('gpio', ...(rnd() < 0.4 ? ['sensor'] : []), ...(rnd() < 0.2 ? ['camera'] : []));
    const gpu = kind === 'node' && rnd() < 0.15;
    if (gpu) caps.push('gpu');
    const capacity =
      kind === 'esp32'
        ? { cpu_millis: 240, memory_bytes: 512 * KiB, max_tasks: 16, max_module_bytes: 256 * KiB }
        : kind === 'rpi'
          ? { cpu_millis: 4000, memory_bytes: 1024 * MiB, max_tasks: 16, max_module_bytes: 16 * MiB }
          : { cpu_millis: 8000, memory_bytes: 8192 * MiB, max_tasks: 16 };
    const s = rnd();
    const id = `proplet-${String(i).padStart(5, '0')}`;
    proplets.push({
      id,
      name: id,
      device_type: kind,
      proplet_type: k8s ? 'k8s' : 'external',
      capabilities: caps,
      labels: { zone: pick(zones), tier: kind === 'node' ? 'cloud' : 'edge', ...(gpu ? { accelerator: 'gpu' } : {}) },
      capacity,
      encoding: 'json',
      addressing: 'direct',
      state: s < 0.03 ? 'offline' : s < 0.04 ? 'failed' : 'alive',
      state_since: T0,
      registered_at: T0,
      last_seen: T0,
      running_tasks: 0,
      alive_history: [],
    });
    // Already assigned: 0..12 tasks (6 on average), so the fleet's 16 slots each run out partway.
    const n = Math.floor(rnd() * 13);
    if (n > 0) load.set(id, { tasks: n, cpu_millis: Math.min(capacity.cpu_millis, n * (kind === 'esp32' ? 10 : 100)), memory_bytes: n * (kind === 'esp32' ? 16 * KiB : 32 * MiB) });
  }
  const groups = new Map<string, PropletGroup>([
    ['edge-devices', { name: 'edge-devices', selector: { match_labels: { tier: 'edge' } }, scheduling: { algorithm: 'round-robin', max_tasks_per_proplet: 14 }, created_at: T0 }],
    ['gpu-proplets', { name: 'gpu-proplets', selector: { match_labels: { accelerator: 'gpu' } }, scheduling: { algorithm: 'least-loaded', max_tasks_per_proplet: 15 }, created_at: T0 }],
  ]);
  const kinds = [
    { names: ['sensor-read', 'iot-telemetry', 'edge-filter', 'device-poll'], cpu: [5, 20], mem: [8 * KiB, 48 * KiB], mod: [16 * KiB, 200 * KiB] },
    { names: ['ml-inference', 'batch-etl', 'compute-hash', 'ai-summarize'], cpu: [200, 1500], mem: [16 * MiB, 512 * MiB], mod: [1 * MiB, 8 * MiB] },
    { names: ['transform', 'resize', 'notify', 'aggregate'], cpu: [10, 200], mem: [32 * KiB, 4 * MiB], mod: [32 * KiB, 2 * MiB] },
  ];
  const between = ([lo, hi]: number[]): number => Math.round(lo! + rnd() * (hi! - lo!));
  const tasks: Task[] = [];
  for (let i = 0; i < nTasks; i++) {
    const k = pick(kinds);
    const r = rnd();
    const t: Task = {
      id: `task-${i}`,
      name: `${pick(k.names)}-${i % 97}`,
      cli_args: [],
      inputs: [],
      env: {},
      daemon: false,
      resources: { cpu_millis: between(k.cpu), memory_bytes: between(k.mem) },
      labels: rnd() < 0.3 ? { app: pick(['pipeline', 'Sensor-Hub', 'ML-Platform', 'billing']) } : {},
      ...(rnd() < 0.5 ? { module_size: between(k.mod) } : {}),
      ...(r < 0.1
        ? { proplet_selector: { match_device_types: pick([['esp32'], ['rpi'], ['esp32', 'rpi'], ['node']]) } }
        : r < 0.17
          ? { proplet_selector: { match_capabilities: pick([['sensor'], ['camera'], ['gpio', 'sensor']]) } }
          : r < 0.25
            ? { proplet_selector: { match_labels: { zone: pick(zones) } } }
            : r < 0.3
              ? { proplet_group: pick(['edge-devices', 'gpu-proplets']) }
              : {}),
      ...(rnd() < 0.1 ? { preferred_proplet_type: pick(['k8s', 'external', 'any'] as const) } : {}),
      ...(rnd() < 0.01 ? { pinned_proplet_id: proplets[Math.floor(rnd() * proplets.length)]!.id } : {}),
      ...(rnd() < 0.01 ? { excluded_proplets: [proplets[Math.floor(rnd() * proplets.length)]!.id] } : {}),
      state: 'Pending',
      start_requested: true,
      attempt: 0,
      attempts: [],
      history: [],
      created_at: T0,
      updated_at: T0,
    };
    tasks.push(t);
  }
  return { proplets, load, groups, tasks };
}

function config(f: Fleet, algorithm: Algorithm, engine: 'indexed' | 'linear'): SchedulerConfig {
  return { algorithm, hybrid: DEFAULT_HYBRID, groups: f.groups, random: seeded(7), engine };
}

/** Runs `step(from, to)` over 0..n in chunks until `n` are done or `budgetMs` has passed; returns how many ran and the seconds taken. */
function timed(n: number, budgetMs: number, step: (from: number, to: number) => void, chunk: number): { done: number; secs: number } {
  const t0 = performance.now();
  let done = 0;
  while (done < n && performance.now() - t0 < budgetMs) {
    const to = Math.min(n, done + chunk);
    step(done, to);
    done = to;
  }
  return { done, secs: (performance.now() - t0) / 1000 };
}

/** A full collection before each timed section, so no batch pays for the garbage of the one before. */
const collect: () => void = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

const cpuMs = (since: NodeJS.CpuUsage): number => {
  const c = process.cpuUsage(since);
  return (c.user + c.system) / 1000;
};

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      sizes: { type: 'string', default: '1000,10000,100000' },
      proplets: { type: 'string' },
      tasks: { type: 'string', default: '100000' },
      baseline: { type: 'string', default: '2000' },
      'baseline-ms': { type: 'string', default: '2500' },
    },
  });
  const sizes = (values.proplets ?? values.sizes).split(',').map(Number);
  const nT = Number(values.tasks);
  const nB = Math.min(nT, Number(values.baseline));
  const budget = Number(values['baseline-ms']);
  const rows: (string | number)[][] = [];
  let allMet = true;
  let allSame = true;
  const load = (): string =>
    loadavg()
      .map((x) => x.toFixed(1))
      .join(' ');
  console.log(`\nplacement: ${nT} pending tasks, one placeBatch per algorithm and fleet size; linear baseline (same algorithm, one scan per decision) over the first ${nB} tasks or ${budget} ms; Node ${process.version}; ${availableParallelism()} CPUs; load average at start ${load()}`);
  for (const nP of sizes) {
    const tGen = performance.now();
    const f = fleet(nP, nT);
    const genMs = performance.now() - tGen;
    const alive = f.proplets.filter((p) => p.state === 'alive').length;
    const free = f.proplets.reduce((n, p) => n + (p.state === 'alive' ? 16 - (f.load.get(p.id)?.tasks ?? 0) : 0), 0);
    console.log(`  ${nP} proplets: ${alive} alive, ${free} free task slots, generated in ${genMs.toFixed(0)} ms`);
    // Warm-up on a small slice so the JIT has seen every path.
    for (const a of ALGORITHMS) placeBatch(f.tasks.slice(0, 3000), f.proplets, f.load, INITIAL_STATE, config(f, a, 'indexed'));
    for (const a of ALGORITHMS) {
      // Baseline: the linear reference of the same algorithm over the first
      // tasks, in chunks that carry state and load over (the same results as
      // one batch), until nB tasks or the time budget.
      collect();
      const cfgLin = config(f, a, 'linear');
      const linLoad = new Map(f.load);
      let linState = INITIAL_STATE;
      const lin: SchedDecision[] = [];
      const lc0 = process.cpuUsage();
      timed(
        nB,
        budget,
        (from, to) => {
          const r = placeBatch(f.tasks.slice(from, to), f.proplets, linLoad, linState, cfgLin);
          linState = r.state;
          for (const [id, l] of r.load) linLoad.set(id, l);
          lin.push(...r.decisions);
        },
        Math.max(1, Math.min(100, Math.round(1e6 / nP))),
      );
      const linRate = lin.length / (cpuMs(lc0) / 1000);

      collect();
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const r = placeBatch(f.tasks, f.proplets, f.load, INITIAL_STATE, config(f, a, 'indexed'));
      const secs = (performance.now() - t0) / 1000;
      const cpu = cpuMs(c0);
      const rate = nT / (cpu / 1000);
      const placed = r.decisions.filter((d) => d.ok).length;
      // The same answers as the linear reference on the tasks both decided.
      const bad = lin.findIndex((d, i) => JSON.stringify(d) !== JSON.stringify(r.decisions[i]));
      if (bad >= 0) {
        allSame = false;
        console.error(`  MISMATCH ${a} at ${nP} proplets, task ${bad}: indexed ${JSON.stringify(r.decisions[bad])} vs linear ${JSON.stringify(lin[bad])}`);
      }
      const met = rate >= GOAL;
      allMet &&= met;
      rows.push([nP, a, rate, nT / secs, secs * 1000, cpu, placed, nT - placed, linRate, `${(rate / linRate).toFixed(0)}x`, `${bad < 0 ? 'yes' : 'NO'} (${lin.length})`, load(), met ? 'met' : 'NOT met']);
    }
  }
  console.log();
  printTable(['proplets', 'algorithm', 'decisions/cpu-s', 'decisions/s wall', 'batch ms', 'cpu ms', 'placed', 'unplaceable', 'linear decisions/cpu-s', 'vs linear', '= linear (tasks)', 'load avg', `goal ≥ ${GOAL}/cpu-s`], rows);
  console.log(`goal ≥ ${GOAL} decisions per CPU-second for every algorithm and size: ${allMet ? 'met' : 'NOT met'}; indexed = linear: ${allSame ? 'yes' : 'NO'}`);
  if (!allSame) process.exitCode = 1;
}
