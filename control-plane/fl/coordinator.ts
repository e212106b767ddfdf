// The FL coordinator: runs a FederatedJob as a sequence of TrainingRounds. A
// round is one ordinary task per participant, pinned to it, with ROUND_ID,
// MODEL_URI and HYPERPARAMS in its env; the participants' updates arrive over
// MQTT and are folded into the round's aggregator as they come (FedAvg keeps
// one running sum, never n models). The first kOfN good updates close the
// round: the aggregate becomes a ModelCheckpoint in the content-addressed
// model store and the model of the next round.
//
// Every phase change is written to the store before anything depends on it
// (a running round's participant progress every 100 ms), so a control plane
// killed at any moment resumes each job from its last completed round; a
// round that was running is started afresh (its aggregator lived in memory),
// and updates from its earlier tasks are refused as stale.

import { randomUUID } from 'node:crypto';
import type { FlUpdate } from '../../protocol/index.ts';
import { decodeModel, encodeModel, modelDigest, type Model } from '../../protocol/model-format.ts';
import { tap } from '../events.ts';
import type { Logger } from '../log.ts';
import { TERMINAL, type Proplet, type PropletGroup, type Task } from '../model.ts';
import type { Store } from '../store.ts';
import { TaskError, type TaskService } from '../tasks.ts';
import { InputError } from '../task-input.ts';
import { createAggregator, keptFedAvgMemoryBytes, releaseFedAvgMemory, UpdateError, type Aggregator } from './aggregate.ts';
import {
  type FederatedJob,
  type FederatedJobSpec,
  type ModelCheckpoint,
  type RoundParticipantStatus,
  type TrainingRound,
  type TrainingRoundSpec,
} from './resources.ts';
import { IndexedRecords } from './records.ts';
import { isFinal, nextStep, onDeadline, onFolded, onTaskState, participantFailed, screenUpdate, stillToCome, type Folded, type RoundCommand } from './round-core.ts';

/** Why an update was not taken; 'accepted' when it counts, 'partial' for a part of a streamed one. */
export type UpdateOutcome = 'accepted' | 'partial' | 'duplicate' | 'unknown_round' | 'late' | 'not_participant' | 'stale' | 'invalid' | 'shape' | 'non_finite' | 'samples' | 'capacity' | 'failed_participant';

export interface FlMetricsSink {
  update(outcome: UpdateOutcome): void;
  roundEnded(phase: 'Completed' | 'Failed', seconds: number): void;
  taskCreated(): void;
  aggregation(seconds: number): void;
}

export interface FlCoordinatorOptions {
  store: Store;
  tasks: TaskService;
  proplets: () => Iterable<Proplet>;
  groups: (name: string) => PropletGroup | undefined;
  /** Bytes behind an http(s):// or oci:// reference (the initial model, a client module). */
  fetch: (url: string) => Promise<Uint8Array>;
  /** Where proplets download a stored model: the MODEL_URI of round tasks. */
  modelUri: (ref: string) => string;
  metrics: FlMetricsSink;
  log: Logger;
  now?: () => number;
  /** A task that completed without sending an update is counted as failed after this (default 2 s). */
  noUpdateGraceMs?: number;
  /** Replicas: brings a model or module another replica stored into this one's store. */
  load?: (digest: string) => Promise<void>;
}

/** What a running round keeps in memory only. */
interface LiveRound {
  /**
   * The round's working copy while it runs. Participant-level changes are
   * written to the store at most every FLUSH_MS (a restart starts a running
   * round afresh anyway); phase changes at once.
   */
  round: TrainingRound;
  flush?: NodeJS.Timeout;
  aggregator: Aggregator;
  timer?: NodeJS.Timeout;
  /** Streamed updates: parts seen per participant. */
  streams: Map<string, { parts: number; seen: Set<number> }>;
  /** Participant by task id, for task events. */
  byTask: Map<string, string>;
  graceTimers: Set<NodeJS.Timeout>;
}

/** On a round's tasks and on checkpoints: the job and the round they belong to. */
export const JOB_LABEL = 'fl-job';
export const ROUND_LABEL = 'fl-round';

const MAX_MODEL_BYTES = 16 * 1024 * 1024;
const FLUSH_MS = 100;

export function roundName(job: string, n: number, retry: number): string {
  return retry === 0 ? `round-${n}-${job}` : `round-${n}-${job}-retry-${retry}`;
}

export function checkpointName(job: string, n: number): string {
  return `model-${job}-round-${n}`;
}

export class FlCoordinator {
  private live = new Map<string, LiveRound>();
  /** Jobs whose next step is in progress (fetching the initial model): one advance at a time. */
  private advancing = new Set<string>();
  /** Jobs asked to advance while they were advancing: they go again right after. */
  private again = new Set<string>();
  private readonly now: () => number;
  private closed = false;
  /** Replicas: only the lease's owner runs rounds and moves jobs on (replica.ts); the others keep the records fresh. */
  owner: () => boolean = () => true;

