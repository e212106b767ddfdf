// Indexes for placing many tasks in one batch, pure-function friendly: they
// are built from a Snapshot at the start of a batch, live only inside it, and
// never change a decision, only how fast it is found (the results equal the
// linear scan's, see test/scheduling.test.ts).
//
// A Pool is the set of proplets that pass the static checks of one
// (selector, group): built once per batch by one scan, when the first task
// with that signature comes. Each pool holds segment trees over its members,
// one per use: in id order for round-robin and random, in capacity order
// (memory, cpu, id) for least-loaded, hybrid (one tree per proplet type) and
// resource-aware, so proplets too small for a task sit in subtrees that are
// pruned whole. Every node keeps, over the open leaves below it (those under
// their max tasks):
//   open              how many (random's k-th draw, "any room left")
//   frontier          up to K points (free cpu, free memory), Infinity when
//                     unknown: the Pareto-maximal leaves, exact while there
//                     are at most K of them, else adjacent points merged into
//                     their coordinate-wise max (never smaller, so pruning
//                     stays safe). Separate maxima of cpu and memory would let
//                     a subtree of proplets out of cpu next to proplets out of
//                     memory look as if it could fit both, all the way down.
//   maxMod / min*     the largest module limit, and minima for counting reasons
// which prunes every subtree where no leaf can fit the task, plus
//   best              least-loaded: the leaf with the least (tasks, memory, id)
//   best1             resource-aware, proplets of unknown capacity: least (tasks, id)
//   open0, minFrac*, minCap*   resource-aware: a lower bound of the score
// so least-loaded and resource-aware are branch and bound searches that
// descend straight to the answer when it fits. Placing a task updates the
// leaves of that proplet in every tree of every pool it is in: O(pools ×
// log n).
//
// When nothing fits, the reason counts every proplet by its first failing
// check without visiting most of them: proplets outside the pool are counted
// once per pool, those at capacity are kept counted as placements fill them,
// and the open members are classified by subtree (a subtree whose open leaves
// all lack the module limit, cpu or memory is counted whole from its min/max
// aggregates). Reasons are also cached per pool and task shape until a member
// of the pool takes a task.

import { raScore, type Finder, type PropletType } from './algorithms.ts';
import { atCapacity, bump, moduleTooLarge, REFUSED, shortOfCpu, shortOfMemory, staticReason, summarize, type PoolSpec, type Snapshot } from './filter.ts';

type Mode = 'id' | 'll' | 'ra';
const EPS = 1e-9;
/** Points per node in the (free cpu, free memory) frontier. */
const K = 4;

class Tree {
  readonly size: number;
  readonly m: number;
  readonly open: Int32Array;
  /** Frontier points of node n at [n*K, n*K + fn[n]), cpu descending, memory ascending. */
  readonly fc: Float64Array;
  readonly fm: Float64Array;
  readonly fn: Uint8Array;
  readonly maxMod: Float64Array;
  readonly minCpu: Float64Array;
  readonly minMem: Float64Array;
  readonly minMod: Float64Array;
  readonly best: Int32Array;
  readonly best1: Int32Array;
  readonly open0: Int32Array;
  readonly minFc: Float64Array;
  readonly minCc: Float64Array;
  readonly minFm: Float64Array;
  readonly minCm: Float64Array;
  /** resource-aware: least current free score ((free cpu share + free memory share) / 2). */
  readonly minComb: Float64Array;
  private readonly scC = new Float64Array(2 * K);
  private readonly scM = new Float64Array(2 * K);
  // search scratch
  private found = -1;
  private foundScore = Infinity;
  private readonly rank: Int32Array;

