// The FederatedJob and TrainingRound controllers on a real kube-apiserver
// 1.20.2, against a real control plane and FL coordinator (startStack:
// embedded broker, control plane, three node proplets over TCP) training
// examples/fl-logreg. A FederatedJob applied with kubectl runs its rounds
// as TrainingRound resources owned by it, with a ModelCheckpoint per round
// whose sha256 is the stored model's; the adapter is stopped and started
// again mid-way (one control-plane job all along); Events tell the story;
// deleting a FederatedJob deletes its control-plane job and stops its
// round; a user's own TrainingRound runs as a standalone round, and a
// user's own ModelCheckpoint is checked against the model store.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { CoreV1Event } from '@kubernetes/client-node';
import { buildExamples, EXAMPLES_BUILD_DIR, EXAMPLES_DIR } from '../examples/build.ts';
import { startAdapter, type Adapter } from '../k8s-adapter/adapter.ts';
import { federatedJobController, modelCheckpointController, trainingRoundController } from '../k8s-adapter/controllers/fl.ts';
import { controlPlaneJobName, controlPlaneRoundName, JOB_LABEL } from '../k8s-adapter/fl-objects.ts';
import { API_VERSION, type FederatedJob, type FederatedJobSpec, type ModelCheckpoint, type TrainingRound } from '../k8s-adapter/types.ts';
import { modelDigest } from '../protocol/model-format.ts';
import { ApiError } from '../control-plane/client.ts';
import { applyObjects, eventually, getJson, installCrds, k8sCluster, kubectlOk } from './helpers/k8s.ts';
import { startStack, type Stack } from './helpers/stack.ts';

const NS = 'default';
const k8s = k8sCluster(test);
const PARTICIPANTS = ['fl-1', 'fl-2', 'fl-3'];
const logs: { level: string; msg: string }[] = [];
let stack: Stack | undefined;
let adapter: Adapter | undefined;
let modelRef: string;
let moduleDigest: string;

function start(): Promise<Adapter> {
  return startAdapter({
    kubeconfig: k8s.cluster().env.KUBECONFIG!,
    controlPlane: stack!.api,
    log: (level, msg, fields) => logs.push({ level, msg, ...fields }),
    pollMs: 300,
    controllers: [federatedJobController, trainingRoundController, modelCheckpointController],
  });
}

if (k8s.available) {
  test.before(async () => {
    const [, c, s] = await Promise.all([buildExamples(), k8s.started(), startStack({ health: { offlineThresholdMs: 20_000, failureThresholdMs: 60_000 } })]);
    stack = s;
    for (const id of PARTICIPANTS) await s.addProplet(id);
    moduleDigest = (await s.api.pushModule(readFileSync(join(EXAMPLES_BUILD_DIR, 'fl-logreg.wasm')))).digest;
    modelRef = (await s.api.pushModel(JSON.parse(readFileSync(join(EXAMPLES_DIR, 'fl-logreg', 'initial-model.json'), 'utf8')) as object)).ref;
    await installCrds(c);
    adapter = await start();
  });
  test.after.always(async () => {
    if (process.env.DEBUG_ADAPTER) console.error(JSON.stringify(logs.slice(-60), null, 1));
    await adapter?.close();
    await stack?.close();
  });
}

// --- helpers ---------------------------------------------------------------------------------

const kubectl = (args: string[]) => kubectlOk(k8s.cluster(), args);
const get = <T>(kind: string, name: string) => getJson<T>(k8s.cluster(), [kind, name, '-n', NS]);
const list = async <T>(kind: string, selector: string) => (await getJson<{ items: T[] }>(k8s.cluster(), [kind, '-n', NS, '-l', selector]))?.items ?? [];
const waitFor = <T extends { status?: unknown }>(kind: string, name: string, what: string, ok: (o: T) => boolean, ms = 30_000) =>
  eventually(`${kind} ${name}: ${what}`, () => get<T>(kind, name), (o) => o !== undefined && ok(o), ms, 200) as Promise<T>;

