// The model format of federated learning: named float32 tensors.
//
// Two forms:
// - compact CBOR (plain RFC 8949: definite lengths, no tags, no typed-array
//   tags), small integer keys, tensor data as one byte string of little-endian
//   float32 each, so that a C client on a device reads it with any CBOR reader
//   and a memcpy (see docs/fl.md for a hex dump);
// - JSON for people: {format, tensors: [{name, shape, data: number[]}], meta}.
//
// CBOR layout (the integer keys are part of the format: never renumber, only add):
//
//   model  = { 0: 1                      ; format version (uint), 1 = propeller-model/v1
//              1: [* tensor]             ; tensors, in order
//            ? 2: { * text => text / int / float } }   ; meta, optional
//   tensor = { 0: text                   ; name, unique in the model
//              1: [* uint]               ; shape, row-major; [] is a scalar
//              2: bytes }                ; 4 × product(shape) bytes: float32 little-endian
//
// The encoder writes maps with keys ascending (meta keys in RFC 8949 §4.2.1
// order), integers in their shortest form and meta numbers that are not safe
// integers as float64 (never float32: 0.1 must stay 0.1 on a C reader), so
// equal models give equal bytes and equal modelDigest()s. They are the bytes
// the project's cbor-x encoder (protocol/codec.ts options) writes for the
// same maps (a test compares them); the encoder is written out here to size
// the output first and copy each tensor's data once.
//
// The decoder is written for this one schema rather than taken from cbor-x:
// it refuses what a general decoder quietly accepts (duplicate keys, trailing
// bytes, tags, indefinite lengths), checks every length against the input and
// the limits before allocating, names the tensor in every error, and copies
// each tensor's bytes once into an aligned Float32Array. Floats are read as
// little-endian on any host: on a little-endian host (every platform Node
// supports in practice) the bytes are copied as they are; on a big-endian host
// each value is read through a DataView with littleEndian = true.

import { sha256Digest } from './digest.ts';

export const MODEL_FORMAT = 'propeller-model/v1';
export const MODEL_FORMAT_VERSION = 1;

export interface Tensor {
  name: string;
  /** Row-major dimensions; [] is a scalar (one element). */
  shape: number[];
  /** product(shape) values, in host byte order (a plain Float32Array). */
  data: Float32Array;
}

export type ModelMeta = Record<string, string | number>;

export interface Model {
  format: typeof MODEL_FORMAT;
  tensors: Tensor[];
  meta?: ModelMeta;
}

/** The JSON form, for people and small models. */
export interface ModelJson {
  format: typeof MODEL_FORMAT;
  tensors: { name: string; shape: number[]; data: number[] }[];
  meta?: ModelMeta;
}

/** Integer keys of the compact CBOR form. */
export const MODEL_KEY = { version: 0, tensors: 1, meta: 2 } as const;
export const TENSOR_KEY = { name: 0, shape: 1, data: 2 } as const;

export interface ModelLimits {
  /** Encoded size in bytes (CBOR), default 1 GiB. */
  maxBytes?: number;
  /** Number of tensors, default 10,000. */
  maxTensors?: number;
  /** Total float32 values over all tensors, default 2^28 (1 GiB of data). */
  maxElements?: number;
  /** Dimensions per tensor, default 8. */
  maxRank?: number;
  /** Tensor name length in UTF-8 bytes, default 256. */
  maxNameLength?: number;
  /** Meta entries, default 64. */
  maxMetaEntries?: number;
  /** Meta key and text value length in UTF-8 bytes, default 1024. */
  maxMetaLength?: number;
  /** Refuse NaN and ±Infinity in tensor data (default true). */
  checkFinite?: boolean;
}

export const DEFAULT_MODEL_LIMITS: Readonly<Required<ModelLimits>> = Object.freeze({
  maxBytes: 1 << 30,
  maxTensors: 10_000,
  maxElements: 2 ** 28,
  maxRank: 8,
  maxNameLength: 256,
  maxMetaEntries: 64,
  maxMetaLength: 1024,
  checkFinite: true,
});

export type ModelErrorReason =
  /** Not parseable: not CBOR/JSON, truncated, trailing bytes, tags, indefinite lengths, bad UTF-8. */
  | 'malformed'
  /** Parseable but not a valid model: wrong types, missing or unknown keys, byte length vs shape, duplicate names. */
  | 'invalid'
  /** NaN or ±Infinity in tensor data (only with checkFinite). */
  | 'non_finite'
  /** Beyond a limit of ModelLimits. */
  | 'too_large';

