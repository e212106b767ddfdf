// N control planes on one PostgreSQL store and one Mosquitto: tasks created on
// any replica's API are placed by the lease's owner and run once, on node
// proplets and on simulated MCUs (`propeller sim`, per-proplet topics, modules
// fetched in chunks from whichever replica the shared subscription picks);
// kill -9 the owner mid-stream, another takes over, every task completes
// exactly once and the survivors' APIs answer throughout.

import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { postgresMissing, testPostgres } from './helpers/postgres.ts';
import { BIN, startProplet, startServe, type Proc, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const missing = postgresMissing() ?? mosquittoMissing();
const procs: Proc[] = [];
const dirs: string[] = [];
let mosquitto: Mosquitto | undefined;
let sleepWasm: string;
let flWasm: Uint8Array;
const EXAMPLE = new URL('../examples/fl-logreg/', import.meta.url).pathname;

test.before(async () => {
  if (missing) return;
  await buildExamples();
  sleepWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm')).toString('base64');
  flWasm = readFileSync(join(EXAMPLES_BUILD_DIR, 'fl-logreg.wasm'));
  mosquitto = await startMosquitto();
});
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await mosquitto?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** `propeller sim` on the external broker, its JSON log lines collected (the devices log each task they finish). */
function startSim(ids: string[], args: string[]): Proc {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-replica-sim-'));
  dirs.push(dir);
  // Mosquitto here takes any account (allow_anonymous): the devices' secrets are the file's
  const creds = join(dir, 'devices.json');
  writeFileSync(creds, JSON.stringify(Object.fromEntries(ids.map((id) => [id, `secret-${id}`]))));
  const proc = spawn('node', [BIN, 'sim', '--devices', String(ids.length), '--credentials', creds, '--log-level', 'info', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  const logs: Record<string, unknown>[] = [];
  let buf = '';
  proc.stderr!.on('data', (d) => {
    buf += d;
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ raw: line });
      }
    }
  });
  return {
    proc,
    logs,
    async kill(signal = 'SIGKILL') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill(signal);
      await exited;
    },
  };
}

/** A task as a replica has it: another replica's write reaches it one commit and one notification later (404 until then). */
const seen = (s: Serve, id: string) =>
  s.api.getTask(id).catch((e: { status?: number }) => {
    if (e.status === 404) return undefined;
    throw e;
  });

