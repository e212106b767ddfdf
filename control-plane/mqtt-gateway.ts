// The control plane's one MQTT connection: the same code whether the broker is
// the embedded one or an external Mosquitto/EMQX. Inbound messages are
// validated here, at the edge; a bad one is dropped with a logged reason and a
// metric, and never throws past this file.

import mqtt, { type MqttClient } from 'mqtt';
import { decode, encode, ProtocolError, type Encoding, type Result, type Start, type Stop } from '../protocol/index.ts';
import { managerFilters, parseTopic, topic, type Scope, type TopicKind } from '../topics/index.ts';
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

export interface GatewayOptions {
  url: string;
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
  /**
   * Replicas: results and metrics are consumed once across the replicas of
   * this group (MQTT shared subscriptions, `$share/GROUP/…`); registrations and
   * heartbeats still reach every replica, each keeping its own liveness view.
   */
  shareGroup?: string;
}

/** What proplets send: the sender is the topic's proplet id, which the broker authenticated. */
const FROM_PROPLET = new Set<TopicKind>(['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'registry.proplet', 'fl.update']);

/** Attacker-chosen strings (topics, ids) reach the log at most this long. */
const clip = (s: string): string => (s.length > 200 ? `${s.slice(0, 200)}…` : s);

export interface Handlers {
  registry: Registry;
  tasks: TaskService;
  onMetrics?: (propletId: string, m: Record<string, unknown>) => void;
  chunks?: ChunkServer;
  fl?: FlCoordinator;
}

export class MqttGateway implements Dispatcher {
  private filters(): string[] {
    const s = this.o.scope;
    const g = this.o.shareGroup;
    if (!g) return managerFilters(s);
    const all = `${topic(s, 'proplet.create').slice(0, -'/create'.length)}/#`;
    return managerFilters(s).flatMap((f) =>
      f === all
        ? [`${topic(s, 'proplet.create')}/#`, `${topic(s, 'proplet.alive')}/#`, `$share/${g}/${topic(s, 'proplet.results')}/#`, `$share/${g}/${topic(s, 'proplet.metrics')}/#`]
        : [f],
    );
  }

  private client?: MqttClient;
  private handlers?: Handlers;

  constructor(private o: GatewayOptions) {}

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  async connect(handlers: Handlers): Promise<void> {
    this.handlers = handlers;
    const client = mqtt.connect(this.o.url, {
      protocolVersion: 4,
      username: this.o.username,
      password: this.o.password,
      // Stable per scope, so the persistent session below is found again after a restart.
      clientId: this.o.clientId ?? `propeller-manager-${this.o.scope.domain}-${this.o.scope.channel}`,
      // A persistent session lets the broker keep results for us across a control-plane restart.
      clean: false,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
    });
    this.client = client;
    client.on('message', (t, payload) => this.handle(t, payload));
    client.on('error', (e) => this.o.log('warn', 'mqtt error', { error: e.message }));
    client.on('reconnect', () => this.o.log('info', 'mqtt reconnecting'));
    client.on('connect', (ack) => {
      // mqtt.js leaves Nagle on: small control messages would wait for delayed ACKs (~40 ms).
      (client.stream as { setNoDelay?: (on: boolean) => void }).setNoDelay?.(true);
      this.o.log('info', 'mqtt connected', { url: this.o.url, session_present: ack.sessionPresent });
      client.subscribe(this.filters(), { qos: 1 }, (err, granted) => {
        if (err) return this.o.log('error', 'subscribe failed', { error: err.message });
        const refused = granted?.filter((g) => g.qos === 128).map((g) => g.topic);
        if (refused?.length) this.o.log('error', 'broker refused subscriptions: check the manager account ACL', { refused });
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

  async close(): Promise<void> {
    // not connected (broker gone or refusing us): nothing to flush, and a graceful end would wait for a connection forever
    await this.client?.endAsync(!this.client.connected);
  }

  start(p: Proplet, msg: Start): void {
    const direct = p.addressing === 'direct';
    let payload = encode('manager.start', msg, replyEncoding(p));
    const max = p.capacity.max_packet_bytes;
    if (max !== undefined && payload.length > max && msg.file && msg.digest) {
      // too big for the device's receive buffer: it fetches the module in registry chunks instead
      const { file: _inline, ...rest } = msg;
      payload = encode('manager.start', rest, replyEncoding(p));
    }
    this.publish(topic(this.o.scope, 'manager.start', direct ? p.id : undefined), payload);
    this.o.metrics.tasksDispatched.inc({ addressing: direct ? 'direct' : 'shared' });
  }

  stop(p: Proplet, msg: Stop): void {
    this.publish(topic(this.o.scope, 'manager.stop', p.addressing === 'direct' ? p.id : undefined), encode('manager.stop', msg, replyEncoding(p)));
  }

  /** A registry chunk to one proplet: its own registry topic, or the shared one for Propeller's proplets. */
  sendChunk(p: Proplet, payload: Uint8Array): void {
    this.publish(topic(this.o.scope, 'registry.server', p.addressing === 'direct' ? p.id : undefined), payload);
  }

  /** Raw publish for other control-plane services (registry chunks, FL). */
  publish(t: string, payload: Uint8Array): void {
    tap(this, 'wire', 'out', t, payload);
    this.client?.publish(t, Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength), { qos: 1 }, (err) => {
      if (err) this.o.log('warn', 'publish failed', { topic: t, error: err.message });
    });
  }

  /** Exposed for tests: handle one inbound message as if it came from the broker. */
  handle(t: string, payload: Buffer): void {
    tap(this, 'wire', 'in', t, payload);
    const parsed = parseTopic(t);
    const kind = parsed?.kind ?? 'unknown';
    try {
      if (!parsed || parsed.domain !== this.o.scope.domain || parsed.channel !== this.o.scope.channel) {
        return this.reject(kind, 'topic', `topic outside the tree: ${clip(t)}`);
      }
      this.o.metrics.messagesReceived.inc({ kind });
      if (FROM_PROPLET.has(parsed.kind) && parsed.propletId === undefined && !this.o.trustPayloadSender) {
        // The embedded broker stamps every proplet publish with its authenticated id; one without came from elsewhere.
        return this.reject(kind, 'no_topic_id', `${kind} on a topic without a proplet id: ${clip(t)}`);
      }
      const h = this.handlers!;
      // decode() fills an omitted sender from the topic and refuses a payload naming another (id_mismatch)
      const ctx = parsed.propletId !== undefined ? { propletId: parsed.propletId } : {};
      switch (parsed.kind) {
        case 'proplet.create': {
          const { msg, encoding } = decode('proplet.create', payload, ctx);
          const p = h.registry.register(msg, encoding);
          this.o.log('info', 'proplet registered', { proplet_id: p.id, device_type: p.device_type, addressing: p.addressing, encoding: p.encoding });
          return;
        }
        case 'proplet.alive': {
          const { msg } = decode('proplet.alive', payload, ctx);
          if (!h.registry.alive(msg)) this.reject(kind, 'unknown_proplet', `heartbeat from unregistered proplet ${clip(msg.proplet_id)}`);
          return;
        }
        case 'proplet.results': {
          const { msg } = decode('proplet.results', payload, ctx);
          if (!h.registry.get(msg.proplet_id)) return this.reject(kind, 'unknown_proplet', `result from unregistered proplet ${clip(msg.proplet_id)}`);
          const ignored = h.tasks.onResult(msg as Result);
          if (ignored) this.o.log('info', 'result ignored', { reason: ignored, task_id: msg.task_id, proplet_id: msg.proplet_id, attempt: msg.attempt });
          return;
        }
        case 'registry.proplet': {
          const { msg } = decode('registry.proplet', payload, ctx);
          const p = h.registry.get(msg.proplet_id);
          if (!p) return this.reject(kind, 'unknown_proplet', `chunk request from unregistered proplet ${clip(msg.proplet_id)}`);
          if (!h.chunks) return this.reject(kind, 'unsupported', 'no module registry');
          h.chunks.onRequest(p, msg);
          return;
        }
        case 'proplet.metrics': {
          const { msg } = decode('proplet.metrics', payload, ctx);
          if (!h.registry.get(msg.proplet_id)) return this.reject(kind, 'unknown_proplet', `metrics from unregistered proplet ${clip(msg.proplet_id)}`);
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
        default:
          return this.reject(kind, 'unsupported', `no handler for ${kind}`);
      }
    } catch (e) {
      if (e instanceof ProtocolError) return this.reject(kind, e.reason, e.message);
      this.o.log('error', 'handler failed', { kind, topic: t, error: (e as Error).stack });
      this.o.metrics.messagesRejected.inc({ kind, reason: 'internal' });
    }
  }

  private reject(kind: string, reason: string, detail: string): void {
    this.o.metrics.messagesRejected.inc({ kind, reason });
    this.o.log('warn', 'message dropped', { kind, reason, detail });
  }
}
