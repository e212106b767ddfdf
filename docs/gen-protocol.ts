// Generates the machine-checked parts of docs/protocol.md from the real code:
// field tables from protocol/messages.ts, the topic table from topics/ and the
// broker's ACL, the size limits, and every example (JSON and compact CBOR,
// byte for byte, through protocol's own encode()).
//
//   node --import tsx docs/gen-protocol.ts           print every generated block
//   node --import tsx docs/gen-protocol.ts --write   rewrite the blocks inside docs/protocol.md
//   node --import tsx docs/gen-protocol.ts --check   exit 1 when docs/protocol.md is out of date
//
// A generated block sits between `<!-- generated: start NAME -->` and
// `<!-- generated: end NAME -->`. test/protocol-doc.test.ts checks the doc
// against the codec independently of this file, and against this file's output.

import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { authorize } from '../broker/acl.ts';
import type { Role } from '../broker/credentials.ts';
import {
  detectEncoding,
  encode,
  FIELDS,
  MAX_INLINE_MODULE,
  MAX_PAYLOAD,
  PROTOCOL_VERSION,
  SENDER_FIELD,
  sha256Digest,
  toDisplay,
  type MessageByKind,
  type MessageKind,
} from '../protocol/index.ts';
import { encodeModel, MODEL_FORMAT } from '../protocol/model-format.ts';
import type { Fields, Type } from '../protocol/schema.ts';
import { base, flUpdateTopic, parseTopic, publishQos, ROOT_FL_FILTER, scope, topic, type Scope, type TopicKind } from '../topics/index.ts';
import { embedStart, propellerChunks, rustStart, shapeStop } from '../control-plane/propeller-shapes.ts';

export const DOC_PATH = fileURLToPath(new URL('./protocol.md', import.meta.url));

// ---------------------------------------------------------------------------
// Example data

/** The scope of every example: the defaults of `propeller serve`. */
export const EXAMPLE_SCOPE: Scope = scope('propeller', 'control');

const ESP32 = '5d0c6f1e-2b7a-4e93-8f41-a96c3d27b810';
const TASK = '9a41e7c2-63d8-4f0b-b5a9-0e7d2c81f4a6';
const TASK_LEGACY = 'c27f0b85-1d4e-4a6c-9b13-7e58f0d2a964';
const LEGACY = 'py-worker-1';

/**
 * A 41-byte core module exporting `add(i32, i32) -> i32`:
 *   (module (func (export "add") (param i32 i32) (result i32)
 *     (i32.add (local.get 0) (local.get 1))))
 */
export const ADD_WASM = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x07, 0x01, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f, // type section: (i32, i32) -> i32
  0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
  0x07, 0x07, 0x01, 0x03, 0x61, 0x64, 0x64, 0x00, 0x00, // export section: "add" = function 0
  0x0a, 0x09, 0x01, 0x07, 0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b, // code: local.get 0, local.get 1, i32.add
]);
/** CRC-32 (IEEE 802.3, reflected, as zlib's); node:zlib has crc32 only from Node 20.15. */
export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (const x of b) {
    c ^= x;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

const FL_MODEL = encodeModel({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2], data: new Float32Array([0.5, -1.25]) }] });
const ADD_DIGEST = sha256Digest(ADD_WASM);

export interface Example<K extends MessageKind = MessageKind> {
  /** Marker name: `<!-- generated: start example NAME -->`. */
  name: string;
  kind: K;
  title: string;
  topic: string;
  msg: MessageByKind[K];
  /** Compact CBOR without the sender id: the (per-proplet) topic carries it. */
  omitSender?: boolean;
}

const ex = <K extends MessageKind>(e: Example<K>): Example => e as unknown as Example;
const S = EXAMPLE_SCOPE;

const esp32Heartbeat: MessageByKind['proplet.alive'] = {
  v: 1,
  proplet_id: ESP32,
  status: 'alive',
  running_tasks: 1,
  memory_used: 48213,
  running: [{ task_id: TASK, attempt: 1 }],
};

