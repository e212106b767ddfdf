// Retention and paging: finished tasks expire (memory and store), a schedule
// keeps a bounded history of runs, GET /tasks pages newest first with a
// continue token, and `propeller task list` says when it cut the list.

import test from 'ava';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { BIN } from './helpers/procs.ts';
import { startStack, until, type Stack } from './helpers/stack.ts';

const exec = promisify(execFile);
let s: Stack;
const wasm = (name: string) => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`)).toString('base64');

test.before(async () => {
  await buildExamples();
  s = await startStack({ proplets: 2 });
});
test.after.always(async () => {
  await s?.close();
});

test.serial('a finished task past its time-to-live is deleted from memory and the store; one without stays', async (t) => {
  const short = await s.api.createTask({ name: 'add', file: wasm('add'), inputs: [1, 1], ttl_seconds_after_finished: 1 }, { start: true, waitMs: 60_000 });
  const kept = await s.api.createTask({ name: 'add', file: wasm('add'), inputs: [1, 2] }, { start: true, waitMs: 60_000 });
  // answered when finished; the short-lived one may already be gone by the time we ask again
  t.is(short.state, 'Completed');
  t.is((await s.api.getTask(kept.id, 60_000)).state, 'Completed');
  await until(() => s.cp.tasks.get(short.id) === undefined, 'the short-lived task expired', 30_000);
  t.is(s.cp.store.tasks.get(short.id), undefined);
  await t.throwsAsync(s.api.getTask(short.id), { message: /not found/ });
  t.truthy(s.cp.store.tasks.get(kept.id));
  t.is(s.cp.tasks.get(kept.id)!.state, 'Completed');
  t.is((await s.api.health()).tasks, s.cp.store.tasks.list().length);
});

test.serial('a per-second schedule keeps only its newest successful runs, in memory and in the store', async (t) => {
  const tpl = await s.api.createTask({ name: 'add', file: wasm('add'), inputs: [2, 2], schedule: '* * * * * *', successful_runs_history_limit: 2 });
  await until(async () => (await s.api.getTask(tpl.id)).cron!.runs_started >= 5, 'five runs started', 60_000);
  await s.api.stopTask(tpl.id);
  const runs = () => s.cp.store.tasks.list().filter((x) => x.scheduled_by === tpl.id);
  await until(() => runs().every((r) => r.state === 'Completed'), 'the last runs finished', 30_000);
  const done = runs();
  t.true(done.length <= 2, `${done.length} runs kept`);
  t.true(done.length >= 1);
  t.deepEqual(new Set(done.map((r) => r.id)), new Set([...s.cp.tasks.values()].filter((x) => x.scheduled_by === tpl.id).map((r) => r.id)));
  // the newest were kept
  const last = (await s.api.getTask(tpl.id)).cron!.last_run_id!;
  t.true(done.some((r) => r.id === last));
});

test.serial('GET /tasks pages newest first with a continue token and a total; a bad token is a 400', async (t) => {
  const made: string[] = [];
  for (let i = 0; i < 5; i++) made.push((await s.api.createTask({ name: `pg${i}`, file: wasm('add'), labels: { page: 'yes' } })).id);
  const seen: string[] = [];
  let page = await s.api.listTasks({ limit: 2, label: ['page=yes'] });
  seen.push(...page.tasks.map((x) => x.id));
  while (page.continue) {
    page = await s.api.listTasks({ limit: 2, label: ['page=yes'], continue: page.continue });
    seen.push(...page.tasks.map((x) => x.id));
  }
  t.deepEqual(seen, [...made].reverse());
  const all = await s.api.listTasks({ limit: 3 });
  t.is(all.tasks.length, 3);
  t.is(all.total, s.cp.tasks.count());
  t.truthy(all.continue);
  const pending = await s.api.listTasks({ state: 'pending', limit: 1 });
  t.is(pending.total, [...s.cp.tasks.values()].filter((x) => x.state === 'Pending').length);
  await t.throwsAsync(s.api.listTasks({ continue: 'garbage' }), { message: /continue: not a token/ });
  await t.throwsAsync(s.api.listTasks({ state: 'sleepy' }), { message: /state: must be one of/ });
});

test.serial('tasks made faster than one a millisecond are stamped with the clock, not ahead of it, and list in the order they were made', async (t) => {
  const made: string[] = [];
  const before = new Date().toISOString();
  const file = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm'));
  for (let i = 0; i < 3000; i++) made.push(s.cp.tasks.create({ name: `burst${i}`, file, cli_args: [], inputs: [], env: {}, daemon: false, resources: {}, labels: { burst: 'yes' } }).id);
  const after = new Date().toISOString();
  const tasks = made.map((id) => s.cp.tasks.get(id)!);
  t.true(tasks.every((x) => x.created_at >= before && x.created_at <= after), `created between ${before} and ${after}: ${tasks[0]!.created_at} … ${tasks.at(-1)!.created_at}`);
  const listed = await s.api.listTasks({ limit: 1000, label: ['burst=yes'] });
  t.deepEqual(listed.tasks.map((x) => x.id), made.slice(-1000).reverse());
});

test.serial('task list says when it cut the list', async (t) => {
  for (let i = 0; i < 3; i++) await s.api.createTask({ name: `cut${i}`, file: wasm('add') });
  const r = await exec('node', [BIN, 'task', 'list', '--api', s.apiUrl, '--limit', '2']);
  t.is(r.stdout.trim().split('\n').length, 3); // header and two rows
  t.regex(r.stderr, new RegExp(`showing the newest 2 of ${s.cp.tasks.count()} tasks; see them all with --all, or more with --limit N`));
  const all = await exec('node', [BIN, 'task', 'list', '--api', s.apiUrl, '--all']);
  t.is(all.stdout.trim().split('\n').length, s.cp.tasks.count() + 1);
  t.is(all.stderr, '');
});
