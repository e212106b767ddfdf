// McuProplet: the constrained proplet profile, the reference that firmware
// (ESP32 + WAMR, Zephyr) follows. It differs from the node proplet in what a
// microcontroller cannot afford, and in nothing else a control plane can see:
//
//   - MQTT 3.1.1, compact CBOR only, QoS 1, a last will, a keepalive, and its
//     own reconnect loop with jittered exponential backoff;
//   - a bounded receive buffer: a larger payload is dropped and counted (a
//     start that was dropped is refused when its task id can be read);
//   - a fixed RAM budget: module bytes + linear memory per task, refused when
//     it does not fit; a maximum number of concurrent modules;
//   - modules that do not fit a start message arrive in registry chunks
//     (download.ts), CRC-32 per chunk and SHA-256 over the whole before
//     anything runs;
//   - the same WASI/core semantics and results as the node proplet, through
//     the same sandbox (wasm-runtime), capped to the budget.
//
// Which starts it takes, what a stop does, which results go out when (and
// which wait for the next connection) is the shared proplet core's decision
// (proplet-core/); this file executes its commands.
//
// docs/mcu.md is the byte-level contract this file implements.

import { EventEmitter } from 'node:events';
import { LRUCache } from 'lru-cache';
import mqtt, { type MqttClient } from 'mqtt';
import { decode, encode, ProtocolError, sha256Digest, type Chunk, type FlUpdate, type MessageByKind, type Result, type Start } from '../protocol/index.ts';
import { encodeResult, outcomeOf, PAGE_BYTES, PropletCore, readStartRef, taskRun, type Command, type Event, type RamBudget } from '../proplet-core/index.ts';
import { FlContractError, flInput, flOutcome, isFlTask, type FlInput } from '../wasm-runtime/fl.ts';
import { clipText, parseModule, WasmRunner, type RunResult } from '../wasm-runtime/index.ts';
import { flUpdateTopic, parseTopic, propletSubscriptions, publishQos, topic, type AliveOccasion, type Scope } from '../topics/index.ts';
import { Backoff, type BackoffOptions } from './backoff.ts';
import { DownloadError, ModuleDownload, type Ask, type DownloadFaults } from './download.ts';
import { aliveMsg, chunkMessageBytes, chunkRequestMsg, registerMsg, willMsg, type DeviceProfile } from './messages.ts';

export type Log = (level: 'debug' | 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>) => void;

export interface McuPropletOptions {
  id: string;
  secret?: string;
  url: string;
  scope: Scope;
  name?: string;
  /** Reported device type (default 'esp32'). */
  deviceType?: string;
  capabilities?: string[];
  labels?: Record<string, string>;
  wasmRuntime?: string;
  /** RAM for tasks: module bytes + linear memory of every task at once (default 256 KiB). */
  ramBudgetBytes?: number;
  /** Modules at once (default 2). */
  maxTasks?: number;
  /** Largest module accepted (default: the budget less one 64 KiB page). */
  maxModuleBytes?: number;
  /** Largest MQTT payload taken (default 1024); registered as capacity.max_packet_bytes. */
  rxBufferBytes?: number;
  /** Bytes per registry chunk asked for (default 512). */
  chunkSize?: number;
  /** Chunks in flight (default 4). */
  window?: number;
  /** Heartbeat period (default 10 s). */
  heartbeatMs?: number;
  /** MQTT keepalive in seconds (default 30). */
  keepaliveSec?: number;
  /** CONNECT to CONNACK, at most (default 10 s). */
  connectTimeoutMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** A whole module download, at most (default 60 s). */
  downloadTimeoutMs?: number;
  /** Chunks asked for and not seen for this long are asked again (default 2 s). */
  stallMs?: number;
  /** stdout and stderr kept per task, each (default 16 KiB). */
  outputLimitBytes?: number;
  /** A sandbox shared with other simulated devices; by default each device has its own. */
  runner?: WasmRunner;
  /** Fault injection for tests. */
  faults?: DownloadFaults;
  /**
   * Flash kept for modules fetched in chunks, by digest (default 256 KiB; 0: none).
   * A module run again (every FL round runs the same client) is not downloaded again.
   */
  flashCacheBytes?: number;
  /**
   * Publish on this device's own topics (`…/proplet/results/ID`) instead of the shared ones.
   * Needed behind an external broker, which cannot stamp the authenticated id into the topic
   * (the control plane refuses shared-topic messages there unless it trusts payload senders).
   * Default false: the shared form, whose bytes docs/mcu.md counts; the embedded broker stamps it.
   */
  perPropletTopics?: boolean;
  /** Fault injection for tests: holds a round's FL update (and the task's result) back this long, as a slow uplink would. */
  updateDelayMs?: (roundId: string) => number;
  log?: Log;
  random?: () => number;
}

