// Dispatch: tasks created, started and awaited through the HTTP API, run on
// local node proplets over MQTT. `propeller serve` (embedded broker, SQLite
// store) and each `propeller proplet` run as child processes of the same
// checkout (--serve-root: another build, old against new with the same
// client), so the CPU per task of serve, of the proplets and of this process
// (the HTTP client alone) are read apart from /proc. Baselines measured in the
// same run: the bare wasm runner (the floor: no HTTP, no MQTT) and an empty
// HTTP round trip to the same serve.
//
// --perf DIR: `perf record -g` of serve, the proplets and this process over the
// last concurrent row (children run with --perf-basic-prof; for this process's
// JS names run the bench with NODE_OPTIONS=--perf-basic-prof). Read it with
// `perf report -i DIR/perf.data --sort pid,sym`.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import type { Task } from '../control-plane/model.ts';
import { WasmRunner } from '../wasm-runtime/index.ts';
import { freePort } from '../test/helpers/stack.ts';
import { fmt, printTable, summarize, type Summary } from './stats.ts';

const GOAL_TASKS_PER_S = 2000;
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TICK_MS = 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      tasks: { type: 'string', default: '1000' },
      concurrency: { type: 'string', default: '16,50' },
      proplets: { type: 'string', default: '2' },
      /** the sequential rows too (false: only the concurrent ones, e.g. while profiling) */
      sequential: { type: 'string', default: 'true' },
      /** write a CPU profile of serve into this directory (node --cpu-prof: samples wall time) */
      'cpu-prof': { type: 'string' },
      /** perf record -g of serve, proplets and this process over the last concurrent row, into DIR/perf.data */
      perf: { type: 'string' },
      /** the checkout whose `propeller serve` and `propeller proplet` are measured (another build: old vs new back to back) */
      'serve-root': { type: 'string' },
    },
  });
  const n = Number(values.tasks);
  const levels = values.concurrency.split(',').map(Number);
  const root = values['serve-root'] ?? ROOT;
  const perfDir = values.perf;
  await buildExamples();
  const add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm'));
  const file = add.toString('base64');

  // Baseline 1: the runner alone, same module: as the proplets run it (a pure module: in process,
  // metered), and every run in a worker of the warm pool (what a module with imports pays).
  const runnerAlone = async (inline: boolean) => {
    const runner = new WasmRunner({ poolSize: 4, inline });
    await runner.ready(); // the workers' start (~40 ms of CPU each) is not a run's
    const times: number[] = [];
    let cpu0 = process.cpuUsage();
    for (let i = 0; i < n + 50; i++) {
      if (i === 50) cpu0 = process.cpuUsage(); // after the warm-up (the first run compiles)
      const t0 = performance.now();
      const r = await runner.run({ taskId: `b${i}`, module: add, name: 'add', args: ['add'], env: {}, inputs: [1, 2], timeoutMs: 5000, maxMemoryBytes: 1 << 24 });
      if (!r.ok) throw new Error(`runner baseline failed: ${r.error}`);
      if (i >= 50) times.push(performance.now() - t0);
    }
    const cpu = process.cpuUsage(cpu0);
    await runner.close();
    return { times, cpuMs: (cpu.user + cpu.system) / 1000 / n };
  };
  const floor = await runnerAlone(true);
  const floorWorkers = await runnerAlone(false);

  const work = mkdtempSync(join(tmpdir(), 'propeller-dispatch-'));
  const nodeArgs = perfDir ? ['--perf-basic-prof'] : [];
  const serve = await startServe(root, work, [...nodeArgs, ...(values['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${values['cpu-prof']}`] : [])]);
  const api = new Api(`http://127.0.0.1:${serve.httpPort}`, serve.token, Math.max(...levels));
  const proplets: Child[] = [];
  try {
    for (let i = 1; i <= Number(values.proplets); i++) {
      const id = `bench-${i}`;
      const { secret } = await api.call<{ secret: string }>('POST', '/proplets', { proplet_id: id });
      proplets.push(
        startChild(root, work, id, nodeArgs, ['proplet', '--broker', `mqtt://127.0.0.1:${serve.mqttPort}`, '--id', id, '--secret', secret, '--max-tasks', '16', '--heartbeat', '5s']),
      );
      while ((await api.call<{ state: string }>('GET', `/proplets/${id}`).catch(() => undefined))?.state !== 'alive') {
        if (proplets.at(-1)!.proc.exitCode !== null) throw new Error(`proplet ${id} exited: ${proplets.at(-1)!.errors()}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const propletsCpuMs = () => proplets.reduce((a, p) => a + p.cpuMs(), 0);

    /** wall time and CPU per task of serve, the proplets and this process (the HTTP client) over one measure */
    const measure = async <T>(count: number, f: () => Promise<T>) => {
      const commits0 = await api.commits();
      const cpu0 = serve.cpuMs();
      const pcpu0 = propletsCpuMs();
      const own0 = process.cpuUsage();
      const t0 = performance.now();
      const r = await f();
      const wall = performance.now() - t0;
      const own = process.cpuUsage(own0);
      const serveMs = (serve.cpuMs() - cpu0) / count;
      const propletMs = (propletsCpuMs() - pcpu0) / count;
      return { r, perSec: count / (wall / 1000), serveMs, propletMs, clientMs: (own.user + own.system) / 1000 / count, commits: ((await api.commits()) - commits0) / count };
    };
    const sequential = (f: () => Promise<unknown>) =>
      measure(n, async () => {
        const client: number[] = [];
        for (let i = 0; i < n; i++) {
          const t0 = performance.now();
          await f();
          client.push(performance.now() - t0);
        }
        return client;
      });
    const concurrent = (conc: number, f: () => Promise<unknown>) =>
      measure(n, async () => {
        const client: number[] = [];
        let next = 0;
        await Promise.all(
          Array.from({ length: conc }, async () => {
            while (next++ < n) {
              const t0 = performance.now();
              await f();
              client.push(performance.now() - t0);
            }
          }),
        );
        return client;
      });

    // Baseline 2: an empty HTTP round trip to the same API.
    const health = () => api.call('GET', '/health');
    const completed = (t: Task) => {
      if (t.state !== 'Completed') throw new Error(`task ${t.id} ended ${t.state}: ${t.error}`);
      return t;
    };
    const body = JSON.stringify({ name: 'add', file, inputs: [1, 2] });
    // Propeller's way: three requests. And the one-request form: POST /tasks?start=true&wait=...
    const threeCalls = async () => {
      const task = await api.call<Task>('POST', '/tasks', body);
      await api.call('POST', `/tasks/${task.id}/start`);
      return completed(await api.call<Task>('GET', `/tasks/${task.id}?wait=10s`));
    };
    const server: number[] = [];
    const oneCall = async () => {
      const t = completed(await api.call<Task>('POST', '/tasks?start=true&wait=10s', body));
      server.push(Date.parse(t.finished_at!) - Date.parse(t.created_at));
    };
    // warm-up: JIT, sockets, and the proplets' workers for every concurrent slot
    for (let i = 0; i < 100; i++) await health();
    await concurrent(Math.max(...levels), oneCall);
    type Measured = { r: number[]; perSec: number; serveMs: number; propletMs: number; clientMs: number; commits: number };
    const rows: (string | number)[][] = [];
    const row = (name: string, m: Measured) => {
      const x: Summary = summarize(m.r);
      rows.push([name, x.n, x.p50, x.p99, x.max, m.perSec, m.serveMs, m.propletMs, m.clientMs, m.commits]);
    };
    const h1 = await sequential(health);
    row('baseline: empty HTTP round trip (GET /health)', h1);
    const hc = await concurrent(Math.max(...levels), health);
    row(`baseline: GET /health, ${Math.max(...levels)} concurrent`, hc);
    let s1: Measured | undefined;
    if (values.sequential !== 'false') {
      row('create, start, get?wait: sequential', await sequential(threeCalls));
      server.length = 0;
      s1 = await sequential(oneCall);
      row('POST /tasks?start&wait: sequential', s1);
      const serverClock = summarize(server);
      rows.push(['  same, server clock (created→finished)', serverClock.n, serverClock.p50, serverClock.p99, serverClock.max, '-', '-', '-', '-', '-']);
    }
    const par: (Measured & { conc: number })[] = [];
    for (const [i, conc] of levels.entries()) {
      // the proplets retire workers idle for 2 s (during the sequential rows): start them again first
      for (let i = 0; i < 4; i++) await Promise.all(Array.from({ length: conc }, oneCall));
      const perf = perfDir && i === levels.length - 1 ? startPerf(perfDir, [serve.proc.pid!, ...proplets.map((p) => p.proc.pid!), process.pid]) : undefined;
      const m = await concurrent(conc, oneCall);
      await perf?.stop();
      row(`POST /tasks?start&wait: ${conc} concurrent`, m);
      par.push({ conc, ...m });
    }

    const fl = summarize(floor.times);
    const flw = summarize(floorWorkers.times);
    // the runner's CPU (all its threads) goes in the proplets' column: that is where it is spent in a task
    rows.unshift(
      ['baseline: runner alone (in process, metered)', fl.n, fl.p50, fl.p99, fl.max, '-', '-', floor.cpuMs, '-', '-'],
      ['baseline: runner alone (every run in a worker)', flw.n, flw.p50, flw.p99, flw.max, '-', '-', floorWorkers.cpuMs, '-', '-'],
    );
    console.log(
      `\ndispatch: ${n} tasks per row (add.wasm, ${add.length} B inline), ${values.proplets} node proplets (processes, 16 slots each), ` +
        `serve and proplets of ${values['serve-root'] ?? 'this checkout'} ${serve.compiled ? 'compiled (dist/)' : 'through tsx'}, embedded broker and SQLite; Node ${process.version}, ` +
        `${cpus().length} cores, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`,
    );
    printTable(['measure', 'n', 'p50 ms', 'p99 ms', 'max ms', 'tasks/s', 'serve CPU ms/task', 'proplets CPU ms/task', 'client CPU ms/task', 'store commits/task'], rows);
    const best = par.reduce((a, b) => (b.perSec > a.perSec ? b : a));
    const all = best.serveMs + best.propletMs + best.clientMs;
    const cores = cpus().length;
    console.log(
      `\nconcurrent, best: ${fmt(best.perSec)} tasks/s at ${best.conc} clients; goal >= ${GOAL_TASKS_PER_S}: ${best.perSec >= GOAL_TASKS_PER_S ? 'met' : 'not met'}` +
        `\nCPU per task: serve ${fmt(best.serveMs)} ms + proplets ${fmt(best.propletMs)} ms + client ${fmt(best.clientMs)} ms = ${fmt(all)} ms, all on these ${cores} cores:` +
        ` at most ${fmt((cores * 1000) / all)} tasks/s with the cores to ourselves; one core given to serve alone: ${fmt(1000 / best.serveMs)} tasks/s` +
        `\nbaseline, empty HTTP round trip at ${Math.max(...levels)} concurrent: ${fmt(hc.perSec)} req/s, serve ${fmt(hc.serveMs * 1000)} µs CPU each, client ${fmt(hc.clientMs * 1000)} µs`,
    );
    if (s1) {
      const sq = summarize(s1.r);
      console.log(`one-request sequential p50 / runner-alone p50: ${(sq.p50 / fl.p50).toFixed(1)}x; p50 <= 2 ms, p99 <= 10 ms: ${sq.p50 <= 2 && sq.p99 <= 10 ? 'met' : 'not met'}`);
    }
    if (perfDir) console.log(`perf: ${perfDir}/perf.data (serve pid ${serve.proc.pid}, proplets ${proplets.map((p) => p.proc.pid).join(', ')}, client ${process.pid})`);
    for (const c of [serve, ...proplets]) if (c.errors()) process.stderr.write(c.errors());
  } finally {
    api.close();
    await Promise.all(proplets.map((p) => p.stop()));
    await serve.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

/**
 * The measured requests: HTTP/1.1 on keep-alive sockets, one per concurrent caller, one request
 * at a time on each (no pipelining, no batching), written and parsed here: node:http's client
 * machinery cost more CPU per request than serve's answer to an empty one, on the same 2 cores.
 * Answers must carry content-length (serve's JSON answers do).
 */
class Api {
  private idle: Conn[] = [];
  private waiting: ((c: Conn) => void)[] = [];
  private all: Conn[] = [];
  private agent = new Agent({ keepAlive: true, maxSockets: 1 });
  private readonly host: string;
  constructor(
    private base: string,
    private token: string,
    private sockets: number,
  ) {
    const u = new URL(base);
    this.host = u.host;
  }
  /** `body`: a value, or JSON text already encoded (the same task posted again and again) */
  async call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const text = body === undefined || typeof body === 'string' ? body : JSON.stringify(body);
    const head = `${method} ${path} HTTP/1.1\r\nhost: ${this.host}\r\nauthorization: Bearer ${this.token}\r\n${text === undefined ? '' : `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(text)}\r\n`}\r\n`;
    const c = await this.take();
    try {
      const { status, body: out } = await c.request(text === undefined ? head : head + text);
      if (status >= 300) throw new Error(`${method} ${path}: ${status} ${out}`);
      return JSON.parse(out) as T;
    } finally {
      this.give(c);
    }
  }
  private take(): Promise<Conn> | Conn {
    for (let c = this.idle.pop(); c; c = this.idle.pop()) {
      if (!c.dead) return c;
      this.all = this.all.filter((x) => x !== c); // closed by the server while idle
    }
    if (this.all.length < this.sockets) {
      const n = new Conn(this.base);
      this.all.push(n);
      return n;
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }
  private give(c: Conn): void {
    if (c.dead) {
      this.all = this.all.filter((x) => x !== c);
      const w = this.waiting.shift();
      if (w) {
        const n = new Conn(this.base);
        this.all.push(n);
        w(n);
      }
      return;
    }
    const w = this.waiting.shift();
    if (w) w(c);
    else this.idle.push(c);
  }
  /** the store's transactions so far (group commit: one per event-loop turn at most); not measured, so node:http */
  async commits(): Promise<number> {
    const text = await new Promise<string>((resolve, reject) => {
      request(this.base + '/metrics', { agent: this.agent, headers: { authorization: `Bearer ${this.token}` } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
      })
        .on('error', reject)
        .end();
    });
    return Number(/^propeller_store_commits_total (\d+)/m.exec(text)?.[1] ?? NaN);
  }
  close(): void {
    for (const c of this.all) c.close();
    this.agent.destroy();
  }
}

/** One keep-alive connection: a request, then its whole answer (status line, headers, content-length body). */
class Conn {
  private socket: Socket;
  private buf: Buffer = Buffer.alloc(0);
  private pending?: { resolve: (r: { status: number; body: string }) => void; reject: (e: Error) => void };
  dead = false;
  constructor(base: string) {
    const u = new URL(base);
    this.socket = connect(Number(u.port), u.hostname);
    this.socket.setNoDelay(true);
    this.socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.parse();
    });
    const fail = (e: Error) => {
      this.dead = true;
      const p = this.pending;
      this.pending = undefined;
      p?.reject(e);
    };
    this.socket.on('error', fail);
    this.socket.on('close', () => fail(new Error('connection closed')));
  }
  request(bytes: string): Promise<{ status: number; body: string }> {
    if (this.dead) return Promise.reject(new Error('connection closed'));
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      this.socket.write(bytes);
    });
  }
  private parse(): void {
    const end = this.buf.indexOf('\r\n\r\n');
    if (end < 0 || !this.pending) return;
    const head = this.buf.toString('latin1', 0, end);
    const m = /\r\ncontent-length: *(\d+)/i.exec(head);
    if (!m) {
      this.dead = true;
      this.socket.destroy();
      return this.pending.reject(new Error(`answer without content-length: ${head.split('\r\n')[0]}`));
    }
    const total = end + 4 + Number(m[1]);
    if (this.buf.length < total) return;
    const body = this.buf.toString('utf8', end + 4, total);
    this.buf = this.buf.subarray(total);
    const p = this.pending;
    this.pending = undefined;
    p.resolve({ status: Number(head.slice(9, 12)), body });
  }
  close(): void {
    this.dead = true;
    this.socket.destroy();
  }
}

interface Child {
  proc: ChildProcess;
  /** utime + stime so far, ms */
  cpuMs(): number;
  /** what it logged above info (its log goes to a file: reading it here would count as client CPU) */
  errors(): string;
  stop(): Promise<void>;
}

/** `propeller ARGS` of that checkout, at the default log level (as users run it), its log in a file. */
function startChild(root: string, work: string, name: string, nodeArgs: string[], args: string[]): Child {
  const logPath = join(work, `${name}.log`);
  const fd = openSync(logPath, 'w');
  const proc = spawn(process.execPath, [...nodeArgs, join(root, 'bin/propeller.js'), ...args], { stdio: ['ignore', 'ignore', fd] });
  closeSync(fd);
  const exited = once(proc, 'exit');
  return {
    proc,
    cpuMs() {
      const f = readFileSync(`/proc/${proc.pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
      return (Number(f[11]) + Number(f[12])) * TICK_MS;
    },
    errors() {
      let text = '';
      try {
        text = readFileSync(logPath, 'utf8');
      } catch {
        return '';
      }
      return text
        .split('\n')
        .filter((l) => l && !/"level":"(info|warn)"/.test(l))
        .map((l) => `${name}: ${l}\n`)
        .join('');
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await exited;
    },
  };
}

interface Serve extends Child {
  httpPort: number;
  /** serve runs as shipped: its API requires this token */
  token: string;
  mqttPort: number;
  compiled: boolean;
}

async function startServe(root: string, work: string, nodeArgs: string[]): Promise<Serve> {
  const [httpPort, mqttPort] = [await freePort(), await freePort()];
  const dataDir = join(work, 'data');
  mkdirSync(dataDir);
  const token = randomBytes(24).toString('hex');
  const child = startChild(root, work, 'serve', nodeArgs, ['serve', '--http-port', String(httpPort), '--mqtt-port', String(mqttPort), '--api-token', token, '--data-dir', dataDir, '--console-dir', '']);
  const { distState } = (await import(join(root, 'bin/dist-state.js'))) as { distState(): string };
  for (;;) {
    if (child.proc.exitCode !== null) throw new Error(`serve exited with ${child.proc.exitCode}: ${child.errors()}`);
    const ok = await fetch(`http://127.0.0.1:${httpPort}/health`).then((r) => r.ok, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return { ...child, httpPort, mqttPort, token, compiled: distState() === 'fresh' };
}

/** `perf record -g` of these processes until stop(). */
function startPerf(dir: string, pids: number[]): { stop(): Promise<void> } {
  mkdirSync(dir, { recursive: true });
  const proc = spawn('perf', ['record', '-g', '-F', '997', '-o', join(dir, 'perf.data'), '-p', pids.join(',')], { stdio: 'ignore' });
  const exited = once(proc, 'exit');
  return {
    async stop() {
      proc.kill('SIGINT');
      await exited;
    },
  };
}
