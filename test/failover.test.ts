// Failures with real processes over TCP: SIGKILL a proplet and its tasks finish
// elsewhere; kill -9 the control plane and it restarts on its data dir with
// every task, none lost, none run twice.

import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Task } from '../control-plane/model.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startProplet, startServe, type Proc } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const procs: Proc[] = [];
const dirs: string[] = [];
let sleepWasm: string;

test.before(async () => {
  await buildExamples();
  sleepWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
});
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const completions = (ps: Proc[]) => {
  const n = new Map<string, number>();
  for (const p of ps) for (const l of p.logs) if (l.msg === 'task finished' && l.status === 'completed') n.set(l.task_id as string, (n.get(l.task_id as string) ?? 0) + 1);
  return n;
};

async function cluster(health: Record<string, string>, proplets: string[], extra: string[] = []) {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-failover-'));
  dirs.push(dir);
  const mqttPort = await freePort();
  const httpPort = await freePort();
  const args = ['--mqtt-port', String(mqttPort), '--http-port', String(httpPort), '--data-dir', dir, '--fetch-allow', '127.0.0.0/8', ...extra];
  const serve = await startServe(args, health);
  procs.push(serve);
  const ps: Proc[] = [];
  const byId = new Map<string, Proc>();
  await Promise.all(
    proplets.map(async (id) => {
      const { secret } = await serve.api.addProplet(id);
      const p = await startProplet(['--id', id, `--secret=${secret}`, '--broker', serve.brokerUrl, '--heartbeat', '200ms', '--max-tasks', '4']);
      procs.push(p);
      ps.push(p);
      byId.set(id, p);
    }),
  );
  await until(async () => (await serve.api.listProplets()).proplets.filter((p) => p.state === 'alive').length === proplets.length, 'proplets alive', 10_000);
  return { serve, ps, byId, args, dir };
}

test('SIGKILL a proplet: its tasks complete elsewhere after the failure threshold, none twice', async (t) => {
  const { serve, ps, byId } = await cluster({ HEALTH_CHECK_INTERVAL: '100ms', OFFLINE_THRESHOLD: '500ms', FAILURE_THRESHOLD: '1500ms' }, ['fo-1', 'fo-2', 'fo-3'], ['--scheduler', 'round-robin']);
  const tasks: Task[] = [];
  // long enough to be seen all running at once on a busy machine (the kill must find two running on its victim)
  for (let i = 0; i < 6; i++) tasks.push(await serve.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [3000] }, { start: true }));
  await until(async () => (await Promise.all(tasks.map((x) => serve.api.getTask(x.id)))).every((x) => x.state === 'Running'), 'all running', 5000).catch(async (e) => {
    const states = (await Promise.all(tasks.map((x) => serve.api.getTask(x.id)))).map((x) => `${x.state} ${x.proplet_id ?? ''} ${x.pending_reason ?? ''} ${x.error ?? ''}`);
    throw new Error(`${(e as Error).message}: ${states.join('; ')}`);
  });
  const placed = await Promise.all(tasks.map((x) => serve.api.getTask(x.id)));
  const per = new Map<string, number>();
  for (const x of placed) per.set(x.proplet_id!, (per.get(x.proplet_id!) ?? 0) + 1);
  t.deepEqual([...per.values()], [2, 2, 2], 'round robin put two on each');
  const victimId = placed[0]!.proplet_id!;
  const victim = byId.get(victimId)!;
  const onVictim = placed.filter((x) => x.proplet_id === victimId).map((x) => x.id);
  const killedAt = Date.now();
  await victim.kill('SIGKILL');
  await until(async () => (await Promise.all(tasks.map((x) => serve.api.getTask(x.id)))).every((x) => x.state === 'Completed'), 'all completed', 60_000);
  // no time budget (a busy machine only delays it): the evacuation is proven by attempts and proplets below
  t.log(`evacuated tasks completed ${Date.now() - killedAt} ms after the kill`);
  const done = await Promise.all(tasks.map((x) => serve.api.getTask(x.id)));
  for (const x of done.filter((d) => onVictim.includes(d.id))) {
    t.not(x.proplet_id, victimId);
    t.is(x.attempt, 2);
    t.is(x.attempts[0]!.outcome, 'evacuated');
  }
  const n = completions(ps);
  for (const x of tasks) t.is(n.get(x.id), 1, `task ${x.id} completed once`);
  t.is((await serve.api.getProplet(victimId)).state, 'failed');
});

test('kill -9 the control plane mid-run: after a restart on the same data dir every task is there once and completes', async (t) => {
  const health = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '2s', FAILURE_THRESHOLD: '5s' };
  const { serve, ps, args } = await cluster(health, ['kd-1', 'kd-2']);
  const ids: string[] = [];
  for (let i = 0; i < 4; i++) ids.push((await serve.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [1200] }, { start: true })).id);
  const pending = await serve.api.createTask({ name: 'sleep', file: sleepWasm, inputs: [10] }); // created, never started
  await until(async () => (await Promise.all(ids.map((id) => serve.api.getTask(id)))).every((x) => x.state === 'Running'), 'running', 5000);
  await serve.kill('SIGKILL');

  const again = await startServe(args, health);
  procs.push(again);
  const all = await again.api.listTasks();
  t.is(all.total, 5);
  t.deepEqual(all.tasks.map((x) => x.id).sort(), [...ids, pending.id].sort());
  await until(async () => (await Promise.all(ids.map((id) => again.api.getTask(id)))).every((x) => x.state === 'Completed'), 'completed after restart', 40_000);
  for (const id of ids) {
    const x = await again.api.getTask(id);
    t.is(x.attempt, 1, `task ${id} kept its attempt`);
    t.is(x.result?.results, 1200);
  }
  t.is((await again.api.getTask(pending.id)).state, 'Pending');
  const n = completions(ps);
  for (const id of ids) t.is(n.get(id), 1, `task ${id} completed once`);
});
