// The embedded MQTT broker: Aedes behind per-account authentication, the
// topic ACL of acl.ts and a packet-size guard, on TCP and optionally TLS and
// WebSocket listeners.

import { EventEmitter } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import { Aedes, type AedesPublishPacket, type Client, type ConnectPacket, type PublishPacket, type Subscription } from 'aedes';
import { Counter, type Registry } from 'prom-client';
import { MAX_PAYLOAD } from '../protocol/index.ts';
import { base, scope as makeScope, type Scope } from '../topics/index.ts';
import { authorize, propletPayload, propletPublishPlan, type Decision, type DenyReason, type PublishPlan } from './acl.ts';
import { accountFor, isGroupId, verifyDummy, verifySecretSoon, type CredentialLookup, type CredentialRecord, type Role } from './credentials.ts';
import { fastPublishParse, type MqttParser } from './fast-parse.ts';
import { cacheMatches, type Matcher } from './match-cache.ts';
import { guard, guardOf, GuardState, type GuardPolicy, type Violation } from './guard.ts';
import { checkBackoff, checkLimits, FailureLog, type AuthBackoff, type ConnectionLimits } from './limits.ts';
import { leanMemoryPersistence, shortCircuitEmptyQueues, type LeanPersistence } from './persistence.ts';
import { aedesModules, CONNECT_PENDING, slimClients } from './slim-client.ts';

const KiB = 1024;

/** Room for the fixed header, topic and packet id around a payload. */
const HEADROOM = 64 * KiB;
/** Largest payload a proplet sends (a result), plus headroom: 4 MiB + 64 KiB. */
export const DEFAULT_MAX_PACKET_SIZE = Math.max(
  MAX_PAYLOAD['proplet.create'],
  MAX_PAYLOAD['proplet.alive'],
  MAX_PAYLOAD['proplet.results'],
  MAX_PAYLOAD['proplet.metrics'],
  MAX_PAYLOAD['registry.proplet'],
) + HEADROOM;
/** Largest payload the manager sends (a start with an inline module), plus headroom: 32 MiB + 64 KiB. */
export const DEFAULT_MANAGER_MAX_PACKET_SIZE = Math.max(...Object.values(MAX_PAYLOAD)) + HEADROOM;
/** Failing CONNECTs of one address waiting for their late refusal; more are closed without a CONNACK. */
const MAX_PENDING_REFUSALS = 32;
/** The CONNECT packet (client id, will, username, password) never needs more. */
const MAX_CONNECT_SIZE = 64 * KiB;
/** The deepest topic of the tree has 10 levels (FL updates); Aedes' default is 100. */
const MAX_TOPIC_LEVELS = 16;
/** When TCP keepalive gives up on a silent peer, in s: 60 s idle, then 9 probes 75 s apart (Linux's defaults). */
const TCP_KEEPALIVE_FINDS_S = 60 + 9 * 75;
/** Publish decisions of the manager remembered (by topic); beyond, they are forgotten all at once. */
const MANAGER_TOPICS_CACHED = 4096;
/** MQTT's own ceiling: 1 + 4 length bytes + 268,435,455. */
const MQTT_MAX_PACKET = 268_435_460;

export type LogFn = (level: 'info' | 'warn', msg: string, fields?: Record<string, unknown>) => void;

/** What `EmbeddedBroker.local()` gives the control plane in the same process (its `LocalBroker`). */
export interface LocalLink {
  subscribe(filter: string, deliver: (topic: string, payload: Buffer) => void): Promise<() => Promise<void>>;
  publish(topic: string, payload: Buffer, qos: 0 | 1 | 2, done: (err?: Error) => void): void;
}

export interface BrokerOptions {
  /** The domain/channel this broker serves: every ACL rule is relative to its base topic. */
  scope: Scope;
  /** Accounts, looked up by MQTT username on CONNECT and again on every publish/delivery (revocation). */
  credentials: CredentialLookup;
  /** TCP listen address. Default '127.0.0.1'. */
  host?: string;
  /** TCP port. Default 1883; 0 picks a free port (read it back from `port`/`url`). */
  port?: number;
  /** Optional MQTT over WebSocket listener (needs the `ws` package). */
  ws?: { host?: string; port: number };
  /** Optional MQTT over TLS listener. */
  tls?: { host?: string; port: number; key: string | Buffer; cert: string | Buffer; ca?: string | Buffer };
  /** Largest packet from proplet, debug and anonymous clients, in bytes. Default 4 MiB + 64 KiB. */
  maxPacketSize?: number;
  /** Largest packet from the manager account. Default 32 MiB + 64 KiB (a start with a 16 MiB inline module). */
  managerMaxPacketSize?: number;
  /**
   * Hold every account but the manager (their CONNACK waits, bounded by the
   * clients' own connect timeouts) until `admitAll()`. Lets the control plane
   * subscribe after a restart before proplets reconnect and publish results
   * nobody would receive.
   */
  managerFirst?: boolean;
  /** How long a connection may stay without a CONNECT, in ms. Default 30000. */
  connectTimeout?: number;
  /** Accept clients without username and password, as the read-only debug role. Default false. */
  allowAnonymous?: boolean;
  /**
   * Open connections per account: a new one beyond the limit closes the
   * account's oldest (as an MQTT client-id takeover would), so a device whose
   * old connection is half-open still gets in. Default proplet 1 (per member
   * id for group accounts), manager 8, debug 16; anonymous clients are not limited.
   */
  connectionLimits?: Partial<ConnectionLimits>;
  /**
   * Back-off on failed CONNECTs: after `failures` failures from one remote
   * address, its further refusals are answered late (doubling up to
   * `maxDelayMs`; beyond 32 waiting at once, closed without CONNACK), while
   * its good logins are not held; after `failures` bad secrets for one
   * account, every CONNACK of that account is held back the same way until a
   * login succeeds. Failures are forgotten `windowMs` after the last one.
   * Default 10 failures, 60 s, 5 s; `false` turns it off.
   */
  authBackoff?: Partial<AuthBackoff> | false;
  /** When given, counters are registered here. */
  registry?: Registry;
  /** Default: warnings as one JSON line on stderr, info dropped. */
  log?: LogFn;
}

