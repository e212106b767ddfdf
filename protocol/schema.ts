// A small schema language for wire messages. One schema drives three things:
// validation of untrusted input, the JSON form (Propeller's snake_case names)
// and the compact CBOR form (small integer keys, enum indices, binary UUIDs)
// that a C decoder on a microcontroller reads.

export type Type =
  | { t: 'str'; max: number }
  | { t: 'id' }
  | { t: 'int'; min: number; max: number }
  | { t: 'num' }
  | { t: 'bool' }
  | { t: 'enum'; values: readonly string[] }
  | { t: 'bytes'; max: number }
  | { t: 'arr'; of: Type; max: number }
  | { t: 'rec'; of: Type; max: number }
  | { t: 'struct'; fields: Fields }
  | { t: 'any'; maxDepth: number };

export interface Field {
  key: number;
  type: Type;
  required?: boolean;
}
export type Fields = Record<string, Field>;

export const str = (max = 256): Type => ({ t: 'str', max });
export const id: Type = { t: 'id' };
export const int = (min = 0, max = Number.MAX_SAFE_INTEGER): Type => ({ t: 'int', min, max });
export const num: Type = { t: 'num' };
export const bool: Type = { t: 'bool' };
export const oneOf = (...values: string[]): Type => ({ t: 'enum', values });
export const bytes = (max: number): Type => ({ t: 'bytes', max });
export const arr = (of: Type, max: number): Type => ({ t: 'arr', of, max });
export const rec = (of: Type, max: number): Type => ({ t: 'rec', of, max });
export const struct = (fields: Fields): Type => ({ t: 'struct', fields });
export const any = (maxDepth = 16): Type => ({ t: 'any', maxDepth });

export type ErrorReason =
  | 'malformed'
  | 'too_large'
  /** More items or deeper nesting than one message of its kind may hold. */
  | 'too_complex'
  | 'invalid'
  | 'unknown_field'
  /** One map names a field twice: a duplicate key, or a field's text name beside its integer key. */
  | 'duplicate_field'
  | 'id_mismatch'
  | 'unsupported_version';

export class ProtocolError extends Error {
  override name = 'ProtocolError';
  constructor(
    readonly reason: ErrorReason,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const FORBIDDEN_KEYS = new Set(['__proto__', 'constructor', 'prototype']);

export function isId(s: unknown): s is string {
  if (typeof s !== 'string' || s.length === 0 || s.length > 128) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x2b || c === 0x23 || c === 0x2f || c < 0x20 || c === 0x7f) return false;
  }
  return true;
}

export function uuidToBytes(s: string): Uint8Array | undefined {
  if (!UUID_RE.test(s)) return undefined;
  return Buffer.from(s.replaceAll('-', ''), 'hex');
}

const HEX = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

// Task ids arrive as 16 bytes in compact CBOR (one per running task in each heartbeat):
// a table lookup per byte, without a hex string to slice into five more.
function bytesToUuid(b: Uint8Array): string {
  const x = HEX;
  return (
    x[b[0]!]! + x[b[1]!]! + x[b[2]!]! + x[b[3]!]! + '-' + x[b[4]!]! + x[b[5]!]! + '-' + x[b[6]!]! + x[b[7]!]! + '-' +
    x[b[8]!]! + x[b[9]!]! + '-' + x[b[10]!]! + x[b[11]!]! + x[b[12]!]! + x[b[13]!]! + x[b[14]!]! + x[b[15]!]!
  );
}

const fail = (path: string, msg: string): never => {
  throw new ProtocolError('invalid', `${path}: ${msg}`, path);
};

const twice = (path: string): never => {
  throw new ProtocolError('duplicate_field', `${path}: named twice in one map`, path);
};

function entriesOf(v: unknown): Iterable<[unknown, unknown]> | undefined {
  if (v instanceof Map) return v.entries();
  if (v !== null && typeof v === 'object' && !Array.isArray(v) && !ArrayBuffer.isView(v)) return Object.entries(v);
  return undefined;
}

function isBytes(v: unknown): v is Uint8Array {
  return v instanceof Uint8Array;
}

