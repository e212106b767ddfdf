// The FL model format: CBOR and JSON round trips, the little-endian bytes by
// hand, every validation error, fuzzed input that must only ever give
// ModelError, and an independent reader: Debian's python3-cbor2 (run as
// /usr/bin/python3) with struct.unpack('<f', ...), both ways.

import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Encoder } from 'cbor-x';
import {
  decodeModel,
  decodeModelView,
  encodeModel,
  firstNonFinite,
  MODEL_FORMAT,
  ModelError,
  modelDigest,
  modelFromJson,
  modelToJson,
  paramCount,
  sameShape,
  shortestFloat32,
  validateModel,
  type Model,
  type ModelErrorReason,
  type ModelLimits,
} from '../protocol/model-format.ts';
import { seeded as rng } from './helpers/seeded.ts';

const PYTHON = '/usr/bin/python3';

// The project's plain-CBOR encoder (protocol/codec.ts), to build bad inputs and compare bytes.
const cborx = new Encoder({ useRecords: false, variableMapSize: true, useTag259ForMaps: false, tagUint8Array: false } as ConstructorParameters<typeof Encoder>[0]);
const cbor = (v: unknown): Uint8Array => cborx.encode(v);
const le = (...xs: number[]) => new Uint8Array(new Float32Array(xs).buffer);
const tensorMap = (name: unknown, shape: unknown, data: unknown) =>
  new Map<number, unknown>([
    [0, name],
    [1, shape],
    [2, data],
  ]);
const modelMap = (tensors: unknown[], extra: [number, unknown][] = []) =>
  new Map<number, unknown>([
    [0, 1],
    [1, tensors],
    ...extra,
  ]);


const SPECIAL = [0, -0, 1, -1, 0.1, -2.5, 1e-45, 1.1754943508222875e-38, 3.4028234663852886e38, -3.4028234663852886e38, 123456.7890625, Math.PI];

function sample(): Model {
  const r = rng(7);
  const big = new Float32Array(3 * 5 * 7);
  for (let i = 0; i < big.length; i++) big[i] = (r() - 0.5) * 10;
  return {
    format: MODEL_FORMAT,
    tensors: [
      { name: 'conv1.weight', shape: [3, 5, 7], data: big },
      { name: 'conv1.bias', shape: [12], data: new Float32Array(SPECIAL) },
      { name: 'scale', shape: [], data: new Float32Array([0.5]) },
      { name: 'empty', shape: [0, 4], data: new Float32Array(0) },
      { name: 'ünïcode/层:0', shape: [1, 1], data: new Float32Array([-7]) },
    ],
    meta: { round: 3, experiment: 'exp-001', lr: 0.01, neg: -40000, big: 2 ** 40 },
  };
}

/** Bitwise equality of the tensors (so -0 and 0 differ), names, shapes and meta. */
function sameModel(t: { true(v: boolean, m?: string): void; deepEqual(a: unknown, b: unknown, m?: string): void }, a: Model, b: Model): void {
  t.deepEqual(a.format, b.format);
  t.deepEqual(
    a.tensors.map((x) => [x.name, x.shape]),
    b.tensors.map((x) => [x.name, x.shape]),
  );
  for (const [i, x] of a.tensors.entries()) {
    const y = b.tensors[i]!;
    t.true(Buffer.compare(Buffer.from(x.data.buffer, x.data.byteOffset, x.data.byteLength), Buffer.from(y.data.buffer, y.data.byteOffset, y.data.byteLength)) === 0, `tensor ${x.name} bits`);
  }
  t.deepEqual(a.meta, b.meta);
}

function throwsModel(t: { throws(f: () => unknown, e?: unknown): unknown; true(v: boolean, m?: string): void; regex(s: string, r: RegExp): void }, f: () => unknown, reason: ModelErrorReason, msg?: RegExp, tensor?: string): void {
  const e = t.throws(f, { instanceOf: ModelError }) as ModelError | undefined;
  if (!e) return;
  t.true(e.reason === reason, `reason ${e.reason} (${e.message}), expected ${reason}`);
  if (msg) t.regex(e.message, msg);
  if (tensor !== undefined) t.true(e.tensor === tensor, `tensor ${e.tensor}, expected ${tensor}`);
}

