// Candidate filtering shared by every algorithm, and the one-line reason when
// nothing fits.
//
// A proplet can take a task when, in this order (the first failing check is
// its reason):
//   static, per (selector, group), fixed for a batch:
//     1. it is alive                                   → "offline" / "failed"
//     2. its device type is one of match_device_types  → "device type not esp32/rpi"
//     3. it has every match_capabilities entry         → "lacks capability sensor"
//     4. every match_labels entry equals its label     → "lacks label zone=north"
//     5. every group selector label equals its label   → "not in group edge-devices"
//   dynamic, per task and load:
//     6. assigned tasks < max tasks, the smallest of capacity.max_tasks, the
//        scheduler's maxTasksPerProplet and the group's max_tasks_per_proplet
//                                                      → "at capacity (4/4 tasks)"
//     7. the module fits capacity.max_module_bytes     → "module too large (N bytes)"
//     8. requested cpu ≤ capacity − cpu requested by tasks already there
//                                                      → "short of cpu for 500m"
//     9. the same for memory                           → "short of memory for 67108864 bytes"
//    10. it is not in the task's excluded_proplets     → "refused it before"
// An unknown capacity (undefined) does not limit; a request of 0 or none is
// not checked. A pinned task is checked against its one proplet only, and its
// reason carries that proplet's own figures ("short of memory (needs 40
// bytes, 20 of 100 free)"). The order lets the indexes count reasons without
// visiting every proplet: capacity does not depend on the task, and
// exclusions are few.

import type { Proplet, PropletGroup, PropletSelector, Task } from '../model.ts';
import { NO_LOAD, type GroupSource, type Load, type LoadSource } from './types.ts';

export function loadOf(src: LoadSource, id: string): Load {
  return (typeof src === 'function' ? src(id) : src.get(id)) ?? NO_LOAD;
}

export function groupOf(src: GroupSource | undefined, name: string): PropletGroup | undefined {
  if (src === undefined) return undefined;
  return typeof src === 'function' ? src(name) : src.get(name);
}

