// A Node proplet: registers over MQTT, heartbeats, takes starts and stops on
// its own topics only, runs each task in a sandboxed worker and reports the
// result. Which starts it takes, what a stop does and which results go out
// when is decided by the shared proplet core (proplet-core/); this file is the
// transport (mqtt.js, JSON or CBOR), module fetching and the wasm runtime.
// It knows the control plane only through the protocol.

import { hostname } from 'node:os';
import mqtt, { type MqttClient } from 'mqtt';
import { decode, encode, ProtocolError, type Encoding, type FlUpdate, type Result, type Start } from '../protocol/index.ts';
import { encodeResult, outcomeOf, PropletCore, readStartRef, runKey, taskRun, type Command, type Event } from '../proplet-core/index.ts';
import { flUpdateTopic, propletSubscriptions, publishQos, topic, type AliveOccasion, type Scope } from '../topics/index.ts';
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
  /** Tasks run at once (workers beyond the one kept warm start on demand). */
  maxTasks?: number;
  /** Memory this proplet offers (registered as capacity.memory_bytes). */
  memoryBytes?: number;
  /** Largest module taken, inline or fetched (default 64 MiB; inline ones are bounded by the protocol too). */
  maxModuleBytes?: number;
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

/**
 * The new load after tasks end goes out at once, then at most this often: one alive for the tasks
 * that end meanwhile rather than one each (at 1,000 tasks/s, one each was a quarter of all the
 * messages through the broker). The result itself tells the control plane at once that the task ended.
 */
const ALIVE_AFTER_FINISH_MS = 100;

export class NodeProplet {
  private client?: MqttClient;
  private runner: WasmRunner;
  private modules: ModuleSource;
  private readonly core: PropletCore<Start>;
  private heartbeat?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  /** Set while alives after finished tasks wait out ALIVE_AFTER_FINISH_MS; `again`: one is due at its end. */
  private aliveAfterFinish?: { timer: NodeJS.Timeout; again: boolean };
  private closing = false;
  private readonly encoding: Encoding;
  private readonly maxTasks: number;
  private readonly log: Log;
  private readonly startTopic: string;
  private readonly stopTopic: string;
  private readonly resultTopic: string;

  constructor(private o: NodePropletOptions) {
    this.encoding = o.encoding ?? 'json';
    this.maxTasks = o.maxTasks ?? 4;
    this.log = o.log ?? (() => {});
    this.startTopic = topic(o.scope, 'manager.start', o.id);
    this.stopTopic = topic(o.scope, 'manager.stop', o.id);
    this.resultTopic = topic(o.scope, 'proplet.results', o.id);
    const maxModuleBytes = o.maxModuleBytes ?? 64 * 1024 * 1024;
    this.modules = new ModuleSource({ maxModuleBytes });
    this.core = new PropletCore<Start>({ propletId: o.id, maxTasks: this.maxTasks, maxModuleBytes, ramBudgetBytes: o.memoryBytes });
    // One warm worker for the next task (a cold one costs ~40 ms, more than a small task); the
    // others start on demand up to maxTasks and retire when idle: each costs ~9 MB of RSS, so an
    // idle proplet stays near 75 MB instead of ~105 MB with four (npm run bench -- startup).
    this.runner = new WasmRunner({ poolSize: 1, maxConcurrent: this.maxTasks });
  }

