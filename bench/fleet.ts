// Fleet: thousands of simulated MCU proplets against the embedded broker and
// one control plane. Two processes, so that each side's CPU and memory are
// its own: this one runs the broker and the control plane; a child runs the
// devices (and, as "the user", posts the task storm over HTTP).
//
// Phases, all bounded in time:
//   1. baseline: the same number of plain mqtt.js connections (CONNECT and
//      SUBSCRIBE to the three per-proplet topics, no protocol) at the same
//      paced rate, then closed: what MQTT alone costs;
//   2. the fleet connects and registers (compact CBOR, direct addressing);
//   3. steady state: heartbeats for --steady, messages/s and the control
//      plane's CPU (goal ≤ 80 µs per heartbeat); no proplet may go offline (false offline count, goal 0);
//   4. a storm of --tasks small tasks (add.wasm, inline) posted through the
//      HTTP API, spread over the fleet: tasks/s and dispatch latency (POST sent
//      → start delivered to the device, both clocks of one machine).
//
//   npm run bench -- fleet [--devices 10000] [--heartbeat 10s] [--steady 30s] [--tasks 10000]
//        [--connect-rate 1000] [--max-pending 256] [--concurrency 64] [--runner-pool 4]
//        [--no-baseline] [--time-limit 15m] [--mq-concurrency N] [--profile DIR]
//
// --profile DIR writes a CPU profile of this process (broker + control plane)
// over the steady phase only (DIR/fleet-steady-PID.cpuprofile); the devices'
// process is profiled with FLEET_CHILD_NODE_ARGS='--cpu-prof'.
//
// --mq-concurrency is an experiment: it sets the embedded broker's mqemitter
// concurrency (Aedes' default is 100) on the running broker, to compare with
// 0 (unbounded), which avoids mqemitter's recursive queue drain.

