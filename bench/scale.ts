// Scale: what the control plane costs per task and per device, embedded vs N
// replicas over Mosquitto + PostgreSQL. Every part runs in a process of its
// own, started as an operator would (`propeller serve`, `propeller proplet`,
// `propeller sim`, Debian's Mosquitto, a throw-away PostgreSQL cluster on
// loopback ports), so each part's CPU time and memory are its own (/proc).
//
// Tasks (the default): the same stream of small tasks (add.wasm inline, POST
// ?start=true, spread round-robin over every replica's HTTP API) through
//   (a) the embedded single process (`serve`: Aedes + SQLite),
//   (b) 1, 2 and 3 replicas over one Mosquitto and one PostgreSQL,
// with node proplets on the same broker. Per configuration: tasks/s and
// CPU-seconds per 1,000 tasks of every process. On a 2-core machine the
// processes share two cores, so tasks/s cannot grow with replicas here; the
// projection per added core is computed from the CPU per task instead.
//
//   npm run bench -- scale [--tasks 2000] [--warmup 100] [--concurrency 32] [--proplets 8]
//        [--max-tasks 1] [--replicas 1,2,3] [--no-embedded] [--time-limit 10m]
//
// Fleet (--fleet N): N simulated MCU devices (`propeller sim`, several
// processes, --per-sim devices each: a process may hold 20,000 file
// descriptors here) on Mosquitto against --fleet-replicas replicas.
// Mosquitto is bound by the same limit, so more than --per-broker devices
// are spread over edge brokers bridged to the core broker the replicas use
// (Mosquitto bridges, `topic m/# both 1`). Registration time, each replica's
// RSS and CPU, and false offline transitions over --periods heartbeat periods
// (the offline threshold is 3 heartbeats, as in `bench -- fleet`).
//
//   npm run bench -- scale --fleet 20000 [--fleet-replicas 2] [--per-sim 10000] [--per-broker 15000]
//        [--heartbeat 10s] [--periods 4] [--connect-rate 1000] [--time-limit 10m]

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import mqtt from 'mqtt';
import { parseDuration } from '../control-plane/config.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startMosquitto, type Mosquitto } from '../test/helpers/mosquitto.ts';
import { startPostgres, type Postgres } from '../test/helpers/postgres.ts';
import { BIN, metricOf, startProplet, startServe, type Serve } from '../test/helpers/procs.ts';
import { freePort } from '../test/helpers/stack.ts';
import { childrenNamed, cpuSeconds, rssBytes, treeCpuSeconds } from './procstat.ts';
import { fmt, printTable } from './stats.ts';

const TOKEN = 'scale-bench-token';
const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');

/** A clock for the whole run: every wait is bounded by what is left of --time-limit. */
function budget(limit: string): (what: string) => number {
  const deadline = Date.now() + parseDuration('--time-limit', limit);
  return (what) => {
    const ms = deadline - Date.now();
    if (ms <= 0) throw new Error(`--time-limit reached before ${what}`);
    return ms;
  };
}

