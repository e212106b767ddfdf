// Every message on the wire, as a schema (validation + both encodings) and a
// TypeScript type. Field names are Propeller's; the integer after each name is
// its key in the compact CBOR form (docs/protocol.md lists them). Keys are
// part of the protocol: never renumber, only add.

import { any, arr, bool, bytes, id, int, num, oneOf, rec, str, struct, type Fields } from './schema.ts';

export const PROTOCOL_VERSION = 1;

export type Encoding = 'json' | 'cbor';

const MiB = 1024 * 1024;
/** Inline modules travel in start messages; larger ones go through the registry. */
export const MAX_INLINE_MODULE = 16 * MiB;

const taskRef = struct({
  task_id: { key: 1, type: id, required: true },
  attempt: { key: 2, type: int(0, 1_000_000) },
});

const capacity = struct({
  cpu_millis: { key: 1, type: int() },
  memory_bytes: { key: 2, type: int() },
  max_tasks: { key: 3, type: int(0, 1_000_000) },
  max_module_bytes: { key: 4, type: int() },
  /** Largest MQTT payload the proplet can receive: modules that do not fit inline come in registry chunks. */
  max_packet_bytes: { key: 5, type: int(64) },
});

export const RegisterFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  proplet_id: { key: 1, type: id, required: true },
  name: { key: 2, type: str(128) },
  device_type: { key: 3, type: str(64) },
  capabilities: { key: 4, type: arr(str(64), 64) },
  labels: { key: 5, type: rec(str(256), 64) },
  capacity: { key: 6, type: capacity },
  wasm_runtime: { key: 7, type: str(64) },
  encoding: { key: 8, type: oneOf('json', 'cbor') },
  addressing: { key: 9, type: oneOf('shared', 'direct') },
  running: { key: 10, type: arr(taskRef, 1024) },
  proplet_type: { key: 11, type: oneOf('external', 'k8s') },
};

export const AliveFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  proplet_id: { key: 1, type: id, required: true },
  // 'offline' is what a proplet's last will says when its connection dies.
  status: { key: 2, type: oneOf('alive', 'offline') },
  running_tasks: { key: 3, type: int(0, 1_000_000) },
  memory_used: { key: 4, type: int() },
  running: { key: 5, type: arr(taskRef, 1024) },
};

export const StartFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  id: { key: 1, type: id, required: true },
  name: { key: 2, type: str(256) },
  proplet_id: { key: 3, type: id },
  attempt: { key: 4, type: int(0, 1_000_000) },
  image_url: { key: 5, type: str(2048) },
  file: { key: 6, type: bytes(MAX_INLINE_MODULE) },
  digest: { key: 7, type: str(80) },
  cli_args: { key: 8, type: arr(str(4096), 256) },
  inputs: { key: 9, type: arr(any(0), 64) },
  env: { key: 10, type: rec(str(32 * 1024), 256) },
  daemon: { key: 11, type: bool },
  timeout_ms: { key: 12, type: int() },
  memory_bytes: { key: 13, type: int() },
  module_size: { key: 14, type: int() },
};

export const StopFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  id: { key: 1, type: id, required: true },
  proplet_id: { key: 2, type: id },
  attempt: { key: 3, type: int(0, 1_000_000) },
};

export const ResultFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  proplet_id: { key: 1, type: id, required: true },
  task_id: { key: 2, type: id, required: true },
  attempt: { key: 3, type: int(0, 1_000_000) },
  status: { key: 4, type: oneOf('running', 'completed', 'failed', 'refused', 'stopped') },
  results: { key: 5, type: any(16) },
  stdout: { key: 6, type: str(1024 * 1024) },
  stderr: { key: 7, type: str(1024 * 1024) },
  exit_code: { key: 8, type: int(-(2 ** 31), 2 ** 32 - 1) },
  error: { key: 9, type: str(4096) },
  duration_ms: { key: 10, type: num },
  fl: { key: 11, type: bool },
};