  /** The FL records, indexed in memory: queries and metrics do not parse the store's tables. */
  private readonly jobRecs: IndexedRecords<FederatedJob>;
  private readonly roundRecs: IndexedRecords<TrainingRound>;
  private readonly checkpointRecs: IndexedRecords<ModelCheckpoint>;

  constructor(private o: FlCoordinatorOptions) {
    this.now = o.now ?? Date.now;
    this.jobRecs = new IndexedRecords(o.store.flJobs, (j) => j.metadata.name);
    this.roundRecs = new IndexedRecords(o.store.flRounds);
    this.checkpointRecs = new IndexedRecords(o.store.flCheckpoints);
    o.tasks.on('changed', (t) => this.onTask(t));
  }

  // --- queries --------------------------------------------------------------

  /** Every job, to read (not to change): no copy, no parse. */
  jobs(): FederatedJob[] {
    return this.jobRecs.view();
  }
  /** Jobs and rounds by phase, counted on write (for metrics scrapes). */
  jobPhaseCounts(): ReadonlyMap<string, number> {
    return this.jobRecs.phaseCounts();
  }
  roundPhaseCounts(): ReadonlyMap<string, number> {
    return this.roundRecs.phaseCounts();
  }
  job(name: string): FederatedJob {
    const j = this.jobRecs.get(name);
    if (!j) throw new TaskError('not_found', `FederatedJob ${name} not found`);
    return j;
  }
  /** Rounds (of one job: from its index, not a scan), to read; a running one as it is now. */
  rounds(job?: string): TrainingRound[] {
    return this.roundRecs.view(job).map((r) => this.fresh(r));
  }
  round(name: string): TrainingRound {
    const r = this.roundRecs.get(name);
    if (!r) throw new TaskError('not_found', `TrainingRound ${name} not found`);
    return this.fresh(r);
  }
  /** A running round as it is now, not as last flushed. */
  private fresh(r: TrainingRound): TrainingRound {
    const live = this.live.get(r.metadata.name);
    return live ? structuredClone(live.round) : r;
  }
  /** A round to change: the live working copy while it runs, else the stored one. */
  private working(name: string): TrainingRound | undefined {
    return this.live.get(name)?.round ?? this.roundRecs.get(name);
  }
  checkpoint(name: string): ModelCheckpoint {
    const c = this.checkpointRecs.get(name);
    if (!c) throw new TaskError('not_found', `ModelCheckpoint ${name} not found`);
    return c;
  }
  checkpoints(job?: string): ModelCheckpoint[] {
    return this.checkpointRecs.view(job);
  }
  /** A record another replica changed in the store (its change feed): the index reads it again. */
  reloadRecord(kind: 'fl-job' | 'fl-round' | 'fl-checkpoint', name: string): void {
    (kind === 'fl-job' ? this.jobRecs : kind === 'fl-round' ? this.roundRecs : this.checkpointRecs).reload(name);
  }
  get activeRounds(): number {
    return this.live.size;
  }

  /** Aggregation memory kept between the rounds of running jobs (released when the last one ends). */
  get keptMemoryBytes(): number {
    return keptFedAvgMemoryBytes();
  }

  // --- models ---------------------------------------------------------------

  /** Stores a model (compact CBOR) after checking it decodes; returns its ref. */
  putModel(bytes: Uint8Array): string {
    try {
      decodeModel(bytes);
    } catch (e) {
      throw new InputError('model', `is not a propeller-model/v1 model: ${(e as Error).message}`);
    }
    const ref = modelDigest(bytes);
    this.o.store.putModule(ref, bytes);
    return ref;
  }

  model(ref: string): Uint8Array | undefined {
    return this.o.store.getModule(ref);
  }

  // --- jobs -----------------------------------------------------------------

  createJob(name: string, spec: FederatedJobSpec): FederatedJob {
    if (this.jobRecs.get(name)) throw new TaskError('conflict', `FederatedJob ${name} already exists`);
    const at = this.iso();
    const job: FederatedJob = {
      kind: 'FederatedJob',
      metadata: { name, uid: randomUUID(), creationTimestamp: at },
      spec,
      status: {
        phase: 'Pending',
        currentRound: 0,
        completedRounds: 0,
        participants: (spec.participants ?? []).map((p) => ({ propletId: p.propletId, roundsContributed: 0 })),
        retriesUsed: 0,
        reason: 'Pending',
        message: 'fetching the initial model',
      },
    };
    this.saveJob(job);
    this.o.log('info', 'federated job created', { job: name, rounds: spec.rounds.total, k: spec.kOfN });
    void this.advance(name);
    return job;
  }