export type McuState = 'idle' | 'connecting' | 'online' | 'backoff' | 'closed';

export interface McuStats {
  connects: number;
  /** Connections that were up and went down. */
  disconnects: number;
  /** Payloads over the receive buffer, dropped. */
  rxDropped: number;
  /** Payloads that did not decode, dropped. */
  malformed: number;
  startsReceived: number;
  startsInline: number;
  startsChunked: number;
  /** Starts whose module came from the flash cache instead of the registry. */
  startsCached: number;
  refused: number;
  completed: number;
  failed: number;
  stopped: number;
  chunksReceived: number;
  chunksCorrupt: number;
  chunkDuplicates: number;
  chunkRequests: number;
  chunkRerequests: number;
  downloadsResumed: number;
  downloadsFailed: number;
  digestMismatches: number;
  heartbeats: number;
  /** Final results kept while offline and sent after the next connect. */
  resultsDeferred: number;
  /** Data sizes of accepted chunks, by count (a 200 KB module: 512 → 399, 328 → 1). */
  chunkBytes: Map<number, number>;
}

export interface McuEvents {
  state: [state: McuState];
  start: [msg: Start];
  result: [r: Result];
  dropped: [info: { topic: string; bytes: number; limit: number; refusedTask?: string }];
}

/** What this device holds for one task the core gave it to load or run. */
interface Run {
  msg: Start;
  /** The runner's key: task ids are unique per control plane, not per shared runner. */
  runnerKey: string;
  running: boolean;
  bytes?: Uint8Array;
  round?: FlInput;
  /** Chunked: the digest of the module it downloads. */
  digest?: string;
  /** An FL round task: the digest of the round's model it downloads. */
  modelDigest?: string;
}

/** Final results kept while offline, at most. */
const OUTBOX = 16;
/** Final results kept after they went out, to answer a control plane that never heard them (RAM is scarce: a few). */
const RETAINED = 4;

/** The profile's defaults: docs/mcu.md lists them from here. */
export const MCU_DEFAULTS = {
  deviceType: 'esp32',
  ramBudgetBytes: 256 * 1024,
  maxTasks: 2,
  rxBufferBytes: 1024,
  chunkSize: 512,
  window: 4,
  heartbeatMs: 10_000,
  keepaliveSec: 30,
  connectTimeoutMs: 10_000,
  downloadTimeoutMs: 60_000,
  stallMs: 2000,
  outputLimitBytes: 16 * 1024,
  defaultTimeoutMs: 60_000,
  flashCacheBytes: 256 * 1024,
} as const;

export class McuProplet extends EventEmitter<McuEvents> {
  readonly profile: DeviceProfile;
  readonly stats: McuStats = {
    connects: 0,
    disconnects: 0,
    rxDropped: 0,
    malformed: 0,
    startsReceived: 0,
    startsInline: 0,
    startsChunked: 0,
    startsCached: 0,
    refused: 0,
    completed: 0,
    failed: 0,
    stopped: 0,
    chunksReceived: 0,
    chunksCorrupt: 0,
    chunkDuplicates: 0,
    chunkRequests: 0,
    chunkRerequests: 0,
    downloadsResumed: 0,
    downloadsFailed: 0,
    digestMismatches: 0,
    heartbeats: 0,
    resultsDeferred: 0,
    chunkBytes: new Map(),
  };
  /** performance.now() at start() and at the first good connection (subscribed and registered). */
  readonly timings: { startedAt?: number; firstOnlineAt?: number } = {};
  private client?: MqttClient;
  private runner: WasmRunner;
  private readonly ownRunner: boolean;
  private readonly flashBytes: number;
  private readonly flash: LRUCache<string, Uint8Array>;
  private readonly backoff: Backoff;
  private readonly core: PropletCore<Start>;
  /** By the core's run key. */
  private readonly runs = new Map<string, Run>();
  private readonly downloads = new Map<string, { d: ModuleDownload; waiters: Set<string> }>();
  private st: McuState = 'idle';
  private heartbeat?: NodeJS.Timeout;
  private reconnectTimer?: NodeJS.Timeout;
  private onlineAt = 0;
  private offlineUntil = 0;
  private firstOnline?: Promise<void>;
  private resolveFirst?: () => void;
  private readonly log: Log;
  private readonly chunkSize: number;
  private readonly window: number;
  private readonly rx: number;
  private readonly outputLimit: number;

