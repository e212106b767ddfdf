// FL aggregation: FedAvg against Flower's aggregate() in real numpy (float32,
// the default, bit for bit) and a naive float64 weighted mean (float64),
// streamed (chunked) updates, refusals that change nothing, robustness of
// fedmedian and trimmed-mean to a poisoned update, memory bounds, metrics,
// config errors, and the wasm kernel's bytes against its text.

import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import wabtInit from 'wabt';
import {
  ACCUMULATORS,
  AggregatorError,
  createAggregator,
  FedAvg,
  FedMedian,
  FOLD_KERNEL_WASM,
  FOLD_KERNEL_WAT,
  keptFedAvgMemoryBytes,
  releaseFedAvgMemory,
  TrimmedMean,
  UpdateError,
  type Aggregator,
  type Update,
  type UpdateErrorReason,
} from '../control-plane/fl/aggregate.ts';
import { encodeModel, float32ToLE, MODEL_FORMAT, paramCount, type Model } from '../protocol/model-format.ts';
import { seeded as rng } from './helpers/seeded.ts';


// Sizes that leave odd tails (SIMD lanes of 4 and 8 values); random stream chunks cross tensors' pieces.
const SHAPES: [string, number[]][] = [
  ['conv.w', [3, 3, 4, 8]],
  ['conv.b', [8]],
  ['fc.w', [181, 191]], // 34,571 values
  ['fc.b', [7]],
  ['scale', []],
];

function model(r: () => number, center = 0, spread = 1): Model {
  return {
    format: MODEL_FORMAT,
    tensors: SHAPES.map(([name, shape]) => {
      const n = shape.reduce((a, b) => a * b, 1);
      const data = new Float32Array(n);
      for (let i = 0; i < n; i++) data[i] = center + (r() - 0.5) * 2 * spread;
      return { name, shape: [...shape], data };
    }),
  };
}

const ref = model(rng(1));

function updates(n: number, seed: number, center = 0): Update[] {
  const r = rng(seed);
  return Array.from({ length: n }, (_, i) => ({ participant: `proplet-${i}`, numSamples: 1 + Math.floor(r() * 1000), model: model(r, center) }));
}

/**
 * Flower's aggregate() as numpy (NEP 50 promotion) computes it, per value:
 * float32(numSamples) × value rounded to float32, summed in float32 in order
 * (the first product copied), divided by float32(total) in float32.
 */
function flower32(us: Update[], reference = ref): Float32Array[] {
  const total = Math.fround(us.reduce((a, u) => a + u.numSamples, 0));
  return reference.tensors.map((_, t) => {
    const out = new Float32Array(reference.tensors[t]!.data.length);
    for (let i = 0; i < out.length; i++) {
      let s = 0;
      for (const [k, u] of us.entries()) {
        const x = Math.fround(Math.fround(u.numSamples) * u.model.tensors[t]!.data[i]!);
        s = k === 0 ? x : Math.fround(s + x);
      }
      out[i] = s / total;
    }
    return out;
  });
}

/** The weighted mean in float64, per value, rounded to float32 at the end. */
function naiveFedAvg(us: Update[], reference = ref): Float32Array[] {
  const total = us.reduce((a, u) => a + u.numSamples, 0);
  return reference.tensors.map((_, t) => {
    const out = new Float32Array(reference.tensors[t]!.data.length);
    for (let i = 0; i < out.length; i++) {
      let s = 0;
      for (const u of us) s += u.numSamples * u.model.tensors[t]!.data[i]!;
      out[i] = s / total;
    }
    return out;
  });
}

function maxRelDiff(a: Model, b: Float32Array[]): number {
  let worst = 0;
  for (const [t, x] of a.tensors.entries()) {
    const y = b[t]!;
    for (let i = 0; i < x.data.length; i++) worst = Math.max(worst, Math.abs(x.data[i]! - y[i]!) / Math.max(1e-30, Math.abs(y[i]!)));
  }
  return worst;
}

/** FedAvg's staging area, ahead of its sum in the kernel's memory. */
const STAGE = 262144;

const bits = (m: Model) => Buffer.from(encodeModel({ ...m, meta: undefined }));
/** A model's values as little-endian float32 bytes (any value, ±Infinity included). */
const raw = (m: Model) => Buffer.concat(m.tensors.map((x) => float32ToLE(x.data)));
/** bits() of the reference's shapes over the given data. */
const bitsOf = (data: Float32Array[], reference = ref) => bits({ ...reference, tensors: reference.tensors.map((x, i) => ({ ...x, data: data[i]! })) });
/** The expected result of each accumulator, as bits(). */
const want = (acc: (typeof ACCUMULATORS)[number], us: Update[], reference = ref) => bitsOf(acc === 'float32' ? flower32(us, reference) : naiveFedAvg(us, reference), reference);

function refused(t: { throws(f: () => unknown, e?: unknown): unknown; is(a: unknown, b: unknown, m?: string): void; regex(s: string, r: RegExp): void }, f: () => unknown, reason: UpdateErrorReason, msg?: RegExp): void {
  const e = t.throws(f, { instanceOf: UpdateError }) as UpdateError | undefined;
  if (!e) return;
  t.is(e.reason, reason, e.message);
  if (msg) t.regex(e.message, msg);
}

type Via = 'add' | 'addEncoded' | 'stream';
/** Gives an aggregator an update whole, in its CBOR form, or streamed (random chunks from a generator seeded with `seed`). */
function give(a: Aggregator, u: Update, via: Via, seed: number): void {
  if (via === 'add') a.add(u);
  else if (via === 'addEncoded') a.addEncoded(u.participant, u.numSamples, encodeModel(u.model));
  else stream(a, u, rng(seed));
}

/** Streams an update's data in random-sized chunks, in random order. */
function stream(a: Aggregator, u: Update, r: () => number): void {
  a.begin(u.participant, u.numSamples, u.metrics);
  const chunks: [number, number, Uint8Array][] = [];
  for (const [t, x] of u.model.tensors.entries()) {
    const bytes = float32ToLE(x.data);
    for (let o = 0; o < x.data.length; ) {
      const n = Math.min(x.data.length - o, 1 + Math.floor(r() * 5000));
      // chunks at odd byte offsets of a bigger buffer: the copy must not care about alignment
      const buf = new Uint8Array(n * 4 + 1);
      buf.set(bytes.subarray(o * 4, (o + n) * 4), 1);
      chunks.push([t, o, buf.subarray(1)]);
      o += n;
    }
  }
  for (let i = chunks.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [chunks[i], chunks[j]] = [chunks[j]!, chunks[i]!];
  }
  for (const [t, o, b] of chunks) a.addChunk(u.participant, t, o, b);
  a.commit(u.participant);
}

test('fedavg is the sample-weighted mean: Flower\'s float32 arithmetic by default, close to the float64 mean', (t) => {
  const us = updates(12, 2);
  const a = new FedAvg(ref);
  for (const u of us) a.add(u);
  t.is(a.count, 12);
  t.is(a.totalSamples, us.reduce((s, u) => s + u.numSamples, 0));
  const res = a.result();
  t.deepEqual(bits(res), want('float32', us));
  const wide = naiveFedAvg(us);
  t.true(res.tensors.every((x, i) => x.data.every((v, j) => Math.abs(v - wide[i]![j]!) < 1e-6)));
  t.deepEqual(
    res.tensors.map((x) => [x.name, x.shape]),
    ref.tensors.map((x) => [x.name, x.shape]),
  );
  t.like(res.meta, { algorithm: 'fedavg', numParticipants: 12, totalSamples: a.totalSamples });
  t.deepEqual(a.participants(), us.map((u) => u.participant));
  // result() is a snapshot: more updates may follow
  a.add(updates(13, 2)[12]!);
  t.is(a.count, 13);
});

