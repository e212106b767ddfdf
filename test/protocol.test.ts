import test from 'ava';
import { randomBytes, randomUUID } from 'node:crypto';
import { Decoder } from 'cbor-x';
import {
  claimedSender,
  crc32,
  decode,
  decodeRaw,
  limitsOf,
  MAX_PAYLOAD,
  detectEncoding,
  encode,
  encodeCbor,
  FIELDS,
  ProtocolError,
  type Alive,
  type MessageByKind,
  type MessageKind,
  type Register,
  type Result,
  type Start,
} from '../protocol/index.ts';
import { check, checkStruct } from '../protocol/schema.ts';
import { checkCborStructure } from '../protocol/structure.ts';

const uuid = '8b1c9e9e-3f0e-4c4a-9e1d-0f5d2b7c1a11';

const samples: { [K in MessageKind]: MessageByKind[K] } = {
  'proplet.create': {
    v: 1,
    proplet_id: uuid,
    name: 'esp32 kitchen',
    device_type: 'esp32',
    capabilities: ['wasm', 'sensor'],
    labels: { floor: '2' },
    capacity: { cpu_millis: 240, memory_bytes: 65536, max_tasks: 1 },
    encoding: 'cbor',
    addressing: 'direct',
    running: [{ task_id: 't1', attempt: 2 }],
    proplet_type: 'external',
  },
  'proplet.alive': { v: 1, proplet_id: uuid, status: 'alive', running_tasks: 1, memory_used: 12345 },
  'proplet.results': { proplet_id: 'p1', task_id: uuid, attempt: 1, status: 'completed', results: { sum: 5, list: [1, 'a'] }, stdout: 'hi\n', exit_code: 0, duration_ms: 1.5 },
  'proplet.metrics': { proplet_id: 'p1', cpu_percent: 12.5, memory_used: 1000, metrics: { temp: 21.5 } },
  'manager.start': {
    v: 1,
    id: uuid,
    name: 'add',
    proplet_id: 'p1',
    attempt: 1,
    file: new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]),
    cli_args: ['--x', '1'],
    inputs: [2, 3],
    env: { A: 'b' },
    daemon: false,
    timeout_ms: 1000,
  },
  'manager.stop': { id: uuid, proplet_id: 'p1' },
  'registry.proplet': { proplet_id: 'p1', digest: 'sha256:abc', chunk_size: 512, next: 3, window: 4, missing: [1, 2] },
  'registry.server': { digest: 'sha256:abc', idx: 0, total: 3, data: new Uint8Array([1, 2, 3]), crc32: 123456 },
  'fl.update': { v: 1, proplet_id: 'p1', round_id: 'round-1-job', task_id: uuid, num_samples: 40, metrics: { loss: 0.5 }, parts: 2, part: 1, tensor: 0, offset: 8, data: new Uint8Array(8) },
};

for (const kind of Object.keys(samples) as MessageKind[]) {
  for (const enc of ['json', 'cbor'] as const) {
    test(`round trip ${kind} as ${enc}`, (t) => {
      const bytes = encode(kind, samples[kind], enc);
      t.is(detectEncoding(bytes), enc);
      const { msg, encoding } = decode(kind, bytes);
      t.is(encoding, enc);
      t.deepEqual(norm(msg), norm(samples[kind]));
    });
  }
}

// Uint8Array vs Buffer compare by content
function norm(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x) => (x instanceof Uint8Array || (x && x.type === 'Buffer') ? Buffer.from(x.data ?? x).toString('hex') : x)));
}