  constructor(private readonly o: McuPropletOptions) {
    super();
    this.log = o.log ?? (() => {});
    const budget = o.ramBudgetBytes ?? MCU_DEFAULTS.ramBudgetBytes;
    this.rx = o.rxBufferBytes ?? MCU_DEFAULTS.rxBufferBytes;
    this.chunkSize = o.chunkSize ?? MCU_DEFAULTS.chunkSize;
    this.window = o.window ?? MCU_DEFAULTS.window;
    this.outputLimit = o.outputLimitBytes ?? MCU_DEFAULTS.outputLimitBytes;
    if (this.chunkSize < 64 || this.chunkSize > 64 * 1024) throw new RangeError(`chunk size must be 64..65536 bytes, got ${this.chunkSize}`);
    if (this.window < 1 || this.window > 64) throw new RangeError(`window must be 1..64 chunks, got ${this.window}`);
    const need = chunkBytesFor(this.chunkSize);
    if (need > this.rx) throw new RangeError(`a ${this.chunkSize}-byte chunk takes up to ${need} bytes on the wire: the receive buffer of ${this.rx} bytes cannot hold it`);
    this.profile = {
      id: o.id,
      name: o.name ?? o.id,
      deviceType: o.deviceType ?? MCU_DEFAULTS.deviceType,
      capabilities: o.capabilities ?? ['wasm', 'wasi'],
      labels: o.labels ?? {},
      wasmRuntime: o.wasmRuntime ?? 'wamr-profile',
      ramBudgetBytes: budget,
      maxTasks: o.maxTasks ?? MCU_DEFAULTS.maxTasks,
      maxModuleBytes: o.maxModuleBytes ?? Math.max(PAGE_BYTES, budget - PAGE_BYTES),
      rxBufferBytes: this.rx,
    };
    this.core = new PropletCore<Start>({
      propletId: o.id,
      maxTasks: this.profile.maxTasks,
      maxModuleBytes: this.profile.maxModuleBytes,
      ramBudgetBytes: budget,
      outboxSize: OUTBOX,
      retainedResults: RETAINED,
    });
    this.backoff = new Backoff(o.backoff, o.random);
    this.ownRunner = o.runner === undefined;
    this.flashBytes = o.flashCacheBytes ?? MCU_DEFAULTS.flashCacheBytes;
    this.flash = new LRUCache({ maxSize: Math.max(1, this.flashBytes), sizeCalculation: (b) => Math.max(1, b.length) });
    this.runner = o.runner ?? new WasmRunner({ poolSize: 1, maxConcurrent: this.profile.maxTasks, outputLimitBytes: this.outputLimit });
  }

  get id(): string {
    return this.o.id;
  }
  get state(): McuState {
    return this.st;
  }
  get online(): boolean {
    return this.st === 'online';
  }
  /** Module bytes and linear memory of every task held, against the RAM budget. */
  get budget(): RamBudget {
    return this.core.budget!;
  }
  /** Tasks accepted and not finished (loading or running). */
  get runningTasks(): number {
    return this.core.size;
  }
  /** Failed connection attempts since the last good connection. */
  get reconnectAttempts(): number {
    return this.backoff.attempts;
  }