test('fedavg with the float64 accumulator does not depend on the order of updates', (t) => {
  const us = updates(10, 3);
  const a = new FedAvg(ref, { accumulator: 'float64' });
  for (const u of us) a.add(u);
  const b = new FedAvg(ref, { accumulator: 'float64' });
  for (const u of [...us].reverse()) b.add(u);
  const want = naiveFedAvg(us);
  t.true(maxRelDiff(a.result(), want) < 1e-6);
  t.true(maxRelDiff(b.result(), want) < 1e-6);
  t.true(maxRelDiff(a.result(), b.result().tensors.map((x) => x.data)) < 1e-6);
});

test('a streamed update (chunks in any order, any alignment) folds exactly like a whole one', (t) => {
  const us = updates(6, 4);
  const r = rng(5);
  const whole = new FedAvg(ref);
  const streamed = new FedAvg(ref);
  for (const u of us) {
    whole.add(u);
    stream(streamed, u, r);
  }
  t.deepEqual(bits(whole.result()), bits(streamed.result()));
  t.is(streamed.inFlight, 0);
  // streams may interleave
  const inter = new FedAvg(ref, { maxInFlight: 2 });
  const [u1, u2] = us;
  inter.begin(u1!.participant, u1!.numSamples);
  inter.begin(u2!.participant, u2!.numSamples);
  t.is(inter.inFlight, 2);
  for (const [ti, x] of ref.tensors.entries()) {
    inter.addChunk(u2!.participant, ti, 0, float32ToLE(u2!.model.tensors[ti]!.data));
    inter.addChunk(u1!.participant, ti, 0, float32ToLE(u1!.model.tensors[ti]!.data));
    void x;
  }
  inter.commit(u1!.participant);
  inter.commit(u2!.participant);
  t.deepEqual(bits(inter.result()), want('float32', [u1!, u2!]));
});

