// Aedes' Client, built leaner. Aedes 1.2 gives every connection, besides the
// Client object: a connect timer (a Timeout and its closure), a keepalive
// timer after CONNECT, an end-of-stream watcher on the socket (seven closures,
// four more listeners, their arrays), three bound listeners, an event emitter
// on the client for two events of its own, and closures for delivery that a
// client which never subscribes never calls. With 10,000 idle devices those
// were some 1.5 KiB of heap per connection and a good part of a CONNECT's CPU.
//
// `slimClients(aedes)` replaces `aedes.handle` with a constructor that keeps
// Aedes' Client prototype, field for field, and differs in these only:
// - no timers: the broker sweeps its connections for the connect timeout and
//   the MQTT keepalive instead (broker.ts, `sweep`);
// - no end-of-stream watcher: the broker's own 'close' listener on the
//   stream closes the client (errors still do, as in Aedes, and 'end' on a
//   WebSocket stream; a socket closes after its 'end');
// - shared listener functions instead of bound ones, and the client's and its
//   parser's own events ('error', 'connected', 'packet') handled by an `emit`
//   that calls what Aedes registered for them;
// - the delivery functions made on a client's first subscription, the QoS 2
//   in-flight set on its first QoS 2 publish, the list of writes waiting for
//   'drain' when one first waits, `subscriptions` and `duplicates` when first
//   read (fast objects with an empty null prototype: inherited names still
//   read back as absent, GHSA-52qw-whmv-87c5); fields a live connection
//   never changes are read from the prototype.
// - a clean MQTT 3.1/3.1.1 CONNECT is answered in one pass (fast-connect.ts).
// The code it copies (delivery, enqueue/dequeue) is Aedes 1.2.0's. It is
// applied only when Aedes' client, connect and dispatch sources in
// node_modules are the ones it was written against (their SHA-256);
// otherwise Aedes' own handle stays. Aedes' internals are imported by literal
// relative paths, so that the bundle (dist/) patches its own Aedes too.
// test/broker-slim-client.test.ts fails when it is not applied, and
// test/broker-bundle.test.ts when the bundled broker does not apply it.

import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect, takesConnect } from './fast-connect.ts';
import { fastPublishParse, startIdle, type MqttParser } from './fast-parse.ts';

/** The SHA-256 of lib/client.js, lib/handlers/connect.js and lib/handlers/index.js of Aedes 1.2.0, in that order. */
const WRITTEN_AGAINST = 'ea0239b185251876a9e4a4236fed384ee66a020c278b71fd3832179580a32869';

/** A connection whose CONNECT is still awaited (Aedes keeps its Timeout in `_connectTimer`; `clearTimeout` ignores this). */
export const CONNECT_PENDING: object = Object.freeze({});

type Callback = (err?: Error | null) => void;
type Packet = { qos: number; topic: string; retain?: boolean; clientId?: string; nl?: boolean; brokerId?: string; brokerCounter: number; writeCallback?: Callback };

interface Parser {
  client: SlimClient;
  _queue: unknown[] | null;
  emit(type: string, arg: unknown): boolean;
  on(type: string, fn: (...a: unknown[]) => void): unknown;
}

interface Persistence {
  outgoingUpdate(client: SlimClient, packet: Packet): Promise<unknown>;
  outgoingClearMessageId(client: SlimClient, packet: Packet): Promise<unknown>;
}

interface Broker {
  queueLimit: number;
  persistence: Persistence;
  authorizeForward(client: SlimClient, packet: Packet): Packet | null | undefined;
  handle(conn: Duplex, req?: unknown): unknown;
  opts: { concurrency: number };
}

