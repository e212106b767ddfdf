// Task lifecycle: Pending -> Scheduled -> Running -> Completed | Failed, plus
// Stopped by the user. Every transition is timestamped and written to the
// store as one record. Placement is event driven (task started, proplet up,
// capacity freed) with a bounded retry timer as a safety net.

import { EventEmitter } from 'node:events';
import { sha256Digest, type Result, type Start, type Stop, type TaskRef } from '../protocol/index.ts';
import type { Logger } from './log.ts';
import type { ControlPlaneMetrics } from './metrics.ts';
import { TERMINAL, type AttemptRecord, type Proplet, type PropletGroup, type Task, type TaskState } from './model.ts';
import type { Decision, Placement } from './placement.ts';
import type { Load, SchedulingView } from './scheduling/index.ts';
import type { Registry } from './registry.ts';
import { DEFAULT_RETENTION, ExpiryQueue, RunHistory, type RetentionConfig } from './retention.ts';
import type { Store } from './store.ts';
import { taskId } from './task-id.ts';
import { TaskIndex, type Page } from './task-index.ts';
import type { TaskInput } from './task-input.ts';

/** How the control plane reaches proplets; the MQTT gateway implements it. */
/** Replicas: how long a result may wait for the placement it names to reach this replica through the store. */
const PARK_MS = 10_000;

export interface Dispatcher {
  start(proplet: Proplet, msg: Start): void;
  stop(proplet: Proplet, msg: Stop): void;
}

/** A request the control plane refuses: not_found (404), conflict (409), invalid (400). Tasks and FL resources alike. */
export class TaskError extends Error {
  override name = 'TaskError';
  constructor(
    readonly code: 'not_found' | 'conflict' | 'invalid',
    message: string,
  ) {
    super(message);
  }
}

export interface TaskServiceOptions {
  store: Store;
  registry: Registry;
  placement: Placement;
  dispatcher: Dispatcher;
  metrics: ControlPlaneMetrics;
  log: Logger;
  /** Placements per task before it ends Failed (evacuations and refusals count). */
  maxAttempts?: number;
  /** Default wall-time limit for non-daemon tasks. */
  defaultTimeoutMs?: number;
  retryIntervalMs?: number;
  now?: () => number;
  /**
   * Fetches the module behind an image_url (http(s), oci). Started tasks with
   * an image_url are resolved here, so every proplet kind gets the module the
   * same way: inline, or in registry chunks.
   */
  resolveModule?: (url: string) => Promise<Uint8Array>;
  /** How long a start may be in flight before a proplet's report without it means it was lost. */
  reconcileGraceMs?: number;
  /**
   * After a control-plane restart, how long a proplet's report without a task
   * placed before the restart does not yet mean it was lost: its result may
   * still be queued on its side of the reconnect. Default 30 s.
   */
  restartGraceMs?: number;
  /**
   * How long a proplet asked about an attempt it no longer reports (a stop for it) may take to
   * answer with the result it kept, before the task is placed again (default reconcileGraceMs).
   */
  askGraceMs?: number;
  /** PropletGroups by name, for tasks that name one. */
  groups?: (name: string) => PropletGroup | undefined;
  /** How long finished tasks and scheduled runs are kept (default: 24 h; 3 successful and 1 failed run per schedule). */
  retention?: Partial<RetentionConfig>;
  /**
   * Why this proplet cannot be sent this start (a device that would drop it
   * unseen: propeller-compat.ts), or undefined. A refused placement excludes
   * the proplet; a task pinned to it fails with the reason.
   */
  admit?: (t: Task, p: Proplet, start: () => Start) => string | undefined;
}

export interface TaskEvents {
  changed: [task: Task];
  deleted: [id: string];
}

export class TaskService extends EventEmitter<TaskEvents> {
  private tasks = new Map<string, Task>();
  /** Active (Scheduled/Running) task ids per proplet: the load placement sees. */
  private active = new Map<string, Set<string>>();
  /** Tasks that want to run and wait for a proplet, oldest first. */
  private waiting = new Set<string>();
  /** Started tasks whose module is being fetched: not placeable yet. */
  private resolving = new Set<string>();
  private placeQueued = false;
  /** Replicas: only the lease's owner places (see replica.ts). */
  owner: () => boolean = () => true;
  /** Replicas (index.ts sets it): other control planes change tasks in the store too. */
  replicated = false;
  /** Replicas: results naming a placement this replica has not yet seen, judged again when the task's row comes in. */
  private parked = new Map<string, { r: Result; until: number }[]>();
  /** Replicas: applied results whose write is not yet committed; re-applied if another replica's write wins the row. */
  private unconfirmed = new Map<string, Result>();
  private readonly index = new TaskIndex();
  readonly retention: RetentionConfig;
  private readonly expiry = new ExpiryQueue();
  /** When each finished task is due for deletion: a queue entry that no longer matches is stale. */
  private readonly expiresAt = new Map<string, number>();
  private readonly runHistory = new RunHistory();
  private expiryTimer?: NodeJS.Timeout;
  private retryTimer?: NodeJS.Timeout;
  private readonly now: () => number;
  readonly maxAttempts: number;
  readonly reconcileGraceMs: number;
  readonly restartGraceMs: number;
  readonly askGraceMs: number;
  /** Attempts a proplet no longer reports, asked how they ended: placed again when no answer comes in time. */
  private readonly asked = new Map<string, { timer: NodeJS.Timeout; attempt: number }>();
  readonly defaultTimeoutMs: number;
  /** When this control plane (re)started: attempts begun before it get restartGraceMs. */
  private startedAt: number;