async function poll(cond: () => Promise<boolean>, everyMs: number, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Temporary directories and processes of the run, removed and stopped at its end whatever happens. */
class Resources {
  private dirs: string[] = [];
  private closers: (() => Promise<unknown>)[] = [];
  dir(): string {
    const d = mkdtempSync(join(tmpdir(), 'propeller-scale-'));
    this.dirs.push(d);
    return d;
  }
  add<T extends { kill(): Promise<void> } | { stop(): Promise<void> }>(x: T): T {
    this.closers.push(() => ('kill' in x ? x.kill() : x.stop()));
    return x;
  }
  async close(): Promise<void> {
    for (const c of this.closers.reverse()) await c().catch(() => {});
    this.closers = [];
    for (const d of this.dirs) rmSync(d, { recursive: true, force: true });
  }
}

/** A Mosquitto broker and its pid (a child of this process: the helper spawns it). */
async function mosquitto(r: Resources, extra?: string): Promise<{ broker: Mosquitto; pid: number }> {
  const before = new Set(childrenNamed('mosquitto'));
  const broker = r.add(await startMosquitto(extra ? { extra } : {}));
  const pid = childrenNamed('mosquitto').find((p) => !before.has(p));
  if (pid === undefined) throw new Error('cannot find the Mosquitto process just started');
  return { broker, pid };
}

const replicaArgs = async (r: Resources, broker: string, store: string, extra: string[] = []) => [
  '--broker',
  broker,
  '--store',
  store,
  '--http-port',
  String(await freePort()),
  '--data-dir',
  r.dir(),
  '--api-token',
  TOKEN,
  ...extra,
];

/**
 * A series on a replica's /metrics. A dropped keep-alive connection on a busy machine is retried;
 * a replica that died ends the run with its last words.
 */
async function metric(s: Serve, series: string): Promise<number> {
  for (let attempt = 1; ; attempt++) {
    if (s.proc.exitCode !== null || s.proc.signalCode !== null) {
      throw new Error(`serve (pid ${s.proc.pid}) exited ${s.proc.exitCode ?? s.proc.signalCode}: ${JSON.stringify(s.logs.filter((l) => l.level !== 'debug' && l.level !== 'info').slice(-5))}`);
    }
    try {
      return await metricOf(s, series);
    } catch (e) {
      if (attempt >= 5) throw e;
      await sleep(500);
    }
  }
}

const owns = (s: Serve) => s.logs.some((l) => l.msg === 'lease acquired');

// ---------------------------------------------------------------------------
// Tasks

interface Part {
  kind: string;
  label: string;
  cpu: () => number;
}

interface Setup {
  name: string;
  apis: Serve[];
  parts: Part[];
}

interface Measured {
  name: string;
  replicas: number;
  tps: number;
  wallS: number;
  errors: number;
  failed: number;
  load: string;
  /** CPU seconds per 1,000 tasks, per part. */
  per1k: { kind: string; label: string; cpu: number }[];
  clientPer1k: number;
  /** The store's work over the measured stream, summed over replicas. */
  store: { commits: number; writes: number; conflicts: number };
  /** Conflicting rows each replica logged over the stream, by kind of row (task, proplet…). */
  conflictRows: string;
}

/** Rows named by the store's conflict logs of each replica since `from` (its log index): who loses, and on what. */
function conflictRows(s: Setup, from: number[]): string {
  return s.apis
    .map((x, i) => {
      const kinds = new Map<string, number>();
      for (const l of x.logs.slice(from[i])) {
        if (typeof l.msg !== 'string' || !l.msg.startsWith('store write conflict')) continue;
        for (const row of (l.rows as string[] | undefined) ?? []) {
          const kind = row.split('/')[0]!;
          kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
        }
      }
      const label = s.parts.find((p) => p.kind === 'plane' && p.label.startsWith(`replica ${i + 1}`))?.label ?? `process ${i + 1}`;
      return `${label}: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(', ') || 'none'}`;
    })
    .join('; ');
}

/** The store's counters on every replica, summed: commits, row writes, conflicts (another replica's write won). */
async function storeCounters(s: Setup): Promise<{ commits: number; writes: number; conflicts: number }> {
  const one = async (x: Serve) => ({
    commits: await metric(x, 'propeller_store_commits_total'),
    writes: await metric(x, 'propeller_store_writes_total'),
    conflicts: await metric(x, 'propeller_store_conflicts_total'),
  });
  const all = await Promise.all(s.apis.map(one));
  return { commits: all.reduce((a, x) => a + x.commits, 0), writes: all.reduce((a, x) => a + x.writes, 0), conflicts: all.reduce((a, x) => a + x.conflicts, 0) };
}

async function embeddedSetup(r: Resources, o: { proplets: number; maxTasks: number }): Promise<Setup> {
  const serve = r.add(await startServe(['--data-dir', r.dir(), '--http-port', String(await freePort()), '--mqtt-port', String(await freePort()), '--api-token', TOKEN]));
  const parts: Part[] = [{ kind: 'plane', label: 'serve (Aedes + plane + SQLite)', cpu: () => cpuSeconds(serve.proc.pid!) }];
  for (let i = 1; i <= o.proplets; i++) {
    const id = `emb-p${i}`;
    const { secret } = await serve.api.addProplet(id);
    const p = r.add(await startProplet(['--id', id, `--secret=${secret}`, '--broker', serve.brokerUrl, '--max-tasks', String(o.maxTasks), '--heartbeat', '5s']));
    parts.push({ kind: 'proplet', label: `node proplet ${i}`, cpu: () => cpuSeconds(p.proc.pid!) });
  }
  await poll(async () => (await metric(serve, 'propeller_proplets_total{state="alive",type="external"}')) === o.proplets, 100, 60_000, 'the proplets alive');
  return { name: 'embedded (1 process)', apis: [serve], parts };
}

async function replicaSetup(r: Resources, k: number, mq: { broker: Mosquitto; pid: number }, pg: Postgres & { pid?: () => number }, o: { proplets: number; maxTasks: number }): Promise<Setup> {
  const store = await pg.createDatabase();
  // a domain per configuration: the Mosquitto is shared by the run
  const domain = ['--domain', `scale${k}`];
  const replicas: Serve[] = [];
  for (let i = 0; i < k; i++) replicas.push(r.add(await startServe(await replicaArgs(r, mq.broker.url, store, domain))));
  await poll(async () => replicas.some(owns), 100, 60_000, 'a lease owner');
  const parts: Part[] = replicas.map((s, i) => ({ kind: 'plane', label: `replica ${i + 1}${owns(s) ? ' (lease owner)' : ''}`, cpu: () => cpuSeconds(s.proc.pid!) }));
  for (let i = 1; i <= o.proplets; i++) {
    const p = r.add(await startProplet(['--id', `scale${k}-p${i}`, '--broker', mq.broker.url, '--max-tasks', String(o.maxTasks), '--heartbeat', '5s', ...domain]));
    parts.push({ kind: 'proplet', label: `node proplet ${i}`, cpu: () => cpuSeconds(p.proc.pid!) });
  }
  const alive = (s: Serve) => metric(s, 'propeller_proplets_total{state="alive",type="external"}');
  await poll(async () => (await Promise.all(replicas.map(alive))).every((n) => n === o.proplets), 100, 60_000, 'every replica sees the proplets');
  parts.push({ kind: 'mosquitto', label: 'Mosquitto', cpu: () => cpuSeconds(mq.pid) });
  if (pg.pid) parts.push({ kind: 'postgres', label: 'PostgreSQL (server + backends)', cpu: () => treeCpuSeconds(pg.pid!()) });
  return { name: `${k} replica${k > 1 ? 's' : ''} + Mosquitto + PostgreSQL`, apis: replicas, parts };
}

async function stream(s: Setup, from: number, n: number, concurrency: number, file: string): Promise<number> {
  let next = from;
  let errors = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < from + n) {
        const i = next++;
        try {
          await s.apis[i % s.apis.length]!.api.createTask({ name: 'add', file, inputs: [i, 1] }, { start: true });
        } catch {
          errors++;
        }
      }
    }),
  );
  return errors;
}

