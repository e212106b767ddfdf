// placeBatch: every pending task in one call, each decision seeing the load
// the earlier ones added, so a batch never over-fills a proplet. place() is
// the batch of one. Both are pure: inputs are read, never changed; the new
// algorithm state and the resulting load come back in the result.

import type { Proplet, Task } from '../model.ts';
import { decide, LinearFinder, type Finder, type SpecCache } from './algorithms.ts';
import { Snapshot } from './filter.ts';
import { IndexedFinder } from './pool.ts';
import type { BatchResult, Load, LoadSource, PlaceResult, SchedDecision, SchedulerConfig, SchedulerState } from './types.ts';

/** Below this many tasks, 'auto' scans instead of building indexes. */
export const INDEX_THRESHOLD = 16;

export function placeBatch(tasks: readonly Task[], proplets: Iterable<Proplet>, load: LoadSource, state: SchedulerState, config: SchedulerConfig): BatchResult {
  const s = new Snapshot(proplets, load);
  const engine = config.engine ?? 'auto';
  const f: Finder = engine === 'linear' || (engine === 'auto' && tasks.length < INDEX_THRESHOLD) ? new LinearFinder(s) : new IndexedFinder(s);
  const cursors = new Map(Object.entries(state.cursors));
  const cache: SpecCache = new Map();
  const touched = new Set<number>();
  const decisions: SchedDecision[] = [];
  for (const t of tasks) {
    const d = decide(t, s, f, config, cursors, cache);
    if (d.ok) touched.add(s.index.get(d.propletId)!);
    decisions.push(d);
  }
  const after = new Map<string, Load>();
  for (const i of touched) after.set(s.proplets[i]!.id, s.loadAt(i));
  return { decisions, state: { cursors: Object.fromEntries(cursors) }, load: after };
}

export function place(task: Task, proplets: Iterable<Proplet>, load: LoadSource, state: SchedulerState, config: SchedulerConfig): PlaceResult {
  const r = placeBatch([task], proplets, load, state, config);
  return { decision: r.decisions[0]!, state: r.state };
}