async function events(name: string): Promise<CoreV1Event[]> {
  return (await getJson<{ items: CoreV1Event[] }>(k8s.cluster(), ['events', '-n', NS, '--field-selector', `involvedObject.name=${name}`]))?.items ?? [];
}
const count = (evs: CoreV1Event[], reason: string) => evs.filter((e) => e.reason === reason).reduce((n, e) => n + (e.count ?? 1), 0);

const spec = (o: Partial<FederatedJobSpec> = {}): FederatedJobSpec => ({
  experimentId: 'logreg-k8s',
  modelRef,
  taskWasmImage: moduleDigest,
  participants: PARTICIPANTS.map((propletId) => ({ propletId })),
  hyperparams: { learningRate: 0.5, epochs: 1 },
  kOfN: 2,
  timeoutSeconds: 30,
  rounds: { total: 3, strategy: 'sequential' },
  aggregator: { algorithm: 'fedavg' },
  ...o,
});
const job = (name: string, s: FederatedJobSpec): FederatedJob => ({ apiVersion: API_VERSION, kind: 'FederatedJob', metadata: { name, namespace: NS }, spec: s });
const cpJobsOf = async (j: FederatedJob) => (await stack!.api.listFlJobs()).jobs.filter((x) => x.metadata.name === controlPlaneJobName(j));

// --- tests -----------------------------------------------------------------------------------

k8s.test('a FederatedJob runs its 3 rounds as TrainingRounds owned by it, a Ready ModelCheckpoint per round; the adapter restarts mid-way; Events', async (t) => {
  // two participants drop out (their last will: offline at once), so round 1 waits for one of them
  for (const p of stack!.proplets.filter((x) => x.id !== 'fl-1')) p.destroy();
  await eventually('fl-2 and fl-3 offline', async () => (await stack!.api.listProplets()).proplets.filter((x) => x.state === 'alive').map((x) => x.id), (l) => l.join() === 'fl-1', 10_000);
  await applyObjects(k8s.cluster(), job('logreg', spec()));
  let fj = await waitFor<FederatedJob>('federatedjob', 'logreg', 'Running', (o) => o.status?.phase === 'Running');
  await waitFor<TrainingRound>('traininground', 'round-1-logreg', 'Running', (o) => o.status?.phase === 'Running');
  t.is((await cpJobsOf(fj)).length, 1);

  // the adapter dies mid-way; the participants come back and the job goes on without it; a new adapter takes it up again
  await adapter!.close();
  adapter = undefined;
  for (const id of ['fl-2', 'fl-3']) await stack!.addProplet(id);
  const cpName = controlPlaneJobName(fj);
  await eventually('a round completed while no adapter ran', async () => (await stack!.api.getFlJob(cpName)).status.completedRounds, (n) => n >= 1, 30_000);
  adapter = await start();

  fj = await waitFor<FederatedJob>('federatedjob', 'logreg', 'Completed', (o) => o.status?.phase === 'Completed', 45_000);
  t.is((await cpJobsOf(fj)).length, 1, 'one control-plane job for the resource, before and after the restart');
  t.like(fj.status, { completedRounds: 3, currentRound: 3, observedGeneration: 1 });
  t.deepEqual(fj.status!.participants!.map((p) => p.propletId).sort(), PARTICIPANTS);
  for (const type of ['Ready', 'RoundActive', 'AggregationComplete']) t.truthy(fj.status!.conditions!.find((c) => c.type === type), type);
  t.is(fj.status!.conditions!.find((c) => c.type === 'Ready')?.status, 'True');

  // rounds: named after the job, owned by it, Completed
  const owner = { apiVersion: API_VERSION, kind: 'FederatedJob', name: 'logreg', uid: fj.metadata.uid, controller: true, blockOwnerDeletion: true };
  const rounds = await eventually('3 rounds completed', () => list<TrainingRound>('trainingrounds', `${JOB_LABEL}=logreg`), (l) => l.length === 3 && l.every((r) => r.status?.phase === 'Completed'), 10_000);
  t.deepEqual(rounds.map((r) => r.metadata.name).sort(), ['round-1-logreg', 'round-2-logreg', 'round-3-logreg']);
  for (const r of rounds) {
    t.deepEqual(r.metadata.ownerReferences, [owner]);
    t.like(r.spec, { federatedJobRef: { name: 'logreg' }, kOfN: 2, taskWasmImage: moduleDigest });
    t.true(r.status!.updatesReceived! >= 2);
    t.is(r.status!.checkpoint, `model-logreg-round-${r.spec.round}`);
  }
  t.is(rounds.find((r) => r.spec.round === 1)?.spec.modelRef, modelRef);

  // checkpoints: one per round, Ready, the sha256 of the stored model
  const mcs = await eventually('3 checkpoints Ready', () => list<ModelCheckpoint>('modelcheckpoints', `${JOB_LABEL}=logreg`), (l) => l.length === 3 && l.every((c) => c.status?.phase === 'Ready'), 10_000);
  for (const mc of mcs.sort((a, b) => a.spec.metadata!.round! - b.spec.metadata!.round!)) {
    const n = mc.spec.metadata!.round!;
    t.is(mc.metadata.name, `model-logreg-round-${n}`);
    t.deepEqual(mc.metadata.ownerReferences, [owner]);
    t.like(mc.spec, { federatedJobRef: { name: 'logreg' }, roundRef: { name: `round-${n}-logreg` }, algorithm: 'fedavg' });
    const bytes = await stack!.api.pullModel(mc.spec.modelRef);
    t.is(modelDigest(bytes), `sha256:${mc.status!.sha256}`);
    t.is(mc.status!.sizeBytes, bytes.length);
  }
  t.is(fj.status!.aggregatedModelRef, mcs.find((c) => c.spec.metadata!.round === 3)!.spec.modelRef);

  const evs = await events('logreg');
  t.is(count(evs, 'JobCreated'), 1, 'created once, restart or not');
  t.is(count(evs, 'RoundStarted'), 3);
  t.is(count(evs, 'RoundCompleted'), 3);
  t.is(count(evs, 'AggregationComplete'), 3);
  t.is(count(evs, 'JobCompleted'), 1);
  // kubectl shows it
  t.regex(await kubectl(['get', 'federatedjob', 'logreg', '-n', NS]), /^logreg\s+Completed\s+3\s+3\s+3\s/m);
});