  /** Starts connecting; resolves at the first good connection (it keeps retrying with backoff until then). */
  start(): Promise<void> {
    if (!this.firstOnline) {
      this.timings.startedAt = performance.now();
      this.firstOnline = new Promise<void>((r) => (this.resolveFirst = r));
      this.connect();
      this.heartbeat = setInterval(() => this.sendAlive(), this.o.heartbeatMs ?? MCU_DEFAULTS.heartbeatMs);
      this.heartbeat.unref();
    }
    return this.firstOnline;
  }

  /** Disconnects cleanly (DISCONNECT: no will), stops every task, frees the budget. */
  async close(): Promise<void> {
    if (this.st === 'closed') return;
    this.setState('closed');
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    for (const { d } of this.downloads.values()) d.abort('device shutting down');
    for (const run of this.runs.values()) if (run.running) this.runner.cancel(run.runnerKey);
    this.runs.clear();
    const c = this.client;
    this.client = undefined;
    if (c?.connected) await Promise.race([c.endAsync().catch(() => {}), new Promise((r) => setTimeout(r, 2000).unref())]);
    c?.end(true);
    if (this.ownRunner) await this.runner.close();
  }

  /**
   * Drops the connection as a crash or a lost network would: no DISCONNECT, so
   * the broker publishes the will. `offlineMs` keeps it down at least that long
   * (a network outage); the backoff applies as well.
   */
  dropConnection(opts: { offlineMs?: number } = {}): void {
    if (opts.offlineMs) this.offlineUntil = Date.now() + opts.offlineMs;
    const stream = (this.client as unknown as { stream?: { destroy(): void } } | undefined)?.stream;
    stream?.destroy();
  }

  // --- connection ---------------------------------------------------------------

  private setState(s: McuState): void {
    if (this.st === s) return;
    this.st = s;
    this.emit('state', s);
  }

  private connect(): void {
    if (this.st === 'closed') return;
    this.setState('connecting');
    const { id, scope } = this.o;
    const client = mqtt.connect(this.o.url, {
      protocolVersion: 4,
      clientId: `proplet-${id}`,
      username: id,
      password: this.o.secret,
      clean: true,
      keepalive: this.o.keepaliveSec ?? MCU_DEFAULTS.keepaliveSec,
      connectTimeout: this.o.connectTimeoutMs ?? MCU_DEFAULTS.connectTimeoutMs,
      reconnectPeriod: 0, // our own loop below, with jittered backoff
      resubscribe: false,
      will: { topic: this.topicOf('proplet.alive'), payload: encode('proplet.alive', willMsg(id), 'cbor'), qos: publishQos('proplet.alive', 'will'), retain: false },
    });
    this.client = client;
    let up = false;
    let down = false;
    const onDown = (why: string) => {
      if (down) return;
      down = true;
      client.end(true);
      if (this.client !== client) return;
      this.client = undefined;
      if (this.st === 'closed') return;
      if (up) {
        this.dispatch({ t: 'disconnected' });
        this.stats.disconnects++;
        if (Date.now() - this.onlineAt >= this.backoff.o.stableMs) this.backoff.reset();
      }
      const delay = Math.max(this.backoff.next(), this.offlineUntil - Date.now());
      this.log(up ? 'warn' : 'info', 'connection down, reconnecting', { id, reason: why, in_ms: delay, attempt: this.backoff.attempts });
      this.setState('backoff');
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
      this.reconnectTimer.unref();
    };
    client.on('connect', () => {
      (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
      // Subscribe before registering: a start sent in answer to the registration must not be missed.
      client.subscribe(propletSubscriptions(scope, id), { qos: 1 }, (err, granted) => {
        if (down || this.client !== client) return;
        const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic) ?? [];
        if (err || refused.length > 0) {
          this.log('error', 'subscribe refused', { id, error: err?.message, refused });
          return onDown('subscribe refused');
        }
        up = true;
        this.onlineAt = Date.now();
        this.stats.connects++;
        this.setState('online');
        // deferred results, then the registration (the core's order)
        this.dispatch({ t: 'connected' });
        for (const { d } of this.downloads.values()) {
          this.stats.downloadsResumed++;
          d.resume();
        }
        this.timings.firstOnlineAt ??= performance.now();
        this.resolveFirst?.();
      });
    });
    client.on('message', (t, payload) => {
      if (this.client === client) this.onMessage(t, payload);
    });
    client.on('error', (e) => {
      const code = (e as { code?: unknown }).code;
      this.log(typeof code === 'number' && code > 0 ? 'warn' : 'debug', typeof code === 'number' && code > 0 ? 'connection refused by the broker' : 'mqtt error', { id, error: e.message });
      if (!client.connected) onDown(e.message);
    });
    client.on('close', () => onDown('connection closed'));
  }

