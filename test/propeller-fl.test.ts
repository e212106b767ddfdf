// Federated learning with Propeller's own proplets over real TCP: the Rust
// proplet's update envelope inside its result, and embed-proplet's update on
// the broker's root topic fl/rounds/<round>/updates/<proplet> (no m/ prefix),
// both feeding the FL coordinator; what cannot be aggregated is refused with a
// reason the round shows, and the device keeps its connection.

import test from 'ava';
import { authorize } from '../broker/acl.ts';
import { encodeModel, MODEL_FORMAT, modelToJson, type Model } from '../protocol/model-format.ts';
import type { TrainingRound } from '../control-plane/fl/resources.ts';
import { fromPropellerUpdate } from '../control-plane/propeller-fl.ts';
import { rustStart } from '../control-plane/propeller-shapes.ts';
import { EmbedProplet, RustProplet } from './helpers/propeller-devices.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

/** (module (func (export "main") (result i32) (i32.const 0))): small enough for embed-proplet's 1023-byte start. */
const MAIN = new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 5, 1, 0x60, 0, 1, 0x7f, 3, 2, 1, 0, 7, 8, 1, 4, 0x6d, 0x61, 0x69, 0x6e, 0, 0, 0x0a, 6, 1, 4, 0, 0x41, 0, 0x0b]);

const model = (w: number[], b: number): Model => ({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [w.length], data: Float32Array.from(w) }, { name: 'b', shape: [1], data: Float32Array.from([b]) }] });

/** What each device's task prints in the current test, by proplet id. */
const outputs = new Map<string, () => { output: string; error?: string }>();
const train = (id: string) => () => outputs.get(id)!();

let s: Stack;
let rust: RustProplet;
let esp: EmbedProplet;

test.before(async () => {
  s = await startStack({ health: { offlineThresholdMs: 20_000, failureThresholdMs: 40_000 } });
  rust = new RustProplet({ url: s.broker.url, id: 'rust-fl', secret: s.creds.issue('rust-fl', 'proplet'), train: train('rust-fl') });
  esp = new EmbedProplet({ url: s.broker.url, id: 'esp-fl', secret: s.creds.issue('esp-fl', 'proplet'), channel: 'esp-fl', firstAliveMs: 100, livelinessMs: 200, train: train('esp-fl') });
  await rust.start();
  await esp.start();
  await until(() => s.cp.registry.get('rust-fl')?.state === 'alive' && s.cp.registry.get('esp-fl')?.state === 'alive', 'both registered');
});
test.after.always(async () => {
  await rust?.close().catch(() => {});
  await esp?.close().catch(() => {});
  await s?.close();
});

const metric = async (line: RegExp): Promise<number> => {
  const text = await (await fetch(`${s.apiUrl}/metrics`)).text();
  const m = text.split('\n').find((l) => line.test(l));
  return m ? Number(m.split(' ').at(-1)) : 0;
};

/** A round of both devices; k = 1 lets the second refusal be seen after the first. */
async function round(name: string, kOfN = 2): Promise<TrainingRound> {
  const { ref } = await s.api.pushModel(encodeModel(model([0, 0], 0)));
  const { digest } = await s.api.pushModule(MAIN);
  await s.api.createFlRound({ metadata: { name }, spec: { roundId: name, modelRef: ref, taskWasmImage: digest, participants: ['rust-fl', 'esp-fl'], kOfN, timeoutSeconds: 30 } });
  let r!: TrainingRound;
  await until(async () => ['Completed', 'Failed'].includes((r = await s.api.getFlRound(name)).status.phase), `round ${name} ends`);
  return r;
}

