// Propeller's own proplets as they behave on the wire, written from their
// source (absmach/propeller: proplet/src/{mqtt,service,types}.rs and
// embed-proplet/src/{mqtt_client,wasm_handler}.c), as mqtt.js clients. Topic
// strings are written by hand, as those programs do. Nothing here imports the
// control plane's wire code: these are outside peers.

import mqtt, { type MqttClient } from 'mqtt';
import { functionExport } from '../../control-plane/wasm-exports.ts';

type Json = Record<string, unknown>;

interface Common {
  url: string;
  id: string;
  secret: string;
  domain?: string;
  channel?: string;
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** What both device shapes share: the connection, the topic base, their timers, and how they end. */
abstract class SimulatedDevice {
  client!: MqttClient;
  readonly base: string;
  protected timers: NodeJS.Timeout[] = [];

  constructor(o: Common) {
    this.base = `m/${o.domain ?? 'propeller'}/c/${o.channel ?? 'control'}`;
  }

  /** A crash or a power cut: the socket goes without DISCONNECT (the broker publishes a will if the device set one). */
  kill(): void {
    for (const t of this.timers) clearInterval(t);
    this.client.stream.destroy();
    this.client.end(true);
  }

  async close(): Promise<void> {
    for (const t of this.timers) clearInterval(t);
    await this.client.endAsync(true);
  }
}

/** The Rust proplet (crate 0.5): MQTT 3.1.1, clean session, QoS 2 everywhere, no will, string inputs. */
export class RustProplet extends SimulatedDevice {
  readonly starts: Json[] = [];
  /** Starts serde would not deserialize (a number among the inputs, a missing name): dropped whole, nothing sent back. */
  readonly dropped: { payload: string; why: string }[] = [];
  readonly stops: Json[] = [];
  readonly running = new Set<string>();
  readonly registryRequests: string[] = [];
  /** FL updates it posted to MANAGER_COORDINATOR_URL/update, and whether the coordinator took them. */
  readonly coordinatorPosts: { url: string; accepted: boolean }[] = [];
  private chunks = new Map<string, { total: number; parts: Map<number, Buffer> }>();

  constructor(private o: Common & { livelinessMs?: number; metricsMs?: number; train?: (start: Json) => { output: string; error?: string } }) {
    super(o);
  }

  async start(): Promise<void> {
    this.client = await mqtt.connectAsync(this.o.url, {
      protocolVersion: 4,
      clean: true,
      clientId: this.o.id,
      username: this.o.id,
      password: this.o.secret,
      keepalive: 30,
      reconnectPeriod: 0,
    });
    this.client.on('message', (t, buf) => void this.onMessage(t, buf));
    // discovery first, then the subscriptions (service.rs: run())
    await this.pub('control/proplet/create', {
      proplet_id: this.o.id,
      namespace: 'default',
      metadata: { environment: 'binary', os: 'linux', cpu_arch: 'x86_64', total_memory_bytes: 8e9, proplet_version: '0.5.0', wasm_runtime: 'wasmtime-internal' },
    });
    for (const path of ['control/manager/start', 'control/manager/stop', 'control/manager/invoke', 'registry/server']) {
      await this.client.subscribeAsync(`${this.base}/${path}`, { qos: 2 });
    }
    const alive = () => void this.pub('control/proplet/alive', { proplet_id: this.o.id, status: 'alive', namespace: 'default' }).catch(() => {});
    alive(); // tokio interval ticks at once
    this.timers.push(setInterval(alive, this.o.livelinessMs ?? 10_000));
    const metrics = () => {
      const now = Date.now();
      void this.pub('control/proplet/metrics', {
        proplet_id: this.o.id,
        namespace: 'default',
        timestamp: { secs_since_epoch: Math.floor(now / 1000), nanos_since_epoch: (now % 1000) * 1e6 },
        cpu_metrics: { user_seconds: 1.5, system_seconds: 0.5, percent: 12.5 },
        memory_metrics: { rss_bytes: 31_457_280, heap_alloc_bytes: 0, heap_sys_bytes: 0, heap_inuse_bytes: 0 },
      }).catch(() => {});
    };
    metrics();
    this.timers.push(setInterval(metrics, this.o.metricsMs ?? 10_000));
  }

