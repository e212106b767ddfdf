// Dispatch: tasks created, started and awaited through the HTTP API, run on
// local node proplets over MQTT. `propeller serve` (embedded broker, SQLite
// store) runs as a child process so its CPU per task is read on its own from
// /proc, apart from the client and the proplets that share the machine.
// Baselines measured in the same run: the bare wasm runner (the floor: no
// HTTP, no MQTT) and an empty HTTP round trip to the same serve.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import type { Task } from '../control-plane/model.ts';
import { NodeProplet } from '../proplet-node/proplet.ts';
import { scope } from '../topics/index.ts';
import { WasmRunner } from '../wasm-runtime/index.ts';
import { freePort } from '../test/helpers/stack.ts';
import { fmt, printTable, summarize, type Summary } from './stats.ts';

const GOAL_TASKS_PER_S = 2000;
const ROOT = fileURLToPath(new URL('..', import.meta.url));

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      tasks: { type: 'string', default: '1000' },
      concurrency: { type: 'string', default: '16,50' },
      proplets: { type: 'string', default: '2' },
      /** write a CPU profile of serve into this directory (node --cpu-prof) */
      'cpu-prof': { type: 'string' },
      /** the checkout whose `propeller serve` is measured (another build of the project: old vs new back to back) */
      'serve-root': { type: 'string' },
    },
  });
  const n = Number(values.tasks);
  const levels = values.concurrency.split(',').map(Number);
  await buildExamples();
  const add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm'));
  const file = add.toString('base64');

  // Baseline 1: the runner alone, warm pool, same module.
  const runner = new WasmRunner({ poolSize: 4 });
  const floor: number[] = [];
  for (let i = 0; i < n + 50; i++) {
    const t0 = performance.now();
    const r = await runner.run({ taskId: `b${i}`, module: add, name: 'add', args: ['add'], env: {}, inputs: [1, 2], timeoutMs: 5000, maxMemoryBytes: 1 << 24 });
    if (!r.ok) throw new Error(`runner baseline failed: ${r.error}`);
    if (i >= 50) floor.push(performance.now() - t0);
  }
  await runner.close();

  const serve = await startServe(values['serve-root'] ?? ROOT, values['cpu-prof']);
  const api = new Api(`http://127.0.0.1:${serve.httpPort}`, Math.max(...levels));
  const proplets: NodeProplet[] = [];
  try {
    for (let i = 1; i <= Number(values.proplets); i++) {
      const id = `bench-${i}`;
      const { secret } = await api.call<{ secret: string }>('POST', '/proplets', { proplet_id: id });
      const p = new NodeProplet({ id, secret, url: `mqtt://127.0.0.1:${serve.mqttPort}`, scope: scope('propeller', 'control'), heartbeatMs: 5000, maxTasks: 16 });
      await p.start();
      proplets.push(p);
      while ((await api.call<{ state: string }>('GET', `/proplets/${id}`).catch(() => undefined))?.state !== 'alive') await new Promise((r) => setTimeout(r, 20));
    }

    /** wall time, serve's CPU and this process's CPU (client + proplets) over one measure */
    const measure = async <T>(count: number, f: () => Promise<T>) => {
      const commits0 = await api.commits();
      const cpu0 = serve.cpuMs();
      const own0 = process.cpuUsage();
      const t0 = performance.now();
      const r = await f();
      const wall = performance.now() - t0;
      const own = process.cpuUsage(own0);
      const serveMs = (serve.cpuMs() - cpu0) / count;
      return { r, perSec: count / (wall / 1000), serveMs, benchMs: (own.user + own.system) / 1000 / count, commits: ((await api.commits()) - commits0) / count };
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
    // Propeller's way: three requests. And the one-request form: POST /tasks?start=true&wait=...
    const threeCalls = async () => {
      const task = await api.call<Task>('POST', '/tasks', { name: 'add', file, inputs: [1, 2] });
      await api.call('POST', `/tasks/${task.id}/start`);
      return completed(await api.call<Task>('GET', `/tasks/${task.id}?wait=10s`));
    };
    const server: number[] = [];
    const oneCall = async () => {
      const t = completed(await api.call<Task>('POST', '/tasks?start=true&wait=10s', { name: 'add', file, inputs: [1, 2] }));
      server.push(Date.parse(t.finished_at!) - Date.parse(t.created_at));
    };
    // warm-up: JIT, sockets, and the proplets' workers for every concurrent slot
    for (let i = 0; i < 100; i++) await health();
    await concurrent(Math.max(...levels), oneCall);
    const rows: (string | number)[][] = [];
    const row = (name: string, m: { r: number[]; perSec: number; serveMs: number; benchMs: number; commits: number }) => {
      const x: Summary = summarize(m.r);
      rows.push([name, x.n, x.p50, x.p99, x.max, m.perSec, m.serveMs, m.benchMs, m.commits]);
    };
    const h1 = await sequential(health);
    row('baseline: empty HTTP round trip (GET /health)', h1);
    const hc = await concurrent(Math.max(...levels), health);
    row(`baseline: GET /health, ${Math.max(...levels)} concurrent`, hc);
    row('create, start, get?wait: sequential', await sequential(threeCalls));
    server.length = 0;
    const s1 = await sequential(oneCall);
    row('POST /tasks?start&wait: sequential', s1);
    const serverClock = summarize(server);
    rows.push(['  same, server clock (created→finished)', serverClock.n, serverClock.p50, serverClock.p99, serverClock.max, '-', '-', '-', '-']);
    const par: { conc: number; perSec: number; serveMs: number; benchMs: number }[] = [];
    for (const conc of levels) {
      // the proplets retire workers idle for 2 s (during the sequential rows): start them again first
      for (let i = 0; i < 4; i++) await Promise.all(Array.from({ length: conc }, oneCall));
      const m = await concurrent(conc, oneCall);
      row(`POST /tasks?start&wait: ${conc} concurrent`, m);
      par.push({ conc, ...m });
    }

    const fl = summarize(floor);
    rows.unshift(['baseline: runner alone (warm pool)', fl.n, fl.p50, fl.p99, fl.max, '-', '-', '-', '-']);
    console.log(
      `\ndispatch: ${n} tasks per row (add.wasm, ${add.length} B inline), ${values.proplets} node proplets (16 slots each), ` +
        `serve${values['serve-root'] ? ` of ${values['serve-root']}` : ''} ${serve.compiled ? 'compiled (dist/)' : 'through tsx'} with the embedded broker and SQLite; Node ${process.version}, ` +
        `${cpus().length} cores, load ${loadavg().map((l) => l.toFixed(1)).join(' ')}\n`,
    );
    printTable(['measure', 'n', 'p50 ms', 'p99 ms', 'max ms', 'tasks/s', 'serve CPU ms/task', 'bench CPU ms/task', 'store commits/task'], rows);
    const best = par.reduce((a, b) => (b.perSec > a.perSec ? b : a));
    const sq = summarize(s1.r);
    const all = best.serveMs + best.benchMs;
    const cores = cpus().length;
    console.log(
      `\nconcurrent, best: ${fmt(best.perSec)} tasks/s at ${best.conc} clients; goal >= ${GOAL_TASKS_PER_S}: ${best.perSec >= GOAL_TASKS_PER_S ? 'met' : 'not met'}` +
        `\nCPU per task: serve ${fmt(best.serveMs)} ms + client and proplets ${fmt(best.benchMs)} ms = ${fmt(all)} ms, all on these ${cores} cores:` +
        ` at most ${fmt((cores * 1000) / all)} tasks/s with the cores to ourselves; one core given to serve alone: ${fmt(1000 / best.serveMs)} tasks/s` +
        `\nbaseline, empty HTTP round trip at ${Math.max(...levels)} concurrent: ${fmt(hc.perSec)} req/s, serve ${fmt(hc.serveMs * 1000)} µs CPU each` +
        `\none-request sequential p50 / runner-alone p50: ${(sq.p50 / fl.p50).toFixed(1)}x; p50 <= 2 ms, p99 <= 10 ms: ${sq.p50 <= 2 && sq.p99 <= 10 ? 'met' : 'not met'}`,
    );
  } finally {
    api.close();
    await Promise.all(proplets.map((p) => p.close().catch(() => {})));
    await serve.stop();
  }
}

