// The state store under the control plane's write pattern: every task goes
// Pending → Scheduled → Running → Completed, one store write per transition,
// with the same growing task object the control plane keeps (history,
// attempts, result). Side by side in one run:
//   - baseline: the previous SQLite store, reimplemented here — the whole task
//     as one JSON document, rewritten in its own transaction at every transition;
//   - the SQLite store: rows and columns, history rows appended, one commit per tick;
//   - the PostgreSQL store, the same, on a throw-away local cluster with fsync on.
// `per tick` is how many transitions the control plane makes between two turns
// of the event loop (1: a quiet plane; 100: a busy one); each wave of
// transitions is committed before the next, so no write is saved by coalescing
// two transitions of one task. CPU is this process's
// (and for PostgreSQL, its server processes') per transition.
// Goal: 2,000 tasks/s end to end (issue 16) is 8,000 transitions/s: the store
// must sustain that with at most 25 % of a core in the control plane's process
// (≤ 31 µs CPU per transition), so it is not what caps the plane.

import Database from 'better-sqlite3';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import type { Task } from '../control-plane/model.ts';
import { openStore } from '../control-plane/open-store.ts';
import type { Store } from '../control-plane/store.ts';
import { startPostgres } from '../test/helpers/postgres.ts';
import { printTable } from './stats.ts';

const GOAL_TPS = 8_000;
const GOAL_CPU_US = 1e6 / 4 / GOAL_TPS; // a quarter of a core at the goal rate

const STATES = ['Scheduled', 'Running', 'Completed'] as const;

function newTask(i: number, at: string): Task {
  return {
    id: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
    name: 'compute',
    module_digest: 'sha256:' + 'ab'.repeat(32),
    module_size: 1234,
    cli_args: ['--invoke', 'add'],
    inputs: [2, 3],
    env: { MODE: 'bench', REGION: 'eu-west' },
    daemon: false,
    resources: { cpu_millis: 100, memory_bytes: 16 << 20 },
    labels: { app: 'bench', tier: 'edge' },
    state: 'Pending',
    start_requested: true,
    attempt: 0,
    attempts: [],
    history: [{ state: 'Pending', at, reason: 'created' }],
    created_at: at,
    updated_at: at,
  };
}

/** The control plane's mutation for transition `k` (0: create). */
function transition(t: Task, k: number, at: string): void {
  if (k === 0) return;
  const state = STATES[k - 1]!;
  t.state = state;
  t.updated_at = at;
  if (state === 'Scheduled') {
    t.attempt++;
    t.proplet_id = `proplet-${t.attempt % 97}`;
    t.attempts.push({ attempt: t.attempt, proplet_id: t.proplet_id, started_at: at });
  } else if (state === 'Running') t.started_at = at;
  else {
    t.finished_at = at;
    t.attempts.at(-1)!.ended_at = at;
    t.attempts.at(-1)!.outcome = 'completed';
    t.result = { proplet_id: t.proplet_id!, attempt: t.attempt, results: [5], stdout: 'ok\n', exit_code: 0, duration_ms: 3, at };
  }
  t.history.push({ state, at, proplet_id: t.proplet_id, attempt: t.attempt });
}

interface Sink {
  put(t: Task): void;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** The store as it was: one JSON document per record, one transaction per write. */
function wholeDocumentSqlite(path: string): Sink {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.exec('CREATE TABLE records (kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id))');
  const put = db.prepare('INSERT INTO records (kind, id, doc) VALUES (?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc');
  return {
    put: (t) => put.run('task', t.id, JSON.stringify(t)),
    flush: async () => {},
    close: async () => void db.close(),
  };
}

function storeSink(s: Store): Sink {
  return { put: (t) => s.tasks.put(t.id, t), flush: () => s.flush(), close: () => s.close() };
}

/** CPU seconds of a process and its children (PostgreSQL's backends). */
function treeCpu(root: number): number {
  const tick = 100; // USER_HZ
  let total = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const f = readFileSync(`/proc/${d}/stat`, 'utf8');
      const rest = f.slice(f.lastIndexOf(')') + 2).split(' ');
      const ppid = Number(rest[1]);
      if (Number(d) === root || ppid === root) total += (Number(rest[11]) + Number(rest[12])) / tick;
    } catch {
      /* gone */
    }
  }
  return total;
}