  pub(path: string, msg: unknown): Promise<unknown> {
    return this.client.publishAsync(`${this.base}/${path}`, JSON.stringify(msg), { qos: 2 });
  }

  /** What its process monitor publishes for a running task (service.rs: MetricsMessage). */
  taskMetrics(taskId: string, cpuPercent: number, memoryBytes: number): Promise<unknown> {
    const now = Date.now();
    return this.pub('control/proplet/task_metrics', {
      task_id: taskId,
      proplet_id: this.o.id,
      metrics: { cpu_percent: cpuPercent, memory_bytes: memoryBytes, memory_percent: 0.1, disk_read_bytes: 0, disk_write_bytes: 0, uptime_seconds: 1, thread_count: 4, file_descriptor_count: 9 },
      aggregated: { avg_cpu_usage: cpuPercent, max_cpu_usage: cpuPercent, avg_memory_usage: memoryBytes, max_memory_usage: memoryBytes, total_disk_read: 0, total_disk_write: 0, sample_count: 1 },
      timestamp: { secs_since_epoch: Math.floor(now / 1000), nanos_since_epoch: (now % 1000) * 1e6 },
    });
  }

  private async onMessage(t: string, buf: Buffer): Promise<void> {
    const path = t.slice(this.base.length + 1);
    let m: Json;
    try {
      m = JSON.parse(buf.toString());
    } catch {
      return;
    }
    if (path === 'control/manager/start') return this.onStart(m, buf);
    if (path === 'control/manager/stop') {
      if (typeof m.id !== 'string' || !m.id) return;
      this.stops.push(m);
      this.running.delete(m.id);
      return;
    }
    if (path === 'registry/server') {
      const { app_name, chunk_idx, total_chunks, data } = m as { app_name: string; chunk_idx: number; total_chunks: number; data: string };
      let st = this.chunks.get(app_name);
      if (!st) this.chunks.set(app_name, (st = { total: total_chunks, parts: new Map() }));
      if (st.total !== total_chunks) return;
      if (!st.parts.has(chunk_idx)) st.parts.set(chunk_idx, Buffer.from(data, 'base64'));
    }
  }

