// FederatedJob, TrainingRound, ModelCheckpoint (propeller.absmach.io) → the control plane's
// FL coordinator (docs/fl.md §6), through its HTTP API.
//
// - FederatedJob → one control-plane job named controlPlaneJobName (from the
//   resource's namespace, name and uid): an adapter that restarts finds it
//   again by that name, so a resource never has two jobs. The coordinator's
//   rounds and checkpoints come back as TrainingRound and ModelCheckpoint
//   resources owned by the job; the job's status is the coordinator's, and
//   the transitions it sees are Events on the job (RoundStarted,
//   RoundCompleted, RoundFailed, AggregationComplete, JobCompleted,
//   JobFailed). Polled every pollMs until the job has ended and its rounds
//   and checkpoints are final. Deleting the resource deletes the job (its
//   running round is stopped); its rounds stay in the control plane as
//   history, and garbage collection removes the resources.
// - TrainingRound made by a user (not a job's) → a standalone control-plane
//   round (POST /fl/rounds), its status mirrored, its checkpoint a
//   ModelCheckpoint owned by it; deleting it deletes the round. A job's
//   rounds are the FederatedJob controller's: this one leaves them alone.
// - ModelCheckpoint made by a user → its model looked up in the control
//   plane's store: Ready with sha256 and size, or Failed (ModelNotFound).
//
// The spec is read when the control-plane object is created; changing it
// later changes nothing there (the coordinator's jobs and rounds are
// immutable).

import { ApiError } from '../../control-plane/client.ts';
import type { AdapterContext, ControllerFactory } from '../adapter.ts';
import { controlPlaneJobName, controlPlaneRoundName, federatedJobManifest, federatedJobStatus, isJobRound, JOB_LABEL, modelCheckpointResource, resourceName, roundCheckpointResource, trainingRoundManifest, trainingRoundResource, trainingRoundStatus } from '../fl-objects.ts';
import { labelValue } from '../proplet-objects.ts';
import { getCondition, setCondition } from '../runtime/conditions.ts';
import type { Controller, ReconcileResult } from '../runtime/controller.ts';
import { apiMessage, httpStatus, isConflict, isNotFound, type KubeObject } from '../runtime/kube.ts';
import { writeStatus } from '../runtime/status.ts';
import {
  FEDERATED_JOB,
  MODEL_CHECKPOINT,
  TRAINING_ROUND,
  type FederatedJob,
  type FederatedJobStatus,
  type ModelCheckpoint,
  type TrainingRound,
  type TrainingRoundStatus,
} from '../types.ts';

type Child = TrainingRound | ModelCheckpoint;
type ChildKind = typeof TRAINING_ROUND | typeof MODEL_CHECKPOINT;

const FINAL: ReadonlySet<string | undefined> = new Set(['Completed', 'Failed']);
const STARTED: ReadonlySet<string | undefined> = new Set(['Running', 'Aggregating', 'Completed']);

/** The control plane's answer, or undefined for a 404. */
async function found<T>(req: Promise<T>): Promise<T | undefined> {
  try {
    return await req;
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return undefined;
    throw e;
  }
}

const ignore404 = (e: unknown) => {
  if (!(e instanceof ApiError && e.status === 404)) throw e;
};