k8s.test('a job whose initial model does not exist fails: status Failed with the reason, Event JobFailed', async (t) => {
  const missing = `sha256:${'0'.repeat(64)}`;
  await applyObjects(k8s.cluster(), job('no-model', spec({ modelRef: missing })));
  const fj = await waitFor<FederatedJob>('federatedjob', 'no-model', 'Failed', (o) => o.status?.phase === 'Failed');
  t.regex(fj.status?.message ?? '', /initial model/);
  t.is(fj.status?.conditions?.find((c) => c.type === 'Ready')?.status, 'False');
  const evs = await eventually('JobFailed', () => events('no-model'), (l) => count(l, 'JobFailed') === 1, 5000);
  t.is(evs.find((e) => e.reason === 'JobFailed')?.type, 'Warning');
});

k8s.test('a TrainingRound a user creates runs as a standalone round; its checkpoint is a ModelCheckpoint owned by it', async (t) => {
  const tr: TrainingRound = {
    apiVersion: API_VERSION,
    kind: 'TrainingRound',
    metadata: { name: 'probe', namespace: NS },
    spec: { roundId: 'probe-1', modelRef, taskWasmImage: moduleDigest, participants: PARTICIPANTS.slice(0, 2), kOfN: 2, timeoutSeconds: 30, hyperparams: { learningRate: 0.5, epochs: 1 } },
  };
  await applyObjects(k8s.cluster(), tr);
  const done = await waitFor<TrainingRound>('traininground', 'probe', 'Completed', (o) => o.status?.phase === 'Completed');
  t.like(done.status, { updatesReceived: 2, checkpoint: 'model-probe' });
  const cp = await stack!.api.getFlRound(controlPlaneRoundName(done));
  t.is(cp.status.phase, 'Completed');
  t.is(cp.spec.federatedJobRef, undefined);
  const mc = await waitFor<ModelCheckpoint>('modelcheckpoint', 'model-probe', 'Ready', (o) => o.status?.phase === 'Ready');
  t.deepEqual(mc.metadata.ownerReferences?.map((o) => [o.kind, o.name, o.uid]), [['TrainingRound', 'probe', done.metadata.uid]]);
  t.is(`sha256:${mc.status?.sha256}`, mc.spec.modelRef);
  t.is(modelDigest(await stack!.api.pullModel(mc.spec.modelRef)), mc.spec.modelRef);
  const evs = await events('probe');
  for (const reason of ['RoundCreated', 'RoundStarted', 'RoundCompleted', 'AggregationComplete']) t.is(count(evs, reason), 1, reason);
  // deleting it deletes the round
  await kubectl(['delete', 'traininground', 'probe', '-n', NS, '--timeout', '20s']);
  const err = await stack!.api.getFlRound(controlPlaneRoundName(done)).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.true(err instanceof ApiError && err.status === 404);
});

