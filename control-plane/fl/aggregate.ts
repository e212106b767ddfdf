// Aggregation of federated learning updates: pure, no broker, no clock.
//
// An update is a participant's trained weights for the round's global model
// (the reference), with its sample count and optional metrics. Every update is
// validated against the reference before it counts: same tensor names in the
// same order, same shapes, finite values, a positive integer sample count.
// A bad update is refused with an UpdateError carrying a reason code and
// changes nothing.
//
// - FedAvg: the sample-weighted mean. Streaming: one running sum per
//   parameter (in the kernel's wasm memory, tensor after tensor), O(model)
//   memory whatever the number of updates; never holds the updates
//   themselves. The sum is float32 by default, Flower's aggregate() bit for
//   bit, or float64 (aggregator.config.accumulator).
// - FedMedian, TrimmedMean: coordinate-wise median / trimmed mean, robust to a
//   few poisoned updates. They need every update at once, so they hold them
//   (float32, n × params values) up to maxBufferedValues and refuse beyond.
//   Sample counts are validated and reported but do not weight them.
//
// Updates arrive whole (add) or in pieces (begin, addChunk..., commit/abort),
// so that a large update is copied in as it arrives. See docs/fl.md.

import { isId } from '../../protocol/index.ts';
import {
  decodeModelView,
  elementCount,
  firstNonFinite,
  firstNonFiniteLE,
  float32FromLE,
  float32ToLE,
  HOST_LITTLE_ENDIAN,
  MODEL_FORMAT,
  ModelError,
  readFloat32LE,
  validateModel,
  type Model,
  type ModelMeta,
  type Tensor,
} from '../../protocol/model-format.ts';

export type AlgorithmName = 'fedavg' | 'fedmedian' | 'trimmed-mean';
export const ALGORITHMS: readonly AlgorithmName[] = ['fedavg', 'fedmedian', 'trimmed-mean'];

export interface ClientMetrics {
  loss?: number;
  accuracy?: number;
}

export interface Update {
  /** The participant's (proplet's) id. */
  participant: string;
  /** Training samples behind the update: the weight in FedAvg. */
  numSamples: number;
  /** The trained weights: same tensors (names, order, shapes) as the reference. */
  model: Model;
  metrics?: ClientMetrics;
}

export type UpdateErrorReason =
  /** Malformed update: participant id, metrics or model not of the right type. */
  | 'invalid'
  /** Tensor names, order, shapes or lengths differ from the reference; a chunk out of range, overlapping or incomplete. */
  | 'shape'
  /** NaN or ±Infinity in the weights or the metrics. */
  | 'non_finite'
  /** numSamples not an integer in [1, maxSamples]. */
  | 'samples'
  /** The participant already has an update in this aggregator (or one streaming). */
  | 'duplicate'
  /** Beyond maxInFlight streams, maxBufferedValues or wasm memory. */
  | 'capacity'
  /** No such stream, or the aggregator is finished. */
  | 'state'
  /** Not thrown here: for callers that check participants against the round's list. */
  | 'unknown_participant';

export class UpdateError extends Error {
  override name = 'UpdateError';
  constructor(
    readonly reason: UpdateErrorReason,
    message: string,
    readonly participant?: string,
    readonly tensor?: string,
  ) {
    super(message);
  }
}

export type AggregatorErrorReason = 'unknown_algorithm' | 'config' | 'reference' | 'no_updates' | 'too_few_updates' | 'finished';

/** Bad algorithm, bad config or reference model, or a result that cannot be computed. */
export class AggregatorError extends Error {
  override name = 'AggregatorError';
  constructor(
    readonly reason: AggregatorErrorReason,
    message: string,
  ) {
    super(message);
  }
}

/** aggregator.config: camelCase keys; unknown keys are refused. */
export interface AggregatorConfig {
  /** Largest numSamples accepted for one update (default 1e9). */
  maxSamples?: number;
  /** Updates streaming (begin...commit) at once (default 4). FedAvg holds one float32 copy of the model for each. */
  maxInFlight?: number;
  /** fedmedian, trimmed-mean: values held at once, updates × params, streams included (default 2^26 = 256 MiB). */
  maxBufferedValues?: number;
  /** trimmed-mean: fraction of updates dropped at each end per coordinate, floor(trimFraction × n) (default 0.1). */
  trimFraction?: number;
  /** trimmed-mean: number of updates dropped at each end per coordinate (instead of trimFraction). */
  trim?: number;
  /**
   * fedavg: the running sum's type. 'float32' (default): Flower's aggregate()
   * arithmetic, bit for bit (see FedAvg); 'float64': a float64 sum rounded
   * to float32 once at the end (twice the memory, no order dependence).
   */
  accumulator?: Accumulator;
}

export type Accumulator = 'float32' | 'float64';
export const ACCUMULATORS: readonly Accumulator[] = ['float32', 'float64'];

export const DEFAULT_AGGREGATOR_CONFIG = Object.freeze({ maxSamples: 1e9, maxInFlight: 4, maxBufferedValues: 2 ** 26, trimFraction: 0.1, accumulator: 'float32' as Accumulator });

const CONFIG_KEYS: Record<AlgorithmName, readonly (keyof AggregatorConfig)[]> = {
  fedavg: ['maxSamples', 'maxInFlight', 'accumulator'],
  fedmedian: ['maxSamples', 'maxInFlight', 'maxBufferedValues'],
  'trimmed-mean': ['maxSamples', 'maxInFlight', 'maxBufferedValues', 'trimFraction', 'trim'],
};

interface Resolved {
  maxSamples: number;
  maxInFlight: number;
  maxBufferedValues: number;
  trimFraction: number;
  trim: number | undefined;
  accumulator: Accumulator;
}

function resolveConfig(algorithm: AlgorithmName, config: unknown): Resolved {
  if (config === undefined || config === null) config = {};
  if (typeof config !== 'object' || Array.isArray(config)) throw new AggregatorError('config', `aggregator.config for ${algorithm} must be an object`);
  const c = config as Record<string, unknown>;
  const allowed = CONFIG_KEYS[algorithm] as readonly string[];
  for (const k of Object.keys(c)) {
    if (!allowed.includes(k)) throw new AggregatorError('config', `aggregator.config.${k} is not a setting of ${algorithm}; its settings are ${allowed.join(', ')}`);
  }
  const int = (k: string, min: number, max: number, dflt: number): number => {
    const v = c[k];
    if (v === undefined) return dflt;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) throw new AggregatorError('config', `aggregator.config.${k} must be an integer between ${min} and ${max}, not ${JSON.stringify(v)}`);
    return v;
  };
  const d = DEFAULT_AGGREGATOR_CONFIG;
  const r: Resolved = {
    maxSamples: int('maxSamples', 1, Number.MAX_SAFE_INTEGER, d.maxSamples),
    maxInFlight: int('maxInFlight', 0, 1 << 16, d.maxInFlight),
    maxBufferedValues: int('maxBufferedValues', 0, Number.MAX_SAFE_INTEGER, d.maxBufferedValues),
    trimFraction: d.trimFraction,
    trim: c.trim === undefined ? undefined : int('trim', 0, 1 << 24, 0),
    accumulator: d.accumulator,
  };
  if (c.accumulator !== undefined) {
    const a = c.accumulator;
    if (!ACCUMULATORS.includes(a as Accumulator)) {
      throw new AggregatorError('config', `aggregator.config.accumulator must be "float32" (Flower's arithmetic, the default) or "float64" (a float64 sum), not ${JSON.stringify(a)}`);
    }
    r.accumulator = a as Accumulator;
  }
  if (c.trimFraction !== undefined) {
    const f = c.trimFraction;
    if (typeof f !== 'number' || !(f >= 0 && f < 0.5)) throw new AggregatorError('config', `aggregator.config.trimFraction must be a number in [0, 0.5), not ${JSON.stringify(f)}`);
    if (c.trim !== undefined) throw new AggregatorError('config', 'aggregator.config: give trimFraction or trim, not both');
    r.trimFraction = f;
  }
  return r;
}

/** Mean client metrics, weighted by numSamples over the updates that reported each. */
export interface RoundMetrics {
  updates: number;
  totalSamples: number;
  loss?: number;
  accuracy?: number;
  /** Samples behind the loss (updates that reported one). */
  lossSamples: number;
  accuracySamples: number;
}

export interface Aggregator {
  readonly algorithm: AlgorithmName;
  readonly reference: Model;
  /** Updates that count (added or committed). */
  readonly count: number;
  readonly totalSamples: number;
  /** Updates streaming (begun, neither committed nor aborted). */
  readonly inFlight: number;
  /** Bytes of update data the aggregator holds now: sums, kept updates, stream slots (not the transient result() buffers). */
  readonly memoryBytes: number;
  /** Participants whose update counts, in arrival order. */
  participants(): string[];
  has(participant: string): boolean;
  /** Validates and folds in a whole update; throws UpdateError and changes nothing if it is bad. */
  add(update: Update): void;
  /**
   * add() for an update still in its compact CBOR form (model-format.ts):
   * tensor data is read where it sits in `bytes`, no model is allocated. A
   * model that does not decode is refused as 'invalid' ('shape' when it is
   * bigger than the reference, 'non_finite' for NaN/Infinity). Its meta is ignored.
   */
  addEncoded(participant: string, numSamples: number, bytes: Uint8Array, metrics?: ClientMetrics): void;
  /**
   * Starts a streamed update; its data then arrives by addChunk(). `othersAtMost`: how many other
   * updates may still come while it streams, when the caller knows (a round's unsettled
   * participants). fedavg's float32 stream folds as it arrives only when those could all wait
   * behind it (at most maxInFlight), so that none is refused for waiting.
   */
  begin(participant: string, numSamples: number, metrics?: ClientMetrics, othersAtMost?: number): void;
  /**
   * Little-endian float32 values of tensor `tensorIndex` from element `offset`
   * (bytes.length a multiple of 4, any alignment). Chunks may come in any
   * order but not overlap. A chunk that does not fit (tensor, range, overlap,
   * length) aborts the whole stream (UpdateError). A NaN or ±Infinity aborts
   * it here or at commit(), wherever the values are checked: fedavg's
   * float32 streams that do not fold as they arrive are checked at commit, in
   * the pass that folds them (see FedAvg); the others chunk by chunk.
   */
  addChunk(participant: string, tensorIndex: number, offset: number, bytes: Uint8Array): void;
  /** The update counts from here if every element arrived and (if not checked yet) is finite; else it is aborted (UpdateError 'shape', 'non_finite'). */
  commit(participant: string): void;
  /** Drops a streamed update; true if there was one. */
  abort(participant: string): boolean;
  metrics(): RoundMetrics;
  /** The aggregated model over the updates that count (streams in flight are not in it). */
  result(): Model;
  /** result(), then closes the aggregator and lets go of its buffers (FedAvg reuses its sum's memory for the result). */
  finish(): Model;
  /**
   * finish(), the result handed to `use` (encode or copy it there), then
   * FedAvg keeps its memory for the next aggregator of the same model: a new
   * round then starts on memory already touched (see FedAvg).
   */
  finishWith<T>(use: (result: Model) => T): T;
}

