// What the FederatedJob and TrainingRound controllers send and write back,
// as pure functions: the control-plane manifest of a FederatedJob (POST
// /fl/jobs) or of a user's standalone TrainingRound (POST /fl/rounds), the
// job's status from the coordinator's record, and the TrainingRound and
// ModelCheckpoint resources of the coordinator's rounds and checkpoints,
// owned by the job (or by the standalone round). The FL kinds' spec and
// status have the fields of the control plane's records (types.ts), so
// values are copied as they are; only names differ: the control plane has
// one namespace-less name space and keeps a deleted job's rounds, so a job
// is named there after its namespace, name and uid (controlPlaneJobName),
// and its rounds and checkpoints come back as resources named after the
// Kubernetes job.

import type { ControlPlaneClient } from '../control-plane/client.ts';
import { dnsLabel, hashedLabel, labelValue } from './proplet-objects.ts';
import { setCondition, type ConditionInput } from './runtime/conditions.ts';
import {
  API_VERSION,
  type Condition,
  type FederatedJob,
  type FederatedJobStatus,
  type ModelCheckpoint,
  type ModelCheckpointStatus,
  type OwnerReference,
  type TrainingRound,
  type TrainingRoundStatus,
} from './types.ts';

/** The coordinator's records, as the HTTP API returns them. */
export type ControlPlaneJob = Awaited<ReturnType<ControlPlaneClient['getFlJob']>>;
export type ControlPlaneRound = Awaited<ReturnType<ControlPlaneClient['getFlRound']>>;
export type ControlPlaneCheckpoint = Awaited<ReturnType<ControlPlaneClient['flCheckpoints']>>['checkpoints'][number];

/** On rounds and checkpoints: the FederatedJob's name (the coordinator uses the same key). */
export const JOB_LABEL = 'propeller.absmach.io/federatedjob';
/** On rounds and checkpoints: the round number in the job. */
export const ROUND_LABEL = 'propeller.absmach.io/round';
/** On rounds and checkpoints: their name in the control plane (`propeller fl get NAME`). */
export const CONTROL_PLANE_NAME_ANNOTATION = 'propeller.absmach.io/control-plane-name';

const MAX_NAME = 253;

/**
 * The name in the control plane of a FederatedJob or standalone
 * TrainingRound: the control plane has one name space, and keeps the
 * rounds of a deleted job as history, so the name is NAMESPACE-NAME (cut to
 * 40 characters) and 10 hex digits of the SHA-256 of namespace, name and
 * uid, e.g. `default-mnist--3f2a9c1b0d`: the same for one resource whatever
 * adapter asks (never two jobs for one resource), another for a resource
 * created again under the same name. A job's rounds are `round-N-<that>`.
 */
function controlPlaneName(o: Pick<FederatedJob | TrainingRound, 'metadata'>): string {
  const { namespace = 'default', name, uid } = o.metadata;
  return hashedLabel(`${namespace}-${name}`, `${namespace}/${name}/${uid}`, 52);
}

export const controlPlaneJobName = (job: Pick<FederatedJob, 'metadata'>): string => controlPlaneName(job);
export const controlPlaneRoundName = (round: Pick<TrainingRound, 'metadata'>): string => controlPlaneName(round);

/** POST /fl/jobs: the seed's shape, spec as it is. */
export function federatedJobManifest(job: FederatedJob): { apiVersion: string; kind: 'FederatedJob'; metadata: { name: string }; spec: ControlPlaneJob['spec'] } {
  return { apiVersion: API_VERSION, kind: 'FederatedJob', metadata: { name: controlPlaneJobName(job) }, spec: job.spec };
}

/**
 * The job's status from the coordinator's record (observedGeneration is the
 * status writer's). The record says phase, reason and message; the Kubernetes
 * conditions (Ready, RoundActive, AggregationComplete) are made from them here,
 * each keeping its lastTransitionTime from `prev` while its status holds.
 */