k8s.test('a ModelCheckpoint a user creates is checked against the model store: Ready with its sha256, or Failed saying so', async (t) => {
  const mc = (name: string, ref: string): ModelCheckpoint => ({ apiVersion: API_VERSION, kind: 'ModelCheckpoint', metadata: { name, namespace: NS }, spec: { modelRef: ref, algorithm: 'fedavg' } });
  await applyObjects(k8s.cluster(), mc('initial', modelRef), mc('nowhere', `sha256:${'1'.repeat(64)}`));
  const ok = await waitFor<ModelCheckpoint>('modelcheckpoint', 'initial', 'Ready', (o) => o.status?.phase === 'Ready');
  t.is(`sha256:${ok.status?.sha256}`, modelRef);
  t.is(ok.status?.sizeBytes, (await stack!.api.pullModel(modelRef)).length);
  const bad = await waitFor<ModelCheckpoint>('modelcheckpoint', 'nowhere', 'Failed', (o) => o.status?.phase === 'Failed');
  t.like(bad.status?.conditions?.[0], { type: 'Ready', status: 'False', reason: 'ModelNotFound' });
});

k8s.test('deleting a running FederatedJob deletes its control-plane job and stops its round', async (t) => {
  // k 3 of fl-1, fl-2 and a proplet that never comes: round 1 waits
  await applyObjects(k8s.cluster(), job('stuck', spec({ participants: [...PARTICIPANTS.slice(0, 2), 'ghost'].map((propletId) => ({ propletId })), kOfN: 3, timeoutSeconds: 120 })));
  const fj = await waitFor<FederatedJob>('federatedjob', 'stuck', 'running', (o) => o.status?.phase === 'Running');
  await waitFor<TrainingRound>('traininground', 'round-1-stuck', 'running', (o) => o.status?.phase === 'Running');
  const cpName = controlPlaneJobName(fj);
  await kubectl(['delete', 'federatedjob', 'stuck', '-n', NS, '--timeout', '20s']);
  const err = await stack!.api.getFlJob(cpName).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.true(err instanceof ApiError && err.status === 404, 'the control-plane job is gone');
  const round = await stack!.api.getFlRound(`round-1-${cpName}`);
  t.like(round.status, { phase: 'Failed' });
  t.regex(round.status.message ?? '', /was deleted/);
  // the job's TrainingRound carries the adapter's finalizer too (the runtime puts it on every object of
  // the kind): deleting it, as garbage collection does (maybe already), is not held up by it
  const tr = await get<TrainingRound>('traininground', 'round-1-stuck');
  if (tr) t.deepEqual(tr.metadata.ownerReferences?.map((o) => o.uid), [fj.metadata.uid]);
  await kubectl(['delete', 'traininground', 'round-1-stuck', '-n', NS, '--ignore-not-found', '--timeout', '20s']);
  t.is(await get('traininground', 'round-1-stuck'), undefined);
});
