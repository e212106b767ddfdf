// What the control plane may send each kind of Propeller proplet, as pure
// functions: a start, a stop or a module chunk shaped the way that program
// reads it, or the reason it cannot be. Propeller's proplets never acknowledge
// a start, so a start they would drop must never be sent: placement asks
// admitStart() first and refuses the proplet with its reason.
//
// The facts (absmach/propeller, proplet crate 0.5 and embed-proplet/):
// - Rust proplet: serde `inputs: Vec<String>` (a number fails the whole
//   message), `id` and `name` required, unknown fields ignored; QoS 2;
//   packets up to PROPLET_MQTT_MAX_PACKET_SIZE (10 MiB); a module by name
//   comes as {app_name, chunk_idx, total_chunks, data} chunks.
// - embed-proplet: cJSON reads `inputs` as numbers only (a string reads 0)
//   cast to u64 then i32; it calls only the export `main` with i32 arguments
//   and prints i32 results; at most 16 inputs; a message over 1023 bytes is
//   cut and the device stops reading; a stop without string id, name and state
//   is dropped; every registry/server message is a whole module; it never
//   acknowledges QoS 1, so it gets QoS 0.

import type { PropletKind, EmbedStart, EmbedStop, PropellerChunk, RustStart } from '../protocol/propeller.ts';
import { EMBED_MAX_MESSAGE, PROPELLER_CHUNK, RUST_MAX_PACKET } from '../protocol/propeller.ts';
import type { Start } from '../protocol/index.ts';
import { functionExport } from './wasm-exports.ts';

export type Qos = 0 | 1 | 2;
export type Shaped<T> = { ok: true; msg: T; bytes: Buffer; qos: Qos } | { ok: false; reason: string };

export interface ShapeOptions {
  /** The Rust proplets' PROPLET_MQTT_MAX_PACKET_SIZE; larger modules go by name in chunks. */
  rustMaxPacket?: number;
}

/** The QoS each kind is answered with: the one it subscribes with, except QoS 1 to a device that never acknowledges it. */
export function qosFor(kind: PropletKind): Qos {
  return kind === 'propeller-rust' ? 2 : kind === 'embed' ? 0 : 1;
}

const EMBED_MAX_INPUTS = 16;
const U32_MAX = 0xffff_ffff;

const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v));
const b64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
const fail = <T>(reason: string): Shaped<T> => ({ ok: false, reason });

/** The name a module goes by when it is fetched in chunks: its digest, which the control plane can always serve. */
export function moduleName(msg: Pick<Start, 'digest' | 'image_url'>): string | undefined {
  return msg.digest ?? msg.image_url;
}

/** Inputs as the Rust proplet reads them: strings it parses per parameter type (numbers written as JSON would print them). */
export function rustInputs(inputs: readonly unknown[]): string[] | string {
  const out: string[] = [];
  for (const [i, v] of inputs.entries()) {
    if (typeof v === 'string') out.push(v);
    else if (typeof v === 'number' && Number.isFinite(v)) out.push(String(v));
    else if (typeof v === 'bigint') out.push(v.toString());
    else return `inputs[${i}]: the Rust proplet takes numbers or numeric strings, not ${JSON.stringify(v) ?? typeof v}`;
  }
  return out;
}

/** Inputs as embed-proplet reads them: JSON numbers, whole and 0..2^32-1 (it casts to u64, then passes the low 32 bits as i32). */
export function embedInputs(inputs: readonly unknown[]): number[] | string {
  if (inputs.length > EMBED_MAX_INPUTS) return `embed-proplet reads at most ${EMBED_MAX_INPUTS} inputs, the task has ${inputs.length}`;
  const out: number[] = [];
  for (const [i, v] of inputs.entries()) {
    const n = typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : typeof v === 'string' && /^\s*\d+\s*$/.test(v) ? Number(v) : NaN;
    if (!Number.isInteger(n) || n < 0 || n > U32_MAX) {
      return `inputs[${i}]: embed-proplet takes whole numbers 0..${U32_MAX} (i32 arguments), not ${JSON.stringify(v) ?? typeof v}`;
    }
    out.push(n);
  }
  return out;
}

/**
 * The Rust proplet reports an FL task (env ROUND_ID) only when it knows
 * MANAGER_COORDINATOR_URL (from the task's env or its own): it POSTs the output
 * to <url>/update and, refused, publishes it on fl/rounds/<round>/updates/<id>;
 * then it puts the update envelope in its result. Without the URL it reports
 * nothing at all. The control plane takes updates over MQTT only (an HTTP post
 * does not say who sent it), so it points the proplet at a path of its own API
 * that refuses the post: the update then comes over the authenticated connection.
 */
export const PROPELLER_COORDINATOR_PATH = '/fl/propeller';

