// What each kind of Propeller proplet is sent, as tables: starts, stops,
// module chunks, inputs, metrics and results, and the broker's rules for both
// topic layouts and device channels. Pure functions, no sockets.

import test from 'ava';
import { authorize, type Decision } from '../broker/acl.ts';
import { channelConflict, kindOfRegistration } from '../control-plane/propeller-compat.ts';
import { embedInputs, embedStart, fromPropellerMetrics, propellerChunks, qosFor, resultStatus, rustInputs, rustStart, shapeStop, timestampMs } from '../control-plane/propeller-shapes.ts';
import { functionExport } from '../control-plane/wasm-exports.ts';
import type { Proplet } from '../control-plane/model.ts';
import { scope, topic } from '../topics/index.ts';

const S = scope('propeller', 'control');
const MAIN_ADD = Buffer.from('0061736d0100000001070160027f7f017f03020100070801046d61696e00000a09010700200020016a0b', 'hex');
const F64 = Buffer.from('0061736d0100000001070160027c7c017c03020100070801046d61696e00000a09010700200020016a0b', 'hex');
const start = (o: object = {}) => ({ v: 1, id: 't1', name: 'main', proplet_id: 'p', attempt: 1, cli_args: [], inputs: [1, 2], env: {}, daemon: false, file: MAIN_ADD, digest: 'sha256:' + 'a'.repeat(64), ...o });

test('inputs: strings for the Rust proplet, whole numbers 0..2^32-1 for embed-proplet', (t) => {
  const rust: [unknown[], string[] | RegExp][] = [
    [[2, 3], ['2', '3']],
    [[2.5, '7', 10n], ['2.5', '7', '10']],
    [['x'], ['x']], // it parses per parameter type and answers an error itself
    [[true], /inputs\[0\]: the Rust proplet takes numbers or numeric strings/],
    [[{}], /inputs\[0\]/],
  ];
  for (const [inp, want] of rust) {
    const got = rustInputs(inp);
    if (want instanceof RegExp) t.regex(got as string, want);
    else t.deepEqual(got, want);
  }
  const embed: [unknown[], number[] | RegExp][] = [
    [[2, 3], [2, 3]],
    [['40', ' 2 '], [40, 2]],
    [[4294967295], [4294967295]],
    [[-1], /inputs\[0\]: embed-proplet takes whole numbers/],
    [[2.5], /inputs\[0\]/],
    [['abc'], /inputs\[0\]/],
    [[2 ** 32], /inputs\[0\]/],
    [Array(17).fill(1), /at most 16 inputs/],
  ];
  for (const [inp, want] of embed) {
    const got = embedInputs(inp);
    if (want instanceof RegExp) t.regex(got as string, want);
    else t.deepEqual(got, want);
  }
});

test('rust start: inline with string inputs and QoS 2; over its packet limit, by digest name without the file', (t) => {
  const a = rustStart(start({ name: 'add', inputs: [2, '3'] }));
  if (!a.ok) return t.fail(a.reason);
  t.is(a.qos, 2);
  t.deepEqual(a.msg.inputs, ['2', '3']);
  t.is(a.msg.file, MAIN_ADD.toString('base64'));
  t.is(a.msg.name, 'add');
  t.is(a.msg.proplet_id, 'p');
  const b = rustStart(start({ name: 'add', file: Buffer.alloc(4000) }), { rustMaxPacket: 2048 });
  if (!b.ok) return t.fail(b.reason);
  t.is(b.msg.file, undefined);
  t.is(b.msg.image_url, 'sha256:' + 'a'.repeat(64));
  t.regex((rustStart(start({ name: '' })) as { reason: string }).reason, /needs a task name/);
});

test('embed start: only main(i32...) -> i32, matching inputs, no daemon or cli_args, within 1023 bytes, QoS 0', (t) => {
  const ok = embedStart(start({ inputs: ['40', 2] }), MAIN_ADD);
  if (!ok.ok) return t.fail(ok.reason);
  t.is(ok.qos, 0);
  t.deepEqual(ok.msg, { id: 't1', name: 'main', file: MAIN_ADD.toString('base64'), inputs: [40, 2] });
  t.true(ok.bytes.length <= 1023);
  const refusals: [object, Uint8Array | undefined, RegExp][] = [
    [{ name: 'add' }, MAIN_ADD, /calls only the export main, the task names "add"/],
    [{}, F64, /i32 arguments .*main is \(f64, f64\) -> \(f64\)/],
    [{ inputs: [1] }, MAIN_ADD, /main takes 2 arguments, the task gives 1/],
    [{ daemon: true }, MAIN_ADD, /no daemons/],
    [{ cli_args: ['-v'] }, MAIN_ADD, /no cli_args/],
    [{}, Buffer.concat([MAIN_ADD, Buffer.from([0, 0x84, 0x07, 3, 0x70, 0x61, 0x64]), Buffer.alloc(896)]), /at most 1023 bytes/],
    [{}, undefined, /needs the module/],
    [{}, Buffer.from('not wasm at all'), /not a WebAssembly module/],
  ];
  for (const [o, mod, why] of refusals) {
    const r = embedStart(start(o), mod);
    t.false(r.ok, JSON.stringify(o));
    if (!r.ok) t.regex(r.reason, why);
  }
});