  private publish<K extends 'proplet.create' | 'proplet.alive' | 'registry.proplet'>(kind: K, msg: MessageByKind[K], qos = publishQos(kind)): boolean {
    return this.publishBytes(this.topicOf(kind), encode(kind, msg, 'cbor'), qos);
  }

  /** Where this device publishes a kind: the shared topic, or its own with `perPropletTopics`. */
  private topicOf(kind: 'proplet.create' | 'proplet.alive' | 'proplet.results' | 'registry.proplet'): string {
    return topic(this.o.scope, kind, this.o.perPropletTopics ? this.o.id : undefined);
  }

  private publishBytes(t: string, payload: Uint8Array, qos: 0 | 1 = 1): boolean {
    const c = this.client;
    if (!c || !c.connected || this.st !== 'online') return false;
    c.publish(t, payload as Buffer, { qos }, () => {});
    // MQTT 3.1.1 §3.1.2.10: a client pings only after a keepalive period in which it sent nothing, as
    // device stacks (esp-mqtt) count it; mqtt.js 5 postpones its ping on acknowledgements received
    // only, so a device heartbeating at QoS 0 also pinged every period.
    c.reschedulePing(true);
    return true;
  }

  private publishUpdate(u: FlUpdate): void {
    if (!this.publishBytes(flUpdateTopic(this.o.scope, u.round_id, this.o.id), encode('fl.update', u, 'cbor'))) {
      this.log('warn', 'fl update dropped: offline', { id: this.o.id, round_id: u.round_id });
    }
  }

  private register(): void {
    // no heartbeat with it (see the node proplet's register)
    this.publish('proplet.create', registerMsg(this.profile, this.core.running()));
  }

  private sendAlive(occasion: AliveOccasion = 'periodic'): void {
    if (this.publish('proplet.alive', aliveMsg(this.o.id, this.core.running(), this.budget.usedBytes), publishQos('proplet.alive', occasion))) this.stats.heartbeats++;
  }

  // --- the core's commands ------------------------------------------------------------

  private dispatch(e: Event<Start>): Command<Start>[] {
    const cmds = this.core.handle(e);
    for (const c of cmds) this.execute(c);
    return cmds;
  }

  private execute(c: Command<Start>): void {
    switch (c.t) {
      case 'load': {
        const msg = c.payload;
        const run: Run = { msg, runnerKey: `${this.o.id}/${c.key}`, running: false };
        if (msg.file) this.stats.startsInline++;
        else if (this.flash.has(msg.digest!)) this.stats.startsCached++;
        else {
          this.stats.startsChunked++;
          run.digest = msg.digest;
        }
        this.runs.set(c.key, run);
        void this.load(c.key, run);
        return;
      }
      case 'abort-load': {
        // forget it; its download goes on only for other tasks waiting on it
        const run = this.runs.get(c.key);
        this.runs.delete(c.key);
        if (run?.digest) this.detach(run.digest, c.key);
        if (run?.modelDigest) this.detach(run.modelDigest, modelKey(c.key));
        return;
      }
      case 'run':
        void this.run(c.key, c.linearBytes);
        return;
      case 'kill': {
        const run = this.runs.get(c.key);
        if (run?.running) this.runner.cancel(run.runnerKey); // the run ends with 'stopped' and reports it
        return;
      }
      case 'publish':
        if (!c.flushed && !c.again) this.counted(c.result);
        if (!this.publishBytes(this.topicOf('proplet.results'), encodeResult(c.result, 'cbor'))) {
          // the connection went before the core heard of it: the core keeps a final result for the next connect
          for (const d of this.core.handle({ t: 'unsent', result: c.result })) {
            if (d.t === 'deferred') this.stats.resultsDeferred++;
            else this.execute(d);
          }
        }
        return;
      case 'deferred':
        this.stats.resultsDeferred++;
        this.counted(c.result);
        return;
      case 'announce':
        this.register();
        return;
      case 'alive':
        this.sendAlive('after_task');
        return;
      case 'ignored':
        this.log('debug', 'message ignored', { id: this.o.id, task_id: c.id, reason: c.reason, ...(c.detail ? { detail: c.detail } : {}) });
        return;
      case 'dropped-result':
        this.log('warn', 'result dropped: outbox full while offline', { id: this.o.id, task_id: c.result.task_id });
        return;
    }
  }