/**
 * An aggregator by name, as FederatedJob's aggregator.algorithm and
 * aggregator.config give it. Throws AggregatorError for an unknown algorithm,
 * a bad config or a bad reference model.
 */
export function createAggregator(algorithm: AlgorithmName | (string & {}), reference: Model, config?: Record<string, unknown>): Aggregator {
  switch (algorithm) {
    case 'fedavg':
      return new FedAvg(reference, config);
    case 'fedmedian':
      return new FedMedian(reference, config);
    case 'trimmed-mean':
      return new TrimmedMean(reference, config);
    default:
      throw new AggregatorError('unknown_algorithm', `unknown aggregator.algorithm ${JSON.stringify(algorithm)}: known are ${ALGORITHMS.join(', ')}`);
  }
}

// ---------------------------------------------------------------- common part

/** A streamed update; `slot` is the aggregator's state for where its values go until it commits. */
interface Stream<S> {
  participant: string;
  numSamples: number;
  metrics: ClientMetrics | undefined;
  slot: S;
  /** Per tensor, the element ranges received: sorted, merged [start, end) pairs. */
  ranges: number[][];
  received: number;
}

// Slots are plain state objects handled by the aggregator's methods, not
// closures: optimized code that inlined a closure made per stream was thrown
// away with it (after each round's aggregator was collected) and compiled
// again: 20-30 ms of CPU per 100 streamed updates.
abstract class BaseAggregator<S> implements Aggregator {
  readonly reference: Model;
  protected readonly params: number;
  /** Flat index of each tensor's first element. */
  protected readonly offsets: number[];
  protected readonly sizes: number[];
  protected readonly cfg: Resolved;
  protected finished = false;
  private readonly done: string[] = [];
  private readonly doneSet = new Set<string>();
  private readonly streams = new Map<string, Stream<S>>();
  private samples = 0;
  private lossSum = 0;
  private lossSamples = 0;
  private accSum = 0;
  private accSamples = 0;

  constructor(
    readonly algorithm: AlgorithmName,
    reference: Model,
    config: unknown,
  ) {
    this.cfg = resolveConfig(algorithm, config);
    try {
      validateModel(reference);
    } catch (e) {
      if (e instanceof ModelError) throw new AggregatorError('reference', `reference model: ${e.message}`);
      throw e;
    }
    this.reference = reference;
    this.sizes = reference.tensors.map((t) => elementCount(t.shape));
    this.offsets = [];
    let o = 0;
    for (const n of this.sizes) {
      this.offsets.push(o);
      o += n;
    }
    this.params = o;
  }

  get count(): number {
    return this.done.length;
  }
  get totalSamples(): number {
    return this.samples;
  }
  get inFlight(): number {
    return this.streams.size;
  }
  participants(): string[] {
    return [...this.done];
  }
  has(participant: string): boolean {
    return this.doneSet.has(participant);
  }

  /** Refuses an update that would not fit (before anything is copied). */
  protected abstract checkCapacity(participant: string): void;
  /** Checks every value of a shape-checked update, then folds or keeps it; throws UpdateError('non_finite') before changing anything. */
  protected abstract accept(tensors: Tensor[], weight: number, participant: string): void;
  /** accept() for tensors as little-endian float32 bytes (any alignment). */
  protected abstract acceptBytes(tensors: Uint8Array[], weight: number, participant: string): void;
  /** `mayLead`: every update that may still come while it streams could wait behind it. */
  protected abstract openSlot(participant: string, weight: number, mayLead: boolean): S;
  /** Copies LE float32 bytes to flat element `pos`; returns the flat index of the first non-finite value written, or -1. */
  protected abstract writeSlot(slot: S, pos: number, bytes: Uint8Array): number;
  /**
   * The update counts: folded (FedAvg) or kept (robust). Returns how many of
   * the updates that already count come after it in the order of the
   * aggregate (those that wait behind a FedAvg stream folding as it arrives).
   */
  protected abstract commitSlot(slot: S, weight: number): number;
  protected abstract releaseSlot(slot: S): void;
  /** The aggregate, flat, float32. */
  protected abstract compute(): Float32Array;
  abstract get memoryBytes(): number;

  private checkOpen(participant?: string): void {
    if (this.finished) throw new UpdateError('state', `the ${this.algorithm} aggregator is finished`, participant);
  }

  private checkHeader(participant: unknown, numSamples: unknown, metrics: unknown): { participant: string; numSamples: number; metrics: ClientMetrics | undefined } {
    if (!isId(participant)) throw new UpdateError('invalid', `participant must be an id (1-128 characters without '+', '#', '/'), not ${JSON.stringify(participant)}`);
    const p = participant as string;
    this.checkOpen(p);
    if (this.doneSet.has(p)) throw new UpdateError('duplicate', `${p} already has an update in this round`, p);
    if (this.streams.has(p)) throw new UpdateError('duplicate', `${p} already has an update streaming in this round`, p);
    if (typeof numSamples !== 'number' || !Number.isSafeInteger(numSamples) || numSamples < 1 || numSamples > this.cfg.maxSamples) {
      throw new UpdateError('samples', `update from ${p}: numSamples must be an integer between 1 and ${this.cfg.maxSamples}, not ${JSON.stringify(numSamples) ?? String(numSamples)}`, p);
    }
    let m: ClientMetrics | undefined;
    if (metrics !== undefined && metrics !== null) {
      if (typeof metrics !== 'object' || Array.isArray(metrics)) throw new UpdateError('invalid', `update from ${p}: metrics must be an object`, p);
      m = {};
      for (const k of ['loss', 'accuracy'] as const) {
        const v = (metrics as Record<string, unknown>)[k];
        if (v === undefined || v === null) continue;
        if (typeof v !== 'number') throw new UpdateError('invalid', `update from ${p}: metrics.${k} must be a number`, p);
        if (!Number.isFinite(v)) throw new UpdateError('non_finite', `update from ${p}: metrics.${k} is ${v}`, p);
        m[k] = v;
      }
    }
    return { participant: p, numSamples, metrics: m };
  }

  private checkModel(model: unknown, p: string): Tensor[] {
    if (model === null || typeof model !== 'object') throw new UpdateError('invalid', `update from ${p}: model must be a Model`, p);
    const m = model as Model;
    if (m.format !== MODEL_FORMAT) throw new UpdateError('invalid', `update from ${p}: model format must be ${MODEL_FORMAT}, not ${JSON.stringify(m.format)}`, p);
    if (!Array.isArray(m.tensors)) throw new UpdateError('invalid', `update from ${p}: model.tensors must be an array`, p);
    this.checkShape(m.tensors, p, (t, i) => {
      if (t === null || typeof t !== 'object') throw new UpdateError('invalid', `update from ${p}: tensor #${i} must be an object`, p);
      if (!(t.data instanceof Float32Array)) throw new UpdateError('invalid', `update from ${p}: tensor '${String(t.name)}': data must be a Float32Array`, p);
      return t.data.length;
    });
    return m.tensors;
  }

  /** Same tensor names, order, shapes and lengths as the reference. */
  private checkShape<T extends { name: string; shape: number[] }>(tensors: T[], p: string, length: (t: T, i: number) => number): void {
    const ref = this.reference.tensors;
    if (tensors.length !== ref.length) throw new UpdateError('shape', `update from ${p}: ${tensors.length} tensors, the round's model has ${ref.length}`, p);
    for (let i = 0; i < ref.length; i++) {
      const r = ref[i]!;
      const t = tensors[i]!;
      const n = length(t, i);
      if (t.name !== r.name) throw new UpdateError('shape', `update from ${p}: tensor #${i} is ${JSON.stringify(t.name)}, the round's model has '${r.name}' there`, p, r.name);
      if (!Array.isArray(t.shape) || t.shape.length !== r.shape.length || t.shape.some((d, j) => d !== r.shape[j])) {
        throw new UpdateError('shape', `update from ${p}: tensor '${r.name}' has shape ${JSON.stringify(t.shape)}, the round's model has ${JSON.stringify(r.shape)}`, p, r.name);
      }
      if (n !== this.sizes[i]) throw new UpdateError('shape', `update from ${p}: tensor '${r.name}' has ${n} values, shape ${JSON.stringify(r.shape)} needs ${this.sizes[i]}`, p, r.name);
    }
  }

  protected nonFinite(p: string, flat: number, value: number): UpdateError {
    let t = 0;
    while (t + 1 < this.offsets.length && this.offsets[t + 1]! <= flat) t++;
    const name = this.reference.tensors[t]!.name;
    return new UpdateError('non_finite', `update from ${p}: tensor '${name}' has ${value} at index ${flat - this.offsets[t]!}`, p, name);
  }

  /** `p` counts, ahead of the last `behind` updates that count (see commitSlot). */
  private record(p: string, numSamples: number, metrics: ClientMetrics | undefined, behind = 0): void {
    this.done.splice(this.done.length - behind, 0, p);
    this.doneSet.add(p);
    this.samples += numSamples;
    if (metrics?.loss !== undefined) {
      this.lossSum += metrics.loss * numSamples;
      this.lossSamples += numSamples;
    }
    if (metrics?.accuracy !== undefined) {
      this.accSum += metrics.accuracy * numSamples;
      this.accSamples += numSamples;
    }
  }

  add(update: Update): void {
    if (update === null || typeof update !== 'object') throw new UpdateError('invalid', 'an update must be an object');
    const h = this.checkHeader(update.participant, update.numSamples, update.metrics);
    const tensors = this.checkModel(update.model, h.participant);
    this.checkCapacity(h.participant);
    this.accept(tensors, h.numSamples, h.participant);
    this.record(h.participant, h.numSamples, h.metrics);
  }

  addEncoded(participant: string, numSamples: number, bytes: Uint8Array, metrics?: ClientMetrics): void {
    const h = this.checkHeader(participant, numSamples, metrics);
    const p = h.participant;
    let tensors;
    try {
      // Nothing bigger than the reference can match it: refuse it before reading further.
      tensors = decodeModelView(bytes, { maxTensors: this.sizes.length, maxElements: this.params, checkFinite: false }).tensors;
    } catch (e) {
      if (!(e instanceof ModelError)) throw e;
      if (e.reason === 'too_large') throw new UpdateError('shape', `update from ${p}: ${e.message}: bigger than the round's model`, p, e.tensor);
      throw new UpdateError('invalid', `update from ${p}: ${e.message}`, p, e.tensor);
    }
    this.checkShape(tensors, p, (t) => t.bytes.length / 4);
    this.checkCapacity(p);
    this.acceptBytes(
      tensors.map((t) => t.bytes),
      h.numSamples,
      p,
    );
    this.record(p, h.numSamples, h.metrics);
  }

