// Scheduled tasks: node-cron fires on a seconds-level expression, each firing
// is a run of its own, and the concurrency policy decides about overlaps.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { TaskSpec } from '../control-plane/client.ts';
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

const runsOf = async (id: string) => (await s.api.listTasks({ limit: 1000 })).tasks.filter((x) => x.scheduled_by === id);

test('a cron task fires every second; each run has its own id, state and result', async (t) => {
  const tpl = await s.api.createTask({ name: 'add', file: wasm('add'), inputs: [2, 2], schedule: '* * * * * *' });
  t.is(tpl.schedule, '* * * * * *');
  await until(async () => (await runsOf(tpl.id)).filter((r) => r.state === 'Completed').length >= 2, 'two completed runs', 4000);
  const runs = await runsOf(tpl.id);
  t.is(new Set(runs.map((r) => r.id)).size, runs.length);
  for (const r of runs.filter((x) => x.state === 'Completed')) t.is(r.result?.results, 4);
  const after = await s.api.getTask(tpl.id);
  t.true(after.cron!.runs_started >= 2);
  t.truthy(after.cron!.next_run_at);
  // stop suspends: no more runs
  await s.api.stopTask(tpl.id);
  const n = (await runsOf(tpl.id)).length;
  await new Promise((r) => setTimeout(r, 1500));
  t.is((await runsOf(tpl.id)).length, n);
  t.true((await s.api.getTask(tpl.id)).suspended);
});

test('Forbid skips a firing while the previous run is active; Replace stops it', async (t) => {
  const forbid = await s.api.createTask({ name: 'sleep', file: wasm('sleep'), inputs: [2500], schedule: '* * * * * *', concurrency_policy: 'Forbid' });
  await until(async () => ((await s.api.getTask(forbid.id)).cron?.runs_skipped ?? 0) >= 1, 'a skipped firing', 4000);
  const runs = await runsOf(forbid.id);
  t.is(runs.filter((r) => !['Completed', 'Failed', 'Stopped'].includes(r.state)).length, 1);
  await s.api.stopTask(forbid.id);

  const replace = await s.api.createTask({ name: 'sleep', file: wasm('sleep'), inputs: [2500], schedule: '* * * * * *', concurrency_policy: 'Replace' });
  await until(async () => (await runsOf(replace.id)).some((r) => r.state === 'Stopped'), 'a replaced run', 4000);
  await s.api.stopTask(replace.id);
  t.pass();
});

test('bad schedules, time zones and policies are refused with 400', async (t) => {
  for (const [body, field] of [
    [{ schedule: 'every day' }, 'schedule'],
    [{ schedule: '* * * * *', timezone: 'Mars/Olympus' }, 'timezone'],
    [{ schedule: '* * * * *', concurrency_policy: 'Sometimes' }, 'concurrency_policy'],
  ] as const) {
    const e = await t.throwsAsync(s.api.createTask({ name: "x", file: wasm("add"), ...body } as TaskSpec));
    t.is((e as unknown as { field: string }).field, field);
  }
});