  /** Deletes a job: its running round is stopped first (its tasks too). Rounds and checkpoints stay, as history. */
  deleteJob(name: string): void {
    const job = this.job(name);
    for (const r of this.rounds(name)) {
      const w = isFinal(r) ? undefined : this.working(r.metadata.name); // a copy to change, not the index's record
      if (w) this.failRound(w, 'Deleted', `FederatedJob ${name} was deleted`, false);
    }
    this.jobRecs.delete(job.metadata.name);
    tap(this, 'fl-removed', 'job', job.metadata.name);
    this.releaseMemoryWhenIdle();
  }

  /** The kernel memory kept between rounds (aggregate.ts) is for running jobs only. */
  private releaseMemoryWhenIdle(): void {
    if (!this.jobRecs.list().some((x) => x.status.phase === 'Pending' || x.status.phase === 'Running')) releaseFedAvgMemory();
  }

  /** A standalone TrainingRound (the seed allows one without a job driving it). */
  createRound(name: string, spec: TrainingRoundSpec): TrainingRound {
    if (this.roundRecs.get(name)) throw new TaskError('conflict', `TrainingRound ${name} already exists`);
    const round = this.newRound(name, spec);
    void this.startRound(round.metadata.name);
    return round;
  }

  deleteRound(name: string): void {
    const r = this.round(name);
    if (!isFinal(r)) this.failRound(r, 'Deleted', `TrainingRound ${name} was deleted`, false);
    this.roundRecs.delete(name);
    tap(this, 'fl-removed', 'round', name);
  }

  /** After a (re)start, or when this replica becomes the owner: resume every job and round from what the store says. */
  resume(): void {
    if (!this.owner()) return;
    for (const r of this.roundRecs.list()) {
      if (isFinal(r) || this.live.has(r.metadata.name)) continue;
      const job = r.spec.federatedJobRef && this.jobRecs.get(r.spec.federatedJobRef.name);
      if (r.spec.federatedJobRef && !job) continue;
      r.status.restarts++;
      this.o.log('warn', 'round restarted after a control-plane restart', { round: r.metadata.name });
      this.resetRound(r, 'the control plane restarted during the round');
      void this.startRound(r.metadata.name);
    }
    for (const j of this.jobRecs.list()) if (j.status.phase === 'Pending' || j.status.phase === 'Running') void this.advance(j.metadata.name);
  }

  /** Replicas: a record another replica wrote (created through its API): the owner moves it on. */
  adopted(kind: 'fl-job' | 'fl-round' | 'fl-checkpoint', name: string): void {
    if (!this.owner()) return;
    if (kind === 'fl-job' && this.jobRecs.get(name)) void this.advance(name);
    if (kind === 'fl-round' && !this.live.has(name) && this.roundRecs.get(name)?.status.phase === 'Pending') void this.startRound(name);
  }

  close(): void {
    this.closed = true;
    for (const l of this.live.values()) this.disarm(l);
    this.live.clear();
    releaseFedAvgMemory();
  }

  /**
   * Moves a job forward from its stored state: fetches its initial model,
   * starts the next round, or ends it. Idempotent: several calls start at most
   * one round.
   */
  private async advance(name: string): Promise<void> {
    if (this.closed || !this.owner()) return;
    if (this.advancing.has(name)) {
      this.again.add(name);
      return;
    }
    this.advancing.add(name);
    try {
      let step = nextStep(this.jobRecs.get(name), this.roundRecs.view(name));
      if (step.t === 'fetch-model') {
        let ref: string;
        try {
          ref = await this.storeRef(this.jobRecs.get(name)!.spec.modelRef, 'model');
        } catch (e) {
          return this.endJob(name, 'Failed', 'ModelUnavailable', `initial model ${this.jobRecs.get(name)?.spec.modelRef}: ${(e as Error).message}`);
        }
        const j = this.jobRecs.get(name);
        if (!j) return;
        j.status.currentModelRef = ref;
        this.saveJob(j);
        step = nextStep(j, this.roundRecs.view(name));
      }
      if (step.t === 'wait' || step.t === 'fetch-model') return;
      const j = this.jobRecs.get(name)!;
      if (step.t === 'begin' || step.t === 'end') {
        // the round's completion was stored, the job's was not: catch up
        if (step.catchUp) {
          this.countCompleted(j, step.catchUp);
          this.saveJob(j);
        }
      }
      if (step.t === 'end') return this.endJob(name, step.phase, step.reason, step.message);
      if (step.retry > 0) {
        j.status.retriesUsed++;
        this.saveJob(j);
        return this.beginRound(j, step.n, step.retry);
      }
      if (step.start) {
        j.status.phase = 'Running';
        j.status.startTime = this.iso();
        j.status.reason = 'Running';
        j.status.message = 'rounds are running';
        this.saveJob(j);
      }
      this.beginRound(j, step.n, 0);
    } finally {
      this.advancing.delete(name);
      if (this.again.delete(name)) void this.advance(name);
    }
  }

