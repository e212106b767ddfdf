// WasmRunner: a warm pool of worker threads that run WebAssembly tasks
// sandboxed, with a wall-time limit, a linear-memory limit and captured output.
// See README.md in this folder for how the limits are enforced.
import { closeSync, openSync } from 'node:fs';
import { devNull } from 'node:os';
import { performance } from 'node:perf_hooks';
import { Worker } from 'node:worker_threads';
import { prepare, PrepareError, type ModuleMeta, type PreparedModule } from './modules.ts';
import { checkMemory, convertInputs, describeError, toResult } from './call.js';
import { FUEL_EXPORT } from './meter.ts';
import { clipBytes } from './output.ts';
export { clipText, TRUNCATED_MARKER } from './output.ts';

export { parseFunctionSignatures, parseModule, limitMemory, WasmParseError } from './wasm-parse.ts';
export type { FuncSignature, ValType, NumType, ModuleInfo, MemoryLimits } from './wasm-parse.ts';
export { compileModule } from './modules.ts';

export interface RunRequest {
  /** unique among the runs in flight; used by cancel() */
  taskId: string;
  /**
   * The module. Preferably the wasm bytes (or a Module from compileModule()):
   * then the runner knows the export signatures and caps the memory in the
   * binary. A Module compiled elsewhere still runs, but its memory limit can
   * only be checked after the fact and its inputs are typed by guessing.
   */
  module: WebAssembly.Module | Uint8Array;
  /** sha256 of the bytes (hex, or `sha256:<hex>`), when the caller has it: the compiled-module cache is keyed by it, so the bytes are not hashed again for every run */
  digest?: string;
  /** export to call for core modules (Propeller semantics); ignored when the module has _start */
  name: string;
  /** the full argv: args[0] is the task name, then the cli_args; an empty list means [name] */
  args: string[];
  env: Record<string, string>;
  /** arguments for the core-module export */
  inputs: (number | bigint | string)[];
  /** wall-time limit in ms; 0 = none (daemons) */
  timeoutMs: number;
  /** maximum linear memory in bytes; 0 = none */
  maxMemoryBytes: number;
  /** stdin contents */
  stdin?: Uint8Array;
  /** files visible read-only under the preopened directory /data (keys are paths relative to it) */
  files?: Record<string, Uint8Array>;
  /** called with stdout as it is written */
  onStdout?: (chunk: string) => void;
}

export interface RunResult {
  ok: boolean;
  /** WASI exit code; 0 for a core call that returned; null when killed or failed before running */
  exitCode: number | null;
  /** return value of a core-module export (i64 beyond 2^53 as a decimal string) */
  returnValue?: unknown;
  stdout: string;
  stderr: string;
  error?: string;
  durationMs: number;
}

export interface WasmRunnerOptions {
  /** idle workers kept warm */
  poolSize: number;
  /** runs at once (default poolSize); more are queued. Workers beyond poolSize are started on demand. */
  maxConcurrent?: number;
  /** cap for captured stdout and stderr each (default 1 MiB) */
  outputLimitBytes?: number;
  /**
   * How long a worker beyond poolSize stays idle before it is retired (default 2 s). Retiring at
   * once would start a cold worker (~40 ms) for nearly every run of a steady stream of concurrent runs.
   */
  idleRetireMs?: number;
  /**
   * Run pure modules (no imports) on this thread, metered (default true): no worker round trip,
   * which cost about as much as the rest of a small task. False: every run in a worker.
   */
  inline?: boolean;
}

const DEFAULT_OUTPUT_LIMIT = 1 << 20;
/** Compiled modules each worker keeps for the next runs (see the worker's `modules`). */
const MODULES_PER_WORKER = 16;

/** The id a compiled module has in the workers' caches. */
const moduleIds = new WeakMap<WebAssembly.Module, number>();
let lastModuleId = 0;
function moduleId(m: WebAssembly.Module): number {
  let id = moduleIds.get(m);
  if (id === undefined) moduleIds.set(m, (id = ++lastModuleId));
  return id;
}
const WORKER_URL = new URL('./wasm-worker.js', import.meta.url);

interface Outcome {
  ok: boolean;
  exitCode: number | null;
  returnValue?: unknown;
  error?: string;
}

