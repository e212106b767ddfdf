// The control plane's one MQTT connection: the same code whether the broker is
// the embedded one or an external Mosquitto/EMQX. Inbound messages are
// validated here, at the edge; a bad one is dropped with a logged reason and a
// metric, and never throws past this file.

import mqtt, { type MqttClient } from 'mqtt';
import { claimedFields, decode, encode, parsePropellerJson, ProtocolError, type Encoding, type Result, type Start, type Stop } from '../protocol/index.ts';
import { managerFilters, parseRootFlTopic, parseTopic, ROOT_FL_FILTER, topic, type Scope, type TopicKind } from '../topics/index.ts';
import { isPropellerProplet, kindOfRegistration, scopeOf, wireOf, type PropellerCompat } from './propeller-compat.ts';
import { fromPropellerUpdate, isRustFlEnvelope } from './propeller-fl.ts';
import { PropletUsage } from './propeller-metrics.ts';
import { fromPropellerMetrics, resultStatus, shapeStart, shapeStop, type Qos, type ShapeOptions } from './propeller-shapes.ts';
import type { ChunkServer } from './chunk-server.ts';
import { tap } from './events.ts';
import type { Logger } from './log.ts';
import type { ControlPlaneMetrics } from './metrics.ts';
import type { Proplet } from './model.ts';
import type { Registry } from './registry.ts';
import type { Dispatcher, TaskService } from './tasks.ts';
import type { FlCoordinator } from './fl/coordinator.ts';

/** The shared topics are Propeller's and its proplets parse JSON only: CBOR goes out on per-proplet topics alone. */
function replyEncoding(p: Proplet): Encoding {
  return p.addressing === 'direct' ? p.encoding : 'json';
}

/**
 * A broker in this very process (the embedded one), reached without a socket:
 * nothing is encoded, parsed or acknowledged between the two. Whoever started
 * both hands it in (cli/serve.ts); this code still does not know which broker
 * it is, and `url` still names it for everyone else.
 */
export interface LocalBroker {
  /** Delivers each message matching `filter`, in the broker's order, until the returned function is called. */
  subscribe(filter: string, deliver: (topic: string, payload: Buffer) => void): Promise<() => Promise<void>>;
  /** Publishes as the control plane's account would, under the same ACL. */
  publish(topic: string, payload: Buffer, qos: Qos, done: (err?: Error) => void): void;
}

export interface GatewayOptions {
  url: string;
  /** The broker in this process: used instead of a connection to `url`. */
  local?: LocalBroker;
  username?: string;
  password?: string;
  clientId?: string;
  scope: Scope;
  log: Logger;
  metrics: ControlPlaneMetrics;
  /**
   * Accept proplet messages on the shared topics (no proplet id level) and take
   * their sender from the payload, as Propeller does. Only for an external
   * broker that cannot put the authenticated id into the topic, as the embedded
   * one does: the payload's id is then trusted as far as that broker's ACL
   * checks it. Default false: such messages are refused (`no_topic_id`).
   */
  trustPayloadSender?: boolean;
  /** Limits of Propeller's proplets the control plane shapes its messages to. */
  shape?: ShapeOptions;
  /**
   * Replicas: what one replica must handle alone (results, metrics, chunk
   * requests) is consumed once across the group (MQTT shared subscriptions,
   * `$share/GROUP/…`); registrations and heartbeats still reach every replica,
   * each keeping its own liveness view.
   */
  shareGroup?: string;
}