  constructor(private o: TaskServiceOptions) {
    super();
    this.setMaxListeners(0);
    this.now = o.now ?? Date.now;
    this.maxAttempts = o.maxAttempts ?? 3;
    this.defaultTimeoutMs = o.defaultTimeoutMs ?? 60_000;
    this.reconcileGraceMs = o.reconcileGraceMs ?? 5_000;
    this.restartGraceMs = o.restartGraceMs ?? 30_000;
    this.askGraceMs = o.askGraceMs ?? this.reconcileGraceMs;
    this.startedAt = this.now();
    this.retention = { ...DEFAULT_RETENTION, ...o.retention };
    const finished: Task[] = [];
    for (const t of o.store.tasks.list()) {
      this.tasks.set(t.id, t);
      this.index.upsert(t);
      if (t.state === 'Pending' && t.start_requested) this.waiting.add(t.id);
      if ((t.state === 'Scheduled' || t.state === 'Running') && t.proplet_id) this.addActive(t.proplet_id, t.id);
      if (TERMINAL.has(t.state)) finished.push(t);
    }
    // retention resumes in the order things finished; what is already due goes at the first sweep
    finished.sort((a, b) => (a.finished_at ?? a.updated_at).localeCompare(b.finished_at ?? b.updated_at));
    const overLimit: string[] = [];
    for (const t of finished) overLimit.push(...this.retain(t));
    for (const id of overLimit) this.expire(id);
  }

  /** Tasks in one state, or all: kept as they change, never counted by walking them. */
  count(state?: TaskState): number {
    return this.index.count(state);
  }
  countsByState(): ReadonlyMap<TaskState, number> {
    return this.index.countsByState();
  }
  /** Newest first; `after` is the previous page's continue token. */
  page(limit: number, after?: string, match?: (t: Task) => boolean): Page {
    return this.index.page(limit, after, match);
  }
  /** Runs of a scheduled task that have not finished. */
  activeRuns(templateId: string): Task[] {
    return this.index.activeRuns(templateId, (id) => this.tasks.get(id));
  }

  get(id: string): Task | undefined {
    return this.tasks.get(id);
  }
  list(): Task[] {
    return [...this.tasks.values()];
  }
  values(): IterableIterator<Task> {
    return this.tasks.values();
  }
  assigned(propletId: string): number {
    return this.active.get(propletId)?.size ?? 0;
  }
  activeOn(propletId: string): string[] {
    return [...(this.active.get(propletId) ?? [])];
  }

  /** A task active (Scheduled or Running) on this proplet that matches. */
  activeTaskOn(propletId: string, match: (t: Task) => boolean): Task | undefined {
    for (const id of this.active.get(propletId) ?? []) {
      const t = this.tasks.get(id);
      if (t && match(t)) return t;
    }
    return undefined;
  }

  require(id: string): Task {
    const t = this.tasks.get(id);
    if (!t) throw new TaskError('not_found', `task ${id} not found`);
    return t;
  }

  /**
   * A new task; `start`: started at once, as start() would (POST /tasks?start=true), in one
   * write instead of two. A start start() would refuse (no module) leaves the task created, as before.
   */
  create(input: TaskInput, o: { start?: boolean } = {}): Task {
    const at = this.creationTime();
    const t: Task = {
      id: taskId(),
      name: input.name,
      cli_args: input.cli_args,
      inputs: input.inputs,
      env: input.env,
      daemon: input.daemon,
      resources: input.resources,
      labels: input.labels,
      state: 'Pending',
      start_requested: false,
      attempt: 0,
      attempts: [],
      history: [{ state: 'Pending', at, reason: 'created' }],
      created_at: at,
      updated_at: at,
    };
    if (input.image_url) t.image_url = input.image_url;
    if (input.proplet_id) t.pinned_proplet_id = input.proplet_id;
    if (input.timeout_ms) t.timeout_ms = input.timeout_ms;
    if (input.file) this.attachModule(t, input.file);
    if (input.preferred_proplet_type) t.preferred_proplet_type = input.preferred_proplet_type;
    if (input.proplet_selector) t.proplet_selector = input.proplet_selector;
    if (input.proplet_group) t.proplet_group = input.proplet_group;
    this.retentionFields(t, input);
    if (input.schedule) {
      t.schedule = input.schedule;
      t.concurrency_policy = input.concurrency_policy ?? 'Allow';
      t.cron = { runs_started: 0, runs_skipped: 0 };
      if (input.timezone) t.timezone = input.timezone;
    }
    if (!t.image_url && !t.module_digest) t.pending_reason = 'no module yet: upload one with PUT /tasks/{id}/upload';
    const now = o.start === true && !t.schedule && !t.pending_reason;
    if (now) this.requestStart(t);
    this.save(t);
    if (now) this.afterStart(t);
    else if (o.start) return this.start(t.id);
    return t;
  }