  begin(participant: string, numSamples: number, metrics?: ClientMetrics, othersAtMost?: number): void {
    const h = this.checkHeader(participant, numSamples, metrics);
    if (this.streams.size >= this.cfg.maxInFlight) throw new UpdateError('capacity', `update from ${h.participant} refused: ${this.streams.size} updates already streaming (maxInFlight ${this.cfg.maxInFlight})`, h.participant);
    this.checkCapacity(h.participant);
    const slot = this.openSlot(h.participant, h.numSamples, othersAtMost === undefined || othersAtMost <= this.cfg.maxInFlight);
    this.streams.set(h.participant, { participant: h.participant, numSamples: h.numSamples, metrics: h.metrics, slot, ranges: this.sizes.map(() => []), received: 0 });
  }

  private stream(participant: string): Stream<S> {
    const s = this.streams.get(participant);
    if (!s) throw new UpdateError('state', `no update from ${JSON.stringify(participant)} is streaming (begin() first)`, typeof participant === 'string' ? participant : undefined);
    return s;
  }

  private drop(s: Stream<S>): void {
    this.streams.delete(s.participant);
    this.releaseSlot(s.slot);
  }

  addChunk(participant: string, tensorIndex: number, offset: number, bytes: Uint8Array): void {
    const s = this.stream(participant);
    const p = s.participant;
    try {
      if (!Number.isInteger(tensorIndex) || tensorIndex < 0 || tensorIndex >= this.sizes.length) {
        throw new UpdateError('shape', `update from ${p}: no tensor #${tensorIndex} (the round's model has ${this.sizes.length})`, p);
      }
      const size = this.sizes[tensorIndex]!;
      if (!(bytes instanceof Uint8Array)) throw this.chunkError('invalid', p, tensorIndex, 'a chunk must be bytes');
      if (bytes.length % 4 !== 0) throw this.chunkError('shape', p, tensorIndex, `a chunk of ${bytes.length} bytes is not whole float32 values`);
      const n = bytes.length / 4;
      if (!Number.isSafeInteger(offset) || offset < 0 || offset + n > size) throw this.chunkError('shape', p, tensorIndex, `elements [${offset}, ${offset + n}) are outside its ${size}`);
      if (n === 0) return;
      if (!insertRange(s.ranges[tensorIndex]!, offset, offset + n)) throw this.chunkError('shape', p, tensorIndex, `elements [${offset}, ${offset + n}) overlap elements already received`);
      const pos = this.offsets[tensorIndex]! + offset;
      const bad = this.writeSlot(s.slot, pos, bytes);
      if (bad >= 0) throw this.nonFinite(p, bad, readFloat32LE(bytes, bad - pos));
      s.received += n;
    } catch (e) {
      this.drop(s);
      throw e;
    }
  }

  /** A chunk refused (its tensor's name looked up only then: a good chunk pays nothing for it). */
  private chunkError(reason: UpdateErrorReason, p: string, t: number, what: string): UpdateError {
    const name = this.reference.tensors[t]!.name;
    return new UpdateError(reason, `update from ${p}: tensor '${name}': ${what}`, p, name);
  }

  commit(participant: string): void {
    const s = this.stream(participant);
    if (s.received !== this.params) {
      this.drop(s);
      const i = s.ranges.findIndex((r, t) => !(this.sizes[t] === 0 || (r.length === 2 && r[0] === 0 && r[1] === this.sizes[t])));
      const name = this.reference.tensors[i]!.name;
      const got = s.ranges[i]!.reduce((a, x, k) => (k % 2 ? a + x : a - x), 0);
      throw new UpdateError('shape', `update from ${s.participant} is incomplete: tensor '${name}' has ${got} of ${this.sizes[i]} elements (${s.received} of ${this.params} in all)`, s.participant, name);
    }
    this.streams.delete(s.participant);
    let behind: number;
    try {
      behind = this.commitSlot(s.slot, s.numSamples);
    } catch (e) {
      this.releaseSlot(s.slot); // a value checked at commit (FedAvg) is NaN or ±Infinity: nothing of it counts
      throw e;
    }
    this.record(s.participant, s.numSamples, s.metrics, behind);
  }

  abort(participant: string): boolean {
    const s = this.streams.get(participant);
    if (!s) return false;
    this.drop(s);
    return true;
  }

  metrics(): RoundMetrics {
    const m: RoundMetrics = { updates: this.count, totalSamples: this.samples, lossSamples: this.lossSamples, accuracySamples: this.accSamples };
    if (this.lossSamples > 0) m.loss = this.lossSum / this.lossSamples;
    if (this.accSamples > 0) m.accuracy = this.accSum / this.accSamples;
    return m;
  }

  protected checkResult(): void {
    if (this.finished) throw new AggregatorError('finished', `the ${this.algorithm} aggregator is finished`);
    if (this.count === 0) throw new AggregatorError('no_updates', `${this.algorithm}: no update to aggregate`);
  }

  protected resultMeta(): ModelMeta {
    const meta: ModelMeta = { algorithm: this.algorithm, numParticipants: this.count, totalSamples: this.samples };
    const m = this.metrics();
    if (m.loss !== undefined) meta.loss = m.loss;
    if (m.accuracy !== undefined) meta.accuracy = m.accuracy;
    return meta;
  }

  /** A model over flat data: each tensor's data is a view of `flat`. */
  protected modelOver(flat: Float32Array): Model {
    return {
      format: MODEL_FORMAT,
      tensors: this.reference.tensors.map((t, i) => ({ name: t.name, shape: [...t.shape], data: flat.subarray(this.offsets[i]!, this.offsets[i]! + this.sizes[i]!) })),
      meta: this.resultMeta(),
    };
  }

  result(): Model {
    this.checkResult();
    return this.modelOver(this.compute());
  }

  finish(): Model {
    const m = this.result();
    this.close();
    return m;
  }

  finishWith<T>(use: (result: Model) => T): T {
    return use(this.finish());
  }

  protected close(): void {
    this.dropStreams();
    this.finished = true;
  }

  /** Drops every stream still open. */
  protected dropStreams(): void {
    for (const s of [...this.streams.values()]) this.drop(s);
  }
}

/** Adds [s, e) to sorted, merged [start, end) pairs; false if it overlaps one. */
function insertRange(list: number[], s: number, e: number): boolean {
  const n = list.length / 2;
  let lo = 0;
  let hi = n;
  if (n > 0 && list[2 * n - 2]! < s) lo = n; // in-order arrival: after the last range
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (list[2 * mid]! < s) lo = mid + 1;
    else hi = mid;
  }
  if (lo > 0 && list[2 * lo - 1]! > s) return false;
  if (lo < n && list[2 * lo]! < e) return false;
  const joinPrev = lo > 0 && list[2 * lo - 1] === s;
  const joinNext = lo < n && list[2 * lo] === e;
  if (joinPrev && joinNext) {
    list[2 * lo - 1] = list[2 * lo + 1]!;
    list.splice(2 * lo, 2);
  } else if (joinPrev) list[2 * lo - 1] = e;
  else if (joinNext) list[2 * lo] = s;
  else list.splice(2 * lo, 0, s, e);
  return true;
}

// ---------------------------------------------------------------- FedAvg

// Pieces of the float32 loops below, shared by scale32, fold32 and commit32
// (spliced into the text; the compiled bytes are the same as written out).

/** Sixteen values at d loaded into $x0..$x3. */
const LOAD16 = String.raw`        (local.set $x0 (v128.load offset=0 (local.get $d)))
        (local.set $x1 (v128.load offset=16 (local.get $d)))
        (local.set $x2 (v128.load offset=32 (local.get $d)))
        (local.set $x3 (v128.load offset=48 (local.get $d)))`;

/** scale32's and fold32's check of the sixteen values loaded: their lane-wise sum, added to $acc. */
const CHECK16 = String.raw`        (local.set $acc (f32x4.add (local.get $acc)
          (f32x4.add (f32x4.add (local.get $x0) (local.get $x1)) (f32x4.add (local.get $x2) (local.get $x3)))))`;

/** scale32's and commit32's first update: d = w × x, from the four vectors loaded. */
const SCALE16 = String.raw`        (v128.store offset=0 (local.get $d) (f32x4.mul (local.get $x0) (local.get $wv)))
        (v128.store offset=16 (local.get $d) (f32x4.mul (local.get $x1) (local.get $wv)))
        (v128.store offset=32 (local.get $d) (f32x4.mul (local.get $x2) (local.get $wv)))
        (v128.store offset=48 (local.get $d) (f32x4.mul (local.get $x3) (local.get $wv)))`;

/** fold32's and commit32's fold of sixteen values: d = s + w × x, from the four vectors loaded. */
const FOLD16 = String.raw`        (v128.store offset=0 (local.get $d) (f32x4.add (v128.load offset=0 (local.get $s)) (f32x4.mul (local.get $x0) (local.get $wv))))
        (v128.store offset=16 (local.get $d) (f32x4.add (v128.load offset=16 (local.get $s)) (f32x4.mul (local.get $x1) (local.get $wv))))
        (v128.store offset=32 (local.get $d) (f32x4.add (v128.load offset=32 (local.get $s)) (f32x4.mul (local.get $x2) (local.get $wv))))
        (v128.store offset=48 (local.get $d) (f32x4.add (v128.load offset=48 (local.get $s)) (f32x4.mul (local.get $x3) (local.get $wv))))`;

/**
 * commit32's loop head (in both of its loops): sixteen values loaded and checked, leaving the
 * loop ($done) at the end or at a NaN or ±Infinity before anything of them is written.
 */
const COMMIT32_CHECK = String.raw`            (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
${LOAD16}
            (local.set $t (f32x4.add (f32x4.add (local.get $x0) (local.get $x1)) (f32x4.add (local.get $x2) (local.get $x3))))
            (if (v128.any_true (i32x4.eq (v128.and (local.get $t) (local.get $m)) (local.get $m)))
              (then (br_if $done (v128.any_true (v128.or
                (v128.or (i32x4.eq (v128.and (local.get $x0) (local.get $m)) (local.get $m)) (i32x4.eq (v128.and (local.get $x1) (local.get $m)) (local.get $m)))
                (v128.or (i32x4.eq (v128.and (local.get $x2) (local.get $m)) (local.get $m)) (i32x4.eq (v128.and (local.get $x3) (local.get $m)) (local.get $m))))))))`;

/**
 * The FedAvg kernel, in WebAssembly SIMD. Plain JavaScript folds a float32
 * update into a float64 sum at 1.5-5 ns per value on the development
 * machine (scalar, one value at a time); the kernel checks and folds with
 * 128-bit vectors (the check a lane-wise sum of the values, one add per
 * vector; for the float64 sum, two f64x2 lanes per four values; for the
 * float32 one, f32x4 multiply and add fused with the check in one pass,
 * sixteen values per iteration: these loops are bound by instructions, the
 * earlier eight-value loop with an exponent test per value took 1.6× the
 * time on data in cache); at finish() it
 * writes the float32 result over the sum in place. Wasm memory is
 * little-endian on every host, so update bytes off the wire (float32 LE) are
 * copied in as they are. The bytes below are this text compiled by wabt
 * (`test/fl-aggregate.test.ts` checks they match).
 */
