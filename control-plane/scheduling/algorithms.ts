// The placement algorithms, as pure functions over a Snapshot (proplets and
// their load as arrays) and a Finder (how candidates are found).
//
// The semantics, which both finders implement exactly (test/scheduling.test.ts
// checks the indexed one against the linear one on random inputs):
//
//   round-robin     candidates in byte order of id; the first that fits after
//                   the pool's cursor (the id placed on last), wrapping. The
//                   cursor is per pool (group + selector) and is returned in
//                   the new state.
//   least-loaded    the fit with the fewest assigned tasks; ties by the least
//                   memory requested by its tasks, then by id.
//   random          `open` = the pool's proplets below their max tasks, in id
//                   order; draw k = ⌊random()·open⌋ and take the first that
//                   fits from the k-th on, wrapping. Uniform over the open
//                   proplets when every open one fits the task's requests.
//   resource-aware  best fit. score = mean over cpu and memory of the share
//                   of capacity left free after placing the task:
//                     ((cap_cpu − used_cpu − req_cpu)/cap_cpu + (cap_mem − used_mem − req_mem)/cap_mem) / 2
//                   where a dimension of unknown capacity counts as 1 (all
//                   free) and one of zero capacity as 0; lowest score wins
//                   (the tightest fit, which keeps roomy proplets free for
//                   big tasks); ties by id. Computed as freeShare − taskShare
//                   (see raScore) so that it is monotone within a capacity
//                   class even in floating point. Proplets with neither
//                   capacity known rank after every proplet with a known one,
//                   by fewest tasks then id.
//   hybrid          seed 003. The task's preferred_proplet_type k8s|external
//                   wins; for 'any' or none, a compute keyword (when
//                   preferK8sForCompute) → k8s, an edge keyword (when
//                   preferExternalForEdge) → external; both or neither → no
//                   preference, and loadBalancingRatio picks: k8s when
//                   k8s_tasks < ratio × (all_tasks + 1), i.e. when k8s is
//                   below its share counting this task, else external. Within
//                   the chosen type, least-loaded; when none of that type
//                   fits, the other type (and `why` says so).
//   Keywords match whole words of the task's name or of one of its label
//   values, case insensitively ("ml" matches "ml-inference" and "ML batch",
//   not "html"; "edge ai" matches "Edge-AI").

import type { HybridConfig, Task } from '../model.ts';
import { cmpId, groupOf, inPool, noFitReason, pinReason, poolSpec, type PoolSpec, type Snapshot } from './filter.ts';
import type { SchedDecision, SchedulerConfig } from './types.ts';

export type PropletType = 'k8s' | 'external';

/** How candidates are found: by scanning (LinearFinder) or through indexes (IndexedFinder in pool.ts). */
export interface Finder {
  /** First fitting proplet with id > `after`, wrapping; -1 when none fits. */
  roundRobin(spec: PoolSpec, after: string | undefined): number;
  /** Least-loaded fitting proplet (of `type` when given); -1 when none fits. */
  leastLoaded(spec: PoolSpec, type: PropletType | undefined): number;
  /** undefined when no proplet is open (no draw is made); i = -1 when open ones exist but none fits. */
  random(spec: PoolSpec, random: () => number): { i: number; k: number; open: number } | undefined;
  /** Best fit; -1 when none fits. */
  resourceAware(spec: PoolSpec): number;
  noFit(spec: PoolSpec): string;
  /** Called after Snapshot.commit(i). */
  commit(i: number): void;
}

/**
 * The share of proplet `i`'s capacity free now: the mean over cpu and memory
 * of (capacity − requested) / capacity, a dimension of unknown capacity
 * counting 1 and one of zero capacity 0. The resource-aware indexes keep
 * proplets ordered by it.
 */
export function freeShare(s: Snapshot, i: number): number {
  const cc = s.capCpu[i]!;
  const cm = s.capMem[i]!;
  const fc = cc === cc ? (cc > 0 ? (cc - s.cpu[i]!) / cc : 0) : 1;
  const fm = cm === cm ? (cm > 0 ? (cm - s.mem[i]!) / cm : 0) : 1;
  return (fc + fm) / 2;
}

