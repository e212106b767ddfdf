// The FL records, shaped as the seed's resources (FederatedJob, TrainingRound,
// ModelCheckpoint: kind, metadata, camelCase spec, status with phase, reason
// and message), so that the HTTP API takes the seed's YAML as is (apiVersion
// is read past: the API group is the Kubernetes adapter's word, as are
// conditions, which it derives from phase and reason). Input parsing lives
// here too: every refusal names the field.

import { parse as parseYaml } from 'yaml';
import { isId } from '../../protocol/index.ts';
import { ALGORITHMS, createAggregator } from './aggregate.ts';
import { InputError } from '../task-input.ts';
import { AggregatorError } from './aggregate.ts';
import { MODEL_FORMAT } from '../../protocol/model-format.ts';

export type JobPhase = 'Pending' | 'Running' | 'Completed' | 'Failed';
export type RoundPhase = 'Pending' | 'Running' | 'Aggregating' | 'Completed' | 'Failed';
export type CheckpointPhase = 'Uploading' | 'Ready' | 'Failed';
/** Pending: task not running yet; Submitted: its update counts; Refused: its update was bad; Failed: no update will come. */
export type ParticipantPhase = 'Pending' | 'Running' | 'Submitted' | 'Refused' | 'Failed' | 'Stopped';

export interface Meta {
  name: string;
  uid: string;
  creationTimestamp: string;
  labels?: Record<string, string>;
}

export interface ParticipantSelector {
  /** A PropletGroup's name: its label selector picks the participants. */
  propletGroup?: string;
  matchLabels?: Record<string, string>;
  deviceTypes?: string[];
}

export interface FederatedJobSpec {
  experimentId: string;
  /** The initial model: sha256:<hex> in the model store, or an http(s):// or oci:// URL. */
  modelRef: string;
  /** The client module: sha256:<hex> in the module store, or an http(s):// or oci:// URL. */
  taskWasmImage: string;
  participants?: { propletId: string; namespace?: string }[];
  /** Instead of a list: the alive proplets that match, resolved at the start of each round. */
  participantSelector?: ParticipantSelector;
  hyperparams?: Record<string, unknown>;
  kOfN: number;
  timeoutSeconds: number;
  rounds: { total: number; strategy?: 'sequential' | 'parallel' };
  aggregator: { algorithm: string; config?: Record<string, unknown> };
  /** A failed round is run again (as a new TrainingRound) up to this many times in the job; then the job fails. Default 0. */
  roundRetries?: number;
}

export interface JobParticipantStatus {
  propletId: string;
  /** Rounds whose aggregate holds this participant's update. */
  roundsContributed: number;
  lastRound?: number;
  lastPhase?: ParticipantPhase;
}

export interface FederatedJobStatus {
  phase: JobPhase;
  currentRound: number;
  completedRounds: number;
  participants: JobParticipantStatus[];
  /** The model the next round trains (sha256:<hex>): the initial model, then each round's aggregate. */
  currentModelRef?: string;
  aggregatedModelRef?: string;
  retriesUsed: number;
  startTime?: string;
  completionTime?: string;
  /** Why the job is where it is, one CamelCase word (Pending, Running, RoundStarted, AllRoundsCompleted, RoundFailed, ModelUnavailable). */
  reason?: string;
  message?: string;
}

export interface FederatedJob {
  kind: 'FederatedJob';
  metadata: Meta;
  spec: FederatedJobSpec;
  status: FederatedJobStatus;
}

export interface TrainingRoundSpec {
  roundId: string;
  federatedJobRef?: { name: string };
  modelRef: string;
  taskWasmImage: string;
  participants: string[];
  hyperparams?: Record<string, unknown>;
  kOfN: number;
  timeoutSeconds: number;
  /** Not in the seed: the job's aggregator, carried so that a round stands alone. Default fedavg. */
  aggregator?: { algorithm: string; config?: Record<string, unknown> };
  /** Round number in its job, from 1. */
  round?: number;
}