export class ModelError extends Error {
  override name = 'ModelError';
  constructor(
    readonly reason: ModelErrorReason,
    message: string,
    /** The tensor's name (or `#index` when its name is unknown) the error is about. */
    readonly tensor?: string,
  ) {
    super(message);
  }
}

/** True on little-endian hosts (x86, arm64 as Node runs them). */
export const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function limitsOf(l?: ModelLimits): Required<ModelLimits> {
  return { ...DEFAULT_MODEL_LIMITS, ...(l ?? {}) };
}

/** Number of elements of a shape: the product of its dimensions, 1 for []. */
export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Total number of parameters of a model. */
export function paramCount(m: Model): number {
  let n = 0;
  for (const t of m.tensors) n += elementCount(t.shape);
  return n;
}

/** Same tensor names, in the same order, with the same shapes. */
export function sameShape(a: Model, b: Model): boolean {
  if (a.tensors.length !== b.tensors.length) return false;
  for (let i = 0; i < a.tensors.length; i++) {
    const x = a.tensors[i]!;
    const y = b.tensors[i]!;
    if (x.name !== y.name || x.shape.length !== y.shape.length) return false;
    for (let j = 0; j < x.shape.length; j++) if (x.shape[j] !== y.shape[j]) return false;
  }
  return true;
}

/** 'sha256:<hex>' of the encoded bytes. */
export function modelDigest(bytes: Uint8Array): string {
  return sha256Digest(bytes);
}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder('utf-8', { fatal: true });

/** The index of the first NaN/±Infinity in data[from, to), or -1. */
export function firstNonFinite(data: Float32Array, from = 0, to = data.length): number {
  // Blocks of 1024 summed in float64 in four lanes (twice as fast as a test per value): NaN and
  // ±Infinity survive any sum, and 1024 finite float32s cannot overflow a float64; the first
  // block whose sum is not finite, and what follows it, is searched value by value.
  let i = from;
  for (; i + 1024 <= to; i += 1024) {
    let a = 0;
    let b = 0;
    let c = 0;
    let d = 0;
    for (let j = i; j < i + 1024; j += 4) {
      a += data[j]!;
      b += data[j + 1]!;
      c += data[j + 2]!;
      d += data[j + 3]!;
    }
    const s = a + b + c + d;
    if (s - s !== 0) break;
  }
  for (; i < to; i++) {
    const x = data[i]!;
    if (x - x !== 0) return i; // NaN - NaN and Inf - Inf are NaN; finite x - x is 0
  }
  return -1;
}

/** Value i of little-endian float32 bytes. */
export function readFloat32LE(bytes: Uint8Array, i: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getFloat32(i * 4, true);
}

/** The index of the first NaN/±Infinity in little-endian float32 bytes, or -1. */
export function firstNonFiniteLE(bytes: Uint8Array): number {
  const n = bytes.length >>> 2;
  if (HOST_LITTLE_ENDIAN && bytes.byteOffset % 4 === 0) return firstNonFinite(new Float32Array(bytes.buffer, bytes.byteOffset, n));
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let i = 0; i < n; i++) {
    // exponent bits all ones: NaN or ±Infinity
    if ((dv.getUint32(i * 4, true) & 0x7f800000) === 0x7f800000) return i;
  }
  return -1;
}

/**
 * Copies little-endian float32 bytes into `out` at element `at` (any alignment
 * of `bytes`; `bytes.length` must be a multiple of 4).
 */
export function float32FromLE(bytes: Uint8Array, out: Float32Array, at = 0): void {
  const n = bytes.length >>> 2;
  if (HOST_LITTLE_ENDIAN) {
    new Uint8Array(out.buffer, out.byteOffset + at * 4, n * 4).set(bytes.subarray(0, n * 4));
  } else {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (let i = 0; i < n; i++) out[at + i] = dv.getFloat32(i * 4, true);
  }
}

/** The little-endian bytes of float32 data: a view on little-endian hosts, a swapped copy otherwise. */
export function float32ToLE(data: Float32Array): Uint8Array {
  if (HOST_LITTLE_ENDIAN) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const out = new Uint8Array(data.length * 4);
  const dv = new DataView(out.buffer);
  for (let i = 0; i < data.length; i++) dv.setFloat32(i * 4, data[i]!, true);
  return out;
}

