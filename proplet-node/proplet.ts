// A Node proplet: registers over MQTT, heartbeats, takes starts and stops on
// its own topics only, runs each task in a sandboxed worker and reports the
// result. It knows the control plane only through the protocol.

import { hostname } from 'node:os';
import mqtt, { type MqttClient } from 'mqtt';
import { decode, encode, ProtocolError, type Encoding, type FlUpdate, type Result, type Start, type Stop } from '../protocol/index.ts';
import { flUpdateTopic, parseTopic, propletSubscriptions, topic, type Scope } from '../topics/index.ts';
import { FlContractError, flInput, flOutcome, isFlTask, type FlInput } from '../wasm-runtime/fl.ts';
import { ModuleError, ModuleSource } from './module-source.ts';
import { WasmRunner, type RunResult } from '../wasm-runtime/index.ts';

export type Log = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

export interface NodePropletOptions {
  id: string;
  secret?: string;
  url: string;
  scope: Scope;
  name?: string;
  deviceType?: string;
  propletType?: 'external' | 'k8s';
  capabilities?: string[];
  labels?: Record<string, string>;
  /** Tasks run at once; also the size of the warm worker pool. */
  maxTasks?: number;
  /** Memory this proplet offers (registered as capacity.memory_bytes). */
  memoryBytes?: number;
  /** Per-task linear memory limit when the task asks for none. */
  defaultTaskMemoryBytes?: number;
  heartbeatMs?: number;
  encoding?: Encoding;
  log?: Log;
  /** Called after each task's final result is sent (`propeller proplet --once` exits on the first). */
  onTaskFinished?: (taskId: string, status: 'completed' | 'failed' | 'stopped') => void;
}

/**
 * Largest FL update message: larger models are streamed in parts. Under EMQX's
 * default max_packet_size (1 MB) and the embedded broker's limit for proplets (4 MiB).
 */
const UPDATE_PACKET_BYTES = 1000 * 1024;

interface Running {
  attempt?: number;
  fl: boolean;
}

export class NodeProplet {
  private client?: MqttClient;
  private runner: WasmRunner;
  private modules = new ModuleSource();
  private running = new Map<string, Running>();
  /** Recent stops by task id (and attempt), so a start that arrives after its stop does not run. */
  private stopped = new Map<string, { attempt?: number; at: number }>();
  private heartbeat?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  private closing = false;
  private readonly encoding: Encoding;
  private readonly maxTasks: number;
  private readonly log: Log;

  constructor(private o: NodePropletOptions) {
    this.encoding = o.encoding ?? 'json';
    this.maxTasks = o.maxTasks ?? 4;
    this.log = o.log ?? (() => {});
    // A warm worker per task slot: a cold worker costs ~40 ms, far more than a small task.
    this.runner = new WasmRunner({ poolSize: this.maxTasks, maxConcurrent: this.maxTasks });
  }

  get id(): string {
    return this.o.id;
  }
  get connected(): boolean {
    return this.client?.connected ?? false;
  }
  get runningTasks(): number {
    return this.running.size;
  }