/** What the broker remembers about an authenticated client (on the Aedes client object). */
export interface Identity {
  /** Credential id = MQTT username ('' when anonymous). */
  id: string;
  role: Role;
  /** The hash the client authenticated against; a change means the credentials were replaced. */
  hash: string;
  anonymous: boolean;
  /** The client id sent in CONNECT (Aedes' client.id is prefixed with the username). */
  clientId: string;
  /** Set when the client is being closed for a refused publish or revoked credentials: nothing more is accepted from it, not even its will. */
  untrusted: boolean;
  /** The credentials' generation at which this account was last found unchanged (-1: not yet). */
  checked: number;
  /** A proplet's last publish topic and what the ACL decided from it (the topic's part of the decision depends on nothing else). */
  lastTopic: string | undefined;
  lastPlan: PublishPlan | undefined;
}

const LOOKUP_FAILED = Symbol('propeller.lookupFailed');
const REFUSED = Symbol('propeller.refused');

interface ConnectionOwner extends GuardPolicy<Connection> {
  closed(c: Connection): void;
}

/**
 * All the broker keeps per connection, the packet guard's state included,
 * in one object with a fixed shape (nothing is added to or deleted from
 * Aedes' client: a deleted property turned every client into a slow
 * dictionary-mode object, 3 KiB more per connection).
 */
class Connection extends GuardState {
  client: Client | undefined = undefined;
  identity: Identity | undefined = undefined;
  /** The CONNECT's will, until authenticate() has judged it. */
  will: ConnectPacket['will'] | undefined = undefined;
  /** Counted in connectedClients. */
  live = false;
  /** When accepted, in whole ms of performance.now(), rounded up so that nothing fires early (a small integer, not a boxed double): the connect timeout runs from here. */
  readonly since = Math.ceil(performance.now());
  /** The MQTT keepalive's limit in ms (1.5 × the CONNECT's keepalive), 0 for none; watched once authenticated (with slim clients). */
  keepalive = 0;

  constructor(
    stream: Duplex,
    readonly owner: ConnectionOwner,
    readonly transport: string,
    /** The TCP socket under the stream (the stream itself, but for a WebSocket). */
    readonly peer: net.Socket,
  ) {
    super(stream, owner);
  }

  /**
   * Node keeps the peer's address once asked, and answers from it after the
   * socket is gone: asked here when the stream is destroyed with an error (a
   * log with the address follows), not on every CONNECT (a system call and
   * some 90 bytes per open connection). A peer that reset the connection has
   * no address left to ask for: its logs say 'unknown', beside its client id
   * and username.
   */
  destroying(err: Error | undefined): void {
    if (err) void this.peer.remotePort;
  }

  get remote(): string {
    return remoteOf(this.peer);
  }

  get ip(): string {
    return this.peer.remoteAddress ?? 'unknown';
  }
}

function connOf(client: Client | null | undefined): Connection | undefined {
  return client ? (guardOf(client.conn) as Connection | undefined) : undefined;
}

/** Shared by every connection: a closure per connection would hold its whole authentication scope. */
function onStreamClose(this: Duplex): void {
  const c = guardOf(this) as Connection;
  c.owner.closed(c);
  // what Aedes' end-of-stream watcher did, which slim clients do without (Aedes' close() runs once)
  c.client?.close();
}

/** The identity the broker attached to an Aedes client, if it authenticated. */
export function identityOf(client: Client | null | undefined): Identity | undefined {
  return connOf(client)?.identity;
}

// Aedes' parser keeps the whole CONNECT packet (password included) as its
// settings for the connection's lifetime, and reads only these two fields of it.
type ParserSettings = { protocolVersion?: number; bridgeMode?: boolean };
const PARSER_SETTINGS = new Map<number | undefined, ParserSettings>([3, 4].map((v) => [v, Object.freeze({ protocolVersion: v, bridgeMode: false })]));

function slimParser(client: Client): void {
  const parser = (client as unknown as { _parser?: { settings?: ParserSettings } })._parser;
  const settings = parser?.settings;
  if (!settings || settings.bridgeMode) return;
  const slim = PARSER_SETTINGS.get(settings.protocolVersion);
  if (slim) parser.settings = slim;
}

// Aedes' parser (mqtt-packet) buffers the bytes of an incomplete packet in
// `bl`'s BufferListStream, a full Duplex stream (two stream states, an event
// emitter, their buffers) that nothing ever pipes or listens to: the parser
// calls only its buffer-list methods. The plain BufferList of the same `bl`
// (the one mqtt-packet resolves) has them all, for a fraction of the memory.
// The parser's table of state names is the same for every connection.
type BufferListClass = new () => object;
/** Set by slimParsers(). */
let BufferList: BufferListClass | undefined;
const PARSER_STATES = Object.freeze(['_parseHeader', '_parseLength', '_parsePayload', '_newPacket']);

let parsersSlimmed: Promise<void> | undefined;

/**
 * Once per process: mqtt-packet's parsers start (and restart after an error)
 * with the plain BufferList instead of making the Duplex only for it to be
 * replaced: on a connect storm the Duplex, its two stream states and its
 * emitter were some 3 % of the broker's CPU besides their garbage. Every
 * mqtt-packet parser of the process gets it (mqtt.js clients included): the
 * parser uses the buffer-list methods only. Left alone if mqtt-packet's
 * _resetState is not the one this was written against. The modules are the
 * ones Aedes uses (slim-client.ts, aedesModules()), in dist/ too.
 */
function slimParsers(): Promise<void> {
  parsersSlimmed ??= (async () => {
    const m = await aedesModules();
    if (!m) return;
    type ParserProto = { _resetState(this: Record<string, unknown>): void };
    const proto = (m.Parser as unknown as { prototype?: ParserProto }).prototype;
    const Packet = m.MqttPacket;
    if (!proto || typeof Packet !== 'function' || typeof m.BufferList !== 'function' || !/this\._list = bl\(\)/.test(String(proto._resetState))) return;
    const List = m.BufferList;
    BufferList = List;
    proto._resetState = function () {
      this.packet = new Packet();
      this.error = null;
      this._list = new List();
      this._stateCounter = 0;
    };
  })();
  return parsersSlimmed;
}