test('a Propeller-style JSON heartbeat and registration decode unchanged', (t) => {
  const alive = decode('proplet.alive', Buffer.from(JSON.stringify({ proplet_id: 'py-1', status: 'alive' })));
  t.deepEqual(alive.msg, { proplet_id: 'py-1', status: 'alive' });
  const reg = decode('proplet.create', Buffer.from(JSON.stringify({ proplet_id: 'py-1', device_type: 'python-worker', capabilities: ['wasm', 'python'], extra: 1 })));
  t.deepEqual(reg.msg, { proplet_id: 'py-1', device_type: 'python-worker', capabilities: ['wasm', 'python'] });
  const res = decode('proplet.results', Buffer.from(JSON.stringify({ proplet_id: 'py-1', task_id: 't', results: [42] })));
  t.deepEqual(res.msg.results, [42]);
});

test('heartbeat sizes: compact CBOR is at most 48 bytes', (t) => {
  const id = randomUUID();
  const propellerJson = Buffer.from(JSON.stringify({ proplet_id: id, status: 'alive' }));
  const plainCbor = encodeCbor({ proplet_id: id, status: 'alive', running_tasks: 1, memory_used: 48000 });
  const hb: Alive = { v: 1, proplet_id: id, status: 'alive', running_tasks: 1, memory_used: 48000 };
  const compactWithId = encode('proplet.alive', hb, 'cbor');
  const compactIdInTopic = encode('proplet.alive', hb, 'cbor', { omitSender: true });
  t.log(`Propeller JSON heartbeat: ${propellerJson.length} B; plain CBOR with names: ${plainCbor.length} B`);
  t.log(`compact CBOR with binary id: ${compactWithId.length} B (${compactWithId.toString('hex')})`);
  t.log(`compact CBOR, id in topic: ${compactIdInTopic.length} B (${compactIdInTopic.toString('hex')})`);
  t.true(compactWithId.length <= 48);
  t.true(compactIdInTopic.length <= 48);
  t.true(plainCbor.length > 48);
  // the id-in-topic form decodes with the id taken from the topic
  t.is(decode('proplet.alive', compactIdInTopic, { propletId: id }).msg.proplet_id, id);
  t.throws(() => decode('proplet.alive', compactIdInTopic), { instanceOf: ProtocolError, message: /proplet_id: is required/ });
});

test('a payload id that disagrees with the topic id is refused', (t) => {
  const bytes = encode('proplet.alive', { proplet_id: 'a' }, 'json');
  const e = t.throws(() => decode('proplet.alive', bytes, { propletId: 'b' }), { instanceOf: ProtocolError });
  t.is(e?.reason, 'id_mismatch');
});

const invalid: [string, MessageKind, string | Uint8Array, RegExp][] = [
  ['missing id', 'proplet.alive', '{"status":"alive"}', /proplet_id: is required/],
  ['wrong type', 'proplet.alive', '{"proplet_id":5}', /proplet_id: must be an id/],
  ['wildcard in id', 'proplet.create', '{"proplet_id":"a/b"}', /proplet_id/],
  ['bad enum', 'proplet.create', '{"proplet_id":"a","encoding":"xml"}', /encoding: must be one of json, cbor/],
  ['bad nested', 'proplet.create', '{"proplet_id":"a","capacity":{"max_tasks":-1}}', /capacity.max_tasks/],
  ['capabilities not strings', 'proplet.create', '{"proplet_id":"a","capabilities":[1]}', /capabilities\[0\]/],
  ['float where int', 'proplet.alive', '{"proplet_id":"a","running_tasks":1.5}', /running_tasks: must be an integer/],
  ['not base64', 'manager.start', '{"id":"t","file":"%%%"}', /file: must be base64/],
  ['env not strings', 'manager.start', '{"id":"t","env":{"A":1}}', /env.A/],
  ['proto key', 'manager.start', '{"id":"t","env":{"__proto__":"x"}}', /reserved key/],
  ['array top level', 'proplet.alive', '[1,2]', /neither a JSON object nor a CBOR map/],
  ['truncated JSON', 'proplet.alive', '{"proplet_id":"a"', /JSON does not parse/],
  ['newer version', 'proplet.alive', '{"v":9,"proplet_id":"a"}', /newer/],
  ['unknown compact key', 'proplet.alive', encodeCbor(new Map<number, unknown>([[1, "a"], [99, 1]])), /99: unknown field/],
  ['truncated CBOR', 'proplet.alive', encode('proplet.alive', { proplet_id: 'abc', memory_used: 100000 }, 'cbor').subarray(0, 6), /CBOR does not parse/],
  ['non-finite', 'proplet.results', encodeCbor(new Map<number, unknown>([[1, 'a'], [2, 't'], [10, NaN]])), /duration_ms: must be a finite number/],
];
for (const [name, kind, payload, re] of invalid) {
  test(`rejects ${name}`, (t) => {
    const bytes = typeof payload === 'string' ? Buffer.from(payload) : payload;
    const e = t.throws(() => decode(kind, bytes), { instanceOf: ProtocolError });
    t.regex(e!.message, re);
  });
}