interface Figures {
  tps: number;
  cpuUs: number;
  serverCpuUs?: number;
  commits?: number;
}

async function drive(sink: Sink, nTasks: number, perTick: number, serverCpu?: () => number): Promise<Figures> {
  const tasks: Task[] = [];
  const at = new Date().toISOString();
  for (let i = 0; i < nTasks; i++) tasks.push(newTask(i, at));
  const cpu0 = process.cpuUsage();
  const s0 = serverCpu?.();
  const t0 = performance.now();
  let n = 0;
  for (let k = 0; k <= STATES.length; k++) {
    for (const t of tasks) {
      transition(t, k, at);
      sink.put(t);
      if (++n % perTick === 0) await new Promise<void>((r) => setImmediate(r));
    }
    // a task's transitions are never coalesced into one write: each wave is committed before the next
    await sink.flush();
  }
  const wall = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const s1 = serverCpu?.();
  return {
    tps: n / wall,
    cpuUs: (cpu.user + cpu.system) / n,
    ...(s0 !== undefined ? { serverCpuUs: ((s1! - s0) * 1e6) / n } : {}),
  };
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { tasks: { type: 'string', default: '5000' }, 'per-tick': { type: 'string', default: '1,10,100' }, repeat: { type: 'string', default: '3' } },
  });
  const nTasks = Number(values.tasks);
  const perTicks = values['per-tick']!.split(',').map(Number);
  const repeat = Number(values.repeat);
  console.log(`store: ${nTasks} tasks × 4 transitions, medians of ${repeat} interleaved runs; cores ${availableParallelism()}, load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const dir = mkdtempSync(join(tmpdir(), 'propeller-bench-store-'));
  delete process.env.PROPELLER_TEST_PG_URL; // a cluster of our own, fsync on, not the tests' one
  const pg = await startPostgres({ durable: true });
  const NAMES = ['whole-document SQLite (baseline)', 'SQLite store', 'PostgreSQL store'] as const;
  const runs = new Map<string, (Figures & { commits: number })[]>();
  const add = (perTick: number, name: string, f: Figures & { commits: number }) => {
    const k = `${perTick}\u0000${name}`;
    runs.set(k, [...(runs.get(k) ?? []), f]);
  };
  try {
    let i = 0;
    const path = () => join(dir, `s${++i}.db`);
    for (let r = 0; r < repeat; r++) {
      for (const perTick of perTicks) {
        const base = wholeDocumentSqlite(path());
        add(perTick, NAMES[0], { ...(await drive(base, nTasks, perTick)), commits: nTasks * 4 });
        await base.close();
        const sq = await openStore({ engine: 'sqlite', path: path() });
        add(perTick, NAMES[1], { ...(await drive(storeSink(sq), nTasks, perTick)), commits: sq.stats.commits });
        await sq.close();
        const pgs = await openStore({ engine: 'postgres', url: await pg.createDatabase() });
        add(perTick, NAMES[2], { ...(await drive(storeSink(pgs), nTasks, perTick, () => treeCpu(pg.pid!()))), commits: pgs.stats.commits });
        await pgs.close();
      }
    }
  } finally {
    await pg.stop();
    rmSync(dir, { recursive: true, force: true });
  }
  const rows: (string | number)[][] = [];
  for (const perTick of perTicks) {
    const base = median(runs.get(`${perTick}\u0000${NAMES[0]}`)!.map((f) => f.tps));
    for (const name of NAMES) {
      const fs = runs.get(`${perTick}\u0000${name}`)!;
      const tps = median(fs.map((f) => f.tps));
      const server = fs[0]!.serverCpuUs === undefined ? '' : median(fs.map((f) => f.serverCpuUs!));
      rows.push([String(perTick), name, tps, median(fs.map((f) => f.cpuUs)), server, String(median(fs.map((f) => f.commits))), `${(tps / base).toFixed(2)}×`]);
    }
  }
  printTable(['per tick', 'store', 'transitions/s', 'CPU µs/transition', 'server CPU µs/transition', 'commits', 'vs baseline'], rows);
  console.log(`goal: ≥ ${GOAL_TPS} transitions/s (2,000 tasks/s) at ≤ ${GOAL_CPU_US.toFixed(0)} µs CPU per transition in the control plane's process`);
  console.log(`load average after: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
}