  private beginRound(job: FederatedJob, n: number, retry: number): void {
    const spec: TrainingRoundSpec = {
      roundId: `round-${n}`,
      federatedJobRef: { name: job.metadata.name },
      modelRef: job.status.currentModelRef!,
      taskWasmImage: job.spec.taskWasmImage,
      participants: this.participantsOf(job),
      kOfN: job.spec.kOfN,
      timeoutSeconds: job.spec.timeoutSeconds,
      aggregator: job.spec.aggregator,
      round: n,
    };
    if (job.spec.hyperparams) spec.hyperparams = job.spec.hyperparams;
    const round = this.newRound(roundName(job.metadata.name, n, retry), spec);
    round.metadata.labels = { [JOB_LABEL]: job.metadata.name };
    this.saveRound(round);
    job.status.currentRound = n;
    job.status.reason = 'RoundStarted';
    job.status.message = `round ${n} of ${job.spec.rounds.total} started`;
    this.saveJob(job);
    void this.startRound(round.metadata.name);
  }

  private participantsOf(job: FederatedJob): string[] {
    if (job.spec.participants) return job.spec.participants.map((p) => p.propletId);
    const sel = job.spec.participantSelector!;
    const group = sel.propletGroup ? this.o.groups(sel.propletGroup) : undefined;
    const labels = { ...(group?.selector.match_labels ?? {}), ...(sel.matchLabels ?? {}) };
    const out: string[] = [];
    for (const p of this.o.proplets()) {
      if (p.state !== 'alive') continue;
      if (sel.propletGroup && !group) continue;
      if (sel.deviceTypes && !sel.deviceTypes.includes(p.device_type)) continue;
      if (Object.entries(labels).some(([k, v]) => p.labels[k] !== v)) continue;
      out.push(p.id);
    }
    return out.sort();
  }

  private endJob(name: string, phase: 'Completed' | 'Failed', reason: string, message: string): void {
    const j = this.jobRecs.get(name);
    if (!j) return;
    const at = this.iso();
    j.status.phase = phase;
    j.status.completionTime = at;
    j.status.message = message;
    j.status.reason = reason;
    this.saveJob(j);
    this.o.log(phase === 'Completed' ? 'info' : 'warn', `federated job ${phase.toLowerCase()}`, { job: name, reason, message });
    this.releaseMemoryWhenIdle();
  }

  private countCompleted(job: FederatedJob, r: TrainingRound): void {
    job.status.completedRounds = r.spec.round ?? job.status.completedRounds + 1;
    job.status.aggregatedModelRef = r.status.aggregatedModelRef;
    job.status.currentModelRef = r.status.aggregatedModelRef;
    for (const p of r.status.participants) {
      let js = job.status.participants.find((x) => x.propletId === p.propletId);
      if (!js) job.status.participants.push((js = { propletId: p.propletId, roundsContributed: 0 }));
      js.lastRound = job.status.completedRounds;
      js.lastPhase = p.phase;
      if (p.phase === 'Submitted') js.roundsContributed++;
    }

  }

  // --- rounds ---------------------------------------------------------------

  private newRound(name: string, spec: TrainingRoundSpec): TrainingRound {
    const at = this.iso();
    const round: TrainingRound = {
      kind: 'TrainingRound',
      metadata: { name, uid: randomUUID(), creationTimestamp: at },
      spec,
      status: {
        phase: 'Pending',
        participants: spec.participants.map((propletId) => ({ propletId, phase: 'Pending' })),
        updatesReceived: 0,
        updatesRequired: spec.kOfN,
        refused: { late: 0, notParticipant: 0, stale: 0, invalid: 0 },
        restarts: 0,
      },
    };
    this.saveRound(round);
    return round;
  }

