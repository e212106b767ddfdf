// Retention: a per-second schedule (and one ad-hoc task per second) run for
// hours of simulated time through the real TaskService, once with retention on
// (finished tasks expire after --ttl; the schedule keeps 3 successful runs) and
// once as before (the baseline: nothing is ever deleted, and each request
// lists, sorts or counts every task as GET /tasks, /health and the metrics
// scrape did). At each
// simulated hour it prints the tasks held, the heap after a full GC, and the
// cost of what GET /tasks, /health and a metrics scrape do.
// Goal: with retention on, tasks held, heap and per-request cost stay flat as
// history grows.
//
//   npm run bench -- retention [--hours 6] [--ttl 1h]

import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseDuration } from '../control-plane/config.ts';
import { ControlPlaneMetrics } from '../control-plane/metrics.ts';
import { Registry } from '../control-plane/registry.ts';
import type { RetentionConfig } from '../control-plane/retention.ts';
import { createScheduler } from '../control-plane/scheduling/index.ts';
import { MemoryStore } from '../control-plane/store.ts';
import { TaskService } from '../control-plane/tasks.ts';
import type { TaskInput } from '../control-plane/task-input.ts';
import { printTable } from './stats.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const silent = () => {};
const MODULE = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);

function input(name: string, extra: Partial<TaskInput> = {}): TaskInput {
  return { name, cli_args: [], inputs: [2, 3], env: {}, daemon: false, resources: {}, labels: { app: 'bench' }, file: MODULE, ...extra };
}

interface Row {
  hour: number;
  held: number;
  heapMiB: number;
  listUs: number;
  healthUs: number;
  scrapeUs: number;
}

/** `walks`: measure requests as they were before (every task listed, sorted and counted per request): the baseline. */
async function simulate(hours: number, retention: Partial<RetentionConfig>, walks: boolean): Promise<Row[]> {
  let clock = Date.parse('2026-01-01T00:00:00Z');
  const now = () => clock;
  const store = new MemoryStore();
  const health = { checkIntervalMs: 1000, offlineThresholdMs: 1e12, failureThresholdMs: 1e12 };
  const registry = new Registry(store, health, now);
  registry.register({ proplet_id: 'p1', capacity: { max_tasks: 1000 }, addressing: 'direct' });
  let tasks!: TaskService;
  const metrics = new ControlPlaneMetrics({ proplets: () => registry.values(), tasks: () => tasks.values(), ...(walks ? {} : { taskCounts: () => tasks.countsByState() }) });
  const started: string[] = [];
  tasks = new TaskService({
    store,
    registry,
    placement: createScheduler({ type: 'round-robin' }),
    dispatcher: { start: (_p, m) => void started.push(m.id), stop: () => {} },
    metrics,
    log: silent,
    now,
    retention,
  });
  const template = tasks.create(input('every-second', { schedule: '* * * * * *' }));
  const rows: Row[] = [];
  const time = (fn: () => unknown, n = 20): number => {
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) fn();
    return Number(process.hrtime.bigint() - t0) / 1000 / n;
  };
  for (let s = 1; s <= hours * 3600; s++) {
    clock += 1000;
    tasks.createRun(template);
    tasks.start(tasks.create(input(`adhoc-${s}`)).id);
    tasks.placePending();
    for (const id of started.splice(0)) tasks.onResult({ v: 1, proplet_id: 'p1', task_id: id, attempt: 1, status: 'completed', results: 5 });
    tasks.sweepExpired();
    if (s % 3600 === 0) {
      gc();
      let scrape = 0;
      const t0 = process.hrtime.bigint();
      for (let i = 0; i < 20; i++) await metrics.registry.metrics();
      scrape = Number(process.hrtime.bigint() - t0) / 1000 / 20;
      rows.push({
        hour: s / 3600,
        held: tasks.count(),
        heapMiB: process.memoryUsage().heapUsed / 1024 / 1024,
        listUs: walks
          ? time(() => tasks.list().filter((t) => t.labels.app === 'bench').sort((a, b) => a.created_at.localeCompare(b.created_at)).slice(0, 100))
          : time(() => tasks.page(100, undefined, (t) => t.labels.app === 'bench')),
        healthUs: walks ? time(() => tasks.list().length) : time(() => tasks.count()),
        scrapeUs: scrape,
      });
    }
  }
  return rows;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { hours: { type: 'string' }, ttl: { type: 'string' } } });
  const hours = Number(values.hours ?? 6);
  const ttlMs = parseDuration('--ttl', values.ttl ?? '1h');
  console.log(`retention: ${hours} simulated hours, one scheduled run and one ad-hoc task per second; load ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const on = await simulate(hours, { finishedTtlMs: ttlMs, successfulRunsHistoryLimit: 3, failedRunsHistoryLimit: 1 }, false);
  gc();
  const off = await simulate(hours, { finishedTtlMs: 0, successfulRunsHistoryLimit: Infinity, failedRunsHistoryLimit: Infinity }, true);
  printTable(
    ['hour', 'tasks held (on)', 'baseline', 'heap MiB (on)', 'baseline', 'GET /tasks µs (on)', 'baseline', '/health µs (on)', 'baseline', 'scrape µs (on)', 'baseline'],
    on.map((r, i) => {
      const b = off[i]!;
      return [r.hour, r.held, b.held, r.heapMiB, b.heapMiB, r.listUs, b.listUs, r.healthUs, b.healthUs, r.scrapeUs, b.scrapeUs];
    }),
  );
  const first = on[0]!;
  const last = on.at(-1)!;
  console.log(`goal: flat with retention on. tasks held ${first.held} → ${last.held}, heap ${first.heapMiB.toFixed(1)} → ${last.heapMiB.toFixed(1)} MiB; baseline ${off[0]!.held} → ${off.at(-1)!.held} tasks, ${off[0]!.heapMiB.toFixed(1)} → ${off.at(-1)!.heapMiB.toFixed(1)} MiB`);
  console.log(`load at the end ${loadavg().map((x) => x.toFixed(2)).join(' ')}`);
}