  get id(): string {
    return this.o.id;
  }
  get connected(): boolean {
    return this.client?.connected ?? false;
  }
  get runningTasks(): number {
    return this.core.size;
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
      // a ping every keepalive period, not one timer reset per packet sent (it was 3 % of the CPU per task)
      reschedulePings: false,
      reconnectPeriod: 1000,
      // every publish on this proplet's own topics: the sender is in the topic, which any broker's ACL can check
      will: { topic: topic(scope, 'proplet.alive', id), payload: encode('proplet.alive', { v: 1, proplet_id: id, status: 'offline' }, this.encoding), qos: publishQos('proplet.alive', 'will'), retain: false },
    });
    this.client = client;
    client.on('message', (t, payload) => this.onMessage(t, payload));
    client.on('error', (e) => this.log('warn', 'mqtt error', { error: e.message }));
    // mqtt.js stops reconnecting after a refused CONNACK (server unavailable, credentials
    // being re-issued): a proplet keeps trying, as a device would.
    client.on('close', () => {
      if (this.core.isOnline) this.dispatch({ t: 'disconnected' });
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
        this.dispatch({ t: 'connected' });
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
    if (this.aliveAfterFinish) clearTimeout(this.aliveAfterFinish.timer);
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

  // --- the core's commands ------------------------------------------------------------

  /** Set while this turn's packets are held for one write at its end (corkTurn). */
  private corked?: { cork(): void; uncork(): void };
  /** `running` results of this turn, by run key: sent at its end unless the final result came first. */
  private readonly heldRunning = new Map<string, Result>();
  private turnEnd = false;

  /**
   * Holds what this turn sends (the acknowledgement of a start, running, the result, the alive) for one
   * write at the end of the turn: mqtt.js writes at the end of each tick, and a task's packets span
   * several ticks (its steps are promise continuations), so one socket write each cost more than
   * everything else the proplet does for a small task.
   */
  private corkTurn(): void {
    const stream = this.client?.stream as { cork?: () => void; uncork?: () => void } | undefined;
    if (!this.corked && stream?.cork && stream.uncork) {
      this.corked = stream as { cork(): void; uncork(): void };
      this.corked.cork();
    }
    this.atTurnEnd();
  }

  private atTurnEnd(): void {
    if (this.turnEnd) return;
    this.turnEnd = true;
    setImmediate(() => {
      this.turnEnd = false;
      // offline meanwhile: not kept, as the core keeps no running result (the registration says what runs)
      if (this.client?.connected) for (const r of this.heldRunning.values()) this.publishResult(r);
      this.heldRunning.clear();
      const stream = this.corked;
      this.corked = undefined;
      stream?.uncork();
    });
  }

  private publishResult(r: Result): void {
    this.client?.publish(this.resultTopic, encodeResult(r, this.encoding), { qos: 1 });
  }

  private dispatch(e: Event<Start>): void {
    for (const c of this.core.handle(e)) this.execute(c);
  }

  private execute(c: Command<Start>): void {
    switch (c.t) {
      case 'load':
        void this.load(c.key, c.payload);
        return;
      case 'run':
        void this.run(c.key, c.payload);
        return;
      case 'kill':
        this.runner.cancel(c.key);
        return;
      case 'abort-load':
        return; // a fetch in flight ends on its own; the core no longer holds the task, so nothing runs
      case 'publish':
        this.corkTurn();
        if (c.result.status === 'running') {
          // a small task's final result is ready before the turn ends, and says all that running would
          this.heldRunning.set(runKey(c.result.task_id, c.result.attempt), c.result);
          return;
        }
        // superseded: the final result is the first this attempt sends
        this.heldRunning.delete(runKey(c.result.task_id, c.result.attempt));
        this.publishResult(c.result);
        if (c.again) this.log('info', 'result sent again', { task_id: c.result.task_id, attempt: c.result.attempt, status: c.result.status, reason: 'asked by a stop for an attempt that ended here' });
        else {
          const status = c.result.status ?? 'completed';
          this.log('info', status === 'refused' ? 'task refused' : 'task finished', { task_id: c.result.task_id, attempt: c.result.attempt, status, ...(c.result.error ? { error: c.result.error } : {}) });
          if (status !== 'refused') this.o.onTaskFinished?.(c.result.task_id, status as 'completed' | 'failed' | 'stopped');
        }
        return;
      case 'announce':
        this.register();
        return;
      case 'alive':
        this.aliveSoon();
        return;
      case 'ignored':
        this.log('debug', 'message ignored', { task_id: c.id, reason: c.reason, ...(c.detail ? { detail: c.detail } : {}) });
        return;
      case 'deferred':
        // sent after the next connect
        this.log('info', 'result kept for the next connection', { task_id: c.result.task_id, attempt: c.result.attempt, status: c.result.status });
        return;
      case 'dropped-result':
        this.log('warn', 'result dropped', { task_id: c.result.task_id, reason: c.reason });
        return;
    }
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
      running: this.core.running(),
    });
    // No heartbeat with it: registering marks the proplet alive, and a QoS 0
    // heartbeat may overtake the QoS 1 registration and arrive from an unknown proplet.
  }

  /** An alive after a task ended: now, or once at the end of the current ALIVE_AFTER_FINISH_MS. */
  private aliveSoon(): void {
    if (this.aliveAfterFinish) {
      this.aliveAfterFinish.again = true;
      return;
    }
    this.sendAlive('after_task');
    const timer = setTimeout(() => {
      const again = this.aliveAfterFinish?.again;
      this.aliveAfterFinish = undefined;
      if (again && !this.closing) this.aliveSoon();
    }, ALIVE_AFTER_FINISH_MS);
    timer.unref();
    this.aliveAfterFinish = { timer, again: false };
  }

  private sendAlive(occasion: AliveOccasion = 'periodic'): void {
    if (!this.client?.connected) return;
    const running = this.core.running();
    this.send('proplet.alive', {
      v: 1,
      proplet_id: this.o.id,
      status: 'alive',
      running_tasks: running.length,
      memory_used: process.memoryUsage.rss(),
      running,
    }, publishQos('proplet.alive', occasion));
  }

  /** An FL update, before the task's result: the round counts the update, the result only ends the task. */
  private sendUpdate(u: FlUpdate): void {
    this.corkTurn();
    this.client?.publish(flUpdateTopic(this.o.scope, u.round_id, this.o.id), encode('fl.update', u, this.encoding), { qos: 1 });
  }

  private send<K extends 'proplet.create' | 'proplet.alive'>(kind: K, msg: Parameters<typeof encode<K>>[1], qos = publishQos(kind)): void {
    this.corkTurn();
    this.client?.publish(topic(this.o.scope, kind, this.o.id), encode(kind, msg, this.encoding), { qos });
  }

  // --- inbound --------------------------------------------------------------------------

  private onMessage(t: string, payload: Buffer): void {
    this.corkTurn(); // mqtt.js acknowledges the message after this handler
    const now = Date.now();
    // exactly the topics subscribed to (propletSubscriptions: no wildcards)
    if (t === this.startTopic) {
      let msg: Start;
      try {
        msg = decode('manager.start', payload).msg;
      } catch (e) {
        // a start this proplet cannot read (a module over the protocol's limit, a bad field) is refused, not lost
        const reason = e instanceof ProtocolError ? e.message : String(e);
        const ref = readStartRef(payload);
        this.log('warn', 'start unreadable', { topic: t, reason, ...(ref ? { task_id: ref.id } : {}) });
        if (ref) this.dispatch({ t: 'start', start: { ...ref, unfit: `cannot take this start (${payload.length} bytes): ${reason}` }, now });
        return;
      }
      const moduleBytes = msg.file && msg.file.length > 0 ? msg.file.length : msg.module_size;
      const start = { id: msg.id, attempt: msg.attempt, proplet_id: msg.proplet_id, fl: msg.env?.ROUND_ID !== undefined, payload: msg };
      this.dispatch({ t: 'start', start: { ...start, ...(moduleBytes !== undefined ? { moduleBytes } : {}), ...(msg.memory_bytes !== undefined ? { linearBytes: msg.memory_bytes } : {}) }, now });
    } else if (t === this.stopTopic) {
      try {
        const msg = decode('manager.stop', payload).msg;
        this.dispatch({ t: 'stop', id: msg.id, attempt: msg.attempt, proplet_id: msg.proplet_id, now });
      } catch (e) {
        this.log('warn', 'message dropped', { topic: t, reason: e instanceof ProtocolError ? e.message : (e as Error).stack });
      }
    }
  }

  // --- loading and running ------------------------------------------------------------

  /** Module (and FL model) in hand, kept for the run. */
  private loaded = new Map<string, { bytes: Uint8Array; digest: string; round?: FlInput }>();

  private async load(key: string, msg: Start): Promise<void> {
    try {
      const loaded = await this.modules.load(msg);
      // an FL round task: the module trains the round's model (wasm-runtime/fl.ts)
      const round = isFlTask(msg.env) ? flInput((await this.modules.load({ id: msg.id, image_url: msg.env!.MODEL_URI, digest: msg.env!.MODEL_DIGEST })).bytes) : undefined;
      if (!this.core.holds(key)) return; // stopped meanwhile
      this.loaded.set(key, { bytes: loaded.bytes, digest: loaded.digest, ...(round ? { round } : {}) });
      this.dispatch({ t: 'loaded', key, moduleBytes: loaded.bytes.length, linearBytes: msg.memory_bytes ?? 0 });
      if (!this.core.holds(key)) this.loaded.delete(key);
    } catch (e) {
      // it does not fit here; another proplet may take it
      if (e instanceof ModuleError && e.refuse) return this.dispatch({ t: 'refuse', key, reason: e.message });
      const error = e instanceof ModuleError || e instanceof FlContractError ? e.message : `internal error: ${(e as Error).message}`;
      this.finish(key, msg, { ok: false, exitCode: null, stdout: '', stderr: '', error, durationMs: 0 });
    }
  }

  private async run(key: string, msg: Start): Promise<void> {
    const held = this.loaded.get(key);
    this.loaded.delete(key);
    if (!held) return;
    const res = await this.runner.run({
      taskId: key,
      module: held.bytes,
      digest: held.digest,
      ...taskRun(msg, 60_000),
      maxMemoryBytes: msg.memory_bytes ?? this.o.defaultTaskMemoryBytes ?? 256 * 1024 * 1024,
      ...(held.round ? { stdin: held.round.stdin, files: held.round.files } : {}),
    });
    this.finish(key, msg, res, held.round);
  }

  private finish(key: string, msg: Start, res: RunResult, round?: FlInput): void {
    if (!this.core.holds(key)) return;
    let flResults: Record<string, unknown> | undefined;
    if (isFlTask(msg.env) && res.error !== 'stopped') {
      const o = flOutcome({ proplet_id: this.o.id, round_id: msg.env!.ROUND_ID!, task_id: msg.id }, res, round, UPDATE_PACKET_BYTES, this.encoding);
      for (const u of o.updates) this.sendUpdate(u);
      flResults = o.results;
      if (o.error) res = { ...res, ok: false, error: o.error };
    }
    this.dispatch({ t: 'finished', key, outcome: outcomeOf(res, flResults) });
  }
}