  private async onStart(m: Json, raw: Buffer): Promise<void> {
    // serde: inputs Vec<String>, cli_args Vec<String>, id and name Strings; one wrong type drops the message
    const strings = (v: unknown) => v === undefined || v === null || (Array.isArray(v) && v.every((x) => typeof x === 'string'));
    if (typeof m.id !== 'string' || typeof m.name !== 'string' || !strings(m.inputs) || !strings(m.cli_args)) {
      this.dropped.push({ payload: raw.toString(), why: 'does not deserialize into StartRequest' });
      return;
    }
    if (!m.id || !m.name || (!m.file && !m.image_url)) return void this.dropped.push({ payload: raw.toString(), why: 'validate()' });
    if (!m.broadcast && typeof m.proplet_id === 'string' && m.proplet_id !== this.o.id) return;
    this.starts.push(m);
    const id = m.id;
    if (this.running.has(id)) return; // duplicate start ignored
    this.running.add(id);
    let module: Buffer;
    if (m.file) module = Buffer.from(m.file as string, 'base64');
    else {
      const name = m.image_url as string;
      this.registryRequests.push(name);
      await this.pub('registry/proplet', { app_name: name });
      const until = Date.now() + 60_000;
      for (;;) {
        const st = this.chunks.get(name);
        if (st && st.parts.size === st.total) {
          module = Buffer.concat([...st.parts.entries()].sort((a, b) => a[0] - b[0]).map((e) => e[1]));
          this.chunks.delete(name);
          break;
        }
        if (Date.now() > until) return this.result(id, '', 'Timeout waiting for binary chunks');
        await wait(20);
      }
    }
    const env = (m.env ?? {}) as Record<string, string>;
    if (env.ROUND_ID && this.o.train) {
      const { output, error } = this.o.train(m);
      this.running.delete(id);
      // service.rs: without MANAGER_COORDINATOR_URL an FL task reports nothing at all
      const coordinator = env.MANAGER_COORDINATOR_URL;
      if (!coordinator) return void this.dropped.push({ payload: raw.toString(), why: 'MANAGER_COORDINATOR_URL not set' });
      // the output as JSON to <url>/update; refused or unreachable: the same JSON on the root topic
      let updateJson: unknown;
      try {
        updateJson = JSON.parse(output);
      } catch {
        updateJson = undefined;
      }
      if (updateJson !== undefined) {
        const posted = await fetch(`${coordinator}/update`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(updateJson) }).then((r) => r.ok, () => false);
        this.coordinatorPosts.push({ url: `${coordinator}/update`, accepted: posted });
        if (!posted) await this.client.publishAsync(`fl/rounds/${env.ROUND_ID}/updates/${this.o.id}`, JSON.stringify(updateJson), { qos: 2 }).catch(() => {});
      }
      // then FLResultMessage {task_id, results: envelope, error} on results, with no proplet_id
      const envelope = {
        task_id: id,
        round_id: env.ROUND_ID,
        proplet_id: this.o.id,
        num_samples: Number.parseInt(env.FL_NUM_SAMPLES ?? '', 10) || 1,
        update_b64: Buffer.from(output).toString('base64'),
        format: env.FL_FORMAT ?? 'f32-delta',
        metrics: {},
      };
      void this.pub('control/proplet/results', { task_id: id, results: envelope, error: error ?? null }).catch(() => {});
      return;
    }
    if (m.daemon) {
      // start_app returns at once for a daemon: an empty result, and it keeps running until stopped
      return this.result(id, '', null, false);
    }
    try {
      const instance = await WebAssembly.instantiate(new WebAssembly.Module(new Uint8Array(module)));
      const name = m.name as string;
      const fn = (instance.exports[name] ?? instance.exports.main) as (...a: unknown[]) => unknown;
      const sig = functionExport(module, instance.exports[name] ? name : 'main');
      if (typeof sig === 'string') throw new Error(sig);
      const inputs = (m.inputs as string[] | undefined) ?? [];
      if (inputs.length !== sig.params.length) throw new Error(`function '${name}' expects ${sig.params.length} params, got ${inputs.length}`);
      const args = inputs.map((s, i) => {
        const ty = sig.params[i];
        if (ty === 'i32' || ty === 'i64') {
          if (!/^[+-]?\d+$/.test(s)) throw new Error(`Failed to parse '${s}' as ${ty}`);
          return ty === 'i64' ? BigInt(s) : Number(s);
        }
        const f = Number(s);
        if (s.trim() === '' || Number.isNaN(f)) throw new Error(`Failed to parse '${s}' as ${ty}`);
        return f;
      });
      const out = fn(...args);
      // Rust's to_string() of the first return value: 7, 2.5, 3 (not 3.0)
      this.result(id, out === undefined ? '' : String(out), null);
    } catch (e) {
      this.result(id, '', (e as Error).message);
    }
  }

  private result(task_id: string, results: string, error: string | null, done = true): void {
    if (done) this.running.delete(task_id);
    void this.pub('control/proplet/results', { task_id, proplet_id: this.o.id, results, error }).catch(() => {});
  }
}

/**
 * The Zephyr embed-proplet (C on WAMR): clean session false, QoS 1 it never
 * acknowledges, a will, reads at most 1023 bytes of a message and then stalls
 * for good, runs every start on its channel, calls only `main` with i32
 * arguments, results without proplet_id, never reconnects.
 */