  /** One firing of a scheduled task: a new task with the template's spec, started at once. */
  createRun(template: Task): Task {
    const at = this.creationTime();
    const run: Task = {
      ...structuredClone(template),
      id: taskId(),
      state: 'Pending',
      start_requested: false,
      attempt: 0,
      attempts: [],
      history: [{ state: 'Pending', at, reason: `fired by schedule ${template.schedule}` }],
      scheduled_by: template.id,
      created_at: at,
      updated_at: at,
    };
    for (const k of ['schedule', 'timezone', 'concurrency_policy', 'suspended', 'cron', 'pending_reason', 'proplet_id', 'error', 'result', 'started_at', 'finished_at', 'excluded_proplets', 'successful_runs_history_limit', 'failed_runs_history_limit'] as const) delete run[k];
    this.save(run);
    return this.start(run.id);
  }

  /** Writes a scheduled task's bookkeeping (next run, counters). */
  touch(t: Task): void {
    t.updated_at = this.iso();
    this.save(t);
  }

  update(id: string, patch: Partial<TaskInput>): Task {
    const t = this.require(id);
    if (t.state === 'Scheduled' || t.state === 'Running') throw new TaskError('conflict', `task ${id} is ${t.state}: stop it before changing it`);
    if (patch.name !== undefined) t.name = patch.name;
    if (patch.image_url !== undefined) t.image_url = patch.image_url;
    if (patch.cli_args !== undefined) t.cli_args = patch.cli_args;
    if (patch.inputs !== undefined) t.inputs = patch.inputs;
    if (patch.env !== undefined) t.env = patch.env;
    if (patch.labels !== undefined) t.labels = patch.labels;
    if (patch.daemon !== undefined) t.daemon = patch.daemon;
    if (patch.resources !== undefined) t.resources = patch.resources;
    if (patch.timeout_ms !== undefined) t.timeout_ms = patch.timeout_ms;
    if (patch.proplet_id !== undefined) t.pinned_proplet_id = patch.proplet_id;
    if (patch.schedule !== undefined) {
      t.schedule = patch.schedule;
      t.concurrency_policy ??= 'Allow';
      t.cron ??= { runs_started: 0, runs_skipped: 0 };
    }
    if (patch.timezone !== undefined) t.timezone = patch.timezone;
    if (patch.preferred_proplet_type !== undefined) t.preferred_proplet_type = patch.preferred_proplet_type;
    if (patch.proplet_selector !== undefined) t.proplet_selector = patch.proplet_selector;
    if (patch.proplet_group !== undefined) t.proplet_group = patch.proplet_group;
    if (patch.concurrency_policy !== undefined) t.concurrency_policy = patch.concurrency_policy;
    this.retentionFields(t, patch);
    if (patch.file) this.attachModule(t, patch.file);
    t.updated_at = this.iso();
    this.save(t);
    return t;
  }

  upload(id: string, bytes: Uint8Array): Task {
    const t = this.require(id);
    if (t.state === 'Scheduled' || t.state === 'Running') throw new TaskError('conflict', `task ${id} is ${t.state}: stop it before uploading a module`);
    this.attachModule(t, bytes);
    if (t.pending_reason?.startsWith('no module')) delete t.pending_reason;
    t.updated_at = this.iso();
    this.save(t);
    return t;
  }

  delete(id: string): void {
    const t = this.require(id);
    if (t.state === 'Scheduled' || t.state === 'Running') this.stop(id);
    this.forget([t]);
  }

  private retentionFields(t: Task, input: Partial<TaskInput>): void {
    for (const k of ['ttl_seconds_after_finished', 'successful_runs_history_limit', 'failed_runs_history_limit'] as const) {
      if (input[k] !== undefined) t[k] = input[k];
    }
  }

  /** Removes finished tasks from memory and the store, in one write. */
  private forget(ts: Task[]): void {
    if (ts.length === 0) return;
    for (const t of ts) {
      this.tasks.delete(t.id);
      this.index.remove(t);
      this.waiting.delete(t.id);
      this.resolving.delete(t.id);
      this.expiresAt.delete(t.id);
      if (t.scheduled_by) this.runHistory.forget(t.scheduled_by, t.id);
      if (t.schedule) this.runHistory.forget(t.id);
    }
    this.o.store.atomically(() => {
      for (const t of ts) this.o.store.tasks.delete(t.id);
    });
    for (const t of ts) this.emit('deleted', t.id);
  }

  /**
   * A task just finished: when it expires, and which older runs of its schedule
   * it pushes over the history limit (returned, to be deleted now).
   */
  private retain(t: Task): string[] {
    const ttl = t.ttl_seconds_after_finished !== undefined ? t.ttl_seconds_after_finished * 1000 : this.retention.finishedTtlMs;
    if (ttl > 0 || t.ttl_seconds_after_finished === 0) {
      const at = Date.parse(t.finished_at ?? t.updated_at) + ttl;
      this.expiresAt.set(t.id, at);
      this.expiry.push(at, t.id);
    }
    if (!t.scheduled_by) return [];
    const template = this.tasks.get(t.scheduled_by);
    const ok = t.state === 'Completed';
    const limit = ok
      ? template?.successful_runs_history_limit ?? this.retention.successfulRunsHistoryLimit
      : template?.failed_runs_history_limit ?? this.retention.failedRunsHistoryLimit;
    return this.runHistory.finished(t.scheduled_by, t.id, ok, limit);
  }

