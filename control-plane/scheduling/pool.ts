// Indexes for placing many tasks in one batch, pure-function friendly: they
// are built from a Snapshot at the start of a batch, live only inside it, and
// never change a decision, only how fast it is found (the results equal the
// linear scan's, see test/scheduling.test.ts).
//
// A Pool is the set of proplets that pass the static checks of one
// (selector, group), built once per batch by one scan when the first task
// with that signature comes. Each pool holds the indexes its algorithms need:
//
//   round-robin, random   a segment tree over the members in id order: the
//                         first fit from a position, the k-th open member.
//   least-loaded, hybrid  a treap of the open members ordered by the key
//                         itself, (tasks, memory requested, id) (hybrid: one
//                         per proplet type): the answer is the leftmost node
//                         that fits. A scan in capacity or id order would walk
//                         every low-count proplet that cannot take the task
//                         (out of cpu but not of task slots): here the whole
//                         non-fitting prefix is skipped subtree by subtree.
//   resource-aware        one such treap per capacity class (equal cpu and
//                         memory capacity), ordered by the share free now;
//                         within a class the score is that share minus a
//                         constant, so the leftmost fit is the class's best
//                         fit, and the classes' bests are compared. Beyond
//                         MAX_CLASSES classes, a segment tree in capacity
//                         order searched by branch and bound instead.
//
// Every node of either kind of tree aggregates, over the open members below
// it (those under their max tasks):
//   frontier       up to K points (free cpu, free memory), Infinity when
//                  unknown: the Pareto-maximal members, exact while there are
//                  at most K of them, else neighbours merged into their
//                  coordinate-wise max (never smaller, so pruning stays safe).
//                  Separate maxima would let proplets out of cpu next to
//                  proplets out of memory look as if they could fit both.
//   maxMod         the largest module limit
//   min*           minima of free cpu, free memory and module limit
// so every subtree where no member can fit the task is skipped. Placing a
// task updates the proplet in every index of every pool it is in: O(pools ×
// log n) nodes, but the aggregates are combined again only up to the first
// ancestor where nothing but the member count changes (the moved proplet's
// point is dominated there); above it only counts are adjusted.
//
// When nothing fits, the reason counts every proplet by its first failing
// check without visiting most of them: proplets outside the pool are counted
// once per pool, those at capacity are kept counted as placements fill them,
// and the open members are classified by subtree (a subtree whose members all
// lack the module limit, cpu or memory is counted whole from its
// aggregates). Reasons are also cached per pool and task shape until a member
// of the pool takes a task.

import { freeShare, raScore, type Finder, type PropletType } from './algorithms.ts';
import { atCapacity, bump, moduleTooLarge, REFUSED, shortOfCpu, shortOfMemory, staticCheck, summarize, type PoolSpec, type Snapshot } from './filter.ts';

const EPS = 1e-9;
/** Points per node in the (free cpu, free memory) frontier. */
const K = 2;
/** Above this many capacity classes in a pool, resource-aware uses branch and bound. */
const MAX_CLASSES = 16;

interface FailCounts {
  module: number;
  cpu: number;
  mem: number;
  refused: number;
}

/** An index over some members of a pool. */
interface Index {
  /** Proplet `i` took a task (the snapshot already counts it). */
  update(i: number): void;
  /** Counts the open members by first failing check, for a task that fits none. */
  classify(c: FailCounts): void;
  /** Open members (under their max tasks). */
  readonly openCount: number;
}

// ---- aggregates shared by both kinds of tree ----

const scC = new Float64Array(2 * K + 1);
const scM = new Float64Array(2 * K + 1);

// Node aggregates, packed per node (one or two cache lines each) in a
// Float64Array with stride S: the frontier's cpu values, its memory values,
// then the fields below.
const FN = 2 * K; // frontier points
const CNT = FN + 1; // open members
const MAXMOD = FN + 2;
const MINMOD = FN + 3;
const MINCPU = FN + 4;
const MINMEM = FN + 5;
// The node's own member, in a treap (cached when it is inserted: its load does not change while it is in).
const SELFC = FN + 6;
const SELFM = FN + 7;
const SELFMOD = FN + 8;
const S = FN + 9;

/** Node aggregates over open members. A node combines up to two child nodes and, in a treap, its own member. */
class Aggregates {
  readonly d: Float64Array;

  constructor(len: number) {
    this.d = new Float64Array(len * S);
  }

  cnt(x: number): number {
    return this.d[x * S + CNT]!;
  }

  /** Stores proplet `i`'s free cpu, free memory and module limit as node `x`'s own member. */
  setSelf(s: Snapshot, x: number, i: number): void {
    const d = this.d;
    const o = x * S;
    const cc = s.capCpu[i]!;
    const cm = s.capMem[i]!;
    d[o + SELFC] = cc === cc ? cc - s.cpu[i]! : Infinity;
    d[o + SELFM] = cm === cm ? cm - s.mem[i]! : Infinity;
    d[o + SELFMOD] = s.maxMod[i]!;
  }

