// examples/fl-logreg, the FL client module (AssemblyScript), run by the real
// WasmRunner under the FL module contract v1: the model's parameters on stdin,
// the model as /data/model.cbor, the update as stdout's last line. Its memory
// is capped at its initial size, as the MCU profile caps it.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR, EXAMPLES_DIR } from '../examples/build.ts';
import { evaluate, initialModel, measure, PARAMS, partition } from '../examples/fl-logreg/dataset.ts';
import { parseModule, WasmRunner, type RunResult } from '../wasm-runtime/index.ts';
import { encodeModel, float32FromLE, float32ToLE, modelFromJson, type Model } from '../protocol/model-format.ts';

const PAGE = 65536;
const HYPERPARAMS = '{"learningRate":0.5,"epochs":1,"batchSize":16}';

let wasm: Uint8Array<ArrayBuffer>;
let memoryCap: number;
let runner: WasmRunner;
let seq = 0;

test.before(async () => {
  await buildExamples();
  wasm = new Uint8Array(readFileSync(join(EXAMPLES_BUILD_DIR, 'fl-logreg.wasm')));
  memoryCap = (parseModule(wasm).memories[0]?.min ?? 0) * PAGE;
  runner = new WasmRunner({ poolSize: 4 });
  await runner.ready();
});

test.after.always(async () => {
  await runner?.close();
});

function modelOf(params: Float32Array): Model {
  const m = initialModel();
  (m.tensors[0] as { data: Float32Array }).data = params.slice(0, PARAMS - 1);
  (m.tensors[1] as { data: Float32Array }).data = params.slice(PARAMS - 1);
  return m;
}

async function run(env: Record<string, string>, params: Float32Array | Uint8Array = new Float32Array(PARAMS)): Promise<RunResult> {
  const stdin = params instanceof Float32Array ? float32ToLE(params) : params;
  const files: Record<string, Uint8Array> = params instanceof Float32Array ? { 'model.cbor': encodeModel(modelOf(params)) } : {};
  return runner.run({
    taskId: `fl${++seq}`,
    module: wasm,
    name: 'fl-logreg',
    args: [],
    env,
    inputs: [],
    timeoutMs: 10_000,
    maxMemoryBytes: memoryCap,
    stdin,
    files,
  });
}

interface Update {
  num_samples: number;
  loss: number;
  accuracy: number;
  weights: Float32Array;
}

function update(r: RunResult): Update {
  if (!r.ok) throw new Error(`module failed: ${r.error}; stderr: ${r.stderr}`);
  const last = r.stdout.split('\n').filter((l) => l.trim() !== '').at(-1) ?? '';
  const o = JSON.parse(last) as Record<string, unknown>;
  const raw = Buffer.from(String(o.weights), 'base64');
  if (raw.length !== PARAMS * 4) throw new Error(`weights are ${raw.length} bytes`);
  const weights = new Float32Array(PARAMS);
  float32FromLE(raw, weights);
  return { num_samples: o.num_samples as number, loss: o.loss as number, accuracy: o.accuracy as number, weights };
}

function flEnv(index: number, replicas: number, round = 'round-1'): Record<string, string> {
  return {
    ROUND_ID: round,
    MODEL_URI: 'http://127.0.0.1:7070/models/sha256:0',
    HYPERPARAMS,
    FL_INDEX: String(index),
    FL_REPLICAS: String(replicas),
  };
}

test('the module imports only WASI preview1, exports _start and memory, and fits in one page', (t) => {
  const mod = new WebAssembly.Module(wasm);
  const imports = WebAssembly.Module.imports(mod);
  t.true(imports.length > 0);
  t.deepEqual(imports.filter((i) => i.module !== 'wasi_snapshot_preview1'), []);
  const exports = WebAssembly.Module.exports(mod).map((e) => e.name).sort();
  t.deepEqual(exports, ['_start', 'memory']);
  t.is(memoryCap, PAGE);
});

test('initial-model.json is the all-zero model of initialModel()', (t) => {
  const json = readFileSync(join(EXAMPLES_DIR, 'fl-logreg', 'initial-model.json'), 'utf8');
  t.deepEqual(modelFromJson(json), initialModel());
});

test('output contract: the last line is the update, for the participant partition', async (t) => {
  const r = await run(flEnv(1, 4));
  t.is(r.exitCode, 0, r.stderr);
  t.is(r.stderr, '');
  t.true(r.stdout.split('\n').length > 2, 'human log lines come first');
  const last = r.stdout.trimEnd().split('\n').at(-1) ?? '';
  t.deepEqual(Object.keys(JSON.parse(last) as object).sort(), ['accuracy', 'loss', 'num_samples', 'weights']);
  t.regex(last, /"weights":"[A-Za-z0-9+/]{48}"/);
  const u = update(r);
  t.is(u.num_samples, partition(1, 4).n);
  t.true(u.weights.every(Number.isFinite));
  t.true(u.weights.some((v) => v !== 0), 'training moved the weights');
  t.true(Number.isFinite(u.loss) && u.loss > 0);
  t.true(u.accuracy >= 0 && u.accuracy <= 1);
});