  constructor(
    private readonly s: Snapshot,
    /** Leaf position → proplet index. */
    readonly leaf: Int32Array,
    /** Proplet index → leaf position, -1 when not a member. */
    readonly pos: Int32Array,
    private readonly base: number,
    private readonly mode: Mode,
  ) {
    this.m = leaf.length;
    this.rank = s.rank;
    let size = 1;
    while (size < this.m) size <<= 1;
    this.size = size;
    const len = 2 * size;
    const ll = mode === 'll';
    const ra = mode === 'ra';
    this.open = new Int32Array(len);
    this.fc = new Float64Array(len * K);
    this.fm = new Float64Array(len * K);
    this.fn = new Uint8Array(len);
    this.maxMod = new Float64Array(len);
    this.minCpu = new Float64Array(len);
    this.minMem = new Float64Array(len);
    this.minMod = new Float64Array(len);
    this.best = new Int32Array(ll ? len : 0);
    this.best1 = new Int32Array(ra ? len : 0);
    this.open0 = new Int32Array(ra ? len : 0);
    this.minFc = new Float64Array(ra ? len : 0);
    this.minCc = new Float64Array(ra ? len : 0);
    this.minFm = new Float64Array(ra ? len : 0);
    this.minCm = new Float64Array(ra ? len : 0);
    this.minComb = new Float64Array(ra ? len : 0);
    for (let j = 0; j < size; j++) this.setLeaf(j);
    for (let node = size - 1; node >= 1; node--) this.pull(node);
  }

  private setLeaf(j: number): void {
    const node = this.size + j;
    const s = this.s;
    const i = j < this.m ? this.leaf[j]! : -1;
    const isOpen = i >= 0 && s.tasks[i]! < s.maxTasks(i, this.base);
    if (!isOpen) {
      this.open[node] = 0;
      this.fn[node] = 0;
      this.maxMod[node] = -Infinity;
      this.minCpu[node] = this.minMem[node] = this.minMod[node] = Infinity;
      if (this.mode === 'll') this.best[node] = -1;
      if (this.mode === 'ra') {
        this.best1[node] = -1;
        this.open0[node] = 0;
        this.minFc[node] = this.minCc[node] = this.minFm[node] = this.minCm[node] = this.minComb[node] = Infinity;
      }
      return;
    }
    const cc = s.capCpu[i]!;
    const cm = s.capMem[i]!;
    this.open[node] = 1;
    const freeCpu = cc === cc ? cc - s.cpu[i]! : Infinity;
    const freeMem = cm === cm ? cm - s.mem[i]! : Infinity;
    this.fn[node] = 1;
    this.fc[node * K] = freeCpu;
    this.fm[node * K] = freeMem;
    this.maxMod[node] = s.maxMod[i]!;
    this.minCpu[node] = freeCpu;
    this.minMem[node] = freeMem;
    this.minMod[node] = this.maxMod[node]!;
    if (this.mode === 'll') this.best[node] = j;
    if (this.mode === 'ra') {
      const known = cc === cc || cm === cm;
      this.open0[node] = known ? 1 : 0;
      this.best1[node] = known ? -1 : j;
      // Fraction left free now, and the capacity it is a share of; a zero
      // capacity scores 0 whatever the request, hence an infinite divisor.
      this.minFc[node] = known && cc === cc ? (cc > 0 ? (cc - s.cpu[i]!) / cc : 0) : Infinity;
      this.minCc[node] = known && cc === cc && cc > 0 ? cc : Infinity;
      this.minFm[node] = known && cm === cm ? (cm > 0 ? (cm - s.mem[i]!) / cm : 0) : Infinity;
      this.minCm[node] = known && cm === cm && cm > 0 ? cm : Infinity;
      const shareC = cc === cc ? (cc > 0 ? (cc - s.cpu[i]!) / cc : 0) : 1;
      const shareM = cm === cm ? (cm > 0 ? (cm - s.mem[i]!) / cm : 0) : 1;
      this.minComb[node] = known ? (shareC + shareM) / 2 : Infinity;
    }
  }

  private pull(node: number): void {
    const l = node << 1;
    const r = l | 1;
    this.open[node] = this.open[l]! + this.open[r]!;
    this.mergeFrontier(node, l, r);
    this.maxMod[node] = Math.max(this.maxMod[l]!, this.maxMod[r]!);
    this.minCpu[node] = Math.min(this.minCpu[l]!, this.minCpu[r]!);
    this.minMem[node] = Math.min(this.minMem[l]!, this.minMem[r]!);
    this.minMod[node] = Math.min(this.minMod[l]!, this.minMod[r]!);
    if (this.mode === 'll') {
      const a = this.best[l]!;
      const b = this.best[r]!;
      this.best[node] = a < 0 ? b : b < 0 ? a : this.lessLL(a, b) ? a : b;
    } else if (this.mode === 'ra') {
      const a = this.best1[l]!;
      const b = this.best1[r]!;
      this.best1[node] = a < 0 ? b : b < 0 ? a : this.less1(a, b) ? a : b;
      this.open0[node] = this.open0[l]! + this.open0[r]!;
      this.minFc[node] = Math.min(this.minFc[l]!, this.minFc[r]!);
      this.minCc[node] = Math.min(this.minCc[l]!, this.minCc[r]!);
      this.minFm[node] = Math.min(this.minFm[l]!, this.minFm[r]!);
      this.minCm[node] = Math.min(this.minCm[l]!, this.minCm[r]!);
      this.minComb[node] = Math.min(this.minComb[l]!, this.minComb[r]!);
    }
  }