export const FOLD_KERNEL_WAT = String.raw`(module
  ;; Memory is imported: the aggregator sizes it (staging area, running sum, stream slots).
  (import "env" "memory" (memory 1))
  ;; Checks: an update's values are summed lane-wise (four vectors folded into an accumulator
  ;; per iteration), and the sum is not finite if any of them is NaN or ±Infinity (NaN and
  ;; Infinity survive every addition; +Inf + -Inf is NaN). It is also not finite when finite
  ;; values near the float32 limit overflow it: a false alarm the callers settle with an exact
  ;; look at the values (firstNonFiniteLE), rare enough to cost nothing. One add per vector,
  ;; against three operations to test each value's exponent: these loops are bound by their
  ;; instruction count, not by memory.
  ;; nonfinite(p, n): 1 if the n float32 at byte address p may hold NaN or ±Infinity (see above), else 0.
  (func (export "nonfinite") (param $p i32) (param $n i32) (result i32)
    (local $end i32) (local $acc v128)
    (local.set $end (i32.add (local.get $p) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (f32x4.add (local.get $acc)
          (f32x4.add
            (f32x4.add (v128.load (local.get $p)) (v128.load offset=16 (local.get $p)))
            (f32x4.add (v128.load offset=32 (local.get $p)) (v128.load offset=48 (local.get $p))))))
        (local.set $p (i32.add (local.get $p) (i32.const 64)))
        (br $next)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 15)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $acc (f32x4.add (local.get $acc) (v128.load32_zero (local.get $p))))
        (local.set $p (i32.add (local.get $p) (i32.const 4)))
        (br $next)))
    (call $infinite (local.get $acc)))
  ;; 1 if a lane of v is NaN or ±Infinity (exponent bits all ones).
  (func $infinite (param $v v128) (result i32)
    (v128.any_true (i32x4.eq
      (v128.and (local.get $v) (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
      (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))))
  ;; fold(s, d, n, w): sum[i] += w * f64(data[i]) for i < n, with sum float64 at byte
  ;; address s and data float32 at byte address d (both little-endian, as wasm memory is).
  (func (export "fold") (param $s i32) (param $d i32) (param $n i32) (param $w f64)
    (local $end i32) (local $wv v128) (local $x v128)
    (local.set $wv (f64x2.splat (local.get $w)))
    (local.set $end (i32.add (local.get $d) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (local.set $x (v128.load (local.get $d)))
        (v128.store (local.get $s)
          (f64x2.add (v128.load (local.get $s))
            (f64x2.mul (f64x2.promote_low_f32x4 (local.get $x)) (local.get $wv))))
        (v128.store offset=16 (local.get $s)
          (f64x2.add (v128.load offset=16 (local.get $s))
            (f64x2.mul (f64x2.promote_low_f32x4
              (i8x16.shuffle 8 9 10 11 12 13 14 15 0 1 2 3 4 5 6 7 (local.get $x) (local.get $x))) (local.get $wv))))
        (local.set $d (i32.add (local.get $d) (i32.const 16)))
        (local.set $s (i32.add (local.get $s) (i32.const 32)))
        (br $next)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (f64.store (local.get $s)
          (f64.add (f64.load (local.get $s)) (f64.mul (f64.promote_f32 (f32.load (local.get $d))) (local.get $w))))
        (local.set $d (i32.add (local.get $d) (i32.const 4)))
        (local.set $s (i32.add (local.get $s) (i32.const 8)))
        (br $next))))
  ;; divide(s, n, t): float32 i at byte address s + 4i = float64 i at byte address s + 8i / t,
  ;; for i < n: the result written over the sum in place (values i, i+1 are read before
  ;; float32 i, i+1 overwrite bytes [4i, 4i+8), which hold float64s already read).
  (func (export "divide") (param $s i32) (param $n i32) (param $t f64)
    (local $o i32) (local $end i32) (local $tv v128)
    (local.set $tv (f64x2.splat (local.get $t)))
    (local.set $o (local.get $s))
    (local.set $end (i32.add (local.get $s) (i32.shl (i32.and (local.get $n) (i32.const -2)) (i32.const 3))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $s) (local.get $end)))
        (v128.store64_lane 0 (local.get $o) (f32x4.demote_f64x2_zero (f64x2.div (v128.load (local.get $s)) (local.get $tv))))
        (local.set $s (i32.add (local.get $s) (i32.const 16)))
        (local.set $o (i32.add (local.get $o) (i32.const 8)))
        (br $next)))
    (if (i32.and (local.get $n) (i32.const 1))
      (then (f32.store (local.get $o) (f32.demote_f64 (f64.div (f64.load (local.get $s)) (local.get $t)))))))
  ;; The float32 accumulator (Flower's arithmetic): every operation one IEEE float32
  ;; operation as numpy does it (wasm has no fused multiply-add outside relaxed SIMD,
  ;; and keeps subnormals), sixteen values per iteration. The new sum is written over the
  ;; update's staged values (d), never over the old sum (s): an update refused midway
  ;; leaves the sum as it was. Both return nonfinite()'s verdict on the staged values.
  ;; scale32(d, n, w): d[i] = w * d[i], the first update (copied, not added to 0: -0 stays -0).
  (func (export "scale32") (param $d i32) (param $n i32) (param $w f32) (result i32)
    (local $end i32) (local $wv v128) (local $acc v128) (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $end (i32.add (local.get $d) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
${LOAD16}
${CHECK16}
${SCALE16}
        (local.set $d (i32.add (local.get $d) (i32.const 64)))
        (br $next)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 15)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (local.set $x0 (v128.load32_zero (local.get $d)))
        (local.set $acc (f32x4.add (local.get $acc) (local.get $x0)))
        (f32.store (local.get $d) (f32.mul (f32x4.extract_lane 0 (local.get $x0)) (local.get $w)))
        (local.set $d (i32.add (local.get $d) (i32.const 4)))
        (br $next)))
    (call $infinite (local.get $acc)))
  ;; fold32(s, d, n, w): d[i] = s[i] + w * d[i], s the sum, d the staged update.
  (func (export "fold32") (param $s i32) (param $d i32) (param $n i32) (param $w f32) (result i32)
    (local $end i32) (local $wv v128) (local $acc v128) (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128)
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $end (i32.add (local.get $d) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
${LOAD16}
${CHECK16}
${FOLD16}
        (local.set $d (i32.add (local.get $d) (i32.const 64)))
        (local.set $s (i32.add (local.get $s) (i32.const 64)))
        (br $next)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 15)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (local.set $x0 (v128.load32_zero (local.get $d)))
        (local.set $acc (f32x4.add (local.get $acc) (local.get $x0)))
        (f32.store (local.get $d) (f32.add (f32.load (local.get $s)) (f32.mul (f32x4.extract_lane 0 (local.get $x0)) (local.get $w))))
        (local.set $d (i32.add (local.get $d) (i32.const 4)))
        (local.set $s (i32.add (local.get $s) (i32.const 4)))
        (br $next)))
    (call $infinite (local.get $acc)))
  ;; add32(s, d, n): d[i] = s[i] + d[i], s the sum, d an update already checked and scaled by
  ;; scale32 (one that waited behind a stream folding as it arrived): the fold of fold32 with its
  ;; multiply and its check done earlier, while each piece was in cache.
  (func (export "add32") (param $s i32) (param $d i32) (param $n i32)
    (local $end i32)
    (local.set $end (i32.add (local.get $d) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (v128.store offset=0 (local.get $d) (f32x4.add (v128.load offset=0 (local.get $s)) (v128.load offset=0 (local.get $d))))
        (v128.store offset=16 (local.get $d) (f32x4.add (v128.load offset=16 (local.get $s)) (v128.load offset=16 (local.get $d))))
        (v128.store offset=32 (local.get $d) (f32x4.add (v128.load offset=32 (local.get $s)) (v128.load offset=32 (local.get $d))))
        (v128.store offset=48 (local.get $d) (f32x4.add (v128.load offset=48 (local.get $s)) (v128.load offset=48 (local.get $d))))
        (local.set $d (i32.add (local.get $d) (i32.const 64)))
        (local.set $s (i32.add (local.get $s) (i32.const 64)))
        (br $next)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 15)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (f32.store (local.get $d) (f32.add (f32.load (local.get $s)) (f32.load (local.get $d))))
        (local.set $d (i32.add (local.get $d) (i32.const 4)))
        (local.set $s (i32.add (local.get $s) (i32.const 4)))
        (br $next))))
  ;; commit32(s, d, n, w): d[i] = s[i] + w * d[i], s the sum (or, for s = 0, the first update:
  ;; d[i] = w * d[i]), d a streamed update copied in as it arrived and not yet checked: its check,
  ;; scale and fold in one pass at commit (bound by reading d and s, so the check costs next to
  ;; nothing there, where a pass of its own over each chunk cost about a sixth of the stream's time).
  ;; Sixteen values at a time, checked before any of them is written: their lane-wise sum, then,
  ;; if that is not finite, each value's exponent (a sum of finite values can overflow). Returns n,
  ;; or the index of the first of the sixteen (in the tail: the one) holding a NaN or ±Infinity,
  ;; with nothing written from there on: the values still there tell which one.
  (func (export "commit32") (param $s i32) (param $d i32) (param $n i32) (param $w f32) (result i32)
    (local $start i32) (local $end i32) (local $wv v128) (local $m v128) (local $t v128)
    (local $x0 v128) (local $x1 v128) (local $x2 v128) (local $x3 v128) (local $x f32)
    (local.set $start (local.get $d))
    (local.set $wv (f32x4.splat (local.get $w)))
    (local.set $m (v128.const i32x4 0x7f800000 0x7f800000 0x7f800000 0x7f800000))
    (local.set $end (i32.add (local.get $d) (i32.shl (i32.and (local.get $n) (i32.const -16)) (i32.const 2))))
    (if (i32.eqz (local.get $s))
      (then
        (block $done
          (loop $next
${COMMIT32_CHECK}
${SCALE16}
            (local.set $d (i32.add (local.get $d) (i32.const 64)))
            (br $next))))
      (else
        (block $done
          (loop $next
${COMMIT32_CHECK}
${FOLD16}
            (local.set $s (i32.add (local.get $s) (i32.const 64)))
            (local.set $d (i32.add (local.get $d) (i32.const 64)))
            (br $next)))))
    (if (i32.lt_u (local.get $d) (local.get $end))
      (then (return (i32.shr_u (i32.sub (local.get $d) (local.get $start)) (i32.const 2)))))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 15)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $d) (local.get $end)))
        (local.set $x (f32.load (local.get $d)))
        (br_if $done (i32.eq (i32.and (i32.reinterpret_f32 (local.get $x)) (i32.const 0x7f800000)) (i32.const 0x7f800000)))
        (if (i32.eqz (local.get $s))
          (then (f32.store (local.get $d) (f32.mul (local.get $x) (local.get $w))))
          (else
            (f32.store (local.get $d) (f32.add (f32.load (local.get $s)) (f32.mul (local.get $x) (local.get $w))))
            (local.set $s (i32.add (local.get $s) (i32.const 4)))))
        (local.set $d (i32.add (local.get $d) (i32.const 4)))
        (br $next)))
    (i32.shr_u (i32.sub (local.get $d) (local.get $start)) (i32.const 2)))
  ;; divide32(s, n, t): sum[i] = sum[i] / t in place, float32.
  (func (export "divide32") (param $s i32) (param $n i32) (param $t f32)
    (local $end i32) (local $tv v128)
    (local.set $tv (f32x4.splat (local.get $t)))
    (local.set $end (i32.add (local.get $s) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $s) (local.get $end)))
        (v128.store (local.get $s) (f32x4.div (v128.load (local.get $s)) (local.get $tv)))
        (local.set $s (i32.add (local.get $s) (i32.const 16)))
        (br $next)))
    (local.set $end (i32.add (local.get $end) (i32.shl (i32.and (local.get $n) (i32.const 3)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $s) (local.get $end)))
        (f32.store (local.get $s) (f32.div (f32.load (local.get $s)) (local.get $t)))
        (local.set $s (i32.add (local.get $s) (i32.const 4)))
        (br $next)))))
`;