/**
 * Validates `v` against `type` and returns a normalized value: structs become
 * plain objects with their JSON names, ids become strings, bytes become
 * Uint8Array whatever the encoding carried (base64 string or byte string).
 */
export function check(type: Type, v: unknown, path: string): unknown {
  switch (type.t) {
    case 'str':
      if (typeof v !== 'string') return fail(path, 'must be a string');
      if (v.length > type.max) return fail(path, `longer than ${type.max} characters`);
      return v;
    case 'id':
      if (isBytes(v) && v.length === 16) return bytesToUuid(v);
      if (!isId(v)) return fail(path, "must be an id: 1-128 characters without '+', '#', '/' or control characters");
      return v;
    case 'int':
      if (typeof v === 'bigint' && v >= BigInt(type.min) && v <= BigInt(type.max)) return Number(v);
      if (typeof v !== 'number' || !Number.isInteger(v)) return fail(path, 'must be an integer');
      if (v < type.min || v > type.max) return fail(path, `must be between ${type.min} and ${type.max}`);
      return v;
    case 'num':
      if (typeof v === 'bigint') return Number(v);
      if (typeof v !== 'number' || !Number.isFinite(v)) return fail(path, 'must be a finite number');
      return v;
    case 'bool':
      if (typeof v !== 'boolean') return fail(path, 'must be true or false');
      return v;
    case 'enum':
      if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < type.values.length) return type.values[v];
      if (typeof v !== 'string' || !type.values.includes(v)) return fail(path, `must be one of ${type.values.join(', ')}`);
      return v;
    case 'bytes': {
      let b: Uint8Array;
      if (isBytes(v)) b = v;
      else if (typeof v === 'string') {
        if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(v)) return fail(path, 'must be base64');
        b = Buffer.from(v, 'base64');
      } else return fail(path, 'must be bytes (base64 in JSON)');
      if (b.length > type.max) return fail(path, `larger than ${type.max} bytes`);
      return b;
    }
    case 'arr': {
      if (!Array.isArray(v)) return fail(path, 'must be an array');
      if (v.length > type.max) return fail(path, `more than ${type.max} items`);
      return v.map((x, i) => check(type.of, x, `${path}[${i}]`));
    }
    case 'rec': {
      const it = entriesOf(v);
      if (!it) return fail(path, 'must be an object');
      const out: Record<string, unknown> = {};
      let n = 0;
      for (const [k, x] of it) {
        if (typeof k !== 'string' || k.length > 256) return fail(path, 'keys must be strings of at most 256 characters');
        if (FORBIDDEN_KEYS.has(k)) return fail(`${path}.${k}`, 'reserved key');
        if (Object.hasOwn(out, k)) twice(`${path}.${k}`);
        if (++n > type.max) return fail(path, `more than ${type.max} entries`);
        out[k] = check(type.of, x, `${path}.${k}`);
      }
      return out;
    }
    case 'struct':
      return checkStruct(type.fields, v, path);
    case 'any':
      return checkAny(v, path, type.maxDepth);
  }
}

const keyIndex = new WeakMap<Fields, Map<number | string, string>>();

function indexOf(fields: Fields): Map<number | string, string> {
  let idx = keyIndex.get(fields);
  if (!idx) {
    idx = new Map();
    for (const [name, f] of Object.entries(fields)) {
      idx.set(name, name);
      idx.set(f.key, name);
    }
    keyIndex.set(fields, idx);
  }
  return idx;
}