/** The fields of Aedes' Client this module reads or sets. */
interface SlimClient {
  id: string | null;
  closed: boolean;
  clean: boolean;
  connackSent: boolean;
  broker: Broker;
  conn: Duplex & { client?: SlimClient };
  subscriptions: Record<string, { qos?: number }>;
  duplicates: Record<string, number>;
  _parser: Parser;
  _parsingBatch: number;
  _paused: boolean;
  _nextBatch: Callback;
  _deliver0: ((p: Packet, cb: Callback) => void) | null;
  _deliverQoS: ((p: Packet, cb: Callback) => void) | null;
  deliver0(p: Packet, cb: Callback): void;
  _onError(err?: Error | null): void;
  emit(type: string, ...args: unknown[]): boolean;
}

export interface AedesModules {
  /** The class of the Aedes these modules belong to. */
  Aedes: new (...a: never[]) => object;
  Client: { prototype: object };
  handle: (client: SlimClient, packet: unknown, done: Callback) => void;
  write: (client: SlimClient, packet: unknown, done: Callback) => void;
  QoSPacket: new (p: Packet, client: SlimClient) => Packet;
  Packet: new (p: Packet, broker: Broker) => Packet;
  Parser: new () => Parser;
  /** mqtt-packet's Packet (the parser's packet under construction). */
  MqttPacket: new () => object;
  /** bl's plain BufferList. */
  BufferList: new () => object;
}

const require = createRequire(import.meta.url);

/**
 * Aedes' internals and the mqtt-packet, aedes-packet and bl modules Aedes
 * itself uses. Literal relative paths: Node loads them without the packages'
 * "exports" check, as the very modules Aedes imported (the same files), and
 * esbuild (bin/build.js) bundles them as the modules it bundles for Aedes,
 * so dist/ gets the same classes. Undefined when they cannot be loaded.
 */
export async function aedesModules(): Promise<AedesModules | undefined> {
  try {
    const [aedes, client, handlers, write, qos, packet, parser, mqttPacket, bl] = await Promise.all([
      import('../node_modules/aedes/aedes.js'),
      // @ts-expect-error Aedes' internals come without types
      import('../node_modules/aedes/lib/client.js'),
      // @ts-expect-error
      import('../node_modules/aedes/lib/handlers/index.js'),
      // @ts-expect-error
      import('../node_modules/aedes/lib/write.js'),
      // @ts-expect-error
      import('../node_modules/aedes/lib/qos-packet.js'),
      import('../node_modules/aedes-packet/packet.js'),
      // @ts-expect-error
      import('../node_modules/mqtt-packet/parser.js'),
      // @ts-expect-error
      import('../node_modules/mqtt-packet/packet.js'),
      import('../node_modules/bl/BufferList.js'),
    ]);
    return {
      Aedes: aedes.Aedes,
      Client: client.default,
      handle: handlers.default,
      write: write.default,
      QoSPacket: qos.default,
      Packet: packet.default,
      Parser: parser.default,
      MqttPacket: mqttPacket.default,
      BufferList: bl.default,
    } as unknown as AedesModules;
  } catch {
    return undefined;
  }
}

/** True when Aedes' client, connect and dispatch sources (in node_modules) are the ones this was written against. */
function writtenAgainst(): boolean {
  try {
    const dir = dirname(require.resolve('aedes'));
    const hash = createHash('sha256');
    for (const f of ['lib/client.js', 'lib/handlers/connect.js', 'lib/handlers/index.js']) hash.update(readFileSync(join(dir, f)));
    return hash.digest('hex') === WRITTEN_AGAINST;
  } catch {
    return false;
  }
}

async function loadInternals(): Promise<AedesModules | undefined> {
  if (!writtenAgainst()) return undefined;
  return aedesModules();
}

let internals: AedesModules | undefined;
let loading: Promise<AedesModules | undefined> | undefined;

function noop(): void {}

// `subscriptions` and `duplicates` are keyed by strings from the wire: their
// prototype is an empty null-prototype object, so 'constructor' or
// '__proto__' read back as absent, while the objects themselves stay in V8's
// fast mode (Object.create(null) makes a dictionary, ~80 bytes more each).
const NoKeys = function (this: object) {} as unknown as new () => Record<string, never>;
NoKeys.prototype = Object.create(null) as object;