export interface RoundParticipantStatus {
  propletId: string;
  taskId?: string;
  phase: ParticipantPhase;
  numSamples?: number;
  metrics?: Record<string, number>;
  reason?: string;
}

export interface RoundRefusals {
  late: number;
  notParticipant: number;
  stale: number;
  invalid: number;
}

export interface TrainingRoundStatus {
  phase: RoundPhase;
  startTime?: string;
  endTime?: string;
  deadline?: string;
  participants: RoundParticipantStatus[];
  updatesReceived: number;
  updatesRequired: number;
  aggregatedModelRef?: string;
  checkpoint?: string;
  /** Weighted mean client metrics of the updates that count. */
  metrics?: { totalSamples: number; loss?: number; accuracy?: number };
  refused: RoundRefusals;
  /** Times the round was started afresh after a control-plane restart. */
  restarts: number;
  /** Why the round is where it is, one CamelCase word (RoundStarted, Aggregating, RoundCompleted, Timeout, NotEnoughUpdates, ...). */
  reason?: string;
  message?: string;
}

export interface TrainingRound {
  kind: 'TrainingRound';
  metadata: Meta;
  spec: TrainingRoundSpec;
  status: TrainingRoundStatus;
}

export interface ModelCheckpoint {
  kind: 'ModelCheckpoint';
  metadata: Meta;
  spec: {
    federatedJobRef?: { name: string };
    roundRef?: { name: string };
    modelRef: string;
    algorithm: string;
    metadata: {
      totalSamples: number;
      numParticipants: number;
      participants: string[];
      round?: number;
      metrics: { loss?: number; accuracy?: number };
    };
  };
  status: { phase: CheckpointPhase; uploadTime?: string; sizeBytes?: number; sha256?: string; message?: string };
}

const DNS_NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const REF = /^(sha256:[0-9a-f]{64}|https?:\/\/\S+|oci:\/\/\S+)$/;