import { fork, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import { ControlPlaneClient } from '../control-plane/client.ts';
import { parseDuration } from '../control-plane/config.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { fleetUuid, startFleet, type Fleet } from '../proplet-mcu/sim.ts';
import { propletSubscriptions, scope } from '../topics/index.ts';
import { startStack } from '../test/helpers/stack.ts';
import { fmt, printTable, summarize } from './stats.ts';

const SCOPE = scope('propeller', 'control');
const now = () => performance.timeOrigin + performance.now();
const MiB = 1024 * 1024;

type ToChild =
  | { cmd: 'baseline'; url: string; ids: string[]; secrets: string[]; rate: number; maxPending: number }
  | { cmd: 'baseline-close' }
  | { cmd: 'fleet'; url: string; ids: string[]; secrets: string[]; heartbeatMs: number; rate: number; maxPending: number; pool: number }
  | { cmd: 'stats' }
  | { cmd: 'storm'; api: string; n: number; concurrency: number; file: string }
  | { cmd: 'stop' };

interface ChildStats {
  cpuMs: number;
  rss: number;
  heapUsed: number;
  heartbeats: number;
  connected: number;
  reconnecting: number;
  disconnects: number;
  completed: number;
  failed: number;
  refused: number;
}

type FromChild =
  | { t: 'baseline-done'; ms: number; lat: number[]; failed: number; stats: ChildStats }
  | { t: 'closed' }
  | { t: 'fleet-online'; ms: number; lat: number[]; stats: ChildStats }
  | { t: 'stats'; stats: ChildStats }
  | { t: 'storm-done'; posted: [string, number][]; received: [string, number][]; onDevice: number[]; errors: number; stats: ChildStats }
  | { t: 'stopped' }
  | { t: 'error'; error: string };

// ---------------------------------------------------------------------------
// The parent: broker + control plane.

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      devices: { type: 'string', default: '10000' },
      heartbeat: { type: 'string', default: '10s' },
      steady: { type: 'string', default: '30s' },
      tasks: { type: 'string', default: '10000' },
      'connect-rate': { type: 'string', default: '1000' },
      'runner-pool': { type: 'string', default: '4' },
      'max-pending': { type: 'string', default: '256' },
      concurrency: { type: 'string', default: '64' },
      'time-limit': { type: 'string', default: '15m' },
      'no-baseline': { type: 'boolean', default: false },
      // experiment: the embedded broker's mqemitter concurrency (Aedes' default 100; 0 = unbounded)
      'mq-concurrency': { type: 'string' },
      profile: { type: 'string' },
    },
  });
  const n = Number(values.devices);
  const heartbeatMs = parseDuration('--heartbeat', values.heartbeat!);
  const steadyMs = parseDuration('--steady', values.steady!);
  const tasks = Number(values.tasks);
  const rate = Number(values['connect-rate']);
  const maxPending = Number(values['max-pending']);
  const concurrency = Number(values.concurrency);
  const runnerPool = Number(values['runner-pool']);
  const deadline = Date.now() + parseDuration('--time-limit', values['time-limit']!);
  const left = (what: string) => {
    const ms = deadline - Date.now();
    if (ms <= 0) throw new Error(`time limit reached before ${what}`);
    return ms;
  };

  await buildExamples();
  const add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  const offlineMs = 3 * heartbeatMs;
  const s = await startStack({ health: { offlineThresholdMs: offlineMs, failureThresholdMs: 12 * heartbeatMs, checkIntervalMs: Math.min(1000, heartbeatMs / 4) } });
  if (values['mq-concurrency'] !== undefined) {
    (s.broker as unknown as { aedes: { mq: { concurrency: number } } }).aedes.mq.concurrency = Number(values['mq-concurrency']);
    console.log(`experiment: broker mqemitter concurrency set to ${values['mq-concurrency']}`);
  }
  const transitions = { offline: 0, failed: 0, alive: 0 };
  s.cp.registry.on('state', (p) => void transitions[p.state]++);
  // FLEET_CHILD_NODE_ARGS: extra node flags for the devices process (e.g. --cpu-prof)
  const child = fork(fileURLToPath(import.meta.url), ['--fleet-child'], { execArgv: [...process.execArgv, ...(process.env.FLEET_CHILD_NODE_ARGS ?? '').split(' ').filter(Boolean)], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ask = rpc(child);
  const rssMain = () => process.memoryUsage().rss;
  const cpuMain = () => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1000;
  };
  const rows: (string | number)[][] = [];
  const rss0 = rssMain();
  console.log(`\nfleet: ${n} simulated MCU proplets, heartbeat ${heartbeatMs} ms (offline after ${offlineMs} ms), connect rate ${rate}/s with at most ${maxPending} pending, Node ${process.version}, ${(await import('node:os')).cpus().length} cores`);

  try {
    // 1. baseline: plain MQTT connections
    let base: Extract<FromChild, { t: 'baseline-done' }> | undefined;
    let baseCpu = 0;
    let baseRss = 0;
    if (!values['no-baseline']) {
      const ids = Array.from({ length: n }, (_, i) => `plain-${i}`);
      const secrets = ids.map((id) => s.creds.issue(id, 'proplet'));
      const c0 = cpuMain();
      base = (await ask({ cmd: 'baseline', url: s.broker.url, ids, secrets, rate, maxPending }, left('baseline'))) as Extract<FromChild, { t: 'baseline-done' }>;
      baseCpu = cpuMain() - c0;
      baseRss = rssMain();
      await ask({ cmd: 'baseline-close' }, left('baseline close'));
      for (const id of ids) s.creds.delete(id);
      await waitFor(() => s.broker.connectedClients <= 1, 30_000);
      const bl = summarize(base.lat);
      console.log(`baseline: ${n} plain connections in ${Math.round(base.ms)} ms (${base.failed} failed); per connection p50 ${fmt(bl.p50)} ms, p99 ${fmt(bl.p99)} ms; broker+CP cpu ${fmt(baseCpu / n)} ms and ${fmt((baseRss - rss0) / n / 1024)} KiB RSS per connection`);
    }

    // 2. the fleet connects and registers
    const prefix = randomBytes(10).toString('hex');
    const ids = Array.from({ length: n }, (_, i) => fleetUuid(prefix, i + 1));
    const secrets = ids.map((id) => s.creds.issue(id, 'proplet'));
    const c0 = cpuMain();
    const t0 = performance.now();
    const online = ask({ cmd: 'fleet', url: s.broker.url, ids, secrets, heartbeatMs, rate, maxPending, pool: runnerPool }, left('fleet'));
    await waitFor(() => s.cp.registry.size >= n, left('registration'));
    const registeredMs = performance.now() - t0;
    const fleet = (await online) as Extract<FromChild, { t: 'fleet-online' }>;
    const fleetCpu = cpuMain() - c0;
    const fleetRss = rssMain();
    {
      const fl0 = summarize(fleet.lat);
      console.log(`fleet: ${n} registered with the control plane in ${Math.round(registeredMs)} ms; per device p50 ${fmt(fl0.p50)} ms, p99 ${fmt(fl0.p99)} ms; broker+CP cpu ${fmt(fleetCpu / n)} ms and ${fmt((fleetRss - rss0) / n / 1024)} KiB RSS per device; devices process ${fmt(fleet.stats.rss / MiB)} MiB RSS`);
    }

    // 3. steady state
    const alive0 = await aliveReceived(s);
    const cs0 = ((await ask({ cmd: 'stats' }, left('stats'))) as Extract<FromChild, { t: 'stats' }>).stats;
    const profiler = values.profile ? await startProfile() : undefined;
    const su0 = process.cpuUsage();
    const sc0 = cpuMain();
    const st0 = performance.now();
    await sleep(Math.min(steadyMs, left('steady state')));
    const steadyWall = performance.now() - st0;
    const steadyCpu = cpuMain() - sc0;
    const su = process.cpuUsage(su0);
    if (profiler) console.log(`profile of the steady phase: ${await profiler(values.profile!)}`);
    const alive = (await aliveReceived(s)) - alive0;
    const cs1 = ((await ask({ cmd: 'stats' }, left('stats'))) as Extract<FromChild, { t: 'stats' }>).stats;
    const steadyRss = rssMain();
    const allAlive = s.cp.registry.list().filter((p) => p.state === 'alive').length;
    console.log(`steady: ${alive} heartbeats in ${Math.round(steadyWall)} ms (${fmt(alive / (steadyWall / 1000))} msg/s), broker+CP ${fmt((steadyCpu / steadyWall) * 100)} % of a core, ${allAlive}/${n} alive, false offline ${transitions.offline + transitions.failed}, RSS broker+CP ${fmt(steadyRss / MiB)} MiB`);

    // 4. the task storm
    const completed = new Map<string, number>();
    const failed = new Set<string>();
    s.cp.tasks.on('changed', (t) => {
      if (t.state === 'Completed' && !completed.has(t.id)) completed.set(t.id, now());
      else if (t.state === 'Failed') failed.add(t.id);
    });
    const tc0 = cpuMain();
    const storm = (await ask({ cmd: 'storm', api: s.apiUrl, n: tasks, concurrency, file: add }, left('storm'))) as Extract<FromChild, { t: 'storm-done' }>;
    await waitFor(() => completed.size + failed.size >= tasks - storm.errors, left('storm completion'));
    const stormCpu = cpuMain() - tc0;
    const posted = new Map(storm.posted);
    const firstPost = Math.min(...storm.posted.map(([, t]) => t));
    const lastDone = Math.max(...completed.values());
    const dispatch = storm.received.filter(([id]) => posted.has(id)).map(([id, t]) => t - posted.get(id)!);
    const e2e = [...completed].filter(([id]) => posted.has(id)).map(([id, t]) => t - posted.get(id)!);
    const onDevices = new Set(s.cp.tasks.list().filter((t) => completed.has(t.id)).map((t) => t.proplet_id)).size;
    const stormRss = rssMain();
    console.log(`storm: ${completed.size} completed, ${failed.size} failed, ${storm.errors} POST errors, on ${onDevices} devices`);

    const csEnd = ((await ask({ cmd: 'stats' }, left('stats'))) as Extract<FromChild, { t: 'stats' }>).stats;
    const falseOffline = transitions.offline + transitions.failed;

    // ---- report
    const lat = (x: number[]) => summarize(x);
    const fl = lat(fleet.lat);
    console.log('\nConnect and register (same paced rate, same broker):\n');
    const connectRows: (string | number)[][] = [];
    if (base) {
      const bl = lat(base.lat);
      connectRows.push(['baseline: plain mqtt.js CONNECT + SUBSCRIBE', n, base.ms, bl.p50, bl.p99, baseCpu / n, (baseRss - rss0) / n / 1024, base.stats.rss / n / 1024]);
    }
    connectRows.push(['MCU fleet: CONNECT (will) + SUBSCRIBE + register + alive', n, registeredMs, fl.p50, fl.p99, fleetCpu / n, (fleetRss - rss0) / n / 1024, fleet.stats.rss / n / 1024]);
    printTable(['phase', 'devices', 'all done ms', 'per device p50 ms', 'p99 ms', 'broker+CP cpu ms/device', 'broker+CP RSS KiB/device', 'device-side RSS KiB/device'], connectRows);

    console.log('\nSteady state and storm:\n');
    const dl = lat(dispatch);
    const el = lat(e2e);
    rows.push(['heartbeats received by the control plane', `${fmt(alive / (steadyWall / 1000))} msg/s`, `expected ${fmt(n / (heartbeatMs / 1000))} msg/s`]);
    rows.push(['broker + control plane CPU, steady', `${fmt((steadyCpu / steadyWall) * 100)} % of one core`, `${fmt((steadyCpu * 1000) / Math.max(1, alive))} µs per heartbeat (user ${fmt(su.user / Math.max(1, alive))}, system ${fmt(su.system / Math.max(1, alive))})`]);
    rows.push(['devices process CPU, steady', `${fmt(((cs1.cpuMs - cs0.cpuMs) / steadyWall) * 100)} % of one core`, `${cs1.heartbeats - cs0.heartbeats} heartbeats sent`]);
    rows.push(['false offline transitions (goal 0)', falseOffline, `${transitions.offline} offline, ${transitions.failed} failed; device reconnects ${csEnd.disconnects}`]);
    rows.push(['RSS broker + control plane', `${fmt(steadyRss / MiB)} MiB`, `${fmt(rss0 / MiB)} MiB before; ${fmt(stormRss / MiB)} MiB after the storm`]);
    rows.push(['RSS devices process', `${fmt(cs1.rss / MiB)} MiB`, `${fmt(cs1.rss / n / 1024)} KiB per device`]);
    rows.push(['storm: tasks completed', `${completed.size}/${tasks}`, `${failed.size} failed, ${storm.errors} POST errors, spread over ${onDevices} devices`]);
    rows.push(['storm: throughput (first POST → last Completed)', `${fmt(completed.size / ((lastDone - firstPost) / 1000))} tasks/s`, `${concurrency} POSTs in flight; broker+CP CPU ${fmt(stormCpu / 1000)} s`]);
    rows.push(['storm: dispatch latency (POST sent → start at the device)', `p50 ${fmt(dl.p50)} ms`, `p99 ${fmt(dl.p99)} ms, max ${fmt(dl.max)} ms (n=${dl.n})`]);
    const od = lat(storm.onDevice);
    rows.push(['storm: on the device (start received → final result sent)', `p50 ${fmt(od.p50)} ms`, `p99 ${fmt(od.p99)} ms, max ${fmt(od.max)} ms; shared sandbox of ${runnerPool} workers`]);
    rows.push(['storm: end to end (POST sent → Completed at the control plane)', `p50 ${fmt(el.p50)} ms`, `p99 ${fmt(el.p99)} ms, max ${fmt(el.max)} ms`]);
    printTable(['measure', 'value', 'detail'], rows);
    if (base) console.log(`\nratio fleet/baseline, all connected: ${fmt(registeredMs / base.ms)}x; per-device p99: ${fmt(fl.p99 / lat(base.lat).p99)}x`);
    console.log(`goal: zero false offline: ${falseOffline === 0 ? 'met' : 'NOT met'}`);
    // issue 16: the whole path of a heartbeat (TCP, broker, decoding, registry), idle connections' upkeep included
    const perHeartbeat = (steadyCpu * 1000) / Math.max(1, alive);
    console.log(`goal: broker + control plane CPU per heartbeat ≤ 80 µs (was 318–418): ${fmt(perHeartbeat)} µs, ${perHeartbeat <= 80 ? 'met' : 'NOT met'}`);
  } finally {
    const exited = new Promise((r) => child.once('exit', r));
    await ask({ cmd: 'stop' }, 120_000).catch(() => {});
    await Promise.race([exited, sleep(10_000)]);
    child.kill();
    await s.close();
  }
}