  /** Creates the round's tasks and opens it for updates. */
  private async startRound(name: string): Promise<void> {
    let r = this.roundRecs.get(name);
    if (!r || r.status.phase !== 'Pending' || this.closed || !this.owner()) return;
    const { spec } = r;
    if (spec.participants.length < spec.kOfN) {
      return this.failRound(r, 'NotEnoughParticipants', `${spec.participants.length} participants available, ${spec.kOfN} required`);
    }
    let reference: Model;
    let moduleBytes: Uint8Array | undefined;
    try {
      const modelRef = await this.storeRef(spec.modelRef, 'model');
      reference = decodeModel(this.o.store.getModule(modelRef)!);
      if (modelRef !== spec.modelRef) spec.modelRef = modelRef;
      if (spec.taskWasmImage.startsWith('sha256:')) {
        if (!this.o.store.getModule(spec.taskWasmImage)) await this.o.load?.(spec.taskWasmImage);
        moduleBytes = this.o.store.getModule(spec.taskWasmImage);
        if (!moduleBytes) throw new Error(`module ${spec.taskWasmImage} is not in the module store (POST /modules)`);
      }
    } catch (e) {
      r = this.roundRecs.get(name);
      if (r) this.failRound(r, 'ModelUnavailable', (e as Error).message);
      return;
    }
    r = this.roundRecs.get(name);
    if (!r || r.status.phase !== 'Pending' || this.closed) return;
    let aggregator: Aggregator;
    try {
      aggregator = createAggregator(spec.aggregator?.algorithm ?? 'fedavg', reference, spec.aggregator?.config);
    } catch (e) {
      return this.failRound(r, 'InvalidAggregator', (e as Error).message);
    }
    const at = this.now();
    r.status.phase = 'Running';
    r.status.startTime = new Date(at).toISOString();
    r.status.deadline = new Date(at + spec.timeoutSeconds * 1000).toISOString();
    const live: LiveRound = { round: r, aggregator, streams: new Map(), byTask: new Map(), graceTimers: new Set() };
    const hyper = JSON.stringify(spec.hyperparams ?? {});
    const modelUri = this.o.modelUri(spec.modelRef);
    spec.participants.forEach((propletId, index) => {
      const env: Record<string, string> = {
        ROUND_ID: name,
        MODEL_URI: modelUri,
        MODEL_DIGEST: spec.modelRef,
        HYPERPARAMS: substitute(hyper, index, spec.participants.length),
        FL_INDEX: String(index),
        FL_REPLICAS: String(spec.participants.length),
      };
      if (spec.federatedJobRef) env.FL_JOB = spec.federatedJobRef.name;
      const task = this.o.tasks.create({
        name: `${name}-${index}`,
        ...(moduleBytes ? { file: moduleBytes } : { image_url: spec.taskWasmImage }),
        cli_args: [],
        inputs: [],
        env,
        daemon: false,
        proplet_id: propletId,
        resources: {},
        labels: { [ROUND_LABEL]: name, ...(spec.federatedJobRef ? { [JOB_LABEL]: spec.federatedJobRef.name } : {}) },
        timeout_ms: spec.timeoutSeconds * 1000,
      });
      this.o.metrics.taskCreated();
      const p = r!.status.participants[index]!;
      p.taskId = task.id;
      p.phase = 'Pending';
      live.byTask.set(task.id, propletId);
    });
    r.status.reason = 'RoundStarted';
    r.status.message = `waiting for ${spec.kOfN} of ${spec.participants.length} updates`;
    this.live.set(name, live);
    this.saveRound(r);
    live.timer = setTimeout(() => this.onDeadline(name), Math.max(0, spec.timeoutSeconds * 1000));
    this.o.log('info', 'round started', { round: name, participants: spec.participants.length, k: spec.kOfN });
    for (const p of r.status.participants) {
      try {
        this.o.tasks.start(p.taskId!);
      } catch (e) {
        if (!(e instanceof TaskError)) throw e;
        this.participantFailed(name, p.propletId, e.message);
      }
    }
  }

  /** A model or module reference as a store digest: fetched and stored first when it is a URL. */
  private async storeRef(ref: string, what: 'model' | 'module'): Promise<string> {
    if (ref.startsWith('sha256:')) {
      if (!this.o.store.getModule(ref)) await this.o.load?.(ref);
      if (!this.o.store.getModule(ref)) throw new Error(`${ref} is not in the ${what} store`);
      return ref;
    }
    const bytes = await this.o.fetch(ref);
    if (bytes.length > MAX_MODEL_BYTES) throw new Error(`${bytes.length} bytes, more than ${MAX_MODEL_BYTES}`);
    return this.putModel(bytes);
  }

  private onDeadline(name: string): void {
    const r = this.working(name);
    if (r) this.execute(r, onDeadline(r));
  }

  private onTask(t: Task): void {
    const name = t.labels[ROUND_LABEL];
    if (!name) return;
    const live = this.live.get(name);
    const propletId = live?.byTask.get(t.id);
    if (!live || !propletId) return;
    this.execute(live.round, onTaskState(live.round, propletId, t.id, t.state, t.error));
  }

  private participantFailed(name: string, propletId: string, reason: string, taskId?: string): void {
    const r = this.working(name);
    if (r) this.execute(r, participantFailed(r, propletId, reason, taskId));
  }