test('stop: {id} for the Rust proplet; id, name and state for embed-proplet; ours keep our own', (t) => {
  t.deepEqual(shapeStop('propeller-rust', 't1', 'add')?.msg, { id: 't1' });
  t.deepEqual(shapeStop('embed', 't1', 'main')?.msg, { id: 't1', name: 'main', state: 'Stopped' });
  t.is(shapeStop('embed', 't1', 'main')?.qos, 0);
  t.is(shapeStop('ours', 't1', 'x'), undefined);
  t.is(shapeStop('legacy', 't1', 'x'), undefined);
  t.deepEqual([qosFor('propeller-rust'), qosFor('embed'), qosFor('ours'), qosFor('legacy')], [2, 0, 1, 1]);
});

test('module chunks by name: 512,000-byte pieces (less under a lower packet limit) for Rust; one whole message or nothing for embed', (t) => {
  const mod = Buffer.alloc(1_200_000, 7);
  const big = propellerChunks('propeller-rust', 'oci://r/m:1', mod) as { chunk_idx: number; total_chunks: number; data: string; app_name: string }[];
  t.is(big.length, 3);
  t.deepEqual(big.map((c) => [c.chunk_idx, c.total_chunks, c.app_name]), [[0, 3, 'oci://r/m:1'], [1, 3, 'oci://r/m:1'], [2, 3, 'oci://r/m:1']]);
  t.is(Buffer.from(big[0]!.data, 'base64').length, 512_000);
  t.deepEqual(Buffer.concat(big.map((c) => Buffer.from(c.data, 'base64'))), mod);
  const small = propellerChunks('propeller-rust', 'n', mod, { rustMaxPacket: 65_536 }) as { data: string }[];
  t.true(small.every((c) => JSON.stringify(c).length < 65_536 - 512));
  const one = propellerChunks('embed', 'x', MAIN_ADD) as { total_chunks: number }[];
  t.is(one.length, 1);
  t.is(one[0]!.total_chunks, 1);
  t.regex(propellerChunks('embed', 'x', Buffer.alloc(900)) as string, /exceeds embed-proplet's 1023/);
});

test('metrics and results from Propeller proplets in our terms', (t) => {
  t.is(timestampMs({ secs_since_epoch: 1_700_000_000, nanos_since_epoch: 250_000_000 }), 1_700_000_000_250);
  t.is(timestampMs(123_456), 123_456);
  t.is(timestampMs('x'), undefined);
  t.deepEqual(fromPropellerMetrics({ cpu_metrics: { percent: 12.5 }, memory_metrics: { rss_bytes: 1000 }, timestamp: 5 }), { cpu_percent: 12.5, memory_used: 1000, timestamp_ms: 5 });
  t.deepEqual(fromPropellerMetrics({ memory_metrics: { rss_bytes: 0, heap_alloc_bytes: 40960 } }), { memory_used: 40960 });
  t.deepEqual(fromPropellerMetrics({ cpu_metrics: 'x' }), {});
  const cases: [object, boolean, ReturnType<typeof resultStatus>][] = [
    [{ results: '7', error: null }, false, 'completed'],
    [{ results: '', error: 'boom' }, false, 'failed'],
    [{ results: '' }, true, 'running'], // a daemon answers "" at once
    [{ results: '' }, false, 'completed'],
    [{ results: '3,4' }, false, 'completed'],
    [{ results: { round_id: 'r', update_b64: 'AA==' } }, false, 'completed'], // an FL envelope
  ];
  for (const [r, daemon, want] of cases) t.is(resultStatus(r, daemon), want, JSON.stringify(r));
});

test('the kind of proplet, from its registration', (t) => {
  const k = (o: object) => kindOfRegistration(Buffer.from(JSON.stringify(o)), (o as { addressing?: string }).addressing);
  t.is(k({ proplet_id: 'a', namespace: 'default', metadata: { os: 'linux', wasm_runtime: 'wasmtime-internal' } }), 'propeller-rust');
  t.is(k({ proplet_id: 'a', namespace: 'embedded', metadata: { os: 'zephyr', wasm_runtime: 'wamr' } }), 'embed');
  t.is(k({ proplet_id: 'a', metadata: { wasm_runtime: 'wamr' } }), 'embed');
  t.is(k({ proplet_id: 'a', addressing: 'direct' }), 'ours');
  t.is(k({ proplet_id: 'py-1', device_type: 'python-worker', capabilities: ['wasm'] }), 'legacy');
  t.is(kindOfRegistration(Buffer.from([0xa1, 0x01, 0x61, 0x61]), 'direct'), 'ours'); // compact CBOR
});

test('a shared channel with an embed-proplet and another Propeller proplet: neither is placed on', (t) => {
  const p = (id: string, kind: 'embed' | 'propeller-rust' | 'ours', channel = 'control', state: Proplet['state'] = 'alive') =>
    ({ id, addressing: kind === 'ours' ? 'direct' : 'shared', state, wire: { kind, layout: kind === 'ours' ? 'messages' : 'bare', channel } }) as Proplet;
  const fleet = [p('esp-a', 'embed'), p('rust-1', 'propeller-rust'), p('esp-own', 'embed', 'esp-own'), p('node-1', 'ours')];
  t.regex(channelConflict(fleet[0]!, fleet, S)!, /embed-proplet esp-a shares channel control with rust-1/);
  t.regex(channelConflict(fleet[1]!, fleet, S)!, /embed-proplet esp-a shares channel control with rust-1/);
  t.is(channelConflict(fleet[2]!, fleet, S), undefined);
  t.is(channelConflict(fleet[3]!, fleet, S), undefined);
  const alone = [p('esp-a', 'embed'), p('node-1', 'ours'), p('gone', 'propeller-rust', 'control', 'failed')];
  t.is(channelConflict(alone[0]!, alone, S), undefined);
});

test('wasm exports: signatures of exported functions', (t) => {
  t.deepEqual(functionExport(MAIN_ADD, 'main'), { params: ['i32', 'i32'], results: ['i32'] });
  t.regex(functionExport(MAIN_ADD, 'add') as string, /no export add/);
  t.regex(functionExport(MAIN_ADD.subarray(0, 20), 'main') as string, /malformed|no export/);
});

const bare = (ch: string, path: string) => `m/propeller/c/${ch}/${path}`;
const ok: Decision = { ok: true };
const acl: [string, Parameters<typeof authorize>, Decision][] = [
  ['Rust proplet publishes discovery on the bare layout', [S, 'proplet', 'r1', 'publish', bare('control', 'control/proplet/create'), '{"proplet_id":"r1","metadata":{}}'], ok],
  ['…naming another proplet', [S, 'proplet', 'r1', 'publish', bare('control', 'control/proplet/alive'), '{"proplet_id":"r2"}'], { ok: false, reason: 'sender_mismatch' }],
  ['…invoke results naming another proplet', [S, 'proplet', 'r1', 'publish', bare('control', 'control/proplet/invoke_results'), '{"proplet_id":"r2"}'], { ok: false, reason: 'sender_mismatch' }],
  ['…task metrics as itself', [S, 'proplet', 'r1', 'publish', bare('control', 'control/proplet/task_metrics'), '{"proplet_id":"r1"}'], ok],
  ['a JSON result naming nobody on the shared channel: stamped', [S, 'proplet', 'e1', 'publish', bare('control', 'control/proplet/results'), '{"task_id":"t","results":"5"}'], ok],
  ['a module request by name, naming nobody: stamped', [S, 'proplet', 'r1', 'publish', bare('control', 'registry/proplet'), '{"app_name":"x"}'], ok],
  ['an alive naming nobody on the shared channel: stamped', [S, 'proplet', 'e1', 'publish', bare('control', 'control/proplet/alive'), '{"status":"alive"}'], ok],
  ['on its own device channel, the channel names it', [S, 'proplet', 'e1', 'publish', bare('e1', 'control/proplet/results'), '{"task_id":"t","results":"5"}'], ok],
  ["on another device's channel", [S, 'proplet', 'e1', 'publish', bare('e2', 'control/proplet/results'), '{"task_id":"t"}'], { ok: false, reason: 'outside_scope' }],
  ['a start from a proplet', [S, 'proplet', 'e1', 'publish', bare('e1', 'control/manager/start'), '{}'], { ok: false, reason: 'kind_not_allowed' }],
  ['Rust proplet subscribes to the bare shared start, stop, invoke and chunks', [S, 'proplet', 'r1', 'subscribe', bare('control', 'control/manager/invoke')], ok],
  ['embed-proplet subscribes on its device channel', [S, 'proplet', 'e1', 'subscribe', bare('e1', 'control/manager/start')], ok],
  ["…on another's device channel", [S, 'proplet', 'e1', 'subscribe', bare('e2', 'control/manager/start')], { ok: false, reason: 'outside_scope' }],
  ['the manager publishes to a device channel', [S, 'manager', 'm', 'publish', bare('e1', 'control/manager/start'), '{}'], ok],
  ['the manager subscribes on every channel', [S, 'manager', 'm', 'subscribe', 'm/propeller/c/+/control/proplet/#'], ok],
  ['the ours layout is unchanged', [S, 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), '{"proplet_id":"p1"}'], ok],
];
for (const [name, args, want] of acl) test(`acl: ${name}`, (t) => t.deepEqual(authorize(...args), want));