export function checkStruct(fields: Fields, v: unknown, path: string, ignoreUnknown = false): Record<string, unknown> {
  const it = entriesOf(v);
  if (!it) return fail(path || 'message', 'must be a map/object');
  const idx = indexOf(fields);
  const out: Record<string, unknown> = {};
  // Every field once, whatever its form: a null counts, so that no reader can pick another form's value.
  const seen = new Set<string>();
  for (const [k, x] of it) {
    const name = typeof k === 'string' || typeof k === 'number' ? idx.get(k) : undefined;
    if (name === undefined) {
      // Named (JSON) forms tolerate extra fields, as Propeller's clients send some;
      // integer keys are the compact form, where an unknown key means a mismatch.
      if (typeof k === 'string' && ignoreUnknown) continue;
      throw new ProtocolError('unknown_field', `${path ? path + '.' : ''}${String(k)}: unknown field`, String(k));
    }
    if (seen.has(name)) twice(path ? `${path}.${name}` : name);
    seen.add(name);
    if (x === null || x === undefined) continue;
    out[name] = check(fields[name]!.type, x, path ? `${path}.${name}` : name);
  }
  for (const name of requiredOf(fields)) {
    if (out[name] === undefined) fail(path ? `${path}.${name}` : name, 'is required');
  }
  return out;
}

const requiredNames = new WeakMap<Fields, readonly string[]>();

// a struct's required fields, listed once per schema rather than per message
function requiredOf(fields: Fields): readonly string[] {
  let r = requiredNames.get(fields);
  if (!r) requiredNames.set(fields, (r = Object.entries(fields).filter(([, f]) => f.required).map(([name]) => name)));
  return r;
}

function checkAny(v: unknown, path: string, depth: number): unknown {
  if (depth < 0) return fail(path, 'nested too deeply');
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return v;
  if (typeof v === 'number') return Number.isFinite(v) ? v : fail(path, 'must be a finite number');
  if (typeof v === 'bigint') return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (isBytes(v)) return v;
  if (Array.isArray(v)) return v.map((x, i) => checkAny(x, `${path}[${i}]`, depth - 1));
  const it = entriesOf(v);
  if (!it) return fail(path, 'unsupported value');
  const out: Record<string, unknown> = {};
  for (const [k, x] of it) {
    if (typeof k !== 'string' && typeof k !== 'number') return fail(path, 'keys must be strings');
    const key = String(k);
    if (FORBIDDEN_KEYS.has(key)) return fail(`${path}.${key}`, 'reserved key');
    if (Object.hasOwn(out, key)) twice(`${path}.${key}`); // the integer 1 and the text "1"
    out[key] = checkAny(x, `${path}.${key}`, depth - 1);
  }
  return out;
}

/** The compact CBOR form of a validated value: integer keys, enum indices, UUIDs as 16 bytes. */
export function toCompact(type: Type, v: unknown): unknown {
  switch (type.t) {
    case 'int':
      // cbor-x writes integers past 32 bits as float64; a BigInt becomes a proper CBOR uint64/nint.
      return typeof v === 'number' && (v > 0xffffffff || v < -0x100000000) ? BigInt(v) : v;
    case 'id':
      return (typeof v === 'string' && uuidToBytes(v)) || v;
    case 'enum': {
      const i = type.values.indexOf(v as string);
      return i >= 0 ? i : v;
    }
    case 'arr':
      return (v as unknown[]).map((x) => toCompact(type.of, x));
    case 'rec': {
      const m = new Map<string, unknown>();
      for (const [k, x] of Object.entries(v as Record<string, unknown>)) m.set(k, toCompact(type.of, x));
      return m;
    }
    case 'struct':
      return structToCompact(type.fields, v as Record<string, unknown>);
    case 'any':
      return anyToCbor(v);
    default:
      return v;
  }
}

export function structToCompact(fields: Fields, v: Record<string, unknown>): Map<number, unknown> {
  const m = new Map<number, unknown>();
  for (const [name, f] of Object.entries(fields)) {
    const x = v[name];
    if (x !== undefined && x !== null) m.set(f.key, toCompact(f.type, x));
  }
  return m;
}

function anyToCbor(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(anyToCbor);
  if (v !== null && typeof v === 'object' && !isBytes(v)) {
    const m = new Map<string, unknown>();
    for (const [k, x] of Object.entries(v)) m.set(k, anyToCbor(x));
    return m;
  }
  return v;
}

/** The JSON form: bytes as base64, everything else as validated. */
export function toJsonValue(v: unknown): unknown {
  if (isBytes(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('base64');
  if (Array.isArray(v)) return v.map(toJsonValue);
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) if (x !== undefined) out[k] = toJsonValue(x);
    return out;
  }
  return v;
}
