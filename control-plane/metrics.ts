// Prometheus metrics, one registry per control plane so that several can run
// in one process (tests). Names follow the seeds where they apply.

import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Proplet, Task, TaskState } from './model.ts';

export interface MetricsSources {
  proplets(): Iterable<Proplet>;
  tasks(): Iterable<Task>;
  /** Tasks per state kept as they change: used instead of walking tasks() when given. */
  taskCounts?(): ReadonlyMap<TaskState, number>;
  /** Phases one per record, or counted by phase (kept on write: a scrape then costs nothing per record). */
  flJobPhases?(): Iterable<string> | ReadonlyMap<string, number>;
  flRoundPhases?(): Iterable<string> | ReadonlyMap<string, number>;
  flActiveRounds?(): number;
  flKeptMemoryBytes?(): number;
}

const TASK_STATES: TaskState[] = ['Pending', 'Scheduled', 'Running', 'Completed', 'Failed', 'Stopped'];
const HEALTH_VALUE = { alive: 1, offline: 0, failed: -1 } as const;

export class ControlPlaneMetrics {
  readonly registry = new Registry();
  readonly messagesReceived: Counter<'kind'>;
  readonly messagesRejected: Counter<'kind' | 'reason'>;
  readonly resultsIgnored: Counter<'reason'>;
  readonly taskDuration: Histogram<'state'>;
  readonly tasksDispatched: Counter<'addressing'>;
  readonly httpRequests: Counter<'method' | 'code'>;
  readonly propletTransitions: Counter<'to'>;
  readonly chunksSent: Counter;
  readonly flTasksCreated: Counter;
  readonly flUpdates: Counter<'result'>;
  readonly flRoundDuration: Histogram<'phase'>;
  readonly flAggregation: Histogram;

  constructor(sources: MetricsSources, opts: { defaultMetrics?: boolean } = {}) {
    const registers = [this.registry];
    if (opts.defaultMetrics) collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'propeller_proplets_total',
      help: 'Number of registered proplets, by state and type',
      labelNames: ['state', 'type'],
      registers,
      collect() {
        this.reset();
        for (const state of ['alive', 'offline', 'failed']) for (const type of ['external', 'k8s']) this.set({ state, type }, 0);
        for (const p of sources.proplets()) this.inc({ state: p.state, type: p.proplet_type });
      },
    });
    new Gauge({
      name: 'propeller_tasks_total',
      help: 'Number of tasks, by state',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const state of TASK_STATES) this.set({ state }, 0);
        const counts = sources.taskCounts?.();
        if (counts) for (const [state, n] of counts) this.set({ state }, n);
        else for (const t of sources.tasks()) this.inc({ state: t.state });
      },
    });
    new Gauge({
      name: 'propeller_proplet_health_status',
      help: 'Proplet health: 1 alive, 0 offline, -1 failed',
      labelNames: ['proplet_id', 'device_type'],
      registers,
      collect() {
        this.reset();
        for (const p of sources.proplets()) this.set({ proplet_id: p.id, device_type: p.device_type }, HEALTH_VALUE[p.state]);
      },
    });
    this.taskDuration = new Histogram({
      name: 'propeller_task_duration_seconds',
      help: 'Task execution duration from start to result, by final state',
      labelNames: ['state'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600],
      registers,
    });
    this.messagesReceived = new Counter({ name: 'propeller_messages_received_total', help: 'MQTT messages received by kind', labelNames: ['kind'], registers });
    this.messagesRejected = new Counter({
      name: 'propeller_messages_rejected_total',
      help: 'MQTT messages dropped by the control plane, by kind and reason',
      labelNames: ['kind', 'reason'],
      registers,
    });
    this.resultsIgnored = new Counter({
      name: 'propeller_results_ignored_total',
      help: 'Results not applied: unknown task, not running on that proplet, stale attempt',
      labelNames: ['reason'],
      registers,
    });
    this.tasksDispatched = new Counter({
      name: 'propeller_tasks_dispatched_total',
      help: 'Start messages sent, by addressing (direct per-proplet topic or shared topic)',
      labelNames: ['addressing'],
      registers,
    });
    this.httpRequests = new Counter({ name: 'propeller_http_requests_total', help: 'HTTP API requests', labelNames: ['method', 'code'], registers });
    this.chunksSent = new Counter({ name: 'propeller_registry_chunks_sent_total', help: 'Module chunks sent to proplets over MQTT', registers });
    const phases = (names: string[], list: Iterable<string> | ReadonlyMap<string, number> | undefined, g: Gauge<'phase'>) => {
      g.reset();
      for (const phase of names) g.set({ phase }, 0);
      if (list instanceof Map) for (const [phase, n] of list) g.set({ phase }, n);
      else for (const phase of (list as Iterable<string> | undefined) ?? []) g.inc({ phase });
    };
    new Gauge({
      name: 'propeller_federatedjobs_total',
      help: 'FederatedJobs, by phase',
      labelNames: ['phase'],
      registers,
      collect() {
        phases(['Pending', 'Running', 'Completed', 'Failed'], sources.flJobPhases?.(), this);
      },
    });
    new Gauge({
      name: 'propeller_trainingrounds_total',
      help: 'TrainingRounds, by phase',
      labelNames: ['phase'],
      registers,
      collect() {
        phases(['Pending', 'Running', 'Aggregating', 'Completed', 'Failed'], sources.flRoundPhases?.(), this);
      },
    });
    new Gauge({
      name: 'propeller_rounds_active',
      help: 'TrainingRounds open for updates now',
      registers,
      collect() {
        this.set(sources.flActiveRounds?.() ?? 0);
      },
    });
    new Gauge({
      name: 'propeller_fl_kept_memory_bytes',
      help: 'Aggregation memory kept between the rounds of running FederatedJobs (released when the last one ends)',
      registers,
      collect() {
        this.set(sources.flKeptMemoryBytes?.() ?? 0);
      },
    });
    this.flTasksCreated = new Counter({ name: 'propeller_jobs_created_total', help: 'Participant tasks created for FL rounds (the seed\'s Jobs per participant)', registers });
    this.flUpdates = new Counter({
      name: 'propeller_fl_updates_total',
      help: 'FL updates received, by result: accepted, partial (a part of a streamed update), duplicate, late, not_participant, stale, shape, non_finite, ...',
      labelNames: ['result'],
      registers,
    });
    this.flRoundDuration = new Histogram({
      name: 'propeller_fl_round_duration_seconds',
      help: 'TrainingRound duration from start to its end, by final phase',
      labelNames: ['phase'],
      buckets: [0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800],
      registers,
    });
    this.flAggregation = new Histogram({
      name: 'propeller_fl_aggregation_seconds',
      help: 'Time to finish a round\'s aggregate and encode it',
      buckets: [0.001, 0.01, 0.05, 0.1, 0.5, 1, 5],
      registers,
    });
    this.propletTransitions = new Counter({ name: 'propeller_proplet_transitions_total', help: 'Proplet liveness transitions', labelNames: ['to'], registers });
  }
}