/** What the current task takes of proplet `i`'s free share: the same for every proplet of the same capacities. */
export function taskShare(s: Snapshot, i: number): number {
  const cc = s.capCpu[i]!;
  const cm = s.capMem[i]!;
  return ((cc > 0 ? s.reqCpu / cc : 0) + (cm > 0 ? s.reqMem / cm : 0)) / 2;
}

/**
 * The resource-aware score of proplet `i` for the current task: the share
 * left free after placing it, freeShare − taskShare (lower is a tighter fit).
 * Computed as one subtraction so that, among proplets of equal capacities,
 * it never decreases as freeShare grows, even in floating point.
 */
export function raScore(s: Snapshot, i: number): number {
  return freeShare(s, i) - taskShare(s, i);
}

export function hasKnownCapacity(s: Snapshot, i: number): boolean {
  const cc = s.capCpu[i]!;
  const cm = s.capMem[i]!;
  return cc === cc || cm === cm;
}

export function drawIndex(random: () => number, n: number): number {
  const k = Math.floor(random() * n);
  return k >= n ? n - 1 : k > 0 ? k : 0;
}

/** The reference finder: one scan of every proplet per decision. Simple enough to be obviously right. */
export class LinearFinder implements Finder {
  constructor(private readonly s: Snapshot) {}

  private fit(i: number, spec: PoolSpec): boolean {
    return inPool(this.s.proplets[i]!, spec) && this.s.fits(i, spec.base);
  }

  roundRobin(spec: PoolSpec, after: string | undefined): number {
    const { s } = this;
    let first = -1;
    let next = -1;
    for (let i = 0; i < s.n; i++) {
      if (!this.fit(i, spec)) continue;
      const id = s.proplets[i]!.id;
      if (first < 0 || id < s.proplets[first]!.id) first = i;
      if (after !== undefined && id > after && (next < 0 || id < s.proplets[next]!.id)) next = i;
    }
    return next >= 0 ? next : first;
  }

  leastLoaded(spec: PoolSpec, type: PropletType | undefined): number {
    const { s } = this;
    let best = -1;
    for (let i = 0; i < s.n; i++) {
      if (type !== undefined && (s.isK8s[i] === 1) !== (type === 'k8s')) continue;
      if (!this.fit(i, spec)) continue;
      if (best < 0 || lessLoaded(s, i, best)) best = i;
    }
    return best;
  }

  random(spec: PoolSpec, random: () => number): { i: number; k: number; open: number } | undefined {
    const { s } = this;
    const open: number[] = [];
    for (let i = 0; i < s.n; i++) {
      if (inPool(s.proplets[i]!, spec) && s.tasks[i]! < s.maxTasks(i, spec.base)) open.push(i);
    }
    if (open.length === 0) return undefined;
    open.sort((a, b) => cmpId(s.proplets[a]!.id, s.proplets[b]!.id));
    const k = drawIndex(random, open.length);
    for (let j = 0; j < open.length; j++) {
      const i = open[(k + j) % open.length]!;
      if (s.fits(i, spec.base)) return { i, k, open: open.length };
    }
    return { i: -1, k, open: open.length };
  }

  resourceAware(spec: PoolSpec): number {
    const { s } = this;
    let best = -1;
    let bestScore = Infinity;
    let unknown = -1;
    for (let i = 0; i < s.n; i++) {
      if (!this.fit(i, spec)) continue;
      if (hasKnownCapacity(s, i)) {
        const sc = raScore(s, i);
        if (best < 0 || sc < bestScore || (sc === bestScore && s.proplets[i]!.id < s.proplets[best]!.id)) {
          best = i;
          bestScore = sc;
        }
      } else if (unknown < 0 || s.tasks[i]! < s.tasks[unknown]! || (s.tasks[i] === s.tasks[unknown] && s.proplets[i]!.id < s.proplets[unknown]!.id)) {
        unknown = i;
      }
    }
    return best >= 0 ? best : unknown;
  }

