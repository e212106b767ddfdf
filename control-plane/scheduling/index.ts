// Scheduling: placement as pure functions (filter.ts, algorithms.ts,
// batch.ts), with indexes for large batches (pool.ts), and createScheduler(),
// which wraps them in placement.ts's Placement interface and keeps the
// algorithm state (round-robin cursors) between calls.

import { ConfigError } from '../config.ts';
import type { Algorithm, HybridConfig, Task } from '../model.ts';
import type { Placement } from '../placement.ts';
import { placeBatch } from './batch.ts';
import { INITIAL_STATE, type Load, type LoadSource, type SchedDecision, type SchedulerConfig, type SchedulerState, type SchedulingView } from './types.ts';

export { candidates, inPool, poolSpec, staticReason, summarize, Snapshot } from './filter.ts';
export { freeShare, hybridPreference, hybridRatioType, matchKeyword, raScore, taskShare } from './algorithms.ts';
export { INDEX_THRESHOLD, place, placeBatch } from './batch.ts';
export * from './types.ts';

/** Seed 003's ConfigMap example. */
export const DEFAULT_HYBRID: Readonly<HybridConfig> = Object.freeze({
  preferK8sForCompute: true,
  preferExternalForEdge: true,
  computeKeywords: Object.freeze(['ml', 'ai', 'compute', 'batch']) as string[],
  edgeKeywords: Object.freeze(['sensor', 'iot', 'edge', 'device']) as string[],
  loadBalancingRatio: 0.5,
});

const TYPES: Record<string, Algorithm> = {
  roundrobin: 'round-robin',
  'round-robin': 'round-robin',
  'least-loaded': 'least-loaded',
  random: 'random',
  'resource-aware': 'resource-aware',
  hybrid: 'hybrid',
};

/** SCHEDULER_TYPE (seed 003) or a group's algorithm (seed 000), case and surrounding space ignored. */
export function parseSchedulerType(s: string): Algorithm {
  const a = Object.hasOwn(TYPES, s.trim().toLowerCase()) ? TYPES[s.trim().toLowerCase()] : undefined;
  if (a === undefined) throw new ConfigError(`unknown scheduler type ${JSON.stringify(s)}: expected one of ${Object.keys(TYPES).join(', ')}`);
  return a;
}

export interface CreateSchedulerConfig {
  type: Algorithm | 'roundrobin';
  maxTasksPerProplet?: number;
  hybrid?: Partial<HybridConfig>;
}

export interface CreateSchedulerOptions {
  /** For 'random': numbers in [0, 1); inject a seeded generator for repeatable placement. */
  random?: () => number;
  engine?: SchedulerConfig['engine'];
}

export interface Scheduler extends Placement {
  readonly name: string;
  readonly algorithm: Algorithm;
  readonly config: Readonly<SchedulerConfig>;
  /** Current state (round-robin cursors); replaced, never mutated, by each call. */
  readonly state: SchedulerState;
  place(task: Task, view: SchedulingView): SchedDecision;
  /** All tasks at once, each decision seeing the load of the earlier ones; same results as place() in a loop. */
  placeBatch(tasks: readonly Task[], view: SchedulingView): SchedDecision[];
}

function loadSource(view: SchedulingView): LoadSource {
  const load = view.load;
  if (load !== undefined) return (id: string): Load => load.call(view, id);
  return (id: string): Load => ({ tasks: view.assigned(id), cpu_millis: 0, memory_bytes: 0 });
}

export function createScheduler(config: CreateSchedulerConfig, opts: CreateSchedulerOptions = {}): Scheduler {
  const algorithm = parseSchedulerType(config.type);
  const hybrid: HybridConfig = { ...DEFAULT_HYBRID, ...config.hybrid };
  if (!(hybrid.loadBalancingRatio >= 0 && hybrid.loadBalancingRatio <= 1)) throw new Error(`hybrid.loadBalancingRatio must be within 0..1, got ${hybrid.loadBalancingRatio}`);
  if (config.maxTasksPerProplet !== undefined && !(config.maxTasksPerProplet >= 0)) throw new Error(`maxTasksPerProplet must be ≥ 0, got ${config.maxTasksPerProplet}`);
  const base: SchedulerConfig = {
    algorithm,
    hybrid,
    ...(config.maxTasksPerProplet !== undefined ? { maxTasksPerProplet: config.maxTasksPerProplet } : {}),
    ...(opts.random !== undefined ? { random: opts.random } : {}),
    ...(opts.engine !== undefined ? { engine: opts.engine } : {}),
  };
  let state: SchedulerState = INITIAL_STATE;
  const batch = (tasks: readonly Task[], view: SchedulingView): SchedDecision[] => {
    const group = view.group;
    const cfg: SchedulerConfig = group === undefined ? base : { ...base, groups: (name: string) => group.call(view, name) };
    const r = placeBatch(tasks, view.proplets, loadSource(view), state, cfg);
    state = r.state;
    return r.decisions;
  };
  return {
    name: algorithm,
    algorithm,
    config: base,
    get state() {
      return state;
    },
    place: (task, view) => batch([task], view)[0]!,
    placeBatch: batch,
  };
}