/** Trims a fresh client's parser, before it has read anything (see BufferList above). */
function slimClient(client: Client): void {
  const parser = (client as unknown as { _parser?: { _list?: { length?: number }; _states?: string[] } })._parser;
  if (!parser) return;
  if (BufferList && !(parser._list instanceof BufferList) && parser._list?.length === 0) parser._list = new BufferList();
  if (parser._states?.length === PARSER_STATES.length && PARSER_STATES.every((st, i) => parser._states![i] === st)) parser._states = PARSER_STATES as string[];
  fastPublishParse(parser as unknown as MqttParser);
}

function refusal(message: string): Error {
  const e = new Error(message);
  (e as Error & { [REFUSED]?: true })[REFUSED] = true;
  return e;
}

function authError(message: string, returnCode: 3 | 4 | 5): Error & { returnCode: number } {
  const e = refusal(message) as Error & { returnCode: number };
  e.returnCode = returnCode;
  return e;
}

/** Wire strings (client ids, usernames, topics) can be long: logs get at most 256 characters. */
function clip(v: unknown): unknown {
  return typeof v === 'string' && v.length > 256 ? v.slice(0, 256) + '…' : v;
}

function urlHost(h: string): string {
  if (h === '0.0.0.0' || h === '') return '127.0.0.1';
  if (h === '::') return '[::1]';
  return h.includes(':') ? `[${h}]` : h;
}

function checkSize(name: string, v: number | undefined, dflt: number): number {
  if (v === undefined) return dflt;
  if (!Number.isInteger(v) || v < 64 || v > MQTT_MAX_PACKET) throw new RangeError(`${name} must be an integer between 64 and ${MQTT_MAX_PACKET}, got ${v}`);
  return v;
}

