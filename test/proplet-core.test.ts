// The proplet core without a broker: each row is a sequence of events and the
// commands the core must answer the last one with. Both proplet kinds run this
// core, so what holds here holds for the node proplet and the MCU profile alike.

import test from 'ava';
import { decode, encode, MAX_PAYLOAD, type Result } from '../protocol/index.ts';
import { encodeResult, outcomeOf, PropletCore, readStartRef, runKey, taskRun, type Command, type Event, type Profile, type StartInfo } from '../proplet-core/index.ts';
import { TRUNCATED_MARKER } from '../wasm-runtime/index.ts';

const ME = 'p1';
const T = 't1';
type P = { n: number };

const start = (o: Partial<StartInfo<P>> = {}, now = 0): Event<P> => ({ t: 'start', start: { id: T, attempt: 1, payload: { n: 1 }, ...o }, now });
const stop = (o: { id?: string; attempt?: number; proplet_id?: string } = {}, now = 0): Event<P> => ({ t: 'stop', id: T, ...o, now });
const key = (attempt: number | undefined = 1, id = T) => runKey(id, attempt);
const loaded = (attempt: number | undefined = 1, moduleBytes = 100, linearBytes = 0): Event<P> => ({ t: 'loaded', key: key(attempt), moduleBytes, linearBytes });
const finished = (attempt: number | undefined = 1, status: 'completed' | 'failed' | 'stopped' = 'completed'): Event<P> => ({ t: 'finished', key: key(attempt), outcome: { status, stdout: 'out' } });
const online: Event<P> = { t: 'connected' };

/** A command as a short string: what the table compares. */
function show(c: Command<P>): string {
  switch (c.t) {
    case 'load':
    case 'abort-load':
    case 'kill':
      return `${c.t} ${c.key}`;
    case 'run':
      return `run ${c.key} linear=${c.linearBytes}`;
    case 'publish':
      return `publish ${c.result.task_id}@${c.result.attempt ?? '-'} ${c.result.status}${c.result.status === 'refused' ? `: ${c.result.error}` : ''}${c.flushed ? ' (flushed)' : ''}${c.again ? ' (again)' : ''}`;
    case 'deferred':
      return `defer ${c.result.task_id}@${c.result.attempt ?? '-'} ${c.result.status}`;
    case 'announce':
    case 'alive':
      return `${c.t} [${c.running.map((r) => `${r.task_id}@${r.attempt ?? '-'}`).join(',')}]`;
    case 'ignored':
      return `ignore ${c.reason}`;
    case 'dropped-result':
      return `drop ${c.result.task_id}`;
  }
}

interface Row {
  name: string;
  profile?: Partial<Profile>;
  /** Events before the one under test (online first unless `offline`). */
  given: Event<P>[];
  offline?: boolean;
  when: Event<P>;
  then: (string | RegExp)[];
}