  /**
   * Node `x` = children a, b (-1 for none) and, when `self`, its own member
   * (setSelf). Returns whether anything but the count changed (or the count
   * crossed zero): when not, an ancestor's aggregates change only by the
   * count, which lets a treap update stop combining partway up (see Treap).
   */
  combine(x: number, a: number, b: number, self: boolean): boolean {
    const d = this.d;
    const o = x * S;
    if (self && (a < 0 || d[a * S + CNT] === 0) && (b < 0 || d[b * S + CNT] === 0)) {
      // Its own member alone (every treap leaf): a one-point frontier.
      const sc = d[o + SELFC]!;
      const sm = d[o + SELFM]!;
      const mod = d[o + SELFMOD]!;
      const same = d[o + CNT] === 1 && d[o + FN] === 1 && d[o] === sc && d[o + K] === sm && d[o + MAXMOD] === mod && d[o + MINMOD] === mod && d[o + MINCPU] === sc && d[o + MINMEM] === sm;
      d[o] = sc;
      d[o + K] = sm;
      d[o + FN] = 1;
      d[o + CNT] = 1;
      d[o + MAXMOD] = d[o + MINMOD] = mod;
      d[o + MINCPU] = sc;
      d[o + MINMEM] = sm;
      return !same;
    }
    let cnt = 0;
    let maxMod = -Infinity;
    let minMod = Infinity;
    let minCpu = Infinity;
    let minMem = Infinity;
    // The self point, if any, as a one-point list.
    let sn = 0;
    let sc = 0;
    let sm = 0;
    if (self) {
      sc = d[o + SELFC]!;
      sm = d[o + SELFM]!;
      sn = 1;
      cnt = 1;
      maxMod = minMod = d[o + SELFMOD]!;
      minCpu = sc;
      minMem = sm;
    }
    const oa = a * S;
    const ob = b * S;
    let na = 0;
    let nb = 0;
    if (a >= 0 && d[oa + CNT]! > 0) {
      na = d[oa + FN]!;
      cnt += d[oa + CNT]!;
      if (d[oa + MAXMOD]! > maxMod) maxMod = d[oa + MAXMOD]!;
      if (d[oa + MINMOD]! < minMod) minMod = d[oa + MINMOD]!;
      if (d[oa + MINCPU]! < minCpu) minCpu = d[oa + MINCPU]!;
      if (d[oa + MINMEM]! < minMem) minMem = d[oa + MINMEM]!;
    }
    if (b >= 0 && d[ob + CNT]! > 0) {
      nb = d[ob + FN]!;
      cnt += d[ob + CNT]!;
      if (d[ob + MAXMOD]! > maxMod) maxMod = d[ob + MAXMOD]!;
      if (d[ob + MINMOD]! < minMod) minMod = d[ob + MINMOD]!;
      if (d[ob + MINCPU]! < minCpu) minCpu = d[ob + MINCPU]!;
      if (d[ob + MINMEM]! < minMem) minMem = d[ob + MINMEM]!;
    }
    // Three-way merge of lists sorted by cpu descending, keeping only points
    // with more memory than every point before them (the Pareto frontier).
    let ia = 0;
    let ib = 0;
    let kept = 0;
    let lastM = -Infinity;
    while (ia < na || ib < nb || sn > 0) {
      let c = -Infinity;
      let m = -Infinity;
      let from = 0;
      if (ia < na) {
        c = d[oa + ia]!;
        m = d[oa + K + ia]!;
        from = 1;
      }
      if (ib < nb) {
        const c2 = d[ob + ib]!;
        const m2 = d[ob + K + ib]!;
        if (from === 0 || c2 > c || (c2 === c && m2 > m)) {
          c = c2;
          m = m2;
          from = 2;
        }
      }
      if (sn > 0 && (from === 0 || sc > c || (sc === c && sm > m))) {
        c = sc;
        m = sm;
        from = 3;
      }
      if (from === 1) ia++;
      else if (from === 2) ib++;
      else sn = 0;
      if (m > lastM) {
        scC[kept] = c;
        scM[kept] = m;
        kept++;
        lastM = m;
      }
    }
    while (kept > K) {
      // merge the neighbours whose merged point (cpu of the first, memory of the second) adds least
      let best = 0;
      let bestCost = Infinity;
      for (let k = 0; k + 1 < kept; k++) {
        const cost = (scC[k]! - scC[k + 1]!) * (scM[k + 1]! - scM[k]!);
        if (cost < bestCost) {
          bestCost = cost;
          best = k;
        }
      }
      scM[best] = scM[best + 1]!;
      for (let k = best + 1; k + 1 < kept; k++) {
        scC[k] = scC[k + 1]!;
        scM[k] = scM[k + 1]!;
      }
      kept--;
    }
    let same = d[o + FN] === kept && d[o + MAXMOD] === maxMod && d[o + MINMOD] === minMod && d[o + MINCPU] === minCpu && d[o + MINMEM] === minMem && (d[o + CNT] === 0) === (cnt === 0);
    for (let k = 0; k < kept; k++) {
      const c = scC[k]!;
      const m = scM[k]!;
      if (same && (d[o + k] !== c || d[o + K + k] !== m)) same = false;
      d[o + k] = c;
      d[o + K + k] = m;
    }
    d[o + FN] = kept;
    d[o + CNT] = cnt;
    d[o + MAXMOD] = maxMod;
    d[o + MINMOD] = minMod;
    d[o + MINCPU] = minCpu;
    d[o + MINMEM] = minMem;
    return !same;
  }

