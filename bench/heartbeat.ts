// Heartbeats: the control plane's work per heartbeat once the message is
// decoded, Registry.alive() over --proplets registered proplets, in CPU µs per
// heartbeat and in garbage: the minor collections (scavenges) and the bytes
// they freed while --heartbeats heartbeats went in. Baseline in the same run:
// the floor any registry pays, a Map lookup of the proplet and a store of the
// time into it, over the same messages. Then the reads that bring the
// proplets' heartbeat strings up to date (list(), as the API and placement
// read them), one after every --read-every heartbeats per proplet.
// Goal (issue 16): ≤ 80 µs CPU per heartbeat, O(1) and without allocation
// beyond the decoded message.

import { loadavg } from 'node:os';
import { PerformanceObserver } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Alive } from '../protocol/index.ts';
import { Registry } from '../control-plane/registry.ts';
import { MemoryStore } from '../control-plane/store.ts';
import { printTable } from './stats.ts';

const GOAL_US = 80;

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

interface Cost {
  cpuUs: number;
  scavenges: number;
  freedBytes: number;
}

/** Runs `f`, returning its CPU time and the minor GCs (count, bytes freed) that happened meanwhile. */
async function measure(f: () => void): Promise<Cost> {
  gc();
  let scavenges = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (((e as PerformanceEntry & { detail?: { kind?: number } }).detail)?.kind === 1) scavenges++;
  });
  obs.observe({ entryTypes: ['gc'] });
  const h0 = process.memoryUsage().heapUsed;
  const c0 = process.cpuUsage();
  f();
  const c = process.cpuUsage(c0);
  const h1 = process.memoryUsage().heapUsed;
  await new Promise((r) => setTimeout(r, 100)); // the observer reports asynchronously
  obs.disconnect();
  return { cpuUs: c.user + c.system, scavenges, freedBytes: Math.max(0, h1 - h0) };
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      proplets: { type: 'string', default: '10000' },
      heartbeats: { type: 'string', default: '2000000' },
      'read-every': { type: 'string', default: '10' },
      runs: { type: 'string', default: '5' },
    },
  });
  const n = Number(values.proplets);
  const total = Number(values.heartbeats);
  const readEvery = Number(values['read-every']);
  const runs = Number(values.runs);
  const load0 = loadavg()
    .map((x) => x.toFixed(1))
    .join(' ');

  // The clock in a typed array: `clock += 1` on a plain variable would allocate a number each time (the bench's, not the registry's).
  const clock = new Float64Array([Date.parse('2026-01-01T00:00:00Z')]);
  const store = new MemoryStore();
  const reg = new Registry(store, { checkIntervalMs: 1000, offlineThresholdMs: 30_000, failureThresholdMs: 60_000 }, () => clock[0]!);
  const ids = Array.from({ length: n }, (_, i) => `proplet-${String(i).padStart(5, '0')}`);
  for (const id of ids) reg.register({ proplet_id: id, name: id, device_type: 'esp32', capacity: { max_tasks: 4 } });
  // What the gateway hands over: decoded messages, made before the timed part (their cost is the decoder's).
  const msgs: Alive[] = ids.map((id) => ({ proplet_id: id, status: 'alive', running_tasks: 0, memory_used: 1000 }));

  const floor = new Map<string, { at: number }>(ids.map((id) => [id, { at: 0 }]));
  const rows: (string | number)[][] = [];
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
  const row = async (name: string, f: () => void): Promise<number> => {
    f(); // warm-up
    const cs: Cost[] = [];
    for (let r = 0; r < runs; r++) cs.push(await measure(f));
    const us = med(cs.map((c) => c.cpuUs)) / total;
    rows.push([name, us * 1000, med(cs.map((c) => c.scavenges)), med(cs.map((c) => c.freedBytes)) / total]);
    return us;
  };

  await row('baseline: Map lookup + store the time (floor)', () => {
    for (let k = 0; k < total; k++) {
      const m = msgs[k % n]!;
      floor.get(m.proplet_id)!.at = clock[0]! + k;
    }
  });
  const us = await row('Registry.alive()', () => {
    for (let k = 0; k < total; k++) {
      clock[0]! += 1;
      reg.alive(msgs[k % n]!);
    }
  });
  await row(`Registry.alive() + list() after every ${readEvery} heartbeats per proplet`, () => {
    for (let k = 0; k < total; k++) {
      clock[0]! += 1;
      reg.alive(msgs[k % n]!);
      if ((k + 1) % (n * readEvery) === 0) reg.list();
    }
  });
  // The strings read back are the heartbeats' times.
  clock[0]! += 1000;
  reg.alive(msgs[0]!);
  const p = reg.get(ids[0]!)!;
  const iso = new Date(clock[0]!).toISOString();
  const ok = p.alive_history.length === 10 && p.last_seen === iso && p.alive_history.at(-1) === iso;

  console.log(
    `\nheartbeat: ${total.toLocaleString('en')} heartbeats over ${n.toLocaleString('en')} registered proplets, decoded messages; medians of ${runs} runs; Node ${process.version}; load average ${load0} → ${loadavg()
      .map((x) => x.toFixed(1))
      .join(' ')}\n`,
  );
  printTable(['measure', 'ns CPU per heartbeat', 'scavenges per run', 'heap growth bytes per heartbeat'], rows);
  console.log(`\nRegistry.alive(): ${(us * 1000).toFixed(0)} ns = ${us.toFixed(3)} µs CPU per heartbeat; goal ≤ ${GOAL_US} µs: ${us <= GOAL_US ? 'met' : 'NOT met'}; heartbeat strings read back correctly: ${ok ? 'yes' : 'NO'}`);
  console.log('(the end-to-end cost per heartbeat, MQTT and decoding included, is in `npm run bench -- fleet`: "broker + control plane CPU, steady")');
  if (!ok) process.exitCode = 1;
}