export const MetricsFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  proplet_id: { key: 1, type: id, required: true },
  cpu_percent: { key: 2, type: num },
  memory_used: { key: 3, type: int() },
  running_tasks: { key: 4, type: int(0, 1_000_000) },
  metrics: { key: 5, type: rec(num, 64) },
};

export const ChunkRequestFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  proplet_id: { key: 1, type: id, required: true },
  digest: { key: 2, type: str(80) },
  name: { key: 3, type: str(2048) },
  chunk_size: { key: 4, type: int(64, 1024 * 1024) },
  next: { key: 5, type: int(0, 10_000_000) },
  window: { key: 6, type: int(1, 64) },
  missing: { key: 7, type: arr(int(0, 10_000_000), 256) },
};

export const ChunkFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  digest: { key: 1, type: str(80), required: true },
  idx: { key: 2, type: int(0, 10_000_000), required: true },
  total: { key: 3, type: int(1, 10_000_000), required: true },
  data: { key: 4, type: bytes(1024 * 1024), required: true },
  crc32: { key: 5, type: int(0, 2 ** 32 - 1), required: true },
  size: { key: 6, type: int() },
  error: { key: 7, type: str(1024) },
};

/**
 * A participant's update for an FL round, on fl/rounds/<round_id>/updates/<proplet_id>.
 * Whole: `model` holds the trained model in the compact CBOR model format
 * (model-format.ts). Streamed, for models larger than a packet: `parts`
 * messages, each with its `part` index and one slice of one tensor (`tensor`,
 * `offset` in elements, `data` as little-endian float32); `num_samples` on
 * every part, so that any part can open the stream. `error` instead of a
 * model: the participant could not train.
 */
export const FlUpdateFields: Fields = {
  v: { key: 0, type: int(0, 255) },
  proplet_id: { key: 1, type: id, required: true },
  round_id: { key: 2, type: str(128), required: true },
  task_id: { key: 3, type: id, required: true },
  num_samples: { key: 4, type: int(0, Number.MAX_SAFE_INTEGER) },
  metrics: { key: 5, type: rec(num, 16) },
  model: { key: 6, type: bytes(MAX_INLINE_MODULE) },
  parts: { key: 7, type: int(1, 1_000_000) },
  part: { key: 8, type: int(0, 1_000_000) },
  tensor: { key: 9, type: int(0, 65_535) },
  offset: { key: 10, type: int(0, 2 ** 32) },
  data: { key: 11, type: bytes(MiB) },
  error: { key: 12, type: str(4096) },
};

export interface TaskRef {
  task_id: string;
  attempt?: number;
}
export interface Capacity {
  cpu_millis?: number;
  memory_bytes?: number;
  max_tasks?: number;
  max_module_bytes?: number;
  max_packet_bytes?: number;
}
export interface Register {
  v?: number;
  proplet_id: string;
  name?: string;
  device_type?: string;
  capabilities?: string[];
  labels?: Record<string, string>;
  capacity?: Capacity;
  wasm_runtime?: string;
  encoding?: Encoding;
  /** 'direct': takes starts/stops on its per-proplet topics. Absent means 'shared', as Propeller's proplets. */
  addressing?: 'shared' | 'direct';
  running?: TaskRef[];
  proplet_type?: 'external' | 'k8s';
}
export interface Alive {
  v?: number;
  proplet_id: string;
  status?: 'alive' | 'offline';
  running_tasks?: number;
  memory_used?: number;
  running?: TaskRef[];
}
export interface Start {
  v?: number;
  id: string;
  name?: string;
  proplet_id?: string;
  attempt?: number;
  image_url?: string;
  file?: Uint8Array;
  digest?: string;
  cli_args?: string[];
  inputs?: unknown[];
  env?: Record<string, string>;
  daemon?: boolean;
  timeout_ms?: number;
  memory_bytes?: number;
  module_size?: number;
}
export interface Stop {
  v?: number;
  id: string;
  proplet_id?: string;
  attempt?: number;
}
export type ResultStatus = 'running' | 'completed' | 'failed' | 'refused' | 'stopped';
export interface Result {
  v?: number;
  proplet_id: string;
  task_id: string;
  attempt?: number;
  /** Absent in Propeller's results: completed without error, failed with one. */
  status?: ResultStatus;
  results?: unknown;
  stdout?: string;
  stderr?: string;
  exit_code?: number;
  error?: string;
  duration_ms?: number;
  fl?: boolean;
}
export interface Metrics {
  v?: number;
  proplet_id: string;
  cpu_percent?: number;
  memory_used?: number;
  running_tasks?: number;
  metrics?: Record<string, number>;
}
export interface ChunkRequest {
  v?: number;
  proplet_id: string;
  digest?: string;
  name?: string;
  chunk_size?: number;
  next?: number;
  window?: number;
  missing?: number[];
}
export interface Chunk {
  v?: number;
  digest: string;
  idx: number;
  total: number;
  data: Uint8Array;
  crc32: number;
  size?: number;
  error?: string;
}