export const EXAMPLES: Example[] = [
  ex({
    name: 'create-esp32',
    kind: 'proplet.create',
    title: 'An ESP32 registers: compact CBOR, per-proplet addressing, nothing running yet.',
    topic: topic(S, 'proplet.create'),
    msg: {
      v: 1,
      proplet_id: ESP32,
      name: 'esp32-greenhouse-3',
      device_type: 'esp32',
      proplet_type: 'external',
      capabilities: ['wasm', 'sensor'],
      labels: { site: 'greenhouse' },
      capacity: { memory_bytes: 131072, max_tasks: 1, max_module_bytes: 65536 },
      wasm_runtime: 'wamr-2.2.0',
      encoding: 'cbor',
      addressing: 'direct',
      running: [],
    },
  }),
  ex({
    name: 'create-propeller',
    kind: 'proplet.create',
    title: "A Propeller proplet registers (the Python client's message): JSON, shared addressing. Its id is not a UUID, so the compact form carries it as text.",
    topic: topic(S, 'proplet.create'),
    msg: { proplet_id: LEGACY, device_type: 'python-worker', capabilities: ['wasm', 'python'] },
  }),
  ex({
    name: 'alive-propeller',
    kind: 'proplet.alive',
    title: "Propeller's heartbeat, with a UUID proplet id.",
    topic: topic(S, 'proplet.alive'),
    msg: { proplet_id: ESP32, status: 'alive' },
  }),
  ex({
    name: 'alive-esp32-shared',
    kind: 'proplet.alive',
    title: "The ESP32's heartbeat on the shared alive topic: the id is in the payload (16 bytes in compact CBOR).",
    topic: topic(S, 'proplet.alive'),
    msg: esp32Heartbeat,
  }),
  ex({
    name: 'alive-esp32-direct',
    kind: 'proplet.alive',
    title: 'The same heartbeat on its per-proplet alive topic: the compact form leaves `proplet_id` out.',
    topic: topic(S, 'proplet.alive', ESP32),
    msg: esp32Heartbeat,
    omitSender: true,
  }),
  ex({
    name: 'alive-will',
    kind: 'proplet.alive',
    title: "The last will a proplet sets when it connects; the broker publishes it when the connection dies. A proplet sends it in the encoding it registers with.",
    topic: topic(S, 'proplet.alive'),
    msg: { proplet_id: ESP32, status: 'offline' },
  }),
  ex({
    name: 'start-esp32',
    kind: 'manager.start',
    title: 'The control plane starts task `add` on the ESP32: per-proplet topic, compact CBOR (the proplet registered `encoding: "cbor"`), the module inline.',
    topic: topic(S, 'manager.start', ESP32),
    msg: {
      v: 1,
      id: TASK,
      name: 'add',
      proplet_id: ESP32,
      attempt: 1,
      cli_args: [],
      inputs: [40, 2],
      env: {},
      daemon: false,
      timeout_ms: 60000,
      digest: ADD_DIGEST,
      module_size: ADD_WASM.length,
      file: ADD_WASM,
    },
  }),
  ex({
    name: 'start-propeller',
    kind: 'manager.start',
    title: 'A start for the Propeller proplet: shared topic, JSON, module by reference. Every proplet on the shared topic receives it; only `py-worker-1` acts on it.',
    topic: topic(S, 'manager.start'),
    msg: {
      v: 1,
      id: TASK_LEGACY,
      name: 'add',
      proplet_id: LEGACY,
      attempt: 1,
      cli_args: [],
      inputs: [40, 2],
      env: {},
      daemon: false,
      timeout_ms: 60000,
      image_url: 'registry.example.com/wasm/add:1.0',
    },
  }),
  ex({
    name: 'stop-esp32',
    kind: 'manager.stop',
    title: 'The control plane stops attempt 1 of the task on the ESP32.',
    topic: topic(S, 'manager.stop', ESP32),
    msg: { v: 1, id: TASK, proplet_id: ESP32, attempt: 1 },
  }),
  ex({
    name: 'results-running',
    kind: 'proplet.results',
    title: 'The ESP32 has loaded the module and the task runs (per-proplet topic, id left out).',
    topic: topic(S, 'proplet.results', ESP32),
    msg: { proplet_id: ESP32, task_id: TASK, attempt: 1, status: 'running' },
    omitSender: true,
  }),
  ex({
    name: 'results-completed',
    kind: 'proplet.results',
    title: 'The task completed: `add(40, 2)` returned 42 (shared topic, id in the payload).',
    topic: topic(S, 'proplet.results'),
    msg: { proplet_id: ESP32, task_id: TASK, attempt: 1, status: 'completed', stdout: '', stderr: '', duration_ms: 2.5, results: 42 },
  }),
  ex({
    name: 'results-failed',
    kind: 'proplet.results',
    title: 'A second attempt failed: the module trapped.',
    topic: topic(S, 'proplet.results', ESP32),
    msg: { proplet_id: ESP32, task_id: TASK, attempt: 2, status: 'failed', stdout: '', stderr: '', duration_ms: 0.75, error: 'RuntimeError: unreachable' },
    omitSender: true,
  }),
  ex({
    name: 'results-refused',
    kind: 'proplet.results',
    title: 'The proplet cannot take the task: the control plane never sends it there again.',
    topic: topic(S, 'proplet.results', ESP32),
    msg: { proplet_id: ESP32, task_id: TASK, attempt: 1, status: 'refused', error: 'at capacity: 1/1 tasks running' },
    omitSender: true,
  }),
  ex({
    name: 'results-propeller',
    kind: 'proplet.results',
    title: "A Propeller proplet's result: no status (completed, because there is no `error`) and no attempt (taken as the current one). The compact form orders fields by key, not as the JSON does.",
    topic: topic(S, 'proplet.results'),
    msg: { task_id: TASK_LEGACY, results: 42, proplet_id: LEGACY },
  }),
  ex({
    name: 'metrics-esp32',
    kind: 'proplet.metrics',
    title: "The ESP32's metrics on its per-proplet metrics topic.",
    topic: topic(S, 'proplet.metrics', ESP32),
    msg: { v: 1, proplet_id: ESP32, cpu_percent: 12.5, memory_used: 48213, running_tasks: 1, metrics: { temp_c: 21.5, rssi_dbm: -67 } },
    omitSender: true,
  }),
  ex({
    name: 'registry-request',
    kind: 'registry.proplet',
    title: 'The ESP32 asks for the module by digest, 1 KiB per chunk, up to 4 chunks in flight.',
    topic: topic(S, 'registry.proplet', ESP32),
    msg: { v: 1, proplet_id: ESP32, digest: ADD_DIGEST, chunk_size: 1024, next: 0, window: 4 },
    omitSender: true,
  }),
  ex({
    name: 'registry-chunk',
    kind: 'registry.server',
    title: 'The answer: the whole 41-byte module fits in chunk 0 of 1.',
    topic: topic(S, 'registry.server', ESP32),
    msg: { v: 1, digest: ADD_DIGEST, idx: 0, total: 1, data: ADD_WASM, crc32: crc32(ADD_WASM), size: ADD_WASM.length },
  }),
  ex({
    name: 'fl-update-esp32',
    kind: 'fl.update',
    title: "The ESP32's update for round `round-3-mnist`: 120 samples, its client metrics, and the trained 2-value model `{w: [0.5, -1.25]}` whole, in the compact model format.",
    topic: flUpdateTopic(S, 'round-3-mnist', ESP32),
    msg: { v: 1, proplet_id: ESP32, round_id: 'round-3-mnist', task_id: TASK, num_samples: 120, metrics: { loss: 0.25, accuracy: 0.875 }, model: FL_MODEL },
  }),
  ex({
    name: 'fl-update-part',
    kind: 'fl.update',
    title: 'Part 0 of 4 of a streamed update: values 0 and 1 of tensor 0, as little-endian float32.',
    topic: flUpdateTopic(S, 'round-3-mnist', ESP32),
    msg: { v: 1, proplet_id: ESP32, round_id: 'round-3-mnist', task_id: TASK, num_samples: 120, parts: 4, part: 0, tensor: 0, offset: 0, data: new Uint8Array(new Float32Array([0.5, -1.25]).buffer) },
  }),
];

// ---------------------------------------------------------------------------
// Field meanings. Every schema field needs one; a meaning for a field that no
// longer exists is an error too, so the tables follow protocol/messages.ts.

const V = `Protocol version of the message. Absent means ${PROTOCOL_VERSION}. A receiver refuses a version newer than its own.`;