  /** A result as it leaves the core: stats, the 'result' event and the log. */
  private counted(r: Result): void {
    const status = r.status ?? 'completed';
    if (status === 'refused') {
      this.stats.refused++;
      this.log('info', 'task refused', { id: this.o.id, task_id: r.task_id, error: r.error });
    } else if (status !== 'running') {
      this.stats[status]++;
      this.log('info', 'task finished', { id: this.o.id, task_id: r.task_id, attempt: r.attempt, status, duration_ms: r.duration_ms, ...(r.error ? { error: r.error } : {}) });
    }
    this.emit('result', r);
  }

  // --- inbound ----------------------------------------------------------------------

  private onMessage(t: string, payload: Buffer): void {
    const kind = parseTopic(t)?.kind;
    if (payload.length > this.rx) return this.dropOversized(t, kind, payload);
    const now = Date.now();
    try {
      if (kind === 'manager.start') this.onStart(decode('manager.start', payload).msg, now);
      else if (kind === 'manager.stop') {
        const msg = decode('manager.stop', payload).msg;
        this.dispatch({ t: 'stop', id: msg.id, attempt: msg.attempt, proplet_id: msg.proplet_id, now });
      } else if (kind === 'registry.server') this.onChunk(decode('registry.server', payload).msg);
    } catch (e) {
      this.stats.malformed++;
      const reason = e instanceof ProtocolError ? e.message : (e as Error).stack;
      this.log('warn', 'message dropped', { id: this.o.id, topic: t, reason });
      // a start that fits the buffer but does not decode is refused with the reason, not lost
      const ref = kind === 'manager.start' ? readStartRef(payload) : undefined;
      if (ref) this.dispatch({ t: 'start', start: { ...ref, unfit: `cannot take this start: ${reason}` }, now });
    }
  }

  private dropOversized(t: string, kind: string | undefined, payload: Buffer): void {
    this.stats.rxDropped++;
    let refusedTask: string | undefined;
    if (kind === 'manager.start') {
      // Only the part that fits the buffer is looked at, as a firmware would.
      const ref = readStartRef(payload, this.rx);
      if (ref) {
        const cmds = this.dispatch({ t: 'start', start: { ...ref, unfit: `start message of ${payload.length} bytes exceeds this device's receive buffer of ${this.rx} bytes` }, now: Date.now() });
        if (cmds.some((c) => (c.t === 'publish' || c.t === 'deferred') && c.result.status === 'refused')) refusedTask = ref.id;
      }
    }
    this.log('warn', 'payload dropped: larger than the receive buffer', { id: this.o.id, topic: t, bytes: payload.length, limit: this.rx, ...(refusedTask ? { refused_task: refusedTask } : {}) });
    this.emit('dropped', { topic: t, bytes: payload.length, limit: this.rx, ...(refusedTask ? { refusedTask } : {}) });
  }

  private onStart(msg: Start, now: number): void {
    if (msg.proplet_id !== undefined && msg.proplet_id !== this.o.id) return;
    if (this.core.phase(msg.id) === undefined) {
      this.stats.startsReceived++;
      this.emit('start', msg);
    }
    if (msg.file && msg.file.length === 0) delete msg.file;
    const moduleBytes = msg.file?.length ?? msg.module_size ?? 0;
    // Linear memory: what the task asks for, else the module's initial memory (known now only for an inline module).
    const linearBytes = msg.memory_bytes ?? (msg.file ? initialMemory(msg.file) : 0);
    const unfit = !msg.file && !msg.digest ? 'no module: this device takes a module inline or by digest from the registry, and does not fetch image_url' : undefined;
    this.dispatch({ t: 'start', start: { id: msg.id, attempt: msg.attempt, proplet_id: msg.proplet_id, moduleBytes, linearBytes, fl: msg.env?.ROUND_ID !== undefined, payload: msg, ...(unfit ? { unfit } : {}) }, now });
  }