  noFit(spec: PoolSpec): string {
    return noFitReason(this.s, spec);
  }

  commit(): void {}
}

/** least-loaded order: fewer tasks, then less memory requested, then id. */
export function lessLoaded(s: Snapshot, a: number, b: number): boolean {
  const ta = s.tasks[a]!;
  const tb = s.tasks[b]!;
  if (ta !== tb) return ta < tb;
  const ma = s.mem[a]!;
  const mb = s.mem[b]!;
  if (ma !== mb) return ma < mb;
  return s.proplets[a]!.id < s.proplets[b]!.id;
}

// ---- hybrid ----

const NOT_WORD = /[^\p{L}\p{N}]+/u;
const keywordCache = new WeakMap<readonly string[], { kw: string; re: RegExp }[]>();

/** Each keyword as a case-insensitive pattern of whole words: "ml" matches "ml-inference" and "ML batch", not "html". */
function keywordPatterns(kws: readonly string[]): { kw: string; re: RegExp }[] {
  let n = keywordCache.get(kws);
  if (n === undefined) {
    n = [];
    for (const kw of kws) {
      const words = kw.split(NOT_WORD).filter(Boolean);
      if (words.length > 0) n.push({ kw, re: new RegExp(`(?<![\\p{L}\\p{N}])${words.join('[^\\p{L}\\p{N}]+')}(?![\\p{L}\\p{N}])`, 'iu') });
    }
    keywordCache.set(kws, n);
  }
  return n;
}

/** The first of `keywords` (in their order) found as whole words in the task's name or one of its label values. */
export function matchKeyword(task: Task, keywords: readonly string[]): string | undefined {
  for (const { kw, re } of keywordPatterns(keywords)) {
    if (re.test(task.name)) return kw;
    for (const k in task.labels) if (re.test(task.labels[k]!)) return kw;
  }
  return undefined;
}

/** The hybrid preference of a task and why; `type` undefined when it has none. */
export function hybridPreference(task: Task, h: HybridConfig): { type?: PropletType; why: string } {
  const p = task.preferred_proplet_type;
  if (p === 'k8s' || p === 'external') return { type: p, why: `task prefers ${p}` };
  if (!h.preferK8sForCompute && !h.preferExternalForEdge) return { why: '' };
  const compute = h.preferK8sForCompute ? matchKeyword(task, h.computeKeywords) : undefined;
  const edge = h.preferExternalForEdge ? matchKeyword(task, h.edgeKeywords) : undefined;
  if (compute !== undefined && edge === undefined) return { type: 'k8s', why: `compute keyword "${compute}" → k8s` };
  if (edge !== undefined && compute === undefined) return { type: 'external', why: `edge keyword "${edge}" → external` };
  if (compute !== undefined && edge !== undefined) return { why: `compute keyword "${compute}" and edge keyword "${edge}" both match, no preference; ` };
  return { why: '' };
}

/** With no preference: k8s while its share of assigned tasks, counting this one, stays below `ratio`. */
export function hybridRatioType(k8sTasks: number, totalTasks: number, ratio: number): PropletType {
  const r = ratio === ratio ? Math.min(1, Math.max(0, ratio)) : 0.5;
  return k8sTasks < r * (totalTasks + 1) ? 'k8s' : 'external';
}

// ---- one decision ----

/** Per-batch memo of pool specs, so tasks sharing a selector object normalise it once. */
export type SpecCache = Map<string, WeakMap<object, PoolSpec>>;
const NO_SELECTOR = {};

function specFor(task: Task, group: ReturnType<typeof groupOf>, cfg: SchedulerConfig, cache: SpecCache): PoolSpec {
  const gk = group?.name ?? '';
  let byGroup = cache.get(gk);
  if (byGroup === undefined) cache.set(gk, (byGroup = new WeakMap()));
  const sk = task.proplet_selector ?? NO_SELECTOR;
  let spec = byGroup.get(sk);
  if (spec === undefined) {
    spec = poolSpec(task.proplet_selector, group, cfg.maxTasksPerProplet);
    byGroup.set(sk, spec);
  }
  return spec;
}