export class EmbedProplet extends SimulatedDevice {
  readonly starts: Json[] = [];
  readonly stops: Json[] = [];
  readonly droppedStops: string[] = [];
  /** Messages longer than its buffer: after the first, it reads nothing more. */
  oversized = 0;
  received = 0;
  /** The QoS of every message it received: above 0, each one holds a slot of the broker's in-flight window for good. */
  readonly qos: number[] = [];
  /** When set, starts are taken but not run yet (a long computation). */
  paused = false;
  readonly results: Json[] = [];
  private current?: { id: string; inputs: number[] };

  /** registry/server messages it read: each one a whole module. */
  readonly modules: Json[] = [];
  /** Modules it asked for by name on registry/proplet. */
  readonly registryRequests: string[] = [];
  /** FL updates it published on fl/rounds/<round>/updates/<id>. */
  readonly flUpdates: string[] = [];

  constructor(private o: Common & { firstAliveMs?: number; livelinessMs?: number; metricsMs?: number; train?: (start: Json) => { output: string; error?: string } }) {
    super(o);
  }

  get stalled(): boolean {
    return this.oversized > 0;
  }

  async start(): Promise<void> {
    this.client = await mqtt.connectAsync(this.o.url, {
      protocolVersion: 4,
      clean: false,
      clientId: this.o.id,
      username: this.o.id,
      password: this.o.secret,
      keepalive: 30,
      reconnectPeriod: 0,
      will: { topic: `${this.base}/control/proplet/alive`, payload: Buffer.from(`{"status":"offline","proplet_id":"${this.o.id}","namespace":"embedded"}`), qos: 1, retain: false },
    });
    // it never calls mqtt_publish_qos1_ack: swallow mqtt.js's automatic PUBACK
    const send = (this.client as unknown as { _sendPacket: (p: { cmd: string }, cb?: () => void) => void })._sendPacket.bind(this.client);
    (this.client as unknown as { _sendPacket: unknown })._sendPacket = (p: { cmd: string }, cb?: () => void) => (p.cmd === 'puback' ? cb?.() : send(p, cb));
    this.client.on('message', (t, buf, packet) => {
      this.qos.push(packet.qos);
      this.onMessage(t, buf);
    });
    // subscribe first (QoS 1), then discovery
    await this.client.subscribeAsync(
      ['control/manager/start', 'control/manager/stop', 'registry/server'].map((p) => `${this.base}/${p}`),
      { qos: 1 },
    );
    this.pub('control/proplet/create', {
      proplet_id: this.o.id,
      namespace: 'embedded',
      metadata: { description: '', tags: [], location: '', ip: '', environment: 'embedded', os: 'zephyr', hostname: '', cpu_arch: 'xtensa', total_memory_bytes: 524288, proplet_version: '0.1', wasm_runtime: 'wamr' },
    });
    const alive = () => this.pub('control/proplet/alive', { status: 'alive', proplet_id: this.o.id, namespace: 'embedded' });
    this.timers.push(
      setTimeout(() => {
        alive();
        this.timers.push(setInterval(alive, this.o.livelinessMs ?? 10_000));
      }, this.o.firstAliveMs ?? 12_000),
    );
    this.timers.push(
      setInterval(() => {
        this.pub('control/proplet/metrics', {
          proplet_id: this.o.id,
          namespace: 'embedded',
          timestamp: 123_456, // k_uptime_get(): ms since boot
          cpu_metrics: { user_seconds: 0, system_seconds: 0, percent: 3.5 },
          memory_metrics: { rss_bytes: 0, heap_alloc_bytes: 40960, heap_sys_bytes: 65536, heap_inuse_bytes: 40960, heap_free_bytes: 24576, heap_max_alloc_bytes: 41000 },
        });
      }, this.o.metricsMs ?? 30_000),
    );
  }

  private pub(path: string, msg: unknown): void {
    this.client.publish(`${this.base}/${path}`, JSON.stringify(msg), { qos: 1 });
  }