/** What the FL controllers share: creating refused specs' status, mirroring children, the round Events. */
function flTools(ctx: AdapterContext) {
  const { kube, events } = ctx;
  const at = (k: ChildKind, namespace: string) => ({ group: k.group, version: k.version, plural: k.plural, namespace });

  return {
    /** A spec the control plane refused: Failed, Ready False InvalidSpec, a Warning Event; nothing more until the spec changes. */
    async invalid(kind: typeof FEDERATED_JOB | typeof TRAINING_ROUND, obj: FederatedJob | TrainingRound, message: string): Promise<ReconcileResult> {
      const conditions = setCondition(obj.status?.conditions, { type: 'Ready', status: 'False', reason: 'InvalidSpec', message }, obj.metadata.generation);
      if (await writeStatus(kube, kind, obj, { phase: 'Failed', message, conditions })) await events.record(obj, 'Warning', 'InvalidSpec', message);
      return {};
    },

    /** Whether the resource was refused for the spec it has now. */
    refusedAsIs(obj: FederatedJob | TrainingRound): boolean {
      return getCondition(obj.status?.conditions, 'Ready')?.reason === 'InvalidSpec' && obj.status?.observedGeneration === obj.metadata.generation;
    },

    /**
     * The control-plane job or round of a resource: found by its name, else
     * created (409: another adapter just did). No record when there is
     * nothing to do: the spec was refused as it is, or the resource finished
     * and the control plane has forgotten it (its status stays).
     */
    async findOrCreate<R>(
      kind: typeof FEDERATED_JOB | typeof TRAINING_ROUND,
      obj: FederatedJob | TrainingRound,
      o: { name: string; get: () => Promise<R>; create: () => Promise<R> },
    ): Promise<{ record?: R; result?: ReconcileResult }> {
      const record = await found(o.get());
      if (record) return { record };
      const before = obj.status;
      if (this.refusedAsIs(obj) || (FINAL.has(before?.phase) && getCondition(before?.conditions, 'Ready')?.reason !== 'InvalidSpec')) return { result: {} };
      const what = kind === FEDERATED_JOB ? 'job' : 'round';
      try {
        const made = await o.create();
        await events.record(obj, 'Normal', kind === FEDERATED_JOB ? 'JobCreated' : 'RoundCreated', `control-plane ${what} ${o.name} created`);
        return { record: made };
      } catch (e) {
        if (e instanceof ApiError && e.status === 400) return { result: await this.invalid(kind, obj, `the control plane refused the ${what}: ${e.message}`) };
        if (!(e instanceof ApiError && e.status === 409)) throw e;
        return { record: await o.get() };
      }
    },

    /** The children of `owner` of a kind in its namespace, by name (by the job label when there is one, then by owner uid). */
    async children<T extends Child>(kind: ChildKind, owner: FederatedJob): Promise<Map<string, T>> {
      const label = labelValue(owner.metadata.name!);
      const list = (await kube.custom.listNamespacedCustomObject({ ...at(kind, owner.metadata.namespace!), ...(label ? { labelSelector: `${JOB_LABEL}=${label}` } : {}) })) as { items: T[] };
      return new Map(list.items.filter((c) => c.metadata.ownerReferences?.some((r) => r.uid === owner.metadata.uid)).map((c) => [c.metadata.name!, c]));
    },

    async get<T extends Child>(kind: ChildKind, namespace: string, name: string): Promise<T | undefined> {
      try {
        return (await kube.custom.getNamespacedCustomObject({ ...at(kind, namespace), name })) as T;
      } catch (e) {
        if (isNotFound(e)) return undefined;
        throw e;
      }
    },

    /**
     * Makes `want` exist (created without status, which the API drops) and
     * writes its status. The status it had before, or `clash` when the name
     * is another owner's or the API refuses the object, which a Warning
     * Event on the owner says (a repeat bumps its count).
     */
    async mirror<T extends Child>(kind: ChildKind, owner: KubeObject, want: T, existing: T | undefined): Promise<{ before?: T['status']; clash?: string }> {
      const namespace = want.metadata.namespace!;
      const name = want.metadata.name!;
      let have = existing;
      if (!have) {
        const { status: _, ...body } = want;
        try {
          have = (await kube.custom.createNamespacedCustomObject({ ...at(kind, namespace), body })) as T;
        } catch (e) {
          if (httpStatus(e) === 422) return this.clash(owner, `${kind.kind} ${name} was refused by the API server: ${apiMessage(e)}`);
          if (!isConflict(e)) throw e;
          have = (await this.get<T>(kind, namespace, name))!;
          if (!have) throw e;
        }
      }
      const uid = want.metadata.ownerReferences![0]!.uid;
      if (have.metadata.ownerReferences?.find((r) => r.controller)?.uid !== uid) return this.clash(owner, `${kind.kind} ${name} exists and belongs to another owner`);
      await writeStatus(kube, kind, have, want.status as Record<string, unknown>);
      return { before: existing?.status ?? have.status };
    },

    async clash(owner: KubeObject, message: string): Promise<{ clash: string }> {
      await events.record(owner, 'Warning', 'NameClash', message);
      return { clash: message };
    },

    /** Events on `target` for what happened to a round between two of its statuses. */
    async roundEvents(target: KubeObject, name: string, round: number | undefined, before: TrainingRoundStatus | undefined, now: TrainingRoundStatus | undefined): Promise<void> {
      if (!now) return;
      const which = `round ${round ?? 1} (${name})`;
      if (!STARTED.has(before?.phase) && STARTED.has(now.phase)) await events.record(target, 'Normal', 'RoundStarted', `${which} started: ${now.updatesRequired} of ${now.participants?.length ?? 0} updates needed`);
      if (before?.phase !== 'Completed' && now.phase === 'Completed') await events.record(target, 'Normal', 'RoundCompleted', `${which} completed: ${now.message ?? ''}`.trim());
      if (before?.phase !== 'Failed' && now.phase === 'Failed') await events.record(target, 'Warning', 'RoundFailed', `${which} failed: ${now.message ?? 'no reason given'}`);
    },

    async checkpointEvent(target: KubeObject, mc: ModelCheckpoint, before: ModelCheckpoint['status']): Promise<void> {
      if (before?.phase !== 'Ready' && mc.status?.phase === 'Ready') {
        await events.record(target, 'Normal', 'AggregationComplete', `round ${mc.spec.metadata?.round ?? 1} aggregated into ${mc.spec.modelRef} (ModelCheckpoint ${mc.metadata.name})`);
      }
    },
  };
}

