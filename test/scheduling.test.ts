// Placement as pure functions: no broker, no timers. Most cases run through
// both finders (the linear reference and the indexes) and must agree.

import test, { type ExecutionContext } from 'ava';
import type { Algorithm, HybridConfig, Proplet, PropletGroup, Task } from '../control-plane/model.ts';
import {
  candidates,
  createScheduler,
  DEFAULT_HYBRID,
  INITIAL_STATE,
  inPool,
  parseSchedulerType,
  poolSpec,
  staticReason,
  place,
  placeBatch,
  type Load,
  type SchedDecision,
  type SchedulerConfig,
  type SchedulerState,
} from '../control-plane/scheduling/index.ts';
import { seeded } from './helpers/seeded.ts';
import { taskFixture } from './helpers/task-fixture.ts';

// ---- fixtures ----

const T0 = '2024-01-01T00:00:00.000Z';

function proplet(id: string, o: Partial<Proplet> = {}): Proplet {
  return {
    id,
    name: id,
    device_type: 'node',
    proplet_type: 'external',
    capabilities: ['wasm'],
    labels: {},
    capacity: {},
    encoding: 'json',
    addressing: 'direct',
    state: 'alive',
    state_since: T0,
    registered_at: T0,
    last_seen: T0,
    running_tasks: 0,
    alive_history: [],
    ...o,
  };
}

function task(id: string, o: Partial<Task> = {}): Task {
  return taskFixture(id, { start_requested: true, history: [], created_at: T0, updated_at: T0, ...o });
}

function group(name: string, match_labels: Record<string, string>, algorithm: Algorithm = 'round-robin', max?: number): PropletGroup {
  return { name, selector: { match_labels }, scheduling: { algorithm, ...(max !== undefined ? { max_tasks_per_proplet: max } : {}) }, created_at: T0 };
}


const load = (tasks: number, cpu_millis = 0, memory_bytes = 0): Load => ({ tasks, cpu_millis, memory_bytes });

interface Run {
  ps: Proplet[];
  loads?: Record<string, Load>;
  algorithm?: Algorithm;
  maxTasksPerProplet?: number;
  hybrid?: Partial<HybridConfig>;
  groups?: PropletGroup[];
  seed?: number;
  state?: SchedulerState;
}

function cfgOf(r: Run, engine: 'linear' | 'indexed'): SchedulerConfig {
  return {
    algorithm: r.algorithm ?? 'round-robin',
    hybrid: { ...DEFAULT_HYBRID, ...r.hybrid },
    ...(r.maxTasksPerProplet !== undefined ? { maxTasksPerProplet: r.maxTasksPerProplet } : {}),
    groups: new Map((r.groups ?? []).map((g) => [g.name, g])),
    random: seeded(r.seed ?? 1),
    engine,
  };
}

/** The batch through both finders; they must agree. */
function batch(t: ExecutionContext, r: Run, tasks: Task[]): SchedDecision[] {
  const loads = new Map(Object.entries(r.loads ?? {}));
  const lin = placeBatch(tasks, r.ps, loads, r.state ?? INITIAL_STATE, cfgOf(r, 'linear'));
  const idx = placeBatch(tasks, r.ps, loads, r.state ?? INITIAL_STATE, cfgOf(r, 'indexed'));
  t.deepEqual(idx.decisions, lin.decisions, 'indexed and linear finders disagree');
  t.deepEqual(idx.state, lin.state);
  t.deepEqual([...idx.load], [...lin.load]);
  return lin.decisions;
}

const one = (t: ExecutionContext, r: Run, tk: Task): SchedDecision => batch(t, r, [tk])[0]!;
const ids = (ds: SchedDecision[]): (string | undefined)[] => ds.map((d) => (d.ok ? d.propletId : undefined));
const reasonOf = (d: SchedDecision): string => (d.ok ? `placed on ${d.propletId}` : d.reason);

// ---- filter ----

test('no proplets, all offline, and the aggregated reason', (t) => {
  t.is(reasonOf(one(t, { ps: [] }, task('a'))), 'no proplets registered');
  t.is(reasonOf(one(t, { ps: [proplet('p1', { state: 'offline' }), proplet('p2', { state: 'offline' }), proplet('p3', { state: 'failed' })] }, task('a'))), 'no proplet can take it: 2 offline, 1 failed');
  const ps = [
    ...['o1', 'o2', 'o3'].map((id) => proplet(id, { state: 'offline', capabilities: ['sensor'] })),
    ...['f1', 'f2'].map((id) => proplet(id, { capabilities: ['sensor'], capacity: { max_tasks: 4 } })),
    proplet('n1', { capabilities: ['wasm'] }),
  ];
  const d = one(t, { ps, loads: { f1: load(4), f2: load(4) } }, task('a', { proplet_selector: { match_capabilities: ['sensor'] } }));
  t.is(reasonOf(d), 'no proplet can take it: 3 offline, 2 at capacity (4/4 tasks), 1 lacks capability sensor');
});

