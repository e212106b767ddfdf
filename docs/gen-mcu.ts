// Generates the machine-checked parts of docs/mcu.md from the real code: every
// message the constrained profile sends or receives, as compact CBOR hex made
// by protocol's own encode() (the chunks by the control plane's ChunkServer),
// the profile's defaults, and the receive-buffer arithmetic.
//
//   node --import tsx docs/gen-mcu.ts           print every generated block
//   node --import tsx docs/gen-mcu.ts --write   rewrite the blocks inside docs/mcu.md
//   node --import tsx docs/gen-mcu.ts --check   exit 1 when docs/mcu.md is out of date
//
// test/mcu-cbor2.test.ts decodes every example here with Python's cbor2 and
// checks docs/mcu.md against this file's output.

import { fileURLToPath, pathToFileURL } from 'node:url';
import { ChunkServer } from '../control-plane/chunk-server.ts';
import type { Proplet } from '../control-plane/model.ts';
import { ADD_WASM, annotateCbor, publishPacketSize, runGenerator } from './gen-protocol.ts';
import { decode, encode, sha256Digest, type MessageByKind, type MessageKind } from '../protocol/index.ts';
import { publishQos, scope, topic, type Scope, type TopicKind } from '../topics/index.ts';
import { MCU_DEFAULTS } from '../proplet-mcu/device.ts';
import { aliveMsg, chunkMessageBytes, chunkRequestMsg, registerMsg, resultBase, willMsg, type DeviceProfile } from '../proplet-mcu/messages.ts';

export const DOC_PATH = fileURLToPath(new URL('./mcu.md', import.meta.url));
const S: Scope = scope('propeller', 'control');

export const DEVICE = '5d0c6f1e-2b7a-4e93-8f41-a96c3d27b810';
export const TASK = '9a41e7c2-63d8-4f0b-b5a9-0e7d2c81f4a6';
const ADD_DIGEST = sha256Digest(ADD_WASM);
/** The digest and size of a 200 KB module (the test's data-section module), for the chunked start. */
const BIG_SIZE = 204_025;
const BIG_DIGEST = 'sha256:3f1c0a7be2d94c55b0e6a8f21d7c9e4b6a0f5d3c2b1e8a7f6d5c4b3a29180716';

export const PROFILE: DeviceProfile = {
  id: DEVICE,
  name: 'esp32-kitchen-01',
  deviceType: 'esp32',
  capabilities: ['wasm', 'wasi'],
  labels: { zone: 'kitchen' },
  wasmRuntime: 'wamr-2.2',
  ramBudgetBytes: MCU_DEFAULTS.ramBudgetBytes,
  maxTasks: MCU_DEFAULTS.maxTasks,
  maxModuleBytes: MCU_DEFAULTS.ramBudgetBytes - 65536,
  rxBufferBytes: MCU_DEFAULTS.rxBufferBytes,
};

export type Direction = 'sends' | 'receives';

export interface McuExample {
  name: string;
  title: string;
  direction: Direction;
  kind: MessageKind;
  topic: string;
  /** The message; `bytes` when it was made by another component (the chunk server). */
  msg: MessageByKind[MessageKind];
  bytes: Buffer;
}


/** What the control plane's chunk server answers to a request, captured from the real class. */
function serve(module: Uint8Array | undefined, digest: string, req: MessageByKind['registry.proplet']): Buffer[] {
  const out: Buffer[] = [];
  const server = new ChunkServer({
    module: (_p, d) => (d === digest ? module : undefined),
    send: (_p, payload) => out.push(Buffer.from(payload)),
    log: () => {},
  });
  server.onRequest({ id: DEVICE, encoding: 'cbor', addressing: 'direct' } as Proplet, req);
  return out;
}

function ex<K extends MessageKind>(name: string, title: string, direction: Direction, kind: K, t: string, msg: MessageByKind[K], bytes?: Buffer): McuExample {
  return { name, title, direction, kind, topic: t, msg, bytes: bytes ?? encode(kind, msg, 'cbor') };
}