  /** Some open member below `x` might fit the current task. */
  canFit(s: Snapshot, x: number): boolean {
    const d = this.d;
    const o = x * S;
    const n = d[o + FN]!;
    if (n === 0) return false;
    if (s.size >= 0 && d[o + MAXMOD]! < s.size) return false;
    const rc = s.reqCpu;
    const rm = s.reqMem;
    if (rc <= 0 && rm <= 0) return true;
    for (let k = 0; k < n; k++) if ((rc <= 0 || d[o + k]! >= rc) && (rm <= 0 || d[o + K + k]! >= rm)) return true;
    return false;
  }

  /**
   * When every open member below `x` fails the same check (module, cpu,
   * memory, in that order), counts them all and returns true.
   */
  classifyWhole(s: Snapshot, x: number, c: FailCounts): boolean {
    const d = this.d;
    const o = x * S;
    const n = d[o + CNT]!;
    const sz = s.size;
    const rc = s.reqCpu;
    const rm = s.reqMem;
    if (sz >= 0 && d[o + MAXMOD]! < sz) {
      c.module += n;
      return true;
    }
    if (sz < 0 || d[o + MINMOD]! >= sz) {
      // the first frontier point has the most cpu, the last the most memory
      if (rc > 0 && d[o]! < rc) {
        c.cpu += n;
        return true;
      }
      if ((rc <= 0 || d[o + MINCPU]! >= rc) && rm > 0 && d[o + K + d[o + FN]! - 1]! < rm) {
        c.mem += n;
        return true;
      }
    }
    return false;
  }
}

/** One proplet that fits none of module, cpu, memory or exclusion: counts its first failing check. */
function classifyOne(s: Snapshot, i: number, c: FailCounts): void {
  if (s.size >= 0 && s.size > s.maxMod[i]!) c.module++;
  else if (s.reqCpu > 0 && s.capCpu[i] === s.capCpu[i] && !(s.reqCpu <= s.capCpu[i]! - s.cpu[i]!)) c.cpu++;
  else if (s.reqMem > 0 && s.capMem[i] === s.capMem[i] && !(s.reqMem <= s.capMem[i]! - s.mem[i]!)) c.mem++;
  else if (s.excluded !== null && s.excluded.has(i)) c.refused++;
}

// ---- segment tree, for round-robin and random (id order) and the resource-aware fallback ----

type Mode = 'id' | 'ra';