test.serial('a round with both: the Rust envelope in its result and embed-proplet\'s root-topic update are aggregated', async (t) => {
  const json = (m: Model) => JSON.stringify(modelToJson(m));
  // its output, a model in JSON: posted to MANAGER_COORDINATOR_URL (ours refuses), so published on the root topic; then the envelope
  outputs.set('rust-fl', () => ({ output: json(model([1, 1], 1)) }));
  outputs.set('esp-fl', () => ({ output: JSON.stringify({ num_samples: 3, metrics: { loss: 0.25 }, update: modelToJson(model([5, 5], 5)) }) }));
  const r = await round('pf-1');
  t.is(r.status.phase, 'Completed', r.status.message);
  const by = Object.fromEntries(r.status.participants.map((p) => [p.propletId, p]));
  t.is(by['rust-fl']!.phase, 'Submitted');
  t.is(by['esp-fl']!.phase, 'Submitted');
  t.is(by['esp-fl']!.numSamples, 3);
  t.deepEqual(by['esp-fl']!.metrics, { loss: 0.25 });
  // FedAvg by samples: (1*1 + 3*5) / 4 = 4
  const [cp] = (await s.api.flCheckpoints()).checkpoints.filter((c) => c.spec.roundRef?.name === 'pf-1');
  t.truthy(cp);
  t.is(cp!.spec.metadata.totalSamples, 4);
  t.true(esp.flUpdates.length === 1 && JSON.parse(esp.flUpdates[0]!).round_id === 'pf-1');
  t.deepEqual(rust.coordinatorPosts, [{ url: `${s.apiUrl}/fl/propeller/update`, accepted: false }]);
  t.deepEqual(rust.dropped, []);
});

test.serial('what cannot be aggregated is refused with the reason the round shows; embed-proplet keeps its connection', async (t) => {
  const before = await metric(/^propeller_messages_rejected_total\{kind="fl.update",reason="format"\}/);
  outputs.set('rust-fl', () => ({ output: 'w=0.5' })); // not JSON: nothing posted, only the envelope, "f32-delta" of text
  outputs.set('esp-fl', () => ({ output: '42' })); // main's i32: cJSON prints the bare number
  const r = await round('pf-2', 1);
  t.is(r.status.phase, 'Failed');
  const by = Object.fromEntries(r.status.participants.map((p) => [p.propletId, p]));
  t.is(by['rust-fl']!.phase, 'Refused');
  t.regex(by['rust-fl']!.reason ?? '', /^format: update format "f32-delta" cannot be aggregated/);
  t.is(by['esp-fl']!.phase, 'Refused');
  t.regex(by['esp-fl']!.reason ?? '', /^malformed: an FL update must be a JSON object, not 42/);
  t.is(await metric(/^propeller_messages_rejected_total\{kind="fl.update",reason="format"\}/), before + 1);
  // the envelope is also the task's result
  const task = await s.api.getTask(by['rust-fl']!.taskId!);
  t.is(task.state, 'Completed');
  t.is((task.result?.results as { round_id?: string; format?: string } | undefined)?.format, 'f32-delta');
  t.true(esp.client.connected);
  t.is(s.cp.registry.get('esp-fl')?.state, 'alive');

  // an error the device reports ends its part with that error
  outputs.set('rust-fl', () => ({ output: '', error: 'out of memory' }));
  outputs.set('esp-fl', () => ({ output: '', error: 'model fetch failed' }));
  const e = await round('pf-3', 1);
  const reasons = Object.fromEntries(e.status.participants.map((p) => [p.propletId, p.reason]));
  t.regex(reasons['esp-fl'] ?? '', /model fetch failed/);
  t.regex(reasons['rust-fl'] ?? '', /out of memory/);
  t.true(esp.client.connected);
});

test('the broker takes the root FL topic only from the proplet it names, and lets only the manager read it', (t) => {
  const ok = (d: { ok: boolean }) => d.ok;
  t.true(ok(authorize(scope, 'proplet', 'esp-fl', 'publish', 'fl/rounds/r1/updates/esp-fl', '42')));
  t.deepEqual(authorize(scope, 'proplet', 'esp-fl', 'publish', 'fl/rounds/r1/updates/other', '{}'), { ok: false, reason: 'topic_id_mismatch' });
  t.deepEqual(authorize(scope, 'proplet', 'esp-fl', 'publish', 'fl/rounds/r1/updates/esp-fl', '{"proplet_id":"other"}'), { ok: false, reason: 'sender_mismatch' });
  t.deepEqual(authorize(scope, 'proplet', 'esp-fl', 'publish', 'fl/rounds/r1/esp-fl', '{}'), { ok: false, reason: 'outside_scope' });
  t.deepEqual(authorize(scope, 'proplet', 'esp-fl', 'subscribe', 'fl/rounds/+/updates/+'), { ok: false, reason: 'outside_scope' });
  t.true(ok(authorize(scope, 'manager', 'cp', 'subscribe', 'fl/rounds/+/updates/+')));
  t.deepEqual(authorize(scope, 'manager', 'cp', 'publish', 'fl/rounds/r1/updates/esp-fl', '{}'), { ok: false, reason: 'outside_scope' });
});