function checkName(name: unknown, i: number, l: Required<ModelLimits>): string {
  if (typeof name !== 'string') throw new ModelError('invalid', `tensor #${i}: name must be text`, `#${i}`);
  if (name.length === 0) throw new ModelError('invalid', `tensor #${i}: name is empty`, `#${i}`);
  if (utf8.encode(name).length > l.maxNameLength) throw new ModelError('too_large', `tensor #${i}: name longer than ${l.maxNameLength} bytes`, `#${i}`);
  if (/[\u0000-\u001f\u007f]/.test(name)) throw new ModelError('invalid', `tensor #${i}: name contains a control character`, `#${i}`);
  return name;
}

function checkShape(shape: unknown, name: string, l: Required<ModelLimits>): number[] {
  const what = `tensor '${name}'`;
  if (!Array.isArray(shape)) throw new ModelError('invalid', `${what}: shape must be an array of unsigned integers`, name);
  if (shape.length > l.maxRank) throw new ModelError('too_large', `${what}: shape has ${shape.length} dimensions, more than ${l.maxRank}`, name);
  for (const d of shape) {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0) throw new ModelError('invalid', `${what}: shape ${JSON.stringify(shape)} must hold unsigned integers`, name);
  }
  return shape as number[];
}

function checkMeta(meta: unknown, l: Required<ModelLimits>): ModelMeta {
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta) || ArrayBuffer.isView(meta)) throw new ModelError('invalid', 'meta must be a map of text to text or number');
  const entries = Object.entries(meta);
  if (entries.length > l.maxMetaEntries) throw new ModelError('too_large', `meta has ${entries.length} entries, more than ${l.maxMetaEntries}`);
  const out: ModelMeta = {};
  for (const [k, v] of entries) setMeta(out, k, v, l);
  return out;
}

function setMeta(out: ModelMeta, k: string, v: unknown, l: Required<ModelLimits>): void {
  if (k.length === 0 || utf8.encode(k).length > l.maxMetaLength) throw new ModelError('invalid', `meta key ${JSON.stringify(k.slice(0, 64))} must be 1-${l.maxMetaLength} bytes`);
  if (k === '__proto__') throw new ModelError('invalid', 'meta key __proto__ is reserved');
  if (Object.hasOwn(out, k)) throw new ModelError('invalid', `meta key ${JSON.stringify(k)} appears twice`);
  if (typeof v === 'string') {
    if (utf8.encode(v).length > l.maxMetaLength) throw new ModelError('too_large', `meta ${JSON.stringify(k)}: text longer than ${l.maxMetaLength} bytes`);
  } else if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new ModelError('invalid', `meta ${JSON.stringify(k)}: must be text or a finite number`);
  }
  out[k] = v;
}

/**
 * Validates an in-memory model (the checks decodeModel makes on the wire
 * form) and throws ModelError naming the tensor.
 */
export function validateModel(m: Model, limits?: ModelLimits): void {
  const l = limitsOf(limits);
  if (m === null || typeof m !== 'object') throw new ModelError('invalid', 'a model must be an object');
  if (m.format !== MODEL_FORMAT) throw new ModelError('invalid', `format must be ${JSON.stringify(MODEL_FORMAT)}, not ${JSON.stringify(m.format)}`);
  if (!Array.isArray(m.tensors)) throw new ModelError('invalid', 'tensors must be an array');
  if (m.tensors.length > l.maxTensors) throw new ModelError('too_large', `${m.tensors.length} tensors, more than ${l.maxTensors}`);
  const names = new Set<string>();
  let total = 0;
  for (const [i, t] of m.tensors.entries()) {
    if (t === null || typeof t !== 'object') throw new ModelError('invalid', `tensor #${i}: must be an object`, `#${i}`);
    const name = checkName(t.name, i, l);
    if (names.has(name)) throw new ModelError('invalid', `tensor '${name}': name appears twice`, name);
    names.add(name);
    const n = elementCount(checkShape(t.shape, name, l));
    total += n;
    if (total > l.maxElements) throw new ModelError('too_large', `tensor '${name}': the model has more than ${l.maxElements} elements`, name);
    if (!(t.data instanceof Float32Array)) throw new ModelError('invalid', `tensor '${name}': data must be a Float32Array`, name);
    if (t.data.length !== n) throw new ModelError('invalid', `tensor '${name}': data has ${t.data.length} values, shape ${JSON.stringify(t.shape)} needs ${n}`, name);
    if (l.checkFinite) nonFiniteError(t.data, name);
  }
  if (m.meta !== undefined) checkMeta(m.meta, l);
}

function nonFiniteError(data: Float32Array, name: string): void {
  const k = firstNonFinite(data);
  if (k >= 0) throw new ModelError('non_finite', `tensor '${name}': value ${data[k]} at index ${k} is not finite`, name);
}

// ---------------------------------------------------------------- CBOR encoding