  // --- loading and running ------------------------------------------------------------

  private async load(key: string, run: Run): Promise<void> {
    const msg = run.msg;
    const current = () => this.runs.get(key) === run && this.core.holds(key);
    try {
      let bytes: Uint8Array;
      if (msg.file) {
        bytes = msg.file;
        if (msg.digest && sha256Digest(bytes) !== msg.digest) {
          this.stats.digestMismatches++;
          throw new DownloadError(`module digest mismatch: the inline module hashes to ${sha256Digest(bytes)}, the start names ${msg.digest}; discarded without running`);
        }
      } else {
        bytes = this.flash.get(msg.digest!) ?? (await this.fetchModule(key, msg.digest!, msg.module_size, 'module', msg.memory_bytes ?? 0));
        // verified by digest already; a firmware writes it to a flash partition
        if (this.flashBytes > 0 && bytes.length <= this.flashBytes) this.flash.set(msg.digest!, bytes);
      }
      if (!current()) return; // stopped meanwhile
      if (isFlTask(msg.env)) {
        // the round's model comes by digest through the registry, like a module (it counts against the budget)
        const digest = msg.env!.MODEL_DIGEST ?? /sha256:[0-9a-f]{64}$/.exec(msg.env!.MODEL_URI ?? '')?.[0];
        if (!digest) throw new DownloadError('an FL task needs MODEL_DIGEST (or a MODEL_URI ending in sha256:<hex>): this device fetches models from the registry by digest');
        run.modelDigest = digest;
        run.round = flInput(await this.fetchModule(key, digest, undefined, 'model', 0));
        if (!current()) return;
      }
      run.bytes = bytes;
      // the sizes are known now: the core holds exactly them, or refuses
      this.dispatch({ t: 'loaded', key, moduleBytes: bytes.length, linearBytes: msg.memory_bytes ?? initialMemory(bytes) });
    } catch (e) {
      if (!current()) return;
      if (e instanceof DownloadError && e.refuse) {
        this.runs.delete(key);
        this.dispatch({ t: 'refuse', key, reason: e.message });
        return;
      }
      if (e instanceof DownloadError && /digest mismatch/.test(e.message) && msg.file === undefined) this.stats.digestMismatches++;
      const error = e instanceof DownloadError || e instanceof FlContractError ? e.message : `internal error: ${(e as Error).message}`;
      await this.finish(key, run, { ok: false, exitCode: null, stdout: '', stderr: '', error, durationMs: 0 });
    }
  }

  private async run(key: string, linear: number): Promise<void> {
    const run = this.runs.get(key);
    if (!run?.bytes) return;
    const msg = run.msg;
    run.running = true;
    const res = await this.runner.run({
      taskId: run.runnerKey,
      module: run.bytes,
      ...taskRun(msg, MCU_DEFAULTS.defaultTimeoutMs),
      // the linear memory is capped at what the budget holds for it (0 would mean "no limit")
      maxMemoryBytes: linear > 0 ? linear : PAGE_BYTES,
      ...(run.round ? { stdin: run.round.stdin, files: run.round.files } : {}),
    });
    await this.finish(key, run, res);
  }

  private async finish(key: string, run: Run, res: RunResult): Promise<void> {
    if (this.runs.get(key) === run) this.runs.delete(key);
    if (this.st === 'closed' || !this.core.holds(key)) return;
    const msg = run.msg;
    let flResults: Record<string, unknown> | undefined;
    if (isFlTask(msg.env) && res.error !== 'stopped') {
      const roundId = msg.env!.ROUND_ID!;
      // every part fits the device's packet buffer
      const o = flOutcome({ proplet_id: this.o.id, round_id: roundId, task_id: msg.id }, res, run.round, this.rx, 'cbor');
      flResults = o.results;
      if (o.error) res = { ...res, ok: false, error: o.error };
      const delay = this.o.updateDelayMs?.(roundId) ?? 0;
      if (delay > 0) await new Promise((r) => setTimeout(r, delay));
      for (const u of o.updates) this.publishUpdate(u);
    }
    // the device's own output cap, within the protocol's
    const clipped = { ...res, stdout: clipText(res.stdout, this.outputLimit), stderr: clipText(res.stderr, this.outputLimit) };
    this.dispatch({ t: 'finished', key, outcome: outcomeOf(clipped, flResults) });
  }