// ---- copied from Aedes 1.2.0 lib/client.js (the constructor's closures, as functions of the client) ----
// MIT License
// Copyright (c) Aedes Contributors
// Copyright (c) 2015-2020 Matteo Collina, http://matteocollina.com
// (the whole notice: node_modules/aedes/LICENSE)

function dedupe(client: SlimClient, packet: Packet): boolean {
  const id = packet.brokerId;
  if (!id) return true;
  const duplicates = client.duplicates;
  const counter = packet.brokerCounter;
  const result = (duplicates[id] || 0) < counter;
  if (result) duplicates[id] = counter;
  return result;
}

function toForwardPacket(client: SlimClient, packet: Packet): Packet | null | undefined | false {
  // Mqttv5 3.8.3.1: no-local
  if (packet.clientId === client.id && packet.nl) return undefined;
  return dedupe(client, packet) && client.broker.authorizeForward(client, packet);
}

function deliverQoS0(this: SlimClient, _packet: Packet, cb: Callback): void {
  const that = this;
  const toForward = toForwardPacket(that, _packet);
  if (toForward) {
    setImmediate(() => {
      const packet = new internals!.Packet(toForward, that.broker);
      packet.qos = 0;
      internals!.write(that, packet, (err) => {
        that._onError(err);
        cb(); // don't pass the error here or it will be thrown by mqemitter
      });
    });
  } else {
    setImmediate(cb);
  }
}

function writeQoS(err: Error | null, client: SlimClient, packet: Packet): void {
  if (err) {
    client.emit('error', err);
    packet.writeCallback!();
  } else {
    internals!.write(client, packet, (e) => {
      if (e) client.emit('error', e);
      packet.writeCallback!();
    });
  }
}

function deliverQoS(this: SlimClient, _packet: Packet, cb: Callback): void {
  const that = this;
  if (_packet.qos === 0) {
    that.deliver0(_packet, cb);
    return;
  }
  const toForward = toForwardPacket(that, _packet);
  if (toForward) {
    setImmediate(() => {
      const packet = new internals!.QoSPacket(toForward, that);
      // Downgrading to client subscription qos if needed
      const clientSub = that.subscriptions[packet.topic];
      if (clientSub && (clientSub.qos || 0) < packet.qos) packet.qos = clientSub.qos!;
      packet.writeCallback = cb;
      const doWriteQoS = (err: Error | null = null): void => writeQoS(err, that, packet);
      if (that.clean || packet.retain) doWriteQoS();
      else that.broker.persistence.outgoingUpdate(that, packet).then(() => doWriteQoS(), doWriteQoS);
    });
  } else if (that.clean === false) {
    that.broker.persistence.outgoingClearMessageId(that, _packet).then(noop, noop);
    setImmediate(cb);
  } else {
    setImmediate(cb);
  }
}

function nextBatch(this: SlimClient, err?: Error | null): void {
  if (err) {
    this.emit('error', err);
    return;
  }
  if (this._paused) return;
  this._parsingBatch--;
  if (this._parsingBatch <= 0) {
    this._parsingBatch = 0;
    const buf = this.conn.read() as Buffer | null; // Aedes passes null: the same as none
    if (buf) (this._parser as unknown as { parse(b: Buffer): void }).parse(buf);
  }
}

function enqueue(parser: Parser, packet: unknown): void {
  const client = parser.client;
  client._parsingBatch++;
  // already connected or it's the first packet
  if (client.connackSent || client._parsingBatch === 1) {
    handle(client, packet);
  } else if (parser._queue!.length < client.broker.queueLimit) {
    parser._queue!.push(packet);
  } else {
    parser.emit('error', new Error('Client queue limit reached'));
  }
}

function dequeue(client: SlimClient): void {
  const q = client._parser._queue;
  if (q) {
    for (let i = 0, len = q.length; i < len; i++) handle(client, q[i]);
    client._parser._queue = null;
  }
}

