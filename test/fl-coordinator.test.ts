// The FL coordinator over real MQTT and HTTP, with scripted participants: each
// is an mqtt.js client that registers as a proplet, takes its round task's
// start and answers with the update the test chooses (a model, a late one, a
// poisoned one, a streamed one, none). The real proplets and the real client
// module run in test/fl-e2e.test.ts.

import test from 'ava';
import { randomUUID } from 'node:crypto';
import type { MqttClient } from 'mqtt';
import { decode, encode, type FlUpdate, type Start } from '../protocol/index.ts';
import { decodeModel, encodeModel, float32ToLE, MODEL_FORMAT, modelDigest, type Model } from '../protocol/model-format.ts';
import { flUpdateTopic, propletSubscriptions, topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
test.before(async () => {
  s = await startStack();
});
test.after.always(async () => {
  await s?.close();
});

const model = (w: number[], b: number): Model => ({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [w.length], data: new Float32Array(w) }, { name: 'b', shape: [], data: new Float32Array([b]) }] });

type Answer = { model?: Model; samples?: number; delayMs?: number; after?: Promise<unknown>; error?: string; streamed?: boolean; none?: boolean; poisoned?: boolean; staleFirst?: boolean };

/** A model whose first value is NaN: encodeModel refuses to write one, so the bytes are patched. */
function poisoned(m: Model): Uint8Array {
  const bytes = encodeModel(m);
  const first = Buffer.from(float32ToLE(m.tensors[0]!.data.subarray(0, 1)));
  const at = Buffer.from(bytes).indexOf(first);
  bytes.set(float32ToLE(new Float32Array([NaN])), at);
  return bytes;
}

interface Participant {
  c: MqttClient;
  starts: Start[];
}