function rustEnv(env: Record<string, string> | undefined): Record<string, string> | undefined {
  if (!env?.ROUND_ID || env.MANAGER_COORDINATOR_URL || !env.MODEL_URI) return env;
  let origin: string;
  try {
    origin = new URL(env.MODEL_URI).origin; // the control plane's API, which serves the round's model
  } catch {
    return env;
  }
  return origin.startsWith('http') ? { ...env, MANAGER_COORDINATOR_URL: `${origin}${PROPELLER_COORDINATOR_PATH}` } : env;
}

/** A start for the Rust proplet: inline while it fits its packet limit, else by name (it then asks for chunks). */
export function rustStart(msg: Start, o: ShapeOptions = {}): Shaped<RustStart> {
  const inputs = rustInputs(msg.inputs ?? []);
  if (typeof inputs === 'string') return fail(inputs);
  if (!msg.name) return fail('the Rust proplet needs a task name: the export it calls');
  const env = rustEnv(msg.env);
  const base: RustStart = {
    id: msg.id,
    name: msg.name,
    cli_args: msg.cli_args ?? [],
    inputs,
    daemon: msg.daemon ?? false,
    ...(env && Object.keys(env).length ? { env } : {}),
    ...(msg.proplet_id ? { proplet_id: msg.proplet_id } : {}),
  };
  const max = o.rustMaxPacket ?? RUST_MAX_PACKET;
  if (msg.file) {
    const inline = { ...base, file: b64(msg.file) };
    const bytes = json(inline);
    // room for the MQTT header and topic
    if (bytes.length + 512 <= max) return { ok: true, msg: inline, bytes, qos: 2 };
  }
  const name = moduleName(msg);
  if (!name) return fail('the task has no module');
  // an http(s) URL the proplet fetches itself; any other name it asks the registry for, in chunks
  const byName = { ...base, image_url: name };
  return { ok: true, msg: byName, bytes: json(byName), qos: 2 };
}

/**
 * A start for embed-proplet, or why it cannot run the task: it calls only
 * `main(i32...) -> i32`, reads numeric inputs, and every message must fit 1023 bytes.
 */
export function embedStart(msg: Start, module: Uint8Array | undefined): Shaped<EmbedStart> {
  if (msg.daemon) return fail('embed-proplet runs main once and has no daemons');
  if (msg.cli_args?.length) return fail('embed-proplet takes no cli_args');
  const inputs = embedInputs(msg.inputs ?? []);
  if (typeof inputs === 'string') return fail(inputs);
  // an FL round's task is named after its round: embed-proplet runs its main all the same (ROUND_ID marks it)
  if (msg.name !== 'main' && !msg.env?.ROUND_ID) return fail(`embed-proplet calls only the export main, the task names ${JSON.stringify(msg.name ?? '')}`);
  if (!module) return fail('embed-proplet needs the module at hand to be checked and sent inline');
  const sig = functionExport(module, 'main');
  if (typeof sig === 'string') return fail(`the module cannot run on embed-proplet: ${sig}`);
  if (sig.params.some((p) => p !== 'i32') || sig.results.some((r) => r !== 'i32')) {
    return fail(`embed-proplet calls main with i32 arguments and prints i32 results; main is (${sig.params.join(', ')}) -> (${sig.results.join(', ')})`);
  }
  if (sig.params.length !== inputs.length) return fail(`main takes ${sig.params.length} arguments, the task gives ${inputs.length} inputs`);
  const head = { id: msg.id, name: 'main', ...(msg.env && Object.keys(msg.env).length ? { env: msg.env } : {}) };
  const inline: EmbedStart = { id: head.id, name: head.name, file: b64(module), inputs, ...(head.env ? { env: head.env } : {}) };
  const bytes = json(inline);
  if (bytes.length <= EMBED_MAX_MESSAGE) return { ok: true, msg: inline, bytes, qos: 0 };
  // By name the module travels alone, in one registry/server message it takes as the whole module: this fits
  // when the start is large for its env or inputs rather than for its module.
  const name = msg.digest ?? msg.image_url;
  const byName: EmbedStart = { id: head.id, name: head.name, image_url: name ?? '', inputs, ...(head.env ? { env: head.env } : {}) };
  const startBytes = json(byName);
  const chunk = name ? propellerChunks('embed', name, module) : 'the module has no name to be asked for by';
  if (startBytes.length <= EMBED_MAX_MESSAGE && typeof chunk !== 'string') return { ok: true, msg: byName, bytes: startBytes, qos: 0 };
  const alone = typeof chunk === 'string' ? chunk : `the start naming it is ${startBytes.length} bytes`;
  return fail(`the start is ${bytes.length} bytes with its ${module.length}-byte module, and by name ${alone}: embed-proplet reads messages of at most ${EMBED_MAX_MESSAGE} bytes (a module of about 650 bytes)`);
}