test('bad updates are refused with a reason and change nothing', (t) => {
  const us = updates(3, 6);
  const a = new FedAvg(ref);
  a.add(us[0]!);
  a.add(us[1]!);
  const before = bits(a.result());
  const base = us[2]!;
  const withData = (ti: number, i: number, v: number): Update => {
    const m = structuredClone(base.model);
    m.tensors[ti]!.data[i] = v;
    return { ...base, model: m };
  };
  // the NaN sits in fc.w's last staging block: everything before it would already be folded by a one-pass fold
  refused(t, () => a.add(withData(2, 34_570, NaN)), 'non_finite', /update from proplet-2: tensor 'fc\.w' has NaN at index 34570/);
  refused(t, () => a.add(withData(0, 0, Infinity)), 'non_finite', /tensor 'conv\.w' has Infinity at index 0/);
  refused(t, () => a.add(withData(4, 0, -Infinity)), 'non_finite', /tensor 'scale'/);
  const short = structuredClone(base.model);
  short.tensors[3]!.data = new Float32Array(6);
  refused(t, () => a.add({ ...base, model: short }), 'shape', /tensor 'fc\.b' has 6 values, shape \[7\] needs 7/);
  const reshaped = structuredClone(base.model);
  reshaped.tensors[2]!.shape = [191, 181];
  refused(t, () => a.add({ ...base, model: reshaped }), 'shape', /tensor 'fc\.w' has shape \[191,181\], the round's model has \[181,191\]/);
  const renamed = structuredClone(base.model);
  renamed.tensors[1]!.name = 'conv.bias';
  refused(t, () => a.add({ ...base, model: renamed }), 'shape', /tensor #1 is "conv\.bias", the round's model has 'conv\.b' there/);
  refused(t, () => a.add({ ...base, model: { ...base.model, tensors: base.model.tensors.slice(0, 4) } }), 'shape', /4 tensors, the round's model has 5/);
  refused(t, () => a.add({ ...base, model: { ...base.model, tensors: [...base.model.tensors].reverse() } }), 'shape', /tensor #0/);
  for (const n of [0, -5, 1.5, NaN, Infinity, 2e9, '10' as unknown as number, undefined as unknown as number]) {
    refused(t, () => a.add({ ...base, numSamples: n }), 'samples', /numSamples must be an integer between 1 and 1000000000/);
  }
  refused(t, () => a.add({ ...us[0]!, model: base.model }), 'duplicate', /proplet-0 already has an update in this round/);
  refused(t, () => a.add({ ...base, participant: 'a/b' }), 'invalid', /participant must be an id/);
  refused(t, () => a.add({ ...base, metrics: { loss: NaN } }), 'non_finite', /metrics\.loss is NaN/);
  refused(t, () => a.add({ ...base, metrics: { accuracy: '0.9' as unknown as number } }), 'invalid', /metrics\.accuracy must be a number/);
  refused(t, () => a.add({ ...base, model: { ...base.model, format: 'x' as typeof MODEL_FORMAT } }), 'invalid', /model format/);
  refused(t, () => a.add(null as unknown as Update), 'invalid');
  t.is(a.count, 2);
  t.is(a.totalSamples, us[0]!.numSamples + us[1]!.numSamples);
  t.deepEqual(bits(a.result()), before);
  // and the participant refused can still send a good update
  a.add(base);
  t.deepEqual(bits(a.result()), want('float32', us));
});

test('a bad stream is aborted and changes nothing; a good one may follow', (t) => {
  const us = updates(2, 7);
  const a = new FedAvg(ref, { maxInFlight: 1 });
  a.add(us[0]!);
  const before = bits(a.result());
  const u = us[1]!;
  const p = u.participant;
  const data = (ti: number) => float32ToLE(u.model.tensors[ti]!.data);

  a.begin(p, u.numSamples);
  a.addChunk(p, 2, 0, data(2).subarray(0, 4000));
  const bad = Uint8Array.from(data(2).subarray(4000, 8000));
  new DataView(bad.buffer).setFloat32(12, NaN, true);
  refused(t, () => a.addChunk(p, 2, 1000, bad), 'non_finite', /tensor 'fc\.w' has NaN at index 1003/);
  t.is(a.inFlight, 0);
  refused(t, () => a.addChunk(p, 2, 2000, data(2).subarray(8000, 8004)), 'state', /no update from "proplet-1" is streaming/);

  const cases: [string, () => void, UpdateErrorReason, RegExp][] = [
    ['overlap', () => (a.addChunk(p, 2, 0, data(2).subarray(0, 400)), a.addChunk(p, 2, 50, data(2).subarray(200, 600))), 'shape', /elements \[50, 150\) overlap/],
    ['out of range', () => a.addChunk(p, 1, 5, data(1).subarray(0, 16)), 'shape', /tensor 'conv\.b': elements \[5, 9\) are outside its 8/],
    ['no such tensor', () => a.addChunk(p, 9, 0, data(1)), 'shape', /no tensor #9/],
    ['partial float', () => a.addChunk(p, 1, 0, data(1).subarray(0, 6)), 'shape', /6 bytes is not whole float32 values/],
    ['incomplete', () => (a.addChunk(p, 0, 0, data(0)), a.commit(p)), 'shape', /is incomplete: tensor 'conv\.b' has 0 of 8 elements/],
  ];
  for (const [name, f, reason, msg] of cases) {
    a.begin(p, u.numSamples);
    refused(t, f, reason, msg);
    t.is(a.inFlight, 0, name);
  }
  a.begin(p, u.numSamples);
  refused(t, () => a.begin('proplet-9', 5), 'capacity', /1 updates already streaming \(maxInFlight 1\)/);
  refused(t, () => a.begin(p, 5), 'duplicate', /already has an update streaming/);
  refused(t, () => a.add(u), 'duplicate');
  t.true(a.abort(p));
  t.false(a.abort(p));
  t.is(a.count, 1);
  t.deepEqual(bits(a.result()), before);
  stream(a, u, rng(8));
  t.deepEqual(bits(a.result()), want('float32', us));
  t.deepEqual(a.participants(), ['proplet-0', 'proplet-1']);
});

test('fedavg is bit-identical to its reference loop in arrival order: Flower\'s float32 (default), or float64 rounded once', (t) => {
  const us = updates(7, 14);
  for (const accumulator of ACCUMULATORS) {
    for (const via of ['add', 'addEncoded', 'stream'] as const) {
      const a = new FedAvg(ref, { accumulator });
      for (const u of us) give(a, u, via, 15);
      t.deepEqual(bits(a.finish()), want(accumulator, us), `${accumulator} ${via}`);
    }
  }
});

// One tensor of several 256 KiB pieces (the last one partial; more than add()'s ring holds) and a small one after it.
const BIG: [string, number[]][] = [
  ['big', [300_001]],
  ['tail', [3]],
];
function bigModel(r: () => number): Model {
  return { format: MODEL_FORMAT, tensors: BIG.map(([name, shape]) => ({ name, shape, data: Float32Array.from({ length: shape[0]! }, () => r() - 0.5) })) };
}

/** Streams an update in order, in chunks of `chunk` bytes; `others`: begin()'s othersAtMost. */
function streamInOrder(a: Aggregator, u: Update, chunk: number, others?: number): void {
  a.begin(u.participant, u.numSamples, undefined, others);
  for (const [ti, x] of u.model.tensors.entries()) {
    const bytes = float32ToLE(x.data);
    for (let o = 0; o < bytes.length; o += chunk) a.addChunk(u.participant, ti, o / 4, bytes.subarray(o, o + chunk));
  }
  a.commit(u.participant);
}

for (const accumulator of ACCUMULATORS) test(`${accumulator}: a big update with a NaN in its middle, its last block or its very last value is refused whole: the aggregate stays bit-identical`, (t) => {
  const r = rng(16);
  const bigRef = bigModel(r);
  const good: Update[] = [0, 1, 2].map((i) => ({ participant: `good-${i}`, numSamples: 10 + i * 7, model: bigModel(r) }));
  const a = new FedAvg(bigRef, { accumulator });
  a.add(good[0]!);
  a.add(good[1]!);
  const before = bits(a.result());
  const poisoned = (ti: number, i: number, v: number): Update => {
    const m = structuredClone(good[2]!.model);
    m.tensors[ti]!.data[i] = v;
    return { ...good[2]!, model: m };
  };
  const cases: [number, number, number, RegExp][] = [
    [0, 0, -Infinity, /tensor 'big' has -Infinity at index 0$/], // the first value
    [0, 150_007, NaN, /tensor 'big' has NaN at index 150007$/], // the middle, inside a block of sixteen
    [0, 300_000, Infinity, /tensor 'big' has Infinity at index 300000$/], // the last value of the last, partial block
    [1, 2, NaN, /tensor 'tail' has NaN at index 2$/], // the update's very last value
  ];
  for (const [ti, i, v, msg] of cases) {
    const u = poisoned(ti, i, v);
    refused(t, () => a.add(u), 'non_finite', msg);
    refused(t, () => a.addEncoded(u.participant, u.numSamples, encodeModel(u.model, { checkFinite: false })), 'non_finite', msg);
    refused(t, () => streamInOrder(a, u, 65536), 'non_finite', msg); // folds as it arrives: refused by the chunk
    // told more updates may come than could wait: copied as it arrives, checked where it is folded, at commit
    refused(t, () => streamInOrder(a, u, 4096, 100), 'non_finite', msg);
    t.is(a.inFlight, 0);
    t.is(a.count, 2);
    t.deepEqual(bits(a.result()), before, `${v} at ${ti}:${i}`);
  }
  streamInOrder(a, good[2]!, 65536, 100);
  t.deepEqual(bits(a.finish()), want(accumulator, good, bigRef));
});

test('streams share slots in the kernel memory: interleaved, refused and aborted streams leave exactly the committed ones', (t) => {
  const us = updates(5, 17);
  const a = new FedAvg(ref, { maxInFlight: 3 });
  const [u0, u1, u2, u3, u4] = us as [Update, Update, Update, Update, Update];
  for (const u of [u0, u1, u2]) a.begin(u.participant, u.numSamples);
  const grown = a.memoryBytes;
  // interleaved chunks, each stream in its own slot
  let half2 = 0;
  for (const [ti, x] of ref.tensors.entries()) {
    for (const u of [u0, u1, u2]) {
      const bytes = float32ToLE(u.model.tensors[ti]!.data);
      const half = Math.floor(x.data.length / 2) * 4;
      a.addChunk(u.participant, ti, half / 4, bytes.subarray(half));
      if (u === u1 && ti === 2) {
        // u1's last chunk of fc.w ends in a NaN: u1 (begun while u0 streams: it does not fold as it
        // arrives) is checked where it is folded, at commit
        const bad = Uint8Array.from(bytes.subarray(0, half));
        new DataView(bad.buffer).setFloat32(bad.length - 4, NaN, true);
        a.addChunk(u.participant, ti, 0, bad);
        half2 = half;
      } else a.addChunk(u.participant, ti, 0, bytes.subarray(0, half));
    }
  }
  t.is(a.inFlight, 3);
  // refused whole at commit, and dropped: the others go on
  refused(t, () => a.commit(u1.participant), 'non_finite', new RegExp(`update from ${u1.participant}: tensor 'fc\\.w' has NaN at index ${half2 / 4 - 1}$`));
  t.false(a.has(u1.participant));
  t.is(a.inFlight, 2);
  t.true(a.abort(u2.participant));
  a.commit(u0.participant);
  t.is(a.inFlight, 0);
  // later streams reuse the free slots: the memory does not grow
  stream(a, u3, rng(18));
  a.begin(u4.participant, u4.numSamples);
  a.begin('other', 3);
  for (const [ti, x] of u4.model.tensors.entries()) a.addChunk(u4.participant, ti, 0, float32ToLE(x.data));
  a.commit(u4.participant);
  a.abort('other');
  t.is(a.memoryBytes, grown);
  const whole = new FedAvg(ref);
  for (const u of [u0, u3, u4]) whole.add(u);
  t.deepEqual(bits(a.result()), bits(whole.result()));
  t.deepEqual(a.participants(), [u0.participant, u3.participant, u4.participant]);
});

/** Sends the chunks of one tensor of an update (all of it, in two halves: the second half first). */
function sendTensor(a: Aggregator, u: Update, ti: number): void {
  const bytes = float32ToLE(u.model.tensors[ti]!.data);
  const half = Math.floor(bytes.length / 8) * 4;
  a.addChunk(u.participant, ti, half / 4, bytes.subarray(half));
  if (half > 0) a.addChunk(u.participant, ti, 0, bytes.subarray(0, half));
}
/** Sends every tensor of an update but those given. */
function sendRest(a: Aggregator, u: Update, ...sent: number[]): void {
  for (let ti = 0; ti < u.model.tensors.length; ti++) if (!sent.includes(ti)) sendTensor(a, u, ti);
}

test('float32: a stream that begins alone folds as it arrives; updates that count meanwhile wait and count after it, in their order', (t) => {
  const us = updates(6, 41);
  const [u0, u1, u2, u3, u4, u5] = us as [Update, Update, Update, Update, Update, Update];
  const a = new FedAvg(ref);
  a.add(u0);
  a.begin(u1.participant, u1.numSamples); // nothing else streams or waits: u1 folds as it arrives
  sendTensor(a, u1, 2);
  a.add(u2); // u1 has folded a chunk: u2 waits behind it
  stream(a, u3, rng(42)); // begins while u1 streams, commits before it: waits too
  a.addEncoded(u4.participant, u4.numSamples, encodeModel(u4.model));
  t.is(a.count, 4);
  t.true(a.has(u2.participant) && a.has(u3.participant) && !a.has(u1.participant));
  t.deepEqual(a.participants(), [u0, u2, u3, u4].map((u) => u.participant));
  // result() meanwhile: the updates that count, in that order, without u1
  t.deepEqual(bits(a.result()), want('float32', [u0, u2, u3, u4]));
  sendRest(a, u1, 2);
  a.commit(u1.participant); // u1 counts before those that waited
  t.deepEqual(a.participants(), [u0, u1, u2, u3, u4].map((u) => u.participant));
  t.deepEqual(bits(a.result()), want('float32', [u0, u1, u2, u3, u4]));
  // nothing waits now: commit order again
  a.add(u5);
  t.deepEqual(bits(a.finish()), want('float32', [u0, u1, u2, u3, u4, u5]));
});

test('float32: a folding stream aborted, refused or dropped at finish leaves the sum as it was; those that waited are folded in their order', (t) => {
  const us = updates(5, 43);
  const [u0, u1, u2, u3, u4] = us as [Update, Update, Update, Update, Update];
  for (const end of ['abort', 'nan-last', 'incomplete', 'finish'] as const) {
    const a = new FedAvg(ref);
    a.add(u0);
    const before = bits(a.result());
    a.begin(u1.participant, u1.numSamples);
    sendRest(a, u1, 0); // every tensor but the first
    a.add(u2);
    stream(a, u3, rng(44));
    t.deepEqual(a.participants(), [u0, u2, u3].map((u) => u.participant), end);
    t.deepEqual(bits(a.result()), want('float32', [u0, u2, u3]), end);
    if (end === 'abort') t.true(a.abort(u1.participant));
    else if (end === 'nan-last') {
      // the stream's very last chunk ends in a NaN: everything before it was folded into its slot
      const bad = Uint8Array.from(float32ToLE(u1.model.tensors[0]!.data));
      new DataView(bad.buffer).setFloat32(bad.length - 4, NaN, true);
      refused(t, () => a.addChunk(u1.participant, 0, 0, bad), 'non_finite', new RegExp(`tensor 'conv\\.w' has NaN at index ${bad.length / 4 - 1}`));
    } else if (end === 'incomplete') refused(t, () => a.commit(u1.participant), 'shape', /is incomplete: tensor 'conv\.w'/);
    else {
      t.deepEqual(bits(a.finish()), want('float32', [u0, u2, u3]), end);
      continue;
    }
    t.is(a.inFlight, 0);
    t.deepEqual(bits(a.result()), want('float32', [u0, u2, u3]), end);
    a.add(u4);
    t.deepEqual(a.participants(), [u0, u2, u3, u4].map((u) => u.participant), end);
    t.deepEqual(bits(a.finish()), want('float32', [u0, u2, u3, u4]), end);
    void before;
  }
  // the sum untouched by the refused stream: the same bits as without it
  const b = new FedAvg(ref);
  b.add(u0);
  const before = bits(b.result());
  b.begin(u1.participant, u1.numSamples);
  sendRest(b, u1, 0);
  t.true(b.abort(u1.participant));
  t.deepEqual(bits(b.result()), before);
});

test('float32: the first update waiting behind a folding stream, the stream first of all, and a stream that folded nothing yet', (t) => {
  const us = updates(5, 45);
  const [u0, u1, u2, u3, u4] = us as [Update, Update, Update, Update, Update];
  // the folding stream is the round's first update: its chunks are scaled, not added to a sum
  const a = new FedAvg(ref);
  a.begin(u0.participant, u0.numSamples);
  sendTensor(a, u0, 0);
  a.add(u1);
  t.deepEqual(bits(a.result()), want('float32', [u1]), 'only the update waiting');
  a.add(u4);
  sendRest(a, u0, 0);
  a.commit(u0.participant);
  t.deepEqual(a.participants(), [u0, u1, u4].map((u) => u.participant));
  t.deepEqual(bits(a.finish()), want('float32', [u0, u1, u4]));
  // a stream that has received nothing when another update counts does not fold as it arrives: commit order
  const b = new FedAvg(ref);
  b.begin(u2.participant, u2.numSamples);
  b.add(u3);
  t.deepEqual(b.participants(), [u3.participant]);
  sendRest(b, u2);
  b.commit(u2.participant);
  t.deepEqual(b.participants(), [u3.participant, u2.participant]);
  t.deepEqual(bits(b.finish()), want('float32', [u3, u2]));
  void u4;
  // float64 keeps commit order: its sum does not depend on it
  const c = new FedAvg(ref, { accumulator: 'float64' });
  c.begin(u2.participant, u2.numSamples);
  sendTensor(c, u2, 2);
  c.add(u3);
  sendRest(c, u2, 2);
  c.commit(u2.participant);
  t.deepEqual(c.participants(), [u3.participant, u2.participant]);
});

test('float32: at most maxInFlight updates wait behind a folding stream; the memory stays within sum, one slot for add() and 2 × maxInFlight slots', (t) => {
  releaseFedAvgMemory();
  const us = updates(6, 47);
  const [u0, u1, u2, u3, u4] = us as [Update, Update, Update, Update, Update];
  const a = new FedAvg(ref, { maxInFlight: 2 });
  a.begin(u0.participant, u0.numSamples);
  sendTensor(a, u0, 2);
  a.add(u1);
  a.add(u2);
  refused(t, () => a.add(u3), 'capacity', /2 updates already wait for the stream from proplet-0, which folds as it arrives and counts before them \(maxInFlight 2\)/);
  refused(t, () => a.begin(u3.participant, u3.numSamples), 'capacity', /already wait/);
  t.is(a.count, 2);
  sendRest(a, u0, 2);
  a.commit(u0.participant);
  a.add(u3); // nothing waits any more
  stream(a, u4, rng(48));
  const slot = Math.ceil((4 * paramCount(ref)) / 16) * 16;
  t.true(a.memoryBytes <= STAGE + (2 * 2 + 2) * slot + 65536, `${a.memoryBytes}`);
  t.deepEqual(bits(a.finish()), want('float32', [u0, u1, u2, u3, u4]));
});

test('float32: a stream whose caller says more updates may come than could wait behind it does not fold as it arrives: none is refused for waiting, commit order', (t) => {
  const us = updates(6, 49);
  const [u0, u1, u2, u3, u4] = us as [Update, Update, Update, Update, Update];
  const a = new FedAvg(ref, { maxInFlight: 2 });
  a.begin(u0.participant, u0.numSamples, undefined, 4); // a round with 4 others still to come: more than 2 could wait
  sendTensor(a, u0, 2);
  a.add(u1);
  a.add(u2);
  a.add(u3); // the old code refused this one (capacity)
  t.deepEqual(a.participants(), [u1, u2, u3].map((u) => u.participant));
  sendRest(a, u0, 2);
  a.commit(u0.participant);
  a.add(u4);
  t.deepEqual(a.participants(), [u1, u2, u3, u0, u4].map((u) => u.participant));
  t.deepEqual(bits(a.finish()), want('float32', [u1, u2, u3, u0, u4]));
  // as many others as could wait: it folds as it arrives
  const b = new FedAvg(ref, { maxInFlight: 2 });
  b.begin(u0.participant, u0.numSamples, undefined, 2);
  sendTensor(b, u0, 2);
  b.add(u1);
  sendRest(b, u0, 2);
  b.commit(u0.participant);
  t.deepEqual(b.participants(), [u0, u1].map((u) => u.participant));
  t.deepEqual(bits(b.finish()), want('float32', [u0, u1]));
});

test('values whose sum overflows float32 are not refused: the kernel\'s cheap check raises a false alarm that an exact look settles', (t) => {
  const r = rng(49);
  const huge = (seed: number): Update => {
    const m = model(r);
    for (const x of m.tensors) for (let i = 0; i < x.data.length; i++) x.data[i] = (i + seed) % 3 === 0 ? -3e38 : 3e38;
    return { participant: `h${seed}`, numSamples: 1, model: m };
  };
  const us = [huge(0), huge(1)];
  for (const accumulator of ACCUMULATORS) {
    for (const via of ['add', 'addEncoded', 'stream'] as const) {
      const a = new FedAvg(ref, { accumulator });
      for (const u of us) give(a, u, via, 50);
      t.is(a.count, 2, `${accumulator} ${via}`);
      const res = a.finish();
      // ±Infinity where float32 overflows, as in numpy
      if (accumulator === 'float32') t.deepEqual(raw(res), Buffer.concat(flower32(us).map((x) => float32ToLE(x))), via);
    }
  }
  // streams that do not fold as they arrive (othersAtMost): checked, scaled and folded at commit
  const c = new FedAvg(ref);
  for (const u of us) streamInOrder(c, u, 64, 100);
  t.is(c.count, 2);
  t.deepEqual(raw(c.finish()), Buffer.concat(flower32(us).map((x) => float32ToLE(x))));
  // a plain stream (not the folding one) and one waiting behind it
  const b = new FedAvg(ref);
  b.begin(us[0]!.participant, 1);
  sendTensor(b, us[0]!, 0);
  stream(b, us[1]!, rng(51));
  t.true(b.abort(us[0]!.participant));
  t.deepEqual(raw(b.finish()), Buffer.concat(flower32([us[1]!]).map((x) => float32ToLE(x))));
});

test('addEncoded: an update in its CBOR form folds like the decoded one, and is validated the same', (t) => {
  const us = updates(5, 13);
  for (const alg of ['fedavg', 'fedmedian', 'trimmed-mean'] as const) {
    const a = createAggregator(alg, ref);
    const b = createAggregator(alg, ref);
    for (const [i, u] of us.entries()) {
      a.add(u);
      const enc = encodeModel({ ...u.model, meta: { note: 'ignored' } });
      // at an odd offset of a bigger buffer, as a message payload may be
      const buf = new Uint8Array(enc.length + 3);
      buf.set(enc, 3);
      if (i < 4) b.addEncoded(u.participant, u.numSamples, buf.subarray(3), u.metrics);
    }
    const before = bits(b.result());
    const last = us[4]!;
    const enc = encodeModel(last.model);
    refused(t, () => b.addEncoded('x1', 5, enc.subarray(0, enc.length - 1)), 'invalid', /update from x1: truncated/);
    refused(t, () => b.addEncoded('x1', 5, Buffer.from('{}')), 'invalid', /not a CBOR map/);
    const nan = structuredClone(last.model);
    nan.tensors[2]!.data[30_000] = NaN;
    refused(t, () => b.addEncoded('x1', 5, encodeModel(nan, { checkFinite: false })), 'non_finite', /update from x1: tensor 'fc\.w' has NaN at index 30000/);
    const bigger = structuredClone(last.model);
    bigger.tensors.push({ name: 'extra', shape: [1], data: new Float32Array(1) });
    refused(t, () => b.addEncoded('x1', 5, encodeModel(bigger)), 'shape', /6 tensors, more than 5: bigger than the round's model/);
    const reshaped = structuredClone(last.model);
    reshaped.tensors[0]!.shape = [9, 4, 8];
    refused(t, () => b.addEncoded('x1', 5, encodeModel(reshaped)), 'shape', /tensor 'conv\.w' has shape \[9,4,8\]/);
    refused(t, () => b.addEncoded(us[0]!.participant, 5, enc), 'duplicate');
    refused(t, () => b.addEncoded('x1', 0, enc), 'samples');
    t.is(b.count, 4);
    t.deepEqual(bits(b.result()), before);
    b.addEncoded(last.participant, last.numSamples, enc, last.metrics);
    t.deepEqual(bits(a.result()), bits(b.result()), alg);
  }
});

/** A big model, five good updates of it, and the last one with a NaN at element i of 'big'. */
function fiveBig(seed: number) {
  const r = rng(seed);
  const bigRef = bigModel(r);
  const good: Update[] = [0, 1, 2, 3, 4].map((i) => ({ participant: `good-${i}`, numSamples: 3 + i * 11, model: bigModel(r) }));
  const poisoned = (i: number): Update => {
    const m = structuredClone(good[4]!.model);
    m.tensors[0]!.data[i] = NaN;
    return { ...good[4]!, participant: 'bad', model: m };
  };
  return { bigRef, good, poisoned };
}

test('float64: add() stages through the ring, a free stream slot, or the 256 KiB area while every slot is busy: same sums, exact refusals', (t) => {
  const { bigRef, good, poisoned } = fiveBig(21);
  const a = new FedAvg(bigRef, { maxInFlight: 1, accumulator: 'float64' });
  const check = (label: string) => {
    const before = bits(a.result());
    // a NaN in the first piece (copied in again by the fold), in the middle, in the last piece (still staged)
    for (const i of [5, 150_000, 299_999]) refused(t, () => a.add(poisoned(i)), 'non_finite', new RegExp(`NaN at index ${i}\\b`));
    t.deepEqual(bits(a.result()), before, label);
  };
  a.add(good[0]!); // the ring (a quarter of the model, rounded up to whole pieces)
  check('ring');
  a.begin('open', 1); // slot 0 (where the ring was) now holds a stream: add() goes through the 256 KiB area
  a.add(good[1]!);
  check('every slot busy');
  a.abort('open');
  a.add(good[2]!); // the free slot, a whole model
  check('free slot');
  streamInOrder(a, good[3]!, 65536);
  a.add(good[4]!);
  t.deepEqual(bits(a.finish()), want('float64', good, bigRef));
});

test('float32: add() stages a whole update in a free slot, or a new one while every slot holds a stream: same sums, exact refusals, memory of sum + slots', (t) => {
  releaseFedAvgMemory(); // a memory kept by another test's finishWith() may be bigger
  const { bigRef, good, poisoned } = fiveBig(25);
  const slot = Math.ceil((4 * 300_004) / 16) * 16;
  const pages = (bytes: number) => Math.ceil(bytes / 65536) * 65536;
  const a = new FedAvg(bigRef, { maxInFlight: 1 });
  t.is(a.memoryBytes, pages(STAGE + 2 * slot), 'the float32 sum and one slot');
  const check = (label: string) => {
    const before = bits(a.result());
    for (const i of [5, 150_000, 299_999]) refused(t, () => a.add(poisoned(i)), 'non_finite', new RegExp(`NaN at index ${i}\\b`));
    refused(t, () => a.addEncoded('bad', 9, encodeModel(poisoned(300_000).model, { checkFinite: false })), 'non_finite', /NaN at index 300000\b/);
    t.deepEqual(bits(a.result()), before, label);
  };
  a.add(good[0]!);
  check('first');
  a.begin('open', 1); // the slot now holds a stream: add() stages in a second one
  a.add(good[1]!);
  check('every slot busy');
  t.is(a.memoryBytes, pages(STAGE + 3 * slot));
  a.abort('open');
  a.add(good[2]!);
  streamInOrder(a, good[3]!, 65536);
  a.add(good[4]!);
  t.is(a.memoryBytes, pages(STAGE + 3 * slot), 'slots are reused');
  t.deepEqual(bits(a.finish()), want('float32', good, bigRef));
});

test('finishWith() hands the memory to the next fedavg of the same model: detached views, a zeroed sum, bounded and dropped for another size', (t) => {
  releaseFedAvgMemory();
  const us = updates(6, 22);
  const expected = want('float32', us.slice(3));
  const first = new FedAvg(ref);
  for (const u of us.slice(0, 3)) stream(first, u, rng(23)); // the kept memory has grown by a slot, and holds sums
  let kept: Float32Array | undefined;
  const encoded = first.finishWith((m) => {
    kept = m.tensors[2]!.data;
    t.true(kept.length > 0);
    return encodeModel(m);
  });
  t.true(encoded.length > 0);
  t.is(kept!.length, 0, 'a view kept past use() reads as empty, never as the next round');
  t.throws(() => first.result(), { instanceOf: AggregatorError, message: /finished/ });
  const grown = first.memoryBytes;
  // the next round of the same model starts on that memory, from a zero sum
  const second = new FedAvg(ref);
  t.is(second.memoryBytes, grown);
  t.is(releaseFedAvgMemory(), 0, 'taken from the pool');
  for (const u of us.slice(3)) second.add(u);
  t.deepEqual(second.finishWith((m) => bits(m)), expected);
  // a float64 aggregator on a memory a float32 one kept (and back): its sum is zeroed
  const third = new FedAvg(ref);
  third.add(us[0]!);
  third.finishWith(() => undefined);
  const wide = new FedAvg(ref, { accumulator: 'float64' });
  for (const u of us.slice(3)) wide.add(u);
  t.deepEqual(wide.finishWith((m) => bits(m)), want('float64', us.slice(3)));
  const narrow = new FedAvg(ref);
  for (const u of us.slice(3)) narrow.add(u);
  t.deepEqual(narrow.finishWith((m) => bits(m)), expected);
  releaseFedAvgMemory();
  // a third aggregator while two finish: at most two memories are kept
  const [x, y, z] = [new FedAvg(ref), new FedAvg(ref), new FedAvg(ref)];
  for (const a of [x, y, z]) a.add(us[0]!);
  for (const a of [x, y, z]) a.finishWith(() => undefined);
  t.is(keptFedAvgMemoryBytes(), 2 * x.memoryBytes);
  t.is(releaseFedAvgMemory(), 2);
  t.is(keptFedAvgMemoryBytes(), 0);
  // a model of another size drops the memories kept for this one
  const w = new FedAvg(ref);
  w.add(us[0]!);
  w.finishWith(() => undefined);
  const other = new FedAvg(bigModel(rng(24)));
  t.is(releaseFedAvgMemory(), 0);
  t.is(other.count, 0);
  // fedmedian and trimmed-mean: finishWith is finish() handed to use
  const m = new FedMedian(ref);
  m.add(us[0]!);
  t.deepEqual(m.finishWith((r) => bits(r)), bits(us[0]!.model));
});

test('one poisoned update: fedavg follows it, fedmedian and trimmed-mean do not', (t) => {
  const honest = updates(9, 9, 1).map((u) => ({ ...u, numSamples: 100 }));
  const poison = structuredClone(honest[0]!.model);
  for (const x of poison.tensors) x.data.fill(1e9);
  const all = [...honest, { participant: 'mallory', numSamples: 100, model: poison }];
  const run = (a: Aggregator) => {
    for (const u of all) a.add(u);
    return a.result();
  };
  const maxAbs = (m: Model) => Math.max(...m.tensors.map((x) => x.data.reduce((s, v) => Math.max(s, Math.abs(v)), 0)));
  t.true(maxAbs(run(createAggregator('fedavg', ref))) > 1e7);
  const med = run(createAggregator('fedmedian', ref));
  const trim = run(createAggregator('trimmed-mean', ref, { trimFraction: 0.1 })); // floor(0.1 × 10) = 1 at each end
  for (const m of [med, trim]) {
    for (const x of m.tensors) for (const v of x.data) if (!(v >= 0 && v <= 2)) return t.fail(`${m.meta?.algorithm} gave ${v} in ${x.name}`);
  }
  t.is(trim.meta?.trim, 1);
  // trimmed-mean is the mean of the 8 middle values: check one coordinate by hand
  const col = all.map((u) => u.model.tensors[2]!.data[777]!).sort((a, b) => a - b);
  t.is(trim.tensors[2]!.data[777], Math.fround(col.slice(1, 9).reduce((a, b) => a + b, 0) / 8));
  t.is(med.tensors[2]!.data[777], Math.fround((col[4]! + col[5]!) / 2));
});

test('fedmedian: odd and even counts, weights ignored, streamed rows', (t) => {
  const tiny: Model = { format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [3], data: new Float32Array(3) }] };
  const up = (p: string, n: number, xs: number[]): Update => ({ participant: p, numSamples: n, model: { ...tiny, tensors: [{ name: 'w', shape: [3], data: new Float32Array(xs) }] } });
  const m = new FedMedian(tiny);
  m.add(up('a', 1, [1, 10, -1]));
  m.add(up('b', 1000, [2, 20, -2]));
  m.begin('c', 5);
  m.addChunk('c', 0, 1, float32ToLE(new Float32Array([30, -3])));
  m.addChunk('c', 0, 0, float32ToLE(new Float32Array([3])));
  m.commit('c');
  t.deepEqual([...m.result().tensors[0]!.data], [2, 20, -2]);
  m.add(up('d', 1, [4, 40, -4]));
  t.deepEqual([...m.result().tensors[0]!.data], [2.5, 25, -2.5]);
  const tm = new TrimmedMean(tiny, { trim: 1 });
  for (const u of [up('a', 1, [1, 1, 1]), up('b', 1, [2, 2, 2])]) tm.add(u);
  const e = t.throws(() => tm.result(), { instanceOf: AggregatorError });
  t.is(e?.reason, 'too_few_updates');
  t.regex(e?.message ?? '', /drops 1 updates at each end and needs at least 3, has 2/);
  tm.add(up('c', 1, [9, 9, 9]));
  t.deepEqual([...tm.result().tensors[0]!.data], [2, 2, 2]);
});

test('fedmedian and trimmed-mean refuse updates past maxBufferedValues', (t) => {
  const P = paramCount(ref);
  const us = updates(4, 10);
  for (const alg of ['fedmedian', 'trimmed-mean'] as const) {
    const a = createAggregator(alg, ref, { maxBufferedValues: 3 * P });
    a.add(us[0]!);
    a.add(us[1]!);
    a.begin(us[2]!.participant, 10); // a stream holds a row too
    refused(t, () => a.add(us[3]!), 'capacity', new RegExp(`${alg} holds every update, and 4 updates × ${P} parameters would pass maxBufferedValues ${3 * P}`));
    t.true(a.abort(us[2]!.participant));
    a.add(us[3]!);
    refused(t, () => a.add(us[2]!), 'capacity', /raise aggregator\.config\.maxBufferedValues or use fedavg/);
    t.is(a.count, 3);
    t.is(a.memoryBytes, 3 * P * 4);
  }
  // fedavg (float64) holds its float64 sum (after a 256 KiB staging area) in wasm memory, then add()'s ring of a
  // quarter of a model (a whole one for a model this small) where slot 0 goes, which becomes slot 0 when a stream opens;
  // the memory grows by a slot per stream open at once and does not shrink: the slots are reused by later streams
  releaseFedAvgMemory(); // a memory kept by another test's finishWith() may be bigger
  const f = new FedAvg(ref, { maxInFlight: 3, accumulator: 'float64' });
  const pages = (bytes: number) => Math.ceil(bytes / 65536) * 65536;
  const slot = Math.ceil((4 * P) / 16) * 16;
  for (const u of us) f.add(u);
  t.is(f.memoryBytes, pages(STAGE + 8 * P + slot));
  f.begin('s1', 1);
  t.is(f.memoryBytes, pages(STAGE + 8 * P + slot));
  f.abort('s1');
  t.is(f.memoryBytes, pages(STAGE + 8 * P + slot));
  f.begin('s1', 1);
  f.begin('s2', 1);
  t.is(f.memoryBytes, pages(STAGE + 8 * P + 2 * slot));
  f.abort('s1');
  f.abort('s2');
  f.begin('s3', 1);
  f.begin('s4', 1);
  t.is(f.memoryBytes, pages(STAGE + 8 * P + 2 * slot));
  t.throws(() => createAggregator('fedmedian', ref, { maxBufferedValues: -1 }), { instanceOf: AggregatorError, message: /maxBufferedValues must be an integer/ });
});

test('metrics: mean loss and accuracy weighted by samples, over the updates that reported them', (t) => {
  const us = updates(4, 11);
  us[0] = { ...us[0]!, numSamples: 100, metrics: { loss: 1, accuracy: 0.5 } };
  us[1] = { ...us[1]!, numSamples: 300, metrics: { loss: 2 } };
  us[2] = { ...us[2]!, numSamples: 600, metrics: { accuracy: 0.9 } };
  us[3] = { ...us[3]!, numSamples: 50 };
  for (const alg of ['fedavg', 'fedmedian', 'trimmed-mean'] as const) {
    const a = createAggregator(alg, ref);
    t.deepEqual(a.metrics(), { updates: 0, totalSamples: 0, lossSamples: 0, accuracySamples: 0 });
    for (const u of us) a.add(u);
    const m = a.metrics();
    t.is(m.updates, 4);
    t.is(m.totalSamples, 1050);
    t.is(m.lossSamples, 400);
    t.is(m.accuracySamples, 700);
    t.is(m.loss, (100 * 1 + 300 * 2) / 400);
    t.is(m.accuracy, (100 * 0.5 + 600 * 0.9) / 700);
    t.like(a.result().meta, { loss: m.loss, accuracy: m.accuracy, totalSamples: 1050, numParticipants: 4, algorithm: alg });
  }
});

test('createAggregator: unknown algorithms, bad config and bad reference are AggregatorErrors', (t) => {
  const err = (f: () => unknown, reason: AggregatorError['reason'], msg: RegExp) => {
    const e = t.throws(f, { instanceOf: AggregatorError });
    t.is(e?.reason, reason);
    t.regex(e?.message ?? '', msg);
  };
  err(() => createAggregator('fedprox', ref), 'unknown_algorithm', /unknown aggregator\.algorithm "fedprox": known are fedavg, fedmedian, trimmed-mean/);
  err(() => createAggregator('fedavg', ref, { trimFraction: 0.1 }), 'config', /trimFraction is not a setting of fedavg; its settings are maxSamples, maxInFlight/);
  err(() => createAggregator('trimmed-mean', ref, { trimFractoin: 0.1 }), 'config', /trimFractoin is not a setting of trimmed-mean/);
  err(() => createAggregator('trimmed-mean', ref, { trimFraction: 0.5 }), 'config', /trimFraction must be a number in \[0, 0\.5\)/);
  err(() => createAggregator('trimmed-mean', ref, { trimFraction: '0.1' }), 'config', /trimFraction must be a number/);
  err(() => createAggregator('trimmed-mean', ref, { trimFraction: 0.1, trim: 1 }), 'config', /not both/);
  err(() => createAggregator('trimmed-mean', ref, { trim: 1.5 }), 'config', /trim must be an integer/);
  err(() => createAggregator('fedavg', ref, { maxSamples: 0 }), 'config', /maxSamples must be an integer between 1/);
  err(() => createAggregator('fedavg', ref, [] as unknown as Record<string, unknown>), 'config', /must be an object/);
  err(() => createAggregator('fedavg', ref, { accumulator: 'float16' }), 'config', /aggregator\.config\.accumulator must be "float32" \(Flower's arithmetic, the default\) or "float64" \(a float64 sum\), not "float16"/);
  err(() => createAggregator('fedavg', ref, { accumulator: 64 }), 'config', /accumulator must be "float32".* not 64/);
  err(() => createAggregator('fedmedian', ref, { accumulator: 'float64' }), 'config', /accumulator is not a setting of fedmedian/);
  t.is(createAggregator('fedavg', ref, { accumulator: 'float64' }).algorithm, 'fedavg');
  const nan = structuredClone(ref);
  nan.tensors[0]!.data[3] = NaN;
  err(() => createAggregator('fedavg', nan), 'reference', /reference model: tensor 'conv\.w': value NaN at index 3/);
  err(() => new FedAvg(ref).result(), 'no_updates', /fedavg: no update to aggregate/);
  t.is(createAggregator('fedavg', ref, { maxSamples: 5 }).algorithm, 'fedavg');
  const small = createAggregator('fedavg', ref, { maxSamples: 5 });
  refused(t, () => small.add({ ...updates(1, 1)[0]!, numSamples: 6 }), 'samples', /between 1 and 5/);
});

test('finish() gives the result and closes the aggregator', (t) => {
  const us = updates(5, 12);
  const a = new FedAvg(ref);
  for (const u of us) a.add(u);
  const r = bits(a.result());
  const f = a.finish();
  t.deepEqual(bits(f), r);
  t.deepEqual(bits(f), want('float32', us));
  refused(t, () => a.add({ ...us[0]!, participant: 'late' }), 'state', /finished/);
  refused(t, () => a.begin('late', 1), 'state', /finished/);
  t.throws(() => a.result(), { instanceOf: AggregatorError, message: /finished/ });
  // a stream still open at finish() is dropped; the result is over the committed updates
  const b = new FedAvg(ref);
  stream(b, us[0]!, rng(1));
  b.begin('open', 3);
  t.deepEqual(bits(b.finish()), want('float32', [us[0]!]));
  t.is(b.inFlight, 0);
  const m = new FedMedian(ref);
  m.add(us[0]!);
  t.deepEqual(bits(m.finish()), bits(us[0]!.model));
});

// ---------------------------------------------------------------- numpy

const PYTHON = '/usr/bin/python3';
/**
 * Flower's aggregate() (flwr.server.strategy.aggregate, verbatim) over the
 * updates in a raw file, each layer reshaped to its shape; prints the
 * result's float32 bytes. NPY_PROMOTION_STATE=weak: NumPy 2's promotion
 * (NEP 50), which NumPy 1.24 (Debian 12's) has as an opt-in: a Python int
 * times a float32 array is float32 there, as in the NumPy Flower runs on today.
 */
const FLOWER_SCRIPT = String.raw`
import json, sys
from functools import reduce
import numpy as np
path, shapes, weights = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
flat = np.fromfile(path, dtype='<f4').reshape(len(weights), -1)
results = []
for i, n in enumerate(weights):
    layers, o = [], 0
    for s, k in zip(shapes, sizes):
        layers.append(flat[i, o:o + k].astype(np.float32).reshape(s))
        o += k
    results.append((layers, n))
def aggregate(results):
    num_examples_total = sum(num_examples for (_, num_examples) in results)
    weighted_weights = [[layer * num_examples for layer in weights] for weights, num_examples in results]
    weights_prime = [reduce(np.add, layer_updates) / num_examples_total for layer_updates in zip(*weighted_weights)]
    return weights_prime
res = aggregate(results)
assert all(np.asarray(x).dtype == np.float32 for x in res), [np.asarray(x).dtype for x in res]
sys.stdout.buffer.write(b''.join(np.asarray(x, dtype='<f4').tobytes() for x in res))
`;

function numpyMissing(): string | undefined {
  const r = spawnSync(PYTHON, ['-c', 'import numpy'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} cannot run: ${r.error.message}`;
  if (r.status !== 0) return `${PYTHON} cannot import numpy: ${r.stderr.trim().split('\n').at(-1)}`;
  return undefined;
}
const noNumpy = numpyMissing();

function flowerNumpy(us: Update[]): Buffer {
  const dir = mkdtempSync(join(tmpdir(), 'flower-'));
  try {
    const file = join(dir, 'updates.f32');
    writeFileSync(file, Buffer.concat(us.flatMap((u) => u.model.tensors.map((x) => float32ToLE(x.data)))));
    const shapes = JSON.stringify(ref.tensors.map((x) => x.shape));
    return execFileSync(PYTHON, ['-c', FLOWER_SCRIPT, file, shapes, JSON.stringify(us.map((u) => u.numSamples))], { env: { ...process.env, NPY_PROMOTION_STATE: 'weak' }, maxBuffer: 1 << 26 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Values of every kind a float32 sum meets: ordinary, tiny, huge (no overflow), subnormal, ±0; −0 at the same places in every update. */
function oddModel(r: () => number): Model {
  const m = model(r);
  for (const x of m.tensors) {
    for (let i = 0; i < x.data.length; i++) {
      const k = r();
      if (k < 0.1) x.data[i] = (r() - 0.5) * 2e-38 * r(); // subnormal or near it
      else if (k < 0.13) x.data[i] = (r() < 0.5 ? -1 : 1) * 1.401298464324817e-45 * Math.floor(1 + r() * 8); // the smallest subnormals
      else if (k < 0.16) x.data[i] = r() < 0.5 ? 0 : -0;
      else if (k < 0.2) x.data[i] = (r() - 0.5) * 1e24; // times 1e9, summed 40 times: still finite
      else if (k < 0.3) x.data[i] = (r() - 0.5) * 2 ** Math.floor(r() * 60 - 30);
    }
  }
  for (let i = 0; i < 7; i++) m.tensors[3]!.data[i] = (r() - 0.5) * 1e-41; // fc.b: subnormal sums and means
  m.tensors[1]!.data.fill(-0); // conv.b: −0 in every update stays −0 (Flower copies the first product, it does not add it to 0)
  return m;
}

test('float32 (the default) is bit-identical to Flower\'s aggregate() in numpy: add, addEncoded and streamed, odd values and sample counts', (t) => {
  if (noNumpy) {
    if (process.env.PROPELLER_SKIP_NUMPY === '1') return void t.pass(`skipped (PROPELLER_SKIP_NUMPY=1): ${noNumpy}`);
    throw new Error(`${noNumpy}. Install Debian's package python3-numpy (apt-get install python3-numpy), or set PROPELLER_SKIP_NUMPY=1 to skip this test`);
  }
  const r = rng(31);
  // counts float32 holds exactly and counts it rounds (2^24 + 1, odd ones near 1e9), 40 updates
  const counts = [1, 3, 16_777_217, 999_999_999, 123_456_789, 7, 65_536, 65_537, 2 ** 24 - 1, 33_554_435];
  const us: Update[] = Array.from({ length: 40 }, (_, i) => ({ participant: `p${i}`, numSamples: counts[i % counts.length]! + (i >= counts.length ? Math.floor(r() * 1000) : 0), model: oddModel(r) }));
  const np = flowerNumpy(us);
  const mine = (via: Via, few = us) => {
    const a = new FedAvg(ref, { maxSamples: 2e9 });
    for (const u of few) give(a, u, via, 32);
    return Buffer.concat(a.finish().tensors.map((x) => float32ToLE(x.data)));
  };
  for (const via of ['add', 'addEncoded', 'stream'] as const) t.true(mine(via).equals(np), via);
  t.true(Buffer.concat(flower32(us).map((x) => float32ToLE(x))).equals(np), 'the JavaScript reference loop agrees');
  // one update: w·x / w, rounded twice, not always x
  t.true(mine('add', us.slice(2, 3)).equals(flowerNumpy(us.slice(2, 3))), 'one update');
  // a stream that folds as it arrives, overtaken by whole and streamed updates: they count after it, in the order participants() gives
  const lead = new FedAvg(ref, { maxSamples: 2e9, maxInFlight: 8 });
  const [x, ...rest] = us.slice(0, 9) as [Update, ...Update[]];
  lead.begin(x.participant, x.numSamples);
  sendTensor(lead, x, 2);
  for (const [i, u] of rest.entries()) {
    if (i % 3 === 0) lead.add(u);
    else if (i % 3 === 1) lead.addEncoded(u.participant, u.numSamples, encodeModel(u.model));
    else stream(lead, u, rng(33));
  }
  sendRest(lead, x, 2);
  lead.commit(x.participant);
  const order = lead.participants();
  t.deepEqual(order, [x, ...rest].map((u) => u.participant));
  t.true(raw(lead.finish()).equals(flowerNumpy(order.map((p) => us.find((u) => u.participant === p)!))), 'a folding stream overtaken');
  // streams told that more updates may come than could wait (othersAtMost): each is copied as it
  // arrives, then checked, scaled and added to the sum at commit, in commit order; interleaved, the
  // first update among them
  const others = new FedAvg(ref, { maxSamples: 2e9, maxInFlight: 3 });
  const few = us.slice(0, 12);
  for (let i = 0; i < few.length; i += 3) {
    const group = few.slice(i, i + 3);
    for (const u of group) others.begin(u.participant, u.numSamples, undefined, 100);
    for (const u of group) sendTensor(others, u, 1);
    for (const u of [...group].reverse()) {
      sendRest(others, u, 1);
      others.commit(u.participant);
    }
  }
  const committed = others.participants();
  t.deepEqual(committed, [2, 1, 0, 5, 4, 3, 8, 7, 6, 11, 10, 9].map((i) => `p${i}`));
  t.true(raw(others.finish()).equals(flowerNumpy(committed.map((p) => us.find((u) => u.participant === p)!))), 'streams folded at commit');
  // −0 where every update has −0; subnormals in the result
  const res = new Float32Array(new Uint8Array(np).buffer);
  t.true(Object.is(res[ref.tensors[0]!.data.length], -0));
  t.true(res.some((x) => x !== 0 && Math.abs(x) < 1.1754943508222875e-38));
});

test('the embedded wasm kernel is FOLD_KERNEL_WAT compiled by wabt', async (t) => {
  const wabt = await wabtInit();
  const mod = wabt.parseWat('fold.wat', FOLD_KERNEL_WAT, { simd: true });
  mod.validate();
  const { buffer } = mod.toBinary({});
  mod.destroy();
  t.is(Buffer.from(buffer).toString('base64'), FOLD_KERNEL_WASM);
});
