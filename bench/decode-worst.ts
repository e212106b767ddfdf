// decode-worst: how long one message can hold the event loop in decode(),
// for the worst payloads a proplet may send (at the item, depth and size
// limits of its kind), and how long refusing an over-limit one takes (the
// issue's 4 MB result holding a 350,000-entry map). Baseline, in the same run
// on the same bytes: the bare parser (JSON.parse, cbor-x decode) with no
// checks at all, i.e. the least any decoder of these bytes pays.
// Goal: every decode() below 10 ms of CPU, so no single message stalls the
// loop. Figures are CPU time (wall time on a busy machine is mostly others').
//
//   npm run bench -- decode-worst [--runs N]

import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import { Decoder } from 'cbor-x';
import { decode, encode, MAX_DEPTH, MAX_ITEMS, MAX_PAYLOAD, type Encoding, type MessageKind } from '../protocol/index.ts';
import { printTable } from './stats.ts';

const GOAL_MS = 10;
const raw = new Decoder({ useRecords: false, mapsAsObjects: false } as ConstructorParameters<typeof Decoder>[0]);

interface Case {
  name: string;
  kind: MessageKind;
  bytes: Buffer;
}

function flatMap(n: number): Record<string, number> {
  const o: Record<string, number> = {};
  for (let i = 0; i < n; i++) o[`k${i}`] = i;
  return o;
}

function nested(depth: number): unknown {
  let v: unknown = 1;
  for (let i = 0; i < depth; i++) v = { a: v };
  return v;
}

function cases(enc: Encoding): Case[] {
  const items = MAX_ITEMS['proplet.results'];
  const result = (results: unknown, extra: Record<string, unknown> = {}): Buffer =>
    encode('proplet.results', { proplet_id: 'p1', task_id: 't1', status: 'completed', results, ...extra } as never, enc);
  // the rest of the item budget after the message's own fields
  const room = items - 16;
  const strings = 'x'.repeat(1024 * 1024 - 1);
  const out: Case[] = [
    { name: `results: map at the item limit (${Math.floor(room / 2)} entries)`, kind: 'proplet.results', bytes: result(flatMap(Math.floor(room / 2))) },
    { name: `results: array at the item limit (${room} numbers)`, kind: 'proplet.results', bytes: result(Array.from({ length: room }, (_, i) => i * 1.5)) },
    { name: `results: nested ${16} deep (the schema's limit)`, kind: 'proplet.results', bytes: result(nested(16)) },
    { name: 'results: stdout + stderr 1 MiB each', kind: 'proplet.results', bytes: result(1, { stdout: strings, stderr: strings }) },
    {
      name: 'alive: 1024 running tasks',
      kind: 'proplet.alive',
      bytes: encode('proplet.alive', { proplet_id: 'p1', running: Array.from({ length: 1024 }, (_, i) => ({ task_id: `task-${i}`, attempt: 1 })) }, enc),
    },
    {
      name: 'create: every list at its limit',
      kind: 'proplet.create',
      bytes: encode('proplet.create', {
        proplet_id: 'p1',
        capabilities: Array.from({ length: 64 }, (_, i) => `cap-${i}`),
        labels: Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`l${i}`, 'v'.repeat(200)])),
        running: Array.from({ length: 1024 }, (_, i) => ({ task_id: `task-${i}`, attempt: 1 })),
      }, enc),
    },
  ];
  // over the limits, within the byte limit: refused, and how fast (the attack)
  const huge: Record<string, number> = {};
  for (let i = 0; i < 350_000; i++) huge[i.toString(36)] = i % 10;
  const overBytes = result(huge);
  if (overBytes.length > MAX_PAYLOAD['proplet.results']) throw new Error('the over-limit case must fit the byte limit');
  out.push({ name: 'REFUSED results: 350,000-entry map', kind: 'proplet.results', bytes: overBytes });
  out.push({ name: `REFUSED results: nested ${MAX_DEPTH + 10} deep`, kind: 'proplet.results', bytes: result(nested(MAX_DEPTH + 10)) });
  return out;
}

/** Median CPU ms of one call: on a shared machine wall time mostly measures the neighbours. Also the median wall ms. */
function time(fn: () => void, runs: number): { cpu: number; wall: number } {
  const cpu: number[] = [];
  const wall: number[] = [];
  for (let i = 0; i < runs; i++) {
    const c0 = process.cpuUsage();
    const t0 = process.hrtime.bigint();
    fn();
    wall.push(Number(process.hrtime.bigint() - t0) / 1e6);
    const c = process.cpuUsage(c0);
    cpu.push((c.user + c.system) / 1000);
  }
  const median = (xs: number[]): number => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  return { cpu: median(cpu), wall: median(wall) };
}

export async function run(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { runs: { type: 'string', default: '7' } } });
  const runs = Math.max(1, Number(values.runs));
  console.log(`decode-worst: median of ${runs} runs per figure; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}; goal: decode() < ${GOAL_MS} ms`);
  const rows: (string | number)[][] = [];
  for (const enc of ['json', 'cbor'] as const) {
    for (const c of cases(enc)) {
      let outcome = 'accepted';
      const ms = time(() => {
        try {
          decode(c.kind, c.bytes);
        } catch (e) {
          outcome = `refused: ${(e as { reason?: string }).reason}`;
        }
      }, runs);
      const base = time(() => {
        if (enc === 'json') JSON.parse(c.bytes.toString('utf8'));
        else raw.decode(c.bytes);
      }, runs);
      rows.push([enc, c.name, `${(c.bytes.length / 1024).toFixed(0)} KiB`, outcome, ms.cpu, ms.wall, base.cpu, (ms.cpu / Math.max(base.cpu, 0.001)).toFixed(2), ms.cpu < GOAL_MS ? 'yes' : 'NO']);
    }
  }
  printTable(['enc', 'payload', 'size', 'decode()', 'decode() cpu ms', 'wall ms', 'bare parser cpu ms', 'ratio', `< ${GOAL_MS} ms`], rows);
}