function isObj(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** A request body: JSON, or YAML (the seed's manifests as they are). */
export function parseDocument(text: string, contentType: string): unknown {
  if (contentType.includes('yaml')) {
    try {
      return parseYaml(text);
    } catch (e) {
      throw new InputError('body', `is not valid YAML: ${(e as Error).message.split('\n')[0]}`);
    }
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new InputError('body', `is not valid JSON: ${(e as Error).message}`);
  }
}

function int(o: Record<string, unknown>, key: string, field: string, min: number, max: number, dflt?: number): number {
  const v = o[key];
  if (v === undefined && dflt !== undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new InputError(field, `must be an integer from ${min} to ${max}${v === undefined ? ' (required)' : ''}`);
  return v;
}

function ref(v: unknown, field: string): string {
  if (typeof v !== 'string' || !REF.test(v)) throw new InputError(field, 'must be sha256:<64 hex> (in the store: POST /models, POST /modules), or an http(s):// or oci:// URL');
  return v;
}

function name(metadata: unknown, fallback: string | undefined): string {
  const n = isObj(metadata) ? metadata.name : undefined;
  const v = n ?? fallback;
  if (typeof v !== 'string' || v.length > 63 || !DNS_NAME.test(v)) throw new InputError('metadata.name', 'must be a DNS label: lowercase letters, digits and -, at most 63 characters');
  return v;
}

function kindOf(o: Record<string, unknown>, want: string): void {
  if (o.kind !== undefined && o.kind !== want) throw new InputError('kind', `must be ${want}, not ${JSON.stringify(o.kind)}`);
  if (o.apiVersion !== undefined && typeof o.apiVersion !== 'string') throw new InputError('apiVersion', 'must be a string');
}

function aggregator(v: unknown, field: string): { algorithm: string; config?: Record<string, unknown> } {
  if (!isObj(v)) throw new InputError(field, 'must be an object with algorithm (required)');
  const algorithm = v.algorithm;
  if (typeof algorithm !== 'string' || !(ALGORITHMS as readonly string[]).includes(algorithm)) throw new InputError(`${field}.algorithm`, `must be one of ${ALGORITHMS.join(', ')}`);
  const config = v.config ?? {};
  if (!isObj(config)) throw new InputError(`${field}.config`, 'must be an object');
  try {
    // checks the config against the algorithm's settings, on a one-value model
    createAggregator(algorithm, { format: MODEL_FORMAT, tensors: [{ name: 'x', shape: [], data: new Float32Array(1) }] }, config);
  } catch (e) {
    if (e instanceof AggregatorError) throw new InputError(`${field}.config`, e.message);
    throw e;
  }
  return Object.keys(config).length ? { algorithm, config } : { algorithm };
}

function hyperparams(v: unknown, field: string): Record<string, unknown> | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) throw new InputError(field, 'must be an object');
  if (JSON.stringify(v).length > 16 * 1024) throw new InputError(field, 'must be at most 16 KiB as JSON');
  return v;
}

function labels(v: unknown, field: string): Record<string, string> | undefined {
  if (v === undefined) return undefined;
  if (!isObj(v)) throw new InputError(field, 'must be an object of strings');
  for (const [k, x] of Object.entries(v)) if (typeof x !== 'string') throw new InputError(`${field}.${k}`, 'must be a string');
  return v as Record<string, string>;
}

/** The seed's FederatedJob (YAML or JSON, apiVersion/kind optional): metadata.name and spec. */
export function parseFederatedJob(body: unknown): { name: string; spec: FederatedJobSpec } {
  if (!isObj(body)) throw new InputError('body', 'must be a FederatedJob object');
  kindOf(body, 'FederatedJob');
  const s = body.spec;
  if (!isObj(s)) throw new InputError('spec', 'is required');
  const jobName = name(body.metadata, typeof body.name === 'string' ? body.name : undefined);
  if (typeof s.experimentId !== 'string' || s.experimentId.length === 0 || s.experimentId.length > 128) throw new InputError('spec.experimentId', 'must be a string of 1-128 characters');
  const spec: FederatedJobSpec = {
    experimentId: s.experimentId,
    modelRef: ref(s.modelRef, 'spec.modelRef'),
    taskWasmImage: ref(s.taskWasmImage, 'spec.taskWasmImage'),
    kOfN: int(s, 'kOfN', 'spec.kOfN', 1, 100_000),
    timeoutSeconds: int(s, 'timeoutSeconds', 'spec.timeoutSeconds', 1, 7 * 86_400),
    rounds: { total: 0 },
    aggregator: aggregator(s.aggregator, 'spec.aggregator'),
  };
  if (!isObj(s.rounds)) throw new InputError('spec.rounds', 'must be an object with total (required)');
  spec.rounds.total = int(s.rounds, 'total', 'spec.rounds.total', 1, 100_000);
  const strategy = s.rounds.strategy;
  if (strategy !== undefined) {
    if (strategy !== 'sequential' && strategy !== 'parallel') throw new InputError('spec.rounds.strategy', 'must be sequential or parallel');
    spec.rounds.strategy = strategy;
  }
  const hp = hyperparams(s.hyperparams, 'spec.hyperparams');
  if (hp) spec.hyperparams = hp;
  if (s.roundRetries !== undefined) spec.roundRetries = int(s, 'roundRetries', 'spec.roundRetries', 0, 1000);
  if (s.participants !== undefined) {
    if (!Array.isArray(s.participants) || s.participants.length === 0 || s.participants.length > 100_000) throw new InputError('spec.participants', 'must be a non-empty list');
    const seen = new Set<string>();
    spec.participants = s.participants.map((p, i) => {
      const o = typeof p === 'string' ? { propletId: p } : p;
      if (!isObj(o) || !isId(o.propletId)) throw new InputError(`spec.participants[${i}].propletId`, "must be a proplet id (1-128 characters without '+', '#', '/')");
      if (seen.has(o.propletId)) throw new InputError(`spec.participants[${i}].propletId`, `${o.propletId} is listed twice`);
      seen.add(o.propletId);
      return typeof o.namespace === 'string' ? { propletId: o.propletId, namespace: o.namespace } : { propletId: o.propletId };
    });
    if (spec.kOfN > spec.participants.length) throw new InputError('spec.kOfN', `is ${spec.kOfN}, more than the ${spec.participants.length} participants`);
  }
  if (s.participantSelector !== undefined) {
    const sel = s.participantSelector;
    if (!isObj(sel)) throw new InputError('spec.participantSelector', 'must be an object');
    if (spec.participants) throw new InputError('spec.participantSelector', 'give participants or participantSelector, not both');
    const out: ParticipantSelector = {};
    if (sel.propletGroup !== undefined) {
      if (!isId(sel.propletGroup)) throw new InputError('spec.participantSelector.propletGroup', 'must be a PropletGroup name');
      out.propletGroup = sel.propletGroup;
    }
    const ml = labels(sel.matchLabels, 'spec.participantSelector.matchLabels');
    if (ml) out.matchLabels = ml;
    if (sel.deviceTypes !== undefined) {
      if (!Array.isArray(sel.deviceTypes) || !sel.deviceTypes.every((d) => typeof d === 'string')) throw new InputError('spec.participantSelector.deviceTypes', 'must be a list of strings');
      out.deviceTypes = sel.deviceTypes as string[];
    }
    spec.participantSelector = out;
  }
  if (!spec.participants && !spec.participantSelector) throw new InputError('spec.participants', 'is required (or spec.participantSelector)');
  return { name: jobName, spec };
}

/** The seed's TrainingRound, standalone: metadata.name and spec. */
export function parseTrainingRound(body: unknown): { name: string; spec: TrainingRoundSpec } {
  if (!isObj(body)) throw new InputError('body', 'must be a TrainingRound object');
  kindOf(body, 'TrainingRound');
  const s = body.spec;
  if (!isObj(s)) throw new InputError('spec', 'is required');
  const roundName = name(body.metadata, typeof body.name === 'string' ? body.name : undefined);
  if (typeof s.roundId !== 'string' || s.roundId.length === 0 || s.roundId.length > 128) throw new InputError('spec.roundId', 'must be a string of 1-128 characters');
  if (!Array.isArray(s.participants) || s.participants.length === 0) throw new InputError('spec.participants', 'must be a non-empty list of proplet ids');
  const participants = s.participants.map((p, i) => {
    if (!isId(p)) throw new InputError(`spec.participants[${i}]`, 'must be a proplet id');
    return p;
  });
  if (new Set(participants).size !== participants.length) throw new InputError('spec.participants', 'lists a proplet twice');
  const spec: TrainingRoundSpec = {
    roundId: s.roundId,
    modelRef: ref(s.modelRef, 'spec.modelRef'),
    taskWasmImage: ref(s.taskWasmImage, 'spec.taskWasmImage'),
    participants,
    kOfN: int(s, 'kOfN', 'spec.kOfN', 1, participants.length),
    timeoutSeconds: int(s, 'timeoutSeconds', 'spec.timeoutSeconds', 1, 7 * 86_400),
  };
  if (s.federatedJobRef !== undefined) {
    if (!isObj(s.federatedJobRef) || typeof s.federatedJobRef.name !== 'string') throw new InputError('spec.federatedJobRef.name', 'must be a string');
    spec.federatedJobRef = { name: s.federatedJobRef.name };
  }
  const hp = hyperparams(s.hyperparams, 'spec.hyperparams');
  if (hp) spec.hyperparams = hp;
  if (s.aggregator !== undefined) spec.aggregator = aggregator(s.aggregator, 'spec.aggregator');
  return { name: roundName, spec };
}