/** Byte-order string comparison, the tie-break everywhere ("p10" < "p9"). */
export function cmpId(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * A task's selector and group, normalised: what makes the static part of the
 * filter. Tasks with the same `key` have the same candidate pool.
 */
export interface PoolSpec {
  key: string;
  deviceTypes: readonly string[] | undefined;
  capabilities: readonly string[];
  labels: readonly (readonly [string, string])[];
  group: PropletGroup | undefined;
  groupLabels: readonly (readonly [string, string])[];
  /** min(scheduler maxTasksPerProplet, group max_tasks_per_proplet); the proplet's own max is applied per proplet. */
  base: number;
  /**
   * The reasons of checks 2–5, built once per spec so that sorting a large
   * fleet into pool members and non-members builds no strings: device type,
   * then one per capability, one per label, then the group.
   */
  reasons: readonly string[];
}

const uniqSorted = (xs: readonly string[] | undefined): string[] => [...new Set(xs ?? [])].sort(cmpId);
const sortedEntries = (r: Record<string, string> | undefined): [string, string][] =>
  Object.entries(r ?? {}).sort((a, b) => cmpId(a[0], b[0]));

export function poolSpec(sel: PropletSelector | undefined, group: PropletGroup | undefined, maxTasksPerProplet: number | undefined): PoolSpec {
  const dt = uniqSorted(sel?.match_device_types);
  const caps = uniqSorted(sel?.match_capabilities);
  const labels = sortedEntries(sel?.match_labels);
  const groupLabels = sortedEntries(group?.selector.match_labels);
  const base = Math.min(maxTasksPerProplet ?? Infinity, group?.scheduling.max_tasks_per_proplet ?? Infinity);
  const key = dt.length === 0 && caps.length === 0 && labels.length === 0 && group === undefined ? '' : JSON.stringify([group?.name ?? null, dt, caps, labels]);
  const reasons = [
    `device type not ${dt.join('/')}`,
    ...caps.map((c) => `lacks capability ${c}`),
    ...labels.map(([k, v]) => `lacks label ${k}=${v}`),
    `not in group ${group?.name ?? ''}`,
  ];
  return { key, deviceTypes: dt.length > 0 ? dt : undefined, capabilities: caps, labels, group, groupLabels, base, reasons };
}

const hasLabel = (p: Proplet, k: string, v: string): boolean => Object.hasOwn(p.labels, k) && p.labels[k] === v;

/**
 * Which of checks 2–5 an alive proplet fails first, as an index into
 * spec.reasons, or -1 when it is in the pool.
 */
export function staticCheck(p: Proplet, spec: PoolSpec): number {
  if (spec.deviceTypes !== undefined && !spec.deviceTypes.includes(p.device_type)) return 0;
  const caps = spec.capabilities;
  for (let k = 0; k < caps.length; k++) if (!p.capabilities.includes(caps[k]!)) return 1 + k;
  const labels = spec.labels;
  for (let k = 0; k < labels.length; k++) if (!hasLabel(p, labels[k]![0], labels[k]![1])) return 1 + caps.length + k;
  if (spec.group !== undefined) for (const [k, v] of spec.groupLabels) if (!hasLabel(p, k, v)) return spec.reasons.length - 1;
  return -1;
}

/** Why `p` is outside the pool of `spec` (checks 1–5), or undefined when it is in it. */
export function staticReason(p: Proplet, spec: PoolSpec): string | undefined {
  if (p.state !== 'alive') return p.state;
  const k = staticCheck(p, spec);
  return k < 0 ? undefined : spec.reasons[k];
}

// The aggregated dynamic reasons, shared by the linear scan and the indexes.
export const atCapacity = (tasks: number, max: number): string => `at capacity (${tasks}/${max} tasks)`;
export const moduleTooLarge = (size: number): string => `module too large (${size} bytes)`;
export const shortOfCpu = (req: number): string => `short of cpu for ${req}m`;
export const shortOfMemory = (req: number): string => `short of memory for ${req} bytes`;
export const REFUSED = 'refused it before';

/** staticReason(p, spec) === undefined, without building strings. */
export function inPool(p: Proplet, spec: PoolSpec): boolean {
  if (p.state !== 'alive') return false;
  if (spec.deviceTypes !== undefined && !spec.deviceTypes.includes(p.device_type)) return false;
  for (const c of spec.capabilities) if (!p.capabilities.includes(c)) return false;
  for (const [k, v] of spec.labels) if (!hasLabel(p, k, v)) return false;
  for (const [k, v] of spec.groupLabels) if (!hasLabel(p, k, v)) return false;
  return true;
}

/**
 * The proplets and their load as flat arrays, plus the requests of the task
 * being placed. Built once per batch; placing a task adds its requests to the
 * proplet's load, so the next decision in the batch sees them.
 */
export class Snapshot {
  readonly proplets: Proplet[] = [];
  readonly index = new Map<string, number>();
  readonly n: number;
  readonly tasks: Float64Array;
  readonly cpu: Float64Array;
  readonly mem: Float64Array;
  /** NaN when unknown. */
  readonly capCpu: Float64Array;
  readonly capMem: Float64Array;
  /** Infinity when unknown. */
  readonly capTasks: Float64Array;
  readonly maxMod: Float64Array;
  readonly isK8s: Uint8Array;
  /** Assigned tasks on k8s proplets and on all proplets (hybrid's loadBalancingRatio). */
  k8sTasks = 0;
  totalTasks = 0;
  // The task being placed.
  reqCpu = 0;
  reqMem = 0;
  /** -1 when the task gives no module size. */
  size = -1;
  excluded: Set<number> | null = null;
  private rankCache: Int32Array | undefined;
  private byRankCache: Int32Array | undefined;

  constructor(proplets: Iterable<Proplet>, load: LoadSource) {
    for (const p of proplets) {
      if (this.index.has(p.id)) continue; // a duplicate id: the first one counts
      this.index.set(p.id, this.proplets.length);
      this.proplets.push(p);
    }
    const n = (this.n = this.proplets.length);
    this.tasks = new Float64Array(n);
    this.cpu = new Float64Array(n);
    this.mem = new Float64Array(n);
    this.capCpu = new Float64Array(n);
    this.capMem = new Float64Array(n);
    this.capTasks = new Float64Array(n);
    this.maxMod = new Float64Array(n);
    this.isK8s = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      const p = this.proplets[i]!;
      const l = loadOf(load, p.id);
      this.tasks[i] = l.tasks;
      this.cpu[i] = l.cpu_millis;
      this.mem[i] = l.memory_bytes;
      const c = p.capacity;
      this.capCpu[i] = c.cpu_millis ?? NaN;
      this.capMem[i] = c.memory_bytes ?? NaN;
      this.capTasks[i] = c.max_tasks ?? Infinity;
      this.maxMod[i] = c.max_module_bytes ?? Infinity;
      const k8s = p.proplet_type === 'k8s';
      this.isK8s[i] = k8s ? 1 : 0;
      this.totalTasks += l.tasks;
      if (k8s) this.k8sTasks += l.tasks;
    }
  }

  /** Position of each proplet in byte order of ids. */
  get rank(): Int32Array {
    if (this.rankCache === undefined) {
      const r = new Int32Array(this.n);
      const by = this.byRank;
      for (let i = 0; i < by.length; i++) r[by[i]!] = i;
      this.rankCache = r;
    }
    return this.rankCache;
  }

  /** Proplet indices in byte order of ids. */
  get byRank(): Int32Array {
    if (this.byRankCache === undefined) {
      const ps = this.proplets;
      let sorted = true;
      for (let i = 1; i < ps.length && sorted; i++) sorted = ps[i - 1]!.id < ps[i]!.id;
      // Stores list proplets by id: then the order is the input's, no sort (and no garbage) needed.
      if (sorted) {
        const by = new Int32Array(ps.length);
        for (let i = 0; i < by.length; i++) by[i] = i;
        this.byRankCache = by;
      } else {
        const ids = ps.map((p, i) => [p.id, i] as const).sort((a, b) => cmpId(a[0], b[0]));
        this.byRankCache = Int32Array.from(ids, (x) => x[1]);
      }
    }
    return this.byRankCache;
  }

  setTask(task: Task): void {
    this.reqCpu = task.resources.cpu_millis ?? 0;
    this.reqMem = task.resources.memory_bytes ?? 0;
    this.size = task.module_size ?? -1;
    const ex = task.excluded_proplets;
    if (ex === undefined || ex.length === 0) this.excluded = null;
    else {
      this.excluded = new Set();
      for (const id of ex) {
        const i = this.index.get(id);
        if (i !== undefined) this.excluded.add(i);
      }
    }
  }

  /** Effective max tasks of proplet `i` in a pool with `base`. */
  maxTasks(i: number, base: number): number {
    const c = this.capTasks[i]!;
    return c < base ? c : base;
  }

  /** Checks 6–10 for proplet `i` and the current task, without building strings. */
  fits(i: number, base: number): boolean {
    if (this.tasks[i]! >= this.maxTasks(i, base)) return false;
    if (this.size >= 0 && this.size > this.maxMod[i]!) return false;
    const rc = this.reqCpu;
    if (rc > 0) {
      const cap = this.capCpu[i]!;
      if (cap === cap && !(rc <= cap - this.cpu[i]!)) return false;
    }
    const rm = this.reqMem;
    if (rm > 0) {
      const cap = this.capMem[i]!;
      if (cap === cap && !(rm <= cap - this.mem[i]!)) return false;
    }
    return this.excluded === null || !this.excluded.has(i);
  }

  /**
   * Why proplet `i` fails checks 6–10, or undefined. `detailed` adds the
   * proplet's own figures (for a pin); without them, equal reasons aggregate.
   */
  dynamicReason(i: number, base: number, detailed: boolean): string | undefined {
    const max = this.maxTasks(i, base);
    if (this.tasks[i]! >= max) return atCapacity(this.tasks[i]!, max);
    if (this.size >= 0 && this.size > this.maxMod[i]!) return detailed ? `module of ${this.size} bytes exceeds its limit of ${this.maxMod[i]}` : moduleTooLarge(this.size);
    const rc = this.reqCpu;
    const cc = this.capCpu[i]!;
    if (rc > 0 && cc === cc && !(rc <= cc - this.cpu[i]!)) {
      return detailed ? `short of cpu (needs ${rc}m, ${cc - this.cpu[i]!}m of ${cc}m free)` : shortOfCpu(rc);
    }
    const rm = this.reqMem;
    const cm = this.capMem[i]!;
    if (rm > 0 && cm === cm && !(rm <= cm - this.mem[i]!)) {
      return detailed ? `short of memory (needs ${rm} bytes, ${cm - this.mem[i]!} of ${cm} free)` : shortOfMemory(rm);
    }
    if (this.excluded !== null && this.excluded.has(i)) return REFUSED;
    return undefined;
  }

  /** Adds the current task's requests to proplet `i`. */
  commit(i: number): void {
    this.tasks[i]! += 1;
    this.cpu[i]! += this.reqCpu;
    this.mem[i]! += this.reqMem;
    this.totalTasks += 1;
    if (this.isK8s[i] === 1) this.k8sTasks += 1;
  }

  loadAt(i: number): Load {
    return { tasks: this.tasks[i]!, cpu_millis: this.cpu[i]!, memory_bytes: this.mem[i]! };
  }
}