/** A scripted proplet: `answer` decides what it sends for each round task. */
async function participant(id: string, answer: (start: Start, reference: Model) => Answer): Promise<Participant> {
  const c = await s.client(id);
  const starts: Start[] = [];
  c.on('message', (t, payload) => {
    if (!t.includes('/control/manager/start/')) return;
    const start = decode('manager.start', payload).msg;
    starts.push(start);
    void (async () => {
      const pub = (kind: 'proplet.results', msg: object) => c.publishAsync(topic(scope, kind), encode(kind, msg as never, 'cbor'), { qos: 1 });
      await pub('proplet.results', { proplet_id: id, task_id: start.id, attempt: start.attempt, status: 'running' });
      const env = start.env!;
      const reference = decodeModel(await s.api.pullModel(env.MODEL_DIGEST!));
      const a = answer(start, reference);
      if (a.delayMs) await new Promise((r) => setTimeout(r, a.delayMs));
      await a.after;
      if (!a.none) {
        const head = { v: 1, proplet_id: id, round_id: env.ROUND_ID!, task_id: start.id };
        const updates: FlUpdate[] = a.error
          ? [{ ...head, error: a.error }]
          : a.streamed
            ? a.model!.tensors.flatMap((t, tensor) => [...t.data].map((v, offset) => ({ ...head, num_samples: a.samples ?? 10, metrics: { loss: 0.5 }, parts: a.model!.tensors.reduce((n, x) => n + x.data.length, 0), tensor, offset, data: float32ToLE(new Float32Array([v])) })))
                .map((u, part) => ({ ...u, part }))
            : [{ ...head, num_samples: a.samples ?? 10, metrics: { loss: 0.5, accuracy: 0.75 }, model: a.poisoned ? poisoned(a.model!) : encodeModel(a.model!) }];
        if (a.staleFirst) updates.unshift({ ...updates[0]!, task_id: randomUUID() });
        for (const u of updates) await c.publishAsync(flUpdateTopic(scope, env.ROUND_ID!, id), encode('fl.update', u, 'cbor'), { qos: 1 });
      }
      await pub('proplet.results', { proplet_id: id, task_id: start.id, attempt: start.attempt, status: 'completed' });
    })().catch(() => {}); // a participant still training when the test closes the stack just stops
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', encoding: 'cbor', capacity: { max_tasks: 4 } }, 'cbor'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', `${id} registered`);
  return { c, starts };
}

async function job(name: string, participants: string[], extra: Record<string, unknown> = {}) {
  const { ref } = await s.api.pushModel(encodeModel(model([0, 0], 0)));
  const { digest } = await s.api.pushModule(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
  return s.api.createFlJob({
    apiVersion: 'propeller.absmach.io/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name },
    spec: { experimentId: name, modelRef: ref, taskWasmImage: digest, participants: participants.map((propletId) => ({ propletId })), kOfN: 2, timeoutSeconds: 20, rounds: { total: 2, strategy: 'sequential' }, aggregator: { algorithm: 'fedavg' }, ...extra },
  });
}

const metric = async (line: RegExp): Promise<number> => {
  const text = await (await fetch(`${s.apiUrl}/metrics`)).text();
  const m = text.split('\n').find((l) => line.test(l));
  return m ? Number(m.split(' ').at(-1)) : 0;
};

// serial: ava runs it before the others, so no other job keeps memory or ends meanwhile
test.serial('FedAvg memory handed back between rounds is released when the last running job ends', async (t) => {
  const kept = async () => {
    const line = (await (await fetch(`${s.apiUrl}/metrics`)).text()).split('\n').find((l) => l.startsWith('propeller_fl_kept_memory_bytes '));
    if (!line) throw new Error('no propeller_fl_kept_memory_bytes in /metrics');
    return Number(line.split(' ')[1]);
  };
  let open!: () => void;
  const lastRound = new Promise<void>((r) => (open = r));
  await participant('mem-a', (st, ref) => ({ model: model([ref.tensors[0]!.data[0]! + 1, 1], 1), after: st.env?.ROUND_ID === 'round-2-mem' ? lastRound : undefined }));
  await job('mem', ['mem-a'], { kOfN: 1 });
  await until(async () => (await s.api.getFlRound('round-2-mem').catch(() => undefined))?.status.phase === 'Running', 'round 2 running');
  open();
  await until(async () => (await s.api.getFlJob('mem')).status.phase === 'Completed', 'job completed');
  t.is((await s.api.flCheckpoints('mem')).checkpoints.length, 2, 'both rounds aggregated (each handed its memory back)');
  t.is(await kept(), 0);
});

test('k of n: each round closes on the first k updates, the slow one is refused as late, the next round trains the aggregate', async (t) => {
  const lateBefore = await metric(/^propeller_fl_updates_total\{result="late"\}/);
  const ids = ['kn-a', 'kn-b', 'kn-c'];
  // a: 10 samples of w=[1,1]; b: 30 samples of w=[3,3]; c: always too slow
  await participant('kn-a', (_s, ref) => ({ model: model([ref.tensors[0]!.data[0]! + 1, 1], 1), samples: 10 }));
  await participant('kn-b', (_s, ref) => ({ model: model([ref.tensors[0]!.data[0]! + 3, 3], 3), samples: 30 }));
  const slow = await participant('kn-c', () => ({ model: model([100, 100], 100), delayMs: 1500 }));
  await job('kn', ids);
  await until(async () => (await s.api.getFlJob('kn')).status.phase === 'Completed', 'job completed', 20_000);
  const j = await s.api.getFlJob('kn');
  t.is(j.status.completedRounds, 2);
  const rounds = (await s.api.flRounds('kn')).rounds;
  t.deepEqual(rounds.map((r) => r.metadata.name), ['round-1-kn', 'round-2-kn']);
  for (const r of rounds) {
    t.is(r.status.phase, 'Completed');
    t.is(r.status.updatesReceived, 2);
    t.is(r.status.updatesRequired, 2);
    t.deepEqual(r.status.participants.filter((p) => p.phase === 'Submitted').map((p) => p.propletId).sort(), ['kn-a', 'kn-b']);
    t.is(r.status.metrics?.totalSamples, 40);
  }
  // round 1: (10·1 + 30·3)/40 = 2.5 for w[0]; round 2 starts from it: (10·3.5 + 30·5.5)/40 = 5
  const cps = (await s.api.flCheckpoints('kn')).checkpoints;
  t.deepEqual(cps.map((c) => c.metadata.name), ['model-kn-round-1', 'model-kn-round-2']);
  const m1 = decodeModel(await s.api.pullModel(cps[0]!.spec.modelRef));
  const m2 = decodeModel(await s.api.pullModel(cps[1]!.spec.modelRef));
  t.is(m1.tensors[0]!.data[0], 2.5);
  t.is(m2.tensors[0]!.data[0], 5);
  t.is(m2.meta?.round, 2);
  for (const c of cps) {
    t.is(c.status.phase, 'Ready');
    const bytes = await s.api.pullModel(c.spec.modelRef);
    t.is(modelDigest(bytes), `sha256:${c.status.sha256}`);
    t.is(c.status.sizeBytes, bytes.length);
    t.is(c.spec.algorithm, 'fedavg');
    t.is(c.spec.metadata.totalSamples, 40);
  }
  t.is(j.status.aggregatedModelRef, cps[1]!.spec.modelRef);
  t.is(rounds[1]!.spec.modelRef, cps[0]!.spec.modelRef, 'round 2 trains round 1\'s aggregate');
  t.is(slow.starts[1]?.env?.MODEL_DIGEST, cps[0]!.spec.modelRef);
  t.is(slow.starts[0]?.env?.HYPERPARAMS, '{}');
  t.deepEqual([slow.starts[0]?.env?.FL_INDEX, slow.starts[0]?.env?.FL_REPLICAS], ['2', '3']);
  // the slow participant's updates arrive after each round closed
  await until(async () => (await s.api.getFlRound('round-2-kn')).status.refused.late >= 1, 'late update refused', 5000);
  t.true((await metric(/^propeller_fl_updates_total\{result="late"\}/)) >= lateBefore + 2);
  t.is((await s.api.getFlRound('round-1-kn')).status.participants.find((p) => p.propletId === 'kn-c')?.phase, 'Stopped');
  t.like(j.status, { phase: 'Completed', reason: 'AllRoundsCompleted' });
  t.false('conditions' in j.status, 'conditions are the Kubernetes adapter\'s');
  t.false('apiVersion' in j, 'the API group is the Kubernetes adapter\'s');
});

test('updates that must not count: a poisoned one, one from a non-participant, a stale one; a streamed one counts', async (t) => {
  await participant('bad-nan', () => ({ model: model([7, 1], 1), poisoned: true }));
  await participant('bad-stream', () => ({ model: model([2, 2], 2), streamed: true, samples: 10 }));
  await participant('bad-ok', () => ({ model: model([4, 4], 4), samples: 10, staleFirst: true }));
  const stranger = await participant('bad-stranger', () => ({ none: true }));
  await job('bad', ['bad-nan', 'bad-stream', 'bad-ok'], { rounds: { total: 1 } });
  // a registered proplet that is not in the round sends an update for it
  await until(async () => (await s.api.getFlRound('round-1-bad').catch(() => undefined))?.status.phase === 'Running', 'round running');
  const r0 = await s.api.getFlRound('round-1-bad');
  const stray = { v: 1, proplet_id: 'bad-stranger', round_id: 'round-1-bad', task_id: r0.status.participants[0]!.taskId!, num_samples: 5, model: encodeModel(model([9, 9], 9)) };
  await stranger.c.publishAsync(flUpdateTopic(scope, 'round-1-bad', 'bad-stranger'), encode('fl.update', stray, 'cbor'), { qos: 1 });
  await until(async () => (await s.api.getFlJob('bad')).status.phase === 'Completed', 'job completed', 10_000);
  const r = await s.api.getFlRound('round-1-bad');
  const byId = Object.fromEntries(r.status.participants.map((p) => [p.propletId, p]));
  t.is(byId['bad-nan']!.phase, 'Refused');
  t.regex(byId['bad-nan']!.reason!, /^non_finite/);
  t.is(byId['bad-stream']!.phase, 'Submitted');
  t.is(byId['bad-ok']!.phase, 'Submitted');
  t.is(r.status.refused.notParticipant, 1);
  t.is(r.status.refused.invalid, 1);
  t.is(r.status.refused.stale, 1);
  const m = decodeModel(await s.api.pullModel(r.status.aggregatedModelRef!));
  t.deepEqual([...m.tensors[0]!.data], [3, 3], 'mean of the streamed [2,2] and [4,4]; the NaN update is not in it');
});

test('a round that cannot reach k before its timeout fails; the job retries per roundRetries, then fails', async (t) => {
  await participant('to-a', () => ({ model: model([1, 1], 1) }));
  await participant('to-b', () => ({ none: true }));
  await job('to', ['to-a', 'to-b'], { timeoutSeconds: 1, roundRetries: 1, rounds: { total: 3 } });
  await until(async () => (await s.api.getFlJob('to')).status.phase === 'Failed', 'job failed', 10_000);
  const j = await s.api.getFlJob('to');
  t.is(j.status.completedRounds, 0);
  t.is(j.status.retriesUsed, 1);
  t.regex(j.status.message!, /round 1 failed: timed out after 1 s with 1 of 2 required updates/);
  const rounds = (await s.api.flRounds('to')).rounds;
  t.deepEqual(rounds.map((r) => [r.metadata.name, r.status.phase]), [['round-1-to', 'Failed'], ['round-1-to-retry-1', 'Failed']]);
  t.is((await s.api.flCheckpoints('to')).total, 0);
});

test('a participant that reports an error makes k unreachable at once, without waiting for the timeout', async (t) => {
  await participant('er-a', () => ({ model: model([1, 1], 1) }));
  await participant('er-b', () => ({ error: 'cannot read the model' }));
  const started = Date.now();
  await job('er', ['er-a', 'er-b'], { timeoutSeconds: 60, rounds: { total: 1 } });
  await until(async () => (await s.api.getFlJob('er')).status.phase === 'Failed', 'job failed', 10_000);
  t.true(Date.now() - started < 10_000);
  const r = await s.api.getFlRound('round-1-er');
  t.regex(r.status.message!, /only 1 of 2 participants can still send an update, 2 required/);
  t.regex(r.status.participants.find((p) => p.propletId === 'er-b')!.reason!, /cannot read the model/);
});

test('bad job manifests are refused with the field named; YAML is accepted as the seed writes it', async (t) => {
  const post = (body: string, type = 'application/json') => fetch(`${s.apiUrl}/fl/jobs`, { method: 'POST', headers: { 'content-type': type }, body });
  const bad = async (spec: Record<string, unknown>, field: string) => {
    const res = await post(JSON.stringify({ metadata: { name: 'x' }, spec: { experimentId: 'e', modelRef: 'oci://r/m:v1', taskWasmImage: 'oci://r/c:v1', participants: [{ propletId: 'p' }], kOfN: 1, timeoutSeconds: 10, rounds: { total: 1 }, aggregator: { algorithm: 'fedavg' }, ...spec } }));
    t.is(res.status, 400);
    t.is(((await res.json()) as { field: string }).field, field);
  };
  await bad({ kOfN: 2 }, 'spec.kOfN');
  await bad({ aggregator: { algorithm: 'krum' } }, 'spec.aggregator.algorithm');
  await bad({ aggregator: { algorithm: 'fedavg', config: { trim: 1 } } }, 'spec.aggregator.config');
  await bad({ modelRef: '/etc/passwd' }, 'spec.modelRef');
  await bad({ rounds: { total: 0 } }, 'spec.rounds.total');
  await bad({ participants: [{ propletId: 'a/b' }] }, 'spec.participants[0].propletId');
  t.is((await post('{', 'application/json')).status, 400);
  const yaml = `apiVersion: propeller.absmach.io/v1alpha1
kind: FederatedJob
metadata:
  name: fl-mnist-experiment
  namespace: default
spec:
  experimentId: "exp-001"
  modelRef: "oci://127.0.0.1:1/models/mnist:v1"
  taskWasmImage: "oci://127.0.0.1:1/fl-client:latest"
  participants:
    - propletId: "proplet-1"
      namespace: "default"
    - propletId: "proplet-2"
      namespace: "default"
  hyperparams:
    learningRate: 0.01
  kOfN: 2
  timeoutSeconds: 300
  rounds:
    total: 10
    strategy: "sequential"
  aggregator:
    algorithm: "fedavg"
    config: {}
`;
  const res = await post(yaml, 'application/yaml');
  t.is(res.status, 201);
  // the registry does not exist: the job fails with a reason, nothing crashes
  await until(async () => (await s.api.getFlJob('fl-mnist-experiment')).status.phase === 'Failed', 'job failed', 10_000);
  t.regex((await s.api.getFlJob('fl-mnist-experiment')).status.message!, /initial model oci:\/\/127\.0\.0\.1:1\/models\/mnist:v1/);
  t.is((await post(yaml, 'application/yaml')).status, 409);
});

test('a standalone TrainingRound (the seed\'s manifest) runs on its own; participants by selector; the seed\'s metrics are exported', async (t) => {
  await participant('sa-a', (_s, ref) => ({ model: model([ref.tensors[0]!.data[0]! + 2, 2], 2), samples: 5 }));
  await participant('sa-b', (_s, ref) => ({ model: model([ref.tensors[0]!.data[0]! + 4, 4], 4), samples: 15 }));
  const { ref } = await s.api.pushModel(encodeModel(model([0, 0], 0)));
  const { digest } = await s.api.pushModule(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
  await s.api.createFlRound({
    apiVersion: 'propeller.absmach.io/v1alpha1',
    kind: 'TrainingRound',
    metadata: { name: 'round-1-solo' },
    spec: { roundId: 'round-1', modelRef: ref, taskWasmImage: digest, participants: ['sa-a', 'sa-b'], hyperparams: { learningRate: 0.01, shard: '{index}/{replicas}' }, kOfN: 2, timeoutSeconds: 20 },
  });
  await until(async () => (await s.api.getFlRound('round-1-solo')).status.phase === 'Completed', 'standalone round completed', 10_000);
  const r = await s.api.getFlRound('round-1-solo');
  t.is(decodeModel(await s.api.pullModel(r.status.aggregatedModelRef!)).tensors[0]!.data[0], 3.5, '(5·2 + 15·4)/20');
  t.is(r.status.checkpoint, 'model-round-1-solo');

  // participants chosen by a PropletGroup's selector among the alive proplets
  await fetch(`${s.apiUrl}/proplet-groups`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'none-such', selector: { matchLabels: { zone: 'nowhere' } } }) });
  await job('sel', [], { participants: undefined, participantSelector: { propletGroup: 'none-such' }, rounds: { total: 1 }, kOfN: 1 });
  await until(async () => (await s.api.getFlJob('sel')).status.phase === 'Failed', 'selector job failed', 10_000);
  t.regex((await s.api.getFlJob('sel')).status.message!, /round 1 failed: 0 participants available, 1 required/);

  const text = await (await fetch(`${s.apiUrl}/metrics`)).text();
  for (const name of ['propeller_federatedjobs_total{phase="Failed"}', 'propeller_trainingrounds_total{phase="Completed"}', 'propeller_rounds_active', 'propeller_jobs_created_total', 'propeller_fl_updates_total{result="accepted"}']) {
    t.true(text.split('\n').some((l) => l.startsWith(name + ' ') && Number(l.split(' ').at(-1)) >= 0), `${name} exported`);
  }
  t.true(Number(text.split('\n').find((l) => l.startsWith('propeller_jobs_created_total '))!.split(' ')[1]) >= 2);
});

test('deleting a running job stops its round and its tasks first; its history stays', async (t) => {
  // it trains for 3 s: long enough to be deleted mid-run
  const a = await participant('del-a', () => ({ none: true, delayMs: 3000 }));
  await job('del', ['del-a'], { kOfN: 1, rounds: { total: 3 } });
  await until(() => a.starts.length === 1, 'task started');
  await until(async () => (await s.api.getTask(a.starts[0]!.id)).state === 'Running', 'task running');
  await s.api.deleteFlJob('del');
  await t.throwsAsync(s.api.getFlJob('del'), { message: /FederatedJob del not found/ });
  const r = await s.api.getFlRound('round-1-del');
  t.is(r.status.phase, 'Failed');
  t.regex(r.status.message!, /FederatedJob del was deleted/);
  t.is((await s.api.getTask(a.starts[0]!.id)).state, 'Stopped');
});