  /** Carries out the round core's commands. */
  private execute(r: TrainingRound, commands: RoundCommand[]): void {
    const name = r.metadata.name;
    for (const c of commands) {
      switch (c.t) {
        case 'touch':
          this.touchRound(r);
          break;
        case 'log':
          this.o.log(c.level, c.msg, c.fields);
          break;
        case 'abort-update': {
          const live = this.live.get(name);
          live?.streams.delete(c.propletId);
          live?.aggregator.abort(c.propletId);
          break;
        }
        case 'await-update': {
          const live = this.live.get(name);
          if (!live) break;
          const timer = setTimeout(() => {
            live.graceTimers.delete(timer);
            this.participantFailed(name, c.propletId, 'the task completed without sending an update', c.taskId);
          }, this.o.noUpdateGraceMs ?? 2000);
          live.graceTimers.add(timer);
          break;
        }
        // closing a round is the owner's: a paused ex-owner's close is refused when it commits
        case 'aggregate': {
          const live = this.live.get(name);
          if (live) this.o.store.asOwner(() => this.aggregate(r, live));
          break;
        }
        case 'fail-round':
          if (!isFinal(r)) this.o.store.asOwner(() => this.failRound(r, c.reason, c.message));
          break;
        case 'fold':
          break; // only from applyUpdate, which folds itself
      }
    }
  }

  // --- updates --------------------------------------------------------------

  /** One fl.update message (already validated by the protocol layer). */
  onUpdate(msg: FlUpdate): UpdateOutcome {
    // replicas: every replica hears every update; the owner runs the rounds, the others leave them to it
    if (!this.owner() && !this.live.has(msg.round_id)) return 'unknown_round';
    const outcome = this.applyUpdate(msg);
    this.o.metrics.update(outcome);
    if (outcome !== 'accepted' && outcome !== 'partial' && outcome !== 'duplicate') {
      this.o.log('warn', 'fl update refused', { round: msg.round_id, proplet_id: msg.proplet_id, reason: outcome });
    }
    return outcome;
  }

  /** The task a participant runs in a round: Propeller's root FL updates name none. */
  taskOf(round: string, propletId: string): string | undefined {
    return this.working(round)?.status.participants.find((p) => p.propletId === propletId)?.taskId;
  }

  /**
   * An update that came but cannot be aggregated (a format we cannot read): the
   * participant is refused with the reason, as one with a bad model is.
   */
  refuseUpdate(msg: Pick<FlUpdate, 'round_id' | 'proplet_id' | 'task_id'>, reason: string, message: string): UpdateOutcome {
    const r = this.working(msg.round_id);
    let outcome: UpdateOutcome = 'unknown_round';
    if (r) {
      const screened = screenUpdate(r, msg, this.live.has(r.metadata.name));
      this.execute(r, screened.commands);
      outcome = screened.verdict ?? 'invalid';
      if (!screened.verdict) {
        const refused = onFolded(r, msg.proplet_id, { t: 'refused', reason, message, verdict: 'invalid' });
        this.execute(r, refused.commands);
      }
    }
    this.o.metrics.update(outcome);
    this.o.log('warn', 'fl update refused', { round: msg.round_id, proplet_id: msg.proplet_id, reason: outcome, detail: `${reason}: ${message}` });
    return outcome;
  }

  private applyUpdate(msg: FlUpdate): UpdateOutcome {
    const r = this.working(msg.round_id);
    if (!r) return 'unknown_round';
    const live = this.live.get(r.metadata.name);
    const screened = screenUpdate(r, msg, live !== undefined);
    this.execute(r, screened.commands);
    if (screened.verdict || !live) return screened.verdict ?? 'late';
    const folded = this.fold(live, msg, stillToCome(r, msg.proplet_id));
    const { verdict, commands } = onFolded(r, msg.proplet_id, folded);
    this.execute(r, commands);
    return verdict;
  }

