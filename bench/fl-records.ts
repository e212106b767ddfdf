// FL records on a metrics scrape and an adapter poll, against the baseline of
// the same run: what the coordinator did before (parse every row of the
// store's table: jobs and rounds by phase for a scrape; all rounds and
// checkpoints, filtered, for one job's poll), and what it does now (phase
// counts kept on write; a job's rounds from an in-memory index). Goal: a
// scrape's and a poll's cost do not grow with the history (flat from 1k to
// 20k rounds), and is ≥ 100x below the baseline at 20k.
//
//   npm run bench -- fl-records [--rounds 20000] [--per-job 20]

import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { IndexedRecords } from '../control-plane/fl/records.ts';
import type { FederatedJob, ModelCheckpoint, TrainingRound } from '../control-plane/fl/resources.ts';
import { SqliteStore } from '../control-plane/sqlite-store.ts';
import { printTable } from './stats.ts';

const GOAL_RATIO = 100;

function fill(store: SqliteStore, rounds: number, perJob: number): void {
  const at = '2026-01-01T00:00:00.000Z';
  store.atomically(() => {
    for (let i = 0; i < rounds; i++) {
      const job = `job-${Math.floor(i / perJob)}`;
      const n = (i % perJob) + 1;
      if (n === 1) store.flJobs.put(job, { kind: 'FederatedJob', metadata: { name: job, uid: job, creationTimestamp: at }, spec: { experimentId: job, modelRef: 'sha256:x', taskWasmImage: 'sha256:y', kOfN: 2, timeoutSeconds: 30, rounds: { total: perJob }, aggregator: { algorithm: 'fedavg' } }, status: { phase: 'Completed', currentRound: perJob, completedRounds: perJob, participants: [], retriesUsed: 0 } } satisfies FederatedJob);
      const name = `round-${n}-${job}`;
      const participants = Array.from({ length: 8 }, (_, k) => ({ propletId: `p-${k}`, taskId: `${name}-${k}`, phase: 'Submitted' as const, numSamples: 100, metrics: { loss: 0.1, accuracy: 0.9 } }));
      store.flRounds.put(name, { kind: 'TrainingRound', metadata: { name, uid: name, creationTimestamp: at }, spec: { roundId: `round-${n}`, federatedJobRef: { name: job }, modelRef: 'sha256:x', taskWasmImage: 'sha256:y', participants: participants.map((p) => p.propletId), kOfN: 2, timeoutSeconds: 30, round: n }, status: { phase: 'Completed', participants, updatesReceived: 8, updatesRequired: 2, refused: { late: 0, notParticipant: 0, stale: 0, invalid: 0 }, restarts: 0, message: 'aggregated 8 of 8 updates' } } satisfies TrainingRound);
      const cp = `model-${job}-round-${n}`;
      store.flCheckpoints.put(cp, { kind: 'ModelCheckpoint', metadata: { name: cp, uid: cp, creationTimestamp: at }, spec: { federatedJobRef: { name: job }, roundRef: { name }, modelRef: 'sha256:z', algorithm: 'fedavg', metadata: { totalSamples: 800, numParticipants: 8, participants: participants.map((p) => p.propletId), round: n, metrics: {} } }, status: { phase: 'Ready' } } satisfies ModelCheckpoint);
    }
  });
}

/** Mean microseconds per call of `f`, over at least `minMs` and 3 calls. */
function time(f: () => unknown, minMs = 300): number {
  let n = 0;
  const t0 = performance.now();
  while (n < 3 || performance.now() - t0 < minMs) {
    f();
    n++;
  }
  return ((performance.now() - t0) / n) * 1000;
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { rounds: { type: 'string', default: '20000' }, 'per-job': { type: 'string', default: '20' } } });
  const max = Number(values.rounds);
  const perJob = Number(values['per-job']);
  console.log(`fl-records: up to ${max} rounds (+ as many checkpoints), ${perJob} per job, SQLite store; load average ${loadavg()[0]!.toFixed(1)}`);
  const rows: (string | number)[][] = [];
  let last: { scrape: number; poll: number; base: number } | undefined;
  let first: { scrape: number; poll: number } | undefined;
  for (const rounds of [1000, max]) {
    const dir = mkdtempSync(join(tmpdir(), 'propeller-bench-fl-'));
    try {
      const store = await SqliteStore.open(join(dir, 'state.db'));
      fill(store, rounds, perJob);
      const job = `job-${Math.floor(rounds / perJob / 2)}`;
      const baseScrape = time(() => [store.flJobs.list().map((j) => j.status.phase), store.flRounds.list().map((r) => r.status.phase)]);
      const basePoll = time(() => [store.flRounds.list().filter((r) => r.spec.federatedJobRef?.name === job), store.flCheckpoints.list().filter((c) => c.spec.federatedJobRef?.name === job)]);
      const t0 = performance.now();
      const jobs = new IndexedRecords(store.flJobs, (j) => j.metadata.name);
      const rs = new IndexedRecords(store.flRounds);
      const cps = new IndexedRecords(store.flCheckpoints);
      const load = performance.now() - t0;
      const scrape = time(() => [jobs.phaseCounts(), rs.phaseCounts()]);
      const poll = time(() => [rs.view(job), cps.view(job)]);
      rows.push([rounds, 'scrape: jobs and rounds by phase', baseScrape, scrape, baseScrape / scrape]);
      rows.push([rounds, `poll: one job's rounds and checkpoints (${perJob} each)`, basePoll, poll, basePoll / poll]);
      rows.push([rounds, 'index built once at start (ms)', '', load, '']);
      store.close();
      if (rounds === 1000) first = { scrape, poll };
      else last = { scrape, poll, base: Math.min(baseScrape / scrape, basePoll / poll) };
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  printTable(['rounds', 'what', 'baseline µs', 'now µs', 'x'], rows);
  if (first && last) {
    console.log(`goal: flat with history (now at ${max} vs 1000: scrape ${(last.scrape / first.scrape).toFixed(1)}x, poll ${(last.poll / first.poll).toFixed(1)}x; ~1x is flat), ≥ ${GOAL_RATIO}x below the baseline at ${max}: ${last.base.toFixed(0)}x ${last.base >= GOAL_RATIO ? 'MET' : 'NOT MET'}`);
  }
}