export const MEANINGS: Record<MessageKind, Record<string, string>> = {
  'proplet.create': {
    v: V,
    proplet_id: 'The proplet id. Equals its MQTT username, so the broker accepts it only from that account.',
    name: 'Human-readable name. Default: the id (or the previously registered name).',
    device_type: 'Device class, such as `esp32`, `node` or `python-worker`. Default: `unknown`.',
    capabilities: 'Capability tags, such as `wasm`, `wasi` or `sensor`. Placement matches them against a task\'s `proplet_selector.match_capabilities`.',
    labels: 'Free key/value labels. Placement matches them against a task\'s `proplet_selector.match_labels` and FL participant selectors.',
    capacity: 'What the proplet offers. An absent field declares no limit.',
    'capacity.cpu_millis': 'CPU offered, in thousandths of a core. Informational.',
    'capacity.memory_bytes': 'Memory offered to tasks. A task that requests more is not placed here.',
    'capacity.max_tasks': 'Tasks it runs at once. The control plane does not place more than this here.',
    'capacity.max_module_bytes': 'Largest module it accepts. A task whose module is larger is not placed here.',
    'capacity.max_packet_bytes': 'Largest MQTT payload it can receive. A start message that would be larger carries only the module digest; the proplet then fetches the module in registry chunks.',
    wasm_runtime: 'Runtime name and version. Informational.',
    encoding: 'Encoding the control plane uses for every message to this proplet on its per-proplet topics. Absent: the encoding the register message itself arrived in.',
    addressing: '`direct`: the proplet subscribes to its per-proplet start, stop and chunk topics, and the control plane publishes there. Absent: `shared` (Propeller\'s proplets).',
    running: 'Tasks the proplet runs now. Sent on every (re)connect so that the control plane can reconcile; `[]` means none. Absent: not reported, and the control plane keeps its own view.',
    'running[].task_id': 'Id of a running task.',
    'running[].attempt': 'The attempt it runs, as received in the start message.',
    proplet_type: '`external` (a device) or `k8s` (a pod). Default: `external`.',
  },
  'proplet.alive': {
    v: V,
    proplet_id: 'The proplet id. May be left out of the payload on the per-proplet alive topic.',
    status: '`alive` for a heartbeat; `offline` only in the last will. Absent: `alive`.',
    running_tasks: 'Tasks running now. A change lets the control plane place waiting tasks.',
    memory_used: 'Memory in use on the device, in bytes.',
    running: 'Tasks the proplet runs now, as in the register message.',
    'running[].task_id': 'Id of a running task.',
    'running[].attempt': 'The attempt it runs.',
  },
  'proplet.results': {
    v: V,
    proplet_id: 'The proplet that ran the task. May be left out of the payload on the per-proplet results topic.',
    task_id: 'The task, as `id` in the start message.',
    attempt: 'The attempt, echoed from the start message. A result for another attempt is ignored. Absent: the current attempt (Propeller\'s proplets).',
    status: 'See [Task results](#task-results). Absent (Propeller\'s proplets): `failed` when `error` is present, else `completed`.',
    results: 'What the task returned: for a core module, the exported function\'s return value. Any JSON value; any CBOR data item in the compact form.',
    stdout: 'Captured standard output.',
    stderr: 'Captured standard error.',
    exit_code: 'WASI exit code, when the module exited through `proc_exit`.',
    error: 'Why the task failed, was refused or stopped. Human-readable.',
    duration_ms: 'Run time in milliseconds (fractions allowed).',
    fl: '`true` on the result of a federated-learning round task.',
  },
  'proplet.metrics': {
    v: V,
    proplet_id: 'The proplet. May be left out of the payload on the per-proplet metrics topic.',
    cpu_percent: 'CPU use, 0-100 per core.',
    memory_used: 'Memory in use, in bytes.',
    running_tasks: 'Tasks running now.',
    metrics: 'Any other readings, name to number.',
  },
  'manager.start': {
    v: V,
    id: 'Task id (a UUID chosen by the control plane).',
    name: 'Task name. For a core module without `_start`, the exported function to call with `inputs`.',
    proplet_id: 'The proplet meant to run it; always set by this control plane. A proplet ignores a start that names another proplet (on the shared topic every proplet receives every start).',
    attempt: 'Placement number, 1 for the first. Echo it in every result and in `running`.',
    image_url: 'Where to fetch the module when `file` is absent. Propeller\'s proplets take an OCI reference; the Node proplet an http(s) URL.',
    file: 'The module itself (base64 in JSON, a byte string in CBOR).',
    digest: '`sha256:` and the hex SHA-256 of the module. A proplet may run a cached module with this digest, and must not run bytes with another digest.',
    cli_args: 'Arguments after the program name (WASI `argv[1..]`).',
    inputs: 'Arguments for the exported function: numbers, strings, booleans, null or byte strings; no arrays or maps.',
    env: 'Environment variables (WASI). `ROUND_ID` marks a federated-learning round task.',
    daemon: '`true`: runs until stopped, without `timeout_ms`.',
    timeout_ms: 'Wall-time limit in milliseconds; the proplet stops the task after it. Absent for daemons.',
    memory_bytes: 'Limit of the task\'s linear memory, in bytes.',
    module_size: 'Size of the module in bytes; sent with `digest`.',
  },
  'manager.stop': {
    v: V,
    id: 'Task id.',
    proplet_id: 'The proplet that runs it; on the shared topic, others ignore the stop.',
    attempt: 'The attempt to stop. Absent: whatever attempt runs.',
  },
  'registry.proplet': {
    v: V,
    proplet_id: 'The requesting proplet. May be left out of the payload on the per-proplet topic.',
    digest: 'The module wanted (`sha256:<hex>`, as in the start message).',
    name: 'The module wanted by name or URL, when no digest is known.',
    chunk_size: 'Bytes per chunk the proplet can take.',
    next: 'Index of the first chunk wanted.',
    window: 'How many chunks from `next` the control plane may send before the next request.',
    missing: 'Indices of chunks to send again (lost or corrupt).',
  },
  'registry.server': {
    v: V,
    digest: 'The module this chunk belongs to.',
    idx: 'Index of this chunk, from 0.',
    total: 'Number of chunks of the module.',
    data: 'The chunk\'s bytes.',
    crc32: 'CRC-32 (IEEE, as zlib\'s `crc32`) of `data`.',
    size: 'Size of the whole module in bytes.',
    error: 'Why the module cannot be served (unknown digest, ...).',
  },
  'fl.update': {
    v: V,
    proplet_id: 'The participant. Must equal the proplet id in the topic and the MQTT username.',
    round_id: 'The round (the task\'s `ROUND_ID`). Must equal the round id in the topic.',
    task_id: 'The round task that trained this update. An update from an earlier attempt of the round is refused as stale.',
    num_samples: 'Training samples behind the update: its weight in FedAvg. Required unless `error` is set; on every part of a streamed update.',
    metrics: 'Client metrics on its own data after training, such as `loss` and `accuracy`. Averaged per round, weighted by samples. On every part of a streamed update.',
    model: 'The whole update: the trained model in the compact CBOR model format of docs/fl.md, the same tensors (names, order, shapes) as the round\'s model.',
    parts: 'A streamed update: the number of part messages. Each carries `part`, `tensor`, `offset` and `data`.',
    part: 'Index of this part, from 0. A repeated part (QoS 1 redelivery) is ignored.',
    tensor: 'Index of the tensor (in model order) this part\'s `data` belongs to.',
    offset: 'Element (not byte) offset of `data` in that tensor.',
    data: 'The values: little-endian float32, a multiple of 4 bytes. Parts must not overlap; together they must cover every tensor.',
    error: 'The participant could not train (module failed, model unreadable). The round counts it as a failed participant.',
  },
};