test('candidates(): the filter on its own', (t) => {
  const ps = [proplet('a', { device_type: 'esp32' }), proplet('b', { device_type: 'rpi' }), proplet('c', { state: 'offline', device_type: 'esp32' })];
  const r = candidates(task('x', { proplet_selector: { match_device_types: ['esp32'] } }), ps, new Map());
  t.deepEqual(r.fit.map((p) => p.id), ['a']);
  const none = candidates(task('x', { proplet_selector: { match_device_types: ['node'] } }), ps, new Map());
  t.is(none.reason, 'no proplet can take it: 2 device type not node, 1 offline');
  t.deepEqual(candidates(task('x', { pinned_proplet_id: 'b' }), ps, new Map()).fit.map((p) => p.id), ['b']);
});

const selectorCases: [string, Task['proplet_selector'], (string | undefined)[], string?][] = [
  ['device types: any of', { match_device_types: ['esp32', 'rpi'] }, ['esp-1', 'rpi-1']],
  ['device types: none match', { match_device_types: ['riscv'] }, [], 'no proplet can take it: 3 device type not riscv'],
  ['capabilities: all of', { match_capabilities: ['sensor', 'wifi'] }, ['esp-1']],
  ['capabilities: one missing everywhere', { match_capabilities: ['gpu'] }, [], 'no proplet can take it: 3 lacks capability gpu'],
  ['labels: all equal', { match_labels: { zone: 'north', tier: 'edge' } }, ['rpi-1']],
  ['labels: value differs', { match_labels: { zone: 'south' } }, ['node-1']],
  ['labels: missing key', { match_labels: { rack: '1' } }, [], 'no proplet can take it: 3 lacks label rack=1'],
  ['device type and capability together', { match_device_types: ['esp32', 'node'], match_capabilities: ['wifi'] }, ['esp-1']],
  ['empty selector: everyone', {}, ['esp-1', 'node-1', 'rpi-1']],
];

for (const [name, sel, want, reason] of selectorCases) {
  test(`selector — ${name}`, (t) => {
    const ps = [
      proplet('esp-1', { device_type: 'esp32', capabilities: ['wasm', 'sensor', 'wifi'], labels: { zone: 'north' } }),
      proplet('rpi-1', { device_type: 'rpi', capabilities: ['wasm', 'sensor'], labels: { zone: 'north', tier: 'edge' } }),
      proplet('node-1', { device_type: 'node', capabilities: ['wasm'], labels: { zone: 'south' } }),
    ];
    // round-robin over enough tasks visits every candidate once, in id order
    const ds = batch(t, { ps }, Array.from({ length: Math.max(1, want.length) }, (_, i) => task(`t${i}`, { proplet_selector: sel! })));
    if (want.length === 0) t.is(reasonOf(ds[0]!), reason!);
    else t.deepEqual(ids(ds), want);
  });
}

test('max tasks: the smallest of the proplet’s, the scheduler’s and the group’s', (t) => {
  const ps = [proplet('a', { capacity: { max_tasks: 3 }, labels: { g: '1' } })];
  const tasks = (n: number, o: Partial<Task> = {}) => Array.from({ length: n }, (_, i) => task(`t${i}`, o));
  const placed = (ds: SchedDecision[]) => ds.filter((d) => d.ok).length;
  t.is(placed(batch(t, { ps }, tasks(5))), 3);
  t.is(placed(batch(t, { ps, maxTasksPerProplet: 2 }, tasks(5))), 2);
  t.is(placed(batch(t, { ps, maxTasksPerProplet: 2, groups: [group('g', { g: '1' }, 'round-robin', 1)] }, tasks(5, { proplet_group: 'g' }))), 1);
  t.is(placed(batch(t, { ps, loads: { a: load(2) } }, tasks(5))), 1);
  const last = batch(t, { ps, loads: { a: load(2) } }, tasks(2))[1]!;
  t.is(reasonOf(last), 'no proplet can take it: 1 at capacity (3/3 tasks)');
  // no max anywhere: unlimited
  t.is(placed(batch(t, { ps: [proplet('u')] }, tasks(50))), 50);
});

test('resources: cpu and memory against capacity minus what is already requested', (t) => {
  const ps = [proplet('a', { capacity: { cpu_millis: 1000, memory_bytes: 100 } }), proplet('b', { capacity: { cpu_millis: 500 } })];
  const big = task('big', { resources: { memory_bytes: 80 } });
  // b has no memory limit: it fits anything memory-wise
  t.deepEqual(ids(batch(t, { ps, algorithm: 'least-loaded', loads: { a: load(0, 0, 50) } }, [big])), ['b']);
  // a batch fills memory and then cpu
  const mem = Array.from({ length: 3 }, (_, i) => task(`m${i}`, { resources: { memory_bytes: 40 }, proplet_selector: { match_labels: {} }, pinned_proplet_id: 'a' }));
  const dm = batch(t, { ps }, mem);
  t.deepEqual(ids(dm), ['a', 'a', undefined]);
  t.is(reasonOf(dm[2]!), 'pinned proplet a: short of memory (needs 40 bytes, 20 of 100 free)');
  const cpu = Array.from({ length: 4 }, (_, i) => task(`c${i}`, { resources: { cpu_millis: 400 } }));
  const dc = batch(t, { ps, algorithm: 'least-loaded' }, cpu);
  t.deepEqual(ids(dc), ['a', 'b', 'a', undefined]);
  t.is(reasonOf(dc[3]!), 'no proplet can take it: 2 short of cpu for 400m');
  // requests of 0 are not checked, even on a full proplet
  t.deepEqual(ids(batch(t, { ps: [proplet('z', { capacity: { cpu_millis: 0, memory_bytes: 0 } })] }, [task('free')])), ['z']);
});