test('the TypeScript twin measures the returned weights as the module did', async (t) => {
  for (const [index, replicas] of [[1, 4], [2, 3], [0, 1]] as const) {
    const u = update(await run(flEnv(index, replicas)));
    const m = measure(u.weights, partition(index, replicas));
    t.is(u.accuracy, m.accuracy, `accuracy of partition ${index}/${replicas}`);
    t.true(Math.abs(u.loss - m.loss) <= 1e-12 * m.loss, `loss ${u.loss} vs ${m.loss}`);
  }
});

/** Rounds of FedAvg (weighted by num_samples) from the all-zero model; the held-out accuracy after each. */
async function fedAvg(rounds: number, replicas: number, absent: (round: number) => number | undefined): Promise<number[]> {
  let global = new Float32Array(PARAMS);
  const accuracy: number[] = [];
  for (let round = 1; round <= rounds; round++) {
    const skip = absent(round);
    const indices = Array.from({ length: replicas }, (_, i) => i).filter((i) => i !== skip);
    const updates = await Promise.all(indices.map(async (i) => update(await run(flEnv(i, replicas, `round-${round}`), global))));
    const sum = new Float64Array(PARAMS);
    let samples = 0;
    for (const u of updates) {
      for (let j = 0; j < PARAMS; j++) sum[j] = (sum[j] as number) + u.num_samples * (u.weights[j] as number);
      samples += u.num_samples;
    }
    global = Float32Array.from(sum, (v) => v / samples);
    accuracy.push(evaluate(global).accuracy);
  }
  return accuracy;
}

test('FedAvg over 4 partitions: held-out accuracy rises over 5 rounds and ends >= 0.93', async (t) => {
  const acc = await fedAvg(5, 4, () => undefined);
  t.log(`held-out accuracy, rounds 1-5, 4 of 4: ${acc.map((a) => a.toFixed(3)).join(' ')}`);
  const first = acc[0] as number;
  const last = acc[4] as number;
  t.true(first < 0.9, `not solved in one round (${first})`);
  t.true(last >= 0.93, `round 5: ${last}`);
  t.true(last - first >= 0.03, `rises from ${first} to ${last}`);
});

test('FedAvg with 3 of 4 participants per round still ends >= 0.9', async (t) => {
  const acc = await fedAvg(5, 4, (round) => (round - 1) % 4);
  t.log(`held-out accuracy, rounds 1-5, 3 of 4: ${acc.map((a) => a.toFixed(3)).join(' ')}`);
  t.true((acc[4] as number) >= 0.9, `round 5: ${acc[4]}`);
  t.true((acc[4] as number) > (acc[0] as number));
});

test('stdin of the wrong length: exit code 2 and a clear message', async (t) => {
  for (const bytes of [new Uint8Array(35), new Uint8Array(40), new Uint8Array(0)]) {
    const r = await run(flEnv(0, 4), bytes);
    t.is(r.exitCode, 2);
    t.regex(r.stderr, new RegExp(`^fl-logreg: stdin must be the model's 9 parameters .*36 bytes, got ${bytes.length}\\n$`));
    t.false(r.stdout.includes('{'));
  }
});

test('bad FL_INDEX, FL_REPLICAS or HYPERPARAMS: exit code 2 naming the problem', async (t) => {
  const cases: [Record<string, string>, RegExp][] = [
    [{ ...flEnv(0, 4), FL_INDEX: '4' }, /need 0 <= FL_INDEX < FL_REPLICAS/],
    [{ ...flEnv(0, 4), FL_REPLICAS: 'four' }, /FL_REPLICAS must be a decimal integer, got 'four'/],
    [{ ...flEnv(0, 4), HYPERPARAMS: '{"learningRate":}' }, /HYPERPARAMS: a value is malformed/],
    [{ ...flEnv(0, 4), HYPERPARAMS: '[1]' }, /HYPERPARAMS: it is not a JSON object/],
    [{ ...flEnv(0, 4), HYPERPARAMS: '{"batchSize":0}' }, /batchSize must be an integer in \[1, /],
  ];
  for (const [env, message] of cases) {
    const r = await run(env);
    t.is(r.exitCode, 2, r.stderr);
    t.regex(r.stderr, message);
  }
});

test('the partition follows FL_INDEX, or HYPERPARAMS partition/partitions, and runs are deterministic', async (t) => {
  const a = await run(flEnv(0, 4));
  const b = await run(flEnv(3, 4));
  const ua = update(a);
  const ub = update(b);
  t.true(ua.num_samples !== ub.num_samples || !ua.weights.every((v, i) => v === ub.weights[i]));
  t.is((await run(flEnv(3, 4))).stdout, b.stdout);

  const env = {
    ROUND_ID: 'round-1',
    HYPERPARAMS: '{"learning_rate":0.5,"batch_size":16,"partition":3,"partitions":4,"note":"x","more":{"a":[1,"}"]}}',
  };
  t.deepEqual(update(await run(env)), ub);

  // no FL env at all: partition 0 of 1, default hyperparameters
  const alone = update(await run({}));
  t.is(alone.num_samples, partition(0, 1).n);
});