export const federatedJobController: ControllerFactory = (ctx): Controller<FederatedJob> => {
  const { cp, kube, events } = ctx;
  const fl = flTools(ctx);

  async function jobEvents(job: FederatedJob, before: FederatedJobStatus | undefined, now: FederatedJobStatus): Promise<void> {
    if (before?.phase === now.phase) return;
    if (now.phase === 'Completed') await events.record(job, 'Normal', 'JobCompleted', now.message ?? `${now.completedRounds} rounds completed`);
    if (now.phase === 'Failed') await events.record(job, 'Warning', 'JobFailed', now.message ?? 'the job failed');
  }

  return {
    kind: FEDERATED_JOB,
    async reconcile(job) {
      const name = controlPlaneJobName(job);
      const before = job.status;
      const { record: cpJob, result } = await fl.findOrCreate(FEDERATED_JOB, job, { name, get: () => cp.getFlJob(name), create: () => cp.createFlJob(federatedJobManifest(job)) });
      if (!cpJob) return result;
      // rounds after the job: they are at least as new as its status
      const [{ rounds }, { checkpoints }] = await Promise.all([cp.flRounds(name), cp.flCheckpoints(name)]);
      const trs = await fl.children<TrainingRound>(TRAINING_ROUND, job);
      for (const r of rounds) {
        const have = trs.get(resourceName(job, r.metadata.name));
        const want = trainingRoundResource(job, r, have?.status?.conditions);
        const m = await fl.mirror(TRAINING_ROUND, job, want, have);
        if (!m.clash) await fl.roundEvents(job, want.metadata.name!, r.spec.round, m.before, want.status);
      }
      const mcs = await fl.children<ModelCheckpoint>(MODEL_CHECKPOINT, job);
      for (const c of checkpoints) {
        const want = modelCheckpointResource(job, c);
        const m = await fl.mirror(MODEL_CHECKPOINT, job, want, mcs.get(want.metadata.name!));
        if (!m.clash) await fl.checkpointEvent(job, want, m.before);
      }
      const now = federatedJobStatus(cpJob, before?.conditions);
      if (await writeStatus(kube, FEDERATED_JOB, job, now)) await jobEvents(job, before, now);
      const settled = FINAL.has(now.phase) && rounds.every((r) => FINAL.has(r.status.phase)) && checkpoints.every((c) => c.status.phase !== 'Uploading');
      return settled ? {} : { requeueAfterMs: ctx.pollMs };
    },

    async finalize(job) {
      const name = controlPlaneJobName(job);
      const had = await found(cp.deleteFlJob(name));
      if (had) await events.record(job, 'Normal', 'JobDeleted', `control-plane job ${name} deleted${FINAL.has(job.status?.phase) ? '' : ': its running round was stopped'}`);
      return {};
    },
  };
};

