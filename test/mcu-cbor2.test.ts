// Every CBOR message of the MCU profile, read by an independent decoder:
// Debian's python3-cbor2 (run as /usr/bin/python3, not whatever python is on
// PATH), compared field by field with protocol's own decode(). Also checks
// that docs/mcu.md carries exactly the bytes docs/gen-mcu.ts makes.

import test from 'ava';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { decode, FIELDS, type MessageKind } from '../protocol/index.ts';
import { toCompact } from '../protocol/schema.ts';
import { blocksIn, DOC_PATH, generate, mcuExamples } from '../docs/gen-mcu.ts';

const PYTHON = '/usr/bin/python3';

// Decodes hex payloads (one per line on stdin) and prints one JSON value per
// line, with nothing lost: maps as key/value pairs (integer keys stay
// integers), byte strings as hex, floats marked as floats, tags as errors.
const SCRIPT = String.raw`
import sys, json, cbor2
def conv(v):
    if isinstance(v, bool) or v is None or isinstance(v, str): return v
    if isinstance(v, int): return v
    if isinstance(v, float): return {"$float": v}
    if isinstance(v, (bytes, bytearray)): return {"$bytes": v.hex()}
    if isinstance(v, list): return [conv(x) for x in v]
    if isinstance(v, dict): return {"$map": [[conv(k), conv(x)] for k, x in v.items()]}
    if isinstance(v, cbor2.CBORTag): return {"$tag": v.tag}
    return {"$unknown": repr(v)}
for line in sys.stdin:
    line = line.strip()
    if not line: continue
    b = bytes.fromhex(line)
    v = cbor2.loads(b)
    print(json.dumps({"value": conv(v), "canonical": cbor2.dumps(v) == b}))
`;

function cbor2Available(): string | undefined {
  const r = spawnSync(PYTHON, ['-c', 'import cbor2'], { encoding: 'utf8' });
  if (r.error) return `${PYTHON} cannot run: ${r.error.message}`;
  if (r.status !== 0) return `${PYTHON} cannot import cbor2: ${r.stderr.trim().split('\n').at(-1)}`;
  return undefined;
}

type Py = null | boolean | number | string | Py[] | { $float: number } | { $bytes: string } | { $map: [Py, Py][] } | { $tag: number } | { $unknown: string };

/** Our decoded value in the Python script's shape: what cbor2 must have read. */
function shape(v: unknown): Py {
  if (v === null || typeof v === 'boolean' || typeof v === 'string') return v;
  if (typeof v === 'bigint') return Number(v);
  if (typeof v === 'number') return Number.isInteger(v) ? v : { $float: v };
  if (v instanceof Uint8Array) return { $bytes: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(shape);
  if (v instanceof Map) return { $map: [...v].map(([k, x]) => [shape(k), shape(x)] as [Py, Py]) };
  if (typeof v === 'object') return { $map: Object.entries(v as Record<string, unknown>).map(([k, x]) => [k, shape(x)] as [Py, Py]) };
  throw new Error(`cannot shape ${typeof v}`);
}

const examples = mcuExamples();
let decoded: { value: Py; canonical: boolean }[] = [];
const skip = process.env.PROPELLER_SKIP_CBOR2 === '1';
const missing = cbor2Available();

// Without cbor2 these tests compare nothing: with PROPELLER_SKIP_CBOR2=1 they show as skipped; CI must run them.
const compare = missing && skip && process.env.CI !== 'true' ? test.skip : test;

test.before(() => {
  if (missing) {
    if (skip && process.env.CI !== 'true') return;
    throw new Error(`${missing}. Install Debian's package python3-cbor2 (apt-get install python3-cbor2), or set PROPELLER_SKIP_CBOR2=1 to skip this test`);
  }
  const out = execFileSync(PYTHON, ['-c', SCRIPT], { input: examples.map((e) => e.bytes.toString('hex')).join('\n') + '\n', encoding: 'utf8' });
  decoded = out.trim().split('\n').map((l) => JSON.parse(l) as { value: Py; canonical: boolean });
});

test('the examples cover every message the profile sends and receives', (t) => {
  const names = examples.map((e) => e.name);
  for (const n of ['register', 'alive-idle', 'alive-running', 'will', 'start-inline', 'start-chunked', 'stop', 'chunk-request', 'chunk-request-missing', 'chunk', 'chunk-error']) t.true(names.includes(n), n);
  const statuses = examples.filter((e) => e.kind === 'proplet.results').map((e) => (e.msg as { status?: string }).status);
  t.deepEqual(statuses.sort(), ['completed', 'failed', 'refused', 'running', 'stopped']);
  t.false(examples.some((e) => e.name === 'start-chunked' && 'file' in e.msg));
});

for (const [i, e] of examples.entries()) {
  compare(`python3-cbor2 reads ${e.name} (${e.kind}, ${e.direction === 'sends' ? 'device → control plane' : 'control plane → device'}) as protocol.decode does`, (t) => {
    const py = decoded[i]!;
    t.truthy(py, 'python printed a value');
    t.true(py.canonical, 'cbor2 re-encodes the value to the same bytes: shortest forms, definite lengths, no tags');
    const ours = decode(e.kind, e.bytes).msg as unknown as Record<string, unknown>;
    const fields = FIELDS[e.kind as MessageKind];
    const top = py.value as { $map?: [Py, Py][] };
    t.truthy(top.$map, 'a map at the top');
    const byKey = new Map(top.$map!.map(([k, v]) => [k, v]));
    // every key cbor2 saw is an integer key of this kind's schema
    const names = new Map(Object.entries(fields).map(([n, f]) => [f.key, n]));
    for (const k of byKey.keys()) t.true(typeof k === 'number' && names.has(k), `key ${JSON.stringify(k)} is a field of ${e.kind}`);
    // field by field: what cbor2 read is the compact form of what decode() returned
    for (const [name, value] of Object.entries(ours)) {
      const f = fields[name]!;
      t.true(byKey.has(f.key), `${name} (${f.key}) present for cbor2`);
      t.deepEqual(byKey.get(f.key), shape(toCompact(f.type, value)), `${e.name}.${name}`);
    }
    t.is(byKey.size, Object.keys(ours).length, 'no field seen by one decoder only');
  });
}

test('docs/mcu.md carries exactly the generated blocks', (t) => {
  const doc = blocksIn(readFileSync(DOC_PATH, 'utf8'));
  for (const [name, text] of generate()) t.is(doc.get(name), text, `block ${name}: run node --import tsx docs/gen-mcu.ts --write`);
});