type WorkerMessage =
  | { t: 'ready' }
  | { t: 'out'; id: number; fd: 1 | 2; data: Uint8Array }
  | { t: 'done'; id: number; outcome: Outcome };

class Capture {
  private chunks: Uint8Array[] = [];
  private size = 0;
  truncated = false;
  constructor(private readonly limit: number) {}

  add(data: Uint8Array): void {
    if (this.truncated) return;
    const room = this.limit - this.size;
    if (data.length > room) {
      this.truncated = true;
      if (room > 0) this.chunks.push(data.subarray(0, room));
      this.size = this.limit;
      return;
    }
    this.chunks.push(data);
    this.size += data.length;
  }

  /** At most `limit` bytes, the truncation marker included. */
  text(): string {
    if (this.size === 0 && !this.truncated) return '';
    return clipBytes(Buffer.concat(this.chunks, this.size), this.limit, this.truncated);
  }
}

interface Slot {
  worker: Worker;
  task: Task | null;
  ready: boolean;
  dead: boolean;
  /** resolves when the worker reports ready, or dies */
  started: Promise<void>;
  settle: () => void;
  /** an extra worker's retirement, due while it stays idle */
  retireTimer: NodeJS.Timeout | null;
  /** ids of the modules this worker holds, least recently run first (the worker keeps the same list) */
  modules: Set<number>;
}

type TaskState = 'preparing' | 'queued' | 'running' | 'done';

interface Task {
  seq: number;
  req: RunRequest;
  state: TaskState;
  resolve: (r: RunResult) => void;
  slot: Slot | null;
  timer: NodeJS.Timeout | null;
  startedAt: number;
  stdout: Capture;
  stderr: Capture;
  decoder: TextDecoder | null;
  prepared: PreparedModule | null;
}

export class WasmRunner {
  readonly poolSize: number;
  readonly maxConcurrent: number;
  readonly outputLimitBytes: number;
  readonly idleRetireMs: number;
  readonly inline: boolean;

  private readonly slots = new Set<Slot>();
  private idle: Slot[] = [];
  private readonly queue: Task[] = [];
  private readonly tasks = new Map<string, Task>();
  private readonly terminations = new Set<Promise<unknown>>();
  private seq = 0;
  /** Metered modules that ran out of fuel once: their runs go to workers. */
  private readonly heavy = new WeakSet<WebAssembly.Module>();
  /** Runs done on this thread (a pure module, metered), and runs that ran out of fuel there and went to a worker. */
  inlineRuns = 0;
  inlineFallbacks = 0;
  private closed = false;
  private busy = 0;
  private startFailures = 0;
  private respawnTimer: NodeJS.Timeout | null = null;
  private fdsClosed = false;
  private readonly nullIn: number;
  private readonly nullOut: number;

  constructor(opts: WasmRunnerOptions) {
    const poolSize = opts.poolSize;
    if (!Number.isInteger(poolSize) || poolSize < 0) throw new RangeError(`poolSize must be an integer >= 0, got ${poolSize}`);
    const maxConcurrent = opts.maxConcurrent ?? Math.max(1, poolSize);
    if (!Number.isInteger(maxConcurrent) || maxConcurrent < 1) {
      throw new RangeError(`maxConcurrent must be an integer >= 1, got ${maxConcurrent}`);
    }
    this.poolSize = poolSize;
    this.maxConcurrent = maxConcurrent;
    this.outputLimitBytes = opts.outputLimitBytes ?? DEFAULT_OUTPUT_LIMIT;
    this.idleRetireMs = opts.idleRetireMs ?? 2000;
    this.inline = opts.inline ?? true;
    // Shared host fds behind WASI's stdin/stdout/stderr; guests cannot close them (see the worker).
    this.nullIn = openSync(devNull, 'r');
    this.nullOut = openSync(devNull, 'w');
    this.fillPool();
  }

  /** number of runs executing in a worker now */
  get running(): number {
    return this.busy;
  }

  /** number of workers started and not retired (busy, idle or starting) */
  get workers(): number {
    return this.slots.size;
  }

  /** number of runs waiting for a worker */
  get queued(): number {
    return this.queue.length;
  }