  // --- chunks -------------------------------------------------------------------------

  /** Downloads `digest` in chunks for the task held as `key` (one download per digest, shared by every task waiting on it). */
  private fetchModule(key: string, digest: string, size: number | undefined, part: 'module' | 'model', linear: number): Promise<Uint8Array> {
    let entry = this.downloads.get(digest);
    if (!entry) {
      const d = new ModuleDownload({
        digest,
        size,
        chunkSize: this.chunkSize,
        window: this.window,
        maxBytes: this.profile.maxModuleBytes,
        timeoutMs: this.o.downloadTimeoutMs ?? MCU_DEFAULTS.downloadTimeoutMs,
        stallMs: this.o.stallMs ?? MCU_DEFAULTS.stallMs,
        faults: this.o.faults,
        onSize: (known) => {
          // a start without module_size (or a model): the core reserves for it now that its size is known
          if (size !== undefined) return undefined;
          let refusal: string | undefined;
          for (const c of this.core.handle({ t: 'sized', key, part, bytes: known, linearBytes: linear })) {
            // this download fails with the reason below; only forget the task here
            if (c.t === 'abort-load') this.runs.delete(c.key);
            else this.execute(c);
            if ((c.t === 'publish' || c.t === 'deferred') && c.result.status === 'refused') refusal = c.result.error;
          }
          return refusal;
        },
        request: (ask: Ask) => this.publish('registry.proplet', chunkRequestMsg(this.o.id, digest, this.chunkSize, ask)),
      });
      entry = { d, waiters: new Set() };
      this.downloads.set(digest, entry);
      const e = entry;
      void d.promise.then(
        () => this.downloadDone(digest, e),
        () => {
          this.stats.downloadsFailed++;
          this.downloadDone(digest, e);
        },
      );
    }
    entry.waiters.add(part === 'module' ? key : modelKey(key));
    return entry.d.promise;
  }

  private downloadDone(digest: string, e: { d: ModuleDownload }): void {
    const s = e.d.stats;
    this.stats.chunksReceived += s.chunks;
    this.stats.chunksCorrupt += s.corrupt;
    this.stats.chunkDuplicates += s.duplicates;
    this.stats.chunkRequests += s.requests;
    this.stats.chunkRerequests += s.rerequests;
    for (const [size, n] of s.chunkBytes) this.stats.chunkBytes.set(size, (this.stats.chunkBytes.get(size) ?? 0) + n);
    if (this.downloads.get(digest) === e) this.downloads.delete(digest);
  }

  private detach(digest: string, taskId: string): void {
    const e = this.downloads.get(digest);
    if (!e) return;
    e.waiters.delete(taskId);
    if (e.waiters.size === 0) e.d.abort('stopped');
  }

  private onChunk(c: Chunk): void {
    const e = this.downloads.get(c.digest);
    if (!e) return; // late or duplicate chunk of a finished download
    e.d.onChunk(c);
  }

  /** Live download progress, for tests and the simulator. */
  downloadProgress(digest: string): { received: number; total: number } | undefined {
    return this.downloads.get(digest)?.d.progress;
  }
}

/** The module's initial linear memory in bytes (memory 0, defined or imported); 0 when it has none or does not parse. */
export function initialMemory(bytes: Uint8Array): number {
  try {
    const info = parseModule(bytes);
    const imported = info.imports.find((i) => i.kind === 'memory')?.memory;
    const mem = imported ?? info.memories[0];
    return mem ? mem.min * PAGE_BYTES : 0;
  } catch {
    return 0; // the runner reports why it cannot load it
  }
}

const chunkBytesCache = new Map<number, number>();
function chunkBytesFor(size: number): number {
  let n = chunkBytesCache.get(size);
  if (n === undefined) chunkBytesCache.set(size, (n = chunkMessageBytes(size)));
  return n;
}

/** The download waiter key of an FL task's model. */
function modelKey(key: string): string {
  return `${key}#model`;
}