export const trainingRoundController: ControllerFactory = (ctx): Controller<TrainingRound> => {
  const { cp, kube } = ctx;
  const fl = flTools(ctx);

  return {
    kind: TRAINING_ROUND,
    async reconcile(tr) {
      if (isJobRound(tr)) return {};
      const name = controlPlaneRoundName(tr);
      const before = tr.status;
      const { record: r, result } = await fl.findOrCreate(TRAINING_ROUND, tr, { name, get: () => cp.getFlRound(name), create: () => cp.createFlRound(trainingRoundManifest(tr)) });
      if (!r) return result;
      const checkpoint = r.status.checkpoint ? await found(cp.getFlCheckpoint(r.status.checkpoint)) : undefined;
      if (checkpoint) {
        const want = roundCheckpointResource(tr, checkpoint);
        const m = await fl.mirror(MODEL_CHECKPOINT, tr, want, await fl.get<ModelCheckpoint>(MODEL_CHECKPOINT, tr.metadata.namespace!, want.metadata.name!));
        if (!m.clash) await fl.checkpointEvent(tr, want, m.before);
      }
      const now = trainingRoundStatus(r, tr, before?.conditions);
      if (await writeStatus(kube, TRAINING_ROUND, tr, now)) await fl.roundEvents(tr, tr.metadata.name!, r.spec.round, before, now);
      return FINAL.has(now.phase) && (!r.status.checkpoint || checkpoint?.status.phase !== 'Uploading') ? {} : { requeueAfterMs: ctx.pollMs };
    },

    async finalize(tr) {
      if (!isJobRound(tr)) await cp.deleteFlRound(controlPlaneRoundName(tr)).catch(ignore404);
      return {};
    },
  };
};

/** Whether a ModelCheckpoint is one the adapter made for a job or a standalone round. */
const isMirrored = (mc: ModelCheckpoint) => mc.metadata.ownerReferences?.some((r) => r.controller && (r.kind === 'FederatedJob' || r.kind === 'TrainingRound')) ?? false;

/**
 * A ModelCheckpoint a user created: its model is looked up in the control
 * plane's store (sha256:<hex> refs; other refs are not fetched), once per
 * spec when found, again on every resync when not. The adapter's own
 * checkpoints are the other controllers'.
 */
export const modelCheckpointController: ControllerFactory = (ctx): Controller<ModelCheckpoint> => {
  const { cp, kube } = ctx;
  return {
    kind: MODEL_CHECKPOINT,
    async reconcile(mc) {
      if (isMirrored(mc) || (mc.status?.observedGeneration === mc.metadata.generation && mc.status?.phase !== 'Failed')) return {};
      const ref = mc.spec.modelRef;
      const set = (status: 'True' | 'False' | 'Unknown', reason: string, message: string) =>
        setCondition(mc.status?.conditions, { type: 'Ready', status, reason, message }, mc.metadata.generation);
      if (!/^sha256:[0-9a-f]{64}$/.test(ref)) {
        const message = `${ref} is not checked: the adapter looks up only models in the control plane's store (sha256:<hex>)`;
        await writeStatus(kube, MODEL_CHECKPOINT, mc, { message, conditions: set('Unknown', 'NotVerified', message) });
        return {};
      }
      const bytes = await found(cp.pullModel(ref));
      if (!bytes) {
        const message = `model ${ref} is not in the control plane's store`;
        await writeStatus(kube, MODEL_CHECKPOINT, mc, { phase: 'Failed', message, conditions: set('False', 'ModelNotFound', message) });
        return {};
      }
      const message = `model stored in the control plane (${bytes.length} bytes)`;
      await writeStatus(kube, MODEL_CHECKPOINT, mc, { phase: 'Ready', sizeBytes: bytes.length, sha256: ref.slice('sha256:'.length), message, conditions: set('True', 'ModelStored', message) });
      return {};
    },
  };
};