  async start(): Promise<void> {
    const { scope, id } = this.o;
    const client = mqtt.connect(this.o.url, {
      protocolVersion: 4,
      clientId: `proplet-${id}`,
      username: id,
      password: this.o.secret,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 1000,
      will: { topic: topic(scope, 'proplet.alive'), payload: encode('proplet.alive', { v: 1, proplet_id: id, status: 'offline' }, this.encoding), qos: 1, retain: false },
    });
    this.client = client;
    client.on('message', (t, payload) => this.onMessage(t, payload));
    client.on('error', (e) => this.log('warn', 'mqtt error', { error: e.message }));
    // mqtt.js stops reconnecting after a refused CONNACK (server unavailable, credentials
    // being re-issued): a proplet keeps trying, as a device would.
    client.on('close', () => {
      if (this.closing || client.reconnecting || this.retry) return;
      this.retry = setTimeout(() => {
        this.retry = undefined;
        if (!this.closing && !client.connected && !client.reconnecting) client.reconnect();
      }, 2000);
      this.retry.unref();
    });
    client.on('connect', () => {
      // mqtt.js leaves Nagle on: small control messages would wait for delayed ACKs (~40 ms).
      (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
      client.subscribe(propletSubscriptions(scope, id), { qos: 1 }, (err) => {
        if (err) this.log('error', 'subscribe failed', { error: err.message });
        this.register();
      });
    });
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => {
        client.end(true);
        reject(new Error(`proplet ${id} cannot connect to ${this.o.url}: ${e.message}`));
      };
      client.once('connect', () => {
        client.off('error', onErr);
        resolve();
      });
      client.once('error', onErr);
    });
    this.heartbeat = setInterval(() => this.sendAlive(), this.o.heartbeatMs ?? 10_000);
    this.heartbeat.unref();
  }

  /** Stops heartbeats and tasks, and disconnects cleanly (no last will). */
  async close(): Promise<void> {
    this.closing = true;
    if (this.retry) clearTimeout(this.retry);
    if (this.heartbeat) clearInterval(this.heartbeat);
    // not connected (refused, retrying): nothing to flush, and a graceful end would wait for a connection forever
    await this.client?.endAsync(!this.client.connected);
    await this.runner.close();
  }

  /** Drops the connection as a crash would: the broker publishes the last will. Tests use it. */
  destroy(): void {
    this.closing = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    // Destroy the socket before end(): end() would otherwise send DISCONNECT, which cancels the will.
    (this.client as unknown as { stream?: { destroy(): void } })?.stream?.destroy();
    this.client?.end(true);
    void this.runner.close();
  }

  private runningRefs() {
    return [...this.running].map(([task_id, r]) => ({ task_id, ...(r.attempt !== undefined ? { attempt: r.attempt } : {}) }));
  }

  private register(): void {
    const memory = this.o.memoryBytes;
    this.send('proplet.create', {
      v: 1,
      proplet_id: this.o.id,
      name: this.o.name ?? `${hostname()}-${this.o.id}`,
      device_type: this.o.deviceType ?? 'node',
      proplet_type: this.o.propletType ?? 'external',
      capabilities: this.o.capabilities ?? ['wasm', 'wasi'],
      labels: this.o.labels ?? {},
      capacity: { max_tasks: this.maxTasks, ...(memory !== undefined ? { memory_bytes: memory } : {}) },
      wasm_runtime: `node-${process.versions.v8}`,
      encoding: this.encoding,
      addressing: 'direct',
      running: this.runningRefs(),
    });
    this.sendAlive();
  }

  private sendAlive(): void {
    if (!this.client?.connected) return;
    this.send('proplet.alive', {
      v: 1,
      proplet_id: this.o.id,
      status: 'alive',
      running_tasks: this.running.size,
      memory_used: process.memoryUsage.rss(),
      running: this.runningRefs(),
    });
  }

  /** An FL update, before the task's result: the round counts the update, the result only ends the task. */
  private sendUpdate(u: FlUpdate): void {
    this.client?.publish(flUpdateTopic(this.o.scope, u.round_id, this.o.id), encode('fl.update', u, this.encoding), { qos: 1 });
  }

  private send<K extends 'proplet.create' | 'proplet.alive' | 'proplet.results'>(kind: K, msg: Parameters<typeof encode<K>>[1]): void {
    this.client?.publish(topic(this.o.scope, kind), encode(kind, msg, this.encoding), { qos: 1 });
  }

  private onMessage(t: string, payload: Buffer): void {
    const parsed = parseTopic(t);
    try {
      if (parsed?.kind === 'manager.start') this.onStart(decode('manager.start', payload).msg);
      else if (parsed?.kind === 'manager.stop') this.onStop(decode('manager.stop', payload).msg);
    } catch (e) {
      const reason = e instanceof ProtocolError ? e.message : (e as Error).stack;
      this.log('warn', 'message dropped', { topic: t, reason });
    }
  }

  private onStop(msg: Stop): void {
    if (msg.proplet_id !== undefined && msg.proplet_id !== this.o.id) return;
    // starts and stops travel on different topics: a stop may overtake its start
    this.stopped.set(msg.id, { attempt: msg.attempt, at: Date.now() });
    if (this.stopped.size > 1024) this.stopped.delete(this.stopped.keys().next().value!);
    // a stop for an old attempt (reconciliation) must not kill the current one
    const run = this.running.get(msg.id);
    if (run && msg.attempt !== undefined && run.attempt !== undefined && msg.attempt !== run.attempt) return;
    if (!this.runner.cancel(msg.id) && this.running.has(msg.id)) {
      // stopped while its module was still loading: the run checks this flag
      this.running.delete(msg.id);
    }
  }

  private onStart(msg: Start): void {
    if (msg.proplet_id !== undefined && msg.proplet_id !== this.o.id) return;
    if (this.running.has(msg.id)) return; // a redelivered start (QoS 1): already on it
    const st = this.stopped.get(msg.id);
    if (st && Date.now() - st.at < 60_000 && (st.attempt === undefined || msg.attempt === undefined || st.attempt === msg.attempt)) return;
    const fl = msg.env?.ROUND_ID !== undefined;
    const base = { v: 1, proplet_id: this.o.id, task_id: msg.id, ...(msg.attempt !== undefined ? { attempt: msg.attempt } : {}) };
    if (this.running.size >= this.maxTasks) {
      this.send('proplet.results', { ...base, status: 'refused', error: `at capacity: ${this.running.size}/${this.maxTasks} tasks running` });
      return;
    }
    this.running.set(msg.id, { attempt: msg.attempt, fl });
    void this.execute(msg, base, fl);
  }

  private async execute(msg: Start, base: Pick<Result, 'v' | 'proplet_id' | 'task_id' | 'attempt'>, fl: boolean): Promise<void> {
    let res: RunResult;
    let round: FlInput | undefined;
    try {
      const loaded = await this.modules.load(msg);
      // an FL round task: the module trains the round's model (runner/fl.ts)
      if (isFlTask(msg.env)) round = flInput((await this.modules.load({ id: msg.id, image_url: msg.env!.MODEL_URI, digest: msg.env!.MODEL_DIGEST })).bytes);
      if (!this.running.has(msg.id)) return; // stopped meanwhile
      this.send('proplet.results', { ...base, status: 'running' });
      res = await this.runner.run({
        taskId: msg.id,
        module: loaded.bytes,
        name: msg.name ?? '',
        args: [msg.name ?? 'main', ...(msg.cli_args ?? [])],
        env: msg.env ?? {},
        inputs: (msg.inputs ?? []) as (number | bigint | string)[],
        timeoutMs: msg.daemon ? 0 : msg.timeout_ms ?? 60_000,
        maxMemoryBytes: msg.memory_bytes ?? this.o.defaultTaskMemoryBytes ?? 256 * 1024 * 1024,
        ...(round ? { stdin: round.stdin, files: round.files } : {}),
      });
    } catch (e) {
      this.running.delete(msg.id);
      if (e instanceof ModuleError && e.refuse) {
        // it does not fit here; another proplet may take it
        this.send('proplet.results', { ...base, status: 'refused', error: e.message });
        return;
      }
      const error = e instanceof ModuleError || e instanceof FlContractError ? e.message : `internal error: ${(e as Error).message}`;
      res = { ok: false, exitCode: null, stdout: '', stderr: '', error, durationMs: 0 };
    }
    let flResults: Record<string, unknown> | undefined;
    if (isFlTask(msg.env) && res.error !== 'stopped') {
      const o = flOutcome({ proplet_id: this.o.id, round_id: msg.env!.ROUND_ID!, task_id: msg.id }, res, round, UPDATE_PACKET_BYTES, this.encoding);
      for (const u of o.updates) this.sendUpdate(u);
      flResults = o.results;
      if (o.error) res = { ...res, ok: false, error: o.error };
    }
    this.running.delete(msg.id);
    const status = res.error === 'stopped' ? 'stopped' : res.ok ? 'completed' : 'failed';
    const result: Result = { ...base, status, stdout: res.stdout, stderr: res.stderr, duration_ms: res.durationMs };
    if (res.returnValue !== undefined) result.results = res.returnValue;
    if (flResults) result.results = flResults;
    if (res.exitCode !== null) result.exit_code = res.exitCode;
    if (res.error) result.error = res.error;
    if (fl) result.fl = true;
    this.send('proplet.results', result);
    this.o.onTaskFinished?.(msg.id, status);
    this.log('info', 'task finished', { task_id: msg.id, attempt: msg.attempt, status, duration_ms: res.durationMs, ...(res.error ? { error: res.error } : {}) });
  }
}