/** FOLD_KERNEL_WAT compiled (base64). */
export const FOLD_KERNEL_WASM = 'AGFzbQEAAAABNAhgAn9/AX9gAXsBf2AEf39/fABgA39/fABgA39/fQF/YAR/f399AX9gA39/fwBgA39/fQACDwEDZW52Bm1lbW9yeQIAAQMKCQABAgMEBQYFBwdOCAlub25maW5pdGUAAARmb2xkAAIGZGl2aWRlAAMHc2NhbGUzMgAEBmZvbGQzMgAFBWFkZDMyAAYIY29tbWl0MzIABwhkaXZpZGUzMgAICvMOCYYBAgF/AXsgACABQXBxQQJ0aiECAkADQCAAIAJPDQEgAyAA/QAEACAA/QAEEP3kASAA/QAEICAA/QAEMP3kAf3kAf3kASEDIABBwABqIQAMAAsLIAIgAUEPcUECdGohAgJAA0AgACACTw0BIAMgAP1cAgD95AEhAyAAQQRqIQAMAAsLIAMQAQsuACAA/QwAAIB/AACAfwAAgH8AAIB//U79DAAAgH8AAIB/AACAfwAAgH/9N/1TC8ABAgF/AnsgA/0UIQUgASACQXxxQQJ0aiEEAkADQCABIARPDQEgAf0ABAAhBiAAIAD9AAQAIAb9XyAF/fIB/fAB/QsEACAAIAD9AAQQIAYgBv0NCAkKCwwNDg8AAQIDBAUGB/1fIAX98gH98AH9CwQQIAFBEGohASAAQSBqIQAMAAsLIAQgAkEDcUECdGohBAJAA0AgASAETw0BIAAgACsDACABKgIAuyADoqA5AwAgAUEEaiEBIABBCGohAAwACwsLZAICfwF7IAL9FCEFIAAhAyAAIAFBfnFBA3RqIQQCQANAIAAgBE8NASADIAD9AAQAIAX98wH9Xv1bAwAAIABBEGohACADQQhqIQMMAAsLIAFBAXEEQCADIAArAwAgAqO2OAIACwvhAQIBfwZ7IAL9EyEEIAAgAUFwcUECdGohAwJAA0AgACADTw0BIAD9AAQAIQYgAP0ABBAhByAA/QAEICEIIAD9AAQwIQkgBSAGIAf95AEgCCAJ/eQB/eQB/eQBIQUgACAGIAT95gH9CwQAIAAgByAE/eYB/QsEECAAIAggBP3mAf0LBCAgACAJIAT95gH9CwQwIABBwABqIQAMAAsLIAMgAUEPcUECdGohAwJAA0AgACADTw0BIAD9XAIAIQYgBSAG/eQBIQUgACAG/R8AIAKUOAIAIABBBGohAAwACwsgBRABC5oCAgF/BnsgA/0TIQUgASACQXBxQQJ0aiEEAkADQCABIARPDQEgAf0ABAAhByAB/QAEECEIIAH9AAQgIQkgAf0ABDAhCiAGIAcgCP3kASAJIAr95AH95AH95AEhBiABIAD9AAQAIAcgBf3mAf3kAf0LBAAgASAA/QAEECAIIAX95gH95AH9CwQQIAEgAP0ABCAgCSAF/eYB/eQB/QsEICABIAD9AAQwIAogBf3mAf3kAf0LBDAgAUHAAGohASAAQcAAaiEADAALCyAEIAJBD3FBAnRqIQQCQANAIAEgBE8NASAB/VwCACEHIAYgB/3kASEGIAEgACoCACAH/R8AIAOUkjgCACABQQRqIQEgAEEEaiEADAALCyAGEAELvgEBAX8gASACQXBxQQJ0aiEDAkADQCABIANPDQEgASAA/QAEACAB/QAEAP3kAf0LBAAgASAA/QAEECAB/QAEEP3kAf0LBBAgASAA/QAEICAB/QAEIP3kAf0LBCAgASAA/QAEMCAB/QAEMP3kAf0LBDAgAUHAAGohASAAQcAAaiEADAALCyADIAJBD3FBAnRqIQMCQANAIAEgA08NASABIAAqAgAgASoCAJI4AgAgAUEEaiEBIABBBGohAAwACwsL4gQDAn8HewF9IAEhBCAD/RMhBv0MAACAfwAAgH8AAIB/AACAfyEHIAEgAkFwcUECdGohBSAARQRAAkADQCABIAVPDQEgAf0ABAAhCSAB/QAEECEKIAH9AAQgIQsgAf0ABDAhDCAJIAr95AEgCyAM/eQB/eQBIQggCCAH/U4gB/03/VMEQCAJIAf9TiAH/TcgCiAH/U4gB/03/VAgCyAH/U4gB/03IAwgB/1OIAf9N/1Q/VD9Uw0CCyABIAkgBv3mAf0LBAAgASAKIAb95gH9CwQQIAEgCyAG/eYB/QsEICABIAwgBv3mAf0LBDAgAUHAAGohAQwACwsFAkADQCABIAVPDQEgAf0ABAAhCSAB/QAEECEKIAH9AAQgIQsgAf0ABDAhDCAJIAr95AEgCyAM/eQB/eQBIQggCCAH/U4gB/03/VMEQCAJIAf9TiAH/TcgCiAH/U4gB/03/VAgCyAH/U4gB/03IAwgB/1OIAf9N/1Q/VD9Uw0CCyABIAD9AAQAIAkgBv3mAf3kAf0LBAAgASAA/QAEECAKIAb95gH95AH9CwQQIAEgAP0ABCAgCyAG/eYB/eQB/QsEICABIAD9AAQwIAwgBv3mAf3kAf0LBDAgAEHAAGohACABQcAAaiEBDAALCwsgASAFSQRAIAEgBGtBAnYPCyAFIAJBD3FBAnRqIQUCQANAIAEgBU8NASABKgIAIQ0gDbxBgICA/AdxQYCAgPwHRg0BIABFBEAgASANIAOUOAIABSABIAAqAgAgDSADlJI4AgAgAEEEaiEACyABQQRqIQEMAAsLIAEgBGtBAnYLcAIBfwF7IAL9EyEEIAAgAUF8cUECdGohAwJAA0AgACADTw0BIAAgAP0ABAAgBP3nAf0LBAAgAEEQaiEADAALCyADIAFBA3FBAnRqIQMCQANAIAAgA08NASAAIAAqAgAgApU4AgAgAEEEaiEADAALCws=';

interface KernelExports {
  nonfinite(p: number, n: number): number;
  fold(s: number, d: number, n: number, w: number): void;
  divide(s: number, n: number, t: number): void;
  scale32(d: number, n: number, w: number): number;
  fold32(s: number, d: number, n: number, w: number): number;
  add32(s: number, d: number, n: number): void;
  commit32(s: number, d: number, n: number, w: number): number;
  divide32(s: number, n: number, t: number): void;
}

let kernelModule: WebAssembly.Module | undefined;

/**
 * The kernel instantiated over one memory. Every call into it goes through
 * these methods, each one call site, which warm() makes megamorphic: code
 * optimized for one instance's exported functions (a call site that only
 * ever saw one) was thrown away when that instance was collected, after
 * each round, and compiled again (10-30 ms of CPU a round).
 */
class Kernel implements KernelExports {
  private readonly x: KernelExports;
  constructor(memory: WebAssembly.Memory) {
    kernelModule ??= new WebAssembly.Module(Buffer.from(FOLD_KERNEL_WASM, 'base64'));
    const e = new WebAssembly.Instance(kernelModule, { env: { memory } }).exports as unknown as KernelExports;
    // one shape for every instance
    this.x = { nonfinite: e.nonfinite, fold: e.fold, divide: e.divide, scale32: e.scale32, fold32: e.fold32, add32: e.add32, commit32: e.commit32, divide32: e.divide32 };
  }
  nonfinite(p: number, n: number): number {
    return this.x.nonfinite(p, n);
  }
  fold(s: number, d: number, n: number, w: number): void {
    this.x.fold(s, d, n, w);
  }
  divide(s: number, n: number, t: number): void {
    this.x.divide(s, n, t);
  }
  scale32(d: number, n: number, w: number): number {
    return this.x.scale32(d, n, w);
  }
  fold32(s: number, d: number, n: number, w: number): number {
    return this.x.fold32(s, d, n, w);
  }
  add32(s: number, d: number, n: number): void {
    this.x.add32(s, d, n);
  }
  commit32(s: number, d: number, n: number, w: number): number {
    return this.x.commit32(s, d, n, w);
  }
  divide32(s: number, n: number, t: number): void {
    this.x.divide32(s, n, t);
  }
  /** Calls each method (on nothing) with two instances alternately, often enough for V8 to record it. */
  static warm(): void {
    const ks = [0, 1].map(() => new Kernel(new WebAssembly.Memory({ initial: 1, maximum: 1 })));
    for (let i = 0; i < 32; i++) {
      const k = ks[i & 1]!;
      k.nonfinite(0, 0);
      k.fold(0, 0, 0, 1);
      k.divide(0, 0, 1);
      k.scale32(0, 0, 1);
      k.fold32(0, 0, 0, 1);
      k.add32(0, 0, 0);
      k.commit32(0, 0, 0, 1);
      k.divide32(0, 0, 1);
    }
  }
}

/** One kernel per memory (a memory kept for the next aggregator keeps its kernel). */
const kernels = new WeakMap<WebAssembly.Memory, Kernel>();

const PAGE = 65536;
const MAX_PAGES = 65535; // addresses stay below 2^32 - 1, so no i32 end pointer wraps
/** A whole update is copied into the kernel's memory a piece at a time, each piece checked while it is in the CPU cache (256 KiB: 10-20 % faster than 32-64 KiB here, 128-512 KiB alike). */
const PIECE = 262144;
/** At address 0: the fallback staging area of add() while every stream slot is busy, and where older pieces are copied in again. */
const STAGE_BYTES = PIECE;
const SUM_AT = STAGE_BYTES;
/**
 * add()'s staging ring: a quarter of a model (at least one piece, at most the
 * whole model), where stream slot 0 would be (it becomes part of that slot
 * when a stream opens), so streams add nothing to it. A quarter: sum (2×) +
 * ring stay well below 3× one model in RSS (a process's RSS moves by 0.5 MB
 * or more besides); half a model measured no faster under load. A free slot,
 * when there is one, serves as a ring of the whole model.
 */