/** A JSON client on keep-alive sockets (one per concurrent caller): what a busy API client does. */
class Api {
  private agent: Agent;
  constructor(
    private base: string,
    sockets: number,
  ) {
    this.agent = new Agent({ keepAlive: true, maxSockets: sockets });
  }
  call<T = unknown>(method: string, path: string, body?: unknown): Promise<T> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = request(this.base + path, { method, agent: this.agent, headers: text === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) } }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const out = Buffer.concat(chunks).toString('utf8');
          if ((res.statusCode ?? 0) >= 300) reject(new Error(`${method} ${path}: ${res.statusCode} ${out}`));
          else resolve(JSON.parse(out) as T);
        });
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(text);
    });
  }
  /** the store's transactions so far (group commit: one per event-loop turn at most) */
  async commits(): Promise<number> {
    const text = await new Promise<string>((resolve, reject) => {
      request(this.base + '/metrics', { agent: this.agent }, (res) => {
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
    this.agent.destroy();
  }
}

interface Serve {
  proc: ChildProcess;
  httpPort: number;
  mqttPort: number;
  compiled: boolean;
  /** serve's utime + stime so far, ms */
  cpuMs(): number;
  stop(): Promise<void>;
}

async function startServe(root: string, cpuProf?: string): Promise<Serve> {
  const dataDir = mkdtempSync(join(tmpdir(), 'propeller-dispatch-'));
  const [httpPort, mqttPort] = [await freePort(), await freePort()];
  // the default log level (info), as users run it; its warnings (--no-auth) are not shown
  const args = ['serve', '--http-port', String(httpPort), '--mqtt-port', String(mqttPort), '--no-auth', '--data-dir', dataDir, '--console-dir', ''];
  const proc = spawn(process.execPath, [...(cpuProf ? ['--cpu-prof', `--cpu-prof-dir=${cpuProf}`] : []), join(root, 'bin/propeller.js'), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  proc.stderr!.setEncoding('utf8').on('data', (text: string) => {
    for (const line of text.split('\n')) if (line && !/"level":"(info|warn)"/.test(line)) process.stderr.write(`serve: ${line}\n`);
  });
  const exited = once(proc, 'exit');
  const tickMs = 1000 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  const { distState } = (await import(join(root, 'bin/dist-state.js'))) as { distState(): string };
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`serve exited with ${proc.exitCode}`);
    const ok = await fetch(`http://127.0.0.1:${httpPort}/health`).then((r) => r.ok, () => false);
    if (ok) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    proc,
    httpPort,
    mqttPort,
    compiled: distState() === 'fresh',
    cpuMs() {
      const f = readFileSync(`/proc/${proc.pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ');
      return (Number(f[11]) + Number(f[12])) * tickMs;
    },
    async stop() {
      proc.kill('SIGTERM');
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