  /** Folds one update (or one part of a streamed one) into the round's aggregator; `others`: updates that may still come. */
  private fold(live: LiveRound, msg: FlUpdate, others: number): Folded {
    const metrics = clientMetrics(msg.metrics);
    const agg = live.aggregator;
    const id = msg.proplet_id;
    try {
      if (msg.num_samples === undefined) throw new UpdateError('samples', 'num_samples is required');
      if (msg.model !== undefined) {
        if (msg.parts !== undefined) throw new UpdateError('invalid', 'give model or parts, not both');
        agg.addEncoded(id, msg.num_samples, msg.model, metrics);
      } else {
        if (msg.parts === undefined || msg.part === undefined || msg.tensor === undefined || msg.offset === undefined || msg.data === undefined) {
          throw new UpdateError('invalid', 'an update needs model, or parts with part, tensor, offset and data');
        }
        let s = live.streams.get(id);
        if (!s) {
          agg.begin(id, msg.num_samples, metrics, others);
          live.streams.set(id, (s = { parts: msg.parts, seen: new Set() }));
        }
        if (msg.parts !== s.parts || msg.part >= s.parts) throw new UpdateError('shape', `part ${msg.part} of ${msg.parts} does not fit a stream of ${s.parts} parts`);
        if (s.seen.has(msg.part)) return { t: 'duplicate-part' };
        s.seen.add(msg.part);
        agg.addChunk(id, msg.tensor, msg.offset, msg.data);
        if (s.seen.size < s.parts) return { t: 'partial' };
        live.streams.delete(id);
        agg.commit(id);
      }
    } catch (e) {
      if (!(e instanceof UpdateError)) throw e;
      const verdict = e.reason === 'shape' || e.reason === 'non_finite' || e.reason === 'samples' || e.reason === 'capacity' ? e.reason : 'invalid';
      return { t: 'refused', reason: e.reason, message: e.message, verdict };
    }
    return { t: 'complete', numSamples: msg.num_samples, ...(msg.metrics ? { metrics: msg.metrics } : {}), count: agg.count };
  }

  /** k updates are in: the aggregate becomes a checkpoint and the round completes. */
  private aggregate(r: TrainingRound, live: LiveRound): void {
    const name = r.metadata.name;
    r.status.phase = 'Aggregating';
    r.status.reason = 'Aggregating';
    r.status.message = `aggregating ${live.aggregator.count} updates`;
    this.saveRound(r);
    const started = performance.now();
    const m = live.aggregator.metrics();
    const participants = live.aggregator.participants();
    let bytes: Uint8Array;
    try {
      // encoded inside finishWith: fedavg then keeps its memory for the job's next round
      bytes = live.aggregator.finishWith((model) =>
        encodeModel({ ...model, meta: { ...(model.meta ?? {}), round: r.spec.round ?? 1, ...(r.spec.federatedJobRef ? { job: r.spec.federatedJobRef.name } : {}) } }),
      );
    } catch (e) {
      return this.failRound(r, 'AggregationFailed', (e as Error).message);
    }
    this.o.metrics.aggregation((performance.now() - started) / 1000);
    const ref = modelDigest(bytes);
    const job = r.spec.federatedJobRef?.name;
    const n = r.spec.round ?? 1;
    const cp: ModelCheckpoint = {
      kind: 'ModelCheckpoint',
      metadata: { name: job ? checkpointName(job, n) : `model-${name}`, uid: randomUUID(), creationTimestamp: this.iso(), labels: job ? { [JOB_LABEL]: job, [ROUND_LABEL]: name } : { [ROUND_LABEL]: name } },
      spec: {
        ...(job ? { federatedJobRef: { name: job } } : {}),
        roundRef: { name },
        modelRef: ref,
        algorithm: live.aggregator.algorithm,
        metadata: {
          totalSamples: m.totalSamples,
          numParticipants: m.updates,
          participants,
          round: n,
          metrics: { ...(m.loss !== undefined ? { loss: m.loss } : {}), ...(m.accuracy !== undefined ? { accuracy: m.accuracy } : {}) },
        },
      },
      status: { phase: 'Uploading' },
    };
    this.saveCheckpoint(cp);
    try {
      this.o.store.putModule(ref, bytes);
      cp.status = { phase: 'Ready', uploadTime: this.iso(), sizeBytes: bytes.length, sha256: ref.slice('sha256:'.length) };
    } catch (e) {
      cp.status = { phase: 'Failed', message: (e as Error).message };
      this.saveCheckpoint(cp);
      return this.failRound(r, 'CheckpointFailed', `storing the aggregate: ${(e as Error).message}`);
    }
    const at = this.iso();
    r.status.phase = 'Completed';
    r.status.endTime = at;
    r.status.aggregatedModelRef = ref;
    r.status.checkpoint = cp.metadata.name;
    r.status.metrics = { totalSamples: m.totalSamples, ...(m.loss !== undefined ? { loss: m.loss } : {}), ...(m.accuracy !== undefined ? { accuracy: m.accuracy } : {}) };
    r.status.message = `aggregated ${m.updates} of ${r.status.participants.length} updates (${m.totalSamples} samples)`;
    r.status.reason = 'RoundCompleted';
    // one write: a crash cannot leave the round completed without its checkpoint
    this.o.store.atomically(() => {
      this.checkpointRecs.put(cp.metadata.name, cp);
      this.roundRecs.put(name, r);
      const j = job ? this.jobRecs.get(job) : undefined;
      if (j) {
        this.countCompleted(j, r);
        this.jobRecs.put(j.metadata.name, j);
      }
    });
    tap(this, 'fl-round', r);
    this.o.log('info', 'round completed', { round: name, updates: m.updates, samples: m.totalSamples, loss: m.loss, accuracy: m.accuracy, model: ref });
    this.o.metrics.roundEnded('Completed', secondsSince(r.status.startTime, at));
    this.closeRound(r);
    if (job) void this.advance(job);
  }