  private onMessage(t: string, buf: Buffer): void {
    if (this.stalled) return;
    this.received++;
    if (buf.length > 1023) {
      this.oversized++;
      return;
    }
    let m: Json;
    try {
      m = JSON.parse(buf.toString());
    } catch {
      return;
    }
    const path = t.slice(this.base.length + 1);
    if (path === 'control/manager/start') return void this.onStart(m);
    if (path === 'control/manager/stop') {
      if (typeof m.id !== 'string' || typeof m.name !== 'string' || typeof m.state !== 'string') return void this.droppedStops.push(buf.toString());
      this.stops.push(m);
      return;
    }
    if (path === 'registry/server') this.modules.push(m);
    if (path === 'registry/server' && typeof m.data === 'string' && this.current) {
      // each message is taken as the whole module
      void this.run(this.current.id, Buffer.from(m.data, 'base64'), this.current.inputs);
    }
  }

  private async onStart(m: Json): Promise<void> {
    if (typeof m.id !== 'string' || typeof m.name !== 'string') return;
    this.starts.push(m); // whatever proplet_id says
    const inputs = Array.isArray(m.inputs) ? m.inputs.slice(0, 16).map((x) => (typeof x === 'number' ? Number(BigInt.asUintN(64, BigInt(Math.trunc(x)))) : 0)) : [];
    this.current = { id: m.id, inputs };
    if (this.paused) return;
    const env = (m.env ?? {}) as Record<string, string>;
    if (env.ROUND_ID && this.o.train) return this.flUpdate(env, this.o.train(m));
    if (typeof m.file === 'string' && m.file) return this.run(m.id, Buffer.from(m.file.slice(0, 1023), 'base64'), inputs);
    if (typeof m.image_url === 'string' && m.image_url) {
      this.registryRequests.push(m.image_url);
      this.pub('registry/proplet', { app_name: m.image_url });
    }
  }

  private async run(taskId: string, module: Buffer, inputs: number[]): Promise<void> {
    try {
      const instance = await WebAssembly.instantiate(new WebAssembly.Module(new Uint8Array(module)));
      const main = instance.exports.main as ((...a: number[]) => number) | undefined;
      if (!main) return this.result({ task_id: taskId, results: '', error: 'Function main not found' });
      const out = main(...inputs.map((x) => x | 0));
      this.result({ task_id: taskId, results: out === undefined ? '' : `${out | 0}` });
    } catch (e) {
      this.result({ task_id: taskId, results: '', error: `WASM execution failed: ${(e as Error).message}` });
    }
  }

  /**
   * publish_results_with_error() for an FML task (ROUND_ID): the output parsed
   * as JSON with round_id, proplet_id and base_model_uri added when missing, or
   * an empty update (with the error, if any), on the root topic
   * fl/rounds/<round>/updates/<id>; no result on control/proplet/results.
   */
  private flUpdate(env: Record<string, string>, r: { output: string; error?: string }): void {
    const head = { round_id: env.ROUND_ID, proplet_id: this.o.id, base_model_uri: env.MODEL_URI ?? '' };
    let payload: string;
    if (r.error) payload = JSON.stringify({ ...head, num_samples: 0, metrics: {}, update: {}, error: r.error });
    else {
      let out: unknown;
      try {
        out = JSON.parse(r.output);
      } catch {
        out = undefined;
      }
      if (out && typeof out === 'object' && !Array.isArray(out)) payload = JSON.stringify({ ...out, ...Object.fromEntries(Object.entries(head).filter(([k]) => !(k in out))) });
      else if (out !== undefined) payload = JSON.stringify(out); // cJSON adds nothing to a non-object
      else payload = JSON.stringify({ ...head, num_samples: 0, metrics: {}, update: {} });
    }
    this.flUpdates.push(payload);
    this.client.publish(`fl/rounds/${env.ROUND_ID}/updates/${this.o.id}`, payload, { qos: 1 });
  }

  private result(r: Json): void {
    this.results.push(r);
    this.pub('control/proplet/results', r); // no proplet_id
  }
}