  /** Deletes a task if it is still finished (a restarted task is not). */
  private expire(id: string): void {
    const t = this.tasks.get(id);
    if (t && TERMINAL.has(t.state)) this.forget([t]);
  }

  /** Deletes every finished task whose time-to-live is over. */
  sweepExpired(): number {
    // replicas: one sweeper, the owner; the others keep what is due for when they own
    if (this.replicated && !this.owner()) return 0;
    const now = this.now();
    const gone: Task[] = [];
    for (const { at, id } of this.expiry.due(now)) {
      const t = this.tasks.get(id);
      if (t && this.expiresAt.get(id) === at && TERMINAL.has(t.state)) gone.push(t);
    }
    this.asOwner(() => this.forget(gone));
    return gone.length;
  }

  /** Asks for the task to run; it is placed now or as soon as a proplet can take it. */
  start(id: string): Task {
    const t = this.require(id);
    if (t.schedule) {
      // a scheduled task is not run itself: start resumes its schedule
      if (t.suspended) {
        delete t.suspended;
        this.touch(t);
      }
      return t;
    }
    if (t.state === 'Scheduled' || t.state === 'Running') throw new TaskError('conflict', `task ${id} is already ${t.state}`);
    if (t.start_requested && t.state === 'Pending') return t;
    if (!t.image_url && !t.module_digest) throw new TaskError('invalid', `task ${id} has no module: set image_url or file, or upload one`);
    this.requestStart(t);
    if (t.state !== 'Pending') {
      // a re-run of a finished task: a fresh set of attempts
      t.attempts = [];
      delete t.error;
      delete t.result;
      delete t.excluded_proplets;
      delete t.finished_at;
      this.transition(t, 'Pending', 'restarted');
    } else {
      t.updated_at = this.iso();
      this.save(t);
    }
    this.afterStart(t);
    return t;
  }

  private requestStart(t: Task): void {
    t.start_requested = true;
    // file takes precedence over image_url (seed 000); a module fetched from the URL before is fetched again (tags move)
    if (t.image_url && this.o.resolveModule && (!t.module_digest || t.module_from_url)) {
      this.resolving.add(t.id);
      t.pending_reason = `fetching module ${t.image_url}`;
    }
  }

  /** A start was saved: fetch its module, or place it. */
  private afterStart(t: Task): void {
    if (this.resolving.has(t.id)) void this.resolve(t);
    else this.schedulePlacement();
  }

  private async resolve(t: Task): Promise<void> {
    const url = t.image_url!;
    try {
      const bytes = await this.o.resolveModule!(url);
      this.resolving.delete(t.id);
      // stopped, deleted or restarted meanwhile: nothing to do
      if (this.tasks.get(t.id) !== t || t.state !== 'Pending' || !t.start_requested || t.image_url !== url) return;
      this.attachModule(t, bytes);
      t.module_from_url = true;
      delete t.pending_reason;
      t.updated_at = this.iso();
      this.save(t);
      this.schedulePlacement();
    } catch (e) {
      this.resolving.delete(t.id);
      if (this.tasks.get(t.id) !== t || t.state !== 'Pending' || !t.start_requested) return;
      t.error = (e as Error).message;
      this.finish(t, 'Failed', this.iso());
    }
  }

  stop(id: string): Task {
    const t = this.require(id);
    if (t.schedule) {
      // suspends the schedule; runs already started go on (stop them by their own ids)
      t.suspended = true;
      this.touch(t);
      return t;
    }
    if (TERMINAL.has(t.state)) return t;
    if (t.state === 'Pending') {
      if (!t.start_requested) throw new TaskError('conflict', `task ${id} is not started`);
      t.start_requested = false;
      this.transition(t, 'Stopped', 'stopped by user before placement');
      return t;
    }
    const p = t.proplet_id ? this.o.registry.get(t.proplet_id) : undefined;
    if (p) this.o.dispatcher.stop(p, { v: 1, id: t.id, proplet_id: p.id, attempt: t.attempt });
    this.endAttempt(t, 'stopped');
    t.start_requested = false;
    this.release(t);
    this.transition(t, 'Stopped', 'stopped by user');
    return t;
  }

  /** Applies a result message. Returns why it was ignored, or undefined when applied (or, with replicas, parked). */
  onResult(r: Result, until = this.now() + PARK_MS): string | undefined {
    const why = this.applyResult(r);
    if (!this.replicated) return why === undefined ? undefined : this.ignored(why);
    if (why === undefined) {
      if (r.status !== 'running') this.confirm(r);
      return undefined;
    }
    const t = this.tasks.get(r.task_id);
    // the owner commits a placement before it sends the start, so its row is on its way here through the store's feed
    const unseen = !t || (r.attempt !== undefined ? r.attempt > t.attempt : t.state === 'Pending');
    if (!unseen || this.now() >= until) return this.ignored(why);
    const list = this.parked.get(r.task_id) ?? [];
    list.push({ r, until });
    this.parked.set(r.task_id, list);
    return undefined;
  }