const counted = (s: Serve, state: string) => metric(s, `propeller_tasks_total{state="${state}"}`);

/** Until every replica counts `total` tasks finished (Completed or Failed). */
async function finished(s: Setup, total: number, ms: number): Promise<void> {
  const done = async (x: Serve) => (await counted(x, 'Completed')) + (await counted(x, 'Failed')) >= total;
  await poll(async () => (await Promise.all(s.apis.map(done))).every(Boolean), 50, ms, `${total} tasks finished`);
}

async function measure(s: Setup, replicas: number, o: { tasks: number; warmup: number; concurrency: number; file: string }, left: (w: string) => number): Promise<Measured> {
  const warmErrors = await stream(s, 0, o.warmup, o.concurrency, o.file);
  await finished(s, o.warmup - warmErrors, left('warm-up'));
  const st0 = await storeCounters(s);
  const logsAt = s.apis.map((x) => x.logs.length);
  const cpu0 = s.parts.map((p) => p.cpu());
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  const errors = await stream(s, o.warmup, o.tasks, o.concurrency, o.file);
  await finished(s, o.warmup - warmErrors + o.tasks - errors, left(s.name));
  const wallS = (performance.now() - t0) / 1000;
  const self = process.cpuUsage(self0);
  const done = o.tasks - errors;
  const per1k = s.parts.map((p, i) => ({ kind: p.kind, label: p.label, cpu: ((p.cpu() - cpu0[i]!) * 1000) / done }));
  const failed = await counted(s.apis[0]!, 'Failed');
  const st1 = await storeCounters(s);
  const store = { commits: st1.commits - st0.commits, writes: st1.writes - st0.writes, conflicts: st1.conflicts - st0.conflicts };
  const m = { store, conflictRows: conflictRows(s, logsAt), name: s.name, replicas, tps: done / wallS, wallS, errors, failed, load: load(), per1k, clientPer1k: ((self.user + self.system) / 1e6 / done) * 1000 };
  console.log(`${s.name}: ${fmt(m.tps)} tasks/s (${done} in ${fmt(wallS)} s, ${errors} POST errors, ${failed} failed), load ${m.load}`);
  return m;
}

