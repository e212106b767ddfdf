// Startup: what a user waits for and what each process costs, for the
// compiled command (dist/, `npm run build`, run by bin/propeller.js) beside
// the same sources run through tsx, measured in this run:
//   - `propeller --help`: wall time and CPU time (goal ≤ 0.3 s wall);
//   - `propeller serve` to the first 200 on /health (goal ≤ 1 s);
//   - a `propeller proplet` process: peak RSS after registering and running
//     one task (goal ≤ 80 MB).
// A bare `node -e 0` is the floor: on a busy machine it alone can take most
// of the --help budget, so read the wall figures beside it and the CPU times.
//
//   npm run bench -- startup [--runs N]

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { distState } from '../bin/dist-state.js';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { freePort } from '../test/helpers/stack.ts';
import { printTable } from './stats.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const GOAL = { helpS: 0.3, healthS: 1, propletMb: 80 };

/** Reports the process's own CPU time and peak RSS on fd 3 as it exits. */
const PROBE = `data:text/javascript,${encodeURIComponent(
  "import{writeSync}from'node:fs';process.on('exit',()=>{const u=process.resourceUsage();try{writeSync(3,JSON.stringify({cpuMs:(u.userCPUTime+u.systemCPUTime)/1000,maxRssKb:u.maxRSS}))}catch{}})",
)}`;

interface Variant {
  name: string;
  /** node arguments that run the command with the arguments after them */
  argv: string[];
}

const VARIANTS: Variant[] = [
  { name: 'compiled (bin/propeller.js → dist/)', argv: [join(ROOT, 'bin/propeller.js')] },
  { name: 'tsx (the sources, commands loaded when run)', argv: ['--import', 'tsx', join(ROOT, 'cli/main.ts')] },
];

/** The sources through tsx with every command imported before dispatch, as cli/main.ts did before. */
const EAGER: Variant = {
  name: 'tsx, every command imported up front (before)',
  argv: [
    '--import',
    'tsx',
    '--input-type=module',
    '-e',
    `const { COMMANDS } = await import(${JSON.stringify(join(ROOT, 'cli/commands.ts'))}); await Promise.all(Object.values(COMMANDS).map((c) => c.load())); await import(${JSON.stringify(join(ROOT, 'cli/main.ts'))});`,
    'eager',
  ],
};

interface Probe {
  cpuMs: number;
  maxRssKb: number;
}