/** Why a pinned task cannot go to its proplet, or undefined when it can. */
export function pinReason(s: Snapshot, pinned: string, spec: PoolSpec): string | undefined {
  const i = s.index.get(pinned);
  if (i === undefined) return `pinned proplet ${pinned} is not registered`;
  const p = s.proplets[i]!;
  const why = staticReason(p, spec) ?? s.dynamicReason(i, spec.base, true);
  if (why === undefined) return undefined;
  return p.state !== 'alive' ? `pinned proplet ${pinned} is ${why}` : `pinned proplet ${pinned}: ${why}`;
}

const MAX_REASONS = 6;

/** "no proplet can take it: 3 offline, 2 at capacity (4/4 tasks), 1 lacks capability sensor": most frequent first. */
export function summarize(counts: ReadonlyMap<string, number>, total: number): string {
  if (total === 0) return 'no proplets registered';
  const all = [...counts].sort((a, b) => b[1] - a[1] || cmpId(a[0], b[0]));
  const shown = all.slice(0, MAX_REASONS).map(([why, n]) => `${n} ${why}`);
  const rest = all.slice(MAX_REASONS);
  if (rest.length > 0) shown.push(`${rest.length} other reasons (${rest.reduce((a, [, n]) => a + n, 0)} proplets)`);
  return `no proplet can take it: ${shown.join(', ')}`;
}