  /** Replicas: until this result's write is committed, a conflicting write from another replica does not lose it. */
  private confirm(r: Result): void {
    this.unconfirmed.set(r.task_id, r);
    void this.o.store.flush().then(
      () => this.unconfirmed.get(r.task_id) === r && this.unconfirmed.delete(r.task_id),
      () => {},
    );
  }

  /** Replicas: results still waiting for a placement this replica never saw are given up. */
  private dropParked(): void {
    const now = this.now();
    for (const [id, list] of this.parked) {
      const keep = list.filter((x) => x.until > now);
      for (const x of list) if (x.until <= now) this.o.log('info', 'result ignored', { reason: this.ignored('not_running_there'), task_id: id, proplet_id: x.r.proplet_id, attempt: x.r.attempt });
      if (keep.length) this.parked.set(id, keep);
      else this.parked.delete(id);
    }
  }

  private applyResult(r: Result): string | undefined {
    const why = this.whyNotRunningThere(r.task_id, r.proplet_id, r.attempt);
    if (why) return why;
    const t = this.tasks.get(r.task_id)!;
    const status = r.status ?? (r.error ? 'failed' : 'completed');
    if (status === 'running') {
      if (t.state === 'Scheduled') {
        t.started_at = this.iso();
        this.transition(t, 'Running', undefined);
      }
      return undefined;
    }
    const at = this.iso();
    if (status === 'refused') {
      // The proplet cannot take it (budget, capacity): never send it there again.
      this.endAttempt(t, 'refused', r.error);
      (t.excluded_proplets ??= []).push(r.proplet_id);
      this.release(t);
      const why = `refused by ${r.proplet_id}: ${r.error ?? 'no reason given'}`;
      if (this.nowhereElse(t)) {
        // waiting would change nothing: say why at once instead of after silent re-runs
        t.error = `${why}; no other proplet can take it`;
        this.finish(t, 'Failed', at);
      } else this.retryOrFail(t, why);
      return undefined;
    }
    if (status === 'stopped' && this.asked.get(t.id)?.attempt === t.attempt) {
      // our question reached a run whose start the report had overtaken, and stopped it: as before, placed again
      this.evacuateAsked(t, r.proplet_id);
      return undefined;
    }
    if (status === 'stopped') {
      // A stop we did not ask for (the proplet shut the task down): the task did not finish.
      this.endAttempt(t, 'stopped', r.error);
      this.release(t);
      t.error = r.error ?? 'stopped by the proplet';
      this.finish(t, 'Failed', at, r);
      return undefined;
    }
    this.endAttempt(t, status, r.error);
    this.release(t);
    if (status === 'failed') t.error = r.error ?? 'failed';
    // A run over before its first turn ended sends no `running` (the node proplet): it started when it was sent at the earliest.
    if (!t.started_at) t.started_at = this.startedBefore(t, at, r.duration_ms);
    this.finish(t, status === 'completed' ? 'Completed' : 'Failed', at, r);
    return undefined;
  }

  /**
   * A result the proplet running the task sent, dropped at the edge (over its size bound, malformed):
   * the task fails now with the reason, rather than waiting to be re-run into a misleading
   * "no longer runs it". Later results of that attempt find it finished and are ignored.
   */
  onResultRefused(propletId: string, taskId: string, attempt: number | undefined, reason: string): string | undefined {
    const why = this.whyNotRunningThere(taskId, propletId, attempt);
    if (why) return this.ignored(why);
    const t = this.tasks.get(taskId)!;
    const p = this.o.registry.get(propletId);
    // it may still run (a refused "running"): it is over here, so over there too
    if (p) this.o.dispatcher.stop(p, { v: 1, id: t.id, proplet_id: p.id, attempt: t.attempt });
    t.error = `result refused: ${reason}`;
    this.endAttempt(t, 'failed', t.error);
    this.release(t);
    this.finish(t, 'Failed', this.iso());
    return undefined;
  }

  /** The task, when `propletId` runs its current attempt; else why a message about it is ignored. */
  /** Why a result for this attempt cannot be applied (not counted: the caller counts what it ignores), or undefined. */
  private whyNotRunningThere(taskId: string, propletId: string, attempt: number | undefined): string | undefined {
    const t = this.tasks.get(taskId);
    if (!t) return 'unknown_task';
    if (t.proplet_id !== propletId || (t.state !== 'Scheduled' && t.state !== 'Running')) return 'not_running_there';
    // Propeller's proplets send no attempt: it can only be the current one.
    if (attempt !== undefined && attempt !== t.attempt) return 'stale_attempt';
    return undefined;
  }

  /** After a refusal: the task is pinned to the proplet that refused it, or every live proplet has refused it. */
  private nowhereElse(t: Task): boolean {
    const excluded = new Set(t.excluded_proplets);
    if (t.pinned_proplet_id) return excluded.has(t.pinned_proplet_id);
    return !this.o.registry.list().some((p) => p.state === 'alive' && !excluded.has(p.id));
  }