test('oversized payloads are refused before parsing', (t) => {
  const big = Buffer.alloc(70 * 1024, 0x20);
  big[0] = 0x7b;
  const e = t.throws(() => decode('proplet.alive', big), { instanceOf: ProtocolError });
  t.is(e?.reason, 'too_large');
});

test('claimedSender reads the id without full validation', (t) => {
  t.is(claimedSender('proplet.alive', encode('proplet.alive', { proplet_id: 'p9', memory_used: 1 }, 'cbor')), 'p9');
  t.is(claimedSender('proplet.alive', Buffer.from('{"proplet_id":"p9"}')), 'p9');
  t.is(claimedSender('proplet.alive', Buffer.from('{"status":"alive"}')), undefined);
  t.true(claimedSender('proplet.alive', Buffer.from('garbage')) instanceof ProtocolError);
  t.is(claimedSender('manager.start', Buffer.from('{}')), undefined);
});

// Fuzz: random and truncated bytes never throw anything but ProtocolError, and
// whatever is accepted passes validation again.
test('fuzz: decoders never throw out and accept only valid messages', (t) => {
  const kinds = Object.keys(FIELDS) as MessageKind[];
  let seed = 42;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  let accepted = 0;
  let rejected = 0;
  const corpus: Uint8Array[] = [];
  for (const kind of kinds) {
    for (const enc of ['json', 'cbor'] as const) corpus.push(encode(kind, samples[kind], enc));
  }
  for (let i = 0; i < 4000; i++) {
    let bytes: Uint8Array;
    const base = corpus[Math.floor(rnd() * corpus.length)]!;
    const mode = i % 4;
    if (mode === 0) bytes = randomBytes(1 + Math.floor(rnd() * 64));
    else if (mode === 1) bytes = base.subarray(0, Math.floor(rnd() * base.length));
    else {
      bytes = Buffer.from(base);
      const flips = 1 + Math.floor(rnd() * 4);
      for (let f = 0; f < flips; f++) bytes[Math.floor(rnd() * bytes.length)] = Math.floor(rnd() * 256);
      if (mode === 3) bytes[0] = 0xa0 | Math.floor(rnd() * 32);
    }
    const kind = kinds[i % kinds.length]!;
    try {
      const { msg, encoding } = decode(kind, bytes);
      accepted++;
      // re-encode and decode again: what was accepted is valid
      t.notThrows(() => decode(kind, encode(kind, msg as never, encoding)));
    } catch (e) {
      if (!(e instanceof ProtocolError)) t.fail(`${kind}: non-protocol error ${(e as Error)?.stack}`);
      rejected++;
    }
  }
  t.log(`fuzz: ${accepted} accepted, ${rejected} rejected`);
  t.true(rejected > 0);
});