function headSize(arg: number): number {
  return arg < 24 ? 1 : arg < 0x100 ? 2 : arg < 0x10000 ? 3 : arg < 0x100000000 ? 5 : 9;
}

class Writer {
  pos = 0;
  readonly b: Uint8Array;
  readonly dv: DataView;
  constructor(size: number) {
    this.b = new Uint8Array(size);
    this.dv = new DataView(this.b.buffer);
  }
  head(major: number, arg: number): void {
    const m = major << 5;
    if (arg < 24) this.b[this.pos++] = m | arg;
    else if (arg < 0x100) {
      this.b[this.pos++] = m | 24;
      this.b[this.pos++] = arg;
    } else if (arg < 0x10000) {
      this.b[this.pos++] = m | 25;
      this.dv.setUint16(this.pos, arg);
      this.pos += 2;
    } else if (arg < 0x100000000) {
      this.b[this.pos++] = m | 26;
      this.dv.setUint32(this.pos, arg);
      this.pos += 4;
    } else {
      this.b[this.pos++] = m | 27;
      this.dv.setUint32(this.pos, Math.floor(arg / 0x100000000));
      this.dv.setUint32(this.pos + 4, arg >>> 0);
      this.pos += 8;
    }
  }
  bytes(x: Uint8Array): void {
    this.b.set(x, this.pos);
    this.pos += x.length;
  }
}

type MetaItem = { key: Uint8Array; value: string | number; text?: Uint8Array };

function metaValueSize(v: MetaItem): number {
  if (v.text) return headSize(v.text.length) + v.text.length;
  const x = v.value as number;
  if (Number.isSafeInteger(x)) return headSize(x < 0 ? -1 - x : x);
  return 9;
}

/**
 * Encodes a model in the compact CBOR form. Validates it first (ModelError);
 * `limits.checkFinite: false` lets NaN/Infinity through.
 */
export function encodeModel(m: Model, limits?: ModelLimits): Uint8Array {
  validateModel(m, limits);
  const names = m.tensors.map((t) => utf8.encode(t.name));
  let meta: MetaItem[] | undefined;
  if (m.meta !== undefined) {
    meta = Object.entries(m.meta).map(([k, value]) => ({ key: utf8.encode(k), value, text: typeof value === 'string' ? utf8.encode(value) : undefined }));
    // RFC 8949 §4.2.1: keys sorted by their encoded bytes (head first, so shorter keys first).
    meta.sort((a, b) => a.key.length - b.key.length || Buffer.compare(a.key, b.key));
  }
  let size = 1 + 1 + 1 + 1 + headSize(m.tensors.length);
  for (const [i, t] of m.tensors.entries()) {
    const n = names[i]!.length;
    size += 1 + 1 + headSize(n) + n + 1 + headSize(t.shape.length) + t.shape.reduce((s, d) => s + headSize(d), 0) + 1 + headSize(t.data.byteLength) + t.data.byteLength;
  }
  if (meta) {
    size += 1 + headSize(meta.length);
    for (const x of meta) size += headSize(x.key.length) + x.key.length + metaValueSize(x);
  }
  const w = new Writer(size);
  w.head(5, meta ? 3 : 2);
  w.head(0, MODEL_KEY.version);
  w.head(0, MODEL_FORMAT_VERSION);
  w.head(0, MODEL_KEY.tensors);
  w.head(4, m.tensors.length);
  for (const [i, t] of m.tensors.entries()) {
    w.head(5, 3);
    w.head(0, TENSOR_KEY.name);
    w.head(3, names[i]!.length);
    w.bytes(names[i]!);
    w.head(0, TENSOR_KEY.shape);
    w.head(4, t.shape.length);
    for (const d of t.shape) w.head(0, d);
    w.head(0, TENSOR_KEY.data);
    w.head(2, t.data.byteLength);
    w.bytes(float32ToLE(t.data));
  }
  if (meta) {
    w.head(0, MODEL_KEY.meta);
    w.head(5, meta.length);
    for (const x of meta) {
      w.head(3, x.key.length);
      w.bytes(x.key);
      if (x.text) {
        w.head(3, x.text.length);
        w.bytes(x.text);
      } else {
        const v = x.value as number;
        if (Number.isSafeInteger(v)) w.head(v < 0 ? 1 : 0, v < 0 ? -1 - v : v);
        else {
          w.b[w.pos++] = 0xfb;
          w.dv.setFloat64(w.pos, v);
          w.pos += 8;
        }
      }
    }
  }
  if (w.pos !== size) throw new Error(`encodeModel: wrote ${w.pos} bytes, computed ${size}`); // a bug, not bad input
  return w.b;
}

