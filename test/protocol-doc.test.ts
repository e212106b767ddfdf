// docs/protocol.md against the code. Every example pair in the doc (a JSON
// block and the annotated hex of its compact CBOR) must decode with the real
// protocol decoder, agree with each other byte for byte, and state true sizes;
// the topic table must cover every topic kind of topics/index.ts; and every
// generated block must be what docs/gen-protocol.ts produces today.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { decode, encode, FIELDS, SENDER_FIELD, type MessageKind } from '../protocol/index.ts';
import { base, flUpdateTopic, parseTopic, topic, type TopicKind } from '../topics/index.ts';
import { applyTo, blocksIn, DOC_PATH, generate, PATTERN_SCOPE } from '../docs/gen-protocol.ts';

const doc = readFileSync(DOC_PATH, 'utf8');
const blocks = blocksIn(doc);
const KINDS = Object.keys(FIELDS) as MessageKind[];

interface DocExample {
  name: string;
  topic: string;
  jsonText: string;
  jsonSize: number;
  hexText: string;
  cborSize: number;
  /** The field the doc says is left out of the compact form, if any. */
  leftOut?: string;
}

function parseExample(name: string, text: string): DocExample {
  const need = (re: RegExp, what: string): RegExpMatchArray => {
    const m = text.match(re);
    if (!m) throw new Error(`example ${name}: no ${what}`);
    return m;
  };
  const cbor = need(/^Compact CBOR, (\d+) bytes(?: \(`(\w+)` left out: the topic carries it\))?:$/m, 'compact CBOR size line');
  return {
    name,
    topic: need(/^Topic: `([^`]+)`$/m, 'topic line')[1]!,
    jsonSize: Number(need(/^JSON, (\d+) bytes\b/m, 'JSON size line')[1]),
    jsonText: need(/```json\n([\s\S]*?)\n```/, 'json block')[1]!,
    cborSize: Number(cbor[1]),
    leftOut: cbor[2],
    hexText: need(/```hex\n([\s\S]*?)\n```/, 'hex block')[1]!,
  };
}

/** The bytes of an annotated hex block: the hex digits before each '#'. */
function hexBytes(text: string): Buffer {
  let digits = '';
  for (const line of text.split('\n')) {
    const data = line.split('#')[0]!.replace(/\s+/g, '');
    if (!/^[0-9a-f]*$/.test(data)) throw new Error(`not hex: ${JSON.stringify(line)}`);
    digits += data;
  }
  if (digits.length % 2 !== 0) throw new Error('odd number of hex digits');
  return Buffer.from(digits, 'hex');
}

// Byte strings compare by content, whatever their class (Buffer or Uint8Array).
function norm(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: Buffer.from(v).toString('hex') };
  if (Array.isArray(v)) return v.map(norm);
  if (v !== null && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, norm(x)]));
  return v;
}

const examples = [...blocks].filter(([n]) => n.startsWith('example ')).map(([n, text]) => parseExample(n.slice('example '.length), text));

test('the doc has examples, at least one for every message kind', (t) => {
  t.true(examples.length > 0);
  const kinds = new Set(examples.map((e) => parseTopic(e.topic)?.kind));
  for (const k of KINDS) t.true(kinds.has(k), `no example for ${k}`);
});

for (const e of examples) {
  test(`example ${e.name}: JSON and compact CBOR agree with the codec`, (t) => {
    const parsed = parseTopic(e.topic);
    if (!parsed) return t.fail(`topic ${e.topic} is not in the tree`);
    t.true((KINDS as string[]).includes(parsed.kind), `${parsed.kind} has no message schema`);
    const kind = parsed.kind as MessageKind;
    const ctx = parsed.propletId !== undefined ? { propletId: parsed.propletId } : {};

    // (a) the JSON decodes with the protocol decoder, and is exactly what encode() sends
    const wire = Buffer.from(JSON.stringify(JSON.parse(e.jsonText)));
    const fromJson = decode(kind, wire, ctx);
    t.is(fromJson.encoding, 'json');
    t.is(encode(kind, fromJson.msg, 'json').toString(), wire.toString(), 'the JSON shown is not what encode() produces');

    // (b) the hex decodes to the same message
    const cbor = hexBytes(e.hexText);
    const fromCbor = decode(kind, cbor, ctx);
    t.is(fromCbor.encoding, 'cbor');
    t.deepEqual(norm(fromCbor.msg), norm(fromJson.msg));

    // (c) encoding the JSON message as compact CBOR gives exactly the hex shown
    const sender = SENDER_FIELD[kind];
    if (e.leftOut !== undefined) {
      t.is(sender, e.leftOut, 'only the sender field may be left out');
      t.not(parsed.propletId, undefined, 'the sender may be left out only on a per-proplet topic');
      t.throws(() => decode(kind, cbor), { message: /is required/ }, 'the doc says the sender is left out, but the payload has it');
    } else if (sender) {
      t.notThrows(() => decode(kind, cbor), 'the payload lacks the sender, but the doc does not say so');
    }
    t.is(encode(kind, fromJson.msg, 'cbor', { omitSender: e.leftOut !== undefined }).toString('hex'), cbor.toString('hex'));

    // (d) the sizes stated are the real ones
    t.is(e.jsonSize, wire.length, 'JSON size');
    t.is(e.cborSize, cbor.length, 'compact CBOR size');

    // the annotations name each key correctly
    for (const m of e.hexText.matchAll(/# (\w+) \((\d+)\):/g)) {
      t.is(FIELDS[kind][m[1]!]?.key, Number(m[2]), `annotation ${m[0]}`);
    }
  });
}

test('the field tables list every field with its compact key', (t) => {
  for (const kind of KINDS) {
    const table = blocks.get(`fields ${kind}`);
    if (!table) {
      t.fail(`no field table for ${kind}`);
      continue;
    }
    const rows = new Map([...table.matchAll(/^\| `([\w.[\]]+)` \| ([\d.[\]]+) \|/gm)].map((m) => [m[1]!, m[2]!]));
    for (const [name, f] of Object.entries(FIELDS[kind])) t.is(rows.get(name), String(f.key), `${kind}.${name}`);
  }
});

// (e) The kinds are read from the source, so a kind added to topics/index.ts
// without a row in the doc fails here even before anyone regenerates.
function topicKindsInSource(): TopicKind[] {
  const src = readFileSync(new URL('../topics/index.ts', import.meta.url), 'utf8');
  const kinds = new Set<string>();
  for (const name of ['PropletToManagerKind', 'TopicKind']) {
    const m = src.match(new RegExp(`export type ${name}\\s*=([^;]+);`));
    if (!m) throw new Error(`topics/index.ts: no type ${name}`);
    for (const lit of m[1]!.matchAll(/'([^']+)'/g)) kinds.add(lit[1]!);
  }
  return [...kinds] as TopicKind[];
}

test('the topic table has every topic kind, with topics that topics/ builds', (t) => {
  const table = blocks.get('topics');
  if (!table) return t.fail('no topic table');
  const prefix = base(PATTERN_SCOPE) + '/';
  const rows = [...table.matchAll(/^\| `([\w.]+)` \| `([^`]+)` \|/gm)].map((m) => ({ kind: m[1]!, topic: prefix + m[2]! }));
  const kinds = topicKindsInSource();
  t.true(kinds.length >= 9, `found only ${kinds.join(', ')}`);
  for (const kind of kinds) {
    const mine = rows.filter((r) => r.kind === kind).map((r) => r.topic);
    if (kind === 'fl.update') {
      t.deepEqual(mine, [flUpdateTopic(PATTERN_SCOPE, '<round_id>', '<proplet_id>')], kind);
      continue;
    }
    const k = kind as Exclude<TopicKind, 'fl.update'>;
    t.deepEqual(mine.sort(), [topic(PATTERN_SCOPE, k), topic(PATTERN_SCOPE, k, '<proplet_id>')].sort(), kind);
  }
  for (const r of rows) t.is(parseTopic(r.topic)?.kind, r.kind as TopicKind, r.topic);
});

test('every generated block is what docs/gen-protocol.ts produces', (t) => {
  const fresh = generate();
  t.deepEqual([...blocks.keys()].sort(), [...fresh.keys()].sort(), 'blocks placed in the doc');
  for (const [name, text] of fresh) t.is(blocks.get(name), text, `block "${name}" is stale: run node --import tsx docs/gen-protocol.ts --write`);
  t.is(applyTo(doc, fresh), doc);
});