  /** A proplet failed: its tasks are placed elsewhere, or fail when out of attempts. */
  evacuate(propletId: string, reason: string): string[] {
    const moved: string[] = [];
    for (const id of this.activeOn(propletId)) {
      const t = this.tasks.get(id);
      if (!t) continue;
      this.endAttempt(t, 'evacuated', reason);
      this.release(t);
      if (this.retryOrFail(t, `proplet ${propletId} ${reason}`)) moved.push(id);
    }
    return moved;
  }

  /**
   * A proplet came (back) up and said what it runs. Tasks we think run there but it
   * does not report are asked about, then placed again; tasks it runs that we moved elsewhere are stopped there.
   */
  reconcile(proplet: Proplet, running: TaskRef[] | undefined): void {
    if (running === undefined) return; // Propeller's proplets do not report; trust our view.
    const reported = new Map(running.map((r) => [r.task_id, r.attempt]));
    const now = this.now();
    for (const id of this.activeOn(proplet.id)) {
      const t = this.tasks.get(id)!;
      // A report may have left the proplet before a start we just sent reached it:
      // only an attempt older than the grace period is known to be lost.
      const since = Date.parse(t.attempts.at(-1)?.started_at ?? t.updated_at);
      // Placed before a restart: the proplet may have finished it while we were away and
      // still hold the result; a later report settles it once the restart grace is over.
      const grace = since < this.startedAt && now - this.startedAt < this.restartGraceMs;
      if (reported.has(id) || now - since <= this.reconcileGraceMs || grace) continue;
      // only a run we heard begin can have ended there unheard; a start never acknowledged was lost
      if (t.state === 'Running') this.ask(proplet, t);
      else this.evacuateAsked(t, proplet.id);
    }
    for (const [id, attempt] of reported) {
      const t = this.tasks.get(id);
      const current = t && t.proplet_id === proplet.id && (attempt === undefined || attempt === t.attempt) && (t.state === 'Scheduled' || t.state === 'Running');
      if (!current) this.o.dispatcher.stop(proplet, { v: 1, id, proplet_id: proplet.id, ...(attempt !== undefined ? { attempt } : {}) });
    }
  }

  /**
   * It may have ended there with its result lost on the way (published into a broker that had
   * just restarted empty): a stop for the attempt asks, and a proplet that kept the result sends
   * it again, applied as any result. Without an answer in time, the task is placed again.
   */
  private ask(proplet: Proplet, t: Task): void {
    if (this.asked.has(t.id)) return;
    const attempt = t.attempt;
    this.o.dispatcher.stop(proplet, { v: 1, id: t.id, proplet_id: proplet.id, attempt });
    const timer = setTimeout(() => {
      this.asked.delete(t.id);
      const cur = this.tasks.get(t.id);
      if (!cur || this.whyNotRunningThere(cur.id, proplet.id, attempt) || !this.owner()) return;
      this.asOwner(() => this.evacuateAsked(cur, proplet.id));
    }, this.askGraceMs);
    timer.unref();
    this.asked.set(t.id, { timer, attempt });
  }

  /** The proplet no longer runs it and did not say how it ended: placed again. */
  private evacuateAsked(t: Task, propletId: string): void {
    this.endAttempt(t, 'evacuated', 'proplet restarted without it');
    this.release(t);
    this.retryOrFail(t, `proplet ${propletId} no longer runs it`);
  }

  /** The broker was away: as after a restart, tasks placed before get the restart grace to report (their results may be on the way). */
  regrace(): void {
    this.startedAt = this.now();
  }

  /** Owner-only work (placement, retention, cron): its writes commit only while this replica holds the lease. */
  asOwner<R>(fn: () => R): R {
    return this.o.store.asOwner(fn);
  }

  /** Coalesces placement requests into one pass per tick. */
  schedulePlacement(): void {
    if (this.placeQueued || !this.owner()) return;
    this.placeQueued = true;
    setImmediate(() => {
      this.placeQueued = false;
      this.asOwner(() => this.placePending());
    });
  }

  /** Tasks and requested resources the control plane has on a proplet. */
  load(propletId: string): Load {
    const l = { tasks: 0, cpu_millis: 0, memory_bytes: 0 };
    for (const id of this.active.get(propletId) ?? []) {
      const r = this.tasks.get(id)?.resources;
      l.tasks++;
      l.cpu_millis += r?.cpu_millis ?? 0;
      l.memory_bytes += r?.memory_bytes ?? 0;
    }
    return l;
  }

  /** One placement pass over every waiting task, in one batch when the placement supports it. */
  placePending(): void {
    const batch: Task[] = [];
    for (const id of this.waiting) if (!this.resolving.has(id)) batch.push(this.tasks.get(id)!);
    if (batch.length === 0) return;
    const view: SchedulingView = {
      proplets: this.o.registry.list(),
      assigned: (id) => this.assigned(id),
      load: (id) => this.load(id),
      group: (name) => this.o.groups?.(name),
    };
    const p = this.o.placement;
    let waiting = false;
    const apply = (t: Task, d: Decision) => {
      if (d.ok) {
        const p = this.o.registry.get(d.propletId)!;
        const refused = this.o.admit?.(t, p, () => this.startMessage(t, p));
        return refused === undefined ? this.dispatch(t, p) : this.refusePlacement(t, p, refused);
      }
      waiting = true;
      if (t.pending_reason !== d.reason) {
        t.pending_reason = d.reason;
        t.updated_at = this.iso();
        this.save(t);
      }
    };
    if (p.placeBatch) {
      const decisions = p.placeBatch(batch, view);
      batch.forEach((t, i) => apply(t, decisions[i]!));
    } else {
      for (const t of batch) apply(t, p.place(t, view));
    }
    if (waiting) this.armRetry();
  }