// ---------------------------------------------------------------------------
// Rendering helpers

function fmtBytes(n: number): string {
  const MiB = 1024 * 1024;
  if (n >= MiB && n % MiB === 0) return `${n / MiB} MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024} KiB`;
  return String(n);
}

function fmtInt(n: number): string {
  if (n === Number.MAX_SAFE_INTEGER) return '2^53-1';
  if (Math.abs(n) >= 2 ** 16 && Number.isInteger(Math.log2(Math.abs(n)))) return `${n < 0 ? '-' : ''}2^${Math.log2(Math.abs(n))}`;
  if (Math.abs(n) >= 2 ** 16 && Number.isInteger(Math.log2(n + 1))) return `2^${Math.log2(n + 1)}-1`;
  return n.toLocaleString('en-US').replaceAll(',', ' ');
}

export function typeName(t: Type): string {
  switch (t.t) {
    case 'str':
      return `string ≤ ${fmtInt(t.max)}`;
    case 'id':
      return 'id';
    case 'int':
      if (t.min === 0 && t.max === Number.MAX_SAFE_INTEGER) return 'uint';
      return `int ${fmtInt(t.min)}..${fmtInt(t.max)}`;
    case 'num':
      return 'number';
    case 'bool':
      return 'bool';
    case 'enum':
      return 'enum ' + t.values.map((v, i) => `${i}=\`${v}\``).join(', ');
    case 'bytes':
      return `bytes ≤ ${fmtBytes(t.max)}`;
    case 'arr':
      return `array ≤ ${fmtInt(t.max)} of ${t.of.t === 'struct' ? 'map' : typeName(t.of)}`;
    case 'rec':
      return `map string → ${typeName(t.of)}, ≤ ${fmtInt(t.max)} entries`;
    case 'struct':
      return 'map';
    case 'any':
      return t.maxDepth === 0 ? 'scalar' : `any, depth ≤ ${t.maxDepth}`;
  }
}

interface Row {
  name: string;
  key: string;
  type: string;
  required: boolean;
}

function rows(fields: Fields, prefix = '', keyPrefix = ''): Row[] {
  const out: Row[] = [];
  for (const [name, f] of Object.entries(fields)) {
    const full = prefix + name;
    const key = keyPrefix + String(f.key);
    out.push({ name: full, key, type: typeName(f.type), required: f.required === true });
    if (f.type.t === 'struct') out.push(...rows(f.type.fields, `${full}.`, `${key}.`));
    if (f.type.t === 'arr' && f.type.of.t === 'struct') out.push(...rows(f.type.of.fields, `${full}[].`, `${key}[].`));
  }
  return out;
}

const cell = (s: string) => s.replaceAll('|', '\\|');

export function fieldTable(kind: MessageKind): string {
  const meanings = MEANINGS[kind];
  const all = rows(FIELDS[kind]);
  const names = new Set(all.map((r) => r.name));
  for (const r of all) if (!meanings[r.name]) throw new Error(`docs/gen-protocol.ts: no meaning for ${kind} field ${r.name}`);
  for (const n of Object.keys(meanings)) if (!names.has(n)) throw new Error(`docs/gen-protocol.ts: meaning for ${kind} field ${n}, which the schema does not have`);
  const lines = ['| JSON name | key | type | required | meaning |', '|---|---|---|---|---|'];
  for (const r of all) lines.push(`| \`${r.name}\` | ${r.key} | ${cell(r.type)} | ${r.required ? 'yes' : ''} | ${cell(meanings[r.name]!)} |`);
  return lines.join('\n');
}

// ---- CBOR annotation: walks the real bytes, item by item (RFC 8949 heads).

function head(b: Uint8Array, i: number): { major: number; info: number; value: number; len: number } {
  const ib = b[i];
  if (ib === undefined) throw new Error('CBOR: truncated');
  const major = ib >> 5;
  const info = ib & 0x1f;
  if (info < 24) return { major, info, value: info, len: 1 };
  if (info === 31) return { major, info, value: -1, len: 1 };
  const n = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : info === 27 ? 8 : -1;
  if (n < 0) throw new Error(`CBOR: reserved additional information ${info}`);
  let value = 0;
  for (let k = 1; k <= n; k++) value = value * 256 + (b[i + k] ?? 0);
  return { major, info, value, len: 1 + n };
}

/** Index just past the data item that starts at `i`. */
export function itemEnd(b: Uint8Array, i: number): number {
  const h = head(b, i);
  const indefinite = h.info === 31;
  let j = i + h.len;
  switch (h.major) {
    case 0:
    case 1:
    case 7:
      return j;
    case 2:
    case 3:
      if (!indefinite) return j + h.value;
      while (b[j] !== 0xff) j = itemEnd(b, j);
      return j + 1;
    case 4:
    case 5: {
      const per = h.major === 5 ? 2 : 1;
      if (!indefinite) {
        for (let k = 0; k < h.value * per; k++) j = itemEnd(b, j);
        return j;
      }
      while (b[j] !== 0xff) j = itemEnd(b, j);
      return j + 1;
    }
    case 6:
      return itemEnd(b, j);
    default:
      throw new Error('CBOR: bad major type');
  }
}