// ---------------------------------------------------------------- CBOR decoding

const MAJOR_NAMES = ['an unsigned integer', 'a negative integer', 'a byte string', 'a text string', 'an array', 'a map', 'a tag', 'a float or simple value'];

interface Head {
  major: number;
  info: number;
  arg: number;
  at: number;
}

class Reader {
  static kept: [Reader, Head] | undefined;
  pos = 0;
  readonly dv: DataView;
  constructor(readonly b: Uint8Array) {
    this.dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  }
  need(n: number, what: string): void {
    if (n > this.b.length - this.pos) throw new ModelError('malformed', `truncated: ${what} needs ${n} bytes at offset ${this.pos}, ${this.b.length - this.pos} left`);
  }
  head(what: string): Head {
    const at = this.pos;
    this.need(1, what);
    const ib = this.b[this.pos++]!;
    const major = ib >> 5;
    const info = ib & 31;
    if (major === 6) throw new ModelError('malformed', `${what}: CBOR tags are not allowed (offset ${at})`);
    if (info === 31) throw new ModelError('malformed', `${what}: indefinite lengths are not allowed (offset ${at})`);
    if (info >= 28) throw new ModelError('malformed', `${what}: reserved additional information ${info} (offset ${at})`);
    let arg = info;
    if (major === 7) return { major, info, arg: info, at }; // floats are read by the caller
    if (info === 24) {
      this.need(1, what);
      arg = this.b[this.pos++]!;
    } else if (info === 25) {
      this.need(2, what);
      arg = this.dv.getUint16(this.pos);
      this.pos += 2;
    } else if (info === 26) {
      this.need(4, what);
      arg = this.dv.getUint32(this.pos);
      this.pos += 4;
    } else if (info === 27) {
      this.need(8, what);
      const hi = this.dv.getUint32(this.pos);
      if (hi >= 0x200000) throw new ModelError('malformed', `${what}: integer or length beyond 2^53 (offset ${at})`);
      arg = hi * 0x100000000 + this.dv.getUint32(this.pos + 4);
      this.pos += 8;
    }
    return { major, info, arg, at };
  }
  expect(major: number, what: string): Head {
    const h = this.head(what);
    if (h.major !== major) throw new ModelError('invalid', `${what} must be ${MAJOR_NAMES[major]}, not ${MAJOR_NAMES[h.major]} (offset ${h.at})`);
    return h;
  }
  uint(what: string): number {
    return this.expect(0, what).arg;
  }
  text(what: string, max: number): string {
    const h = this.expect(3, what);
    if (h.arg > max) throw new ModelError('too_large', `${what}: text of ${h.arg} bytes is longer than ${max}`);
    return this.textBody(h, what);
  }
  textBody(h: Head, what: string): string {
    this.need(h.arg, what);
    const s = this.b.subarray(this.pos, this.pos + h.arg);
    this.pos += h.arg;
    try {
      return utf8Strict.decode(s);
    } catch {
      throw new ModelError('malformed', `${what}: invalid UTF-8 (offset ${h.at})`);
    }
  }
  float(h: Head, what: string): number {
    const sizes: Record<number, number> = { 25: 2, 26: 4, 27: 8 };
    const n = sizes[h.info];
    if (n === undefined) throw new ModelError('invalid', `${what}: simple value ${h.info} (false, true, null, undefined...) is not allowed (offset ${h.at})`);
    this.need(n, what);
    const v = n === 2 ? halfToNumber(this.dv.getUint16(this.pos)) : n === 4 ? this.dv.getFloat32(this.pos) : this.dv.getFloat64(this.pos);
    this.pos += n;
    return v;
  }
}

// A Reader and a Head alive for the life of the process (a static of the
// class, so they stay reachable). V8 holds the hidden classes an object goes
// through as its fields are set only weakly: when no Reader was alive at a
// full GC (between two rounds of updates), they were collected, the optimized
// head() and need() were thrown away ('weak objects' in --trace-deopt) and
// compiled again each round (~4 ms of CPU per 100 decodes). They hold no
// update's bytes.
{
  const r = new Reader(new Uint8Array([0xa0]));
  Reader.kept = [r, r.head('kept')];
}

function halfToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** A tensor as it sits in the encoded bytes. */
export interface TensorView {
  name: string;
  shape: number[];
  /** 4 × product(shape) bytes of little-endian float32: a view of the input, not a copy, at any alignment. */
  bytes: Uint8Array;
}