  /** The frontier of `node` from its children's: merge by cpu, drop dominated points, then merge neighbours down to K. */
  private mergeFrontier(node: number, l: number, r: number): void {
    const { fc, fm, scC, scM } = this;
    const na = this.fn[l]!;
    const nb = this.fn[r]!;
    const oa = l * K;
    const ob = r * K;
    let a = 0;
    let b = 0;
    let n = 0;
    while (a < na || b < nb) {
      let c: number;
      let m: number;
      if (b >= nb || (a < na && (fc[oa + a]! > fc[ob + b]! || (fc[oa + a] === fc[ob + b] && fm[oa + a]! >= fm[ob + b]!)))) {
        c = fc[oa + a]!;
        m = fm[oa + a]!;
        a++;
      } else {
        c = fc[ob + b]!;
        m = fm[ob + b]!;
        b++;
      }
      // cpu never increases along the merge: keep a point only if it has more memory than every kept one
      if (n === 0 || m > scM[n - 1]!) {
        scC[n] = c;
        scM[n] = m;
        n++;
      }
    }
    while (n > K) {
      // merge the neighbours whose merged point adds least (cpu of the first, memory of the second)
      let best = 0;
      let bestCost = Infinity;
      for (let k = 0; k + 1 < n; k++) {
        const cost = (scC[k]! - scC[k + 1]!) * (scM[k + 1]! - scM[k]!);
        if (cost < bestCost) {
          bestCost = cost;
          best = k;
        }
      }
      scM[best] = scM[best + 1]!;
      for (let k = best + 1; k + 1 < n; k++) {
        scC[k] = scC[k + 1]!;
        scM[k] = scM[k + 1]!;
      }
      n--;
    }
    const o = node * K;
    for (let k = 0; k < n; k++) {
      fc[o + k] = scC[k]!;
      fm[o + k] = scM[k]!;
    }
    this.fn[node] = n;
  }

  update(i: number): void {
    const j = this.pos[i]!;
    if (j < 0) return;
    this.setLeaf(j);
    for (let node = (this.size + j) >> 1; node >= 1; node >>= 1) this.pull(node);
  }

  /** (tasks, memory, id) of leaf a < that of leaf b. */
  private lessLL(a: number, b: number): boolean {
    const s = this.s;
    const pa = this.leaf[a]!;
    const pb = this.leaf[b]!;
    const ta = s.tasks[pa]!;
    const tb = s.tasks[pb]!;
    if (ta !== tb) return ta < tb;
    const ma = s.mem[pa]!;
    const mb = s.mem[pb]!;
    if (ma !== mb) return ma < mb;
    return this.rank[pa]! < this.rank[pb]!;
  }

  /** (tasks, id) of leaf a < that of leaf b. */
  private less1(a: number, b: number): boolean {
    const s = this.s;
    const pa = this.leaf[a]!;
    const pb = this.leaf[b]!;
    const ta = s.tasks[pa]!;
    const tb = s.tasks[pb]!;
    if (ta !== tb) return ta < tb;
    return this.rank[pa]! < this.rank[pb]!;
  }

  /** Some leaf below `node` might fit the current task. */
  private canFit(node: number): boolean {
    const n = this.fn[node]!;
    if (n === 0) return false;
    const s = this.s;
    if (s.size >= 0 && this.maxMod[node]! < s.size) return false;
    const rc = s.reqCpu;
    const rm = s.reqMem;
    if (rc <= 0 && rm <= 0) return true;
    const o = node * K;
    for (let k = 0; k < n; k++) if ((rc <= 0 || this.fc[o + k]! >= rc) && (rm <= 0 || this.fm[o + k]! >= rm)) return true;
    return false;
  }