  /** Resolves when the workers of the warm pool have started (runs before that just wait for them). */
  async ready(): Promise<void> {
    await Promise.all([...this.slots].map((s) => s.started));
  }

  /** Runs a task. Never rejects: every failure is a RunResult with ok=false. */
  run(req: RunRequest): Promise<RunResult> {
    return new Promise<RunResult>((resolve) => {
      const fail = (error: string): void => resolve({ ok: false, exitCode: null, stdout: '', stderr: '', error, durationMs: 0 });
      if (this.closed) return fail('runner closed');
      const problem = validate(req);
      if (problem) return fail(problem);
      if (this.tasks.has(req.taskId)) return fail(`task "${req.taskId}" is already running`);

      const task: Task = {
        seq: ++this.seq,
        req,
        state: 'preparing',
        resolve,
        slot: null,
        timer: null,
        startedAt: 0,
        stdout: new Capture(this.outputLimitBytes),
        stderr: new Capture(this.outputLimitBytes),
        decoder: req.onStdout ? new TextDecoder() : null,
        prepared: null,
      };
      this.tasks.set(req.taskId, task);

      prepare(req.module, req.maxMemoryBytes, req.digest)
        .then((prepared) => {
          if (task.state !== 'preparing') return; // cancelled meanwhile
          if (prepared.metered && this.inline && inlineable(req) && !this.heavy.has(prepared.metered) && this.runInline(task, prepared.metered, prepared.meta)) return;
          task.prepared = prepared;
          task.state = 'queued';
          this.queue.push(task);
          this.pump();
        })
        .catch((err: unknown) => {
          const message = err instanceof PrepareError
            ? err.message
            : err instanceof WebAssembly.CompileError
              ? `compile error: ${err.message}`
              : `error: ${err instanceof Error ? err.message : String(err)}`;
          if (task.state === 'queued') {
            const i = this.queue.indexOf(task);
            if (i >= 0) this.queue.splice(i, 1);
          }
          this.finish(task, { ok: false, exitCode: null, error: message });
        });
    });
  }

  /**
   * A pure module (no imports) on this thread, metered (meter.ts): no worker round trip. False when
   * the run must go to a worker after all: it ran out of fuel (nothing was observed, so running it
   * again is safe; the module goes to workers from now on), or ended in a way that may depend on
   * the thread (stack size) or that the worker reports in full (a missing export, bad inputs).
   */
  private runInline(task: Task, metered: WebAssembly.Module, meta: ModuleMeta): boolean {
    const req = task.req;
    let instance: WebAssembly.Instance | undefined;
    task.startedAt = performance.now();
    let outcome: Outcome;
    try {
      instance = new WebAssembly.Instance(metered, {});
      const fn = instance.exports[req.name];
      if (typeof fn !== 'function') return false;
      const args = convertInputs(req.name, req.inputs, meta.signatures?.get(req.name) ?? null, fn.length);
      if (typeof args === 'string') return false;
      if (typeof instance.exports._initialize === 'function') (instance.exports._initialize as () => void)();
      outcome = { ok: true, exitCode: 0, returnValue: toResult((fn as (...a: unknown[]) => unknown)(...args)) };
    } catch (err) {
      const fuel = (instance?.exports[FUEL_EXPORT] as WebAssembly.Global | undefined)?.value as number | undefined;
      if (fuel !== undefined && fuel < 0) {
        this.heavy.add(metered);
        this.inlineFallbacks++;
        return false;
      }
      // a trap is the module's own, the same on any thread; anything else (the stack) is the worker's to say
      if (!(err instanceof WebAssembly.RuntimeError) || instance === undefined) return false;
      outcome = { ok: false, exitCode: null, error: describeError(err) };
    }
    const memory = instance.exports.memory instanceof WebAssembly.Memory ? instance.exports.memory : null;
    // the limit holds here too (fuel bounds a call to about a millisecond; a limit may be shorter)
    if (performance.now() - task.startedAt > req.timeoutMs) outcome = { ok: false, exitCode: null, error: `time limit of ${req.timeoutMs} ms exceeded` };
    task.state = 'running';
    this.busy++;
    this.inlineRuns++;
    this.finish(task, checkMemory({ limitBytes: req.maxMemoryBytes, capped: meta.capped }, memory, outcome));
    return true;
  }