(missing ? test.skip : test.serial)('three replicas, node and MCU proplets: tasks from any API run once; kill -9 the owner mid-stream, another takes over', async (t) => {
  const store = await testPostgres();
  const health = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '3s', FAILURE_THRESHOLD: '6s' };
  const replicas: Serve[] = [];
  for (let i = 0; i < 3; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'propeller-replica-'));
    dirs.push(dir);
    const s = await startServe(['--broker', mosquitto!.url, '--store', store, '--http-port', String(await freePort()), '--data-dir', dir, '--api-token', 'replica-token'], health);
    procs.push(s);
    replicas.push(s);
  }
  const ownerLog = (s: Serve) => s.logs.some((l) => l.msg === 'lease acquired');
  await until(() => replicas.some(ownerLog), 'one replica owns the lease');
  const owner = replicas.find(ownerLog)!;
  const survivors = replicas.filter((s) => s !== owner);
  const other = survivors[0]!;
  const proplets: Proc[] = [];
  for (const id of ['rp-1', 'rp-2']) {
    const p = await startProplet(['--id', id, '--broker', mosquitto!.url, '--heartbeat', '300ms', '--max-tasks', '4']);
    procs.push(p);
    proplets.push(p);
  }
  // two simulated MCUs in one `propeller sim` process: per-proplet topics (the default with --broker), a module fetched in chunks
  const mcus = ['rm-1', 'rm-2'];
  const sim = startSim(mcus, ['--broker', mosquitto!.url, '--heartbeat', '300ms', '--max-tasks', '2']);
  procs.push(sim);
  proplets.push(sim);
  const seeAll = async (s: Serve) => (await s.api.listProplets()).proplets.filter((p) => p.state === 'alive').length === 2 + mcus.length;
  await until(async () => (await Promise.all(replicas.map(seeAll))).every(Boolean), 'every replica sees the node and MCU proplets').catch((e) => {
    t.log(JSON.stringify(other.logs.slice(-8)), JSON.stringify(proplets[0]!.logs.slice(-5)), JSON.stringify(sim.logs.slice(-5)));
    throw e;
  });
  // tasks through both APIs, one per wave pinned to each MCU (the others placed where there is room)
  const ids: string[] = [];
  const sleepTask = (i: number, ms: number) => ({ name: 'sleep', file: sleepWasm, inputs: [ms], ...(i < mcus.length ? { proplet_id: mcus[i]! } : {}) });
  // the first through the replicas that do not place: the owner has to load the module they stored
  const via = [...survivors, ...survivors, owner, owner];
  for (let i = 0; i < 6; i++) ids.push((await via[i]!.api.createTask(sleepTask(i, 400), { start: true })).id);
  await until(async () => (await Promise.all(ids.map((id) => seen(other, id)))).every((x) => x?.state === 'Completed'), 'first wave completed', 60_000).catch(async (e) => {
    t.log(JSON.stringify((await Promise.all(ids.map((id) => other.api.getTask(id)))).map((x) => [x.state, x.proplet_id, x.pending_reason])));
    t.log(JSON.stringify((await Promise.all(ids.map((id) => owner.api.getTask(id)))).map((x) => [x.state, x.proplet_id, x.pending_reason])));
    t.log(JSON.stringify(owner.logs.filter((l) => l.level !== 'debug').slice(-6)));
    t.log(JSON.stringify(proplets[0]!.logs.slice(-4)), JSON.stringify(sim.logs.filter((l) => l.level !== 'debug').slice(-6)));
    throw e;
  });
  // a second wave, and the owner dies in the middle of it
  for (let i = 0; i < 6; i++) ids.push((await survivors[i % 2]!.api.createTask(sleepTask(i, 800), { start: true })).id);
  // the holder now: on a loaded machine a late renewal may have handed the lease to another already
  const acquiredAt = (s: Serve) => Math.max(-1, ...s.logs.filter((l) => l.msg === 'lease acquired').map((l) => Date.parse(l.t as string)));
  const dying = replicas.reduce((a, b) => (acquiredAt(b) > acquiredAt(a) ? b : a));
  if (dying !== owner) t.log('the lease moved before the kill: killing its holder now');
  const living = replicas.filter((s) => s !== dying);
  const killedAt = Date.now();
  await dying.kill('SIGKILL');
  let answered = 0;
  await until(
    async () => {
      // both survivors answer, taking turns
      const all = await Promise.all(ids.map((id) => seen(living[answered % 2]!, id)));
      answered++;
      return all.every((x) => x?.state === 'Completed');
    },
    'every task completed after the owner died',
    90_000,
  ).catch(async (e) => {
    t.log(JSON.stringify((await Promise.all(ids.map((id) => living[0]!.api.getTask(id)))).map((x) => [x.state, x.proplet_id, x.attempt, x.pending_reason])));
    t.log(JSON.stringify(living[0]!.logs.filter((l) => l.level !== 'debug' && l.msg !== 'message dropped').slice(-8)));
    throw e;
  });
  // the survivors record results whoever holds the lease, so the tasks can all complete before the dead owner's lease runs out
  const afterKill = (s: Serve) => s.logs.filter((l) => l.msg === 'lease acquired' && Date.parse(l.t as string) >= killedAt);
  await until(() => living.some((s) => afterKill(s).length > 0), 'a survivor takes the lease over');
  const tookOver = living.flatMap(afterKill).sort((x, y) => Date.parse(x.t as string) - Date.parse(y.t as string));
  t.log(`takeover ${Date.parse(tookOver[0]!.t as string) - killedAt} ms after the kill (lease 5 s); the survivors' APIs answered ${answered} polls meanwhile`);
  const completions = new Map<string, number>();
  for (const p of proplets) for (const l of p.logs) if (l.msg === 'task finished' && l.status === 'completed') completions.set(l.task_id as string, (completions.get(l.task_id as string) ?? 0) + 1);
  for (const id of ids) t.is(completions.get(id), 1, `task ${id} completed once`);
  const onMcu = sim.logs.filter((l) => l.msg === 'task finished' && l.status === 'completed').map((l) => l.id);
  t.deepEqual([...new Set(onMcu)].sort(), mcus, 'the pinned tasks ran on both MCUs');
  for (const s of living) t.is((await s.api.listTasks()).tasks.length, ids.length);
});