function listen(server: net.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const onError = (e: Error): void => reject(e);
    server.once('error', onError);
    server.listen(port, host, () => {
      server.removeListener('error', onError);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

function closeServer(server: net.Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

const defaultLog: LogFn = (level, msg, fields) => {
  if (level === 'warn') process.stderr.write(JSON.stringify({ t: new Date().toISOString(), level, c: 'broker', msg, ...fields }) + '\n');
};

// Just what is used of the `ws` package, which has no bundled types.
interface WsModule {
  WebSocketServer: new (opts: { server: http.Server; maxPayload?: number; perMessageDeflate?: boolean }) => WsServer;
  createWebSocketStream: (ws: unknown, opts?: Record<string, unknown>) => Duplex;
}
interface WsServer extends EventEmitter {
  close(cb?: (err?: Error) => void): void;
}

async function loadWs(): Promise<WsModule> {
  const name = 'ws'; // a variable, so the compiler does not look for ws' types
  try {
    return (await import(name)) as WsModule;
  } catch (e) {
    throw new Error(`MQTT over WebSocket needs the 'ws' package, which cannot be loaded: ${(e as Error).message}`);
  }
}

export class EmbeddedBroker {
  private _port = 0;
  private _url = '';
  private _wsUrl?: string;
  private _tlsUrl?: string;

  private readonly drops = new Map<string, number>();
  private authFails = 0;
  private dropCounter?: Counter<'reason'>;
  private authCounter?: Counter<string>;
  private replacedCounter?: Counter<'role'>;
  private backoffCounter?: Counter<'action'>;
  private replacedCount = 0;
  private readonly backoffCounts = { refusal_delayed: 0, dropped: 0, delayed: 0 };
  /** Refusals held back per remote address; beyond MAX_PENDING_REFUSALS a failing CONNECT is just closed. */
  private readonly pendingRefusals = new Map<string, number>();
  private readonly limits: ConnectionLimits;
  private readonly backoff?: AuthBackoff;
  /** Failed CONNECTs by remote address and by existing account, forgotten after the back-off window. */
  private readonly addrFails?: FailureLog;
  private readonly userFails?: FailureLog;
  /** Open connections per account: one, or a Set when the account's limit allows more. */
  private readonly byUser = new Map<string, Connection | Set<Connection>>();
  /** Authenticated clients whose connection is open (Aedes' own counter drifts under concurrent client-id takeovers). */
  private liveCount = 0;
  private readonly conns = new Set<Connection>();
  private readonly managerTopics = new Map<string, Decision>();
  private readonly owner: ConnectionOwner = {
    limit: (c, first) => {
      if (first) return Math.min(this.maxPacket, MAX_CONNECT_SIZE);
      return c.identity?.role === 'manager' ? this.managerMaxPacket : this.maxPacket;
    },
    violation: (c, v) => this.onViolation(c, v),
    destroying: (c, err) => c.destroying(err),
    closed: (c) => this.closed(c),
  };
  private readonly servers: net.Server[] = [];
  private wss?: WsServer;
  private closing?: Promise<void>;
  private readonly aedes: Aedes;
  private readonly scope: Scope;
  private readonly credentials: CredentialLookup;
  private readonly log: LogFn;
  private readonly maxPacket: number;
  private readonly managerMaxPacket: number;
  private readonly allowAnonymous: boolean;
  private holding: boolean;
  private deferred: (() => void)[] = [];
  /** Aedes' clients are slim ones (slim-client.ts): the connect timeout and keepalive are this broker's sweep. */
  private slim = false;
  private sweeper?: NodeJS.Timeout;
  private connectTimeout = 30_000;

  /** Client ids with QoS 1/2 deliveries not yet acknowledged: none is kept for one that has nothing pending. */
  get outgoingQueues(): number {
    return (this.aedes as unknown as { persistence: LeanPersistence }).persistence.outgoingQueues;
  }

  private constructor(opts: BrokerOptions, aedes: Aedes, sizes: { max: number; manager: number }) {
    this.aedes = aedes;
    this.scope = { domain: opts.scope.domain, channel: opts.scope.channel };
    this.credentials = opts.credentials;
    const log = opts.log ?? defaultLog;
    // a throwing logger must not break a hook (or crash the process from a promise)
    this.log = (level, msg, fields) => {
      try {
        log(level, msg, fields);
      } catch {
        // nothing sensible left to do
      }
    };
    this.maxPacket = sizes.max;
    this.managerMaxPacket = sizes.manager;
    this.allowAnonymous = opts.allowAnonymous === true;
    this.holding = opts.managerFirst === true;
    this.limits = checkLimits(opts.connectionLimits);
    this.backoff = checkBackoff(opts.authBackoff);
    if (this.backoff) {
      this.addrFails = new FailureLog(this.backoff.windowMs);
      this.userFails = new FailureLog(this.backoff.windowMs);
    }
    if (opts.registry) this.attachMetrics(opts.registry);
  }

  /**
   * Registers the broker's counters in `registry` (when it was not given to
   * start(), e.g. because the control plane that owns the registry is built
   * after the broker). Counts from before carry over.
   */
  attachMetrics(registry: Registry): void {
    const fresh = !registry.getSingleMetric('propeller_mqtt_dropped_total');
    this.dropCounter = metric(registry, 'propeller_mqtt_dropped_total', 'MQTT packets dropped by the embedded broker, by reason', ['reason']) as Counter<'reason'>;
    this.authCounter = metric(registry, 'propeller_mqtt_auth_failures_total', 'MQTT CONNECTs refused by the embedded broker', []);
    this.replacedCounter = metric(registry, 'propeller_mqtt_connections_replaced_total', "Connections closed because their account's connection limit was reached by a newer one, by role", ['role']) as Counter<'role'>;
    this.backoffCounter = metric(registry, 'propeller_mqtt_auth_backoff_total', 'CONNECTs under authentication back-off: refusal_delayed and dropped (a failing remote address), delayed (an account under attack)', ['action']) as Counter<'action'>;
    if (!fresh) return; // a counter shared with another broker: its counts are its own
    for (const [action, n] of Object.entries(this.backoffCounts)) if (n) this.backoffCounter.inc({ action }, n);
    for (const [reason, n] of this.drops) this.dropCounter.inc({ reason }, n);
    if (this.authFails) this.authCounter.inc(this.authFails);
  }

  /** mqtt://HOST:PORT with the port actually bound. */
  get url(): string {
    return this._url;
  }
  get port(): number {
    return this._port;
  }
  /** ws://HOST:PORT/mqtt when the WebSocket listener is on (any path is accepted). */
  get wsUrl(): string | undefined {
    return this._wsUrl;
  }
  /** mqtts://HOST:PORT when the TLS listener is on. */
  get tlsUrl(): string | undefined {
    return this._tlsUrl;
  }

  static async start(opts: BrokerOptions): Promise<EmbeddedBroker> {
    if (!opts || !opts.scope || !opts.credentials) throw new TypeError('EmbeddedBroker.start needs scope and credentials');
    makeScope(opts.scope.domain, opts.scope.channel); // throws on an invalid scope
    const connectTimeout = opts.connectTimeout ?? 30_000;
    if (!Number.isInteger(connectTimeout) || connectTimeout < 100) throw new RangeError(`connectTimeout must be an integer >= 100 ms, got ${connectTimeout}`);
    const sizes = {
      max: checkSize('maxPacketSize', opts.maxPacketSize, DEFAULT_MAX_PACKET_SIZE),
      manager: checkSize('managerMaxPacketSize', opts.managerMaxPacketSize, DEFAULT_MANAGER_MAX_PACKET_SIZE),
    };
    const host = opts.host ?? '127.0.0.1';
    const ws = opts.ws ? await loadWs() : undefined;

    // The hooks need the instance and the instance needs Aedes: `self` is set
    // right after createBroker, before anything listens.
    let self: EmbeddedBroker | undefined;
    shortCircuitEmptyQueues();
    await slimParsers();
    const aedes = await Aedes.createBroker({
      connectTimeout,
      // Aedes' default (100) queues deliveries in mqemitter when a subscriber backs
      // up and drains the queue recursively: at 10,000 devices that overflowed the
      // stack (mcollina/mqemitter#204). 0 delivers without the queue.
      concurrency: 0,
      maxTopicLevels: MAX_TOPIC_LEVELS,
      persistence: leanMemoryPersistence() as never,
      preConnect: (client, packet, cb) => self!.preConnect(client, packet, cb),
      authenticate: (client, username, password, cb) => self!.authenticate(client, username, password, cb),
      authorizePublish: (client, packet, cb) => self!.authorizePublish(client, packet, cb),
      authorizeSubscribe: (client, sub, cb) => self!.authorizeSubscribe(client, sub, cb),
      authorizeForward: (client, packet) => self!.authorizeForward(client, packet),
    });
    silenceSys(aedes);
    cacheMatches((aedes as unknown as { mq: { _matcher: Matcher } }).mq._matcher);
    const b = new EmbeddedBroker(opts, aedes, sizes);
    self = b;
    b.connectTimeout = connectTimeout;
    b.slim = await slimClients(aedes);
    // which clients this process runs (slim-client.ts), e.g. to check a build
    b.log('info', 'mqtt clients', { lean: b.slim, ...(b.slim ? {} : { why: 'Aedes is not the version slim-client.ts was written against (or its files cannot be read)' }) });
    if (b.slim) {
      // a connection is overdue between its limit and one period later
      b.sweeper = setInterval(() => b.sweep(), Math.min(1000, Math.max(50, connectTimeout >> 2)));
      b.sweeper.unref();
    }
    aedes.on('clientError', (client: Client, err: Error) => b.onClientError(client, err));
    aedes.on('connectionError', (client: Client, err: Error) => b.onClientError(client, err));
    aedes.on('keepaliveTimeout', (client: Client) => b.log('info', 'mqtt keepalive timeout', b.who(client)));

    try {
      // TCP keepalive is set per connection, in preConnect()
      const tcp = net.createServer({ noDelay: true }, (s) => b.accept(s, 'tcp', s));
      b.servers.push(tcp);
      b._port = await listen(tcp, opts.port ?? 1883, host);
      b._url = `mqtt://${urlHost(host)}:${b._port}`;

      if (opts.ws && ws) {
        const httpServer = http.createServer((_req, res) => {
          res.writeHead(426, { 'content-type': 'text/plain' }).end('MQTT over WebSocket only\n');
        });
        httpServer.on('clientError', (_e, socket) => socket.destroy());
        b.servers.push(httpServer);
        // maxPayload bounds one WebSocket message; the packet guard bounds MQTT packets.
        const wss = new ws.WebSocketServer({ server: httpServer, perMessageDeflate: false, maxPayload: Math.max(sizes.max, sizes.manager) });
        wss.on('error', () => {}); // the http server's errors surface on listen()
        wss.on('connection', (socket: unknown, req: http.IncomingMessage) => {
          b.accept(ws.createWebSocketStream(socket), 'ws', req.socket, req);
        });
        b.wss = wss;
        const wsHost = opts.ws.host ?? host;
        b._wsUrl = `ws://${urlHost(wsHost)}:${await listen(httpServer, opts.ws.port, wsHost)}/mqtt`;
      }

      if (opts.tls) {
        const t = opts.tls;
        const tlsServer = tls.createServer(
          { key: t.key, cert: t.cert, ca: t.ca, minVersion: 'TLSv1.2', handshakeTimeout: connectTimeout },
          (s) => b.accept(s, 'tls', s),
        );
        tlsServer.on('tlsClientError', (e, s) => b.log('info', 'mqtt tls handshake failed', { remote: remoteOf(s), error: e.message }));
        b.servers.push(tlsServer);
        const tlsHost = t.host ?? host;
        b._tlsUrl = `mqtts://${urlHost(tlsHost)}:${await listen(tlsServer, t.port, tlsHost)}`;
      }
    } catch (e) {
      await b.close();
      throw e;
    }
    return b;
  }

  /** Ends `managerFirst`: every account may connect from now on. */
  admitAll(): void {
    this.holding = false;
    const waiting = this.deferred;
    this.deferred = [];
    for (const go of waiting) go();
  }

  /**
   * The control plane of this process as a subscriber and publisher without a
   * socket: Aedes hands its deliveries over as packets it already holds, and
   * takes its publishes as packets, so nothing is encoded, parsed or
   * acknowledged between the two (for heartbeats and results the larger part
   * of the broker's work). Its publishes get the manager account's ACL
   * decision; it holds no session: it lives and dies with this process.
   */
  local(): LocalLink {
    return {
      subscribe: (filter, deliver) =>
        new Promise((resolve, reject) => {
          const onPacket = (packet: AedesPublishPacket, cb: () => void): void => {
            try {
              deliver(packet.topic, packet.payload as Buffer);
            } finally {
              cb();
            }
          };
          this.aedes.subscribe(filter, onPacket, (err?: Error) => {
            if (err) return reject(err);
            resolve(() => new Promise<void>((done) => this.aedes.unsubscribe(filter, onPacket, () => done())));
          });
        }),
      publish: (topic, payload, qos, done) => {
        const d = this.managerPublish(topic);
        if (!d.ok) {
          this.drop(d.reason);
          this.log('warn', 'mqtt publish refused', { clientId: 'control plane (in process)', topic: clip(topic), reason: d.reason });
          return done(refusal(`publish refused: ${d.reason}`));
        }
        const packet = { cmd: 'publish', topic, payload, qos, retain: false, dup: false } as PublishPacket;
        this.aedes.publish(packet, (err?: Error) => done(err ?? undefined));
      },
    };
  }

  /** Authenticated connections currently open. */
  get connectedClients(): number {
    return this.liveCount;
  }

  /** Packets dropped since start, by reason (the same counts as propeller_mqtt_dropped_total). */
  dropped(): Record<string, number> {
    return Object.fromEntries(this.drops);
  }

  /** CONNECTs refused since start (the same count as propeller_mqtt_auth_failures_total). */
  get authFailures(): number {
    return this.authFails;
  }

  /** Connections closed by the per-account connection limit, and CONNECTs refused or delayed by the auth back-off. */
  get limited(): { replaced: number; refusalsDelayed: number; dropped: number; delayed: number } {
    return { replaced: this.replacedCount, refusalsDelayed: this.backoffCounts.refusal_delayed, dropped: this.backoffCounts.dropped, delayed: this.backoffCounts.delayed };
  }

  /** Closes every live connection of `username` (e.g. after its credentials are revoked); returns how many. Their wills are not published. */
  disconnect(username: string): number {
    if (isGroupId(username)) {
      // a group account: every client under its prefix that has no account of its own
      const prefix = username.slice(0, -1);
      let n = 0;
      for (const user of [...this.byUser.keys()]) if (user.startsWith(prefix) && user.length > prefix.length && !this.hasOwnAccount(user)) n += this.disconnectUser(user);
      return n;
    }
    return this.disconnectUser(username);
  }

  private hasOwnAccount(username: string): boolean {
    try {
      return this.credentials.get(username) !== undefined;
    } catch {
      return false;
    }
  }

  private disconnectUser(username: string): number {
    const had = this.byUser.get(username);
    if (!had) return 0;
    let n = 0;
    for (const c of had instanceof Set ? had : [had]) {
      if (c.identity) c.identity.untrusted = true;
      if (!c.client!.closed) n++;
      c.client!.close();
    }
    this.byUser.delete(username);
    if (n) this.log('info', 'mqtt clients disconnected', { username, count: n });
    return n;
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      clearInterval(this.sweeper);
      const closed = this.servers.map(closeServer);
      this.wss?.close();
      await new Promise<void>((r) => this.aedes.close(() => r()));
      // connections that never completed CONNECT are not Aedes clients yet
      for (const c of this.conns) c.stream.destroy();
      for (const s of this.servers) if (s instanceof http.Server) s.closeAllConnections();
      await Promise.all(closed);
    })();
    return this.closing;
  }

  // ---- connections ----

  private accept(stream: Duplex, transport: string, peer: net.Socket, req?: http.IncomingMessage): void {
    if (this.closing) {
      stream.destroy();
      return;
    }
    const c = new Connection(stream, this.owner, transport, peer);
    guard(stream, c);
    this.conns.add(c);
    stream.on('close', onStreamClose);
    // Aedes' typings want IncomingMessage & connDetails; it reads only what is there.
    c.client = this.aedes.handle(stream, req as Parameters<Aedes['handle']>[1]);
    // lean clients' parsers start trimmed (slim-client.ts)
    if (!this.slim) slimClient(c.client);
  }

  /**
   * Slim clients have no timers of their own: one pass over the connections
   * (10,000 in some 0.1 ms) closes those whose CONNECT is overdue and the
   * authenticated ones silent for longer than their keepalive allows, as
   * Aedes' per-client timers did (same errors, same 'keepaliveTimeout'
   * event). Any bytes read count as activity.
   */
  private sweep(): void {
    const now = performance.now();
    for (const c of this.conns) {
      const client = c.client as (Client & { _connectTimer: unknown }) | undefined;
      if (!client || client.closed) continue;
      if (client._connectTimer === CONNECT_PENDING) {
        if (now - c.since < this.connectTimeout) continue;
        client._connectTimer = null;
        client.emit('error', new Error('connect did not arrive in time'));
      } else if (c.live && c.keepalive > 0 && now - c.lastRead > c.keepalive) {
        c.keepalive = 0;
        this.aedes.emit('keepaliveTimeout', client);
        client.emit('error', new Error('keep alive timeout'));
      }
    }
  }

  /** The connection's stream closed: whatever it was counted in forgets it. */
  private closed(c: Connection): void {
    this.conns.delete(c);
    if (!c.live) return;
    c.live = false;
    this.liveCount--;
    if (c.identity && !c.identity.anonymous) this.removeUser(c.identity.id, c);
  }

  private addUser(id: string, c: Connection): void {
    const had = this.byUser.get(id);
    if (!had) this.byUser.set(id, c);
    else if (had instanceof Set) had.add(c);
    else this.byUser.set(id, new Set([had, c]));
  }

  private removeUser(id: string, c: Connection): void {
    const had = this.byUser.get(id);
    if (had === c) this.byUser.delete(id);
    else if (had instanceof Set && had.delete(c) && had.size === 0) this.byUser.delete(id);
  }

  private onViolation(c: Connection, v: Violation): void {
    this.drop(v.reason);
    const fields: Record<string, unknown> = { ...this.who(c.client), remote: c.remote, transport: c.transport, reason: v.reason };
    if (v.reason === 'too_large') Object.assign(fields, { size: v.size, limit: v.limit });
    else fields.detail = v.detail;
    this.log('warn', v.reason === 'too_large' ? 'mqtt packet too large, connection closed' : 'malformed mqtt stream, connection closed', fields);
  }

  private onClientError(client: Client | undefined, err: Error): void {
    if ((err as Error & { [REFUSED]?: true })[REFUSED]) return; // logged where it was refused
    this.log('info', 'mqtt connection error', { ...this.who(client), error: err.message });
  }

  private who(client: Client | undefined | null): Record<string, unknown> {
    if (!client) return {};
    const c = connOf(client);
    const idn = c?.identity;
    const out: Record<string, unknown> = { clientId: clip(idn?.clientId ?? client.id ?? undefined) };
    if (idn) {
      out.username = idn.anonymous ? undefined : idn.id;
      out.role = idn.role;
    }
    if (c) out.remote = c.remote;
    return out;
  }

  private drop(reason: string): void {
    this.drops.set(reason, (this.drops.get(reason) ?? 0) + 1);
    this.dropCounter?.inc({ reason });
  }

  // ---- Aedes hooks ----

  private preConnect(client: Client, packet: ConnectPacket, cb: (err: Error | null, ok: boolean) => void): void {
    // The will is checked against the ACL in authenticate(), once the role is known.
    const c = connOf(client);
    if (c) c.will = packet.will;
    const keepalive = packet.keepalive ?? 0;
    // TCP keepalive finds a dead peer some 12 minutes after its last bytes (first probe after 60 s
    // idle, then Linux's 9 probes 75 s apart); a client whose MQTT keepalive finds it sooner is
    // spared the system calls (1.5 × keepalive, from its last packet).
    if (c?.transport === 'tcp' && !(keepalive > 0 && keepalive * 1.5 <= TCP_KEEPALIVE_FINDS_S)) (c.stream as net.Socket).setKeepAlive(true, 60_000);
    if (c && this.slim && keepalive > 0) {
      // [MQTT-3.1.2-24] watched by sweep() from authentication on, where Aedes would start its timer
      c.keepalive = keepalive * 1500 + 1;
      packet.keepalive = 0;
    }
    if (!packet.clean && this.roleOf(packet.username) !== 'manager') {
      // Persistent sessions outlive their connection, and client ids are free: an account could
      // leave any number of them behind, each queueing every QoS 1 start on the shared topic.
      // Only the control plane needs one; a device learns what to run again when it registers.
      // Decided on the account the CONNECT names, before Aedes looks a session up (authenticate()
      // refuses a login whose account stopped being the manager's in between).
      packet.clean = true;
    }
    cb(null, true);
  }

  /** The role of the account `username` would log in to; undefined when there is none (or the lookup fails: authenticate() reports that). */
  private roleOf(username: string | undefined): Role | undefined {
    if (!username) return undefined;
    try {
      return accountFor(this.credentials, username)?.role;
    } catch {
      return undefined;
    }
  }

  private authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    cb: (err: (Error & { returnCode: number }) | null, ok: boolean | null) => void,
  ): void {
    const wireId = client.id;
    const conn = connOf(client)!;
    const refuse = (code: 3 | 4 | 5, reason: string, extra: Record<string, unknown> = {}): void => {
      this.authFails++;
      this.authCounter?.inc();
      this.log('warn', 'mqtt connect refused', { clientId: clip(wireId), username: clip(username), remote: conn.remote, reason, ...extra });
      const err = authError(`connect refused: ${reason}`, code);
      const bo = this.backoff;
      const ip = conn.ip;
      const n = bo && reason !== 'lookup_failed' ? this.addrFails!.fail(ip) : 0;
      if (!bo || n <= bo.failures) return cb(err, null);
      // An address that keeps failing hears back late, so a guesser gets one try per delay. Only
      // refusals wait: a good login from the same address (the control plane's own, on loopback) never does.
      const pending = this.pendingRefusals.get(ip) ?? 0;
      if (pending >= MAX_PENDING_REFUSALS) {
        this.backoffCounts.dropped++;
        this.backoffCounter?.inc({ action: 'dropped' });
        client.conn.destroy();
        return cb(err, null); // Aedes sees the client closed and answers nothing
      }
      this.backoffCounts.refusal_delayed++;
      this.backoffCounter?.inc({ action: 'refusal_delayed' });
      this.pendingRefusals.set(ip, pending + 1);
      setTimeout(() => {
        const left = (this.pendingRefusals.get(ip) ?? 1) - 1;
        if (left > 0) this.pendingRefusals.set(ip, left);
        else this.pendingRefusals.delete(ip);
        cb(err, null);
      }, Math.min(bo.maxDelayMs, 100 * 2 ** Math.min(20, n - bo.failures - 1))).unref();
    };
    const accept = (id: string, role: Role, hash: string, anonymous: boolean): void => {
      if (this.holding && role !== 'manager') {
        // CONNACK waits: a refusal would make mqtt.js stop reconnecting for good.
        this.deferred.push(() => accept(id, role, hash, anonymous));
        return;
      }
      const will = conn.will;
      conn.will = undefined;
      // preConnect() left the session persistent for a manager account only
      if (role !== 'manager' && !client.clean) return refuse(4, 'credentials_changed');
      if (will) {
        const d = authorize(this.scope, role, id, 'publish', will.topic, will.payload);
        if (!d.ok) return refuse(5, 'will_refused', { topic: clip(will.topic), aclReason: d.reason });
      }
      if (!anonymous) this.userFails?.forget(id);
      conn.identity = { id, role, hash, anonymous, clientId: wireId, untrusted: false, checked: -1, lastTopic: undefined, lastPlan: undefined };
      // Client ids are free, so namespace them per account: a proplet reusing
      // the manager's client id must not take over (close) the manager's session.
      (client as { id: string }).id = `${anonymous ? '#anonymous' : id}/${wireId}`;
      slimParser(client);
      if (client.conn.destroyed) return cb(null, true); // gone while verifying: Aedes drops it
      conn.live = true;
      conn.lastRead = Math.ceil(performance.now());
      this.liveCount++;
      if (!anonymous) {
        this.addUser(id, conn);
        this.enforceLimit(id, role);
      }
      cb(null, true);
    };

    if (username === undefined && password === undefined) {
      if (!this.allowAnonymous) return refuse(5, 'anonymous');
      return accept('', 'debug', '', true);
    }
    const bo = this.backoff;
    if (!username || !password || password.length === 0) return refuse(4, 'missing_credentials');
    const secret = password.toString('utf8');
    const rec = this.lookup(username);
    if (rec === LOOKUP_FAILED) return refuse(3, 'lookup_failed');
    if (!rec) {
      verifyDummy(secret);
      return refuse(4, 'unknown_user');
    }
    // An account under attack is slowed down, not locked: its device still gets in, later.
    const userFailed = bo ? this.userFails!.count(username) : 0;
    const delay = bo && userFailed >= bo.failures ? Math.min(bo.maxDelayMs, 100 * 2 ** Math.min(20, userFailed - bo.failures)) : 0;
    if (delay > 0) {
      this.backoffCounts.delayed++;
      this.backoffCounter?.inc({ action: 'delayed' });
    }
    const failed = (e: unknown): void => this.log('warn', 'mqtt authentication failed internally', { username: clip(username), error: String(e) });
    const verified = (ok: boolean): void => {
      try {
        if (!ok) {
          this.userFails?.fail(username);
          return refuse(4, 'bad_secret');
        }
        // the record may have been replaced while scrypt ran
        const now = this.lookup(username);
        if (now === LOOKUP_FAILED) return refuse(3, 'lookup_failed');
        if (!now || now.hash !== rec.hash || now.role !== rec.role) return refuse(4, 'credentials_changed');
        accept(username, rec.role, rec.hash, false);
      } catch (e) {
        failed(e);
      }
    };
    const verify = (): void => {
      // an issued secret (one HMAC) is answered here and now; scrypt on the thread pool
      const v = verifySecretSoon(secret, rec.hash);
      if (typeof v === 'boolean') verified(v);
      else v.then(verified, failed);
    };
    if (delay > 0) setTimeout(verify, delay).unref();
    else verify();
  }

  /** Beyond the account's limit, its oldest connections go: no will, as the account is still connected. */
  private enforceLimit(id: string, role: Role): void {
    const limit = this.limits[role];
    const set = this.byUser.get(id);
    if (!(set instanceof Set)) return; // one connection is within every limit
    for (const old of set) {
      if (set.size <= limit) break;
      set.delete(old);
      if (old.identity) old.identity.untrusted = true;
      this.replacedCount++;
      this.replacedCounter?.inc({ role });
      this.log('info', 'mqtt connection replaced: account at its connection limit', { ...this.who(old.client), username: id, limit });
      old.client!.close();
    }
    if (set.size === 1) this.byUser.set(id, set.values().next().value!);
  }

  /** The username's account (its own or its group's), shielded: a throwing lookup must not take the broker down. */
  private lookup(id: string): CredentialRecord | undefined | typeof LOOKUP_FAILED {
    try {
      return accountFor(this.credentials, id);
    } catch (e) {
      this.log('warn', 'credential lookup failed', { id: clip(id), error: (e as Error)?.message ?? String(e) });
      return LOOKUP_FAILED;
    }
  }

  /**
   * True when the client's credentials were deleted or replaced since it
   * connected, or it was marked untrusted. With a lookup that tells its
   * generation (CredentialStore), the account is read again only after some
   * account changed: every publish, subscribe and delivery asks this.
   */
  private revoked(idn: Identity): boolean {
    if (idn.untrusted) return true;
    if (idn.anonymous) return false;
    const generation = this.credentials.generation;
    if (generation !== undefined && generation === idn.checked) return false;
    const rec = this.lookup(idn.id);
    // fails closed: a lookup that throws counts as revoked
    const gone = rec === LOOKUP_FAILED || !rec || rec.hash !== idn.hash || rec.role !== idn.role;
    if (!gone && generation !== undefined) idn.checked = generation;
    return gone;
  }

  /** Drops the packet, counts and logs it, and marks the client so that nothing more is accepted from it. */
  private refuse(client: Client, idn: Identity | undefined, topic: string, reason: DenyReason | 'credentials_revoked' | 'no_identity'): Error {
    this.drop(reason);
    this.log('warn', 'mqtt publish refused, connection closed', { ...this.who(client), topic: clip(topic), reason });
    if (idn) idn.untrusted = true;
    return refusal(`publish refused: ${reason}`);
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, cb: (err?: Error | null) => void): void {
    if (!client) return cb(refusal('publish without a client')); // an orphaned will: its author cannot be checked
    const idn = identityOf(client);
    if (!idn) return cb(this.refuse(client, idn, packet.topic, 'no_identity'));
    if (idn.untrusted) return cb(refusal('client no longer trusted')); // already counted and logged
    if (this.revoked(idn)) return cb(this.refuse(client, idn, packet.topic, 'credentials_revoked'));
    if (idn.role === 'proplet') return this.propletPublish(client, idn, packet, cb);
    const d = idn.role === 'manager' ? this.managerPublish(packet.topic) : authorize(this.scope, idn.role, idn.id, 'publish', packet.topic, packet.payload);
    if (d.ok) return cb(null);
    // The error makes Aedes close the connection (MQTT 3.1.1 has no way to refuse a publish).
    cb(this.refuse(client, idn, packet.topic, d.reason));
  }

  /**
   * A proplet's publish: authorize() in two parts. A device publishes on a
   * handful of topics, its heartbeat's most, so the topic's part is kept for
   * the connection's last topic; the payload's sender is checked every time.
   */
  private propletPublish(client: Client, idn: Identity, packet: PublishPacket, cb: (err?: Error | null) => void): void {
    const topic = packet.topic;
    let plan = idn.lastTopic === topic ? idn.lastPlan : undefined;
    if (!plan) {
      const p = propletPublishPlan(this.scope, idn.id, topic);
      if (!p.ok) return cb(this.refuse(client, idn, topic, p.reason));
      idn.lastTopic = topic;
      idn.lastPlan = plan = p;
    }
    const d = propletPayload(plan, idn.id, packet.payload);
    if (!d.ok) return cb(this.refuse(client, idn, topic, d.reason));
    // The identity is decided here, once: subscribers (the control plane) read it from the topic.
    packet.topic = plan.deliverAs;
    // Retained messages would outlive the device, one per topic it names (FL round ids are free).
    packet.retain = false;
    cb(null);
  }

  /**
   * The manager's publish decisions by topic. For the manager the ACL reads
   * the topic alone (not the account id, not the payload), and the control
   * plane publishes on a few topics many times: splitting and checking each
   * one per message was the wrapper's largest cost per delivered message.
   */
  private managerPublish(topic: string): Decision {
    let d = this.managerTopics.get(topic);
    if (!d) {
      d = authorize(this.scope, 'manager', '', 'publish', topic);
      if (this.managerTopics.size >= MANAGER_TOPICS_CACHED) this.managerTopics.clear();
      this.managerTopics.set(topic, d);
    }
    return d;
  }

  private authorizeSubscribe(client: Client, sub: Subscription, cb: (err: Error | null, sub?: Subscription | null) => void): void {
    const idn = identityOf(client);
    if (!idn || this.revoked(idn)) {
      if (idn && !idn.untrusted) {
        idn.untrusted = true;
        this.drop('credentials_revoked');
        this.log('warn', 'mqtt subscribe with revoked credentials, connection closed', { ...this.who(client), filter: clip(sub.topic) });
      }
      return cb(refusal('subscribe refused: credentials revoked'));
    }
    const d = authorize(this.scope, idn.role, idn.id, 'subscribe', sub.topic);
    if (d.ok) return cb(null, sub);
    // Refused filters get 0x80 in the SUBACK; the connection stays.
    this.drop('subscribe_refused');
    // the debug account is told where it may read ('m/#' is outside the tree)
    this.log('warn', 'mqtt subscribe refused', { ...this.who(client), filter: clip(sub.topic), reason: d.reason, ...(idn.role === 'debug' ? { may_subscribe: `${base(this.scope)}/#` } : {}) });
    cb(null, null);
  }

  private authorizeForward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const idn = identityOf(client);
    if (!idn) return null;
    if (this.revoked(idn)) {
      if (!idn.untrusted) {
        idn.untrusted = true;
        this.drop('credentials_revoked');
        this.log('warn', 'mqtt delivery to revoked credentials stopped, connection closed', this.who(client));
        setImmediate(() => client.close());
      }
      return null;
    }
    return atGrantedQos(client, packet);
  }
}