class SegTree implements Index {
  readonly size: number;
  readonly m: number;
  private readonly g: Aggregates;
  readonly best1: Int32Array;
  readonly open0: Int32Array;
  readonly minFc: Float64Array;
  readonly minCc: Float64Array;
  readonly minFm: Float64Array;
  readonly minCm: Float64Array;
  readonly minComb: Float64Array;
  private readonly rank: Int32Array;
  private found = -1;
  private foundScore = Infinity;

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
    const ra = mode === 'ra' ? len : 0;
    this.g = new Aggregates(len);
    this.best1 = new Int32Array(ra);
    this.open0 = new Int32Array(ra);
    this.minFc = new Float64Array(ra);
    this.minCc = new Float64Array(ra);
    this.minFm = new Float64Array(ra);
    this.minCm = new Float64Array(ra);
    this.minComb = new Float64Array(ra);
    for (let j = 0; j < size; j++) this.setLeaf(j);
    for (let node = size - 1; node >= 1; node--) this.pull(node);
  }

  /** Returns whether the leaf's aggregates changed in more than its count (always, for 'ra'). */
  private setLeaf(j: number): boolean {
    const node = this.size + j;
    const s = this.s;
    const i = j < this.m ? this.leaf[j]! : -1;
    const isOpen = i >= 0 && s.tasks[i]! < s.maxTasks(i, this.base);
    if (isOpen) this.g.setSelf(s, node, i);
    const changed = this.g.combine(node, -1, -1, isOpen);
    if (this.mode !== 'ra') return changed;
    if (!isOpen) {
      this.best1[node] = -1;
      this.open0[node] = 0;
      this.minFc[node] = this.minCc[node] = this.minFm[node] = this.minCm[node] = this.minComb[node] = Infinity;
      return true;
    }
    const cc = s.capCpu[i]!;
    const cm = s.capMem[i]!;
    const known = cc === cc || cm === cm;
    this.open0[node] = known ? 1 : 0;
    this.best1[node] = known ? -1 : j;
    // Share free now per dimension, and the capacity it is a share of; a
    // zero capacity scores 0 whatever the request, hence an infinite divisor.
    this.minFc[node] = known && cc === cc ? (cc > 0 ? (cc - s.cpu[i]!) / cc : 0) : Infinity;
    this.minCc[node] = known && cc === cc && cc > 0 ? cc : Infinity;
    this.minFm[node] = known && cm === cm ? (cm > 0 ? (cm - s.mem[i]!) / cm : 0) : Infinity;
    this.minCm[node] = known && cm === cm && cm > 0 ? cm : Infinity;
    this.minComb[node] = known ? freeShare(s, i) : Infinity;
    return true;
  }

  /** Returns whether the node's aggregates changed in more than its count (always, for 'ra'). */
  private pull(node: number): boolean {
    const l = node << 1;
    const r = l | 1;
    const changed = this.g.combine(node, l, r, false);
    if (this.mode !== 'ra') return changed;
    {
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
    return true;
  }

  update(i: number): void {
    const j = this.pos[i]!;
    if (j < 0) return;
    const g = this.g;
    const leaf = this.size + j;
    const before = g.cnt(leaf);
    let changed = this.setLeaf(j);
    const delta = g.cnt(leaf) - before;
    // Above the first ancestor whose aggregates stay the same but for the
    // count, only the counts change (and nothing once the count does not).
    for (let node = leaf >> 1; node >= 1; node >>= 1) {
      if (changed) changed = this.pull(node);
      else if (delta !== 0) g.d[node * S + CNT] = g.cnt(node) + delta;
      else break;
    }
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

  private fitsLeaf(j: number): boolean {
    return j < this.m && this.s.fits(this.leaf[j]!, this.base);
  }

  get openCount(): number {
    return this.g.cnt(1);
  }

  /** First leaf position ≥ lo that fits, or -1. */
  firstFit(lo: number): number {
    return lo >= this.m ? -1 : this.ff(1, 0, this.size, lo);
  }

  private ff(node: number, nl: number, nr: number, lo: number): number {
    if (nr <= lo || !this.g.canFit(this.s, node)) return -1;
    if (node >= this.size) return this.fitsLeaf(nl) ? nl : -1;
    const mid = (nl + nr) >> 1;
    const a = this.ff(node << 1, nl, mid, lo);
    return a >= 0 ? a : this.ff((node << 1) | 1, mid, nr, lo);
  }

  /** Position of the k-th (0-based) open leaf; k < openCount. */
  kthOpen(k: number): number {
    const g = this.g;
    let node = 1;
    while (node < this.size) {
      const l = node << 1;
      const c = g.cnt(l);
      if (k < c) node = l;
      else {
        k -= c;
        node = l | 1;
      }
    }
    return node - this.size;
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
    if (this.open0[node] === 0 || !this.g.canFit(this.s, node)) return;
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

  private r1(node: number): void {
    if (!this.g.canFit(this.s, node)) return;
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

  classify(c: FailCounts): void {
    this.cl(1, c);
  }

  private cl(node: number, c: FailCounts): void {
    if (this.g.cnt(node) === 0 || this.g.classifyWhole(this.s, node, c)) return;
    if (node >= this.size) {
      classifyOne(this.s, this.leaf[node - this.size]!, c);
      return;
    }
    this.cl(node << 1, c);
    this.cl((node << 1) | 1, c);
  }
}

// ---- treap ordered by a key, for least-loaded, hybrid and resource-aware ----

/** What a treap orders by: (tasks, memory requested, id), (share free now, id) or (tasks, id). */
type KeyKind = 'load' | 'share' | 'tasks';

/**
 * Every proplet sorted once per batch by the least-loaded key (tasks, memory
 * requested, id), so that each pool's treap is built by a filtering pass
 * instead of a sort of its own. `moved` marks proplets that took a task after
 * the sort: their place in `idx` is stale.
 */
interface KeyOrder {
  idx: Int32Array;
  moved: Uint8Array;
}

class Treap implements Index {
  private readonly g: Aggregates;
  private readonly L: Int32Array;
  private readonly R: Int32Array;
  private readonly pri: Uint32Array;
  /** The key each node was inserted with. */
  /** Per node (k1, k2, rank), side by side so a comparison reads one cache line. */
  private readonly key: Float64Array;
  /** The member's id rank, the last part of the key. */
  private readonly in: Uint8Array;
  private readonly rank: Int32Array;
  private root = -1;
  private sl = -1;
  private sr = -1;
  /** Set by insert and erase: the subtree they returned changed in more than its count (see pullAfter). */
  private changed = false;

  constructor(
    private readonly s: Snapshot,
    /** Node → proplet index. */
    private readonly node: Int32Array,
    /** Proplet index → node, -1 when not a member. */
    private readonly pos: Int32Array,
    private readonly base: number,
    private readonly kind: KeyKind,
    /** Every proplet in this kind's key order as the batch found it, and which have taken a task since (see KeyOrder). */
    order?: KeyOrder,
  ) {
    const m = node.length;
    this.g = new Aggregates(m);
    this.L = new Int32Array(m).fill(-1);
    this.R = new Int32Array(m).fill(-1);
    this.pri = new Uint32Array(m);
    this.key = new Float64Array(3 * m);
    this.in = new Uint8Array(m);
    this.rank = s.rank;
    // Priorities from a fixed hash: the shape is the same every run (the answers never depend on it).
    for (let x = 0; x < m; x++) this.pri[x] = Math.imul(x + 1, 0x9e3779b1) >>> 0;
    // Build: open members sorted by key, then a Cartesian tree on the priorities.
    const open: number[] = [];
    for (let x = 0; x < m; x++) {
      if (this.isOpen(x)) {
        this.setKey(x);
        this.in[x] = 1;
        if (order === undefined) open.push(x);
      }
    }
    const less = (a: number, b: number): number => (this.less(a, b) ? -1 : 1);
    if (order === undefined) open.sort(less);
    else {
      // The members that have not moved since the order was taken are in
      // order already; sort only the few that have, and merge.
      const moved: number[] = [];
      for (let r = 0; r < order.idx.length; r++) {
        const i: number = order.idx[r]!;
        const x: number = pos[i]!;
        if (x < 0 || this.in[x] === 0) continue;
        if (order.moved[i] === 1) moved.push(x);
        else open.push(x);
      }
      if (moved.length > 0) {
        moved.sort(less);
        const still = open.splice(0);
        let a = 0;
        let b = 0;
        while (a < still.length || b < moved.length) {
          if (b >= moved.length || (a < still.length && this.less(still[a]!, moved[b]!))) open.push(still[a++]!);
          else open.push(moved[b++]!);
        }
      }
    }
    const stack: number[] = [];
    for (const x of open) {
      let last = -1;
      while (stack.length > 0 && this.pri[stack[stack.length - 1]!]! < this.pri[x]!) last = stack.pop()!;
      this.L[x] = last;
      if (stack.length > 0) this.R[stack[stack.length - 1]!] = x;
      stack.push(x);
    }
    this.root = stack.length > 0 ? stack[0]! : -1;
    this.pullAll(this.root);
  }

  private pullAll(t: number): void {
    if (t < 0) return;
    this.pullAll(this.L[t]!);
    this.pullAll(this.R[t]!);
    this.pull(t);
  }

  private isOpen(x: number): boolean {
    const i = this.node[x]!;
    return this.s.tasks[i]! < this.s.maxTasks(i, this.base);
  }

  private setKey(x: number): void {
    const i = this.node[x]!;
    const o = 3 * x;
    this.key[o + 2] = this.rank[i]!;
    this.g.setSelf(this.s, x, i);
    if (this.kind === 'share') {
      this.key[o] = freeShare(this.s, i);
      this.key[o + 1] = 0;
    } else {
      this.key[o] = this.s.tasks[i]!;
      this.key[o + 1] = this.kind === 'load' ? this.s.mem[i]! : 0;
    }
  }

  private less(a: number, b: number): boolean {
    const k = this.key;
    const oa = 3 * a;
    const ob = 3 * b;
    const a1 = k[oa]!;
    const b1 = k[ob]!;
    if (a1 !== b1) return a1 < b1;
    const a2 = k[oa + 1]!;
    const b2 = k[ob + 1]!;
    if (a2 !== b2) return a2 < b2;
    return k[oa + 2]! < k[ob + 2]!;
  }

  private pull(t: number): boolean {
    return this.g.combine(t, this.L[t]!, this.R[t]!, true);
  }

  /**
   * After inserting (delta 1) or erasing (delta -1) below `t` through `child`:
   * when the child is the same node and its aggregates changed only by the
   * count, so do t's, and the combine is skipped. Most moves change nothing
   * but counts a few levels above the node moved (its point is dominated
   * there), so this saves most of the combining on the way to the root.
   */
  private pullAfter(t: number, before: number, after: number, delta: number): void {
    if (before === after && !this.changed) {
      const d = this.g.d;
      d[t * S + CNT] = d[t * S + CNT]! + delta;
    }
    else this.changed = this.pull(t);
  }

  /** Splits `t` into sl (keys < x's) and sr (keys > x's); x is not in `t`. */
  private split(t: number, x: number): void {
    if (t < 0) {
      this.sl = this.sr = -1;
      return;
    }
    if (this.less(t, x)) {
      this.split(this.R[t]!, x);
      this.R[t] = this.sl;
      this.pull(t);
      this.sl = t;
    } else {
      this.split(this.L[t]!, x);
      this.L[t] = this.sr;
      this.pull(t);
      this.sr = t;
    }
  }

  private merge(a: number, b: number): number {
    if (a < 0) return b;
    if (b < 0) return a;
    if (this.pri[a]! > this.pri[b]!) {
      this.R[a] = this.merge(this.R[a]!, b);
      this.pull(a);
      return a;
    }
    this.L[b] = this.merge(a, this.L[b]!);
    this.pull(b);
    return b;
  }

  private insert(t: number, x: number): number {
    if (t < 0) {
      this.L[x] = this.R[x] = -1;
      this.pull(x);
      this.changed = true;
      return x;
    }
    if (this.pri[x]! > this.pri[t]!) {
      this.split(t, x);
      this.L[x] = this.sl;
      this.R[x] = this.sr;
      this.pull(x);
      this.changed = true;
      return x;
    }
    if (this.less(x, t)) {
      const c = this.L[t]!;
      this.L[t] = this.insert(c, x);
      this.pullAfter(t, c, this.L[t]!, 1);
    } else {
      const c = this.R[t]!;
      this.R[t] = this.insert(c, x);
      this.pullAfter(t, c, this.R[t]!, 1);
    }
    return t;
  }

  private erase(t: number, x: number): number {
    if (t === x) {
      this.changed = true;
      return this.merge(this.L[t]!, this.R[t]!);
    }
    if (this.less(x, t)) {
      const c = this.L[t]!;
      this.L[t] = this.erase(c, x);
      this.pullAfter(t, c, this.L[t]!, -1);
    } else {
      const c = this.R[t]!;
      this.R[t] = this.erase(c, x);
      this.pullAfter(t, c, this.R[t]!, -1);
    }
    return t;
  }

  update(i: number): void {
    const x = this.pos[i]!;
    if (x < 0) return;
    if (this.in[x] === 1) {
      this.root = this.erase(this.root, x); // by the key it was inserted with
      this.in[x] = 0;
    }
    if (this.isOpen(x)) {
      this.setKey(x);
      this.root = this.insert(this.root, x);
      this.in[x] = 1;
    }
  }

  get openCount(): number {
    return this.root < 0 ? 0 : this.g.cnt(this.root);
  }

  /** Proplet index of the first member in key order that fits, or -1. */
  leftmostFit(): number {
    const x = this.find(this.root, -Infinity);
    return x < 0 ? -1 : this.node[x]!;
  }

  /** Proplet index of the first member that fits with k1 > `above`, or -1. */
  firstFitAbove(above: number): number {
    const x = this.find(this.root, above);
    return x < 0 ? -1 : this.node[x]!;
  }

  private find(t: number, above: number): number {
    if (t < 0 || !this.g.canFit(this.s, t)) return -1;
    if (this.key[3 * t]! <= above) return this.find(this.R[t]!, above);
    const a = this.find(this.L[t]!, above);
    if (a >= 0) return a;
    if (this.s.fits(this.node[t]!, this.base)) return t;
    return this.find(this.R[t]!, above);
  }

  k1Of(i: number): number {
    return this.key[3 * this.pos[i]!]!;
  }

  classify(c: FailCounts): void {
    this.cl(this.root, c);
  }

  private cl(t: number, c: FailCounts): void {
    if (t < 0 || this.g.classifyWhole(this.s, t, c)) return;
    classifyOne(this.s, this.node[t]!, c);
    this.cl(this.L[t]!, c);
    this.cl(this.R[t]!, c);
  }
}

/** resource-aware: one share-ordered treap per capacity class, and one load-ordered for proplets of unknown capacity. */
class RaIndex implements Index {
  constructor(
    private readonly s: Snapshot,
    private readonly classes: Treap[],
    /** Proplet index → its class's treap. */
    private readonly classOf: Map<number, Treap>,
    private readonly unknown: Treap | undefined,
  ) {}

  update(i: number): void {
    this.classOf.get(i)?.update(i);
  }

  classify(c: FailCounts): void {
    for (const t of this.classes) t.classify(c);
    this.unknown?.classify(c);
  }

  get openCount(): number {
    let n = this.unknown?.openCount ?? 0;
    for (const t of this.classes) n += t.openCount;
    return n;
  }

  best(): number {
    const s = this.s;
    const rank = s.rank;
    let best = -1;
    let bestScore = Infinity;
    const consider = (i: number, sc: number): void => {
      if (best < 0 || sc < bestScore || (sc === bestScore && rank[i]! < rank[best]!)) {
        best = i;
        bestScore = sc;
      }
    };
    for (const t of this.classes) {
      let i = t.leftmostFit();
      if (i < 0) continue;
      const sc = raScore(s, i);
      consider(i, sc);
      // Within a class the score never decreases along the order, but equal
      // scores may sit under different keys: look past this key while the
      // next fit still scores the same.
      for (;;) {
        i = t.firstFitAbove(t.k1Of(i));
        if (i < 0) break;
        const next = raScore(s, i);
        if (next > sc) break;
        consider(i, next);
      }
    }
    if (best >= 0) return best;
    return this.unknown === undefined ? -1 : this.unknown.leftmostFit();
  }
}

// ---- pools ----

class Pool {
  /** Members in id order. */
  readonly members: Int32Array;
  /** Proplet index → position in members, -1 when not a member. */
  readonly pos: Int32Array;
  /** Static reasons of the proplets outside the pool, counted once. */
  readonly outside = new Map<string, number>();
  /** Members at capacity, by reason ("at capacity (16/16 tasks)"): kept up to date by commit(). */
  readonly full = new Map<string, number>();
  readonly indexes = new Map<string, Index>();
  /** Bumped whenever a member takes a task: cached reasons of older versions are stale. */
  version = 0;
  readonly reasons = new Map<string, { version: number; reason: string }>();

  constructor(
    private readonly s: Snapshot,
    readonly spec: PoolSpec,
  ) {
    // One pass over the fleet without building strings: the reasons are
    // counted by their index in spec.reasons and named once at the end.
    const byRank = s.byRank;
    const members = new Int32Array(s.n);
    const failed = new Float64Array(spec.reasons.length);
    let m = 0;
    for (let r = 0; r < byRank.length; r++) {
      const i = byRank[r]!;
      const p = s.proplets[i]!;
      if (p.state !== 'alive') {
        bump(this.outside, p.state);
        continue;
      }
      const k = staticCheck(p, spec);
      if (k >= 0) {
        failed[k]!++;
        continue;
      }
      members[m++] = i;
      const max = s.maxTasks(i, spec.base);
      if (s.tasks[i]! >= max) bump(this.full, atCapacity(s.tasks[i]!, max));
    }
    for (let k = 0; k < failed.length; k++) if (failed[k]! > 0) bump(this.outside, spec.reasons[k]!, failed[k]!);
    this.members = members.slice(0, m);
    this.pos = new Int32Array(s.n).fill(-1);
    for (let x = 0; x < m; x++) this.pos[this.members[x]!] = x;
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
    for (const x of this.indexes.values()) x.update(i);
  }

  /** Indexes that together cover every member once. */
  cover(): Index[] | undefined {
    for (const k of ['id', 'load', 'ra']) {
      const x = this.indexes.get(k);
      if (x !== undefined) return [x];
    }
    const a = this.indexes.get('load:k8s');
    const b = this.indexes.get('load:external');
    return a !== undefined && b !== undefined ? [a, b] : undefined;
  }
}

export class IndexedFinder implements Finder {
  private readonly pools = new Map<string, Pool>();
  /** The same pools as a list (a batch has a few; a per-proplet list of them would cost an array per proplet). */
  private readonly poolList: Pool[] = [];

  constructor(private readonly s: Snapshot) {
    this.inPools = new Uint32Array(s.n);
  }

  /** Per proplet, bit k set when it is a member of poolList[k] (the first 32 pools; later ones are checked by position). */
  private readonly inPools: Uint32Array;

  private pool(spec: PoolSpec): Pool {
    let p = this.pools.get(spec.key);
    if (p === undefined) {
      p = new Pool(this.s, spec);
      this.pools.set(spec.key, p);
      const k = this.poolList.length;
      if (k < 32) {
        const bit = (1 << k) >>> 0;
        for (const i of p.members) this.inPools[i] = (this.inPools[i]! | bit) >>> 0;
      }
      this.poolList.push(p);
    }
    return p;
  }

  private loadOrderCache: KeyOrder | undefined;

  private loadOrder(): KeyOrder {
    if (this.loadOrderCache === undefined) {
      const { tasks, mem, rank, n } = this.s;
      const idx = new Int32Array(n);
      for (let i = 0; i < n; i++) idx[i] = i;
      idx.sort((a, b) => tasks[a]! - tasks[b]! || mem[a]! - mem[b]! || rank[a]! - rank[b]!);
      this.loadOrderCache = { idx, moved: new Uint8Array(n) };
    }
    return this.loadOrderCache;
  }

  private positions(members: ArrayLike<number>): { node: Int32Array; pos: Int32Array } {
    const pos = new Int32Array(this.s.n).fill(-1);
    for (let x = 0; x < members.length; x++) pos[members[x]!] = x;
    return { node: Int32Array.from(members), pos };
  }

  private idTree(p: Pool): SegTree {
    let t = p.indexes.get('id') as SegTree | undefined;
    if (t === undefined) {
      const { node, pos } = { node: p.members, pos: p.pos };
      t = new SegTree(this.s, node, pos, p.spec.base, 'id');
      p.indexes.set('id', t);
    }
    return t;
  }

  private loadTreap(p: Pool, type: PropletType | undefined): Treap {
    const k = type === undefined ? 'load' : `load:${type}`;
    let t = p.indexes.get(k) as Treap | undefined;
    if (t === undefined) {
      const s = this.s;
      const members = type === undefined ? p.members : p.members.filter((i) => (s.isK8s[i] === 1) === (type === 'k8s'));
      const { node, pos } = type === undefined ? { node: p.members, pos: p.pos } : this.positions(members);
      t = new Treap(s, node, pos, p.spec.base, 'load', this.loadOrder());
      p.indexes.set(k, t);
    }
    return t;
  }

  private raIndex(p: Pool): RaIndex | SegTree {
    let x = p.indexes.get('ra') as RaIndex | SegTree | undefined;
    if (x === undefined) {
      const s = this.s;
      const byClass = new Map<string, number[]>();
      const unknown: number[] = [];
      for (const i of p.members) {
        const cc = s.capCpu[i]!;
        const cm = s.capMem[i]!;
        if (cc !== cc && cm !== cm) unknown.push(i);
        else {
          const k = `${cc}|${cm}`;
          const list = byClass.get(k);
          if (list === undefined) byClass.set(k, [i]);
          else list.push(i);
        }
      }
      if (byClass.size > MAX_CLASSES) {
        // Many capacity classes: one tree in capacity order, branch and bound.
        const key = (v: number): number => (v === v ? v : Infinity);
        const rank = s.rank;
        const order = Int32Array.from(p.members).sort((a, b) => key(s.capMem[a]!) - key(s.capMem[b]!) || key(s.capCpu[a]!) - key(s.capCpu[b]!) || rank[a]! - rank[b]!);
        const { node, pos } = this.positions(order);
        x = new SegTree(s, node, pos, p.spec.base, 'ra');
      } else {
        const classOf = new Map<number, Treap>();
        const make = (members: number[], kind: KeyKind): Treap => {
          const { node, pos } = this.positions(members);
          const t = new Treap(s, node, pos, p.spec.base, kind);
          for (const i of members) classOf.set(i, t);
          return t;
        };
        const classes = [...byClass.values()].map((m) => make(m, 'share'));
        x = new RaIndex(s, classes, classOf, unknown.length > 0 ? make(unknown, 'tasks') : undefined);
      }
      p.indexes.set('ra', x);
    }
    return x;
  }

  roundRobin(spec: PoolSpec, after: string | undefined): number {
    const t = this.idTree(this.pool(spec));
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
    return this.loadTreap(this.pool(spec), type).leftmostFit();
  }

  random(spec: PoolSpec, random: () => number): { i: number; k: number; open: number } | undefined {
    const t = this.idTree(this.pool(spec));
    const open = t.openCount;
    if (open === 0) return undefined;
    const k = Math.min(open - 1, Math.max(0, Math.floor(random() * open)));
    const start = t.kthOpen(k);
    let j = t.firstFit(start);
    if (j < 0 && start > 0) j = t.firstFit(0);
    return { i: j >= 0 ? t.leaf[j]! : -1, k, open };
  }

  resourceAware(spec: PoolSpec): number {
    const x = this.raIndex(this.pool(spec));
    if (x instanceof SegTree) {
      const j = x.resourceAware();
      return j >= 0 ? x.leaf[j]! : -1;
    }
    return x.best();
  }

  noFit(spec: PoolSpec): string {
    const s = this.s;
    const p = this.pool(spec);
    const cover = p.cover() ?? [this.idTree(p)];
    let open = 0;
    for (const x of cover) open += x.openCount;
    // With no open member the reason does not depend on the task.
    const ex = open === 0 || s.excluded === null ? '' : [...s.excluded].sort((a, b) => a - b).join(',');
    const shape = open === 0 ? '' : `${s.reqCpu}|${s.reqMem}|${s.size}|${ex}`;
    const hit = p.reasons.get(shape);
    if (hit !== undefined && hit.version === p.version) return hit.reason;
    const counts = new Map(p.outside);
    for (const [why, n] of p.full) bump(counts, why, n);
    const c: FailCounts = { module: 0, cpu: 0, mem: 0, refused: 0 };
    if (open > 0) for (const x of cover) x.classify(c);
    if (c.module > 0) bump(counts, moduleTooLarge(s.size), c.module);
    if (c.cpu > 0) bump(counts, shortOfCpu(s.reqCpu), c.cpu);
    if (c.mem > 0) bump(counts, shortOfMemory(s.reqMem), c.mem);
    if (c.refused > 0) bump(counts, REFUSED, c.refused);
    const reason = summarize(counts, s.n);
    p.reasons.set(shape, { version: p.version, reason });
    return reason;
  }

  commit(i: number): void {
    if (this.loadOrderCache !== undefined) this.loadOrderCache.moved[i] = 1;
    // The pools it is in, from one word rather than one lookup per pool.
    const list = this.poolList;
    for (let m = this.inPools[i]!; m !== 0; m &= m - 1) list[31 - Math.clz32(m & -m)]!.commit(i);
    for (let k = 32; k < list.length; k++) if (list[k]!.pos[i]! >= 0) list[k]!.commit(i);
  }
}