  /** Stops a run: kills its worker if it is running, or drops it from the queue. */
  cancel(taskId: string): boolean {
    const task = this.tasks.get(taskId);
    if (!task || task.state === 'done') return false;
    this.stop(task, 'stopped');
    return true;
  }

  /** Stops every run (error 'runner closed') and terminates all workers. */
  async close(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      if (this.respawnTimer) clearTimeout(this.respawnTimer);
      for (const task of [...this.tasks.values()]) this.stop(task, 'runner closed');
      for (const slot of [...this.slots]) this.retire(slot);
      this.idle = [];
    }
    while (this.terminations.size > 0) await Promise.allSettled([...this.terminations]);
    // only once, and only after every worker is gone: a closed fd number may be reused at once
    if (!this.fdsClosed) {
      this.fdsClosed = true;
      closeSync(this.nullIn);
      closeSync(this.nullOut);
    }
  }

  // --- pool ---------------------------------------------------------------------

  private fillPool(): void {
    while (!this.closed && this.slots.size < this.poolSize && !this.respawnTimer) {
      const slot = this.trySpawn();
      if (!slot) return;
      this.idle.push(slot);
    }
  }

  /** spawn(), but a failure (e.g. out of threads) schedules a retry instead of throwing into an event handler. */
  private trySpawn(): Slot | undefined {
    try {
      return this.spawn();
    } catch {
      this.startFailures++;
      this.scheduleRespawn();
      return undefined;
    }
  }

  private scheduleRespawn(): void {
    if (this.closed || this.respawnTimer) return;
    const delay = Math.min(5000, 50 * 2 ** Math.min(this.startFailures, 7));
    this.respawnTimer = setTimeout(() => {
      this.respawnTimer = null;
      this.fillPool();
      this.pump();
    }, delay);
    this.respawnTimer.unref();
  }

  private spawn(): Slot {
    const worker = new Worker(WORKER_URL, {
      workerData: { nullIn: this.nullIn, nullOut: this.nullOut },
      // not the parent's flags: `--import tsx` alone would add ~100 ms to every worker start
      execArgv: [],
      resourceLimits: { maxOldGenerationSizeMb: 256, maxYoungGenerationSizeMb: 32 },
      stdout: false,
      stderr: false,
    });
    let settle = (): void => {};
    const started = new Promise<void>((resolve) => (settle = resolve));
    const slot: Slot = { worker, task: null, ready: false, dead: false, started, settle, retireTimer: null, modules: new Set() };
    this.slots.add(slot);
    worker.unref();
    worker.on('message', (msg: WorkerMessage) => this.onMessage(slot, msg));
    worker.on('error', (err: Error) => this.onCrash(slot, err.message || String(err)));
    worker.on('exit', (code: number) => this.onCrash(slot, `worker exited with code ${code}`));
    return slot;
  }

  private onMessage(slot: Slot, msg: WorkerMessage): void {
    if (slot.dead) return;
    if (msg.t === 'ready') {
      slot.ready = true;
      slot.settle();
      this.startFailures = 0;
      return;
    }
    const task = slot.task;
    if (!task || task.seq !== msg.id) return;
    if (msg.t === 'out') {
      const data = msg.data;
      if (msg.fd === 2) {
        task.stderr.add(data);
        return;
      }
      task.stdout.add(data);
      if (task.decoder && task.req.onStdout) {
        const text = task.decoder.decode(data, { stream: true });
        if (text) safeCall(task.req.onStdout, text);
      }
      return;
    }
    if (msg.t === 'done') {
      slot.task = null;
      this.finish(task, msg.outcome);
      this.release(slot);
      this.pump();
    }
  }

  private onCrash(slot: Slot, reason: string): void {
    if (slot.dead) return;
    slot.dead = true;
    slot.settle();
    if (slot.retireTimer) clearTimeout(slot.retireTimer);
    this.slots.delete(slot);
    this.idle = this.idle.filter((s) => s !== slot);
    const task = slot.task;
    slot.task = null;
    if (task) this.finish(task, { ok: false, exitCode: null, error: `worker crashed: ${reason}` });
    if (!slot.ready) {
      // a worker that cannot even start: retry with back-off instead of spinning
      this.startFailures++;
      this.scheduleRespawn();
    }
    this.fillPool();
    this.pump();
  }

  /** Kills a worker (the wasm inside may be stuck in a loop: terminate is the only way). */
  private retire(slot: Slot): void {
    if (slot.dead) return;
    slot.dead = true;
    slot.settle();
    slot.task = null;
    if (slot.retireTimer) clearTimeout(slot.retireTimer);
    this.slots.delete(slot);
    this.idle = this.idle.filter((s) => s !== slot);
    const p = slot.worker.terminate().catch(() => undefined);
    this.terminations.add(p);
    void p.finally(() => this.terminations.delete(p));
  }

  /** A worker that finished a run cleanly goes back to the pool, unless the pool is full. */
  private release(slot: Slot): void {
    slot.worker.unref();
    if (this.closed || slot.dead) return;
    // extras started for maxConcurrent > poolSize are retired once they have stayed idle a while
    if (this.slots.size > this.poolSize && !slot.retireTimer) {
      slot.retireTimer = setTimeout(() => {
        slot.retireTimer = null;
        if (!slot.task && this.slots.size > this.poolSize) this.retire(slot);
      }, this.idleRetireMs);
      slot.retireTimer.unref();
    }
    this.idle.push(slot);
  }

  private pump(): void {
    while (!this.closed && this.queue.length > 0 && this.busy < this.maxConcurrent) {
      const slot = this.takeIdle() ?? this.trySpawn();
      if (!slot) return; // retried by the respawn timer
      const task = this.queue.shift()!;
      this.start(task, slot);
    }
  }

  /** An idle worker, preferring one that has finished starting (most recently used first). */
  private takeIdle(): Slot | undefined {
    let slot: Slot | undefined;
    for (let i = this.idle.length - 1; i >= 0 && !slot; i--) {
      if (this.idle[i]!.ready) slot = this.idle.splice(i, 1)[0];
    }
    slot ??= this.idle.pop();
    if (slot?.retireTimer) {
      clearTimeout(slot.retireTimer);
      slot.retireTimer = null;
    }
    return slot;
  }

  private start(task: Task, slot: Slot): void {
    task.state = 'running';
    task.slot = slot;
    slot.task = task;
    this.busy++;
    task.startedAt = performance.now();
    slot.worker.ref();
    try {
      slot.worker.postMessage(runMessage(task, slot, this.outputLimitBytes));
    } catch (err) {
      slot.task = null;
      this.finish(task, { ok: false, exitCode: null, error: `error: cannot send the run to a worker: ${(err as Error).message}` });
      // its list of held modules may no longer match the worker's: a fresh worker instead
      this.retire(slot);
      this.fillPool();
      this.pump();
      return;
    }
    task.prepared = null;
    const limit = task.req.timeoutMs;
    if (limit > 0) {
      task.timer = setTimeout(() => this.stop(task, `time limit of ${limit} ms exceeded`), limit);
    }
  }

  private stop(task: Task, reason: string): void {
    if (task.state === 'done') return;
    const slot = task.state === 'running' ? task.slot : null;
    if (task.state === 'queued') {
      const i = this.queue.indexOf(task);
      if (i >= 0) this.queue.splice(i, 1);
    }
    this.finish(task, { ok: false, exitCode: null, error: reason });
    if (slot) {
      this.retire(slot);
      this.fillPool();
      this.pump();
    }
  }

  private finish(task: Task, outcome: Outcome): void {
    if (task.state === 'done') return;
    const wasRunning = task.state === 'running';
    task.state = 'done';
    if (wasRunning) this.busy--;
    if (task.timer) clearTimeout(task.timer);
    task.timer = null;
    task.prepared = null;
    if (this.tasks.get(task.req.taskId) === task) this.tasks.delete(task.req.taskId);
    if (task.decoder && task.req.onStdout) {
      const rest = task.decoder.decode();
      if (rest) safeCall(task.req.onStdout, rest);
    }
    const result: RunResult = {
      ok: outcome.ok,
      exitCode: outcome.exitCode,
      stdout: task.stdout.text(),
      stderr: task.stderr.text(),
      durationMs: wasRunning ? performance.now() - task.startedAt : 0,
    };
    if (outcome.returnValue !== undefined) result.returnValue = outcome.returnValue;
    if (outcome.error !== undefined) result.error = outcome.error;
    task.resolve(result);
  }
}