const hex = (b: Uint8Array, from: number, to: number) => Buffer.from(b.subarray(from, to)).toString('hex');

function clip(s: string, n = 44): string {
  return s.length <= n ? s : s.slice(0, n - 1) + '…';
}

function summary(type: Type, jsonValue: unknown, b: Uint8Array, at: number): string {
  const h = head(b, at);
  switch (type.t) {
    case 'id':
      return h.major === 2 ? `16-byte UUID ${String(jsonValue)}` : JSON.stringify(jsonValue);
    case 'enum':
      return `${JSON.stringify(jsonValue)} as ${h.value}`;
    case 'str':
      return clip(JSON.stringify(jsonValue));
    case 'bytes':
      return `${h.value} bytes`;
    case 'num':
      return h.major === 7 ? `${String(jsonValue)} (float${h.len === 9 ? 64 : h.len === 5 ? 32 : 16})` : String(jsonValue);
    case 'arr':
      return h.value === 0 ? 'empty array' : `array of ${h.value}${type.of.t === 'struct' ? ' maps' : `: ${clip(JSON.stringify(jsonValue), 30)}`}`;
    case 'rec':
      return h.value === 0 ? 'empty map' : `map of ${h.value}: ${clip(JSON.stringify(jsonValue), 30)}`;
    case 'struct':
      return `map of ${h.value}`;
    default:
      return clip(JSON.stringify(jsonValue));
  }
}

const FIRST = 38; // hex characters on an entry's first line, after the indent: a key, a head and a UUID
const NEXT = 32; // hex characters (16 bytes) on each continuation line
const COMMENT_COL = 42;

/**
 * Hex of the compact form: the map header, then one top-level entry per line
 * (key, value head, value bytes; long values continue on the next lines), each
 * with a `#` comment naming the field. Reading only the hex digits before each
 * `#` gives the payload byte for byte.
 */
export function annotateCbor(kind: MessageKind, bytes: Uint8Array, json: Record<string, unknown>): string {
  const fields = FIELDS[kind];
  const byKey = new Map(Object.entries(fields).map(([n, f]) => [f.key, n]));
  const h = head(bytes, 0);
  if (h.major !== 5 || h.info === 31) throw new Error('annotateCbor: expects a definite-length map');
  const out: string[] = [`${hex(bytes, 0, h.len).padEnd(COMMENT_COL)}# map, ${h.value} entries`];
  let i = h.len;
  for (let n = 0; n < h.value; n++) {
    const keyEnd = itemEnd(bytes, i);
    const key = head(bytes, i).value;
    const valueEnd = itemEnd(bytes, keyEnd);
    const name = byKey.get(key);
    if (name === undefined) throw new Error(`annotateCbor: unknown key ${key}`);
    const vh = head(bytes, keyEnd);
    // strings and byte strings: show the head apart from the content
    const split = (vh.major === 2 || vh.major === 3) && valueEnd > keyEnd + vh.len ? keyEnd + vh.len : keyEnd;
    let first = hex(bytes, i, keyEnd) + ' ' + (split > keyEnd ? hex(bytes, keyEnd, split) + ' ' : '');
    let tail = hex(bytes, split, valueEnd);
    const room = Math.max(2, (FIRST - first.length) & ~1);
    first += tail.slice(0, room);
    tail = tail.slice(room);
    const comment = `${name} (${key}): ${summary(fields[name]!.type, json[name], bytes, keyEnd)}`;
    out.push(`${('  ' + first).padEnd(COMMENT_COL)}# ${comment}`);
    for (let k = 0; k < tail.length; k += NEXT) out.push('    ' + tail.slice(k, k + NEXT));
    i = valueEnd;
  }
  if (i !== bytes.length) throw new Error('annotateCbor: trailing bytes');
  return out.join('\n');
}

/** JSON with one top-level field per line and nested values inline: readable, and parses to the same value. */
export function prettyJson(v: Record<string, unknown>): string {
  const inline = (x: unknown): string => {
    if (Array.isArray(x)) return `[${x.map(inline).join(', ')}]`;
    if (x !== null && typeof x === 'object') {
      return `{${Object.entries(x).map(([k, y]) => `${JSON.stringify(k)}: ${inline(y)}`).join(', ')}}`;
    }
    return JSON.stringify(x);
  };
  const entries = Object.entries(v);
  if (entries.length === 0) return '{}';
  return `{\n${entries.map(([k, x]) => `  ${JSON.stringify(k)}: ${inline(x)}`).join(',\n')}\n}`;
}

export function renderExample(e: Example): string {
  const json = encode(e.kind, e.msg as never, 'json');
  const cbor = encode(e.kind, e.msg as never, 'cbor', { omitSender: e.omitSender === true });
  const value = JSON.parse(json.toString('utf8')) as Record<string, unknown>;
  if (JSON.stringify(value) !== json.toString('utf8')) throw new Error(`${e.name}: JSON does not re-serialize byte for byte`);
  const sender = SENDER_FIELD[e.kind];
  const omitted = e.omitSender === true && sender !== undefined;
  return [
    `**${e.title}**`,
    '',
    `Topic: \`${e.topic}\``,
    '',
    `JSON, ${json.length} bytes (sent without the whitespace shown):`,
    '',
    '```json',
    prettyJson(value),
    '```',
    '',
    `Compact CBOR, ${cbor.length} bytes${omitted ? ` (\`${sender}\` left out: the topic carries it)` : ''}:`,
    '',
    '```hex',
    annotateCbor(e.kind, cbor, value),
    '```',
  ].join('\n');
}

// ---- Topic table, from topics/ and the broker's ACL decisions.