function rpc(child: ChildProcess): (m: ToChild, timeoutMs: number) => Promise<FromChild> {
  let waiting: { resolve: (m: FromChild) => void; reject: (e: Error) => void } | undefined;
  child.on('message', (m: FromChild) => {
    const w = waiting;
    waiting = undefined;
    if (m.t === 'error') w?.reject(new Error(`fleet child: ${m.error}`));
    else w?.resolve(m);
  });
  child.on('exit', (code) => waiting?.reject(new Error(`fleet child exited with ${code}`)));
  return (m, timeoutMs) =>
    new Promise<FromChild>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`fleet child: no answer to ${m.cmd} within ${timeoutMs} ms`)), timeoutMs);
      waiting = {
        resolve: (x) => {
          clearTimeout(timer);
          resolve(x);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      child.send(m);
    });
}

/** Starts the CPU profiler in this process; the function returned stops it and writes the profile into a directory. */
async function startProfile(): Promise<(dir: string) => Promise<string>> {
  const session = new Session();
  session.connect();
  const post = (method: string): Promise<unknown> => new Promise((resolve, reject) => session.post(method, (err, res) => (err ? reject(err) : resolve(res))));
  await post('Profiler.enable');
  await post('Profiler.start');
  return async (dir) => {
    const { profile } = (await post('Profiler.stop')) as { profile: unknown };
    session.disconnect();
    mkdirSync(dir, { recursive: true });
    const file = join(dir, `fleet-steady-${process.pid}.cpuprofile`);
    writeFileSync(file, JSON.stringify(profile));
    return file;
  };
}