const sumKind = (m: Measured, kind: string) => m.per1k.filter((p) => p.kind === kind).reduce((a, p) => a + p.cpu, 0);

async function tasks(values: Record<string, string | boolean | undefined>): Promise<void> {
  const left = budget(values['time-limit'] as string);
  const o = { tasks: Number(values.tasks), warmup: Number(values.warmup), concurrency: Number(values.concurrency) };
  const shape = { proplets: Number(values.proplets), maxTasks: Number(values['max-tasks']) };
  const ks = String(values.replicas)
    .split(',')
    .map(Number)
    .filter((k) => k > 0);
  await buildExamples();
  const file = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  const cores = availableParallelism();
  console.log(
    `\nscale: ${o.tasks} tasks (add.wasm inline, POST ?start=true, ${o.concurrency} in flight, round-robin over every replica's API) after ${o.warmup} warm-up; ${shape.proplets} node proplets (--max-tasks ${shape.maxTasks}); Node ${process.version}, ${cores} cores, load ${load()}`,
  );
  const results: Measured[] = [];
  const shared = new Resources();
  try {
    if (!values['no-embedded']) {
      const r = new Resources();
      try {
        results.push(await measure(await embeddedSetup(r, shape), 0, { ...o, file }, left));
      } finally {
        await r.close();
      }
    }
    if (ks.length) {
      const pg = shared.add(await startPostgres({ durable: true }));
      const mq = await mosquitto(shared);
      for (const k of ks) {
        const r = new Resources();
        try {
          results.push(await measure(await replicaSetup(r, k, mq, pg, shape), k, { ...o, file }, left));
        } finally {
          await r.close();
        }
      }
    }
  } finally {
    await shared.close();
  }
  report(results, cores);
}