test('Propeller envelopes read as our updates, or refused with the reason (pure)', (t) => {
  const ids = { round: 'r1', sender: 'p1', taskId: 't1' };
  const m = model([1, 2], 3);
  const cbor = Buffer.from(encodeModel(m));
  const ok = (raw: unknown, error?: unknown) => {
    const r = fromPropellerUpdate(raw, ids, error);
    if (!r.ok) throw new Error(`${r.reason}: ${r.message}`);
    return r.update;
  };
  const no = (raw: unknown) => {
    const r = fromPropellerUpdate(raw, ids);
    return r.ok ? 'accepted' : `${r.reason}: ${r.message}`;
  };
  // CBOR bytes in update_b64 with our format named; JSON text whatever the format says; the model as the message itself
  t.deepEqual(Buffer.from(ok({ round_id: 'r1', proplet_id: 'p1', num_samples: 5, update_b64: cbor.toString('base64'), format: MODEL_FORMAT }).model!), cbor);
  t.deepEqual(Buffer.from(ok({ update_b64: Buffer.from(JSON.stringify(modelToJson(m))).toString('base64'), format: 'f32-delta' }).model!), cbor);
  t.is(ok({ ...modelToJson(m), num_samples: 2 }).num_samples, 2);
  t.deepEqual(ok({ update: modelToJson(m), metrics: { loss: 0.5, note: 'x' } }).metrics, { loss: 0.5 });
  t.deepEqual(ok({ update_b64: '' }, 'boom'), { v: 1, proplet_id: 'p1', round_id: 'r1', task_id: 't1', error: 'boom' });
  t.regex(no({ update_b64: cbor.toString('base64'), format: 'f32-delta' }), /^format: update format "f32-delta" cannot be aggregated/);
  t.regex(no({ update_b64: '' }), /^empty: /);
  t.regex(no({ update: {} }), /^format: the update is not a propeller-model\/v1 model \(update is empty\)/);
  t.regex(no({ update: { w: [1, 2] } }), /\(update has w\)/);
  t.regex(no({ round_id: 'r2', update: modelToJson(m) }), /^round_mismatch: /);
  t.regex(no({ proplet_id: 'p2', update: modelToJson(m) }), /^sender_mismatch: /);
  t.regex(no({ num_samples: -1, update: modelToJson(m) }), /^samples: /);
  t.regex(no({ update: { ...modelToJson(m), tensors: [{ name: 'w', shape: [2], data: [1] }] } }), /^invalid: tensor 'w'/);
  t.regex(no(42), /^malformed: an FL update must be a JSON object, not 42/);
});

test('a Rust proplet FL start names a coordinator URL that refuses posts, so its update comes over MQTT (pure)', (t) => {
  const env = { ROUND_ID: 'r1', MODEL_URI: 'http://10.0.0.5:7070/models/sha256:ab' };
  const st = rustStart({ id: 't1', name: 'r1-0', inputs: [], file: MAIN, env } as never);
  t.true(st.ok && st.msg.env?.MANAGER_COORDINATOR_URL === 'http://10.0.0.5:7070/fl/propeller');
  const own = rustStart({ id: 't1', name: 'r1-0', inputs: [], file: MAIN, env: { ...env, MANAGER_COORDINATOR_URL: 'http://coordinator:8080' } } as never);
  t.true(own.ok && own.msg.env?.MANAGER_COORDINATOR_URL === 'http://coordinator:8080');
  const plain = rustStart({ id: 't1', name: 'add', inputs: [], file: MAIN, env: { A: '1' } } as never);
  t.true(plain.ok && plain.msg.env?.MANAGER_COORDINATOR_URL === undefined);
});