function safeCall(fn: (chunk: string) => void, text: string): void {
  try {
    fn(text);
  } catch {
    // a listener's failure must not break the run
  }
}

/** A run that needs nothing a worker provides (WASI, stdin, files, streamed output) and has a time limit. */
function inlineable(req: RunRequest): boolean {
  return req.timeoutMs > 0 && !req.stdin && !req.files && !req.onStdout;
}

function validate(req: RunRequest): string | undefined {
  if (!req || typeof req !== 'object') return 'invalid run request';
  if (typeof req.taskId !== 'string' || req.taskId === '') return 'taskId must be a non-empty string';
  if (typeof req.name !== 'string') return 'name must be a string';
  if (req.digest !== undefined && (typeof req.digest !== 'string' || !/^(sha256:)?[0-9a-f]{64}$/.test(req.digest))) return 'digest must be a sha256 digest in hex';
  if (!Array.isArray(req.args) || req.args.some((a) => typeof a !== 'string')) return 'args must be an array of strings';
  if (req.env === null || typeof req.env !== 'object' || Object.values(req.env).some((v) => typeof v !== 'string')) {
    return 'env must map names to strings';
  }
  if (!Array.isArray(req.inputs)) return 'inputs must be an array';
  const badInput = req.inputs.findIndex((v) => typeof v !== 'number' && typeof v !== 'bigint' && typeof v !== 'string');
  if (badInput >= 0) return `input ${badInput} must be a number, bigint or string`;
  if (!(req.timeoutMs >= 0) || !Number.isFinite(req.timeoutMs)) return `invalid timeoutMs ${String(req.timeoutMs)}`;
  if (!(req.maxMemoryBytes >= 0) || !Number.isFinite(req.maxMemoryBytes)) {
    return `invalid maxMemoryBytes ${String(req.maxMemoryBytes)}`;
  }
  if (req.stdin !== undefined && !(req.stdin instanceof Uint8Array)) return 'stdin must be a Uint8Array';
  if (req.files !== undefined) {
    if (req.files === null || typeof req.files !== 'object') return 'files must map names to Uint8Array';
    for (const [k, v] of Object.entries(req.files)) {
      if (!(v instanceof Uint8Array)) return `file ${JSON.stringify(k)} must be a Uint8Array`;
      const parts = k.split('/').filter((p) => p !== '' && p !== '.');
      if (parts.length === 0 || parts.includes('..')) return `invalid file name ${JSON.stringify(k)}`;
    }
  }
  return undefined;
}