test('module size against max_module_bytes', (t) => {
  const ps = [proplet('small', { capacity: { max_module_bytes: 1000 } }), proplet('big', { capacity: { max_module_bytes: 100_000 } })];
  t.deepEqual(ids(batch(t, { ps }, [task('a', { module_size: 5000 }), task('b', { module_size: 5000 })])), ['big', 'big']);
  t.is(reasonOf(one(t, { ps }, task('a', { module_size: 200_000 }))), 'no proplet can take it: 2 module too large (200000 bytes)');
});

test('pins: unknown, offline, full, excluded, outside the selector, and honoured', (t) => {
  const ps = [proplet('p1'), proplet('p2', { state: 'offline' }), proplet('p3', { capacity: { max_tasks: 1 }, labels: { zone: 'x' } })];
  const r = { ps, loads: { p3: load(1) }, algorithm: 'least-loaded' as const };
  t.is(reasonOf(one(t, r, task('a', { pinned_proplet_id: 'nope' }))), 'pinned proplet nope is not registered');
  t.is(reasonOf(one(t, r, task('a', { pinned_proplet_id: 'p2' }))), 'pinned proplet p2 is offline');
  t.is(reasonOf(one(t, r, task('a', { pinned_proplet_id: 'p3' }))), 'pinned proplet p3: at capacity (1/1 tasks)');
  t.is(reasonOf(one(t, r, task('a', { pinned_proplet_id: 'p1', excluded_proplets: ['p1'] }))), 'pinned proplet p1: refused it before');
  t.is(reasonOf(one(t, r, task('a', { pinned_proplet_id: 'p1', proplet_selector: { match_labels: { zone: 'x' } } }))), 'pinned proplet p1: lacks label zone=x');
  const d = one(t, { ...r, loads: { p1: load(9) } }, task('a', { pinned_proplet_id: 'p1' }));
  t.deepEqual(d, { ok: true, propletId: 'p1', why: 'pinned to p1' });
});

test('excluded proplets are skipped, and say so when that leaves none', (t) => {
  const ps = [proplet('a'), proplet('b'), proplet('c')];
  t.deepEqual(ids(batch(t, { ps }, [task('x', { excluded_proplets: ['a', 'b'] })])), ['c']);
  t.is(reasonOf(one(t, { ps }, task('x', { excluded_proplets: ['a', 'b', 'c', 'gone'] }))), 'no proplet can take it: 3 refused it before');
});

test('groups: unknown, selector, max per proplet, and the group’s own algorithm', (t) => {
  const ps = [proplet('a', { labels: { type: 'edge' } }), proplet('b', { labels: { type: 'edge' } }), proplet('c', { labels: { type: 'cloud' } })];
  t.is(reasonOf(one(t, { ps }, task('x', { proplet_group: 'nope' }))), 'proplet group nope does not exist');
  const groups = [group('edge', { type: 'edge' }, 'round-robin', 1), group('ll', { type: 'edge' }, 'least-loaded')];
  const ds = batch(t, { ps, groups }, [1, 2, 3].map((i) => task(`t${i}`, { proplet_group: 'edge' })));
  t.deepEqual(ids(ds), ['a', 'b', undefined]);
  t.is(reasonOf(ds[2]!), 'no proplet can take it: 2 at capacity (1/1 tasks), 1 not in group edge');
  t.true(ds[0]!.ok && ds[0]!.why.startsWith('group edge: round-robin'));
  // least-loaded group under a round-robin scheduler: b carries less
  const d = one(t, { ps, groups, loads: { a: load(3) } }, task('x', { proplet_group: 'll' }));
  t.deepEqual(ids([d]), ['b']);
  t.true(d.ok && d.why.startsWith('group ll: least-loaded'));
  // group selector and task selector combine
  t.is(reasonOf(one(t, { ps, groups }, task('x', { proplet_group: 'll', proplet_selector: { match_device_types: ['esp32'] } }))), 'no proplet can take it: 3 device type not esp32');
});

// ---- algorithms ----

test('round-robin: fair over many placements, cursor in the state, one cursor per pool', (t) => {
  const ps = ['p1', 'p2', 'p3', 'p4', 'p5'].map((id) => proplet(id, { labels: { odd: String(Number(id[1]) % 2) } }));
  const ds = batch(t, { ps }, Array.from({ length: 1000 }, (_, i) => task(`t${i}`)));
  const counts = new Map<string, number>();
  for (const d of ds) if (d.ok) counts.set(d.propletId, (counts.get(d.propletId) ?? 0) + 1);
  t.deepEqual([...counts.values()], [200, 200, 200, 200, 200]);
  t.deepEqual(ids(ds.slice(0, 6)), ['p1', 'p2', 'p3', 'p4', 'p5', 'p1']);
  // state carries across calls: place() three times with the returned state
  let state = INITIAL_STATE;
  const got: string[] = [];
  for (let i = 0; i < 3; i++) {
    const r = place(task(`s${i}`), ps, new Map(), state, cfgOf({ ps }, 'indexed'));
    state = r.state;
    if (r.decision.ok) got.push(r.decision.propletId);
  }
  t.deepEqual(got, ['p1', 'p2', 'p3']);
  t.deepEqual(state.cursors, { '': 'p3' });
  // interleaved pools do not skew each other
  const odd = { proplet_selector: { match_labels: { odd: '1' } } };
  const mixed = batch(t, { ps }, Array.from({ length: 8 }, (_, i) => task(`m${i}`, i % 2 === 0 ? odd : {})));
  t.deepEqual(ids(mixed), ['p1', 'p1', 'p3', 'p2', 'p5', 'p3', 'p1', 'p4']);
  // skips full proplets and wraps
  t.deepEqual(ids(batch(t, { ps: ps.slice(0, 3), loads: { p2: load(1) }, maxTasksPerProplet: 1 }, [task('a'), task('b'), task('c')])), ['p1', 'p3', undefined]);
});