// ---- end of the copy ----

/** Aedes' dispatch, but for the CONNECTs fast-connect.ts answers. */
function handle(client: SlimClient, packet: unknown): void {
  const c = client as unknown as Parameters<typeof takesConnect>[0];
  const p = packet as { cmd: string };
  if (takesConnect(c, p)) connect(c, p, client._nextBatch, internals!.write as unknown as Parameters<typeof connect>[3]);
  else internals!.handle(client, packet, client._nextBatch);
}

const emitterEmit = EventEmitter.prototype.emit;

/**
 * The parser's events: Aedes listens to 'packet' (until the client closes:
 * its close() removes that listener) and passes 'error' on to the client.
 */
function parserEmit(this: Parser, type: string, arg: unknown): boolean {
  if (type === 'packet') {
    if (!this.client.closed) enqueue(this, arg);
    return true;
  }
  if (type === 'error') return this.client.emit('error', arg);
  return emitterEmit.call(this, type, arg);
}

/** The stream's listeners, shared (Aedes binds them per client). */
function onReadable(this: Duplex & { client: SlimClient }): void {
  this.client._nextBatch();
}
function onConnError(this: Duplex & { client: SlimClient }, err: Error): void {
  this.client.emit('error', err);
}
function onConnEnd(this: Duplex & { client: SlimClient }): void {
  (this.client as unknown as { close(): void }).close();
}

/**
 * mqtt-packet's Parser with its fields, Aedes' two and the packet shortcut's
 * (fast-parse.ts) declared in its constructor, so that V8 keeps most of them
 * in the object (added afterwards they took an 88-byte property array per
 * connection, now 40), and no emitter state (`parserEmit` calls what Aedes
 * would have registered).
 */
function slimParserClass(Base: new () => Parser): new (client: SlimClient) => Parser {
  const original = (Base.prototype as { parse?: unknown }).parse;
  // What mqtt-packet's parser() gives every parser, made once: its table of
  // states, settings until a CONNECT is read (which replaces, never changes,
  // them) and, from fast-parse.ts, the idle Packet and buffer list.
  let states: readonly string[] | undefined;
  const noSettings = Object.freeze({});
  const SlimParser = class extends (Base as new () => Parser & Record<string, unknown>) {
    constructor(client: SlimClient) {
      super();
      // placeholders first, in the order mqtt-packet's parser() sets them
      this.settings = null;
      this._states = null;
      this.packet = null;
      this.error = null;
      this._list = null;
      this._stateCounter = 0;
      this.client = client;
      this._queue = [];
      this._events = undefined;
      this.parse = original;
      if (states) {
        this.settings = noSettings;
        this._states = states;
        if (!startIdle(this as unknown as MqttParser)) (this._resetState as () => void)();
      } else {
        (this.parser as () => void)();
        states = Object.freeze(this._states as string[]);
        this._states = states;
      }
      fastPublishParse(this as unknown as MqttParser);
    }
  };
  Object.defineProperty(SlimParser.prototype, 'emit', { value: parserEmit, writable: true });
  return SlimParser as unknown as new (client: SlimClient) => Parser;
}

