// Shapes shared by the scheduling functions. Placement here is a set of pure
// functions in the style of wasmCloud's wadm scalers: given a task, the
// proplets, their load and the algorithm's state, they return what to do
// (a decision, or why nothing can be done) and the next state. Nothing here
// sends a message, starts a timer or mutates its inputs.

import type { Algorithm, HybridConfig, PropletGroup } from '../model.ts';
import type { PlacementView } from '../placement.ts';

/** What the control plane has already put on one proplet: tasks assigned there and what they requested. */
export interface Load {
  tasks: number;
  cpu_millis: number;
  memory_bytes: number;
}

export const NO_LOAD: Readonly<Load> = Object.freeze({ tasks: 0, cpu_millis: 0, memory_bytes: 0 });

/** Load per proplet id; a proplet missing from it carries none. */
export type LoadSource = ReadonlyMap<string, Load> | ((propletId: string) => Load | undefined);

/** Proplet groups by name. */
export type GroupSource = ReadonlyMap<string, PropletGroup> | ((name: string) => PropletGroup | undefined);

/**
 * A decision: the proplet and why it was chosen, or why none was. It is a
 * superset of placement.ts's Decision, so it can be returned through Placement.
 */
export type SchedDecision = { ok: true; propletId: string; why: string } | { ok: false; reason: string };

/**
 * The algorithms' state between decisions. Round-robin keeps one cursor per
 * candidate pool (group + selector): the id of the proplet it placed on last,
 * so tasks with different selectors do not skew each other's rotation.
 */
export interface SchedulerState {
  readonly cursors: Readonly<Record<string, string>>;
}

export const INITIAL_STATE: SchedulerState = Object.freeze({ cursors: Object.freeze({}) });

export interface SchedulerConfig {
  /** The default algorithm; a task in a group uses its group's. */
  algorithm: Algorithm;
  /** Scheduler-wide cap on tasks per proplet (the smallest of this, the proplet's and the group's applies). */
  maxTasksPerProplet?: number;
  hybrid: HybridConfig;
  groups?: GroupSource;
  /** For 'random': a number in [0, 1). Inject a seeded one for deterministic results. Default Math.random. */
  random?: () => number;
  /**
   * How candidates are found. 'indexed' builds per-pool segment trees once per
   * batch; 'linear' scans every proplet per decision (the reference
   * semantics); 'auto' (default) takes 'linear' for batches under 16 tasks,
   * where building indexes costs more than it saves. Results are identical.
   */
  engine?: 'auto' | 'indexed' | 'linear';
}

export interface BatchResult {
  /** One per task, in order. */
  decisions: SchedDecision[];
  state: SchedulerState;
  /** Load after the batch of every proplet that was given a task in it. */
  load: ReadonlyMap<string, Load>;
}

export interface PlaceResult {
  decision: SchedDecision;
  state: SchedulerState;
}

/** What a scheduler reads, a superset of placement.ts's PlacementView so existing callers keep compiling. */
export interface SchedulingView extends PlacementView {
  /** Tasks and requested resources per proplet; without it, `assigned()` with no resources. */
  load?(propletId: string): Load;
  group?(name: string): PropletGroup | undefined;
}
