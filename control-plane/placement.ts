// Placement: which proplet takes a task. A placement returns a decision and
// does nothing itself; the algorithms are in scheduling/.

import type { Proplet, Task } from './model.ts';

export type Decision = { ok: true; propletId: string } | { ok: false; reason: string };

/** What placement may read: proplets, and how many tasks the control plane has on each. */
export interface PlacementView {
  proplets: Iterable<Proplet>;
  assigned(propletId: string): number;
}

export interface Placement {
  readonly name: string;
  place(task: Task, view: PlacementView): Decision;
  /** All waiting tasks at once, each decision seeing the load of the earlier ones. */
  placeBatch?(tasks: readonly Task[], view: PlacementView): Decision[];
}