test('compact CBOR uses integer keys and binary UUIDs', (t) => {
  const start: Start = { id: uuid, proplet_id: uuid, name: 'x' };
  const bytes = encode('manager.start', start, 'cbor');
  // a3 (map of 3) 01 50 <16 bytes> 02 61 78 03 50 <16 bytes>
  t.is(bytes[0], 0xa3);
  t.is(bytes[1], 0x01);
  t.is(bytes[2], 0x50);
  t.is(bytes.length, 1 + (1 + 17) + (1 + 2) + (1 + 17));
  const reg: Register = { proplet_id: 'p', encoding: 'cbor' };
  t.is(encode('proplet.create', reg, 'cbor').toString('hex'), 'a2' + '01' + '6170' + '08' + '01');
  const r: Result = { proplet_id: 'p', task_id: 't', status: 'failed' };
  t.deepEqual(decode('proplet.results', encode('proplet.results', r, 'cbor')).msg, r);
});

test('integers past 32 bits are CBOR integers, not floats, so a C decoder reads them as uint64', (t) => {
  const big = 8 * 2 ** 30;
  const bytes = encode('proplet.create', { proplet_id: 'p', capacity: { memory_bytes: big } }, 'cbor');
  t.true(bytes.toString('hex').includes('1b0000000200000000'));
  t.false(bytes.toString('hex').includes('fb'));
  t.is(decode('proplet.create', bytes).msg.capacity?.memory_bytes, big);
});

test('crc32 matches the IEEE/zlib check value', (t) => {
  t.is(crc32(Buffer.from('123456789')), 0xcbf43926);
  t.is(crc32(new Uint8Array(0)), 0);
  // incremental use gives the same value
  t.is(crc32(Buffer.from('6789'), crc32(Buffer.from('12345'))), 0xcbf43926);
});

// ---- one field, one value: duplicate and aliased keys ----

/** A CBOR map written pair by pair, so that a key may appear twice. */
function cborPairs(pairs: [unknown, unknown][]): Buffer {
  const n = pairs.length;
  const head = n < 24 ? Buffer.from([0xa0 | n]) : Buffer.from([0xb8, n]);
  return Buffer.concat([head, ...pairs.flatMap(([k, v]) => [encodeCbor(k), encodeCbor(v)])]);
}

const twice: [string, MessageKind, Uint8Array][] = [
  ['CBOR integer key twice', 'proplet.alive', cborPairs([[1, 'a'], [1, 'b']])],
  ['CBOR text key twice', 'proplet.alive', cborPairs([['proplet_id', 'a'], ['proplet_id', 'b']])],
  ['CBOR text name and integer key', 'proplet.alive', cborPairs([['proplet_id', 'a'], [1, 'b']])],
  ['CBOR integer key and text name', 'proplet.results', cborPairs([[1, 'a'], [2, 't'], ['proplet_id', 'b']])],
  ['CBOR alias with a null first', 'proplet.alive', cborPairs([['proplet_id', null], [1, 'b']])],
  ['CBOR the same integer in two widths', 'proplet.alive', Buffer.concat([Buffer.from([0xa2]), encodeCbor(1), encodeCbor('a'), Buffer.from([0x18, 0x01]), encodeCbor('b')])],
  ['CBOR duplicate inside a nested struct', 'proplet.create', cborPairs([[1, 'a'], [6, new Map<unknown, unknown>([[3, 1], ['max_tasks', 2]])]])],
  ['CBOR duplicate inside results', 'proplet.results', cborPairs([[1, 'a'], [2, 't'], [5, new Map<unknown, unknown>([[1, 'x'], ['1', 'y']])]])],
  ['CBOR duplicate label', 'proplet.create', Buffer.concat([Buffer.from([0xa2]), encodeCbor(1), encodeCbor('a'), encodeCbor(5), Buffer.from([0xa2]), encodeCbor('k'), encodeCbor('x'), encodeCbor('k'), encodeCbor('y')])],
  ['JSON key twice', 'proplet.alive', Buffer.from('{"proplet_id":"a","proplet_id":"b"}')],
  ['JSON key twice, one escaped', 'proplet.alive', Buffer.from('{"proplet_id":"a","proplet\\u005fid":"b"}')],
  ['JSON duplicate in a nested object', 'proplet.create', Buffer.from('{"proplet_id":"a","labels":{"k":"x","k":"y"}}')],
  ['JSON duplicate deep in results', 'proplet.results', Buffer.from('{"proplet_id":"a","task_id":"t","results":[{"x":1,"x":2}]}')],
];
for (const [name, kind, bytes] of twice) {
  test(`a map naming one field twice is refused: ${name}`, (t) => {
    const e = t.throws(() => decode(kind, bytes), { instanceOf: ProtocolError });
    t.is(e?.reason, 'duplicate_field', e?.message);
    // the broker's sender check sees raw duplicates and the sender's alias (other aliases need the schema)
    if (!/nested struct|inside results/.test(name)) t.true(claimedSender(kind, bytes) instanceof ProtocolError, 'the broker\'s sender check refuses it too');
  });
}