/** A start shaped for a Propeller proplet kind; undefined for kinds that read our messages as they are. */
export function shapeStart(kind: PropletKind, msg: Start, module: Uint8Array | undefined, o: ShapeOptions = {}): Shaped<RustStart | EmbedStart> | undefined {
  if (kind === 'propeller-rust') return rustStart(msg, o);
  if (kind === 'embed') return embedStart(msg, module);
  return undefined;
}

/** A stop: the Rust proplet reads `{id}`; embed-proplet drops one without string id, name and state. */
export function shapeStop(kind: PropletKind, id: string, name: string): { msg: { id: string } | EmbedStop; bytes: Buffer; qos: Qos } | undefined {
  if (kind === 'propeller-rust') return { msg: { id }, bytes: json({ id }), qos: 2 };
  if (kind === 'embed') {
    const msg: EmbedStop = { id, name: name || 'main', state: 'Stopped' };
    return { msg, bytes: json(msg), qos: 0 };
  }
  return undefined;
}

/**
 * A module asked for by name, in the pieces the kind takes: the Rust proplet
 * reassembles chunks of up to 512,000 bytes (less when its packet limit is
 * lower); embed-proplet takes each message as the whole module, so it must fit one.
 */
export function propellerChunks(kind: PropletKind, appName: string, module: Uint8Array, o: ShapeOptions = {}): PropellerChunk[] | string {
  const piece = (i: number, total: number, size: number): PropellerChunk => ({
    app_name: appName,
    chunk_idx: i,
    total_chunks: total,
    data: b64(module.subarray(i * size, Math.min(module.length, (i + 1) * size))),
  });
  if (kind === 'embed') {
    const one = piece(0, 1, module.length || 1);
    const size = json(one).length;
    if (size > EMBED_MAX_MESSAGE) return `module ${appName} is ${module.length} bytes: as one message (${size} bytes) it exceeds embed-proplet's ${EMBED_MAX_MESSAGE}`;
    return [one];
  }
  const max = o.rustMaxPacket ?? RUST_MAX_PACKET;
  // base64 grows 4/3; keep room for the JSON around it and the MQTT header
  const size = Math.max(1024, Math.min(PROPELLER_CHUNK, Math.floor(((max - 1024 - appName.length) * 3) / 4)));
  const total = Math.max(1, Math.ceil(module.length / size));
  return Array.from({ length: total }, (_, i) => piece(i, total, size));
}

/** The Rust proplet's `{secs_since_epoch, nanos_since_epoch}`, or a number (embed-proplet's uptime in ms), as milliseconds. */
export function timestampMs(ts: unknown): number | undefined {
  if (typeof ts === 'number' && Number.isFinite(ts)) return ts;
  if (ts && typeof ts === 'object') {
    const { secs_since_epoch: s, nanos_since_epoch: n } = ts as Record<string, unknown>;
    if (typeof s === 'number' && Number.isFinite(s)) return s * 1000 + (typeof n === 'number' && Number.isFinite(n) ? Math.floor(n / 1e6) : 0);
  }
  return undefined;
}

/** Proplet metrics as ours, from either Propeller shape (cpu_metrics.percent, memory_metrics.rss_bytes or heap_alloc_bytes). */
export function fromPropellerMetrics(raw: Record<string, unknown>): { cpu_percent?: number; memory_used?: number; timestamp_ms?: number } {
  const out: { cpu_percent?: number; memory_used?: number; timestamp_ms?: number } = {};
  const num = (o: unknown, k: string) => {
    const v = o && typeof o === 'object' ? (o as Record<string, unknown>)[k] : undefined;
    return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
  };
  const cpu = num(raw.cpu_metrics, 'percent');
  if (cpu !== undefined) out.cpu_percent = cpu;
  const mem = num(raw.memory_metrics, 'rss_bytes') || num(raw.memory_metrics, 'heap_alloc_bytes');
  if (mem !== undefined && mem >= 0) out.memory_used = Math.round(mem);
  const ts = timestampMs(raw.timestamp);
  if (ts !== undefined) out.timestamp_ms = ts;
  return out;
}

/**
 * A Propeller result in our terms. Both proplets report success as a string
 * (`"7"`, `"2.5"`, embed's comma-joined `"3,4"`) and failure as `error`; the
 * Rust proplet answers a daemon with `""` at once, which means it runs.
 */
export function resultStatus(raw: { results?: unknown; error?: unknown }, daemon: boolean): 'running' | 'completed' | 'failed' {
  if (typeof raw.error === 'string' && raw.error !== '') return 'failed';
  if (daemon && (raw.results === '' || raw.results === undefined || raw.results === null)) return 'running';
  return 'completed';
}