/** What proplets send: the sender is the topic's proplet id, which the broker authenticated. */
const FROM_PROPLET = new Set<TopicKind>(['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'proplet.invoke_results', 'proplet.task_metrics', 'registry.proplet', 'fl.update']);

/** A result is never refused for its size below this, whatever memory its proplet declares. */
const MIN_RESULT_BOUND = 4096;

/** Attacker-chosen strings (topics, ids) reach the log at most this long. */
const clip = (s: string): string => (s.length > 200 ? `${s.slice(0, 200)}…` : s);

export interface Handlers {
  registry: Registry;
  tasks: TaskService;
  onMetrics?: (propletId: string, m: Record<string, unknown>) => void;
  chunks?: ChunkServer;
  fl?: FlCoordinator;
  /** Propeller's proplets: modules asked for by name. */
  compat?: PropellerCompat;
  /** A proplet shows it works on a start (asks for its module's chunks): its acknowledgement deadline starts over. */
  onProgress?: (propletId: string) => void;
}

export class MqttGateway implements Dispatcher {
  /** Both layouts, and every channel of the domain: embed-proplets each have their own (propeller-compat.ts). */
  private filters(): string[] {
    const all = managerFilters(this.o.scope, true);
    const g = this.o.shareGroup;
    if (!g) return all;
    const CONTROL = '/control/proplet/#';
    return all.flatMap((f) => {
      if (f.endsWith(CONTROL)) {
        const p = f.slice(0, -1);
        return [`${p}create/#`, `${p}alive/#`, ...['results', 'metrics', 'invoke_results', 'task_metrics'].map((k) => `$share/${g}/${p}${k}/#`)];
      }
      return f.includes('/registry/proplet') ? [`$share/${g}/${f}`] : [f];
    });
  }

  private client?: MqttClient;
  /** With a local broker: its subscriptions, to end on close. */
  private localSubs?: (() => Promise<void>)[];
  /** A local broker delivers synchronously, even inside our own publish: what arrives while a message is handled waits for it. */
  private inbox: [string, Buffer][] = [];
  private handling = false;
  /** Since when the broker connection is down, and the last reason heard. */
  private lost?: { since: number; error: string };
  /** Called when the connection comes back after it was lost (not on the first connect). */
  onReconnect?: () => void;
  private handlers?: Handlers;
  private usage?: PropletUsage;

  constructor(private o: GatewayOptions) {}

  get connected(): boolean {
    return this.localSubs !== undefined || (this.client?.connected ?? false);
  }

  /** Set while the broker is unreachable: since when, and why. */
  outage(): { since: number; error: string } | undefined {
    if (this.connected) return undefined;
    return this.lost ?? { since: Date.now(), error: 'not connected yet' };
  }

  async connect(handlers: Handlers): Promise<void> {
    this.handlers = handlers;
    this.usage ??= new PropletUsage(this.o.metrics.registry, () => handlers.registry.values(), (id) => handlers.tasks.get(id));
    if (this.o.local) return this.connectLocal(this.o.local);
    const client = mqtt.connect(this.o.url, {
      protocolVersion: 4,
      username: this.o.username,
      password: this.o.password,
      // Stable per scope, so the persistent session below is found again after a restart.
      clientId: this.o.clientId ?? `propeller-manager-${this.o.scope.domain}-${this.o.scope.channel}`,
      // A persistent session lets the broker keep results for us across a control-plane restart.
      // Not for replicas: a dead replica's session would go on taking its share of the results.
      clean: this.o.shareGroup !== undefined,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
    });
    this.client = client;
    client.on('message', (t, payload) => this.handle(t, payload));
    client.on('error', (e) => {
      if (this.lost) this.lost.error = e.message;
      this.o.log('warn', 'mqtt error', { error: e.message });
    });
    client.on('close', () => {
      this.lost ??= { since: Date.now(), error: 'connection to the broker lost' };
    });
    client.on('reconnect', () => this.o.log('info', 'mqtt reconnecting'));
    client.on('connect', (ack) => {
      // mqtt.js leaves Nagle on: small control messages would wait for delayed ACKs (~40 ms).
      (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
      this.o.log('info', 'mqtt connected', { url: this.o.url, session_present: ack.sessionPresent });
      const was = this.lost;
      this.lost = undefined;
      if (was) this.onReconnect?.();
      client.subscribe(this.filters(), { qos: 1 }, (err, granted) => {
        if (err) return this.o.log('error', 'subscribe failed', { error: err.message });
        const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic);
        if (refused?.length) this.o.log('error', 'broker refused subscriptions: check the manager account ACL', { refused });
      });
      // Propeller's proplets publish FL updates at the broker's root (topics' ROOT_FL_FILTER)
      client.subscribe(ROOT_FL_FILTER, { qos: 1 }, (err, granted) => {
        if (err || granted?.[0]?.qos === 128) this.o.log('warn', "broker refused the root FL filter: Propeller proplets' FL updates are not heard", { filter: ROOT_FL_FILTER });
      });
    });
    await new Promise<void>((resolve, reject) => {
      const onErr = (e: Error) => {
        client.end(true);
        reject(new Error(`cannot connect to MQTT broker ${this.o.url}: ${e.message}`));
      };
      client.once('connect', () => {
        client.off('error', onErr);
        resolve();
      });
      client.once('error', onErr);
    });
  }

  private async connectLocal(local: LocalBroker): Promise<void> {
    const deliver = (t: string, payload: Buffer): void => {
      if (this.handling) {
        this.inbox.push([t, payload]);
        return;
      }
      this.handling = true;
      try {
        this.handle(t, payload);
        for (let next = this.inbox.shift(); next; next = this.inbox.shift()) this.handle(next[0], next[1]);
      } finally {
        this.handling = false;
      }
    };
    this.localSubs = await Promise.all([...this.filters(), ROOT_FL_FILTER].map((f) => local.subscribe(f, deliver)));
    this.o.log('info', 'broker in this process: linked without a socket', { url: this.o.url });
  }

  async close(): Promise<void> {
    const subs = this.localSubs;
    this.localSubs = undefined;
    if (subs) await Promise.all(subs.map((end) => end()));
    // not connected (broker gone or refusing us): nothing to flush, and a graceful end would wait for a connection forever
    await this.client?.endAsync(!this.client.connected);
  }

  start(p: Proplet, msg: Start): void {
    const w = wireOf(p, this.o.scope);
    if (isPropellerProplet(w.kind)) {
      const shaped = shapeStart(w.kind, msg, msg.file, this.o.shape)!;
      if (!shaped.ok) {
        // placement checks this first (PropellerCompat.admit); a start the device would drop unseen is refused instead
        this.o.log('error', 'start cannot be shaped for the proplet', { proplet_id: p.id, task_id: msg.id, reason: shaped.reason });
        const refusal: Result = { proplet_id: p.id, task_id: msg.id, attempt: msg.attempt, status: 'refused', error: shaped.reason };
        setImmediate(() => this.handlers?.tasks.onResult(refusal));
        return;
      }
      this.publish(topic(scopeOf(w, this.o.scope), 'manager.start', undefined, w.layout), shaped.bytes, shaped.qos);
      this.o.metrics.tasksDispatched.inc({ addressing: 'shared' });
      return;
    }
    const direct = p.addressing === 'direct';
    let payload = encode('manager.start', msg, replyEncoding(p));
    const max = p.capacity.max_packet_bytes;
    if (max !== undefined && payload.length > max && msg.file && msg.digest) {
      // too big for the device's receive buffer: it fetches the module in registry chunks instead
      const { file: _inline, ...rest } = msg;
      payload = encode('manager.start', rest, replyEncoding(p));
    }
    const w0 = wireOf(p, this.o.scope);
    this.publish(topic(scopeOf(w0, this.o.scope), 'manager.start', direct ? p.id : undefined, w0.layout), payload);
    this.o.metrics.tasksDispatched.inc({ addressing: direct ? 'direct' : 'shared' });
  }

  stop(p: Proplet, msg: Stop): void {
    const w = wireOf(p, this.o.scope);
    const t = topic(scopeOf(w, this.o.scope), 'manager.stop', p.addressing === 'direct' ? p.id : undefined, w.layout);
    const shaped = shapeStop(w.kind, msg.id, this.handlers?.tasks.get(msg.id)?.name ?? '');
    if (shaped) return this.publish(t, shaped.bytes, shaped.qos);
    this.publish(t, encode('manager.stop', msg, replyEncoding(p)));
  }

  /** A registry chunk to one proplet: its own registry topic, or the shared one for Propeller's proplets. */
  sendChunk(p: Proplet, payload: Uint8Array, qos: Qos = 1): void {
    const w = wireOf(p, this.o.scope);
    this.publish(topic(scopeOf(w, this.o.scope), 'registry.server', p.addressing === 'direct' ? p.id : undefined, w.layout), payload, qos);
  }

  /** Raw publish for other control-plane services (registry chunks, FL). */
  publish(t: string, payload: Uint8Array, qos: Qos = 1): void {
    tap(this, 'wire', 'out', t, payload);
    const done = (err?: Error): void => {
      if (err) this.o.log('warn', 'publish failed', { topic: t, error: err.message });
    };
    const buf = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
    if (this.localSubs) this.o.local!.publish(t, buf, qos, done);
    else this.client?.publish(t, buf, { qos }, done);
  }

  /** Exposed for tests: handle one inbound message as if it came from the broker. */
  handle(t: string, payload: Buffer): void {
    tap(this, 'wire', 'in', t, payload);
    const root = parseRootFlTopic(t);
    if (root) return this.rootFlUpdate(root.roundId, root.propletId, payload);
    const parsed = parseTopic(t);
    const kind = parsed?.kind ?? 'unknown';
    try {
      if (!parsed || parsed.domain !== this.o.scope.domain) return this.reject(kind, 'topic', `topic outside the tree: ${clip(t)}`);
      // a device channel is named by its proplet's id: the channel says who sent it
      const device = parsed.channel !== this.o.scope.channel;
      if (device && parsed.propletId !== undefined && parsed.propletId !== parsed.channel) {
        return this.reject(kind, 'topic_mismatch', `proplet ${parsed.propletId} on the device channel of ${parsed.channel}`);
      }
      this.o.metrics.messagesReceived.inc({ kind });
      // a device channel names its proplet too (the ACL lets only that proplet publish there)
      if (FROM_PROPLET.has(parsed.kind) && parsed.propletId === undefined && !device && !this.o.trustPayloadSender) {
        // The embedded broker stamps every proplet publish with its authenticated id; one without came from elsewhere.
        return this.reject(kind, 'no_topic_id', `${kind} on a topic without a proplet id: ${clip(t)}`);
      }
      const h = this.handlers!;
      const sender = parsed.propletId ?? (device ? parsed.channel : undefined);
      const ctx = sender !== undefined ? { propletId: sender } : {};
      switch (parsed.kind) {
        case 'proplet.create': {
          const { msg, encoding } = decode('proplet.create', payload, ctx);
          const wire = { kind: kindOfRegistration(payload, msg.addressing), layout: parsed.layout, channel: parsed.channel };
          if (isPropellerProplet(wire.kind)) {
            const md = (parsePropellerJson(payload) as { metadata?: { wasm_runtime?: unknown } }).metadata;
            msg.device_type ??= wire.kind === 'embed' ? 'embed-proplet' : 'propeller-proplet';
            if (typeof md?.wasm_runtime === 'string') msg.wasm_runtime ??= md.wasm_runtime.slice(0, 64);
          }
          const p = h.registry.register(msg, encoding, wire);
          this.o.log('info', 'proplet registered', { proplet_id: p.id, device_type: p.device_type, addressing: p.addressing, encoding: p.encoding, ...wire });
          return;
        }
        case 'proplet.alive': {
          const { msg } = decode('proplet.alive', payload, ctx);
          if (!h.registry.alive(msg)) this.reject(kind, 'unknown_proplet', `heartbeat from unregistered proplet ${clip(msg.proplet_id)}`);
          return;
        }
        case 'proplet.results': {
          // A device cannot hold a result larger than its memory: its profile bounds what it may send, before any parsing.
          const mem = parsed.propletId !== undefined ? h.registry.get(parsed.propletId)?.capacity.memory_bytes : undefined;
          if (mem !== undefined && payload.length > Math.max(mem, MIN_RESULT_BOUND)) {
            return this.refuseResult(parsed.propletId!, payload, 'too_large', `result of ${payload.length} bytes from a proplet with ${mem} bytes of memory`);
          }
          const { msg } = decode('proplet.results', payload, ctx);
          const p = h.registry.get(msg.proplet_id);
          if (!p) return this.reject(kind, 'unknown_proplet', `result from unregistered proplet ${clip(msg.proplet_id)}`);
          // Propeller's proplets give no status: a string result, an error, or "" at once for a daemon
          const propeller = msg.status === undefined && isPropellerProplet(wireOf(p, this.o.scope).kind);
          if (propeller) msg.status = resultStatus(msg, h.tasks.get(msg.task_id)?.daemon ?? false);
          const round = propeller ? h.tasks.get(msg.task_id)?.env?.ROUND_ID : undefined;
          const ignored = h.tasks.onResult(msg as Result);
          if (ignored) this.o.log('info', 'result ignored', { reason: ignored, task_id: msg.task_id, proplet_id: msg.proplet_id, attempt: msg.attempt });
          // the Rust proplet's FL update rides in the result of a ROUND_ID task: the result first, so that a round the update closes finds its task done
          if (round && isRustFlEnvelope(msg.results)) this.propellerFlUpdate(msg.results, round, p.id, msg.task_id, msg.error);
          return;
        }
        case 'registry.proplet': {
          const { msg } = decode('registry.proplet', payload, ctx);
          const p = h.registry.get(msg.proplet_id);
          if (!p) return this.reject(kind, 'unknown_proplet', `chunk request from unregistered proplet ${clip(msg.proplet_id)}`);
          h.onProgress?.(p.id);
          const appName = payload[0] === 0x7b ? (parsePropellerJson(payload) as { app_name?: unknown }).app_name : undefined;
          if (typeof appName === 'string' && !msg.digest && !msg.name) {
            if (!h.compat) return this.reject(kind, 'unsupported', 'no module registry');
            void h.compat.serveByName(p, appName);
            return;
          }
          if (!h.chunks) return this.reject(kind, 'unsupported', 'no module registry');
          h.chunks.onRequest(p, msg);
          return;
        }
        case 'proplet.metrics': {
          const { msg } = decode('proplet.metrics', payload, ctx);
          const p = h.registry.get(msg.proplet_id);
          if (!p) return this.reject(kind, 'unknown_proplet', `metrics from unregistered proplet ${clip(msg.proplet_id)}`);
          if (isPropellerProplet(wireOf(p, this.o.scope).kind)) {
            const m = fromPropellerMetrics(parsePropellerJson(payload) as Record<string, unknown>);
            msg.cpu_percent ??= m.cpu_percent;
            msg.memory_used ??= m.memory_used;
            if (msg.memory_used !== undefined) p.memory_used = msg.memory_used;
          }
          this.usage?.report(p.id, msg.cpu_percent);
          h.onMetrics?.(msg.proplet_id, msg as unknown as Record<string, unknown>);
          return;
        }
        case 'fl.update': {
          const { msg } = decode('fl.update', payload, ctx);
          if (msg.round_id !== parsed.roundId) return this.reject(kind, 'topic_mismatch', `round_id ${msg.round_id} on the topic of round ${parsed.roundId}`);
          if (!h.registry.get(msg.proplet_id)) return this.reject(kind, 'unknown_proplet', `update from unregistered proplet ${clip(msg.proplet_id)}`);
          if (!h.fl) return this.reject(kind, 'unsupported', 'no FL coordinator');
          h.fl.onUpdate(msg);
          return;
        }
        case 'proplet.invoke_results':
        case 'proplet.task_metrics': {
          // Propeller's proplets send these unasked (we send no invoke); counted above, kept out of task state
          const raw = parsePropellerJson(payload);
          if (raw instanceof ProtocolError) throw raw;
          const id = typeof raw.proplet_id === 'string' ? raw.proplet_id : sender;
          if (id === undefined || !h.registry.get(id)) return this.reject(kind, 'unknown_proplet', `${kind} from unregistered proplet ${String(id)}`);
          if (parsed.kind === 'proplet.task_metrics') {
            const task = typeof raw.task_id === 'string' ? h.tasks.get(raw.task_id) : undefined;
            if (!task || task.proplet_id !== id) return this.reject(kind, 'unknown_task', `task metrics from ${clip(id)} for a task it does not run: ${clip(String(raw.task_id))}`);
            this.usage?.task(task.id, id, raw.metrics);
          }
          return;
        }
        default:
          return this.reject(kind, 'unsupported', `no handler for ${kind}`);
      }
    } catch (e) {
      if (e instanceof ProtocolError) {
        const sender = parsed?.propletId ?? (parsed && parsed.channel !== this.o.scope.channel ? parsed.channel : undefined);
        if (kind === 'proplet.results' && sender !== undefined) return this.refuseResult(sender, payload, e.reason, e.message);
        return this.reject(kind, e.reason, e.message);
      }
      this.o.log('error', 'handler failed', { kind, topic: t, error: (e as Error).stack });
      this.o.metrics.messagesRejected.inc({ kind, reason: 'internal' });
    }
  }

  /** fl/rounds/<round>/updates/<proplet> at the broker's root (Propeller's proplets): the broker checked the proplet id level. */
  private rootFlUpdate(round: string, sender: string, payload: Buffer): void {
    const h = this.handlers!;
    this.o.metrics.messagesReceived.inc({ kind: 'fl.update' });
    try {
      if (!h.registry.get(sender)) return this.reject('fl.update', 'unknown_proplet', `update from unregistered proplet ${clip(sender)}`);
      if (!h.fl) return this.reject('fl.update', 'unsupported', 'no FL coordinator');
      const taskId = h.fl.taskOf(round, sender);
      if (!taskId) return this.reject('fl.update', 'not_participant', `${clip(sender)} has no task in round ${clip(round)}`);
      let raw: unknown;
      try {
        raw = JSON.parse(payload.toString('utf8'));
      } catch (e) {
        raw = new ProtocolError('malformed', `not JSON: ${(e as Error).message}`);
      }
      if (raw instanceof ProtocolError) {
        this.reject('fl.update', raw.reason, raw.message);
        h.fl.refuseUpdate({ round_id: round, proplet_id: sender, task_id: taskId }, raw.reason, raw.message);
        return;
      }
      this.propellerFlUpdate(raw, round, sender, taskId);
    } catch (e) {
      this.o.log('error', 'handler failed', { kind: 'fl.update', round, error: (e as Error).stack });
      this.o.metrics.messagesRejected.inc({ kind: 'fl.update', reason: 'internal' });
    }
  }

  /** A Propeller FL envelope to the coordinator: as our update, or refused with the reason the round then shows. */
  private propellerFlUpdate(raw: unknown, round: string, sender: string, taskId: string, error?: unknown): void {
    const fl = this.handlers?.fl;
    if (!fl) return this.reject('fl.update', 'unsupported', 'no FL coordinator');
    const tr = fromPropellerUpdate(raw, { round, sender, taskId }, error);
    if (tr.ok) {
      fl.onUpdate(tr.update);
      return;
    }
    this.reject('fl.update', tr.reason, `${clip(sender)} in round ${clip(round)}: ${tr.message}`);
    fl.refuseUpdate({ round_id: round, proplet_id: sender, task_id: taskId }, tr.reason, tr.message);
  }

  /**
   * A result dropped from a proplet the topic names: when its task id can still be read, that
   * task fails at once with the reason (never silently re-run into a misleading failure).
   */
  private refuseResult(propletId: string, payload: Buffer, reason: string, detail: string): void {
    this.reject('proplet.results', reason, detail);
    const about = claimedFields('proplet.results', payload, ['task_id', 'attempt']);
    if (about instanceof ProtocolError || typeof about.task_id !== 'string') return;
    const taskId = about.task_id;
    const ignored = this.handlers!.tasks.onResultRefused(propletId, taskId, about.attempt as number | undefined, `${reason}: ${detail}`);
    if (ignored) this.o.log('info', 'refused result ignored', { reason: ignored, task_id: taskId, proplet_id: propletId });
    else this.o.log('warn', 'task failed: its result was refused', { task_id: taskId, proplet_id: propletId, reason });
  }

  reject(kind: string, reason: string, detail: string): void {
    this.o.metrics.messagesRejected.inc({ kind, reason });
    this.o.log('warn', 'message dropped', { kind, reason, detail });
  }
}