type OurTopicKind = TopicKind;
const TOPIC_KINDS: Record<OurTopicKind, { proplet: boolean; addressable: boolean }> = {
  'proplet.create': { proplet: true, addressable: true },
  'proplet.alive': { proplet: true, addressable: true },
  'proplet.results': { proplet: true, addressable: true },
  'proplet.metrics': { proplet: true, addressable: true },
  'proplet.invoke_results': { proplet: true, addressable: true },
  'proplet.task_metrics': { proplet: true, addressable: true },
  'manager.start': { proplet: false, addressable: true },
  'manager.invoke': { proplet: false, addressable: true },
  'manager.stop': { proplet: false, addressable: true },
  'registry.proplet': { proplet: true, addressable: true },
  'registry.server': { proplet: false, addressable: true },
  'fl.update': { proplet: true, addressable: false },
};

/** The placeholder scope of the topic table. */
export const PATTERN_SCOPE: Scope = scope('<domain>', '<channel>');
const P = '<proplet_id>';
const Q = 'another-proplet';

function mayPublish(kind: OurTopicKind, t: string, perProplet: boolean): string[] {
  const s = PATTERN_SCOPE;
  const who: string[] = [];
  if (authorize(s, 'manager', 'propeller-manager', 'publish', t).ok) who.push('manager');
  if (authorize(s, 'debug', 'debug', 'publish', t).ok) who.push('debug');
  const sender = kind === 'fl.update' ? undefined : SENDER_FIELD[kind as keyof typeof SENDER_FIELD] ?? (kind.startsWith('proplet.') ? 'proplet_id' : undefined);
  const payload = (id: string) => (sender ? JSON.stringify({ [sender]: id }) : '{}');
  const asItself = (id: string) => authorize(s, 'proplet', id, 'publish', t, payload(id)).ok;
  const forOther = authorize(s, 'proplet', P, 'publish', t, payload(Q)).ok;
  // the embedded broker delivers a proplet's publish on the shared topic on its per-proplet form (topics' stampSender)
  if (asItself(P) && asItself(Q)) who.push(forOther || !sender ? 'any proplet' : 'any proplet, as itself (delivered on the `/<proplet_id>` form)');
  else if (asItself(P)) who.push(perProplet ? `proplet \`${P}\`` : 'its proplet');
  return who;
}

function maySubscribe(t: string): string[] {
  const s = PATTERN_SCOPE;
  const who: string[] = [];
  const roles: [Role, string][] = [['manager', 'propeller-manager'], ['debug', 'debug']];
  for (const [role, id] of roles) if (authorize(s, role, id, 'subscribe', t).ok) who.push(role);
  const own = authorize(s, 'proplet', P, 'subscribe', t).ok;
  const other = authorize(s, 'proplet', Q, 'subscribe', t).ok;
  if (own && other) who.push('any proplet');
  else if (own) who.push(`proplet \`${P}\``);
  return who;
}

export function topicRows(): { kind: OurTopicKind; topic: string }[] {
  const out: { kind: OurTopicKind; topic: string }[] = [];
  for (const [kind, k] of Object.entries(TOPIC_KINDS) as [OurTopicKind, (typeof TOPIC_KINDS)[OurTopicKind]][]) {
    if (kind === 'fl.update') {
      out.push({ kind, topic: flUpdateTopic(PATTERN_SCOPE, '<round_id>', P) });
      continue;
    }
    out.push({ kind, topic: topic(PATTERN_SCOPE, kind) });
    if (k.addressable) out.push({ kind, topic: topic(PATTERN_SCOPE, kind, P) });
  }
  return out;
}

export function topicTable(): string {
  const prefix = base(PATTERN_SCOPE) + '/';
  const lines = [
    '| kind | topic, after `m/<domain>/c/<channel>/messages/` | addressing | direction | QoS | retain | may publish | may subscribe |',
    '|---|---|---|---|---|---|---|---|',
  ];
  for (const r of topicRows()) {
    const k = TOPIC_KINDS[r.kind];
    const perProplet = r.topic.endsWith('/' + P);
    const addressing = r.kind === 'fl.update' ? 'per-proplet' : perProplet ? 'per-proplet' : 'shared';
    const direction = k.proplet ? 'proplet → control plane' : 'control plane → proplet';
    const rel = r.topic.slice(prefix.length);
    lines.push(`| \`${r.kind}\` | \`${rel}\` | ${addressing} | ${direction} | ${publishQos(r.kind)} | never | ${mayPublish(r.kind, r.topic, perProplet).join(', ') || '—'} | ${maySubscribe(r.topic).join(', ') || '—'} |`);
  }
  return lines.join('\n');
}

export function limitsTable(): string {
  const lines = ['| kind | largest payload | notes |', '|---|---|---|'];
  for (const kind of Object.keys(MAX_PAYLOAD) as MessageKind[]) {
    const note = kind === 'manager.start' ? `an inline module (\`file\`) is at most ${fmtBytes(MAX_INLINE_MODULE)}; base64 in JSON makes it 4/3 larger` : '';
    lines.push(`| \`${kind}\` | ${fmtBytes(MAX_PAYLOAD[kind])} (${MAX_PAYLOAD[kind]} bytes) | ${note} |`);
  }
  return lines.join('\n');
}

// ---- Heartbeat sizes: payload and the whole MQTT 3.1.1 PUBLISH packet.

/** Bytes of a PUBLISH packet: fixed header, topic, packet id (QoS 1), payload. */
export function publishPacketSize(topicStr: string, payloadBytes: number, qos: 0 | 1 = 1): number {
  const remaining = 2 + Buffer.byteLength(topicStr) + (qos > 0 ? 2 : 0) + payloadBytes;
  const lenBytes = remaining < 128 ? 1 : remaining < 16384 ? 2 : remaining < 2097152 ? 3 : 4;
  return 1 + lenBytes + remaining;
}

export function heartbeatTable(): string {
  const shared = topic(S, 'proplet.alive');
  const direct = topic(S, 'proplet.alive', ESP32);
  const lines = [
    `| heartbeat | encoding | topic | payload bytes | PUBLISH packet bytes (QoS ${publishQos('proplet.alive')}) |`,
    '|---|---|---|---|---|',
  ];
  const variants: [string, MessageByKind['proplet.alive']][] = [
    ["Propeller's: `proplet_id`, `status`", { proplet_id: ESP32, status: 'alive' }],
    ['full: `v`, `proplet_id`, `status`, `running_tasks`, `memory_used`, `running` (1 task)', esp32Heartbeat],
  ];
  for (const [label, msg] of variants) {
    const json = encode('proplet.alive', msg, 'json');
    const cbor = encode('proplet.alive', msg, 'cbor');
    const omitted = encode('proplet.alive', msg, 'cbor', { omitSender: true });
    lines.push(`| ${label} | JSON | shared | ${json.length} | ${publishPacketSize(shared, json.length, publishQos('proplet.alive'))} |`);
    lines.push(`| ${label} | compact CBOR, binary id | shared | ${cbor.length} | ${publishPacketSize(shared, cbor.length, publishQos('proplet.alive'))} |`);
    lines.push(`| ${label} | compact CBOR, id in the topic | per-proplet | ${omitted.length} | ${publishPacketSize(direct, omitted.length, publishQos('proplet.alive'))} |`);
  }
  return lines.join('\n');
}

