// The synthetic data set, bit for bit the same as examples/fl-logreg/dataset.ts
// (its TypeScript twin; change both together).
//
// 8 features uniform in [-1, 1]; label = TRUE_WEIGHTS·x + TRUE_BIAS > 0,
// flipped with probability LABEL_NOISE. mulberry32 on u32, / 2^32 for [0, 1).
// A partition's first draw is its size, 200 + u32 % 201; then 9 draws per
// sample: the 8 features, then the noise draw.
//
// The samples are never stored: each pass over the partition (an epoch, the
// final measurement) regenerates them from the seed, so the module's memory
// does not depend on the partition's size.

export const FEATURES = 8;
export const PARAMS = FEATURES + 1;
export const TRUE_BIAS: f64 = 1.8;
export const LABEL_NOISE: f64 = 0.02;
export const MIN_PARTITION: u32 = 200;
export const MAX_PARTITION: u32 = 400;

const TRUE_WEIGHTS = memory.data<f64>([3, -2.5, 2, -1.5, 1.2, -1, 0.6, -0.3]);

/** The current sample's features (FEATURES f64). */
export const X = memory.data(FEATURES * 8, 8);

let state: u32 = 0;

function nextU32(): u32 {
  state += 0x6d2b79f5;
  let t = (state ^ (state >>> 15)) * (state | 1);
  t = (t + (t ^ (t >>> 7)) * (t | 61)) ^ t;
  return t ^ (t >>> 14);
}

function nextUnit(): f64 {
  return <f64>nextU32() / 4294967296.0;
}

export function partitionSeed(index: u32, replicas: u32): u32 {
  return <u32>0x1f123bb5 ^ (index + 1) * <u32>0x9e3779b9 ^ replicas * <u32>0x85ebca6b;
}

/** One participant's samples, generated again on each pass. */
export class Partition {
  /** number of samples */
  size: u32;
  /** the generator state right after the size draw: where the samples start */
  private start: u32;

  constructor(index: u32, replicas: u32) {
    state = partitionSeed(index, replicas);
    this.size = MIN_PARTITION + nextU32() % (MAX_PARTITION - MIN_PARTITION + 1);
    this.start = state;
  }

  /** Back to the first sample. */
  rewind(): void {
    state = this.start;
  }

  /** Generates the next sample into X; returns its label (0 or 1). */
  next(): f64 {
    let z = TRUE_BIAS;
    for (let j = 0; j < FEATURES; j++) {
      const v = nextUnit() * 2 - 1;
      store<f64>(X + (<usize>j << 3), v);
      z += load<f64>(TRUE_WEIGHTS + (<usize>j << 3)) * v;
    }
    const label: f64 = z > 0 ? 1 : 0;
    return nextUnit() < LABEL_NOISE ? 1 - label : label;
  }
}