export function bump(m: Map<string, number>, k: string, by = 1): void {
  m.set(k, (m.get(k) ?? 0) + by);
}

/** The reason nothing fits, by scanning every proplet. */
export function noFitReason(s: Snapshot, spec: PoolSpec): string {
  const counts = new Map<string, number>();
  for (let i = 0; i < s.n; i++) {
    const why = staticReason(s.proplets[i]!, spec) ?? s.dynamicReason(i, spec.base, false);
    if (why !== undefined) bump(counts, why);
  }
  return summarize(counts, s.n);
}

export interface FilterOptions {
  maxTasksPerProplet?: number;
  group?: PropletGroup;
}

/**
 * The filter on its own: every proplet that can take `task`, in input order,
 * or a reason when none can. Pure; it neither needs nor changes any state.
 */
export function candidates(task: Task, proplets: Iterable<Proplet>, load: LoadSource, opts: FilterOptions = {}): { fit: Proplet[]; reason?: string } {
  const s = new Snapshot(proplets, load);
  const spec = poolSpec(task.proplet_selector, opts.group, opts.maxTasksPerProplet);
  s.setTask(task);
  if (task.pinned_proplet_id !== undefined) {
    const why = pinReason(s, task.pinned_proplet_id, spec);
    return why === undefined ? { fit: [s.proplets[s.index.get(task.pinned_proplet_id)!]!] } : { fit: [], reason: why };
  }
  const fit: Proplet[] = [];
  for (let i = 0; i < s.n; i++) {
    if (inPool(s.proplets[i]!, spec) && s.fits(i, spec.base)) fit.push(s.proplets[i]!);
  }
  return fit.length > 0 ? { fit } : { fit, reason: noFitReason(s, spec) };
}