// ---- What `propeller watch` prints for one example: the line cli/watch.ts writes, with a fixed time.

export function watchLine(name = 'alive-esp32-direct'): string {
  const e = EXAMPLES.find((x) => x.name === name);
  if (!e) throw new Error(`no example ${name}`);
  const payload = encode(e.kind, e.msg as never, 'cbor', { omitSender: e.omitSender === true });
  const parsed = parseTopic(e.topic);
  const line = {
    t: '2025-06-01T12:00:00.000Z',
    topic: e.topic,
    kind: parsed?.kind ?? null,
    encoding: detectEncoding(payload) ?? 'unknown',
    bytes: payload.length,
    payload: toDisplay(payload, e.kind, parsed?.propletId !== undefined ? { propletId: parsed.propletId } : {}),
  };
  return ['```json', JSON.stringify(line), '```'].join('\n');
}

// ---------------------------------------------------------------------------
// The blocks, and the doc they go into.

/** Every generated block by marker name, in document order. */
// ---- Propeller's own proplets: their messages beside ours, from topics/ and the real shaping code.

/** ADD_WASM with its export renamed `main`: what embed-proplet can call. */
const MAIN_WASM = (() => {
  const b = Uint8Array.from(ADD_WASM);
  b.set([0x07, 0x08, 0x01, 0x04, 0x6d, 0x61, 0x69, 0x6e, 0x00, 0x00], 21);
  return Uint8Array.from([...b.subarray(0, 31), ...ADD_WASM.subarray(30)]);
})();

export function propellerTable(): string {
  const s = PATTERN_SCOPE;
  const bareOf = (kind: Exclude<TopicKind, 'fl.update'>) => topic(s, kind, undefined, 'bare').slice(base(s, 'bare').length + 1);
  const code = (v: unknown) => '`' + (typeof v === 'string' ? v : JSON.stringify(v)) + '`';
  const start = { v: 1, id: TASK, name: 'add', proplet_id: '<proplet_id>', attempt: 1, cli_args: [], inputs: [2, 3], env: {}, daemon: false, file: ADD_WASM };
  const rust = rustStart(start);
  const embed = embedStart({ ...start, name: 'main', inputs: ['2', 3] }, MAIN_WASM);
  if (!rust.ok || !embed.ok) throw new Error('the example starts must shape');
  const chunk = (propellerChunks('embed', 'sha256:…', MAIN_WASM) as object[])[0];
  const rows: [string, string, string, string][] = [
    ['discovery', bareOf('proplet.create'), code({ proplet_id: '<id>', namespace: 'default', metadata: { os: 'linux', wasm_runtime: 'wasmtime-internal', '…': '' } }), '`proplet.create`; the kind of proplet from `metadata`: `os` `zephyr` or `wasm_runtime` `wamr` is embed-proplet, any other is the Rust proplet'],
    ['liveliness', bareOf('proplet.alive'), code({ proplet_id: '<id>', status: 'alive', namespace: 'default' }), "`proplet.alive`; embed-proplet's will (`status` `offline`) marks it offline at once; the Rust proplet has no will: offline after `OFFLINE_THRESHOLD` without one"],
    ['proplet metrics', bareOf('proplet.metrics'), code({ proplet_id: '<id>', timestamp: { secs_since_epoch: 1, nanos_since_epoch: 0 }, cpu_metrics: { percent: 12.5 }, memory_metrics: { rss_bytes: 1 } }), '`proplet.metrics`: `cpu_metrics.percent` is `cpu_percent`, `memory_metrics.rss_bytes` (else `heap_alloc_bytes`) is `memory_used`; a numeric `timestamp` (embed-proplet: ms since boot) is read too; on `/metrics` per proplet as `propeller_proplet_cpu_percent` and `propeller_proplet_memory_used_bytes`'],
    ['result', bareOf('proplet.results'), code({ task_id: '<task>', proplet_id: '<id>', results: '5', error: null }), "`proplet.results` without `status`: an `error` string fails the task, else it completes with the string result; a daemon's immediate `\"\"` means Running. embed-proplet's has no `proplet_id`: its device channel names it, or on the shared channel the broker publishes it on `…/results/<id>` (stamped)"],
    ['invoke result', bareOf('proplet.invoke_results'), code({ task_id: '<task>', invocation_id: '<inv>', proplet_id: '<id>', results: '5', error: null }), 'checked and counted; not applied (the control plane sends no invoke)'],
    ['task metrics', bareOf('proplet.task_metrics'), code({ task_id: '<task>', proplet_id: '<id>', metrics: { cpu_percent: 7.25, memory_bytes: 1048576, '…': '' }, aggregated: {}, timestamp: {} }), 'for a task running on that proplet, \`metrics.cpu_percent\` and \`metrics.memory_bytes\` on \`/metrics\` as \`propeller_task_cpu_percent\` and \`propeller_task_memory_bytes\` (labels \`task_id\`, \`proplet_id\`) while it runs; for any other task refused and counted (\`unknown_task\`)'],
    ['start, Rust proplet', bareOf('manager.start'), code(JSON.parse(rust.bytes.toString())), `\`manager.start\` at QoS ${rust.qos}, inputs as strings, only the fields it reads plus \`proplet_id\`; over its packet limit, \`image_url\` names the module by digest and no \`file\``],
    ['start, embed-proplet', bareOf('manager.start'), code(JSON.parse(embed.bytes.toString())), `\`manager.start\` at QoS ${embed.qos}, inputs as numbers, \`name\` \`main\`, at most 1023 bytes; over that with its module inline, by name (\`image_url\` the digest, no \`file\`) when the start and the module's one \`registry/server\` message each fit; a task it cannot run is refused at placement`],
    ['stop', bareOf('manager.stop'), `${code(shapeStop('propeller-rust', TASK, 'add')!.msg)} / ${code(shapeStop('embed', TASK, 'main')!.msg)}`, '`manager.stop`: `{id}` to the Rust proplet, `id`, `name` and `state` to embed-proplet (it drops a stop without them)'],
    ['module by name', bareOf('registry.proplet'), code({ app_name: 'sha256:…' }), '`registry.proplet` with a name: the module named by a digest, by a task\'s `image_url`, or fetched from that URL'],
    ['FL update, Rust proplet', bareOf('proplet.results'), code({ task_id: '<task>', results: { task_id: '<task>', round_id: '<round>', proplet_id: '<id>', num_samples: 1, update_b64: '<output, base64>', format: 'f32-delta', metrics: {} }, error: null }), `the result of a \`ROUND_ID\` task, and an \`fl.update\` for that round: aggregated when the output is a ${MODEL_FORMAT} model (its JSON text, or its CBOR bytes with \`format\` \`${MODEL_FORMAT}\`); any other output (\`f32-delta\`, which Propeller does not define) refuses the participant with the reason`],
    ['FL update, embed-proplet', ROOT_FL_FILTER.replace('+', '<round>').replace('+', '<id>'), code({ round_id: '<round>', proplet_id: '<id>', base_model_uri: '<MODEL_URI>', num_samples: 3, metrics: {}, update: { format: MODEL_FORMAT, tensors: '[…]' } }), `at the broker's root (no \`m/\` prefix): \`fl.update\` for that proplet's task in the round; the broker takes it only from the proplet the last level names; \`update\` (or the message itself) must be a ${MODEL_FORMAT} model in JSON; anything else (a bare number, an empty \`update\`) refuses the participant with the reason and a \`propeller_messages_rejected_total\` count, and the device keeps its connection; \`error\` ends its part with that error`],
    ['module chunk', bareOf('registry.server'), code(chunk), 'in answer: 512,000-byte chunks for the Rust proplet (smaller under its packet limit), one whole message of at most 1023 bytes for embed-proplet'],
  ];
  return [
    '| message | topic, after `m/<domain>/c/<channel>/` | Propeller\'s payload (the control plane\'s, for starts, stops and chunks) | ours, and what the control plane does |',
    '|---|---|---|---|',
    ...rows.map(([m, t, p, o]) => `| ${m} | \`${t}\` | ${p} | ${o} |`),
  ].join('\n');
}