  private fitsLeaf(j: number): boolean {
    return j < this.m && this.s.fits(this.leaf[j]!, this.base);
  }

  get openCount(): number {
    return this.open[1]!;
  }

  /** First leaf position ≥ lo that fits, or -1. */
  firstFit(lo: number): number {
    return lo >= this.m ? -1 : this.ff(1, 0, this.size, lo);
  }

  private ff(node: number, nl: number, nr: number, lo: number): number {
    if (nr <= lo || !this.canFit(node)) return -1;
    if (node >= this.size) return this.fitsLeaf(nl) ? nl : -1;
    const mid = (nl + nr) >> 1;
    const a = this.ff(node << 1, nl, mid, lo);
    return a >= 0 ? a : this.ff((node << 1) | 1, mid, nr, lo);
  }

  /** Position of the k-th (0-based) open leaf; k < openCount. */
  kthOpen(k: number): number {
    let node = 1;
    while (node < this.size) {
      const l = node << 1;
      const c = this.open[l]!;
      if (k < c) node = l;
      else {
        k -= c;
        node = l | 1;
      }
    }
    return node - this.size;
  }

  /** Least (tasks, memory, id) leaf that fits, or -1. */
  leastLoaded(): number {
    this.found = -1;
    this.ll(1);
    return this.found;
  }

  private ll(node: number): void {
    if (!this.canFit(node)) return;
    const b = this.best[node]!;
    if (this.found >= 0 && !this.lessLL(b, this.found)) return;
    if (node >= this.size) {
      if (this.fitsLeaf(node - this.size)) this.found = node - this.size;
      return;
    }
    const l = node << 1;
    const r = l | 1;
    const bl = this.best[l]!;
    const br = this.best[r]!;
    if (bl >= 0 && (br < 0 || this.lessLL(bl, br))) {
      this.ll(l);
      this.ll(r);
    } else {
      this.ll(r);
      this.ll(l);
    }
  }

  /** Best fit among leaves of known capacity, else fewest tasks among unknown; -1 when none fits. */
  resourceAware(): number {
    this.found = -1;
    this.foundScore = Infinity;
    this.ra(1);
    if (this.found >= 0) return this.found;
    this.r1(1);
    return this.found;
  }

  /** Lower bound of the score of every open leaf of known capacity below `node`. */
  private bound(node: number): number {
    const s = this.s;
    const dc = s.reqCpu / this.minCc[node]!;
    const dm = s.reqMem / this.minCm[node]!;
    // each share minimised on its own, and the two jointly: both are lower bounds
    const apart = (Math.min(1, this.minFc[node]! - dc) + Math.min(1, this.minFm[node]! - dm)) / 2;
    const joint = this.minComb[node]! - (dc + dm) / 2;
    return apart > joint ? apart : joint;
  }

  private ra(node: number): void {
    if (this.open0[node] === 0 || !this.canFit(node)) return;
    const s = this.s;
    if (node >= this.size) {
      const j = node - this.size;
      if (!this.fitsLeaf(j)) return;
      const i = this.leaf[j]!;
      const sc = raScore(s, i);
      if (this.found < 0 || sc < this.foundScore || (sc === this.foundScore && this.rank[i]! < this.rank[this.leaf[this.found]!]!)) {
        this.found = j;
        this.foundScore = sc;
      }
      return;
    }
    if (this.found >= 0 && this.bound(node) > this.foundScore + EPS) return;
    const l = node << 1;
    const r = l | 1;
    if (this.open0[r] === 0 || (this.open0[l] !== 0 && this.bound(l) <= this.bound(r))) {
      this.ra(l);
      this.ra(r);
    } else {
      this.ra(r);
      this.ra(l);
    }
  }

  /**
   * Counts the open leaves by their first failing check (module, cpu,
   * memory, exclusion) for a task that fits none of them.
   */
  classify(c: FailCounts): void {
    this.cl(1, c);
  }