test('bounds: too many items or too deep is refused before decoding, valid messages fit', (t) => {
  const wide = new Map<string, number>();
  for (let i = 0; i < 20_000; i++) wide.set(`k${i}`, i);
  const manyCbor = encode('proplet.results', { proplet_id: 'p', task_id: 't', results: Object.fromEntries(wide) }, 'cbor');
  t.is(t.throws(() => decode('proplet.results', manyCbor), { instanceOf: ProtocolError })?.reason, 'too_complex');
  const manyJson = encode('proplet.results', { proplet_id: 'p', task_id: 't', results: Object.fromEntries(wide) }, 'json');
  t.is(t.throws(() => decode('proplet.results', manyJson), { instanceOf: ProtocolError })?.reason, 'too_complex');
  let deep: unknown = 1;
  for (let i = 0; i < 40; i++) deep = [deep];
  for (const enc of ['json', 'cbor'] as const) {
    const bytes = encode('proplet.results', { proplet_id: 'p', task_id: 't', results: deep }, enc);
    t.is(t.throws(() => decode('proplet.results', bytes), { instanceOf: ProtocolError })?.reason, 'too_complex', enc);
  }
  // a heartbeat listing the most running tasks the schema allows still fits
  const running = Array.from({ length: 1024 }, (_, i) => ({ task_id: `t${i}`, attempt: 1 }));
  for (const enc of ['json', 'cbor'] as const) t.notThrows(() => decode('proplet.alive', encode('proplet.alive', { proplet_id: 'p', running }, enc)));
  // an 8 GiB map header in a 10-byte CBOR payload is refused without allocating
  t.is(t.throws(() => decode('proplet.alive', Buffer.from('bb0000000200000000a0', 'hex')), { instanceOf: ProtocolError })?.reason, 'malformed');
});

test('CBOR: records and other private tags are refused; trailing bytes are refused', (t) => {
  const tagged = Buffer.concat([Buffer.from([0xa1]), encodeCbor(1), Buffer.from([0xd8, 0x1c]), encodeCbor('a')]); // tag 28 (shared value)
  t.is(t.throws(() => decode('proplet.alive', tagged), { instanceOf: ProtocolError })?.reason, 'malformed');
  const trailing = Buffer.concat([encode('proplet.alive', { proplet_id: 'a' }, 'cbor'), Buffer.from([0x00])]);
  t.is(t.throws(() => decode('proplet.alive', trailing), { instanceOf: ProtocolError })?.reason, 'malformed');
});

