// Encoding and decoding of wire messages. MQTT 3.1.1 has no content-type
// property, so the encoding is told from the payload's first byte: '{' is
// JSON, a CBOR map header (major type 5) is CBOR. Nothing else is accepted.

import { Decoder, Encoder } from 'cbor-x';
import { FIELDS, MAX_DEPTH, MAX_ITEMS, MAX_PAYLOAD, PROTOCOL_VERSION, SENDER_FIELD, type Encoding, type MessageByKind, type MessageKind } from './messages.ts';
import { check, checkStruct, ProtocolError, structToCompact, toJsonValue } from './schema.ts';
import { checkCborStructure, checkJsonStructure, type StructureLimits } from './structure.ts';

// Plain RFC 8949: no records, no tag 259 around maps, no typed-array tags, so
// that libcbor, python cbor2 or a hand-written C decoder read it as is.
// useTag259ForMaps is missing from cbor-x's typings but honoured by its encoder.
const cborEncoder = new Encoder({ useRecords: false, variableMapSize: true, useTag259ForMaps: false, tagUint8Array: false } as ConstructorParameters<typeof Encoder>[0]);
const cborDecoder = new Decoder({ useRecords: false, mapsAsObjects: false });

export function detectEncoding(payload: Uint8Array): Encoding | undefined {
  for (let i = 0; i < payload.length && i < 64; i++) {
    const b = payload[i]!;
    if (b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d) continue; // JSON whitespace
    if (b === 0x7b) return 'json';
    if (i === 0 && b >> 5 === 5) return 'cbor';
    return undefined;
  }
  return undefined;
}

/** Bounds for payloads of no particular kind (tools such as `propeller watch`). */
const ANY_LIMITS: StructureLimits = { maxItems: 262_144, maxDepth: 64 };

const LIMITS = new Map<MessageKind, StructureLimits>();

/** The structure bounds of one kind's messages (one frozen object per kind: decoded per message). */
export function limitsOf(kind: MessageKind): StructureLimits {
  let l = LIMITS.get(kind);
  if (!l) LIMITS.set(kind, (l = Object.freeze({ maxItems: MAX_ITEMS[kind], maxDepth: MAX_DEPTH })));
  return l;
}

/**
 * Parses bytes in either encoding into a raw value, without validation of the
 * fields. Refuses, before a decoder builds anything, maps that name a key twice
 * and payloads beyond `limits` (structure.ts).
 */
export function decodeRaw(payload: Uint8Array, maxBytes = Infinity, limits: StructureLimits = ANY_LIMITS): { value: unknown; encoding: Encoding } {
  if (payload.length > maxBytes) throw new ProtocolError('too_large', `payload of ${payload.length} bytes exceeds the limit of ${maxBytes}`);
  const encoding = detectEncoding(payload);
  if (!encoding) throw new ProtocolError('malformed', 'payload is neither a JSON object nor a CBOR map');
  let text: string | undefined;
  if (encoding === 'json') {
    text = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).toString('utf8');
    checkJsonStructure(text, limits);
  } else {
    checkCborStructure(payload, limits);
  }
  try {
    if (text !== undefined) return { value: JSON.parse(text), encoding };
    return { value: cborDecoder.decode(payload), encoding };
  } catch (e) {
    throw new ProtocolError('malformed', `${encoding === 'json' ? 'JSON' : 'CBOR'} does not parse: ${(e as Error).message}`);
  }
}

export interface DecodeContext {
  /** The proplet id carried by the topic, if any: fills an omitted sender id and must match a present one. */
  propletId?: string;
}

export interface Decoded<K extends MessageKind> {
  msg: MessageByKind[K];
  encoding: Encoding;
}

/**
 * Decodes and validates one message. Throws ProtocolError (never anything
 * else) with a reason and a message naming the field.
 */
export function decode<K extends MessageKind>(kind: K, payload: Uint8Array, ctx: DecodeContext = {}): Decoded<K> {
  const { value, encoding } = decodeRaw(payload, MAX_PAYLOAD[kind], limitsOf(kind));
  const fields = FIELDS[kind];
  const sender = SENDER_FIELD[kind];
  let raw = value;
  if (sender && ctx.propletId !== undefined) raw = withSender(raw, sender, fields[sender]!.key, ctx.propletId);
  let msg: Record<string, unknown>;
  try {
    msg = checkStruct(fields, raw, '', encoding === 'json' || !hasIntegerKeys(raw));
  } catch (e) {
    if (e instanceof ProtocolError) throw e;
    throw new ProtocolError('invalid', `validation failed: ${(e as Error).message}`);
  }
  if (typeof msg.v === 'number' && msg.v > PROTOCOL_VERSION) {
    throw new ProtocolError('unsupported_version', `protocol version ${msg.v} is newer than ${PROTOCOL_VERSION}`, 'v');
  }
  if (sender && ctx.propletId !== undefined && msg[sender] !== ctx.propletId) {
    throw new ProtocolError('id_mismatch', `${sender} ${JSON.stringify(msg[sender])} does not match the topic's ${JSON.stringify(ctx.propletId)}`, sender);
  }
  return { msg: msg as unknown as MessageByKind[K], encoding };
}