  private cl(node: number, c: FailCounts): void {
    const n = this.open[node]!;
    if (n === 0) return;
    const s = this.s;
    const sz = s.size;
    const rc = s.reqCpu;
    const rm = s.reqMem;
    if (sz >= 0 && this.maxMod[node]! < sz) {
      c.module += n;
      return;
    }
    const o = node * K;
    if (sz < 0 || this.minMod[node]! >= sz) {
      if (rc > 0 && this.fc[o]! < rc) {
        c.cpu += n;
        return;
      }
      if ((rc <= 0 || this.minCpu[node]! >= rc) && rm > 0 && this.fm[o + this.fn[node]! - 1]! < rm) {
        c.mem += n;
        return;
      }
    }
    if (node >= this.size) {
      // module, cpu and memory fit (else counted above): only an exclusion is left
      if (s.excluded !== null && s.excluded.has(this.leaf[node - this.size]!)) c.refused += 1;
      return;
    }
    this.cl(node << 1, c);
    this.cl((node << 1) | 1, c);
  }

  private r1(node: number): void {
    if (!this.canFit(node)) return;
    const b = this.best1[node]!;
    if (b < 0 || (this.found >= 0 && !this.less1(b, this.found))) return;
    if (node >= this.size) {
      if (this.fitsLeaf(node - this.size)) this.found = node - this.size;
      return;
    }
    const l = node << 1;
    const r = l | 1;
    const bl = this.best1[l]!;
    const br = this.best1[r]!;
    if (bl >= 0 && (br < 0 || this.less1(bl, br))) {
      this.r1(l);
      this.r1(r);
    } else {
      this.r1(r);
      this.r1(l);
    }
  }
}

interface FailCounts {
  module: number;
  cpu: number;
  mem: number;
  refused: number;
}

class Pool {
  /** Members in id order. */
  readonly members: Int32Array;
  /** Members at capacity, by reason ("at capacity (16/16 tasks)"): kept up to date by commit(). */
  readonly full = new Map<string, number>();
  /** Static reasons of the proplets outside the pool, counted once. */
  readonly outside = new Map<string, number>();
  readonly trees = new Map<string, Tree>();
  /** Bumped whenever a member takes a task: cached reasons of older versions are stale. */
  version = 0;
  readonly reasons = new Map<string, { version: number; reason: string }>();

  constructor(
    private readonly s: Snapshot,
    readonly spec: PoolSpec,
  ) {
    const members: number[] = [];
    for (const i of s.byRank) {
      const why = staticReason(s.proplets[i]!, spec);
      if (why === undefined) {
        members.push(i);
        const max = s.maxTasks(i, spec.base);
        if (s.tasks[i]! >= max) bump(this.full, atCapacity(s.tasks[i]!, max));
      } else bump(this.outside, why);
    }
    this.members = Int32Array.from(members);
  }

  /** Member `i` took a task (the snapshot already counts it). */
  commit(i: number): void {
    this.version++;
    const max = this.s.maxTasks(i, this.spec.base);
    const t = this.s.tasks[i]!;
    if (t - 1 >= max) {
      const k = atCapacity(t - 1, max);
      const n = this.full.get(k)! - 1;
      if (n === 0) this.full.delete(k);
      else this.full.set(k, n);
    }
    if (t >= max) bump(this.full, atCapacity(t, max));
    for (const tree of this.trees.values()) tree.update(i);
  }

  /** Trees that together cover every member once. */
  cover(): Tree[] | undefined {
    for (const k of ['id', 'll', 'ra']) {
      const t = this.trees.get(k);
      if (t !== undefined) return [t];
    }
    const a = this.trees.get('ll:k8s');
    const b = this.trees.get('ll:external');
    return a !== undefined && b !== undefined ? [a, b] : undefined;
  }
}

export class IndexedFinder implements Finder {
  private readonly pools = new Map<string, Pool>();
  /** Pools each proplet is a member of. */
  private readonly poolsOf: Pool[][];
  private readonly capOrder: Int32Array;

  constructor(private readonly s: Snapshot) {
    this.poolsOf = Array.from({ length: s.n }, () => []);
    // Capacity order, shared by every least-loaded / resource-aware tree:
    // memory, then cpu (unknown last), then id.
    const key = (x: number): number => (x === x ? x : Infinity);
    const rank = s.rank;
    this.capOrder = Int32Array.from(s.byRank).sort((a, b) => key(s.capMem[a]!) - key(s.capMem[b]!) || key(s.capCpu[a]!) - key(s.capCpu[b]!) || rank[a]! - rank[b]!);
  }