function makeProto(Client: { prototype: object }): object {
  const proto = Object.create(Client.prototype) as Record<string, unknown>;
  // Fields of Aedes' client that a live connection never changes (the sweep keeps the keepalive;
  // the others change as it dies): read from here (an own field each was 8 bytes per connection).
  // Whatever a live connection may set is an own field from the start, so that every client keeps
  // one shape (fields added later gave subscribers under backpressure shapes of their own, and
  // the delivery path's property accesses went polymorphic: fan-out cost 40 % more per delivery).
  const defaults: Record<string, unknown> = {
    errored: false,
    _disconnected: false,
    _keepaliveTimer: null,
    _keepaliveInterval: -1,
    _eos: noop,
  };
  for (const [k, value] of Object.entries(defaults)) Object.defineProperty(proto, k, { value, writable: true });
  const lazy = (field: string, make: () => unknown): PropertyDescriptor => ({
    get(this: Record<string, unknown>) {
      return (this[field] ??= make());
    },
    set(this: Record<string, unknown>, v: unknown) {
      this[field] = v;
    },
  });
  Object.defineProperties(proto, {
    subscriptions: lazy('_subs', () => new NoKeys()),
    duplicates: lazy('_dups', () => new NoKeys()),
    deliver0: {
      get(this: SlimClient) {
        return (this._deliver0 ??= deliverQoS0.bind(this));
      },
    },
    deliverQoS: {
      get(this: SlimClient) {
        return (this._deliverQoS ??= deliverQoS.bind(this));
      },
    },
    // Made when first used: QoS 2 publishes (Aedes' publish and pubrel handlers) and writes that wait for 'drain'.
    _inboundInflight: lazy('_inflight', () => new Set()),
    _pendingDrains: lazy('_drains', () => []),
    /** Aedes registers `_onError` for 'error' and `dequeue` once for 'connected' on every client; listeners added by others still run. */
    emit: {
      value: function emit(this: SlimClient & { _events?: Record<string, unknown> }, type: string, ...args: unknown[]): boolean {
        if (type === 'error') {
          this._onError(args[0] as Error);
          if (this._events?.error === undefined) return true;
        } else if (type === 'connected') {
          dequeue(this);
        }
        return emitterEmit.call(this, type, ...args);
      },
    },
  });
  return proto;
}

/**
 * Replaces `aedes.handle` with the lean constructor; returns false (and
 * leaves Aedes alone) when this Aedes is not the one it was written against.
 * The caller then owns the connect timeout and the keepalive (see above).
 */
export async function slimClients(aedes: object): Promise<boolean> {
  internals ??= await (loading ??= loadInternals());
  const x = internals;
  // another Aedes than the one these modules belong to (another copy in node_modules): left alone
  if (!x || !(aedes instanceof x.Aedes)) return false;
  const proto = makeProto(x.Client);
  const broker = aedes as unknown as Broker;
  const maxListeners = broker.opts.concurrency * 2;
  // A constructor function: V8 gives its objects their fields in-object.
  const SlimClient = function (this: Record<string, unknown>, conn: Duplex & { client?: unknown }, req?: { connDetails?: unknown }) {
    // metadata
    this.closed = false;
    this.connecting = false;
    this.connected = false;
    this.connackSent = false;
    // mqtt params
    this.id = null;
    this.clean = true;
    this.version = null;
    this.broker = broker;
    this.conn = conn;
    conn.client = this;
    this._authorized = false;
    this._parsingBatch = 1;
    this._nextId = Math.ceil(Math.random() * 65535);
    this._paused = false;
    this.req = req;
    this.connDetails = req ? req.connDetails : null;
    this.will = null;
    this._will = null;
    this._parser = new SlimParser(this as unknown as SlimClient);
    this._nextBatch = nextBatch.bind(this as unknown as SlimClient);
    this._connectTimer = CONNECT_PENDING;
    // made when first used (see makeProto)
    this._subs = null;
    this._dups = null;
    this._deliver0 = null;
    this._deliverQoS = null;
    this._inflight = null;
    this._drains = null;
    this._drainTimer = null;
    this._onDrainBound = undefined;
    conn.on('readable', onReadable);
    conn.on('error', onConnError);
    // A socket (TCP, TLS) that ends closes too (allowHalfOpen is false), and the broker's 'close'
    // listener closes the client; a WebSocket stream does not close by itself.
    if (!(conn instanceof Socket)) conn.on('end', onConnEnd);
  } as unknown as new (conn: Duplex, req?: unknown) => object;
  SlimClient.prototype = proto;
  const SlimParser = slimParserClass(x.Parser);
  broker.handle = function handle(conn: Duplex, req?: unknown) {
    conn.setMaxListeners(maxListeners);
    return new SlimClient(conn, req);
  };
  return true;
}