/** A run for this worker: the module named by id, and posted with its facts only if the worker does not hold it. */
function runMessage(task: Task, slot: Slot, outCap: number): Record<string, unknown> {
  const req = task.req;
  const { module, meta } = task.prepared!;
  const mid = moduleId(module);
  const msg: Record<string, unknown> = {
    t: 'run',
    id: task.seq,
    mid,
    name: req.name,
    args: req.args.length > 0 ? req.args : [req.name],
    env: { ...req.env },
    inputs: req.inputs,
    stdin: req.stdin ?? null,
    files: req.files ?? null,
    limitBytes: req.maxMemoryBytes,
    stream: Boolean(req.onStdout),
    outCap,
  };
  const held = slot.modules;
  if (held.delete(mid)) {
    held.add(mid); // most recently run last
    return msg;
  }
  msg.load = {
    module,
    command: meta.command,
    exportNames: meta.exportNames.filter((n) => n !== '_initialize'),
    signatures: meta.signatures,
    needsWasi: meta.needsWasi,
    memoryImport: meta.memoryImport,
    capped: meta.capped,
  };
  held.add(mid);
  if (held.size > MODULES_PER_WORKER) {
    const oldest = held.values().next().value!;
    held.delete(oldest);
    msg.drop = [oldest];
  }
  return msg;
}