test('CBOR round trip keeps names, shapes, every float32 bit and meta', (t) => {
  const m = sample();
  const bytes = encodeModel(m);
  sameModel(t, decodeModel(bytes), m);
  t.true(Object.is(decodeModel(bytes).tensors[1]!.data[1], -0));
  t.is(paramCount(m), 105 + 12 + 1 + 0 + 1);
  t.true(sameShape(m, decodeModel(bytes)));
});

test('encoding is deterministic: same model, same bytes and digest, whatever the meta order', (t) => {
  const a = sample();
  const b = sample();
  b.meta = Object.fromEntries(Object.entries(b.meta!).reverse());
  const ea = encodeModel(a);
  t.deepEqual(Buffer.from(ea), Buffer.from(encodeModel(b)));
  t.regex(modelDigest(ea), /^sha256:[0-9a-f]{64}$/);
  t.is(modelDigest(ea), modelDigest(encodeModel(b)));
  b.tensors[0]!.data[0] = Math.fround(b.tensors[0]!.data[0]! + 1);
  t.not(modelDigest(ea), modelDigest(encodeModel(b)));
});

test('the bytes, by hand: integer keys, shape, float32 little-endian', (t) => {
  const m: Model = { format: MODEL_FORMAT, tensors: [{ name: 'x', shape: [2], data: new Float32Array([1, 0.1]) }] };
  const hex = Buffer.from(encodeModel(m)).toString('hex');
  // a2 map(2) | 00 01 version 1 | 01 81 tensors: array(1) | a3 map(3)
  // 00 61 78 name "x" | 01 81 02 shape [2] | 02 48 data: bytes(8)
  // 0000803f = 1.0f LE (0x3f800000) | cdcccc3d = 0.1f LE (0x3dcccccd)
  t.is(hex, 'a2' + '0001' + '0181' + 'a3' + '006178' + '018102' + '0248' + '0000803f' + 'cdcccc3d');
  // meta numbers: safe integers as CBOR integers, others as float64 (never float32)
  const withMeta = Buffer.from(encodeModel({ ...m, meta: { a: 0.1, b: -3, c: 'z' } })).toString('hex');
  t.true(withMeta.endsWith('02a3' + '6161fb3fb999999999999a' + '616222' + '6163617a'), withMeta);
});

test('the same bytes as the project codec (cbor-x, plain RFC 8949) writes for the same structure', (t) => {
  const m: Model = { format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2, 3], data: new Float32Array([1, 2, 3, 4, 5, 6.5]) }, { name: 'b', shape: [3], data: new Float32Array([0.25, -1, 1e-3]) }], meta: { n: 7, s: 'x', f: 0.5 } };
  const viaCborx = cbor(
    modelMap(
      m.tensors.map((x) => tensorMap(x.name, x.shape, new Uint8Array(x.data.buffer))),
      [
        [
          2,
          new Map<string, unknown>([
            ['f', 0.5],
            ['n', 7],
            ['s', 'x'],
          ]),
        ],
      ],
    ),
  );
  t.deepEqual(Buffer.from(encodeModel(m)), Buffer.from(viaCborx));
});

test('decodes tensor data at any alignment (copied into an aligned Float32Array)', (t) => {
  const m = sample();
  const bytes = encodeModel(m);
  for (const shift of [1, 2, 3, 5]) {
    const buf = new Uint8Array(bytes.length + shift);
    buf.set(bytes, shift);
    const d = decodeModel(buf.subarray(shift));
    sameModel(t, d, m);
    for (const x of d.tensors) t.is(x.data.byteOffset % 4, 0);
  }
  // and the decoded arrays do not share the input's memory
  const d = decodeModel(bytes);
  bytes.fill(0);
  t.is(d.tensors[2]!.data[0], 0.5);
});

test('decodeModelView: tensor bytes are views of the input, validated in place', (t) => {
  const m = sample();
  const bytes = encodeModel(m);
  const buf = new Uint8Array(bytes.length + 1);
  buf.set(bytes, 1);
  const v = decodeModelView(buf.subarray(1));
  t.deepEqual(
    v.tensors.map((x) => [x.name, x.shape, x.bytes.length]),
    m.tensors.map((x) => [x.name, x.shape, x.data.byteLength]),
  );
  t.is(v.tensors[0]!.bytes.buffer, buf.buffer);
  t.deepEqual(Buffer.from(v.tensors[1]!.bytes), Buffer.from(m.tensors[1]!.data.buffer));
  t.deepEqual(v.meta, m.meta);
  const nan = cbor(modelMap([T('ok', [1], le(1)), T('w', [3], le(1, 2, NaN))]));
  for (const shift of [0, 1, 2, 3]) {
    const b = new Uint8Array(nan.length + shift);
    b.set(nan, shift);
    throwsModel(t, () => decodeModelView(b.subarray(shift)), 'non_finite', /tensor 'w': value NaN at index 2 is not finite/, 'w');
    t.is(decodeModelView(b.subarray(shift), { checkFinite: false }).tensors.length, 2);
  }
});