export function federatedJobStatus(cp: ControlPlaneJob, prev?: Condition[], now?: Date): FederatedJobStatus {
  const { reason = cp.status.phase, ...status } = cp.status;
  const message = status.message ?? '';
  const want: ConditionInput[] = [];
  if (status.phase === 'Pending') want.push({ type: 'Ready', status: 'False', reason, message });
  else if (status.phase === 'Running') {
    want.push({ type: 'Ready', status: 'True', reason: 'Running', message: 'rounds are running' });
    if (status.currentRound > 0) want.push({ type: 'RoundActive', status: 'True', reason: 'RoundStarted', message: `round ${status.currentRound} of ${cp.spec.rounds.total} started` });
  } else {
    want.push({ type: 'Ready', status: status.phase === 'Completed' ? 'True' : 'False', reason, message });
    want.push({ type: 'RoundActive', status: 'False', reason, message });
  }
  if (status.completedRounds > 0 && status.aggregatedModelRef) {
    want.push({ type: 'AggregationComplete', status: 'True', reason: 'AggregationComplete', message: `round ${status.completedRounds} aggregated into ${status.aggregatedModelRef}` });
  }
  return { ...status, conditions: conditionsOf(want, prev, now) };
}

/** The conditions `want` says, and only those; each keeps its lastTransitionTime from `prev` while its status holds. */
function conditionsOf(want: ConditionInput[], prev: Condition[] | undefined, now?: Date): Condition[] {
  return want.map((c) => {
    const before = prev?.find((x) => x.type === c.type);
    return setCondition(before ? [before] : [], c, undefined, now)[0]!;
  });
}

/** A round's conditions (RoundActive, ParticipantsReady, AggregationComplete) from its phase, reason and message. */
function roundConditions(s: ControlPlaneRound['status'], prev?: Condition[], now?: Date): Condition[] {
  const reason = s.reason ?? s.phase;
  const message = s.message ?? '';
  const n = s.participants.length;
  const want: ConditionInput[] = [];
  if (s.phase === 'Running' || s.phase === 'Aggregating') want.push({ type: 'RoundActive', status: 'True', reason: 'RoundStarted', message: `waiting for ${s.updatesRequired} of ${n} updates` });
  else if (s.phase !== 'Pending') want.push({ type: 'RoundActive', status: 'False', reason, message });
  if (s.phase !== 'Pending' && s.startTime) want.push({ type: 'ParticipantsReady', status: 'Unknown', reason: 'TasksCreated', message: `${n} tasks created` });
  if (s.phase === 'Aggregating') want.push({ type: 'AggregationComplete', status: 'False', reason: 'Aggregating', message });
  if (s.phase === 'Completed') want.push({ type: 'AggregationComplete', status: 'True', reason: 'AggregationComplete', message });
  return conditionsOf(want, prev, now);
}

/**
 * The resource name of a round or checkpoint of the job: its control-plane
 * name with the control-plane job name replaced by the resource's, which
 * gives the seed's names (round-2-mnist, model-mnist-round-2; a retried
 * round round-2-mnist-retry-1). A retry's name is also round 2 of a job
 * named mnist-retry-1 in the same namespace: on AlreadyExists the controller
 * checks the owner's uid before it writes, and reports the clash.
 */
export function resourceName(job: FederatedJob, cpName: string): string {
  const cpJob = controlPlaneJobName(job);
  const name = cpName.includes(cpJob) ? cpName.replace(cpJob, job.metadata.name!) : cpName;
  return name.length <= MAX_NAME ? name : dnsLabel(name);
}