/** Every message of the profile, in the order docs/mcu.md shows them. */
export function mcuExamples(): McuExample[] {
  const base = resultBase(DEVICE, TASK, 1);
  const startInline: MessageByKind['manager.start'] = {
    v: 1,
    id: TASK,
    name: 'add',
    proplet_id: DEVICE,
    attempt: 1,
    cli_args: [],
    inputs: [2, 3],
    env: {},
    daemon: false,
    timeout_ms: 60_000,
    file: ADD_WASM,
    digest: ADD_DIGEST,
    module_size: ADD_WASM.length,
  };
  // What the gateway sends when the inline start would not fit max_packet_bytes: no `file`.
  const startChunked: MessageByKind['manager.start'] = {
    v: 1,
    id: TASK,
    name: 'check',
    proplet_id: DEVICE,
    attempt: 1,
    cli_args: [],
    inputs: [],
    env: {},
    daemon: false,
    timeout_ms: 60_000,
    digest: BIG_DIGEST,
    module_size: BIG_SIZE,
  };
  const reqFirst = chunkRequestMsg(DEVICE, ADD_DIGEST, MCU_DEFAULTS.chunkSize, { next: 0, window: MCU_DEFAULTS.window });
  const reqMissing = chunkRequestMsg(DEVICE, BIG_DIGEST, MCU_DEFAULTS.chunkSize, { missing: [42] });
  const chunk = serve(ADD_WASM, ADD_DIGEST, reqFirst)[0]!;
  const unknown = 'sha256:' + '0'.repeat(64);
  const chunkError = serve(undefined, ADD_DIGEST, { proplet_id: DEVICE, digest: unknown, chunk_size: 512, next: 0, window: 4 })[0]!;
  const running = [{ task_id: TASK, attempt: 1 }];
  const P = (k: Parameters<typeof topic>[1], own = false) => topic(S, k, own ? DEVICE : undefined);
  return [
    ex('register', 'Register, after every CONNACK and SUBACK', 'sends', 'proplet.create', P('proplet.create'), registerMsg(PROFILE, [])),
    ex('alive-idle', 'Heartbeat, idle', 'sends', 'proplet.alive', P('proplet.alive'), aliveMsg(DEVICE, [], 0)),
    ex('alive-running', 'Heartbeat with one task (module 41 B + one 64 KiB page held in the budget)', 'sends', 'proplet.alive', P('proplet.alive'), aliveMsg(DEVICE, running, 41 + 65536)),
    ex('will', 'Last will (set in CONNECT; published by the broker when the connection dies)', 'sends', 'proplet.alive', P('proplet.alive'), willMsg(DEVICE)),
    ex('start-inline', 'Start with the module inline (the whole start fits the receive buffer)', 'receives', 'manager.start', P('manager.start', true), startInline),
    ex('start-chunked', 'Start without `file`: fetch 204,025 bytes by digest in chunks', 'receives', 'manager.start', P('manager.start', true), startChunked),
    ex('chunk-request', 'Chunk request: 512-byte chunks, 4 from index 0', 'sends', 'registry.proplet', P('registry.proplet'), reqFirst),
    ex('chunk-request-missing', 'Chunk request for one chunk again (its CRC-32 did not match)', 'sends', 'registry.proplet', P('registry.proplet'), reqMissing),
    ex('chunk', 'Chunk 0 of 1: the whole 41-byte module (as the control plane sends it)', 'receives', 'registry.server', P('registry.server', true), decode('registry.server', chunk).msg, chunk),
    ex('chunk-error', 'Chunk with `error`: the registry does not have the module', 'receives', 'registry.server', P('registry.server', true), decode('registry.server', chunkError).msg, chunkError),
    ex('stop', 'Stop', 'receives', 'manager.stop', P('manager.stop', true), { v: 1, id: TASK, proplet_id: DEVICE, attempt: 1 }),
    ex('result-running', 'Result `running`: module loaded and verified, task started', 'sends', 'proplet.results', P('proplet.results'), { ...base, status: 'running' }),
    ex('result-completed', 'Result `completed` of a core module export (add 2 3)', 'sends', 'proplet.results', P('proplet.results'), { ...base, status: 'completed', stdout: '', stderr: '', duration_ms: 0.5, results: 5, exit_code: 0 }),
    ex('result-failed', 'Result `failed`: the assembled module does not match its digest', 'sends', 'proplet.results', P('proplet.results'), {
      ...base,
      status: 'failed',
      stdout: '',
      stderr: '',
      duration_ms: 0,
      error: `module digest mismatch: the assembled ${BIG_SIZE} bytes hash to sha256:9e…, the start names ${BIG_DIGEST.slice(0, 16)}…; discarded without running`,
    }),
    ex('result-refused', 'Result `refused`: the task does not fit the RAM budget', 'sends', 'proplet.results', P('proplet.results'), {
      ...base,
      status: 'refused',
      error: 'needs 589865 bytes of RAM (module 41 + linear memory 589824), 262144 of the 262144-byte budget free',
    }),
    ex('result-stopped', 'Result `stopped`: the task was stopped while it ran', 'sends', 'proplet.results', P('proplet.results'), { ...base, status: 'stopped', stdout: '', stderr: '', duration_ms: 1203.7, error: 'stopped' }),
  ];
}

// ---------------------------------------------------------------------------
// Blocks