function report(results: Measured[], cores: number): void {
  console.log('\nCPU-seconds per 1,000 tasks, per process (lower is better):\n');
  printTable(
    ['configuration', 'tasks/s', 'control plane (each process)', 'plane total', 'Mosquitto', 'PostgreSQL', 'node proplets', 'bench client', 'all', 'load'],
    results.map((m) => [
      m.name,
      m.tps,
      m.per1k
        .filter((p) => p.kind === 'plane')
        .map((p) => `${p.label}: ${fmt(p.cpu)}`)
        .join('; '),
      sumKind(m, 'plane'),
      m.replicas ? fmt(sumKind(m, 'mosquitto')) : '(in serve)',
      m.replicas ? fmt(sumKind(m, 'postgres')) : '(SQLite in serve)',
      sumKind(m, 'proplet'),
      m.clientPer1k,
      sumKind(m, 'plane') + sumKind(m, 'mosquitto') + sumKind(m, 'postgres') + sumKind(m, 'proplet') + m.clientPer1k,
      m.load,
    ]),
  );

  console.log('\nThe store over the measured stream (all replicas):\n');
  printTable(
    ['configuration', 'commits per task', 'row writes per task', 'conflicts per 1,000 tasks', 'conflicting rows logged (who lost, on what)'],
    results.map((m) => {
      const done = m.tps * m.wallS;
      return [m.name, m.store.commits / done, m.store.writes / done, (m.store.conflicts * 1000) / done, m.conflictRows];
    }),
  );

  console.log(`\nProjection per added core (from the CPU per task above; measured tasks/s cannot grow here: ${cores} cores are shared by every process of the run and by the rest of the machine):\n`);
  const rows: (string | number)[][] = [];
  const emb = results.find((m) => m.replicas === 0);
  if (emb) {
    const c = sumKind(emb, 'plane');
    rows.push(['embedded: serve on one core (one Node process: no more cores help it)', `${fmt(1000 / c)} tasks/s`, `${fmt(c)} CPU-s per 1,000 tasks`]);
  }
  const rep = results.filter((m) => m.replicas > 0);
  for (const m of rep) {
    const planes = m.per1k.filter((p) => p.kind === 'plane');
    const owner = planes.find((p) => p.label.includes('owner')) ?? planes[0]!;
    const total = sumKind(m, 'plane');
    rows.push([
      `${m.replicas} replica${m.replicas > 1 ? 's' : ''}, one core each: the busiest (the lease owner) saturates first`,
      `${fmt(1000 / owner.cpu)} tasks/s`,
      `owner ${fmt(owner.cpu)}, all replicas ${fmt(total)} CPU-s per 1,000 tasks; then Mosquitto needs ${fmt((sumKind(m, 'mosquitto') / 1000) * (1000 / owner.cpu))} and PostgreSQL ${fmt((sumKind(m, 'postgres') / 1000) * (1000 / owner.cpu))} cores`,
    ]);
  }
  // The owner saturates first. How its cost per task moves with each added replica (a least-squares
  // line over the measured counts) says what an added core gives: more if it falls, less if it rises.
  if (rep.length >= 2) {
    const owner = (m: Measured) => m.per1k.find((p) => p.kind === 'plane' && p.label.includes('owner'))?.cpu ?? m.per1k.find((p) => p.kind === 'plane')!.cpu;
    const line = (ys: number[]) => {
      const xs = rep.map((m) => m.replicas);
      const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
      const my = ys.reduce((a, b) => a + b, 0) / ys.length;
      const slope = xs.reduce((a, x, i) => a + (x - mx) * (ys[i]! - my), 0) / xs.reduce((a, x) => a + (x - mx) ** 2, 0);
      return { slope, at: (k: number) => my + slope * (k - mx) };
    };
    const o = line(rep.map(owner));
    const all = line(rep.map((m) => sumKind(m, 'plane')));
    const pgl = line(rep.map((m) => sumKind(m, 'postgres')));
    const ks = [1, 2, 3, 4, 6, 8];
    rows.push([
      `each added replica (fitted over ${rep.map((m) => m.replicas).join(', ')} replicas)`,
      `owner ${o.slope >= 0 ? '+' : ''}${fmt(o.slope)} CPU-s per 1,000 tasks`,
      `all replicas ${all.slope >= 0 ? '+' : ''}${fmt(all.slope)}, PostgreSQL ${pgl.slope >= 0 ? '+' : ''}${fmt(pgl.slope)} CPU-s per 1,000 tasks; ceiling with k replicas (owner on one core): ${ks.map((k) => `${k}: ${o.at(k) > 0 ? fmt(1000 / o.at(k)) : '∞'}`).join(', ')} tasks/s`,
    ]);
    rows.push([
      'so an added core gives',
      o.slope > 0 ? 'less throughput' : 'more throughput',
      o.slope > 0
        ? 'every replica adopts every change through the feed, and a task\'s rows are written by several replicas (placement on the owner, results wherever $share hands them) and conflict (above): replicas buy availability and API capacity, not task throughput'
        : `up to ${fmt(1000 / o.at(rep.at(-1)!.replicas + 1) - 1000 / o.at(rep.at(-1)!.replicas))} tasks/s more with the next replica`,
    ]);
  }
  printTable(['projection', 'tasks/s', 'from'], rows);
  console.log(`\n${cores} cores cap absolute scaling here: every replica, Mosquitto, PostgreSQL, the proplets and the client share them, so more replicas cannot add tasks/s in this run; read the projection, not the measured tasks/s, for what an added core gives.`);
}

// ---------------------------------------------------------------------------
// Fleet

/** An edge Mosquitto bridged to the core one: every topic of ours crosses both ways (try_private keeps them from looping). */
const bridge = (core: Mosquitto, i: number) =>
  ['connection edge-' + i, `address 127.0.0.1:${core.port}`, 'topic m/# both 1', 'cleansession true', 'try_private true', 'bridge_protocol_version mqttv311', 'notifications false', `remote_clientid propeller-edge-${process.pid}-${i}`].join('\n');