const ringBytesFor = (modelBytes: number, slotBytes: number) => Math.min(slotBytes, Math.max(PIECE, Math.ceil(modelBytes / 4 / PIECE) * PIECE));
const pagesFor = (bytes: number) => Math.ceil(bytes / PAGE);

/**
 * Kernel memories kept for the next FedAvg of the same model (finishWith()
 * hands them back), so that a new round's aggregator does not pay the first
 * touch of a fresh memory again: page faults are 20-40 % of an aggregator's
 * time on a VM (5-19 µs per 4 KiB page measured here). Bounded: at most
 * POOL_SIZE memories, all for one model size (a new aggregator for another
 * size drops them), kept until releaseFedAvgMemory(), which the coordinator
 * calls when its last running job ends. No idle timer: rounds wait for
 * devices to train, minutes apart, and a timer shorter than that made every
 * round pay the page faults again.
 */
interface Pooled {
  memory: WebAssembly.Memory;
  params: number;
  maximum: number;
}
const POOL_SIZE = 2;
const pool: Pooled[] = [];

function takePooled(params: number, maximum: number): WebAssembly.Memory | undefined {
  for (let i = pool.length - 1; i >= 0; i--) if (pool[i]!.params !== params) pool.splice(i, 1);
  const i = pool.findIndex((p) => p.maximum >= maximum);
  return i < 0 ? undefined : pool.splice(i, 1)[0]!.memory;
}

function keepPooled(p: Pooled): void {
  pool.push(p);
  if (pool.length > POOL_SIZE) pool.shift();
}

/**
 * A small FedAvg that lives as long as the process, made with the first one.
 * V8 holds the hidden classes an object goes through as it is built (one per
 * field) only weakly: when no aggregator was alive at a full GC, as between
 * two rounds, they were collected, every optimized function that had checked
 * them was thrown away, and the next round compiled them again (20-30 ms of
 * CPU per 100 streamed updates). An aggregator alive keeps them.
 */
let shapeKeeper: FedAvg | undefined;
let keepingShapes = false;
function keepShapes(): void {
  if (shapeKeeper || keepingShapes) return;
  keepingShapes = true;
  try {
    Kernel.warm();
    shapeKeeper = new FedAvg({ format: MODEL_FORMAT, tensors: [{ name: 'x', shape: [1], data: new Float32Array(1) }] }, { maxInFlight: 1 });
  } finally {
    keepingShapes = false;
  }
}

/** Bytes of kernel memory kept for later FedAvg aggregators. */
export function keptFedAvgMemoryBytes(): number {
  return pool.reduce((n, p) => n + p.memory.buffer.byteLength, 0);
}

/** Drops the kernel memories kept for later FedAvg aggregators; returns how many there were. */
export function releaseFedAvgMemory(): number {
  const n = pool.length;
  pool.length = 0;
  return n;
}

/** FedAvg: a stream's slot in the kernel's memory. */
interface StreamSlot {
  participant: string;
  /** The slot's index and byte address. */
  slot: number;
  at: number;
  /** The update's numSamples. */
  weight: number;
  /** Neither committed nor released. */
  open: boolean;
  /** A chunk came (for the lead stream: was folded, so updates that count from then on wait behind it). */
  received: boolean;
}

/**
 * Sample-weighted mean: result = Σ numSamples·w / Σ numSamples, per value.
 *
 * accumulator 'float32' (the default) is Flower's aggregate()
 * (flwr.server.strategy.aggregate) in numpy, bit for bit: each value times
 * float32(numSamples) rounded to float32, summed in float32 in the order the
 * updates count (the first one copied, not added to 0), the sum divided by
 * float32(totalSamples). Memory: slots of 4 bytes × params, one of which
 * holds the sum. add() and addEncoded() copy a whole update into a free slot
 * a piece at a time (PIECE, L2-sized), and each piece, right after its copy
 * while it is in cache, is checked and folded in place by one kernel pass
 * (slot = sum + w × update; the sum is only read). When every piece is in,
 * that slot is the sum and the old sum's slot is free; a NaN midway frees
 * the slot and the sum was never written. So the caller's data and the sum
 * are each read once per update, and the refusal is exact. Sum + one slot:
 * 2× a model, plus a slot per open stream.
 *
 * Streams, float32: a stream that begins while no other update streams or
 * waits is the lead stream: each chunk, copied into its slot, becomes sum +
 * w × chunk there in the same pass (the sum only read), so at commit() the
 * slot is the new sum, as for add(). That needs the sum unchanged until it
 * commits: an update that counts meanwhile (add, addEncoded, another stream's
 * commit) waits, copied, checked and scaled (w × update) in a slot of its own, and is added after
 * the lead stream commits, or when it is dropped, in the order they came:
 * updates count in the order they complete, except that those completing
 * while a lead stream is open count after it (participants() gives that
 * order; docs/fl.md). A lead stream that has received nothing when another
 * update counts is no lead any more. Any other stream is only copied as it
 * arrives (a chunk costs its copy and its checks of range and overlap), and
 * commit() checks, scales and folds the slot in one pass (commit32: slot =
 * sum + w × update, the sum only read; a NaN or ±Infinity is refused there,
 * by its index, with the sum as it was). A pass of its own per chunk, to
 * check or scale it while in cache, cost about a sixth of such a stream's CPU;
 * commit's pass reads the slot and the sum anyway and is bound by that. At most
 * maxInFlight updates wait (then add() and begin() are refused 'capacity'),
 * so memory stays within sum, add()'s slot and 2 × maxInFlight slots. Why not
 * fold another update first and keep the lead stream's values: that is one
 * more model-sized buffer (3× a model in all).
 *
 * accumulator 'float64': accumulated in float64 and rounded to float32
 * once at the end (the order of updates changes nothing in practice).
 * Memory, all in the kernel's wasm memory: a staging area (STAGE_BYTES),
 * the float64 sum (8 bytes × params), add()'s ring (a quarter of a model) and, once
 * updates stream (begin...commit), one slot of 4 bytes × params per stream
 * open at once (at most maxInFlight); the ring is the start of slot 0. A slot
 * is reused by the next stream; wasm memory does not shrink, so the slots of
 * the most streams ever open at once stay until the memory is dropped.
 * finishWith() keeps the memory for the next aggregator of the same model
 * (see takePooled).
 *
 * A whole update (add, addEncoded) is checked entirely before any value is
 * folded, so a NaN at the very end changes nothing: its pieces are copied
 * into the ring and checked there; then the pieces still in the ring (the
 * newest quarter of the update) are folded where they are, and only the
 * older ones are copied in again. A free stream slot serves as a ring of a whole
 * model (one copy); while every slot is busy, the staging area is a ring of
 * one piece. Folding as pieces arrive and undoing on a late NaN would need
 * the old sums of the folded pieces (subtraction is not exact), i.e. another
 * model-sized float64 buffer: see docs/fl.md.
 *
 * Why a slot per streamed update rather than folding chunks into the sum as
 * they arrive and subtracting them on abort: subtracting needs the aborted
 * values back, so they would have to be kept anyway (the same memory as a
 * slot), and it is not exact: a chunk of 1e30s folded then subtracted wipes
 * out every honest contribution below ~1e14 (catastrophic cancellation), so an
 * aborted update could still change the result. With a slot, nothing reaches
 * the sum before commit() has seen every element. Each chunk is copied
 * straight into its slot in wasm memory as it arrives (one copy), and
 * commit() is one kernel pass over the slot.
 */
export class FedAvg extends BaseAggregator<StreamSlot> {
  private readonly memory: WebAssembly.Memory;
  private readonly k: Kernel;
  /** A view of the whole memory, renewed when it grows (a new slot). */
  private u8: Uint8Array;
  private readonly ringBytes: number;
  /** Byte address of slot 0 and each slot's size (16-byte aligned). */
  private readonly slotsAt: number;
  private readonly slotBytes: number;
  private readonly maximum: number;
  private slots = 0;
  private readonly freeSlots: number[] = [];
  /** Per piece of the update being added: tensor, byte offset, position in the ring's stream of bytes. */
  private readonly pieces: number[] = [];
  /** The float64 accumulator (else float32, Flower's arithmetic). */
  private readonly wide: boolean;
  /** float32: the slot that holds the sum (-1 before the first update). */
  private sumSlot = -1;
  /** float32: the stream that folds as it arrives, if one does. */
  private lead: StreamSlot | undefined;
  /** float32: the updates that count after the lead stream, in their order: slots of checked values, and weights. */
  private readonly waiting: number[] = [];

  constructor(reference: Model, config?: AggregatorConfig | Record<string, unknown>) {
    super('fedavg', reference, config);
    keepShapes();
    this.wide = this.cfg.accumulator === 'float64';
    this.slotBytes = Math.ceil((this.params * 4) / 16) * 16;
    // float32: the sum is one of the slots (whichever an update was last folded into)
    this.slotsAt = this.wide ? SUM_AT + this.params * 8 : SUM_AT;
    this.ringBytes = ringBytesFor(this.params * 4, this.slotBytes);
    // float32: the sum's slot and the one add() stages into (touched only when used)
    const pages = pagesFor(this.wide ? this.slotsAt : this.slotsAt + 2 * this.slotBytes);
    if (pages > MAX_PAGES) throw new AggregatorError('reference', `fedavg: a model of ${this.params} parameters needs ${pages * PAGE} bytes for its sum and staging, beyond 4 GiB of wasm memory`);
    // float32: the sum's slot, one for add(), one per stream and per update waiting behind the lead stream
    const staged = this.wide ? Math.max(this.ringBytes, this.cfg.maxInFlight * this.slotBytes) : (2 * this.cfg.maxInFlight + 2) * this.slotBytes;
    this.maximum = Math.min(MAX_PAGES, pagesFor(this.slotsAt + staged));
    const kept = takePooled(this.params, this.maximum);
    if (kept) {
      this.memory = kept;
      const short = pages - kept.buffer.byteLength / PAGE; // a memory kept by the other accumulator
      if (short > 0) kept.grow(short);
      // float32 needs no zeroing: the first update's products are the sum
      if (this.wide) new Uint8Array(kept.buffer).fill(0, SUM_AT, this.slotsAt);
    } else {
      try {
        this.memory = new WebAssembly.Memory({ initial: pages, maximum: this.maximum });
      } catch (e) {
        throw new AggregatorError('reference', `fedavg: cannot allocate ${pages * PAGE} bytes for the sum: ${(e as Error).message}`);
      }
    }
    let k = kernels.get(this.memory);
    if (!k) kernels.set(this.memory, (k = new Kernel(this.memory)));
    this.k = k;
    this.u8 = new Uint8Array(this.memory.buffer);
  }