function launch(argv: string[], env: NodeJS.ProcessEnv = {}): { proc: ChildProcess; probe: Promise<Probe | undefined>; stderr: () => string } {
  const proc = spawn(process.execPath, [`--import=${PROBE}`, ...argv], { cwd: ROOT, stdio: ['ignore', 'ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let err = '';
  let out = '';
  proc.stderr!.on('data', (d) => (err += d));
  (proc.stdio[3] as NodeJS.ReadableStream).on('data', (d) => (out += d));
  const probe = new Promise<Probe | undefined>((resolve) => proc.once('close', () => resolve(out ? (JSON.parse(out) as Probe) : undefined)));
  return { proc, probe, stderr: () => err };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function timeRun(argv: string[]): Promise<{ wallS: number; cpuS: number }> {
  const t0 = performance.now();
  const { proc, probe, stderr } = launch(argv);
  const code = await new Promise<number | null>((r) => proc.once('exit', r));
  const wallS = (performance.now() - t0) / 1000;
  const p = await probe;
  if (code !== 0 || !p) throw new Error(`${argv.join(' ')} exited ${code}: ${stderr()}`);
  return { wallS, cpuS: p.cpuMs / 1000 };
}

async function helpFigures(runs: number) {
  const rows: (string | number)[][] = [];
  const floor = [];
  for (let i = 0; i < runs; i++) floor.push(await timeRun(['-e', '0']));
  rows.push(['node -e 0 (the floor)', median(floor.map((x) => x.wallS)), median(floor.map((x) => x.cpuS)), '-']);
  for (const v of [...VARIANTS, EAGER]) {
    const xs = [];
    for (let i = 0; i < runs; i++) xs.push(await timeRun([...v.argv, '--help']));
    rows.push([v.name, median(xs.map((x) => x.wallS)), median(xs.map((x) => x.cpuS)), `≤ ${GOAL.helpS}`]);
  }
  return rows;
}

async function waitExit(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  const killer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(killer);
}

interface Serve {
  proc: ChildProcess;
  api: string;
  broker: string;
  dataDir: string;
  /** seconds from spawn to the first 200 on /health */
  healthS: number;
  /** CPU seconds the process had used by then (Linux; NaN elsewhere) */
  healthCpuS: number;
  probe: Promise<Probe | undefined>;
}

async function startServe(argv: string[]): Promise<Serve> {
  const [http, mqtt] = [await freePort(), await freePort()];
  const dataDir = mkdtempSync(join(tmpdir(), 'propeller-startup-'));
  const t0 = performance.now();
  const { proc, probe, stderr } = launch([...argv, 'serve', '--http-port', String(http), '--mqtt-port', String(mqtt), '--data-dir', dataDir, '--log-level', 'warn']);
  const api = `http://127.0.0.1:${http}`;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`serve exited ${proc.exitCode}: ${stderr()}`);
    const ok = await fetch(`${api}/health`).then((r) => r.status === 200, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const healthS = (performance.now() - t0) / 1000;
  return { proc, api, broker: `mqtt://127.0.0.1:${mqtt}`, dataDir, healthS, healthCpuS: cpuSeconds(proc.pid!), probe };
}

/** utime + stime of a running process, from /proc (Linux). */
function cpuSeconds(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

async function stopServe(s: Serve): Promise<void> {
  await waitExit(s.proc);
  rmSync(s.dataDir, { recursive: true, force: true });
}

async function healthFigures(runs: number) {
  const rows: (string | number)[][] = [];
  for (const v of VARIANTS) {
    const xs: number[] = [];
    const cpu: number[] = [];
    for (let i = 0; i < runs; i++) {
      const s = await startServe(v.argv);
      xs.push(s.healthS);
      cpu.push(s.healthCpuS);
      await stopServe(s);
    }
    rows.push([v.name, median(xs), Math.min(...xs), median(cpu), `≤ ${GOAL.healthS}`]);
  }
  return rows;
}

/** The API token serve wrote to its data dir (the API requires one by default), if any. */
function tokenOf(s: Serve): Record<string, string> {
  try {
    return { authorization: `Bearer ${readFileSync(join(s.dataDir, 'api.token'), 'utf8').trim()}` };
  } catch {
    return {};
  }
}

async function api<T>(s: Serve, method: string, path: string, body?: unknown): Promise<T> {
  const res = await fetch(`${s.api}${path}`, { method, headers: { 'content-type': 'application/json', ...tokenOf(s) }, ...(body ? { body: JSON.stringify(body) } : {}) });
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return (await res.json()) as T;
}

/** One proplet process of each variant against one (compiled) serve: peak RSS after it ran a task. */
async function propletFigures() {
  await buildExamples();
  const wasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm')).toString('base64');
  const s = await startServe(VARIANTS[0]!.argv);
  const rows: (string | number)[][] = [];
  try {
    for (const [i, v] of VARIANTS.entries()) {
      const id = `startup-${i}`;
      const { secret } = await api<{ secret: string }>(s, 'POST', '/proplets', { proplet_id: id });
      const p = launch([...v.argv, 'proplet', '--id', id, '--broker', s.broker, '--log-level', 'warn'], { PROPLET_SECRET: secret });
      for (;;) {
        if (p.proc.exitCode !== null) throw new Error(`proplet exited ${p.proc.exitCode}: ${p.stderr()}`);
        const got = await fetch(`${s.api}/proplets/${id}`, { headers: tokenOf(s) }).then((r) => (r.ok ? (r.json() as Promise<{ state: string }>) : undefined));
        if (got?.state === 'alive') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const task = await api<{ state: string }>(s, 'POST', '/tasks?start=true&wait=60s', { name: 'hello', file: wasm, proplet_id: id });
      if (task.state !== 'Completed') throw new Error(`the task on ${id} ended ${task.state}`);
      let rssKb: number | undefined;
      try {
        rssKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${p.proc.pid}/status`, 'utf8'))?.[1]);
      } catch {
        // not Linux: the peak from the probe is the figure
      }
      await waitExit(p.proc);
      const peak = (await p.probe)?.maxRssKb;
      rows.push([v.name, rssKb ? rssKb / 1024 : NaN, peak ? peak / 1024 : NaN, `≤ ${GOAL.propletMb}`]);
    }
  } finally {
    await stopServe(s);
  }
  return rows;
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { runs: { type: 'string', default: '5' } } });
  const runs = Number(values.runs);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs must be a positive integer');
  if (distState() !== 'fresh') {
    process.stdout.write('dist/ is not fresh: npm run build\n');
    const r = spawnSync(process.execPath, [join(ROOT, 'bin/build.js')], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error('the build failed');
  }
  const load = () => loadavg().map((x) => x.toFixed(2)).join(' ');
  process.stdout.write(`startup: Node ${process.version}, ${availableParallelism()} cores, load average ${load()}, median of ${runs} runs\n\n`);
  printTable(['propeller --help', 'wall s', 'cpu s', 'goal wall s'], await helpFigures(runs));
  process.stdout.write('\n');
  printTable(['serve → 200 on /health', 'wall s', 'best wall s', 'cpu s', 'goal wall s'], await healthFigures(Math.max(1, Math.ceil(runs / 2))));
  process.stdout.write('\n');
  printTable(['proplet process (default --max-tasks), one task run', 'RSS MB', 'peak RSS MB', 'goal MB'], await propletFigures());
  process.stdout.write(`\nload average at the end: ${load()}\n`);
}