test('least-loaded: fewest tasks, ties by assigned memory then id', (t) => {
  const ps = ['c', 'a', 'b', 'd'].map((id) => proplet(id));
  const cases: [string, Record<string, Load>, string][] = [
    ['all equal: lowest id', {}, 'a'],
    ['fewest tasks', { a: load(2), b: load(1), c: load(1), d: load(0) }, 'd'],
    ['tie on tasks: least memory', { a: load(1, 0, 500), b: load(1, 0, 100), c: load(1, 0, 300), d: load(2) }, 'b'],
    ['tie on tasks and memory: id', { a: load(1, 0, 100), b: load(1, 0, 100), c: load(0, 0, 900), d: load(0, 0, 900) }, 'c'],
  ];
  for (const [name, loads, want] of cases) t.deepEqual(ids([one(t, { ps, loads, algorithm: 'least-loaded' }, task('x'))]), [want], name);
  // spreads a batch evenly
  const ds = batch(t, { ps, algorithm: 'least-loaded' }, Array.from({ length: 8 }, (_, i) => task(`t${i}`)));
  t.deepEqual(ids(ds), ['a', 'b', 'c', 'd', 'a', 'b', 'c', 'd']);
  t.is(reasonOf(one(t, { ps: [], algorithm: 'least-loaded' }, task('x'))), 'no proplets registered');
});

test('random: deterministic with a seeded generator, about uniform', (t) => {
  const ps = ['a', 'b', 'c'].map((id) => proplet(id));
  const tasks = Array.from({ length: 3000 }, (_, i) => task(`t${i}`));
  const d1 = batch(t, { ps, algorithm: 'random', seed: 42 }, tasks);
  const d2 = batch(t, { ps, algorithm: 'random', seed: 42 }, tasks);
  const d3 = batch(t, { ps, algorithm: 'random', seed: 7 }, tasks);
  t.deepEqual(d1, d2);
  t.notDeepEqual(ids(d1), ids(d3));
  const counts = new Map<string, number>();
  for (const d of d1) if (d.ok) counts.set(d.propletId, (counts.get(d.propletId) ?? 0) + 1);
  for (const n of counts.values()) t.true(n > 900 && n < 1100, `count ${n}`);
  // a fixed generator picks by index in id order
  const at = (x: number) => ids(placeBatch([task('x')], ps, new Map(), INITIAL_STATE, { ...cfgOf({ ps, algorithm: 'random' }, 'indexed'), random: () => x }).decisions);
  t.deepEqual([at(0), at(0.34), at(0.99)], [['a'], ['b'], ['c']]);
  // the drawn one is full: the next fit after it
  const ds = placeBatch([task('x', { resources: { memory_bytes: 10 } })], [proplet('a'), proplet('b', { capacity: { memory_bytes: 5 } }), proplet('c')], new Map(), INITIAL_STATE, { ...cfgOf({ ps, algorithm: 'random' }, 'indexed'), random: () => 0.5 });
  t.deepEqual(ids(ds.decisions), ['c']);
});

test('resource-aware: best fit by cpu and memory left after placement; unknown capacity last', (t) => {
  const ps = [
    proplet('roomy', { capacity: { cpu_millis: 4000, memory_bytes: 4000 } }),
    proplet('tight', { capacity: { cpu_millis: 1000, memory_bytes: 1000 } }),
    proplet('tiny', { capacity: { cpu_millis: 100, memory_bytes: 100 } }),
    proplet('unknown'),
  ];
  const r = { ps, algorithm: 'resource-aware' as const };
  const d = one(t, r, task('x', { resources: { cpu_millis: 500, memory_bytes: 500 } }));
  t.deepEqual(ids([d]), ['tight']);
  t.true(d.ok && d.why.includes('score 0.500'));
  // tight is half used: 500 left; roomy has 3500; the fit that leaves least wins
  t.deepEqual(ids([one(t, { ...r, loads: { tight: load(1, 600, 600) } }, task('x', { resources: { cpu_millis: 500, memory_bytes: 500 } }))]), ['roomy']);
  // nothing with known capacity fits: the unknown one
  const u = one(t, r, task('x', { resources: { memory_bytes: 10_000 } }));
  t.deepEqual(ids([u]), ['unknown']);
  t.true(u.ok && u.why.includes('no fitting proplet with known capacity'));
  // a batch packs: tight first until full, then roomy
  const ds = batch(t, r, Array.from({ length: 6 }, (_, i) => task(`t${i}`, { resources: { cpu_millis: 400, memory_bytes: 400 } })));
  t.deepEqual(ids(ds), ['tight', 'tight', 'roomy', 'roomy', 'roomy', 'roomy']);
  // one known dimension counts; the other as all free
  const half = [proplet('cpu-only', { capacity: { cpu_millis: 1000 } }), proplet('both', { capacity: { cpu_millis: 1000, memory_bytes: 1000 } })];
  t.deepEqual(ids([one(t, { ps: half, algorithm: 'resource-aware' }, task('x', { resources: { cpu_millis: 500, memory_bytes: 500 } }))]), ['both']);
});