  /** float32: at most maxInFlight updates wait behind a stream that folds as it arrives; while they do, no stream begins. */
  protected checkCapacity(participant: string): void {
    const lead = this.lead;
    if (lead?.received && this.waiting.length >= this.cfg.maxInFlight) {
      throw new UpdateError(
        'capacity',
        `update from ${participant} refused: ${this.waiting.length} updates already wait for the stream from ${lead.participant}, which folds as it arrives and counts before them (maxInFlight ${this.cfg.maxInFlight})`,
        participant,
      );
    }
  }

  get memoryBytes(): number {
    return this.memory.buffer.byteLength;
  }

  /** Grows the memory to `bytes`; false if it cannot. */
  private growTo(bytes: number): boolean {
    const pages = pagesFor(bytes) - this.memory.buffer.byteLength / PAGE;
    if (pages <= 0) return true;
    try {
      this.memory.grow(pages);
    } catch {
      return false;
    }
    this.u8 = new Uint8Array(this.memory.buffer);
    return true;
  }

  /** Where add() stages an update: [address, bytes] of a free slot, the ring, or the staging area while every slot is busy. */
  private ring(): [number, number] {
    const free = this.freeSlots[this.freeSlots.length - 1];
    if (free !== undefined) return [this.slotsAt + free * this.slotBytes, this.slotBytes];
    if (this.slots === 0) {
      // a kept memory may hold a whole slot already
      const room = Math.min(this.slotBytes, this.memory.buffer.byteLength - this.slotsAt) & ~15;
      if (room >= this.ringBytes) return [this.slotsAt, room];
      if (this.growTo(this.slotsAt + this.ringBytes)) return [this.slotsAt, this.ringBytes];
    }
    return [0, STAGE_BYTES];
  }

  protected acceptBytes(tensors: Uint8Array[], weight: number, participant: string): void {
    if (!this.wide) return this.ahead() ? this.stageWaiting(tensors, weight, participant) : this.stageAndFold(tensors, weight, participant);
    const [base, R] = this.ring();
    const pieces = this.pieces;
    pieces.length = 0;
    let v = 0;
    for (let t = 0; t < tensors.length; t++) {
      const bytes = tensors[t]!;
      for (let o = 0; o < bytes.length; o += PIECE) {
        const piece = bytes.subarray(o, o + PIECE);
        if ((v % R) + piece.length > R) v += R - (v % R);
        const at = base + (v % R);
        this.u8.set(piece, at);
        if (this.k.nonfinite(at, piece.length >>> 2)) this.confirmNonFinite(participant, t, bytes, o, piece);
        pieces.push(t, o, v);
        v += (piece.length + 15) & ~15;
      }
    }
    // Every value is finite. The pieces in [v - R, v) are still in the ring:
    // folded where they are, newest first (the likeliest still in cache);
    // then the older ones are copied in again. Each value is folded once, so
    // the order of the pieces does not change the sum.
    const fold = (j: number, at: number) => {
      const t = pieces[j]!;
      const o = pieces[j + 1]!;
      this.k.fold(SUM_AT + (this.offsets[t]! + o / 4) * 8, at, Math.min(PIECE, tensors[t]!.length - o) >>> 2, weight);
    };
    let j = pieces.length - 3;
    for (; j >= 0 && pieces[j + 2]! >= v - R; j -= 3) fold(j, base + (pieces[j + 2]! % R));
    for (let i = 0; i <= j; i += 3) {
      this.u8.set(tensors[pieces[i]!]!.subarray(pieces[i + 1]!, pieces[i + 1]! + PIECE), 0);
      fold(i, 0);
    }
  }

  /**
   * float32: the update copied into a free slot a piece at a time, and each
   * piece, while in cache, checked and folded there in one pass: the slot
   * then holds sum + weight × update. Once every piece is in, the slot is the
   * sum and the old sum's slot is free; a NaN midway frees the slot and the
   * sum was never written.
   */
  private stageAndFold(tensors: Uint8Array[], weight: number, participant: string): void {
    const slot = this.takeSlot(participant);
    const at = this.slotAt(slot);
    const sum = this.sumSlot < 0 ? -1 : this.slotAt(this.sumSlot);
    try {
      for (let t = 0; t < tensors.length; t++) {
        const bytes = tensors[t]!;
        const o4 = this.offsets[t]! * 4;
        for (let o = 0; o < bytes.length; o += PIECE) {
          const piece = bytes.subarray(o, o + PIECE);
          const d = at + o4 + o;
          this.u8.set(piece, d);
          const n = piece.length >>> 2;
          if (sum < 0 ? this.k.scale32(d, n, weight) : this.k.fold32(sum + o4 + o, d, n, weight)) this.confirmNonFinite(participant, t, bytes, o, piece);
        }
      }
    } catch (e) {
      this.freeSlots.push(slot);
      throw e;
    }
    this.adopt(slot);
  }

  /**
   * float32: a slot of checked, scaled values (w × update: an update that
   * waited behind the lead stream) becomes the new sum, sum + slot,
   * a piece at a time from the end (the chunks that came last are the
   * likeliest still in cache); the first update's is the sum as it is.
   */
  private foldSlot(slot: number): void {
    if (this.sumSlot >= 0) {
      const at = this.slotAt(slot);
      const sum = this.slotAt(this.sumSlot);
      const step = PIECE / 4;
      for (let end = this.params; end > 0; end -= step) {
        const start = Math.max(0, end - step);
        this.k.add32(sum + start * 4, at + start * 4, end - start);
      }
    }
    this.adopt(slot);
  }

  /** float32: `slot` holds the new sum; the old sum's slot is free. */
  private adopt(slot: number): void {
    if (this.sumSlot >= 0) this.freeSlots.push(this.sumSlot);
    this.sumSlot = slot;
  }

  /**
   * The kernel said a piece (bytes [o, o + piece.length) of tensor t) may hold
   * NaN or ±Infinity: throws if it does; returns if that was a false alarm
   * (finite values whose sum overflows float32).
   */
  private confirmNonFinite(participant: string, t: number, bytes: Uint8Array, o: number, piece: Uint8Array): void {
    const j = firstNonFiniteLE(piece);
    if (j < 0) return;
    const i = o / 4 + j;
    throw this.nonFinite(participant, this.offsets[t]! + i, readFloat32LE(bytes, i));
  }

  private slotAt(slot: number): number {
    return this.slotsAt + slot * this.slotBytes;
  }

  /** Byte address of the sum: fixed for float64, the slot that holds it for float32. */
  private sumAddress(): number {
    return this.wide ? SUM_AT : this.slotAt(this.sumSlot);
  }

  /** A free slot, or a new one (the memory grows); UpdateError 'capacity' if it cannot. */
  private takeSlot(participant: string): number {
    const free = this.freeSlots.pop();
    if (free !== undefined) return free;
    const i = this.slots;
    if (!this.growTo(this.slotsAt + (i + 1) * this.slotBytes)) {
      throw new UpdateError('capacity', `update from ${participant} refused: cannot grow the kernel's memory by a ${this.slotBytes}-byte slot`, participant);
    }
    this.slots++;
    return i;
  }

  protected accept(tensors: Tensor[], weight: number, participant: string): void {
    // On little-endian hosts these are views, not copies.
    this.acceptBytes(
      tensors.map((t) => float32ToLE(t.data)),
      weight,
      participant,
    );
  }

  protected openSlot(participant: string, weight: number, mayLead: boolean): StreamSlot {
    const slot = this.takeSlot(participant);
    const s: StreamSlot = { participant, slot, at: this.slotAt(slot), weight, open: true, received: false };
    // float32: a stream that begins while no other streams or waits folds as it arrives (see FedAvg)
    if (mayLead && !this.wide && this.inFlight === 0 && this.waiting.length === 0) this.lead = s;
    return s;
  }

  protected writeSlot(s: StreamSlot, pos: number, bytes: Uint8Array): number {
    const d = s.at + pos * 4;
    this.u8.set(bytes, d);
    s.received = true;
    // float32, any stream but the lead: only copied; commit() checks, scales and folds it in one pass (commit32)
    if (!this.wide && this.lead !== s) return -1;
    const n = bytes.length >>> 2;
    let maybe: number;
    // the lead stream's chunk becomes sum + weight × chunk while in cache; the sum is only read
    if (this.wide) maybe = this.k.nonfinite(d, n);
    else if (this.sumSlot >= 0) maybe = this.k.fold32(this.slotAt(this.sumSlot) + pos * 4, d, n, s.weight);
    else maybe = this.k.scale32(d, n, s.weight); // the lead stream, the first update: w × chunk
    if (!maybe) return -1;
    const i = firstNonFiniteLE(bytes); // the kernel's verdict may be a false alarm
    return i < 0 ? -1 : pos + i;
  }

  protected commitSlot(s: StreamSlot, weight: number): number {
    if (this.wide) {
      s.open = false;
      this.k.fold(SUM_AT, s.at, this.params, weight);
      this.freeSlots.push(s.slot);
      return 0;
    }
    if (this.lead === s) {
      // every chunk is folded already: the slot is the new sum; then those that waited
      s.open = false;
      this.lead = undefined;
      this.adopt(s.slot);
      const behind = this.waiting.length;
      this.drain();
      return behind;
    }
    this.checkAndFold(s);
    s.open = false; // the slot is the sum now, or waits to be folded into it
    return 0;
  }

  /**
   * float32, at commit of a stream that did not fold as it arrived: its slot,
   * copied in chunk by chunk and nothing more, checked, scaled and folded in
   * one pass (commit32: slot = sum + w × update, or w × update for the first
   * update or one that waits behind the lead stream), a piece at a time from
   * the end (the chunks that came last are the likeliest still in cache). A
   * NaN or ±Infinity throws UpdateError 'non_finite' (the caller drops the
   * stream): only the slot was written, the sum is as it was.
   */
  private checkAndFold(s: StreamSlot): void {
    const wait = this.lead?.received === true;
    const sum = wait || this.sumSlot < 0 ? 0 : this.slotAt(this.sumSlot); // 0: no sum to add (the staging area is never one)
    const step = PIECE / 4;
    for (let end = this.params; end > 0; end -= step) {
      const start = Math.max(0, end - step);
      const n = end - start;
      const d = s.at + start * 4;
      const done = this.k.commit32(sum && sum + start * 4, d, n, s.weight);
      if (done < n) {
        // the values from there on are as they came
        const rest = this.u8.subarray(d + done * 4, d + n * 4);
        const i = firstNonFiniteLE(rest);
        throw this.nonFinite(s.participant, start + done + i, readFloat32LE(rest, i));
      }
    }
    if (wait) this.waiting.push(s.slot);
    else {
      this.lead = undefined; // a lead stream that has received nothing is no lead any more (see ahead())
      this.adopt(s.slot);
    }
  }

  protected releaseSlot(s: StreamSlot): void {
    if (!s.open) return;
    s.open = false;
    this.freeSlots.push(s.slot);
    if (this.lead === s) {
      this.lead = undefined;
      this.drain();
    }
  }