export function renderMcuExample(e: McuExample): string {
  const json = JSON.parse(encode(e.kind, e.msg as never, 'json').toString('utf8')) as Record<string, unknown>;
  const qos = publishQos(e.kind as TopicKind, e.name === 'will' ? 'will' : 'periodic');
  return [
    `**${e.title}** (the device ${e.direction} it)`,
    '',
    `Topic: \`${e.topic}\` · payload ${e.bytes.length} bytes · MQTT PUBLISH at QoS ${qos}: ${publishPacketSize(e.topic, e.bytes.length, qos)} bytes`,
    '',
    '```hex',
    annotateCbor(e.kind, e.bytes, json),
    '```',
    '',
    'In one piece:',
    '',
    '```',
    ...(e.bytes.toString('hex').match(/.{1,96}/g) ?? []),
    '```',
  ].join('\n');
}

export function defaultsTable(): string {
  const d = MCU_DEFAULTS;
  const rows: [string, string, string][] = [
    ['RAM budget (`capacity.memory_bytes`)', `${d.ramBudgetBytes} bytes (256 KiB)`, 'module bytes + linear memory of every task at once'],
    ['largest module (`capacity.max_module_bytes`)', 'budget − 65536', 'leaves room for one page of linear memory'],
    ['tasks at once (`capacity.max_tasks`)', String(d.maxTasks), ''],
    ['receive buffer (`capacity.max_packet_bytes`)', `${d.rxBufferBytes} bytes`, 'largest MQTT payload taken'],
    ['chunk size', `${d.chunkSize} bytes`, `a chunk message is then at most ${chunkMessageBytes(d.chunkSize)} bytes`],
    ['window', `${d.window} chunks`, 'asked for and not yet arrived'],
    ['stall re-request', `${d.stallMs} ms`, 'chunks in flight longer are asked again by index'],
    ['download timeout', `${d.downloadTimeoutMs} ms`, 'the task fails'],
    ['module flash cache', `${d.flashCacheBytes} bytes (256 KiB)`, 'modules fetched in chunks, kept by digest (least recently used out): a module run again is not downloaded again'],
    ['heartbeat', `${d.heartbeatMs} ms`, 'plus one right after registering and one after each finished task'],
    ['MQTT keepalive', `${d.keepaliveSec} s`, 'the broker drops a silent client after 1.5 × keepalive'],
    ['CONNECT → CONNACK', `${d.connectTimeoutMs} ms`, 'then the attempt counts as failed'],
    ['reconnect backoff', '500 ms × 2ⁿ, cap 30 s, equal jitter', 'reset after 10 s connected'],
    ['task time limit', `${d.defaultTimeoutMs} ms`, 'when the start has no `timeout_ms` and is not a daemon'],
    ['stdout / stderr kept', `${d.outputLimitBytes} bytes each`, 'cut with `…[truncated]`'],
  ];
  return ['| setting | default | note |', '|---|---|---|', ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

export function chunkSizeTable(): string {
  const lines = ['| chunk size | largest chunk message (payload) | MQTT PUBLISH packet, QoS 1 | smallest receive buffer | chunks for 200 KB |', '|---|---|---|---|---|'];
  const t = topic(S, 'registry.server', DEVICE);
  for (const size of [64, 256, 512, 1024, 4096]) {
    const msg = chunkMessageBytes(size);
    lines.push(`| ${size} | ${msg} | ${publishPacketSize(t, msg)} | ${msg} | ${Math.ceil(BIG_SIZE / size)} |`);
  }
  return lines.join('\n');
}

export function generate(): Map<string, string> {
  const blocks = new Map<string, string>();
  blocks.set('defaults', defaultsTable());
  blocks.set('chunk-sizes', chunkSizeTable());
  for (const e of mcuExamples()) blocks.set(`example ${e.name}`, renderMcuExample(e));
  return blocks;
}

const BLOCK = /<!-- generated: start ([^>]+?) -->([\s\S]*?)<!-- generated: end \1 -->/g;

export function blocksIn(doc: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const m of doc.matchAll(BLOCK)) out.set(m[1]!, m[2]!.trim());
  return out;
}

export function applyTo(doc: string, blocks = generate()): string {
  const present = blocksIn(doc);
  const missing = [...blocks.keys()].filter((n) => !present.has(n));
  if (missing.length) throw new Error(`docs/mcu.md: place these blocks: ${missing.join(', ')}`);
  return doc.replace(BLOCK, (all, name: string) => (blocks.has(name) ? `<!-- generated: start ${name} -->\n${blocks.get(name)}\n<!-- generated: end ${name} -->` : all));
}

function main(argv: string[]): number {
  return runGenerator(argv, DOC_PATH, 'docs/gen-mcu.ts', generate(), applyTo);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main(process.argv.slice(2));
}