/**
 * Aedes 1.2 downgrades a delivery to the subscription's QoS only when the
 * subscription is the exact topic, so a QoS 2 publish (Propeller's Rust
 * proplet) reaches a QoS 1 wildcard subscriber (the control plane) at QoS 2,
 * and about 1 in 250 such deliveries to a persistent session is lost
 * (measured: 994-998 of 1000). Deliver at the highest QoS granted by a
 * matching subscription, as MQTT 3.1.1 (4.3) says.
 */
function atGrantedQos(client: Client, packet: AedesPublishPacket): AedesPublishPacket {
  if (packet.qos < 2) return packet;
  const subs = (client as unknown as { subscriptions?: Record<string, { qos?: number }> }).subscriptions;
  if (!subs) return packet;
  let granted = -1;
  for (const [filter, sub] of Object.entries(subs)) if (topicMatches(filter, packet.topic)) granted = Math.max(granted, sub.qos ?? 0);
  if (granted < 0 || granted >= packet.qos) return packet;
  return { ...packet, qos: granted as 0 | 1 } as AedesPublishPacket;
}

function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

/**
 * Aedes publishes a $SYS notice on every connect and disconnect (and a
 * heartbeat), each through the whole publish path. Nobody can read them here:
 * the ACL keeps every subscription under the scope's base, and clients cannot
 * publish on $SYS either. So they are dropped at the door.
 */
function silenceSys(aedes: Aedes): void {
  type Publish = (packet: { topic?: unknown }, client?: unknown, done?: unknown) => void;
  const inner = aedes.publish as unknown as Publish;
  (aedes as unknown as { publish: Publish }).publish = function (this: Aedes, packet, client, done) {
    if (typeof packet?.topic === 'string' && packet.topic.startsWith('$SYS/')) {
      const cb = typeof client === 'function' ? client : done;
      if (typeof cb === 'function') process.nextTick(cb as () => void);
      return;
    }
    inner.call(this, packet, client, done);
  };
}

function remoteOf(s: net.Socket): string {
  return s.remoteAddress ? `${s.remoteAddress}:${s.remotePort}` : 'unknown';
}

function metric(reg: Registry, name: string, help: string, labelNames: string[]): Counter<string> {
  const existing = reg.getSingleMetric(name);
  if (existing) {
    if (existing instanceof Counter) return existing as Counter<string>;
    throw new Error(`metric ${name} is already registered with another type`);
  }
  return new Counter({ name, help, labelNames, registers: [reg] });
}