export interface ModelView {
  format: typeof MODEL_FORMAT;
  tensors: TensorView[];
  meta?: ModelMeta;
}

/**
 * Decodes the compact CBOR form with strict validation. Throws ModelError
 * (never anything else) with a reason and, when it is about a tensor, its name.
 * Each tensor's data is copied once into its own (aligned) Float32Array.
 */
export function decodeModel(bytes: Uint8Array, limits?: ModelLimits): Model {
  const view = decodeModelView(bytes, { ...limits, checkFinite: false });
  const check = limits?.checkFinite ?? DEFAULT_MODEL_LIMITS.checkFinite;
  const tensors = view.tensors.map(({ name, shape, bytes: b }) => {
    const data = new Float32Array(b.length / 4);
    float32FromLE(b, data);
    if (check) nonFiniteError(data, name);
    return { name, shape, data };
  });
  const m: Model = { format: MODEL_FORMAT, tensors };
  if (view.meta !== undefined) m.meta = view.meta;
  return m;
}

/**
 * decodeModel() without copying the tensor data: each tensor's bytes are a
 * view of the input (little-endian float32, any alignment). Same validation
 * (checkFinite reads the values in place). For feeding an aggregator straight
 * from the wire; the views are valid as long as the input is not modified.
 */
export function decodeModelView(bytes: Uint8Array, limits?: ModelLimits): ModelView {
  const l = limitsOf(limits);
  if (!(bytes instanceof Uint8Array)) throw new ModelError('malformed', 'input must be bytes');
  if (bytes.length > l.maxBytes) throw new ModelError('too_large', `${bytes.length} bytes, more than ${l.maxBytes}`);
  const first = bytes[0];
  if (first !== undefined && first >> 5 !== 5) {
    const hint = first === 0x7b ? "; '{' starts the JSON form: read it with modelFromJson" : '';
    throw new ModelError('malformed', `not a CBOR map (first byte 0x${first.toString(16).padStart(2, '0')}: ${MAJOR_NAMES[first >> 5]})${hint}`);
  }
  const r = new Reader(bytes);
  const top = r.head('model');
  if (top.arg > 3) throw new ModelError('invalid', `the model map has ${top.arg} entries; its keys are 0 (version), 1 (tensors), 2 (meta)`);
  let version: number | undefined;
  let tensors: TensorView[] | undefined;
  let meta: ModelMeta | undefined;
  for (let e = 0; e < top.arg; e++) {
    const k = r.head('model key');
    if (k.major !== 0) {
      const hint = k.major === 3 ? ` (${JSON.stringify(r.textBody(k, 'model key'))}: the compact form has integer keys; JSON names belong to the JSON form)` : '';
      throw new ModelError('invalid', `model keys must be unsigned integers, not ${MAJOR_NAMES[k.major]}${hint}`);
    }
    if (k.arg === MODEL_KEY.version) {
      if (version !== undefined) throw new ModelError('invalid', 'model key 0 (version) appears twice');
      version = r.uint('version (key 0)');
      if (version !== MODEL_FORMAT_VERSION) throw new ModelError('invalid', `unsupported format version ${version}: this reader knows ${MODEL_FORMAT_VERSION} (${MODEL_FORMAT})`);
    } else if (k.arg === MODEL_KEY.tensors) {
      if (tensors !== undefined) throw new ModelError('invalid', 'model key 1 (tensors) appears twice');
      tensors = readTensors(r, l);
    } else if (k.arg === MODEL_KEY.meta) {
      if (meta !== undefined) throw new ModelError('invalid', 'model key 2 (meta) appears twice');
      meta = readMeta(r, l);
    } else {
      throw new ModelError('invalid', `unknown model key ${k.arg}: keys are 0 (version), 1 (tensors), 2 (meta)`);
    }
  }
  if (version === undefined) throw new ModelError('invalid', 'model key 0 (version) is missing');
  if (tensors === undefined) throw new ModelError('invalid', 'model key 1 (tensors) is missing');
  if (r.pos !== bytes.length) throw new ModelError('malformed', `${bytes.length - r.pos} trailing bytes after the model (offset ${r.pos})`);
  const m: ModelView = { format: MODEL_FORMAT, tensors };
  if (meta !== undefined) m.meta = meta;
  return m;
}

