// The TypeScript twin of the fl-logreg module's data generator
// (assembly/data.ts): the same synthetic data set, bit for bit, so that tests
// and the coordinator's checks can measure what the module trained.
//
// The problem: 8 features uniform in [-1, 1]; the label is
// TRUE_WEIGHTS·x + TRUE_BIAS > 0, flipped with probability LABEL_NOISE.
// Random numbers come from mulberry32 on u32 (the same integer steps in
// AssemblyScript and here), turned into [0, 1) by / 2^32.
//
// Partition `index` of `replicas`: seeded from (index, replicas); its first
// draw picks its size, 200 + u32 % 201, then 9 draws per sample (8 features,
// then the noise draw). The held-out set: 1,000 samples from HELD_OUT_SEED,
// generated the same way.
import { MODEL_FORMAT, type Model } from '../../protocol/model-format.ts';

export const FEATURES = 8;
/** float32 values in the model: w (8) then b (1). */
export const PARAMS = FEATURES + 1;
export const TRUE_WEIGHTS: readonly number[] = [3, -2.5, 2, -1.5, 1.2, -1, 0.6, -0.3];
export const TRUE_BIAS = 1.8;
export const LABEL_NOISE = 0.02;
export const MIN_PARTITION = 200;
export const MAX_PARTITION = 400;
export const HELD_OUT_SEED = 0x600dda7a;
export const HELD_OUT_SIZE = 1000;

export interface DataSet {
  /** number of samples */
  n: number;
  /** n × FEATURES features, row-major */
  x: Float64Array;
  /** n labels, 0 or 1 */
  y: Uint8Array;
}

export interface Measure {
  /** fraction of samples whose prediction (w·x + b > 0) equals the label */
  accuracy: number;
  /** mean binary cross-entropy */
  loss: number;
}

/** mulberry32: a u32 state, one u32 per call. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = Math.imul(a ^ (a >>> 15), a | 1);
    t = (t + Math.imul(t ^ (t >>> 7), t | 61)) ^ t;
    return (t ^ (t >>> 14)) >>> 0;
  };
}

export function partitionSeed(index: number, replicas: number): number {
  return (0x1f123bb5 ^ Math.imul(index + 1, 0x9e3779b9) ^ Math.imul(replicas, 0x85ebca6b)) >>> 0;
}

function generate(next: () => number, n: number): DataSet {
  const x = new Float64Array(n * FEATURES);
  const y = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    let z = TRUE_BIAS;
    for (let j = 0; j < FEATURES; j++) {
      const v = (next() / 4294967296) * 2 - 1;
      x[i * FEATURES + j] = v;
      z += (TRUE_WEIGHTS[j] as number) * v;
    }
    const label = z > 0 ? 1 : 0;
    y[i] = next() / 4294967296 < LABEL_NOISE ? 1 - label : label;
  }
  return { n, x, y };
}

/** The data of participant `index` (0 ≤ index < replicas). */
export function partition(index: number, replicas: number): DataSet {
  if (!Number.isInteger(replicas) || replicas < 1 || !Number.isInteger(index) || index < 0 || index >= replicas) {
    throw new RangeError(`partition ${index} of ${replicas}: need integers with 0 <= index < replicas`);
  }
  const next = mulberry32(partitionSeed(index, replicas));
  const n = MIN_PARTITION + (next() % (MAX_PARTITION - MIN_PARTITION + 1));
  return generate(next, n);
}

let heldOutSet: DataSet | undefined;

/** The held-out set (generated once). */
export function heldOut(): DataSet {
  heldOutSet ??= generate(mulberry32(HELD_OUT_SEED), HELD_OUT_SIZE);
  return heldOutSet;
}

/**
 * Accuracy and loss of the parameters (w then b) on a data set, computed as
 * the module computes them: z = b + Σ w_j·x_j in float64, in that order.
 */
export function measure(params: Float32Array, data: DataSet): Measure {
  if (params.length !== PARAMS) throw new RangeError(`expected ${PARAMS} parameters, got ${params.length}`);
  let correct = 0;
  let loss = 0;
  for (let i = 0; i < data.n; i++) {
    let z = params[FEATURES] as number;
    for (let j = 0; j < FEATURES; j++) z += (params[j] as number) * (data.x[i * FEATURES + j] as number);
    const y = data.y[i] as number;
    if ((z > 0 ? 1 : 0) === y) correct++;
    // -[y log σ(z) + (1 - y) log(1 - σ(z))], without overflow
    loss += Math.max(z, 0) - z * y + Math.log1p(Math.exp(-Math.abs(z)));
  }
  return { accuracy: correct / data.n, loss: loss / data.n };
}

/** Accuracy and loss on the held-out set. */
export function evaluate(params: Float32Array): Measure {
  return measure(params, heldOut());
}

/** The all-zero starting model: w [8], b [] (a scalar). */
export function initialModel(): Model {
  return {
    format: MODEL_FORMAT,
    tensors: [
      { name: 'w', shape: [FEATURES], data: new Float32Array(FEATURES) },
      { name: 'b', shape: [], data: new Float32Array(1) },
    ],
  };
}