export interface FlUpdate {
  v?: number;
  proplet_id: string;
  round_id: string;
  task_id: string;
  num_samples?: number;
  /** Client metrics on its own data: loss, accuracy, ... */
  metrics?: Record<string, number>;
  model?: Uint8Array;
  parts?: number;
  part?: number;
  tensor?: number;
  offset?: number;
  data?: Uint8Array;
  error?: string;
}

export interface MessageByKind {
  'proplet.create': Register;
  'proplet.alive': Alive;
  'proplet.results': Result;
  'proplet.metrics': Metrics;
  'manager.start': Start;
  'manager.stop': Stop;
  'registry.proplet': ChunkRequest;
  'registry.server': Chunk;
  'fl.update': FlUpdate;
}
export type MessageKind = keyof MessageByKind;

export const FIELDS: Record<MessageKind, Fields> = {
  'proplet.create': RegisterFields,
  'proplet.alive': AliveFields,
  'proplet.results': ResultFields,
  'proplet.metrics': MetricsFields,
  'manager.start': StartFields,
  'manager.stop': StopFields,
  'registry.proplet': ChunkRequestFields,
  'registry.server': ChunkFields,
  'fl.update': FlUpdateFields,
};

/** The field that names the sender, on messages a proplet sends. */
export const SENDER_FIELD: Partial<Record<MessageKind, string>> = {
  'proplet.create': 'proplet_id',
  'proplet.alive': 'proplet_id',
  'proplet.results': 'proplet_id',
  'proplet.metrics': 'proplet_id',
  'registry.proplet': 'proplet_id',
  'fl.update': 'proplet_id',
};

/**
 * What one message may contain, checked on the raw bytes before a decoder
 * builds anything (structure.ts): data items (every key, value and array
 * element) and nesting. Each is a few times what the schema allows, so a valid
 * message always fits, and small enough that the worst message of a kind
 * decodes in milliseconds (`npm run bench -- decode-worst`).
 */
export const MAX_ITEMS: Record<MessageKind, number> = {
  'proplet.create': 8192,
  'proplet.alive': 8192,
  'proplet.results': 8192,
  'proplet.metrics': 512,
  'manager.start': 4096,
  'manager.stop': 64,
  'registry.proplet': 1024,
  'registry.server': 64,
  'fl.update': 256,
};
/** The message map, a result's `results` value and its 16 levels of nesting, with room to spare. */
export const MAX_DEPTH = 20;

/** Payload limits per kind, checked before any parsing. */
export const MAX_PAYLOAD: Record<MessageKind, number> = {
  'proplet.create': 64 * 1024,
  'proplet.alive': 64 * 1024,
  'proplet.results': 4 * MiB,
  'proplet.metrics': 16 * 1024,
  'manager.start': MAX_INLINE_MODULE * 2,
  'manager.stop': 1024,
  'registry.proplet': 8 * 1024,
  'registry.server': 2 * MiB,
  'fl.update': MAX_INLINE_MODULE + 64 * 1024,
};