const rows: Row[] = [
  { name: 'a start is loaded', given: [], when: start(), then: [`load ${key()}`] },
  { name: 'loaded: running goes out, then the run', given: [start()], when: loaded(), then: [`publish ${T}@1 running`, `run ${key()} linear=0`] },
  { name: 'finished: the final result with the attempt', profile: { aliveOnFinish: false }, given: [start(), loaded()], when: finished(), then: [`publish ${T}@1 completed`] },
  { name: 'a redelivered start (same attempt) is ignored while it runs', given: [start(), loaded()], when: start(), then: ['ignore duplicate'] },
  { name: 'a redelivered start is ignored after the attempt ended', given: [start(), loaded(), finished()], when: start(), then: ['ignore duplicate'] },
  { name: 'a start without attempt (Propeller) may run again after it ended', given: [start({ attempt: undefined }), { t: 'loaded', key: T, moduleBytes: 1, linearBytes: 0 }, { t: 'finished', key: T, outcome: { status: 'completed' } }], when: start({ attempt: undefined }), then: [`load ${T}`] },
  { name: 'a start for another proplet is ignored', given: [], when: start({ proplet_id: 'p2' }), then: ['ignore not_mine'] },
  { name: 'a stop that overtook its start: the start does not run', given: [stop({ attempt: 1 }, 0)], when: start({}, 10), then: ['ignore stopped_before_start'] },
  { name: 'a stop for attempt 1 does not block attempt 2', given: [stop({ attempt: 1 })], when: start({ attempt: 2 }), then: [`load ${key(2)}`] },
  { name: 'a stop remembered only for a while', given: [stop({}, 0)], when: start({}, 61_000), then: [`load ${key()}`] },
  { name: 'a stop while loading forgets the task without a result', given: [start()], when: stop(), then: [`abort-load ${key()}`] },
  { name: 'a stop while running kills it', given: [start(), loaded()], when: stop({ attempt: 1 }), then: [`kill ${key()}`] },
  { name: 'the killed run reports stopped, then the new load', given: [start(), loaded(), stop()], when: finished(1, 'stopped'), then: [`publish ${T}@1 stopped`, 'alive []'] },
  { name: 'a stop for an older attempt does not end the current one', given: [start({ attempt: 2 }), loaded(2)], when: stop({ attempt: 1 }), then: ['ignore stale_attempt'] },
  { name: 'a stop for another proplet is ignored', given: [start(), loaded()], when: stop({ proplet_id: 'p2' }), then: ['ignore not_mine'] },
  { name: 'loading that ends after a stop is not reported', given: [start(), stop()], when: loaded(), then: ['ignore not_held'] },
  { name: 'a newer attempt supersedes the one running: kill it, load the new one', given: [start(), loaded()], when: start({ attempt: 2 }), then: [`kill ${key(1)}`, `load ${key(2)}`] },
  { name: 'the superseded run ends silently', given: [start(), loaded(), start({ attempt: 2 })], when: finished(1, 'stopped'), then: ['ignore not_held'] },
  { name: 'an older attempt arriving late is ignored', given: [start({ attempt: 2 })], when: start({ attempt: 1 }), then: ['ignore stale_attempt'] },
  { name: 'at capacity: refused with the numbers', profile: { maxTasks: 1 }, given: [start({ id: 'other' })], when: start(), then: [`publish ${T}@1 refused: at capacity: 1/1 tasks running`] },
  { name: 'a module over the limit is refused before loading', profile: { maxModuleBytes: 1000 }, given: [], when: start({ moduleBytes: 17 << 20 }), then: [/refused: module of 17825792 bytes exceeds this proplet's limit of 1000/] },
  { name: 'a start that did not decode is refused with its reason', given: [], when: start({ payload: undefined, unfit: 'cannot take this start: file: too long' }), then: [`publish ${T}@1 refused: cannot take this start: file: too long`] },
  { name: 'over the RAM budget at start: refused with the shortfall', profile: { ramBudgetBytes: 1000 }, given: [], when: start({ moduleBytes: 600, linearBytes: 600 }), then: [/refused: needs 1200 bytes of RAM \(module 600 \+ linear memory 600\), 1000 of the 1000-byte budget free/] },
  { name: 'over the RAM budget once the module is known: refused', profile: { ramBudgetBytes: 1000 }, given: [start({ moduleBytes: 100 })], when: loaded(1, 100, 65536), then: [/refused: needs 65636 bytes/] },
  { name: 'a chunked module whose size overflows the budget: refused, the download aborted', profile: { ramBudgetBytes: 1000 }, given: [start()], when: { t: 'sized', key: key(), part: 'module', bytes: 5000 }, then: [`abort-load ${key()}`, /refused: needs 5000 bytes/] },
  { name: 'the model of an FL task counts against the budget too', profile: { ramBudgetBytes: 1000 }, given: [start({ moduleBytes: 600 })], when: { t: 'sized', key: key(), part: 'model', bytes: 600 }, then: [`abort-load ${key()}`, /refused: needs 600 bytes of RAM \(module 600 \+ linear memory 0\), 400 of/] },
  { name: 'a refusal found while loading', given: [start()], when: { t: 'refuse', key: key(), reason: 'too big' }, then: [`publish ${T}@1 refused: too big`] },
  { name: 'finished while offline: kept for later', given: [start(), loaded(), { t: 'disconnected' }], when: finished(), then: [`defer ${T}@1 completed`] },
  { name: 'reconnected: deferred results first, then the registration with what runs', given: [start(), loaded(), start({ id: 't2' }), { t: 'disconnected' }, finished()], when: online, then: [`publish ${T}@1 completed (flushed)`, 'announce [t2@1]'] },
  { name: 'a final result that could not be sent after all is kept for the next connect', given: [start(), loaded()], when: { t: 'unsent', result: { v: 1, proplet_id: ME, task_id: T, attempt: 1, status: 'completed' } }, then: [`defer ${T}@1 completed`] },
  { name: 'an unsent running result is not kept', given: [start()], when: { t: 'unsent', result: { v: 1, proplet_id: ME, task_id: T, attempt: 1, status: 'running' } }, then: [] },
  { name: 'running is not kept while offline', given: [start(), { t: 'disconnected' }], when: loaded(), then: [`run ${key()} linear=0`] },
  { name: 'the outbox is bounded: the oldest result is dropped', profile: { outboxSize: 1, maxTasks: 4 }, given: [start(), start({ id: 't2' }), loaded(), { t: 'loaded', key: key(1, 't2'), moduleBytes: 1, linearBytes: 0 }, { t: 'disconnected' }, finished()], when: { t: 'finished', key: key(1, 't2'), outcome: { status: 'completed' } }, then: ['defer t2@1 completed', `drop ${T}`] },
  { name: 'a stop for an attempt that ended here is answered with its final result again', given: [start(), loaded(), finished()], when: stop({ attempt: 1 }), then: [`publish ${T}@1 completed (again)`] },
  { name: 'a failed attempt is answered with its failure again', given: [start(), loaded(), finished(1, 'failed')], when: stop({ attempt: 1 }), then: [`publish ${T}@1 failed (again)`] },
  { name: 'a stop without attempt after the end: only remembered', given: [start(), loaded(), finished()], when: stop(), then: ['ignore unknown_task'] },
  { name: 'a stop for another attempt than the one that ended: only remembered', given: [start(), loaded(), finished()], when: stop({ attempt: 2 }), then: ['ignore unknown_task'] },
  { name: 'a stop for an attempt that never ran here: only remembered', given: [], when: stop({ attempt: 1 }), then: ['ignore unknown_task'] },
  { name: 'a profile keeping no results: the stop is only remembered', profile: { retainedResults: 0 }, given: [start(), loaded(), finished()], when: stop({ attempt: 1 }), then: ['ignore unknown_task'] },
  { name: 'only the last results are kept: the oldest is forgotten', profile: { retainedResults: 1 }, given: [start(), loaded(), finished(), start({ id: 't2' }), { t: 'loaded', key: key(1, 't2'), moduleBytes: 1, linearBytes: 0 }, { t: 'finished', key: key(1, 't2'), outcome: { status: 'completed' } }], when: stop({ attempt: 1 }), then: ['ignore unknown_task'] },
  { name: 'the newest kept result is still answered', profile: { retainedResults: 1 }, given: [start(), loaded(), finished(), start({ id: 't2' }), { t: 'loaded', key: key(1, 't2'), moduleBytes: 1, linearBytes: 0 }, { t: 'finished', key: key(1, 't2'), outcome: { status: 'completed' } }], when: stop({ id: 't2', attempt: 1 }), then: ['publish t2@1 completed (again)'] },
  { name: 'a stop for another proplet is not answered', given: [start(), loaded(), finished()], when: stop({ attempt: 1, proplet_id: 'p2' }), then: ['ignore not_mine'] },
  { name: 'the new load follows the result', given: [start(), loaded()], when: finished(), then: [`publish ${T}@1 completed`, 'alive []'] },
];

for (const row of rows) {
  test(row.name, (t) => {
    const core = new PropletCore<P>({ propletId: ME, maxTasks: 4, maxModuleBytes: 1 << 30, ...row.profile });
    if (!row.offline) core.handle(online);
    for (const e of row.given) core.handle(e);
    const got = core.handle(row.when).map(show);
    t.is(got.length, row.then.length, got.join('\n'));
    row.then.forEach((want, i) => (typeof want === 'string' ? t.is(got[i], want) : t.regex(got[i]!, want)));
  });
}

test('the budget is released whenever a task ends, however it ends', (t) => {
  const core = new PropletCore<P>({ propletId: ME, maxTasks: 8, maxModuleBytes: 1 << 20, ramBudgetBytes: 10_000 });
  core.handle(online);
  const ends: Event<P>[][] = [
    [start({ id: 'a', moduleBytes: 1000 }), { t: 'loaded', key: key(1, 'a'), moduleBytes: 1000, linearBytes: 1000 }, { t: 'finished', key: key(1, 'a'), outcome: { status: 'failed' } }],
    [start({ id: 'b', moduleBytes: 1000 }), stop({ id: 'b' })],
    [start({ id: 'c' }), { t: 'sized', key: key(1, 'c'), part: 'model', bytes: 500 }, { t: 'refuse', key: key(1, 'c'), reason: 'no' }],
    [start({ id: 'd', moduleBytes: 9000, linearBytes: 2000 })],
    [start({ id: 'e', moduleBytes: 1000 }), start({ id: 'e', attempt: 2, moduleBytes: 1000 }), { t: 'loaded', key: key(2, 'e'), moduleBytes: 1000, linearBytes: 0 }, { t: 'finished', key: key(2, 'e'), outcome: { status: 'completed' } }],
  ];
  for (const seq of ends) for (const e of seq) core.handle(e);
  t.is(core.budget!.usedBytes, 0);
  t.is(core.size, 0);
});

test('memories of stops and ended attempts stay bounded', (t) => {
  const core = new PropletCore<P>({ propletId: ME, maxTasks: 1, maxModuleBytes: 1 << 20 });
  core.handle(online);
  for (let i = 0; i < 5000; i++) {
    core.handle(stop({ id: `s${i}` }));
    core.handle(start({ id: `x${i}` }));
    core.handle({ t: 'loaded', key: key(1, `x${i}`), moduleBytes: 1, linearBytes: 0 });
    core.handle({ t: 'finished', key: key(1, `x${i}`), outcome: { status: 'completed' } });
  }
  const m = core as unknown as { stops: Map<string, unknown>; ended: Map<string, unknown>; retained: Map<string, unknown> };
  t.true(m.stops.size <= 1024 && m.ended.size <= 1024);
  t.is(m.retained.size, 64);
});

test('the answer to a stop for an ended attempt is the whole final result, as first sent', (t) => {
  const core = new PropletCore<P>({ propletId: ME, maxTasks: 4, maxModuleBytes: 1 << 20 });
  core.handle(online);
  for (const e of [start({ fl: true }), loaded()]) core.handle(e);
  const first = core.handle({ t: 'finished', key: key(), outcome: { status: 'completed', results: [42], stdout: 'out', duration_ms: 7 } });
  const again = core.handle(stop({ attempt: 1 }));
  t.is(again.length, 1);
  t.deepEqual(again[0], { ...first[0]!, again: true } as Command<P>);
  t.like(again[0], { t: 'publish', again: true, result: { v: 1, proplet_id: ME, task_id: T, attempt: 1, status: 'completed', results: [42], fl: true } });
  // the redelivered start of that attempt is still not run again
  t.deepEqual(core.handle(start()).map(show), ['ignore duplicate']);
});

// --- results that fit ---------------------------------------------------------------

const base: Result = { v: 1, proplet_id: ME, task_id: T, attempt: 1, status: 'completed' };

for (const encoding of ['json', 'cbor'] as const) {
  test(`${encoding}: output at the 1 MiB cap, marker included, still decodes as a valid result`, (t) => {
    const cut = 'x'.repeat((1 << 20) - Buffer.byteLength(TRUNCATED_MARKER)) + TRUNCATED_MARKER; // what the runtime hands over
    const r = decode('proplet.results', encodeResult({ ...base, stdout: cut, stderr: 'é'.repeat(1 << 20) }, encoding)).msg;
    t.is(r.stdout, cut);
    t.true(r.stderr!.endsWith(TRUNCATED_MARKER) && Buffer.byteLength(r.stderr!) <= 1 << 20);
  });

  test(`${encoding}: output that escapes to more than the payload limit is cut until the message fits`, (t) => {
    const nasty = '\u0001'.repeat(1 << 20) + 'more'; // over the field's limit, and 6 bytes each as a JSON escape
    const bytes = encodeResult({ ...base, stdout: nasty, stderr: nasty, error: 'e'.repeat(10_000) }, encoding);
    t.true(bytes.length <= MAX_PAYLOAD['proplet.results']);
    const r = decode('proplet.results', bytes).msg;
    t.true(r.stdout!.endsWith(TRUNCATED_MARKER));
    t.true(r.error!.length <= 4096);
  });
}

test('a start that does not decode still names its task, in both encodings', (t) => {
  const big = { v: 1, id: T, proplet_id: ME, attempt: 3, file: new Uint8Array(17 << 20) };
  for (const enc of ['json', 'cbor'] as const) {
    const payload = encode('manager.start', big, enc);
    t.throws(() => decode('manager.start', payload));
    t.deepEqual(readStartRef(payload), { id: T, proplet_id: ME, attempt: 3 }, enc);
  }
  t.is(readStartRef(Buffer.from('not a start')), undefined);
});

test('a start becomes the same run on every proplet kind: argv, no time limit for a daemon', (t) => {
  const start = { v: 1, id: T, name: 'srv', cli_args: ['-p', '1'] };
  t.deepEqual(taskRun({ ...start, daemon: true, timeout_ms: 5 }, 60_000), { name: 'srv', args: ['srv', '-p', '1'], env: {}, inputs: [], timeoutMs: 0 });
  t.is(taskRun({ ...start, timeout_ms: 5 }, 60_000).timeoutMs, 5);
  t.is(taskRun({ v: 1, id: T }, 60_000).args[0], 'main');
});

test('a run ends as the same result on every proplet kind', (t) => {
  const base = { stdout: 'o', stderr: '', durationMs: 3 };
  t.deepEqual(outcomeOf({ ...base, ok: true, exitCode: 0, returnValue: 5 }), { status: 'completed', stdout: 'o', stderr: '', duration_ms: 3, results: 5, exit_code: 0 });
  t.like(outcomeOf({ ...base, ok: false, exitCode: null, error: 'stopped' }), { status: 'stopped', error: 'stopped' });
  t.like(outcomeOf({ ...base, ok: false, exitCode: 3, error: 'exit code 3' }, { num_samples: 1 }), { status: 'failed', exit_code: 3, results: { num_samples: 1 } });
});