// Fuzz with aliases and duplicates: valid messages whose sender (or another
// field) is named again under its other form or the same key, in random places.
test('fuzz: aliased and duplicate keys are always refused, by the decoder and by the broker\'s sender check alike', (t) => {
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const kinds = ['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'registry.proplet', 'fl.update'] as const;
  const dec = new Decoder({ useRecords: false, mapsAsObjects: false } as ConstructorParameters<typeof Decoder>[0]);
  let n = 0;
  for (let i = 0; i < 600; i++) {
    const kind = kinds[i % kinds.length]!;
    const fields = FIELDS[kind];
    const pairs = [...(dec.decode(encode(kind, samples[kind] as never, 'cbor')) as Map<number, unknown>)];
    // pick a field present in the message and add it again, by integer key or by name
    const [key, value] = pairs[Math.floor(rnd() * pairs.length)]!;
    const name = Object.entries(fields).find(([, f]) => f.key === key)![0];
    const again: [unknown, unknown] = [rnd() < 0.5 ? key : name, rnd() < 0.5 ? value : key === 1 ? 'someone-else' : value];
    const at = Math.floor(rnd() * (pairs.length + 1));
    const forged = [...pairs.slice(0, at), again, ...pairs.slice(at)];
    const bytes = cborPairs(forged);
    const e = t.throws(() => decode(kind, bytes), { instanceOf: ProtocolError });
    t.is(e?.reason, 'duplicate_field', `${kind}: ${e?.message}`);
    if (key === 1) t.true(claimedSender(kind, bytes) instanceof ProtocolError, kind);
    // the same in JSON: the name twice, once perhaps escaped
    const json = encode(kind, samples[kind] as never, 'json').toString();
    const esc = rnd() < 0.5 ? name : name.replace('_', '\\u005f').replace(/^v$/, '\\u0076');
    const dup = `{"${esc}":${JSON.stringify(JSON.parse(json)[name])},${json.slice(1)}`;
    const je = t.throws(() => decode(kind, Buffer.from(dup)), { instanceOf: ProtocolError });
    t.is(je?.reason, 'duplicate_field', `${kind} JSON ${dup.slice(0, 80)}`);
    n++;
  }
  t.is(n, 600);
});

// claimedFields reads each field with the schema's check() directly; it used to
// build a one-field schema per message for checkStruct. The reference below is
// that former reading: on valid and adversarial payloads both give the same
// value, or the same error (reason, message, field).
function claimedSenderBefore(kind: MessageKind, payload: Uint8Array): string | undefined | ProtocolError {
  const field = 'proplet_id';
  try {
    const { value } = decodeRaw(payload, MAX_PAYLOAD[kind], limitsOf(kind));
    if (value === null || typeof value !== 'object') return new ProtocolError('malformed', 'payload is not a map');
    const spec = FIELDS[kind][field]!;
    let v: unknown;
    if (value instanceof Map) {
      if (value.has(field) && value.has(spec.key)) return new ProtocolError('duplicate_field', `${field} is named twice (as "${field}" and as ${spec.key})`, field);
      v = value.has(field) ? value.get(field) : value.get(spec.key);
    } else v = (value as Record<string, unknown>)[field];
    return v !== undefined && v !== null ? (checkStruct({ [field]: spec }, { [field]: v }, '')[field] as string) : undefined;
  } catch (e) {
    return e instanceof ProtocolError ? e : new ProtocolError('malformed', String(e));
  }
}

test('claimedSender reads the sender as the one-field schema did, on valid and adversarial payloads', (t) => {
  const senders: unknown[] = ['p1', '', 'a/b', 'a+b', '#', 'x'.repeat(128), 'x'.repeat(129), 'tab\tin', 7, -1, 1.5, 2n ** 70n, true, null, [], ['p1'], new Map([[1, 'p1']]), { a: 1 }, Buffer.alloc(16, 1), Buffer.alloc(15, 1), new Date(0)];
  const corpus: [MessageKind, Uint8Array][] = [];
  for (const kind of ['proplet.alive', 'proplet.create', 'proplet.results', 'proplet.metrics', 'registry.proplet', 'fl.update'] as const) {
    const key = FIELDS[kind].proplet_id!.key;
    for (const s of senders) {
      corpus.push([kind, cborPairs([[key, s]])], [kind, cborPairs([['proplet_id', s]])], [kind, cborPairs([[key, s], [99, 1]])]);
      if (typeof s !== 'bigint' && !(s instanceof Map) && !Buffer.isBuffer(s)) corpus.push([kind, Buffer.from(JSON.stringify({ proplet_id: s, status: 'alive' }))]);
    }
    corpus.push(
      [kind, cborPairs([['proplet_id', 'a'], [key, 'a']])],
      [kind, cborPairs([[key, 'a'], [key, 'a']])],
      [kind, Buffer.from('{"proplet_id":"a","proplet_id":"b"}')],
      [kind, cborPairs([])],
      [kind, Buffer.from('[]')],
      [kind, Buffer.from('garbage')],
      [kind, Buffer.alloc(0)],
      [kind, Buffer.from([0xa1, 0x01])],
      [kind, Buffer.from([0xa1, 0x01, 0x61, 0x61, 0x00])],
      [kind, Buffer.alloc(MAX_PAYLOAD[kind] + 1, 0x20)],
      [kind, encodeCbor(new Map<number, unknown>([[key, 'p1'], [2, Array.from({ length: 30 }, (_, i) => ({ i }))]]))],
    );
  }
  let seed = 16;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < 400; i++) corpus.push(['proplet.alive', Buffer.from([0xa1, ...Array.from({ length: 1 + Math.floor(rnd() * 12) }, () => Math.floor(rnd() * 256))])]);
  const view = (r: string | undefined | ProtocolError): unknown => (r instanceof ProtocolError ? { reason: r.reason, message: r.message, field: r.field } : r);
  for (const [kind, bytes] of corpus) t.deepEqual(view(claimedSender(kind, bytes)), view(claimedSenderBefore(kind, bytes)), `${kind} ${Buffer.from(bytes.subarray(0, 40)).toString('hex')}`);
  t.true(corpus.length > 500);
});