function readTensors(r: Reader, l: Required<ModelLimits>): TensorView[] {
  const h = r.expect(4, 'tensors (key 1)');
  if (h.arg > l.maxTensors) throw new ModelError('too_large', `${h.arg} tensors, more than ${l.maxTensors}`);
  const out: TensorView[] = [];
  const names = new Set<string>();
  let total = 0;
  for (let i = 0; i < h.arg; i++) {
    let what = `tensor #${i}`;
    const mh = r.expect(5, what);
    if (mh.arg > 3) throw new ModelError('invalid', `${what}: map has ${mh.arg} entries; its keys are 0 (name), 1 (shape), 2 (data)`, `#${i}`);
    let name: string | undefined;
    let shape: number[] | undefined;
    let data: { at: number; len: number } | undefined;
    for (let e = 0; e < mh.arg; e++) {
      const k = r.head(`${what} key`);
      if (k.major !== 0) throw new ModelError('invalid', `${what}: keys must be unsigned integers, not ${MAJOR_NAMES[k.major]}`, name ?? `#${i}`);
      if (k.arg === TENSOR_KEY.name) {
        if (name !== undefined) throw new ModelError('invalid', `${what}: key 0 (name) appears twice`, name);
        const th = r.expect(3, `${what} name`);
        if (th.arg > l.maxNameLength) throw new ModelError('too_large', `${what}: name of ${th.arg} bytes is longer than ${l.maxNameLength}`, `#${i}`);
        name = checkName(r.textBody(th, `${what} name`), i, l);
        if (names.has(name)) throw new ModelError('invalid', `tensor '${name}': name appears twice (tensor #${i})`, name);
        names.add(name);
        what = `tensor '${name}'`;
      } else if (k.arg === TENSOR_KEY.shape) {
        if (shape !== undefined) throw new ModelError('invalid', `${what}: key 1 (shape) appears twice`, name ?? `#${i}`);
        const sh = r.expect(4, `${what} shape`);
        if (sh.arg > l.maxRank) throw new ModelError('too_large', `${what}: shape has ${sh.arg} dimensions, more than ${l.maxRank}`, name ?? `#${i}`);
        shape = [];
        for (let d = 0; d < sh.arg; d++) shape.push(r.uint(`${what} shape[${d}]`));
      } else if (k.arg === TENSOR_KEY.data) {
        if (data !== undefined) throw new ModelError('invalid', `${what}: key 2 (data) appears twice`, name ?? `#${i}`);
        const dh = r.expect(2, `${what} data`);
        r.need(dh.arg, `${what} data`);
        data = { at: r.pos, len: dh.arg };
        r.pos += dh.arg;
      } else {
        throw new ModelError('invalid', `${what}: unknown key ${k.arg}: keys are 0 (name), 1 (shape), 2 (data)`, name ?? `#${i}`);
      }
    }
    if (name === undefined) throw new ModelError('invalid', `${what}: key 0 (name) is missing`, `#${i}`);
    if (shape === undefined) throw new ModelError('invalid', `${what}: key 1 (shape) is missing`, name);
    if (data === undefined) throw new ModelError('invalid', `${what}: key 2 (data) is missing`, name);
    const n = elementCount(shape);
    total += n;
    if (total > l.maxElements) throw new ModelError('too_large', `${what}: shape ${JSON.stringify(shape)} brings the model past ${l.maxElements} elements`, name);
    if (data.len !== 4 * n) throw new ModelError('invalid', `${what}: data is ${data.len} bytes, shape ${JSON.stringify(shape)} needs ${4 * n} (4 × ${n} float32)`, name);
    const view = r.b.subarray(data.at, data.at + data.len);
    if (l.checkFinite) {
      const k = firstNonFiniteLE(view);
      if (k >= 0) throw new ModelError('non_finite', `tensor '${name}': value ${readFloat32LE(view, k)} at index ${k} is not finite`, name);
    }
    out.push({ name, shape, bytes: view });
  }
  return out;
}

function readMeta(r: Reader, l: Required<ModelLimits>): ModelMeta {
  const h = r.expect(5, 'meta (key 2)');
  if (h.arg > l.maxMetaEntries) throw new ModelError('too_large', `meta has ${h.arg} entries, more than ${l.maxMetaEntries}`);
  const out: ModelMeta = {};
  for (let e = 0; e < h.arg; e++) {
    const k = r.text('meta key', l.maxMetaLength);
    const vh = r.head(`meta ${JSON.stringify(k)}`);
    let v: string | number;
    if (vh.major === 0) v = vh.arg;
    else if (vh.major === 1) v = -1 - vh.arg;
    else if (vh.major === 3) {
      if (vh.arg > l.maxMetaLength) throw new ModelError('too_large', `meta ${JSON.stringify(k)}: text longer than ${l.maxMetaLength} bytes`);
      v = r.textBody(vh, `meta ${JSON.stringify(k)}`);
    } else if (vh.major === 7) v = r.float(vh, `meta ${JSON.stringify(k)}`);
    else throw new ModelError('invalid', `meta ${JSON.stringify(k)}: must be text or a number, not ${MAJOR_NAMES[vh.major]}`);
    setMeta(out, k, v, l);
  }
  return out;
}

