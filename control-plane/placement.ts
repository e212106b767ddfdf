// Placement: which proplet takes a task. A placement returns a decision and
// does nothing itself, so each algorithm is tested without a broker.

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

/** Why `p` cannot take `task`, or undefined when it can. Shared by every algorithm. */
export function unfit(task: Task, p: Proplet, assigned: number): string | undefined {
  if (p.state !== 'alive') return `${p.state}`;
  const max = p.capacity.max_tasks;
  if (max !== undefined && assigned >= max) return `at capacity (${assigned}/${max} tasks)`;
  const mem = task.resources.memory_bytes;
  if (mem !== undefined && p.capacity.memory_bytes !== undefined && mem > p.capacity.memory_bytes) {
    return `needs ${mem} bytes of memory, has ${p.capacity.memory_bytes}`;
  }
  const size = task.module_size;
  if (size !== undefined && p.capacity.max_module_bytes !== undefined && size > p.capacity.max_module_bytes) {
    return `module of ${size} bytes exceeds its limit of ${p.capacity.max_module_bytes}`;
  }
  return undefined;
}

/** Filters candidates and explains an empty result in one line. */
export function candidates(task: Task, view: PlacementView): { fit: Proplet[]; reason?: string } {
  const fit: Proplet[] = [];
  const reasons = new Map<string, number>();
  let seen = 0;
  for (const p of view.proplets) {
    if (task.pinned_proplet_id !== undefined && p.id !== task.pinned_proplet_id) continue;
    seen++;
    if (task.excluded_proplets?.includes(p.id)) {
      reasons.set('refused it before', (reasons.get('refused it before') ?? 0) + 1);
      continue;
    }
    const why = unfit(task, p, view.assigned(p.id));
    if (why === undefined) fit.push(p);
    else reasons.set(why, (reasons.get(why) ?? 0) + 1);
  }
  if (fit.length > 0) return { fit };
  if (task.pinned_proplet_id !== undefined) {
    return { fit, reason: seen === 0 ? `pinned proplet ${task.pinned_proplet_id} is not registered` : `pinned proplet ${task.pinned_proplet_id} is ${[...reasons.keys()][0]}` };
  }
  if (seen === 0) return { fit, reason: 'no proplets registered' };
  const summary = [...reasons].map(([why, n]) => `${n} ${why}`).join(', ');
  return { fit, reason: `no proplet can take it: ${summary}` };
}

export function roundRobin(): Placement {
  let cursor = 0;
  return {
    name: 'round-robin',
    place(task, view) {
      const { fit, reason } = candidates(task, view);
      if (fit.length === 0) return { ok: false, reason: reason! };
      const p = fit[cursor++ % fit.length]!;
      return { ok: true, propletId: p.id };
    },
  };
}