  /**
   * float32: true if a stream folds as it arrives and has folded a chunk, so
   * an update that counts now must wait behind it; one that has received
   * nothing yet stops folding as it arrives instead (it streams like the others).
   */
  private ahead(): boolean {
    if (this.lead?.received) return true;
    this.lead = undefined;
    return false;
  }

  /** float32: the updates that waited behind the lead stream, folded in their order. */
  private drain(): void {
    for (const slot of this.waiting) this.foldSlot(slot);
    this.waiting.length = 0;
  }

  /** float32, while a stream folds ahead: the update copied into a slot of its own, checked and scaled (w × update), to be folded after it. */
  private stageWaiting(tensors: Uint8Array[], weight: number, participant: string): void {
    const slot = this.takeSlot(participant);
    const at = this.slotAt(slot);
    try {
      for (let t = 0; t < tensors.length; t++) {
        const bytes = tensors[t]!;
        const o4 = this.offsets[t]! * 4;
        for (let o = 0; o < bytes.length; o += PIECE) {
          const piece = bytes.subarray(o, o + PIECE);
          this.u8.set(piece, at + o4 + o);
          if (this.k.scale32(at + o4 + o, piece.length >>> 2, weight)) this.confirmNonFinite(participant, t, bytes, o, piece);
        }
      }
    } catch (e) {
      this.freeSlots.push(slot);
      throw e;
    }
    this.waiting.push(slot);
  }

  protected compute(): Float32Array {
    const out = new Float32Array(this.params);
    const total = this.totalSamples;
    if (!this.wide) {
      // float32 ÷ float32 in float64, rounded to float32: the float32 quotient exactly
      const t = Math.fround(total);
      if (this.waiting.length > 0) {
        this.foldWaitingInto(out);
        for (let i = 0; i < out.length; i++) out[i] = out[i]! / t;
      } else if (HOST_LITTLE_ENDIAN) {
        const sum = new Float32Array(this.memory.buffer, this.sumAddress(), this.params);
        for (let i = 0; i < out.length; i++) out[i] = sum[i]! / t;
      } else {
        const dv = new DataView(this.memory.buffer, this.sumAddress());
        for (let i = 0; i < out.length; i++) out[i] = dv.getFloat32(i * 4, true) / t;
      }
    } else if (HOST_LITTLE_ENDIAN) {
      const sum = new Float64Array(this.memory.buffer, SUM_AT, this.params);
      for (let i = 0; i < out.length; i++) out[i] = sum[i]! / total;
    } else {
      const dv = new DataView(this.memory.buffer, SUM_AT);
      for (let i = 0; i < out.length; i++) out[i] = dv.getFloat64(i * 8, true) / total;
    }
    return out;
  }

  /**
   * The result written over the sum in place by the kernel (float32 i, at
   * byte 4i, is written after float64 i, at byte 8i, and every float64 below
   * it, have been read), so no model-sized buffer is allocated. The result's
   * tensors are views of the aggregator's memory (the sum, and the stream
   * slots if any; copy or encode the result to let it go).
   */
  /**
   * result() while updates wait behind the lead stream: the sum and each of
   * them folded into `out` in their order, in JavaScript (the same float32
   * operations), leaving the sum and the lead stream as they are.
   */
  private foldWaitingInto(out: Float32Array): void {
    const dv = new DataView(this.memory.buffer);
    let first = this.sumSlot < 0;
    if (!first) for (let i = 0, at = this.slotAt(this.sumSlot); i < out.length; i++) out[i] = dv.getFloat32(at + i * 4, true);
    for (const slot of this.waiting) {
      const at = this.slotAt(slot); // w × update, scaled as it was staged
      // a Float32Array element rounds the float64 sum of two float32s: the float32 sum exactly
      for (let i = 0; i < out.length; i++) {
        const x = dv.getFloat32(at + i * 4, true);
        out[i] = first ? x : out[i]! + x;
      }
      first = false;
    }
  }

  override finish(): Model {
    this.checkResult();
    this.dropStreams(); // a lead stream dropped: the updates waiting behind it are folded now
    let f32: Float32Array;
    if (HOST_LITTLE_ENDIAN) {
      const at = this.sumAddress();
      if (this.wide) this.k.divide(at, this.params, this.totalSamples);
      else this.k.divide32(at, this.params, this.totalSamples); // float32(total) at the boundary
      f32 = new Float32Array(this.memory.buffer, at, this.params);
    } else {
      // wasm memory is little-endian: a host-order Float32Array needs a copy
      f32 = this.compute();
    }
    const m = this.modelOver(f32);
    this.close();
    return m;
  }

  /**
   * finish(), then the memory is kept for the next FedAvg of the same model.
   * The result's views are detached when `use` returns (they read as empty,
   * never as another round's sums): copy or encode the result inside `use`.
   */
  override finishWith<T>(use: (result: Model) => T): T {
    const m = this.finish();
    try {
      return use(m);
    } finally {
      this.memory.grow(0); // detaches every view of the old buffer
      keepPooled({ memory: this.memory, params: this.params, maximum: this.maximum });
    }
  }
}

// ---------------------------------------------------------------- robust aggregators

/**
 * Holds every update (float32, one row of params values each) and reduces
 * each coordinate over the rows. Memory: rows × params × 4 bytes, at most
 * maxBufferedValues × 4 (streams in flight count), plus a working block of
 * 1024 × rows float64 and the float32 result at result().
 */
/** A robust aggregator's stream: its row until it commits. */
interface RowSlot {
  row: Float32Array;
  open: boolean;
}

abstract class BufferedAggregator extends BaseAggregator<RowSlot> {
  protected rows: Float32Array[] = [];
  private reserved = 0;

  get memoryBytes(): number {
    return (this.rows.length + this.reserved) * this.params * 4;
  }

  protected checkCapacity(participant: string): void {
    const rows = this.rows.length + this.reserved + 1;
    if (rows * this.params > this.cfg.maxBufferedValues) {
      throw new UpdateError(
        'capacity',
        `update from ${participant} refused: ${this.algorithm} holds every update, and ${rows} updates × ${this.params} parameters would pass maxBufferedValues ${this.cfg.maxBufferedValues} (${Math.round((this.cfg.maxBufferedValues * 4) / 2 ** 20)} MiB); raise aggregator.config.maxBufferedValues or use fedavg`,
        participant,
      );
    }
  }

  protected accept(tensors: Tensor[], _weight: number, participant: string): void {
    for (let t = 0; t < tensors.length; t++) {
      const data = tensors[t]!.data;
      const i = firstNonFinite(data);
      if (i >= 0) throw this.nonFinite(participant, this.offsets[t]! + i, data[i]!);
    }
    const row = new Float32Array(this.params);
    for (let t = 0; t < tensors.length; t++) row.set(tensors[t]!.data, this.offsets[t]!);
    this.rows.push(row);
  }

  protected acceptBytes(tensors: Uint8Array[], _weight: number, participant: string): void {
    for (let t = 0; t < tensors.length; t++) {
      const i = firstNonFiniteLE(tensors[t]!);
      if (i >= 0) throw this.nonFinite(participant, this.offsets[t]! + i, readFloat32LE(tensors[t]!, i));
    }
    const row = new Float32Array(this.params);
    for (let t = 0; t < tensors.length; t++) float32FromLE(tensors[t]!, row, this.offsets[t]!);
    this.rows.push(row);
  }

  protected openSlot(): RowSlot {
    this.reserved++;
    return { row: new Float32Array(this.params), open: true };
  }

  protected writeSlot({ row }: RowSlot, pos: number, bytes: Uint8Array): number {
    float32FromLE(bytes, row, pos);
    return firstNonFinite(row, pos, pos + bytes.length / 4);
  }

  protected commitSlot(s: RowSlot): number {
    this.releaseSlot(s);
    this.rows.push(s.row);
    return 0;
  }

  protected releaseSlot(s: RowSlot): void {
    if (s.open) this.reserved--;
    s.open = false;
  }

  /** The value for one coordinate from its n values col[o, o+n), sorted ascending. */
  protected abstract reduce(col: Float64Array, o: number, n: number): number;
  protected prepare(_n: number): void {}

  protected compute(): Float32Array {
    const n = this.rows.length;
    this.prepare(n);
    const P = this.params;
    const out = new Float32Array(P);
    const B = 1024;
    const col = new Float64Array(B * n);
    for (let base = 0; base < P; base += B) {
      const m = Math.min(B, P - base);
      // Gather a block of coordinates column by column (cache-friendly: each
      // row is read sequentially), then sort each column.
      for (let r = 0; r < n; r++) {
        const row = this.rows[r]!;
        for (let c = 0; c < m; c++) col[c * n + r] = row[base + c]!;
      }
      for (let c = 0; c < m; c++) {
        const o = c * n;
        if (n <= 32) insertionSort(col, o, n);
        else col.subarray(o, o + n).sort();
        out[base + c] = this.reduce(col, o, n);
      }
    }
    return out;
  }

  protected override close(): void {
    super.close();
    this.rows = [];
  }
}

function insertionSort(a: Float64Array, o: number, n: number): void {
  for (let i = o + 1; i < o + n; i++) {
    const x = a[i]!;
    let j = i - 1;
    while (j >= o && a[j]! > x) {
      a[j + 1] = a[j]!;
      j--;
    }
    a[j + 1] = x;
  }
}

/** Coordinate-wise median (the mean of the two middle values for an even count). Weights are ignored. */
export class FedMedian extends BufferedAggregator {
  constructor(reference: Model, config?: AggregatorConfig | Record<string, unknown>) {
    super('fedmedian', reference, config);
  }
  protected reduce(col: Float64Array, o: number, n: number): number {
    const h = n >> 1;
    return n % 2 ? col[o + h]! : (col[o + h - 1]! + col[o + h]!) / 2;
  }
}

/**
 * Coordinate-wise trimmed mean: per coordinate, the k smallest and k largest
 * values are dropped and the rest averaged, k = trim, or floor(trimFraction ×
 * n) (so with the default 0.1 nothing is trimmed below 10 updates: give
 * trim: 1 to always drop one at each end). Needs n > 2k. Weights are ignored.
 */
export class TrimmedMean extends BufferedAggregator {
  private k = 0;
  constructor(reference: Model, config?: AggregatorConfig | Record<string, unknown>) {
    super('trimmed-mean', reference, config);
  }
  /** Values dropped at each end for n updates. */
  trimCount(n = this.count): number {
    return this.cfg.trim ?? Math.floor(this.cfg.trimFraction * n);
  }
  protected override prepare(n: number): void {
    this.k = this.trimCount(n);
    if (n - 2 * this.k < 1) throw new AggregatorError('too_few_updates', `trimmed-mean drops ${this.k} updates at each end and needs at least ${2 * this.k + 1}, has ${n}`);
  }
  protected reduce(col: Float64Array, o: number, n: number): number {
    let s = 0;
    for (let i = o + this.k; i < o + n - this.k; i++) s += col[i]!;
    return s / (n - 2 * this.k);
  }
  protected override resultMeta(): ModelMeta {
    return { ...super.resultMeta(), trim: this.trimCount() };
  }
}