(missing ? test.skip : test.serial)('FL: kill -9 the replica that runs the rounds mid-job: the survivor restarts its round, the job completes, no round aggregated twice', async (t) => {
  const store = await testPostgres();
  const health = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '5s', FAILURE_THRESHOLD: '20s' };
  // a domain of its own on the shared Mosquitto: the other test's plane is another control plane
  const domain = ['--domain', 'fl-replicas'];
  const replicas: Serve[] = [];
  for (let i = 0; i < 2; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'propeller-replica-'));
    dirs.push(dir);
    const s = await startServe(['--broker', mosquitto!.url, '--store', store, '--http-port', String(await freePort()), '--data-dir', dir, '--api-token', 'replica-token', ...domain], health);
    procs.push(s);
    replicas.push(s);
  }
  const ownerLog = (s: Serve) => s.logs.some((l) => l.msg === 'lease acquired');
  await until(() => replicas.some(ownerLog), 'one replica owns the lease');
  const owner = replicas.find(ownerLog)!;
  const other = replicas.find((s) => s !== owner)!;
  const ids = ['fr-1', 'fr-2', 'fr-3'];
  for (const id of ids) procs.push(await startProplet(['--id', id, '--broker', mosquitto!.url, '--heartbeat', '300ms', ...domain]));
  const seeAll = async (s: Serve) => (await s.api.listProplets()).proplets.filter((p) => p.state === 'alive').length === ids.length;
  await until(async () => (await Promise.all(replicas.map(seeAll))).every(Boolean), 'every replica sees the proplets');
  // model and module stored through the replica that will survive: the owner loads them from the store
  const { ref } = await other.api.pushModel(JSON.parse(readFileSync(join(EXAMPLE, 'initial-model.json'), 'utf8')) as object);
  const { digest } = await other.api.pushModule(flWasm);
  const job = 'fl-rep';
  // the job through the owner, which dies with its round running
  await owner.api.createFlJob({
    apiVersion: 'propeller.absmach.io/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name: job },
    spec: { experimentId: job, modelRef: ref, taskWasmImage: digest, participants: ids.map((propletId) => ({ propletId })), kOfN: 2, timeoutSeconds: 30, rounds: { total: 3, strategy: 'sequential' }, aggregator: { algorithm: 'fedavg' }, hyperparams: { epochs: 1 } },
  });
  // the job reaches the other replica one commit and one notification later (404 until then)
  const jobOn = (s: Serve) => s.api.getFlJob(job).catch((e: { status?: number }) => (e.status === 404 ? undefined : Promise.reject(e)));
  await until(async () => ((await jobOn(other))?.status.completedRounds ?? 0) >= 1, 'round 1 completed', 60_000);
  await owner.kill('SIGKILL');
  await until(async () => (await other.api.getFlJob(job)).status.phase === 'Completed', 'job completed on the survivor', 90_000).catch(async (e) => {
    t.log(JSON.stringify((await other.api.getFlJob(job)).status));
    t.log(JSON.stringify(other.logs.filter((l) => l.level !== 'debug').slice(-10)));
    throw e;
  });
  const rounds = (await other.api.flRounds(job)).rounds;
  t.deepEqual(
    rounds.map((r) => r.metadata.name),
    [1, 2, 3].map((n) => `round-${n}-${job}`),
    'no round ran twice as a new round',
  );
  t.true(rounds.every((r) => r.status.phase === 'Completed'));
  t.is((await other.api.flCheckpoints(job)).total, 3, 'one checkpoint per round: none aggregated twice');
  t.log(`rounds restarted by the new owner: ${rounds.filter((r) => r.status.restarts > 0).map((r) => r.metadata.name).join(', ') || 'none'}`);
});