const hybridPs = () => [
  proplet('k1', { proplet_type: 'k8s' }),
  proplet('k2', { proplet_type: 'k8s' }),
  proplet('e1', { proplet_type: 'external', device_type: 'esp32' }),
  proplet('e2', { proplet_type: 'external', device_type: 'esp32' }),
];

const hybridCases: [string, Partial<Task>, Partial<HybridConfig>, string, string][] = [
  ['compute keyword → k8s', { name: 'ml-inference' }, {}, 'k1', 'compute keyword "ml" → k8s'],
  ['edge keyword → external', { name: 'Sensor-Reader' }, {}, 'e1', 'edge keyword "sensor" → external'],
  ['keyword in a label value', { name: 'job', labels: { kind: 'IoT' } }, {}, 'e1', 'edge keyword "iot" → external'],
  ['whole words only: "html" is not "ml"', { name: 'html-render' }, { loadBalancingRatio: 0 }, 'e1', 'k8s has 0 of 0 tasks, target share 0 → external'],
  ['explicit preference beats keywords', { name: 'ml-batch', preferred_proplet_type: 'external' }, {}, 'e1', 'task prefers external'],
  ['keywords off: ratio decides', { name: 'sensor' }, { preferExternalForEdge: false, loadBalancingRatio: 1 }, 'k1', 'target share 1 → k8s'],
  ['both keyword kinds: no preference', { name: 'edge-ml' }, { loadBalancingRatio: 0 }, 'e1', 'compute keyword "ml" and edge keyword "edge" both match, no preference'],
  ['custom keywords', { name: 'Render-Farm' }, { computeKeywords: ['render'] }, 'k1', 'compute keyword "render" → k8s'],
  ['a keyword of two words', { name: 'run Edge-AI now' }, { computeKeywords: ['gpu'], edgeKeywords: ['edge ai'] }, 'e1', 'edge keyword "edge ai" → external'],
  ['"any" is no preference', { name: 'ml', preferred_proplet_type: 'any' }, {}, 'k1', 'compute keyword "ml" → k8s'],
];

for (const [name, o, h, want, why] of hybridCases) {
  test(`hybrid — ${name}`, (t) => {
    const d = one(t, { ps: hybridPs(), algorithm: 'hybrid', hybrid: h }, task('x', o));
    t.deepEqual(ids([d]), [want]);
    t.true(d.ok && d.why.includes(why), d.ok ? d.why : d.reason);
  });
}

test('hybrid — fallback when the preferred type has no fit, and least-loaded within a type', (t) => {
  const ps = hybridPs();
  const full = { k1: load(2), k2: load(2) };
  const d = one(t, { ps, algorithm: 'hybrid', maxTasksPerProplet: 2, loads: full }, task('x', { name: 'ml-train' }));
  t.deepEqual(ids([d]), ['e1']);
  t.true(d.ok && d.why.includes('compute keyword "ml" → k8s, but no k8s proplet fits: fell back to external'), d.ok ? d.why : '');
  const d2 = one(t, { ps, algorithm: 'hybrid', loads: { k1: load(3), k2: load(1) } }, task('x', { preferred_proplet_type: 'k8s' }));
  t.deepEqual(ids([d2]), ['k2']);
  // a selector that only externals meet: a k8s preference falls back
  t.deepEqual(ids([one(t, { ps, algorithm: 'hybrid' }, task('x', { name: 'batch', proplet_selector: { match_device_types: ['esp32'] } }))]), ['e1']);
  // neither type fits: the ordinary reason
  t.is(reasonOf(one(t, { ps, algorithm: 'hybrid' }, task('x', { proplet_selector: { match_device_types: ['riscv'] } }))), 'no proplet can take it: 4 device type not riscv');
});

test('hybrid — loadBalancingRatio: 0.5 alternates, 1.0 always k8s, 0 always external, existing load counts', (t) => {
  const ps = hybridPs();
  const plain = Array.from({ length: 8 }, (_, i) => task(`job-${i}`));
  const types = (ds: SchedDecision[]) => ds.map((d) => (d.ok ? d.propletId[0] : '-')).join('');
  t.is(types(batch(t, { ps, algorithm: 'hybrid', hybrid: { loadBalancingRatio: 0.5 } }, plain)), 'kekekeke');
  t.is(types(batch(t, { ps, algorithm: 'hybrid', hybrid: { loadBalancingRatio: 1 } }, plain)), 'kkkkkkkk');
  t.is(types(batch(t, { ps, algorithm: 'hybrid', hybrid: { loadBalancingRatio: 0 } }, plain)), 'eeeeeeee');
  // k8s already carries 3 of 3: externals catch up first
  t.is(types(batch(t, { ps, algorithm: 'hybrid', loads: { k1: load(2), k2: load(1) } }, plain.slice(0, 5))), 'eeeke');
  // 0.25: one in four on k8s
  t.is(types(batch(t, { ps, algorithm: 'hybrid', hybrid: { loadBalancingRatio: 0.25 } }, plain)), 'keeekeee');
  // keyword tasks do not follow the ratio
  t.is(types(batch(t, { ps, algorithm: 'hybrid' }, [task('ml-1'), task('ml-2'), task('ml-3')])), 'kkk');
});