/** Until a message published on the core reaches a subscriber on the edge (the bridge is up). */
async function bridged(core: Mosquitto, edge: Mosquitto): Promise<void> {
  const t = `m/bench/c/probe/messages/${edge.port}`;
  const sub = await mqtt.connectAsync(edge.url, { reconnectPeriod: 0 });
  const pub = await mqtt.connectAsync(core.url, { reconnectPeriod: 0 });
  try {
    await sub.subscribeAsync(t, { qos: 1 });
    let got = false;
    sub.on('message', () => (got = true));
    for (let i = 0; i < 300 && !got; i++) {
      await pub.publishAsync(t, 'x', { qos: 0 });
      await sleep(100);
    }
    if (!got) throw new Error(`the bridge from Mosquitto ${edge.port} to ${core.port} did not come up`);
  } finally {
    await Promise.all([sub.endAsync(), pub.endAsync()]);
  }
}

interface Sim {
  proc: ChildProcess;
  devices: number;
  broker: string;
  lastLine: string;
}

function startSim(r: Resources, ids: string[], broker: string, heartbeatMs: number, rate: number): Sim {
  const creds = join(r.dir(), 'devices.json');
  // Mosquitto here takes any account (allow_anonymous): the secrets are the file's
  writeFileSync(creds, JSON.stringify(Object.fromEntries(ids.map((id) => [id, `s-${id}`]))));
  const proc = spawn('node', [BIN, 'sim', '--devices', String(ids.length), '--credentials', creds, '--broker', broker, '--heartbeat', `${heartbeatMs}ms`, '--connect-rate', String(rate), '--status-every', '5s'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const s: Sim = { proc, devices: ids.length, broker, lastLine: '' };
  let buf = '';
  proc.stdout!.on('data', (d) => {
    buf += d;
    const lines = buf.split('\n');
    buf = lines.pop()!;
    if (lines.length) s.lastLine = lines.at(-1)!;
  });
  r.add({
    async kill() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((x) => proc.once('exit', x));
      proc.kill('SIGTERM');
      await Promise.race([exited, sleep(15_000)]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    },
  });
  return s;
}

async function fleet(values: Record<string, string | boolean | undefined>): Promise<void> {
  const left = budget(values['time-limit'] as string);
  const n = Number(values.fleet);
  const k = Number(values['fleet-replicas']);
  const perSim = Number(values['per-sim']);
  const perBroker = Number(values['per-broker']);
  const heartbeatMs = parseDuration('--heartbeat', values.heartbeat as string);
  const periods = Number(values.periods);
  const rate = Number(values['connect-rate']);
  // each sim and each broker stays below the descriptors a process may hold (ulimit -n: 20,000 here, not raisable), with room for the rest
  const limit = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim();
  const FD_ROOM = limit === 'unlimited' ? 1_000_000 : Number(limit) - 1000;
  if (!(n > 0 && k > 0 && perSim > 0 && perSim <= FD_ROOM && perBroker > 0 && perBroker <= FD_ROOM)) throw new Error(`--fleet, --fleet-replicas > 0; --per-sim and --per-broker from 1 to ${FD_ROOM} (ulimit -n ${limit}, less 1,000)`);
  // each sim process on a broker with room for all its devices; a new edge broker when none has
  const plan: { devices: number; broker: number }[] = [];
  const onBroker: number[] = [];
  for (let left = n; left > 0; left -= perSim) {
    const devices = Math.min(perSim, left);
    let b = onBroker.findIndex((x) => x + devices <= perBroker);
    if (b < 0) b = onBroker.push(0) - 1;
    onBroker[b]! += devices;
    plan.push({ devices, broker: b });
  }
  const sims = plan.length;
  const brokers = onBroker.length;
  const offlineMs = 3 * heartbeatMs;
  console.log(
    `\nscale --fleet: ${n} simulated MCU devices in ${sims} sim processes on ${brokers} Mosquitto broker${brokers > 1 ? `s (1 core + ${brokers - 1} edge bridged to it)` : ''}, ${k} replica${k > 1 ? 's' : ''} + PostgreSQL; heartbeat ${heartbeatMs} ms, offline after ${offlineMs} ms; connect rate ${rate}/s per sim; Node ${process.version}, ${availableParallelism()} cores, load ${load()}`,
  );
  const r = new Resources();
  try {
    const pg = r.add(await startPostgres({ durable: true }));
    const store = await pg.createDatabase();
    const core = await mosquitto(r);
    const mqs = [core];
    for (let i = 1; i < brokers; i++) {
      const edge = await mosquitto(r, bridge(core.broker, i));
      await bridged(core.broker, edge.broker);
      mqs.push(edge);
    }
    const health = { HEALTH_CHECK_INTERVAL: `${Math.min(1000, heartbeatMs / 4)}ms`, OFFLINE_THRESHOLD: `${offlineMs}ms`, FAILURE_THRESHOLD: `${12 * heartbeatMs}ms` };
    const replicas: Serve[] = [];
    for (let i = 0; i < k; i++) replicas.push(r.add(await startServe(await replicaArgs(r, core.broker.url, store), health)));
    await poll(async () => replicas.some(owns), 100, left('a lease owner'), 'a lease owner');
    const firstOwner = replicas.find(owns)!;
    const name = (s: Serve) => `replica ${replicas.indexOf(s) + 1}${s === firstOwner ? ' (owner at start)' : ''}`;
    // a busy owner that misses its renewals loses the lease (to another replica, or takes it again): counted, not hidden
    const leaseMoves = () => replicas.reduce((a, s) => a + s.logs.filter((l) => l.msg === 'lease acquired').length, 0) - 1;
    const rss0 = replicas.map((s) => rssBytes(s.proc.pid!));
    const alive = (s: Serve) => metric(s, 'propeller_proplets_total{state="alive",type="external"}');

    // registration: every replica hears every registration (plain subscriptions) and keeps its own view
    const simsRun: Sim[] = [];
    const cpuR0 = replicas.map((s) => cpuSeconds(s.proc.pid!));
    const pgReg0 = pg.pid ? treeCpuSeconds(pg.pid()) : NaN;
    const mqReg0 = mqs.map((m) => cpuSeconds(m.pid));
    const t0 = performance.now();
    for (const [i, { devices, broker }] of plan.entries()) {
      const ids = Array.from({ length: devices }, (_, j) => `f${i}-${String(j + 1).padStart(5, '0')}`);
      simsRun.push(startSim(r, ids, mqs[broker]!.broker.url, heartbeatMs, rate));
    }
    const registeredAt = new Map<Serve, number>();
    await poll(
      async () => {
        const counts = await Promise.all(replicas.map(alive));
        replicas.forEach((s, i) => counts[i]! >= n && !registeredAt.has(s) && registeredAt.set(s, performance.now() - t0));
        for (const sim of simsRun) if (sim.proc.exitCode !== null) throw new Error(`a sim process exited ${sim.proc.exitCode}: ${sim.lastLine}`);
        return registeredAt.size === k;
      },
      2000,
      left('registration'),
      `${n} devices alive on every replica`,
    );
    const registeredMs = Math.max(...registeredAt.values());
    const movesRegistering = leaseMoves();
    const regCpu = replicas.map((s, i) => cpuSeconds(s.proc.pid!) - cpuR0[i]!);
    const pgReg = pg.pid ? treeCpuSeconds(pg.pid()) - pgReg0 : NaN;
    const mqReg = mqs.map((m, i) => cpuSeconds(m.pid) - mqReg0[i]!);
    const rssReg = replicas.map((s) => rssBytes(s.proc.pid!));
    console.log(`registered: ${n} devices alive on every replica in ${fmt(registeredMs / 1000)} s (${replicas.map((s) => `${name(s)} ${fmt(registeredAt.get(s)! / 1000)} s`).join(', ')}), load ${load()}`);

    // steady state: heartbeats only; no scrapes meanwhile (a scrape lists every proplet)
    const transitions = async (s: Serve) => (await metric(s, 'propeller_proplet_transitions_total{to="offline"}')) + (await metric(s, 'propeller_proplet_transitions_total{to="failed"}'));
    const tr0 = await Promise.all(replicas.map(transitions));
    const cpuS0 = replicas.map((s) => cpuSeconds(s.proc.pid!));
    const mqCpu0 = mqs.map((m) => cpuSeconds(m.pid));
    const pgCpu0 = pg.pid ? treeCpuSeconds(pg.pid()) : 0;
    const simCpu0 = simsRun.map((s) => cpuSeconds(s.proc.pid!));
    const steadyMs = periods * heartbeatMs;
    const s0 = performance.now();
    await sleep(Math.min(steadyMs, left('steady state')));
    const wall = (performance.now() - s0) / 1000;
    const cpuS = replicas.map((s, i) => cpuSeconds(s.proc.pid!) - cpuS0[i]!);
    const mqCpu = mqs.map((m, i) => cpuSeconds(m.pid) - mqCpu0[i]!);
    const pgCpu = pg.pid ? treeCpuSeconds(pg.pid()) - pgCpu0 : NaN;
    const simCpu = simsRun.map((s, i) => cpuSeconds(s.proc.pid!) - simCpu0[i]!);
    const falseOffline = (await Promise.all(replicas.map(transitions))).map((x, i) => x - tr0[i]!);
    const aliveEnd = await Promise.all(replicas.map(alive));
    const heartbeats = n * (wall / (heartbeatMs / 1000));
    const steadyLoad = load();

    console.log(`\nFleet of ${n} on Mosquitto, ${k} replica${k > 1 ? 's' : ''} (steady: ${periods} heartbeat periods, ${fmt(wall)} s, load ${steadyLoad}):\n`);
    printTable(
      ['process', 'registration: all alive s (±2 s)', 'registration CPU s', 'RSS before MiB', 'RSS registered MiB', 'RSS steady MiB', 'KiB per device', 'steady CPU % of a core', 'µs CPU per heartbeat', 'alive at end', 'false offline (goal 0)'],
      [
        ...replicas.map((s, i) => [
          name(s),
          registeredAt.get(s)! / 1000,
          regCpu[i]!,
          rss0[i]! / MiB,
          rssReg[i]! / MiB,
          rssBytes(s.proc.pid!) / MiB,
          (rssBytes(s.proc.pid!) - rss0[i]!) / n / 1024,
          (cpuS[i]! / wall) * 100,
          (cpuS[i]! * 1e6) / heartbeats,
          String(aliveEnd[i]!),
          String(falseOffline[i]!),
        ]),
        ...mqs.map((m, i) => [`Mosquitto ${i === 0 ? 'core' : `edge ${i}`}`, '', mqReg[i]!, '', '', rssBytes(m.pid) / MiB, '', (mqCpu[i]! / wall) * 100, '', '', '']),
        ['PostgreSQL (server + backends)', '', pgReg, '', '', '', '', (pgCpu / wall) * 100, '', '', ''],
        ...simsRun.map((s, i) => [`sim ${i + 1} (${s.devices} devices on ${s.broker})`, '', '', '', '', rssBytes(s.proc.pid!) / MiB, (rssBytes(s.proc.pid!) / s.devices / 1024), (simCpu[i]! / wall) * 100, '', '', '']),
      ],
    );
    for (const [i, s] of simsRun.entries()) console.log(`sim ${i + 1}: ${s.lastLine}`);
    const total = falseOffline.reduce((a, b) => a + b, 0);
    const allAlive = aliveEnd.every((x) => x === n);
    console.log(`\nthe lease (5 s) was lost and taken again (by another replica or the same) ${movesRegistering} time(s) during registration and ${leaseMoves() - movesRegistering} in the steady phase: an owner that misses its renewals (event loop or database slow) loses it`);
    console.log(`goal: zero false offline over ${periods} heartbeat periods on every replica: ${total === 0 && allAlive ? 'met' : 'NOT met'} (${total} transitions; alive ${aliveEnd.join(', ')} of ${n})`);
  } finally {
    await r.close();
  }
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      tasks: { type: 'string', default: '2000' },
      warmup: { type: 'string', default: '100' },
      concurrency: { type: 'string', default: '32' },
      proplets: { type: 'string', default: '8' },
      'max-tasks': { type: 'string', default: '1' },
      replicas: { type: 'string', default: '1,2,3' },
      'no-embedded': { type: 'boolean', default: false },
      'time-limit': { type: 'string', default: '10m' },
      fleet: { type: 'string' },
      'fleet-replicas': { type: 'string', default: '2' },
      'per-sim': { type: 'string', default: '10000' },
      'per-broker': { type: 'string', default: '15000' },
      heartbeat: { type: 'string', default: '10s' },
      periods: { type: 'string', default: '4' },
      'connect-rate': { type: 'string', default: '1000' },
    },
  });
  if (values.fleet !== undefined) await fleet(values);
  else await tasks(values);
}