/**
 * Decides one task: the shared logic of every algorithm (groups, pins, why
 * strings, hybrid's type choice); `f` only finds candidates. On success the
 * snapshot's load and the finder's indexes take the task; `cursors` is the
 * round-robin state, updated in place (placeBatch copies it in and out).
 */
export function decide(task: Task, s: Snapshot, f: Finder, cfg: SchedulerConfig, cursors: Map<string, string>, cache: SpecCache): SchedDecision {
  let group: ReturnType<typeof groupOf>;
  if (task.proplet_group !== undefined) {
    group = groupOf(cfg.groups, task.proplet_group);
    if (group === undefined) return { ok: false, reason: `proplet group ${task.proplet_group} does not exist` };
  }
  const spec = specFor(task, group, cfg, cache);
  s.setTask(task);

  if (task.pinned_proplet_id !== undefined) {
    const reason = pinReason(s, task.pinned_proplet_id, spec);
    if (reason !== undefined) return { ok: false, reason };
    const i = s.index.get(task.pinned_proplet_id)!;
    s.commit(i);
    f.commit(i);
    return { ok: true, propletId: task.pinned_proplet_id, why: `pinned to ${task.pinned_proplet_id}` };
  }

  const alg = group?.scheduling.algorithm ?? cfg.algorithm;
  let i = -1;
  let why = '';
  switch (alg) {
    case 'round-robin': {
      const after = cursors.get(spec.key);
      i = f.roundRobin(spec, after);
      if (i >= 0) {
        why = after === undefined ? 'round-robin: first fit by id' : `round-robin: next fit after ${after}`;
        cursors.set(spec.key, s.proplets[i]!.id);
      }
      break;
    }
    case 'least-loaded':
      i = f.leastLoaded(spec, undefined);
      if (i >= 0) why = `least-loaded: ${s.tasks[i]} tasks, ${s.mem[i]} bytes requested there`;
      break;
    case 'random': {
      const r = f.random(spec, cfg.random ?? Math.random);
      if (r !== undefined && r.i >= 0) {
        i = r.i;
        why = `random: drew ${r.k + 1} of ${r.open} open proplets`;
      }
      break;
    }
    case 'resource-aware':
      i = f.resourceAware(spec);
      if (i >= 0) {
        why = hasKnownCapacity(s, i)
          ? `resource-aware: best fit, score ${raScore(s, i).toFixed(3)} (mean share of cpu/memory left free)`
          : `resource-aware: no fitting proplet with known capacity; fewest tasks (${s.tasks[i]})`;
      }
      break;
    case 'hybrid': {
      const h = cfg.hybrid;
      const pref = hybridPreference(task, h);
      let first: PropletType;
      let because: string;
      if (pref.type !== undefined) {
        first = pref.type;
        because = pref.why;
      } else {
        first = hybridRatioType(s.k8sTasks, s.totalTasks, h.loadBalancingRatio);
        because = `${pref.why}k8s has ${s.k8sTasks} of ${s.totalTasks} tasks, target share ${h.loadBalancingRatio} → ${first}`;
      }
      i = f.leastLoaded(spec, first);
      if (i >= 0) why = `hybrid: ${because}; least-loaded ${first} proplet (${s.tasks[i]} tasks)`;
      else {
        const other: PropletType = first === 'k8s' ? 'external' : 'k8s';
        i = f.leastLoaded(spec, other);
        if (i >= 0) why = `hybrid: ${because}, but no ${first} proplet fits: fell back to ${other}; least-loaded ${other} proplet (${s.tasks[i]} tasks)`;
      }
      break;
    }
    default: {
      const never: never = alg;
      return { ok: false, reason: `unknown scheduling algorithm ${String(never)}` };
    }
  }
  if (i < 0) return { ok: false, reason: f.noFit(spec) };
  s.commit(i);
  f.commit(i);
  return { ok: true, propletId: s.proplets[i]!.id, why: group === undefined ? why : `group ${group.name}: ${why}` };
}