// ---- batch == repeated place(), indexed == linear, on random inputs ----

function world(rnd: () => number, nP: number, nT: number) {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const ps: Proplet[] = [];
  for (let i = 0; i < nP; i++) {
    const dt = pick(['esp32', 'rpi', 'node']);
    ps.push(
      proplet(`p${Math.floor(rnd() * 1000)}-${i}`, {
        device_type: dt,
        proplet_type: dt === 'node' && rnd() < 0.7 ? 'k8s' : 'external',
        state: rnd() < 0.1 ? 'offline' : 'alive',
        capabilities: ['wasm', ...(rnd() < 0.5 ? ['sensor'] : []), ...(rnd() < 0.3 ? ['gpu'] : [])],
        labels: { zone: pick(['n', 's']), ...(rnd() < 0.5 ? { tier: 'edge' } : {}) },
        capacity: {
          ...(rnd() < 0.8 ? { max_tasks: 1 + Math.floor(rnd() * 4) } : {}),
          ...(rnd() < 0.7 ? { cpu_millis: pick([0, 100, 500, 1000]) } : {}),
          ...(rnd() < 0.7 ? { memory_bytes: pick([50, 200, 1000]) } : {}),
          ...(rnd() < 0.3 ? { max_module_bytes: pick([100, 1000]) } : {}),
        },
      }),
    );
  }
  const loads: Record<string, Load> = {};
  for (const p of ps) if (rnd() < 0.3) loads[p.id] = load(Math.floor(rnd() * 3), Math.floor(rnd() * 300), Math.floor(rnd() * 300));
  const groups = [group('edge', { tier: 'edge' }, pick(['round-robin', 'least-loaded', 'random', 'resource-aware', 'hybrid']), 2), group('north', { zone: 'n' }, 'least-loaded')];
  const tasks: Task[] = [];
  for (let i = 0; i < nT; i++) {
    const r = rnd();
    tasks.push(
      task(`t${i}`, {
        name: pick(['ml-job', 'sensor-read', 'plain', 'edge batch', 'x']),
        resources: { ...(rnd() < 0.5 ? { cpu_millis: pick([0, 50, 200, 600]) } : {}), ...(rnd() < 0.5 ? { memory_bytes: pick([10, 100, 400]) } : {}) },
        ...(rnd() < 0.2 ? { module_size: pick([50, 500, 5000]) } : {}),
        ...(r < 0.15 ? { proplet_selector: { match_device_types: [pick(['esp32', 'rpi', 'node'])] } } : r < 0.25 ? { proplet_selector: { match_capabilities: ['sensor'], match_labels: { zone: 'n' } } } : {}),
        ...(rnd() < 0.15 ? { proplet_group: pick(['edge', 'north', 'missing']) } : {}),
        ...(rnd() < 0.05 ? { pinned_proplet_id: rnd() < 0.8 ? pick(ps).id : 'ghost' } : {}),
        ...(rnd() < 0.1 ? { excluded_proplets: [pick(ps).id, pick(ps).id] } : {}),
        ...(rnd() < 0.3 ? { preferred_proplet_type: pick(['k8s', 'external', 'any'] as const) } : {}),
      }),
    );
  }
  return { ps, loads, groups, tasks };
}

const ALGS: Algorithm[] = ['round-robin', 'least-loaded', 'random', 'resource-aware', 'hybrid'];

for (const alg of ALGS) {
  test(`${alg}: batch == place() repeated, and indexed == linear, on random worlds`, (t) => {
    for (let seed = 1; seed <= 6; seed++) {
      const rnd = seeded(seed * 101);
      const w = world(rnd, 10 + Math.floor(rnd() * 60), 150);
      const r: Run = { ps: w.ps, loads: w.loads, groups: w.groups, algorithm: alg, seed, ...(seed % 2 === 0 ? { maxTasksPerProplet: 3 } : {}), hybrid: { loadBalancingRatio: [0.5, 0.3, 1][seed % 3]! } };
      const all = batch(t, r, w.tasks); // also checks indexed == linear
      for (const tk of w.tasks.slice(0, 20)) {
        const spec = poolSpec(tk.proplet_selector, r.groups?.find((g) => g.name === tk.proplet_group), r.maxTasksPerProplet);
        for (const p of w.ps) t.is(inPool(p, spec), staticReason(p, spec) === undefined);
      }
      // place() one at a time, threading state and load
      const loads = new Map(Object.entries(w.loads));
      let state = INITIAL_STATE;
      const cfg = cfgOf(r, 'linear'); // one generator across the calls
      const seq: SchedDecision[] = [];
      for (const tk of w.tasks) {
        const res = place(tk, w.ps, loads, state, cfg);
        state = res.state;
        seq.push(res.decision);
        if (res.decision.ok) {
          const id = res.decision.propletId;
          const l = loads.get(id) ?? load(0);
          loads.set(id, load(l.tasks + 1, l.cpu_millis + (tk.resources.cpu_millis ?? 0), l.memory_bytes + (tk.resources.memory_bytes ?? 0)));
        }
      }
      t.deepEqual(seq, all, `seed ${seed}`);
      t.true(all.some((d) => d.ok) && all.some((d) => !d.ok), 'the world exercises both outcomes');
    }
  });
}