  private pool(spec: PoolSpec): Pool {
    let p = this.pools.get(spec.key);
    if (p === undefined || p.spec.base !== spec.base) {
      p = new Pool(this.s, spec);
      this.pools.set(spec.key, p);
      for (const i of p.members) this.poolsOf[i]!.push(p);
    }
    return p;
  }

  private tree(p: Pool, mode: Mode, type: PropletType | undefined): Tree {
    const k = type === undefined ? mode : `${mode}:${type}`;
    let t = p.trees.get(k);
    if (t === undefined) {
      const s = this.s;
      const pos = new Int32Array(s.n).fill(-1);
      for (const i of p.members) pos[i] = 0; // membership mark
      const order = mode === 'id' ? p.members : this.capOrder;
      const leaf: number[] = [];
      for (const i of order) {
        if (pos[i] !== 0) continue;
        if (type !== undefined && (s.isK8s[i] === 1) !== (type === 'k8s')) continue;
        leaf.push(i);
      }
      pos.fill(-1);
      leaf.forEach((i, j) => (pos[i] = j));
      t = new Tree(s, Int32Array.from(leaf), pos, p.spec.base, mode);
      p.trees.set(k, t);
    }
    return t;
  }

  roundRobin(spec: PoolSpec, after: string | undefined): number {
    const t = this.tree(this.pool(spec), 'id', undefined);
    let lo = 0;
    if (after !== undefined) {
      // first leaf whose id is > after
      let hi = t.m;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.s.proplets[t.leaf[mid]!]!.id > after) hi = mid;
        else lo = mid + 1;
      }
    }
    let j = t.firstFit(lo);
    if (j < 0 && lo > 0) j = t.firstFit(0);
    return j >= 0 ? t.leaf[j]! : -1;
  }

  leastLoaded(spec: PoolSpec, type: PropletType | undefined): number {
    const t = this.tree(this.pool(spec), 'll', type);
    const j = t.leastLoaded();
    return j >= 0 ? t.leaf[j]! : -1;
  }

  random(spec: PoolSpec, random: () => number): { i: number; k: number; open: number } | undefined {
    const t = this.tree(this.pool(spec), 'id', undefined);
    const open = t.openCount;
    if (open === 0) return undefined;
    const k = Math.min(open - 1, Math.max(0, Math.floor(random() * open)));
    const start = t.kthOpen(k);
    let j = t.firstFit(start);
    if (j < 0 && start > 0) j = t.firstFit(0);
    return { i: j >= 0 ? t.leaf[j]! : -1, k, open };
  }

  resourceAware(spec: PoolSpec): number {
    const t = this.tree(this.pool(spec), 'ra', undefined);
    const j = t.resourceAware();
    return j >= 0 ? t.leaf[j]! : -1;
  }

  noFit(spec: PoolSpec): string {
    const s = this.s;
    const p = this.pool(spec);
    const ex = s.excluded === null ? '' : [...s.excluded].sort((a, b) => a - b).join(',');
    const shape = `${s.reqCpu}|${s.reqMem}|${s.size}|${ex}`;
    const hit = p.reasons.get(shape);
    if (hit !== undefined && hit.version === p.version) return hit.reason;
    const counts = new Map(p.outside);
    for (const [why, n] of p.full) bump(counts, why, n);
    const c: FailCounts = { module: 0, cpu: 0, mem: 0, refused: 0 };
    for (const t of p.cover() ?? [this.tree(p, 'id', undefined)]) t.classify(c);
    if (c.module > 0) bump(counts, moduleTooLarge(s.size), c.module);
    if (c.cpu > 0) bump(counts, shortOfCpu(s.reqCpu), c.cpu);
    if (c.mem > 0) bump(counts, shortOfMemory(s.reqMem), c.mem);
    if (c.refused > 0) bump(counts, REFUSED, c.refused);
    const reason = summarize(counts, s.n);
    p.reasons.set(shape, { version: p.version, reason });
    return reason;
  }

  commit(i: number): void {
    for (const p of this.poolsOf[i]!) p.commit(i);
  }
}