export function generate(): Map<string, string> {
  const blocks = new Map<string, string>();
  blocks.set('propeller', propellerTable());
  blocks.set('topics', topicTable());
  blocks.set('limits', limitsTable());
  for (const kind of Object.keys(FIELDS) as MessageKind[]) blocks.set(`fields ${kind}`, fieldTable(kind));
  for (const e of EXAMPLES) blocks.set(`example ${e.name}`, renderExample(e));
  blocks.set('heartbeat-sizes', heartbeatTable());
  blocks.set('watch-line', watchLine());
  return blocks;
}

const MARKER = /<!-- generated: (start|end) ([^>]+?) -->/g;

/** The generated blocks found in a doc, by name (content between the markers, trimmed). */
export function blocksIn(doc: string): Map<string, string> {
  const found = new Map<string, string>();
  let open: { name: string; from: number } | undefined;
  for (const m of doc.matchAll(MARKER)) {
    const [, what, name] = m as unknown as [string, string, string];
    if (what === 'start') {
      if (open) throw new Error(`generated block "${open.name}" is not closed before "${name}" starts`);
      open = { name, from: m.index! + m[0].length };
    } else {
      if (!open || open.name !== name) throw new Error(`generated block end "${name}" without its start`);
      if (found.has(name)) throw new Error(`generated block "${name}" appears twice`);
      found.set(name, doc.slice(open.from, m.index).trim());
      open = undefined;
    }
  }
  if (open) throw new Error(`generated block "${open.name}" is not closed`);
  return found;
}

/** The doc with every generated block replaced by fresh output. Every block must already be placed. */
export function applyTo(doc: string, blocks = generate()): string {
  const present = blocksIn(doc);
  const missing = [...blocks.keys()].filter((n) => !present.has(n));
  const unknown = [...present.keys()].filter((n) => !blocks.has(n));
  if (missing.length || unknown.length) {
    throw new Error(`docs/protocol.md: ${missing.length ? `place these blocks: ${missing.join(', ')}` : ''}${missing.length && unknown.length ? '; ' : ''}${unknown.length ? `unknown blocks: ${unknown.join(', ')}` : ''}`);
  }
  return doc.replace(/<!-- generated: start ([^>]+?) -->[\s\S]*?<!-- generated: end \1 -->/g, (_all, name: string) => {
    return `<!-- generated: start ${name} -->\n${blocks.get(name)}\n<!-- generated: end ${name} -->`;
  });
}

/**
 * The command line of a doc generator: `--write` rewrites the generated blocks
 * of `docPath`, `--check` exits 1 when they are out of date, no flag prints them.
 */
export function runGenerator(argv: string[], docPath: string, script: string, blocks: Map<string, string>, applyBlocks: (doc: string, blocks: Map<string, string>) => string): number {
  const name = `docs/${docPath.split('/').pop()}`;
  if (argv.includes('--write') || argv.includes('--check')) {
    const doc = readFileSync(docPath, 'utf8');
    const next = applyBlocks(doc, blocks);
    if (argv.includes('--check')) {
      if (next !== doc) process.stderr.write(`${name} is out of date: run node --import tsx ${script} --write\n`);
      return next === doc ? 0 : 1;
    }
    if (next !== doc) writeFileSync(docPath, next);
    process.stderr.write(next !== doc ? `${name} updated\n` : `${name} already up to date\n`);
    return 0;
  }
  for (const [block, text] of blocks) process.stdout.write(`<!-- generated: start ${block} -->\n${text}\n<!-- generated: end ${block} -->\n\n`);
  return 0;
}

function main(argv: string[]): number {
  return runGenerator(argv, DOC_PATH, 'docs/gen-protocol.ts', generate(), applyTo);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = main(process.argv.slice(2));
}