test('resource-aware with many capacity classes (branch and bound) agrees with the scan', (t) => {
  const rnd = seeded(5);
  // every proplet its own capacity class: more than the per-class indexes take
  const ps = Array.from({ length: 60 }, (_, i) =>
    proplet(`p${String(i).padStart(2, '0')}`, {
      capacity: { ...(i % 7 === 0 ? {} : { cpu_millis: 100 + i * 37 }), ...(i % 5 === 0 ? {} : { memory_bytes: 1000 + i * 101 }), max_tasks: 1 + (i % 4) },
    }),
  );
  const tasks = Array.from({ length: 200 }, (_, i) => task(`t${i}`, { resources: { cpu_millis: Math.floor(rnd() * 400), memory_bytes: Math.floor(rnd() * 1500) }, ...(i % 9 === 0 ? { excluded_proplets: ['p07', 'p10'] } : {}) }));
  const ds = batch(t, { ps, algorithm: 'resource-aware' }, tasks);
  t.true(ds.some((d) => d.ok) && ds.some((d) => !d.ok));
  // equal capacities and equal load tie on score: lowest id wins
  t.deepEqual(ids(batch(t, { ps: ['c', 'b', 'a'].map((id) => proplet(id, { capacity: { cpu_millis: 100, memory_bytes: 100 } })), algorithm: 'resource-aware' }, [task('x', { resources: { cpu_millis: 10 } })])), ['a']);
});

test('an exhausted pool gives the same exact reason to every task', (t) => {
  const ps = [proplet('a', { capacity: { max_tasks: 1 } }), proplet('b', { capacity: { max_tasks: 1 } }), proplet('c', { state: 'offline' })];
  const tasks = Array.from({ length: 6 }, (_, i) => task(`t${i}`, { resources: { cpu_millis: i * 10, memory_bytes: i } }));
  for (const algorithm of ['round-robin', 'least-loaded', 'random', 'resource-aware', 'hybrid'] as const) {
    const ds = batch(t, { ps, algorithm }, tasks);
    t.deepEqual(ds.slice(2).map(reasonOf), Array(4).fill('no proplet can take it: 2 at capacity (1/1 tasks), 1 offline'), algorithm);
  }
});

test('inputs are not mutated', (t) => {
  const w = world(seeded(9), 30, 100);
  const deep = <T>(x: T): T => {
    if (x && typeof x === 'object') {
      Object.freeze(x);
      for (const v of Object.values(x)) deep(v);
    }
    return x;
  };
  const before = JSON.stringify(w);
  const state = deep({ cursors: { '': 'zzz' } });
  for (const alg of ALGS) {
    const loads = deep(new Map(Object.entries(w.loads)));
    t.notThrows(() => placeBatch(deep(w.tasks), deep(w.ps), loads, state, { ...cfgOf({ ps: w.ps, algorithm: alg, groups: w.groups }, 'indexed') }));
  }
  t.is(JSON.stringify(w), before);
  t.deepEqual(state, { cursors: { '': 'zzz' } });
});

// ---- createScheduler ----

test('createScheduler implements Placement, keeps its cursor, reads load() and group() when given', (t) => {
  const ps = [proplet('a', { labels: { g: '1' } }), proplet('b', { labels: { g: '1' } }), proplet('c')];
  const assigned = new Map<string, number>();
  const view = { proplets: ps, assigned: (id: string) => assigned.get(id) ?? 0 };
  const s = createScheduler({ type: 'roundrobin' });
  t.is(s.name, 'round-robin');
  const got = [1, 2, 3, 4].map((i) => s.place(task(`t${i}`), view));
  t.deepEqual(ids(got), ['a', 'b', 'c', 'a']);
  t.deepEqual(s.state.cursors, { '': 'a' });
  // legacy view: no group() → groups do not exist
  t.is(reasonOf(s.place(task('g', { proplet_group: 'grp' }), view)), 'proplet group grp does not exist');
  const groups = new Map([['grp', group('grp', { g: '1' }, 'least-loaded')]]);
  const full = { ...view, load: (id: string) => load(id === 'a' ? 5 : 0, 0, 0), group: (n: string) => groups.get(n) };
  t.deepEqual(ids([s.place(task('g', { proplet_group: 'grp' }), full)]), ['b']);
  // max per proplet from the config, batch entry point
  const ll = createScheduler({ type: 'least-loaded', maxTasksPerProplet: 1 });
  t.deepEqual(ids(ll.placeBatch([task('1'), task('2'), task('3'), task('4')], view)), ['a', 'b', 'c', undefined]);
  // random with an injected generator
  const rs = createScheduler({ type: 'random' }, { random: () => 0.99 });
  t.deepEqual(ids([rs.place(task('r'), view)]), ['c']);
  // hybrid with a partial config over the seed's defaults
  const hs = createScheduler({ type: 'hybrid', hybrid: { loadBalancingRatio: 1 } });
  t.is(hs.config.hybrid.computeKeywords.join(), 'ml,ai,compute,batch');
  t.deepEqual(ids([hs.place(task('sensor'), { proplets: hybridPs(), assigned: () => 0 })]), ['e1']);
  t.throws(() => createScheduler({ type: 'hybrid', hybrid: { loadBalancingRatio: 2 } }), { message: /loadBalancingRatio/ });
});