  startTimers(): void {
    this.startedAt = this.now();
    this.sweepExpired();
    this.expiryTimer = setInterval(() => {
      this.sweepExpired();
      if (this.parked.size) this.dropParked();
    }, this.o.retryIntervalMs ?? 1000);
    this.expiryTimer.unref();
    // after a restart: tasks that were waiting for their module fetch it again
    for (const id of this.waiting) {
      const t = this.tasks.get(id)!;
      if (t.image_url && (!t.module_digest || t.module_from_url) && this.o.resolveModule && !this.resolving.has(id)) {
        this.resolving.add(id);
        void this.resolve(t);
      }
    }
    this.schedulePlacement();
  }
  stopTimers(): void {
    if (this.expiryTimer) clearInterval(this.expiryTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    for (const a of this.asked.values()) clearTimeout(a.timer);
    this.asked.clear();
  }

  private armRetry(): void {
    if (this.retryTimer) return;
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.owner()) this.asOwner(() => this.placePending());
    }, this.o.retryIntervalMs ?? 1000);
    this.retryTimer.unref();
  }

  private refusePlacement(t: Task, p: Proplet, reason: string): void {
    (t.excluded_proplets ??= []).push(p.id);
    const why = `cannot run on ${p.id}: ${reason}`;
    if (this.nowhereElse(t)) {
      t.error = t.pinned_proplet_id === p.id ? why : `${why}; no other proplet can take it`;
      return this.finish(t, 'Failed', this.iso());
    }
    t.pending_reason = `not placed on ${p.id}: ${reason}`;
    t.updated_at = this.iso();
    // kept in the history: the next placement pass rewrites pending_reason
    t.history.push({ state: 'Pending', at: t.updated_at, reason: t.pending_reason, proplet_id: p.id });
    this.save(t);
    this.schedulePlacement();
  }

  private dispatch(t: Task, p: Proplet): void {
    // first: the reason was the last field added (placePending), and deleting the last one keeps the object fast in V8
    delete t.pending_reason;
    t.attempt += 1;
    t.proplet_id = p.id;
    const at = this.iso();
    t.attempts.push({ attempt: t.attempt, proplet_id: p.id, started_at: at });
    this.addActive(p.id, t.id);
    this.transition(t, 'Scheduled', undefined, { proplet_id: p.id, attempt: t.attempt });
    if (!this.replicated) return this.o.dispatcher.start(p, this.startMessage(t, p));
    // Replicas: the start goes out once the placement is committed, so whichever replica
    // its results reach can find it in the store.
    const attempt = t.attempt;
    void this.o.store.flush().then(
      () => {
        const cur = this.tasks.get(t.id);
        // an ex-owner whose placement was fenced off sends nothing, even if the new owner placed it alike
        if (!this.owner() || cur?.state !== 'Scheduled' || cur.attempt !== attempt || cur.proplet_id !== p.id) return;
        const to = this.o.registry.get(p.id) ?? p;
        this.o.dispatcher.start(to, this.startMessage(cur, to));
      },
      // the database is away: the start-ack deadline moves the task on
      () => {},
    );
  }

  startMessage(t: Task, p: Proplet): Start {
    const msg: Start = {
      v: 1,
      id: t.id,
      name: t.name,
      proplet_id: p.id,
      attempt: t.attempt,
      cli_args: t.cli_args,
      inputs: t.inputs,
      env: t.env,
      daemon: t.daemon,
    };
    if (!t.daemon) msg.timeout_ms = t.timeout_ms ?? this.defaultTimeoutMs;
    if (t.resources.memory_bytes !== undefined) msg.memory_bytes = t.resources.memory_bytes;
    if (t.module_digest) {
      msg.digest = t.module_digest;
      msg.module_size = t.module_size;
      const bytes = this.o.store.getModule(t.module_digest);
      if (bytes) msg.file = bytes;
    } else if (t.image_url) {
      msg.image_url = t.image_url;
    }
    return msg;
  }

  private retryOrFail(t: Task, reason: string): boolean {
    if (t.attempt >= this.maxAttempts) {
      t.error = `gave up after ${t.attempt} attempts; last: ${reason}`;
      this.finish(t, 'Failed', this.iso());
      return false;
    }
    t.pending_reason = `waiting to be placed again: ${reason}`;
    delete t.proplet_id;
    this.transition(t, 'Pending', reason);
    this.schedulePlacement();
    return true;
  }

  private finish(t: Task, state: TaskState, at: string, r?: Result): void {
    t.finished_at = at;
    t.start_requested = false;
    if (r) {
      t.result = { proplet_id: r.proplet_id, attempt: t.attempt, at };
      for (const k of ['results', 'stdout', 'stderr', 'exit_code', 'error', 'duration_ms', 'fl'] as const) {
        if (r[k] !== undefined) (t.result as unknown as Record<string, unknown>)[k] = r[k];
      }
    }
    if (t.started_at || t.attempts.length) {
      const from = Date.parse(t.attempts.at(-1)?.started_at ?? t.started_at ?? at);
      this.o.metrics.taskDuration.observe({ state }, Math.max(0, (Date.parse(at) - from) / 1000));
    }
    this.transition(t, state, t.error);
    this.schedulePlacement(); // capacity freed
  }

  private endAttempt(t: Task, outcome: NonNullable<AttemptRecord['outcome']>, error?: string): void {
    const a = t.attempts.at(-1);
    if (a && !a.ended_at) {
      a.ended_at = this.iso();
      a.outcome = outcome;
      if (error) a.error = error;
    }
  }

  private transition(t: Task, state: TaskState, reason: string | undefined, extra: { proplet_id?: string; attempt?: number } = {}): void {
    const at = this.iso();
    t.state = state;
    t.updated_at = at;
    // answered, stopped, or moved: the question is settled (a row adopted from another replica leaves it to the timer's check)
    const asked = this.asked.get(t.id);
    if (asked) {
      clearTimeout(asked.timer);
      this.asked.delete(t.id);
    }
    t.history.push({ state, at, ...(reason ? { reason } : {}), ...extra });
    if (t.history.length > 100) t.history.splice(1, t.history.length - 100);
    this.save(t);
    if (TERMINAL.has(state)) {
      const over = this.retain(t);
      for (const id of over) this.expire(id);
    } else this.expiresAt.delete(t.id);
  }

  private save(t: Task): void {
    this.tasks.set(t.id, t);
    this.index.upsert(t);
    if (t.state === 'Pending' && t.start_requested) this.waiting.add(t.id);
    else this.waiting.delete(t.id);
    this.o.store.tasks.put(t.id, t);
    this.emit('changed', t);
  }

  private attachModule(t: Task, bytes: Uint8Array): void {
    const digest = sha256Digest(bytes);
    delete t.module_from_url;
    this.o.store.putModule(digest, bytes);
    t.module_digest = digest;
    t.module_size = bytes.length;
  }

  private addActive(propletId: string, taskId: string): void {
    let s = this.active.get(propletId);
    if (!s) this.active.set(propletId, (s = new Set()));
    s.add(taskId);
  }

  /** Another replica changed this task in the store: take its version (undefined: it was deleted). */
  adopt(id: string, t: Task | undefined): void {
    const old = this.tasks.get(id);
    if (old) {
      this.release(old);
      this.index.remove(old);
    }
    if (!t) {
      this.parked.delete(id);
      if (!old) return;
      this.tasks.delete(id);
      this.waiting.delete(id);
      this.expiresAt.delete(id);
      this.emit('deleted', id);
      return;
    }
    this.tasks.set(id, t);
    this.index.upsert(t);
    // finished elsewhere: it expires here too (only the owner sweeps)
    if (TERMINAL.has(t.state) && !(old && TERMINAL.has(old.state))) this.retain(t);
    if (t.state === 'Pending' && t.start_requested) this.waiting.add(id);
    else this.waiting.delete(id);
    if ((t.state === 'Scheduled' || t.state === 'Running') && t.proplet_id) this.addActive(t.proplet_id, id);
    this.emit('changed', t);
    this.schedulePlacement();
    // results that came before this row, or whose write lost to this one: judge them again
    const again = this.parked.get(id);
    this.parked.delete(id);
    const lost = this.unconfirmed.get(id);
    this.unconfirmed.delete(id);
    if (lost) this.onResult(lost);
    for (const x of again ?? []) {
      const why = this.onResult(x.r, x.until);
      if (why) this.o.log('info', 'result ignored', { reason: why, task_id: id, proplet_id: x.r.proplet_id, attempt: x.r.attempt });
    }
  }

  private release(t: Task): void {
    if (t.proplet_id) this.active.get(t.proplet_id)?.delete(t.id);
  }

  private ignored(reason: string): string {
    this.o.metrics.resultsIgnored.inc({ reason });
    return reason;
  }

  private lastCreated = 0;

  /** When a run that ended at `at` after `ms` began, by this clock, but not before it was sent. */
  private startedBefore(t: Task, at: string, ms: number | undefined): string {
    const sent = t.attempts.at(-1)?.started_at;
    const end = Date.parse(at);
    const begun = Math.max(end - Math.max(0, ms ?? 0), sent ? Date.parse(sent) : -Infinity);
    return begun >= end ? at : new Date(begun).toISOString();
  }

  /** The last timestamp made: a task's transitions, and the tasks of one batch, mostly fall in one millisecond. */
  private isoMs = NaN;
  private isoText = '';
  private iso(): string {
    const ms = this.now();
    if (ms !== this.isoMs) {
      this.isoMs = ms;
      this.isoText = new Date(ms).toISOString();
    }
    return this.isoText;
  }

  /**
   * Never earlier than the last one (a clock stepped back), so that tasks list in the order they
   * were created: within one millisecond their ids, which only grow, order them (task-index.ts).
   * Not one millisecond apart each, which ran ahead of the clock past 1,000 creations a second.
   */
  private creationTime(): string {
    this.lastCreated = Math.max(this.now(), this.lastCreated);
    return new Date(this.lastCreated).toISOString();
  }
}