// ---------------------------------------------------------------- JSON form

/**
 * The shortest decimal that reads back as the same float32 (0.1f is written
 * 0.1, not 0.10000000149011612). The JSON form is for people and small
 * models: this costs up to nine toPrecision() calls per value.
 */
export function shortestFloat32(v: number): number {
  if (!Number.isFinite(v) || v === 0) return v === 0 ? 0 : v;
  for (let p = 1; p < 9; p++) {
    const x = Number(v.toPrecision(p));
    if (Math.fround(x) === v) return x;
  }
  return Number(v.toPrecision(9)); // nine significant digits always read back as the same float32
}

/** The JSON form; numbers are the shortest decimals that read back as the same float32. */
export function modelToJson(m: Model): ModelJson {
  validateModel(m);
  const out: ModelJson = {
    format: MODEL_FORMAT,
    tensors: m.tensors.map((t) => ({ name: t.name, shape: [...t.shape], data: Array.from(t.data, shortestFloat32) })),
  };
  if (m.meta !== undefined) out.meta = { ...m.meta };
  return out;
}

/**
 * Reads the JSON form (an object, or its text), with the same validation as
 * decodeModel. Unknown fields are ignored. Numbers are rounded to float32; one
 * that overflows float32 is refused as non-finite.
 */
export function modelFromJson(json: unknown, limits?: ModelLimits): Model {
  const l = limitsOf(limits);
  let j = json;
  if (typeof j === 'string') {
    if (j.length > l.maxBytes) throw new ModelError('too_large', `${j.length} characters, more than ${l.maxBytes}`);
    try {
      j = JSON.parse(j);
    } catch (e) {
      throw new ModelError('malformed', `JSON does not parse: ${(e as Error).message}`);
    }
  }
  if (j === null || typeof j !== 'object' || Array.isArray(j)) throw new ModelError('invalid', 'a model must be a JSON object');
  const o = j as Record<string, unknown>;
  if (o.format !== MODEL_FORMAT) throw new ModelError('invalid', `format must be ${JSON.stringify(MODEL_FORMAT)}, not ${JSON.stringify(o.format)}`);
  if (!Array.isArray(o.tensors)) throw new ModelError('invalid', 'tensors must be an array');
  if (o.tensors.length > l.maxTensors) throw new ModelError('too_large', `${o.tensors.length} tensors, more than ${l.maxTensors}`);
  const names = new Set<string>();
  const tensors: Tensor[] = [];
  let total = 0;
  for (const [i, t] of (o.tensors as unknown[]).entries()) {
    if (t === null || typeof t !== 'object' || Array.isArray(t)) throw new ModelError('invalid', `tensor #${i}: must be an object`, `#${i}`);
    const tt = t as Record<string, unknown>;
    const name = checkName(tt.name, i, l);
    if (names.has(name)) throw new ModelError('invalid', `tensor '${name}': name appears twice (tensor #${i})`, name);
    names.add(name);
    const shape = [...checkShape(tt.shape, name, l)];
    const n = elementCount(shape);
    total += n;
    if (total > l.maxElements) throw new ModelError('too_large', `tensor '${name}': shape ${JSON.stringify(shape)} brings the model past ${l.maxElements} elements`, name);
    if (!Array.isArray(tt.data)) throw new ModelError('invalid', `tensor '${name}': data must be an array of numbers`, name);
    if (tt.data.length !== n) throw new ModelError('invalid', `tensor '${name}': data has ${tt.data.length} values, shape ${JSON.stringify(shape)} needs ${n}`, name);
    const data = new Float32Array(n);
    for (let k = 0; k < n; k++) {
      const x = (tt.data as unknown[])[k];
      if (typeof x !== 'number') throw new ModelError('invalid', `tensor '${name}': data[${k}] is not a number`, name);
      const f = Math.fround(x);
      if (l.checkFinite && !Number.isFinite(f)) throw new ModelError('non_finite', `tensor '${name}': value ${x} at index ${k} is not a finite float32`, name);
      data[k] = f;
    }
    tensors.push({ name, shape, data });
  }
  const m: Model = { format: MODEL_FORMAT, tensors };
  if (o.meta !== undefined) m.meta = checkMeta(o.meta, l);
  return m;
}