test('parseSchedulerType accepts the seeds’ names and rejects others', (t) => {
  const ok: [string, Algorithm][] = [
    ['roundrobin', 'round-robin'],
    ['round-robin', 'round-robin'],
    ['least-loaded', 'least-loaded'],
    ['random', 'random'],
    ['resource-aware', 'resource-aware'],
    [' Hybrid ', 'hybrid'],
  ];
  for (const [s, want] of ok) t.is(parseSchedulerType(s), want);
  for (const bad of ['', 'fifo', 'least_loaded', 'toString']) t.throws(() => parseSchedulerType(bad), { message: /unknown scheduler type .*expected one of roundrobin, round-robin, least-loaded, random, resource-aware, hybrid/ });
  t.deepEqual({ ...DEFAULT_HYBRID }, { preferK8sForCompute: true, preferExternalForEdge: true, computeKeywords: ['ml', 'ai', 'compute', 'batch'], edgeKeywords: ['sensor', 'iot', 'edge', 'device'], loadBalancingRatio: 0.5 });
});


test('indexes built mid-batch see the earlier placements, whether proplets come sorted by id or not', (t) => {
  // 40 proplets; the first 30 tasks fill the default pool, then tasks with
  // selectors make new pools whose indexes start from the one key order of
  // the batch, with the proplets that took tasks since re-sorted.
  const ps = Array.from({ length: 40 }, (_, i) =>
    proplet(`p${String(i).padStart(2, '0')}`, { device_type: i % 3 === 0 ? 'esp32' : 'rpi', labels: { zone: i % 2 === 0 ? 'n' : 's' }, capacity: { max_tasks: 3, memory_bytes: 1000 } }),
  );
  const loads = Object.fromEntries(ps.filter((_, i) => i % 4 === 0).map((p, i) => [p.id, load(i % 3, 0, (i * 97) % 500)]));
  const tasks = [
    ...Array.from({ length: 30 }, (_, i) => task(`d${i}`, { resources: { memory_bytes: 10 + i * 7 } })),
    ...Array.from({ length: 40 }, (_, i) =>
      task(`s${i}`, { resources: { memory_bytes: 50 + (i % 5) * 90 }, proplet_selector: i % 2 === 0 ? { match_device_types: ['esp32'] } : { match_labels: { zone: 'n' } } }),
    ),
  ];
  for (const algorithm of ['least-loaded', 'hybrid', 'resource-aware', 'round-robin', 'random'] as const) {
    const sorted = batch(t, { ps, loads, algorithm }, tasks);
    const shuffled = batch(t, { ps: [...ps].reverse(), loads, algorithm }, tasks);
    if (algorithm !== 'random') t.deepEqual(shuffled, sorted, algorithm);
    t.true(sorted.slice(30).some((d) => d.ok), algorithm);
  }
});

test('long batches over 1,500 proplets and more pools than a proplet’s pool bitmask holds (40 racks) agree with the scan', (t) => {
  // Deep indexes, where a move stops combining aggregates partway up (only
  // counts change above), and pools beyond the 32 found through the bitmask.
  const rnd = seeded(16);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const racks = Array.from({ length: 40 }, (_, k) => `r${k}`);
  const ps = Array.from({ length: 1500 }, (_, i) => {
    const dt = pick(['esp32', 'rpi', 'node']);
    return proplet(`p${String(i).padStart(4, '0')}`, {
      device_type: dt,
      proplet_type: dt === 'node' ? 'k8s' : 'external',
      labels: { rack: pick(racks) },
      capacity: dt === 'esp32' ? { cpu_millis: 240, memory_bytes: 512, max_tasks: 1 + Math.floor(rnd() * 6) } : { cpu_millis: pick([1000, 4000]), memory_bytes: pick([4096, 8192]), max_tasks: 1 + Math.floor(rnd() * 6) },
    });
  });
  const loads: Record<string, Load> = {};
  for (const p of ps) if (rnd() < 0.5) loads[p.id] = load(Math.floor(rnd() * 2), Math.floor(rnd() * 100), Math.floor(rnd() * 300));
  const tasks = Array.from({ length: 2500 }, (_, i) =>
    task(`t${i}`, {
      name: pick(['ml-job', 'sensor-read', 'plain']),
      resources: { cpu_millis: pick([0, 10, 100, 600]), memory_bytes: pick([0, 16, 200, 2000, 10000]) },
      ...(rnd() < 0.6 ? { proplet_selector: { match_labels: { rack: pick(racks) } } } : {}),
    }),
  );
  for (const algorithm of ['least-loaded', 'hybrid', 'round-robin', 'random', 'resource-aware'] as const) {
    const ds = batch(t, { ps, loads, algorithm }, tasks);
    t.true(ds.some((d) => d.ok) && ds.some((d) => !d.ok), algorithm);
  }
});