  private failRound(r: TrainingRound, reason: string, message: string, advance = true): void {
    const at = this.iso();
    const wasRunning = r.status.phase === 'Running' || r.status.phase === 'Aggregating';
    r.status.phase = 'Failed';
    r.status.endTime = at;
    r.status.message = message;
    r.status.reason = reason;
    this.saveRound(r);
    this.o.log('warn', 'round failed', { round: r.metadata.name, reason, message });
    if (wasRunning) this.o.metrics.roundEnded('Failed', secondsSince(r.status.startTime, at));
    this.closeRound(r);
    const job = r.spec.federatedJobRef?.name;
    if (job && advance) void this.advance(job);
  }

  /** Ends a round's live state; tasks that are still out are stopped (their updates would be refused as late anyway). */
  private closeRound(r: TrainingRound): void {
    const live = this.live.get(r.metadata.name);
    if (live) {
      this.disarm(live);
      this.live.delete(r.metadata.name);
    }
    let changed = false;
    for (const p of r.status.participants) {
      if (p.phase !== 'Pending' && p.phase !== 'Running') continue;
      p.phase = 'Stopped';
      p.reason = `round ${r.status.phase.toLowerCase()} before its update`;
      changed = true;
      const t = p.taskId ? this.o.tasks.get(p.taskId) : undefined;
      if (t && !TERMINAL.has(t.state) && (t.start_requested || t.state !== 'Pending')) this.o.tasks.stop(t.id);
    }
    if (changed) this.saveRound(r);
  }

  private resetRound(r: TrainingRound, why: string): void {
    const stale = r.status.participants.map((p) => p.taskId).filter((x): x is string => !!x);
    for (const id of stale) {
      const t = this.o.tasks.get(id);
      if (t && !TERMINAL.has(t.state) && (t.start_requested || t.state !== 'Pending')) this.o.tasks.stop(id);
    }
    r.status.phase = 'Pending';
    r.status.participants = r.spec.participants.map((propletId) => ({ propletId, phase: 'Pending' }) satisfies RoundParticipantStatus);
    r.status.updatesReceived = 0;
    r.status.message = why;
    delete r.status.startTime;
    delete r.status.deadline;
    this.saveRound(r);
  }

  private disarm(l: LiveRound): void {
    if (l.timer) clearTimeout(l.timer);
    if (l.flush) clearTimeout(l.flush);
    for (const t of l.graceTimers) clearTimeout(t);
    l.graceTimers.clear();
  }

  // --- persistence ----------------------------------------------------------

  private saveJob(j: FederatedJob): void {
    tap(this, 'fl-job', j);
    this.jobRecs.put(j.metadata.name, j);
  }
  private saveRound(r: TrainingRound): void {
    tap(this, 'fl-round', r);
    const live = this.live.get(r.metadata.name);
    if (live?.flush) {
      clearTimeout(live.flush);
      delete live.flush;
    }
    this.roundRecs.put(r.metadata.name, r);
  }
  /** A participant-level change: written with the next flush while the round runs, at once otherwise. */
  private touchRound(r: TrainingRound): void {
    tap(this, 'fl-round', r);
    const live = this.live.get(r.metadata.name);
    if (!live || live.round !== r) return this.saveRound(r);
    live.flush ??= setTimeout(() => {
      delete live.flush;
      if (this.live.get(r.metadata.name) === live) this.roundRecs.put(r.metadata.name, live.round);
    }, FLUSH_MS);
  }
  private saveCheckpoint(c: ModelCheckpoint): void {
    tap(this, 'fl-checkpoint', c);
    this.checkpointRecs.put(c.metadata.name, c);
  }
  private iso(): string {
    return new Date(this.now()).toISOString();
  }
}


function secondsSince(from: string | undefined, to: string): number {
  return from ? Math.max(0, (Date.parse(to) - Date.parse(from)) / 1000) : 0;
}

function clientMetrics(m: Record<string, number> | undefined): { loss?: number; accuracy?: number } | undefined {
  if (!m) return undefined;
  const out: { loss?: number; accuracy?: number } = {};
  if (m.loss !== undefined) out.loss = m.loss;
  if (m.accuracy !== undefined) out.accuracy = m.accuracy;
  return out;
}

/** `{index}` and `{replicas}` in hyperparameter strings (the flower-operator's placeholders). */
function substitute(json: string, index: number, replicas: number): string {
  return json.replaceAll('{index}', String(index)).replaceAll('{replicas}', String(replicas));
}