test('JSON round trip, with the shortest decimals that read back as the same float32', (t) => {
  const m = sample();
  const j = modelToJson(m);
  t.is(j.format, MODEL_FORMAT);
  t.deepEqual(j.tensors[1]!.data.slice(0, 6), [0, 0, 1, -1, 0.1, -2.5]); // -0 reads 0 in JSON
  t.is(shortestFloat32(Math.fround(0.1)), 0.1);
  t.is(shortestFloat32(Math.fround(1 / 3)), 0.33333334);
  const back = modelFromJson(JSON.stringify(j));
  m.tensors[1]!.data[1] = 0; // the one value JSON does not keep: -0
  sameModel(t, back, m);
  sameModel(t, modelFromJson(j), m);
  t.deepEqual(Buffer.from(encodeModel(back)), Buffer.from(encodeModel(m)));
});

test('JSON form validation', (t) => {
  const ok = { format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2], data: [1, 2] }] };
  t.is(modelFromJson({ ...ok, comment: 'extra fields are ignored' }).tensors.length, 1);
  throwsModel(t, () => modelFromJson('{"format":'), 'malformed', /JSON does not parse/);
  throwsModel(t, () => modelFromJson([]), 'invalid', /JSON object/);
  throwsModel(t, () => modelFromJson({ ...ok, format: 'onnx' }), 'invalid', /format must be/);
  throwsModel(t, () => modelFromJson({ format: MODEL_FORMAT }), 'invalid', /tensors must be an array/);
  throwsModel(t, () => modelFromJson({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [3], data: [1, 2] }] }), 'invalid', /tensor 'w': data has 2 values, shape \[3\] needs 3/, 'w');
  throwsModel(t, () => modelFromJson({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2], data: [1, '2'] }] }), 'invalid', /data\[1\] is not a number/, 'w');
  throwsModel(t, () => modelFromJson({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2], data: [1, 1e39] }] }), 'non_finite', /tensor 'w': value 1e\+39 at index 1 is not a finite float32/, 'w');
  throwsModel(t, () => modelFromJson('{"format":"propeller-model/v1","tensors":[{"name":"w","shape":[1],"data":[null]}]}'), 'invalid', /not a number/);
  throwsModel(t, () => modelFromJson({ format: MODEL_FORMAT, tensors: [ok.tensors[0], ok.tensors[0]] }), 'invalid', /tensor 'w': name appears twice/, 'w');
  throwsModel(t, () => modelFromJson({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [-1], data: [] }] }), 'invalid', /unsigned integers/);
  throwsModel(t, () => modelFromJson({ ...ok, meta: { a: [1] } }), 'invalid', /meta "a"/);
  throwsModel(t, () => modelFromJson(ok, { maxElements: 1 }), 'too_large', /past 1 elements/);
});

test('validateModel and encodeModel refuse bad in-memory models', (t) => {
  const good = (): Model => ({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2], data: new Float32Array([1, 2]) }] });
  t.notThrows(() => validateModel(good()));
  const m1 = good();
  m1.tensors[0]!.data = new Float32Array(3);
  throwsModel(t, () => encodeModel(m1), 'invalid', /tensor 'w': data has 3 values, shape \[2\] needs 2/, 'w');
  const m2 = good();
  m2.tensors[0]!.data[1] = NaN;
  throwsModel(t, () => encodeModel(m2), 'non_finite', /tensor 'w': value NaN at index 1/, 'w');
  t.notThrows(() => decodeModel(encodeModel(m2, { checkFinite: false }), { checkFinite: false }));
  const m3 = good();
  (m3.tensors[0] as { data: unknown }).data = [1, 2];
  throwsModel(t, () => validateModel(m3), 'invalid', /Float32Array/);
  throwsModel(t, () => validateModel({ ...good(), meta: { x: NaN } }), 'invalid', /meta "x"/);
  throwsModel(t, () => validateModel({ ...good(), tensors: [{ name: 'a\u0000b', shape: [], data: new Float32Array(1) }] }), 'invalid', /control character/);
});