// structure.ts checks a map of up to 16 entries for a repeated key by scanning
// the keys of that map alone, a larger one with a Set: both must refuse a
// repeat anywhere in the map, and neither may see a nested map's keys as the
// outer map's.
test('CBOR duplicate keys: found in small and large maps, and never across nesting levels', (t) => {
  const lim = { maxItems: 1000, maxDepth: 8 };
  for (const size of [2, 15, 16, 17, 40]) {
    const pairs: [unknown, unknown][] = Array.from({ length: size }, (_, i) => [i % 2 ? `k${i}` : i, i]);
    t.notThrows(() => checkCborStructure(cborPairs(pairs), lim), `${size} distinct keys`);
    for (const at of [0, 1, size - 1]) {
      const forged = [...pairs, [pairs[at]![0], 'again'] as [unknown, unknown]];
      t.is(t.throws(() => checkCborStructure(cborPairs(forged), lim), { instanceOf: ProtocolError })?.reason, 'duplicate_field', `${size} keys, key ${at} again`);
    }
    // the outer map's keys inside a nested map, and the nested map's after it: not repeats
    const nested = cborPairs([...pairs.slice(0, -1), [pairs.at(-1)![0], new Map(pairs)]]);
    t.notThrows(() => checkCborStructure(Buffer.concat([Buffer.from([0x82]), nested, cborPairs(pairs)]), lim), `${size} keys, nested`);
  }
});

test('a 16-byte id reads as the UUID its hex spells', (t) => {
  for (let i = 0; i < 2000; i++) {
    const b = i < 256 ? Buffer.alloc(16, i) : randomBytes(16);
    const h = b.toString('hex');
    t.is(check({ t: 'id' }, b, 'id'), `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`);
  }
  const u = randomUUID();
  t.is(decode('proplet.alive', encode('proplet.alive', { proplet_id: 'p1', running: [{ task_id: u }] }, 'cbor')).msg.running?.[0]?.task_id, u);
});
