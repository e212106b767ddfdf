// The messages of Propeller's own proplets as they are on the wire today
// (absmach/propeller: the Rust proplet crate 0.5 and the Zephyr embed-proplet),
// where they differ from ours. JSON only: neither device reads anything else.
// The control plane translates between these and its own messages
// (control-plane/propeller-shapes.ts); nothing here knows about tasks.

import { ProtocolError } from './schema.ts';

/** Which program is on the other end: it decides topic layout, QoS, input types, stop fields and sizes. */
export type PropletKind =
  /** Our node proplet or MCU profile: per-proplet topics, acknowledges every start. */
  | 'ours'
  /** Propeller's Rust proplet (wasmtime): bare layout, QoS 2, string inputs, never acknowledges a start. */
  | 'propeller-rust'
  /** Propeller's Zephyr embed-proplet (WAMR): bare layout, QoS 1 it never acknowledges, numeric inputs, 1023-byte messages. */
  | 'embed'
  /** A client of the seed's Propeller protocol (seed 003 Python): shared topics, JSON as we send it. */
  | 'legacy';

/** Discovery (control/proplet/create) of both Propeller proplets. */
export interface PropellerDiscovery {
  proplet_id: string;
  namespace?: string;
  metadata?: {
    description?: string;
    tags?: string[];
    location?: string;
    ip?: string;
    environment?: string;
    os?: string;
    hostname?: string;
    cpu_arch?: string;
    total_memory_bytes?: number;
    proplet_version?: string;
    wasm_runtime?: string;
  };
}

/** The start the Rust proplet deserializes (serde: `inputs: Vec<String>`, `name` and `id` required, unknown fields ignored). */
export interface RustStart {
  id: string;
  name: string;
  file?: string;
  image_url?: string;
  cli_args: string[];
  inputs: string[];
  env?: Record<string, string>;
  daemon: boolean;
  proplet_id?: string;
}

/** The start embed-proplet reads with cJSON: `inputs` as numbers (anything else reads 0), `file` at most 1023 base64 characters. */
export interface EmbedStart {
  id: string;
  name: string;
  file?: string;
  image_url?: string;
  inputs: number[];
  env?: Record<string, string>;
}

/** embed-proplet drops a stop without all three as strings. */
export interface EmbedStop {
  id: string;
  name: string;
  state: string;
}

/** registry/proplet: a module asked for by name (the task's image_url). */
export interface PropellerChunkRequest {
  app_name: string;
}

/** registry/server: one piece of a module asked for by name. */
export interface PropellerChunk {
  app_name: string;
  chunk_idx: number;
  total_chunks: number;
  /** base64 */
  data: string;
}

/** Largest payload embed-proplet reads: its buffer is 1024 bytes with a NUL; a longer message is cut and its connection stalls for good. */
export const EMBED_MAX_MESSAGE = 1023;
/** The Rust proplet's default MQTT packet limit (PROPLET_MQTT_MAX_PACKET_SIZE). */
export const RUST_MAX_PACKET = 10 * 1024 * 1024;
/** Chunk size Propeller's proxy uses when it serves modules by name. */
export const PROPELLER_CHUNK = 512_000;

const MAX_JSON = 4 * 1024 * 1024;

/** A JSON object payload, or a ProtocolError: what Propeller's proplets send. */
export function parsePropellerJson(payload: Uint8Array): Record<string, unknown> | ProtocolError {
  if (payload.length > MAX_JSON) return new ProtocolError('too_large', `payload of ${payload.length} bytes exceeds ${MAX_JSON}`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8'));
  } catch (e) {
    return new ProtocolError('malformed', `not JSON: ${(e as Error).message}`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) return new ProtocolError('malformed', 'payload is not a JSON object');
  return v as Record<string, unknown>;
}

/** The `proplet_id` a Propeller-only message claims (invoke_results, task_metrics), undefined when none. */
export function propellerSender(payload: Uint8Array): string | undefined | ProtocolError {
  const o = parsePropellerJson(payload);
  if (o instanceof ProtocolError) return o;
  const id = o.proplet_id;
  if (id === undefined || id === null) return undefined;
  return typeof id === 'string' ? id : new ProtocolError('invalid', 'proplet_id: must be a string', 'proplet_id');
}

/**
 * The kind of proplet a registration comes from. Propeller's proplets send a
 * `metadata` object (embed-proplet with os "zephyr" and wasm_runtime "wamr");
 * ours say `addressing: "direct"`; anything else speaks the seed's protocol.
 */
export function propletKindOf(register: Record<string, unknown>): PropletKind {
  const md = register.metadata;
  if (md !== null && typeof md === 'object' && !Array.isArray(md)) {
    const m = md as Record<string, unknown>;
    return m.os === 'zephyr' || m.wasm_runtime === 'wamr' ? 'embed' : 'propeller-rust';
  }
  return register.addressing === 'direct' ? 'ours' : 'legacy';
}