/** A FederatedJob, or a standalone TrainingRound, as the controlling owner of what is made for it. */
export function ownerOf(o: FederatedJob | TrainingRound): OwnerReference {
  return { apiVersion: o.apiVersion || API_VERSION, kind: o.kind, name: o.metadata.name!, uid: o.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

/** Whether a TrainingRound is a job's (made by the adapter for a FederatedJob), not a user's standalone round. */
export function isJobRound(round: TrainingRound): boolean {
  return round.metadata.ownerReferences?.some((r) => r.controller && r.kind === 'FederatedJob') ?? false;
}

function childMetadata(owner: FederatedJob | TrainingRound, name: string, controlPlaneName: string, round: number | undefined) {
  const jobLabel = owner.kind === 'FederatedJob' ? labelValue(owner.metadata.name!) : undefined;
  return {
    name,
    namespace: owner.metadata.namespace,
    labels: { ...(jobLabel ? { [JOB_LABEL]: jobLabel } : {}), ...(round !== undefined ? { [ROUND_LABEL]: String(round) } : {}) },
    annotations: { [CONTROL_PLANE_NAME_ANNOTATION]: controlPlaneName },
    ownerReferences: [ownerOf(owner)],
  };
}

/**
 * A round's status; with its owner (the job, or the standalone round's own
 * resource), status.checkpoint names the ModelCheckpoint resource.
 */
export function trainingRoundStatus(round: ControlPlaneRound, owner?: FederatedJob | TrainingRound, prev?: Condition[], now?: Date): TrainingRoundStatus {
  const { reason: _, ...rest } = round.status;
  const s: TrainingRoundStatus = { ...rest, conditions: roundConditions(round.status, prev, now) };
  if (!owner || !s.checkpoint) return s;
  return { ...s, checkpoint: owner.kind === 'FederatedJob' ? resourceName(owner, s.checkpoint) : roundCheckpointName(owner) };
}

/**
 * The TrainingRound resource of one of the job's rounds: named after the job,
 * owned by it, spec.federatedJobRef naming the resource. Create it without
 * status (the API drops status on create), then write status through the
 * status subresource.
 */
export function trainingRoundResource(job: FederatedJob, round: ControlPlaneRound, prev?: Condition[]): TrainingRound {
  return {
    apiVersion: API_VERSION,
    kind: 'TrainingRound',
    metadata: childMetadata(job, resourceName(job, round.metadata.name), round.metadata.name, round.spec.round),
    spec: { ...round.spec, federatedJobRef: { name: job.metadata.name! } },
    status: trainingRoundStatus(round, job, prev),
  };
}

/** The ModelCheckpoint resource of a round's aggregate: owned by the job, roundRef naming the TrainingRound resource. */
export function modelCheckpointResource(job: FederatedJob, checkpoint: ControlPlaneCheckpoint): ModelCheckpoint {
  const { spec } = checkpoint;
  const status: ModelCheckpointStatus = checkpoint.status;
  return {
    apiVersion: API_VERSION,
    kind: 'ModelCheckpoint',
    metadata: childMetadata(job, resourceName(job, checkpoint.metadata.name), checkpoint.metadata.name, spec.metadata.round),
    spec: {
      ...spec,
      federatedJobRef: { name: job.metadata.name! },
      ...(spec.roundRef ? { roundRef: { name: resourceName(job, spec.roundRef.name) } } : {}),
    },
    status,
  };
}

// --- standalone rounds -----------------------------------------------------------------

/** POST /fl/rounds for a TrainingRound a user created: its spec, without federatedJobRef (a standalone round drives no job). */
export function trainingRoundManifest(round: TrainingRound): { apiVersion: string; kind: 'TrainingRound'; metadata: { name: string }; spec: ControlPlaneRound['spec'] } {
  const { federatedJobRef: _, ...spec } = round.spec;
  return { apiVersion: API_VERSION, kind: 'TrainingRound', metadata: { name: controlPlaneRoundName(round) }, spec };
}

function roundCheckpointName(round: TrainingRound): string {
  const name = `model-${round.metadata.name}`;
  return name.length <= MAX_NAME ? name : dnsLabel(name);
}

/** The ModelCheckpoint of a standalone round's aggregate: model-ROUND, owned by the round. */
export function roundCheckpointResource(round: TrainingRound, checkpoint: ControlPlaneCheckpoint): ModelCheckpoint {
  const { federatedJobRef: _, ...spec } = checkpoint.spec;
  return {
    apiVersion: API_VERSION,
    kind: 'ModelCheckpoint',
    metadata: childMetadata(round, roundCheckpointName(round), checkpoint.metadata.name, spec.metadata.round),
    spec: { ...spec, roundRef: { name: round.metadata.name! } },
    status: checkpoint.status,
  };
}