function hasIntegerKeys(v: unknown): boolean {
  if (!(v instanceof Map)) return false;
  for (const k of v.keys()) if (typeof k === 'number') return true;
  return false;
}

// The compact form may leave the sender out when the topic carries it.
function withSender(raw: unknown, name: string, key: number, id: string): unknown {
  if (raw instanceof Map) {
    if (raw.has(name) || raw.has(key)) return raw;
    const m = new Map(raw);
    m.set(hasIntegerKeys(raw) || raw.size === 0 ? key : name, id);
    return m;
  }
  if (raw !== null && typeof raw === 'object' && !Array.isArray(raw) && !(name in raw)) return { ...raw, [name]: id };
  return raw;
}

export interface EncodeOptions {
  /** Leave the sender id out of the payload: the topic carries it (compact CBOR only). */
  omitSender?: boolean;
}

/** Encodes a message: JSON with Propeller's names, or compact CBOR with integer keys. */
export function encode<K extends MessageKind>(kind: K, msg: MessageByKind[K], encoding: Encoding, opts: EncodeOptions = {}): Buffer {
  const fields = FIELDS[kind];
  if (encoding === 'json') return Buffer.from(JSON.stringify(toJsonValue(msg)));
  const m = structToCompact(fields, msg as unknown as Record<string, unknown>);
  const sender = SENDER_FIELD[kind];
  if (opts.omitSender && sender) m.delete(fields[sender]!.key);
  return cborEncoder.encode(m);
}

/** Encodes any value as plain CBOR (for tools; wire messages go through encode()). */
export function encodeCbor(value: unknown): Buffer {
  return cborEncoder.encode(value);
}

/** Returns the sender id a proplet-sent payload claims, without full validation (the broker's ACL check). */
export function claimedSender(kind: MessageKind, payload: Uint8Array): string | undefined | ProtocolError {
  const sender = SENDER_FIELD[kind];
  if (!sender) return undefined;
  const got = claimedFields(kind, payload, [sender]);
  return got instanceof ProtocolError ? got : (got[sender] as string | undefined);
}

/**
 * Some fields of a payload, decoded once and read without validating the rest (who sent it,
 * which task a refused result was about). A field named twice, as text and as its compact key,
 * or one that does not validate, is an error.
 */
export function claimedFields(kind: MessageKind, payload: Uint8Array, fields: string[]): Record<string, string | number | undefined> | ProtocolError {
  try {
    const { value } = decodeRaw(payload, MAX_PAYLOAD[kind], limitsOf(kind));
    if (value === null || typeof value !== 'object') return new ProtocolError('malformed', 'payload is not a map');
    const out: Record<string, string | number | undefined> = {};
    for (const field of fields) {
      const spec = FIELDS[kind][field];
      if (!spec) continue;
      let v: unknown;
      if (value instanceof Map) {
        // Both forms at once would let this check and the control plane's decoder read different values.
        if (value.has(field) && value.has(spec.key)) return new ProtocolError('duplicate_field', `${field} is named twice (as "${field}" and as ${spec.key})`, field);
        v = value.has(field) ? value.get(field) : value.get(spec.key);
      } else v = (value as Record<string, unknown>)[field];
      // What checkStruct does for this one field (same error, same path), without building a
      // one-field schema per message, which missed checkStruct's per-schema key index every time.
      if (v !== undefined && v !== null) out[field] = check(spec.type, v, field) as string | number;
    }
    return out;
  } catch (e) {
    return e instanceof ProtocolError ? e : new ProtocolError('malformed', String(e));
  }
}

/**
 * A payload as plain JSON-able data, for `propeller watch` and debugging:
 * with Propeller's field names when it is a valid message of `kind`, else raw.
 */
export function toDisplay(payload: Uint8Array, kind?: MessageKind, ctx?: DecodeContext): unknown {
  if (kind) {
    try {
      return toJsonValue(decode(kind, payload, ctx).msg);
    } catch {
      // shown raw below
    }
  }
  try {
    return mapsToObjects(decodeRaw(payload).value);
  } catch {
    return { _raw: Buffer.from(payload).toString('base64') };
  }
}

function mapsToObjects(v: unknown): unknown {
  if (v instanceof Map) {
    const o: Record<string, unknown> = {};
    for (const [k, x] of v) o[String(k)] = mapsToObjects(x);
    return o;
  }
  if (v instanceof Uint8Array) return { _bytes: Buffer.from(v).toString('hex') };
  if (typeof v === 'bigint') return v.toString();
  if (Array.isArray(v)) return v.map(mapsToObjects);
  return v;
}