// Each entry: a name, the bytes, the reason, a pattern of the message and the tensor it names.
const T = tensorMap;
const bad: [string, () => Uint8Array, ModelErrorReason, RegExp, string?, ModelLimits?][] = [
  ['wrong byte length vs shape', () => cbor(modelMap([T('fc.w', [2, 2], le(1, 2, 3))])), 'invalid', /tensor 'fc\.w': data is 12 bytes, shape \[2,2\] needs 16 \(4 × 4 float32\)/, 'fc.w'],
  ['NaN', () => cbor(modelMap([T('ok', [1], le(1)), T('fc.b', [3], le(1, NaN, 2))])), 'non_finite', /tensor 'fc\.b': value NaN at index 1 is not finite/, 'fc.b'],
  ['-Infinity', () => cbor(modelMap([T('fc.b', [2], le(1, -Infinity))])), 'non_finite', /tensor 'fc\.b': value -Infinity at index 1/, 'fc.b'],
  ['duplicate names', () => cbor(modelMap([T('w', [1], le(1)), T('w', [1], le(2))])), 'invalid', /tensor 'w': name appears twice \(tensor #1\)/, 'w'],
  ['too many tensors', () => cbor(modelMap([T('a', [1], le(1)), T('b', [1], le(1)), T('c', [1], le(1))])), 'too_large', /3 tensors, more than 2/, undefined, { maxTensors: 2 }],
  ['too many elements', () => cbor(modelMap([T('a', [3], le(1, 2, 3)), T('b', [3], le(1, 2, 3))])), 'too_large', /tensor 'b': shape \[3\] brings the model past 5 elements/, 'b', { maxElements: 5 }],
  ['a huge shape, before any allocation', () => cbor(modelMap([T('a', [65536, 65536, 65536], le(1))])), 'too_large', /tensor 'a': shape \[65536,65536,65536\] brings the model past/, 'a'],
  ['too many dimensions', () => cbor(modelMap([T('a', [1, 1, 1], le(1))])), 'too_large', /tensor 'a': shape has 3 dimensions, more than 2/, 'a', { maxRank: 2 }],
  ['name too long', () => cbor(modelMap([T('abcdef', [1], le(1))])), 'too_large', /tensor #0: name of 6 bytes is longer than 4/, '#0', { maxNameLength: 4 }],
  ['input too large', () => cbor(modelMap([T('a', [1], le(1))])), 'too_large', /bytes, more than 8/, undefined, { maxBytes: 8 }],
  ['trailing bytes', () => Buffer.concat([cbor(modelMap([T('a', [1], le(1))])), Buffer.from([0])]), 'malformed', /1 trailing bytes after the model/],
  ['truncated', () => cbor(modelMap([T('a', [2], le(1, 2))])).subarray(0, 20), 'malformed', /truncated: tensor 'a' data needs 8 bytes/],
  ['empty input', () => new Uint8Array(0), 'malformed', /truncated/],
  ['not a map', () => cbor([1, 2]), 'malformed', /not a CBOR map \(first byte 0x82: an array\)/],
  ['JSON bytes', () => Buffer.from('{"format":"propeller-model/v1"}'), 'malformed', /not a CBOR map \(first byte 0x7b/],
  ['a tag', () => Buffer.concat([Buffer.from([0xa2, 0x00, 0xc1]), Buffer.from('01', 'hex')]), 'malformed', /tags are not allowed/],
  ['a typed-array tag on data', () => Buffer.from('a20001018 1a3006161018101 02d8554400 00803f'.replaceAll(' ', ''), 'hex'), 'malformed', /tags are not allowed/],
  ['indefinite-length map', () => Buffer.from('bf0001ff', 'hex'), 'malformed', /indefinite lengths are not allowed/],
  ['indefinite-length byte string', () => Buffer.from('a20001018 1a3006161018101 025f4400 00803fff'.replaceAll(' ', ''), 'hex'), 'malformed', /indefinite lengths/],
  ['reserved additional info', () => Buffer.from('a2001c', 'hex'), 'malformed', /reserved additional information 28/],
  ['length beyond 2^53', () => Buffer.from('a2005bffffffffffffffff', 'hex'), 'malformed', /beyond 2\^53/],
  ['text keys (the JSON names in CBOR)', () => cbor(new Map<string, unknown>([['format', MODEL_FORMAT]])), 'invalid', /not a text string \("format": the compact form has integer keys/],
  ['unknown model key', () => cbor(modelMap([], [[7, 1]])), 'invalid', /unknown model key 7/],
  ['duplicate model key', () => Buffer.from('a3000100010180', 'hex'), 'invalid', /model key 0 \(version\) appears twice/],
  ['missing version', () => cbor(new Map([[1, []]])), 'invalid', /key 0 \(version\) is missing/],
  ['missing tensors', () => cbor(new Map([[0, 1]])), 'invalid', /key 1 \(tensors\) is missing/],
  ['unsupported version', () => cbor(new Map<number, unknown>([[0, 2], [1, []]])), 'invalid', /unsupported format version 2/],
  ['version not an integer', () => cbor(new Map<number, unknown>([[0, '1'], [1, []]])), 'invalid', /version \(key 0\) must be an unsigned integer, not a text string/],
  ['tensors not an array', () => cbor(new Map<number, unknown>([[0, 1], [1, new Map()]])), 'invalid', /tensors \(key 1\) must be an array, not a map/],
  ['tensor not a map', () => cbor(modelMap([[1, 2]])), 'invalid', /tensor #0 must be a map, not an array/],
  ['tensor missing data', () => cbor(modelMap([new Map<number, unknown>([[0, 'w'], [1, [1]]])])), 'invalid', /tensor 'w': key 2 \(data\) is missing/, 'w'],
  ['tensor missing name', () => cbor(modelMap([new Map<number, unknown>([[1, [1]], [2, le(1)]])])), 'invalid', /tensor #0: key 0 \(name\) is missing/, '#0'],
  ['tensor unknown key', () => cbor(modelMap([new Map<number, unknown>([[0, 'w'], [1, [1]], [3, 0]])])), 'invalid', /tensor 'w': unknown key 3/, 'w'],
  ['tensor duplicate key', () => Buffer.from('a2000101 81a3 006177 006177 018101'.replaceAll(' ', ''), 'hex'), 'invalid', /tensor 'w': key 0 \(name\) appears twice/, 'w'],
  ['empty name', () => cbor(modelMap([T('', [1], le(1))])), 'invalid', /tensor #0: name is empty/, '#0'],
  ['name not text', () => cbor(modelMap([T(5, [1], le(1))])), 'invalid', /tensor #0 name must be a text string, not an unsigned integer/],
  ['name not UTF-8', () => cbor(modelMap([T(Buffer.from([0xff]).toString('latin1'), [1], le(1))])), 'malformed', /invalid UTF-8/],
  ['shape not unsigned', () => cbor(modelMap([T('w', [-1], le())])), 'invalid', /tensor 'w' shape\[0\] must be an unsigned integer, not a negative integer/],
  ['data as an array of numbers', () => cbor(modelMap([T('w', [1], [1.5])])), 'invalid', /tensor 'w' data must be a byte string, not an array/],
  ['meta value a boolean', () => cbor(modelMap([], [[2, new Map([['x', true]])]])), 'invalid', /meta "x": simple value 21/],
  ['meta NaN', () => cbor(modelMap([], [[2, new Map([['x', NaN]])]])), 'invalid', /meta "x": must be text or a finite number/],
  ['meta key not text', () => cbor(modelMap([], [[2, new Map([[1, 1]])]])), 'invalid', /meta key must be a text string/],
  ['meta __proto__', () => cbor(modelMap([], [[2, new Map([['__proto__', 1]])]])), 'invalid', /__proto__ is reserved/],
];

for (const [name, bytes, reason, msg, tensor, limits] of bad) {
  test(`refused: ${name}`, (t) => {
    let b = bytes();
    if (name === 'name not UTF-8') {
      // cbor-x writes the latin1 string as valid UTF-8; put a lone 0xff in its place.
      const i = Buffer.from(b).indexOf(Buffer.from([0x62, 0xc3, 0xbf]));
      b = Buffer.concat([b.subarray(0, i), Buffer.from([0x61, 0xff]), b.subarray(i + 3)]);
    }
    throwsModel(t, () => decodeModel(b, limits), reason, msg, tensor);
  });
}

test('checkFinite: false lets NaN and Infinity through', (t) => {
  const m = decodeModel(cbor(modelMap([T('w', [2], le(NaN, Infinity))])), { checkFinite: false });
  t.true(Number.isNaN(m.tensors[0]!.data[0]));
  t.is(m.tensors[0]!.data[1], Infinity);
});

test('a CBOR float16/float32 meta value is read (written by other encoders)', (t) => {
  const b = Buffer.from(Buffer.from(cbor(modelMap([]))).toString('hex').replace(/^a2/, 'a3') + '02a2' + '6168f93e00' + '6166fa3fc00000', 'hex');
  t.deepEqual(decodeModel(b).meta, { h: 1.5, f: 1.5 });
});

test('fuzz: random, truncated and mutated bytes give a Model or a ModelError, nothing else', (t) => {
  const r = rng(42);
  const valid = encodeModel(sample());
  const inputs: Uint8Array[] = [];
  for (let n = 0; n < valid.length; n++) inputs.push(valid.subarray(0, n));
  for (let i = 0; i < 3000; i++) {
    const b = Uint8Array.from(valid);
    const flips = 1 + Math.floor(r() * 4);
    for (let k = 0; k < flips; k++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
    inputs.push(b);
  }
  for (let i = 0; i < 3000; i++) {
    const b = new Uint8Array(Math.floor(r() * 64));
    for (let k = 0; k < b.length; k++) b[k] = Math.floor(r() * 256);
    if (b.length > 0 && r() < 0.5) b[0] = 0xa0 | Math.floor(r() * 4); // often a map head, to get further in
    inputs.push(b);
  }
  let errors = 0;
  let models = 0;
  for (const b of inputs) {
    try {
      decodeModel(b);
      models++;
    } catch (e) {
      if (!(e instanceof ModelError)) return t.fail(`${(e as Error).name}: ${(e as Error).message} for ${Buffer.from(b).toString('hex').slice(0, 120)}`);
      errors++;
    }
  }
  t.true(errors > 0 && errors + models === inputs.length);
  for (const s of ['', '[', 'null', '{"tensors":5}', '{"format":"propeller-model/v1","tensors":[null]}']) {
    t.throws(() => modelFromJson(s), { instanceOf: ModelError });
  }
});

// ---------------------------------------------------------------- python3-cbor2

const READ_SCRIPT = String.raw`
import sys, json, struct, cbor2
b = bytes.fromhex(sys.stdin.read().strip())
m = cbor2.loads(b)
assert isinstance(m, dict) and set(m) <= {0, 1, 2}, m.keys()
out = {"version": m[0], "tensors": [], "meta": m.get(2)}
for t in m[1]:
    assert set(t) == {0, 1, 2} and isinstance(t[2], bytes)
    n = len(t[2]) // 4
    vals = [struct.unpack('<f', t[2][4*i:4*i+4])[0] for i in range(n)]
    out["tensors"].append({"name": t[0], "shape": t[1], "values": vals, "nbytes": len(t[2])})
print(json.dumps(out))
`;

// A model written by another encoder, the way a C or Python client would: struct.pack('<f').
const WRITE_SCRIPT = String.raw`
import struct, cbor2, sys
w = [0.1, -2.5, 3.0e38, 1e-45, -0.0, 7.0]
m = {0: 1, 1: [{0: "dense/kernel", 1: [2, 3], 2: struct.pack('<6f', *w)}, {0: "dense/bias", 1: [3], 2: struct.pack('<3f', 1.0, 2.0, 3.0)}], 2: {"round": 4, "client": "py"}}
sys.stdout.write(cbor2.dumps(m).hex())
`;

function cbor2Missing(): string | undefined {
  const r = spawnSync(PYTHON, ['-c', 'import cbor2'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} cannot run: ${r.error.message}`;
  if (r.status !== 0) return `${PYTHON} cannot import cbor2: ${r.stderr.trim().split('\n').at(-1)}`;
  return undefined;
}

const skipCbor2 = process.env.PROPELLER_SKIP_CBOR2 === '1';
const missing = cbor2Missing();
const needCbor2 = (t: { pass(m?: string): void }): boolean => {
  if (!missing) return true;
  if (skipCbor2) {
    t.pass(`skipped (PROPELLER_SKIP_CBOR2=1): ${missing}`);
    return false;
  }
  throw new Error(`${missing}. Install Debian's package python3-cbor2 (apt-get install python3-cbor2), or set PROPELLER_SKIP_CBOR2=1 to skip this test`);
};

test('python3-cbor2 reads our CBOR: names, shapes, float32 values via struct.unpack("<f")', (t) => {
  if (!needCbor2(t)) return;
  const m = sample();
  const out = execFileSync(PYTHON, ['-c', READ_SCRIPT], { input: Buffer.from(encodeModel(m)).toString('hex'), encoding: 'utf8' });
  const py = JSON.parse(out) as { version: number; meta: unknown; tensors: { name: string; shape: number[]; values: number[]; nbytes: number }[] };
  t.is(py.version, 1);
  t.deepEqual(py.meta, m.meta);
  t.deepEqual(
    py.tensors.map((x) => [x.name, x.shape, x.nbytes]),
    m.tensors.map((x) => [x.name, x.shape, x.data.byteLength]),
  );
  for (const [i, x] of m.tensors.entries()) {
    const got = py.tensors[i]!.values;
    t.is(got.length, x.data.length);
    for (let k = 0; k < got.length; k++) if (!Object.is(got[k], x.data[k])) return t.fail(`${x.name}[${k}]: python read ${got[k]}, we wrote ${x.data[k]}`);
  }
});

test('we read CBOR written by python3-cbor2 with struct.pack("<f")', (t) => {
  if (!needCbor2(t)) return;
  const hex = execFileSync(PYTHON, ['-c', WRITE_SCRIPT], { encoding: 'utf8' });
  const m = decodeModel(Buffer.from(hex, 'hex'));
  t.deepEqual(
    m.tensors.map((x) => [x.name, x.shape]),
    [
      ['dense/kernel', [2, 3]],
      ['dense/bias', [3]],
    ],
  );
  t.deepEqual([...m.tensors[0]!.data], [0.1, -2.5, 3.0e38, 1e-45, -0, 7].map(Math.fround));
  t.true(Object.is(m.tensors[0]!.data[4], -0));
  t.deepEqual([...m.tensors[1]!.data], [1, 2, 3]);
  t.deepEqual(m.meta, { round: 4, client: 'py' });
});

test('docs/fl.md carries the bytes encodeModel writes for its example', (t) => {
  const doc = readFileSync(new URL('../docs/fl.md', import.meta.url), 'utf8');
  const block = /<!-- example-model: start -->([\s\S]*?)<!-- example-model: end -->/.exec(doc);
  if (!block) return t.fail('docs/fl.md has no example-model block');
  const hex = [...block[1]!.matchAll(/^ +((?:[0-9a-f]{2} )*[0-9a-f]{2})(?= {2,}|$)/gm)].map((x) => x[1]!.replaceAll(' ', '')).join('');
  t.is(hex, Buffer.from(encodeModel(DOC_EXAMPLE)).toString('hex'));
  const m = decodeModel(Buffer.from(hex, 'hex'));
  sameModel(t, m, DOC_EXAMPLE);
});

const DOC_EXAMPLE: Model = {
  format: MODEL_FORMAT,
  tensors: [
    { name: 'w', shape: [2], data: new Float32Array([1.5, -2]) },
    { name: 'b', shape: [], data: new Float32Array([0.1]) },
  ],
  meta: { round: 3 },
};

test('firstNonFinite finds the first NaN or ±Infinity wherever it is, block edges and ranges included', (t) => {
  const x = new Float32Array(10_000).map((_, i) => (i % 2 ? -3.4e38 : 3.4e38)); // finite, huge: no sum of them may raise an alarm
  t.is(firstNonFinite(x), -1);
  for (const bad of [NaN, Infinity, -Infinity]) {
    for (const at of [0, 1, 1023, 1024, 1025, 4096, 9215, 9216, 9999]) {
      const y = x.slice();
      y[at] = bad;
      t.is(firstNonFinite(y), at, `${bad} at ${at}`);
      t.is(firstNonFinite(y, at + 1), -1, `after ${at}`);
      t.is(firstNonFinite(y, 0, at), -1, `before ${at}`);
      if (at >= 3) t.is(firstNonFinite(y, 3), at, `from 3 to ${at}`);
    }
  }
  const z = x.slice();
  z[2000] = Infinity;
  z[2001] = -Infinity; // Inf + -Inf is NaN: still found, the first of them
  z[5000] = NaN;
  t.is(firstNonFinite(z), 2000);
  t.is(firstNonFinite(z, 2002), 5000);
});