async function aliveReceived(s: Awaited<ReturnType<typeof startStack>>): Promise<number> {
  const m = await s.cp.metrics.messagesReceived.get();
  return m.values.find((v) => v.labels.kind === 'proplet.alive')?.value ?? 0;
}

async function waitFor(cond: () => boolean, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms`);
    await sleep(20);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// The child: devices, plain baseline clients, and the storm's HTTP client.

function childStats(fleet: Fleet | undefined): ChildStats {
  const u = process.cpuUsage();
  const m = process.memoryUsage();
  const c = fleet?.counts();
  return {
    cpuMs: (u.user + u.system) / 1000,
    rss: m.rss,
    heapUsed: m.heapUsed,
    heartbeats: fleet ? fleet.devices.reduce((a, d) => a + d.stats.heartbeats, 0) : 0,
    connected: c?.connected ?? 0,
    reconnecting: c?.reconnecting ?? 0,
    disconnects: c?.disconnects ?? 0,
    completed: c?.tasksCompleted ?? 0,
    failed: c?.tasksFailed ?? 0,
    refused: c?.refused ?? 0,
  };
}

/** Runs `start(i)` for every index at `rate` per second with at most `maxPending` unsettled. */
async function paced(count: number, rate: number, maxPending: number, start: (i: number) => Promise<unknown>): Promise<void> {
  const interval = 1000 / rate;
  let nextAt = performance.now();
  let pending = 0;
  const waiting: (() => void)[] = [];
  const all: Promise<unknown>[] = [];
  for (let i = 0; i < count; i++) {
    while (pending >= maxPending) await new Promise<void>((r) => waiting.push(r));
    const t = performance.now();
    const wait = nextAt - t;
    nextAt = Math.max(t, nextAt) + interval;
    if (wait >= 1) await sleep(wait);
    pending++;
    all.push(
      start(i).finally(() => {
        pending--;
        waiting.shift()?.();
      }),
    );
  }
  await Promise.allSettled(all);
}

async function child(): Promise<void> {
  let plain: MqttClient[] = [];
  let fleet: Fleet | undefined;
  const received = new Map<string, number>();
  const onDevice: number[] = [];
  const reply = (m: FromChild) => process.send!(m);
  // the parent (broker + control plane) died: nothing left to measure
  process.on('disconnect', () => process.exit(0));
  process.on('message', async (m: ToChild) => {
    try {
      switch (m.cmd) {
        case 'baseline': {
          const lat: number[] = [];
          let failed = 0;
          const t0 = performance.now();
          plain = new Array<MqttClient>(m.ids.length);
          await paced(m.ids.length, m.rate, m.maxPending, async (i) => {
            const id = m.ids[i]!;
            const s0 = performance.now();
            try {
              const c = await mqtt.connectAsync(m.url, { protocolVersion: 4, clientId: `plain-${id}`, username: id, password: m.secrets[i], reconnectPeriod: 0, keepalive: 30, connectTimeout: 60_000 });
              await c.subscribeAsync(propletSubscriptions(SCOPE, id), { qos: 1 });
              plain[i] = c;
              lat.push(performance.now() - s0);
            } catch {
              failed++;
            }
          });
          reply({ t: 'baseline-done', ms: performance.now() - t0, lat, failed, stats: childStats(undefined) });
          return;
        }
        case 'baseline-close': {
          for (let i = 0; i < plain.length; i += 500) await Promise.all(plain.slice(i, i + 500).map((c) => c?.endAsync().catch(() => {})));
          plain = [];
          reply({ t: 'closed' });
          return;
        }
        case 'fleet': {
          const secrets = new Map(m.ids.map((id, i) => [id, m.secrets[i]!]));
          const t0 = performance.now();
          fleet = await startFleet({
            devices: m.ids.length,
            ids: m.ids,
            url: m.url,
            scope: SCOPE,
            credentials: (id) => secrets.get(id)!,
            heartbeatMs: m.heartbeatMs,
            connectRate: m.rate,
            maxPendingConnects: m.maxPending,
            runnerPoolSize: m.pool,
            device: { maxTasks: 1 },
          });
          await fleet.start();
          await fleet.waitOnline(m.ids.length, 10 * 60_000);
          const ms = performance.now() - t0;
          for (const d of fleet.devices) {
            d.on('start', (s) => received.set(s.id, now()));
            d.on('result', (r) => {
              const at = received.get(r.task_id);
              if (r.status !== 'running' && at !== undefined) onDevice.push(now() - at);
            });
          }
          const lat = fleet.devices.map((d) => d.timings.firstOnlineAt! - d.timings.startedAt!);
          reply({ t: 'fleet-online', ms, lat, stats: childStats(fleet) });
          return;
        }
        case 'stats':
          reply({ t: 'stats', stats: childStats(fleet) });
          return;
        case 'storm': {
          const api = new ControlPlaneClient(m.api);
          const posted: [string, number][] = [];
          let errors = 0;
          let next = 0;
          await Promise.all(
            Array.from({ length: m.concurrency }, async () => {
              while (next < m.n) {
                const i = next++;
                const t = now();
                try {
                  const task = await api.createTask({ name: 'add', file: m.file, inputs: [i, 1] }, { start: true });
                  posted.push([task.id, t]);
                } catch {
                  errors++;
                }
              }
            }),
          );
          // the last starts may still be on their way to the devices
          const end = Date.now() + 60_000;
          while (Date.now() < end && posted.some(([id]) => !received.has(id))) await sleep(50);
          reply({ t: 'storm-done', posted, received: [...received], onDevice, errors, stats: childStats(fleet) });
          return;
        }
        case 'stop':
          await fleet?.stop();
          reply({ t: 'stopped' });
          process.disconnect();
          setTimeout(() => process.exit(0), 100).unref();
      }
    } catch (e) {
      reply({ t: 'error', error: (e as Error).stack ?? String(e) });
    }
  });
}

if (process.argv.includes('--fleet-child') && process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  void child();
}
