// Aedes' CONNECT handling in one pass, for the CONNECTs a fleet sends: clean
// sessions of MQTT 3.1/3.1.1 on the broker's lean memory store.
//
// Aedes 1.2 runs a CONNECT as a series of nine steps (lib/handlers/connect.js):
// after preConnect a setImmediate, then each step waits for the one before,
// three of them for a promise of the store (whose work is done when called),
// the CONNACK is answered from another setImmediate, and the client's stored
// queue is piped through a Transform made for it, queue or not. Here the same
// steps run in the same order, with the same events and the same effects,
// straight through when authentication answers at once (an issued secret),
// else from its callback. What differs: no turn of the event loop between
// the steps, a clean session's leftover queue dropped at once (Aedes walks
// it and drops each packet, as a clean session never gets them), and the
// CONNACK written as its four bytes. Every other CONNECT (a persistent session,
// MQTT 5, what Aedes answers with an error code, another store) goes to
// Aedes' own handler. Applied with the lean clients (slim-client.ts), under
// the same check of Aedes' sources.

import { randomUUID } from 'node:crypto';
import type { Duplex } from 'node:stream';

type Callback = (err?: Error | null) => void;

interface ConnectPacket {
  cmd: 'connect';
  protocolVersion: number;
  clientId: string;
  clean: boolean;
  will?: object;
  username?: string;
  password?: Buffer;
}

/** The store's methods a clean CONNECT calls; `dropOutgoing` marks a store whose methods do their work when called. */
export interface SyncStore {
  cleanSubscriptions(client: object): Promise<unknown>;
  delWill(client: object): Promise<unknown>;
  putWill(client: object, will: object): Promise<unknown>;
  cleanIncoming?(client: object): Promise<unknown>;
  dropOutgoing(clientId: string): void;
}

interface Broker {
  closed: boolean;
  maxClientsIdLength: number;
  keepaliveLimit: number;
  persistence: SyncStore | object;
  preConnect(client: Client, packet: ConnectPacket, cb: (err: Error | null, ok: boolean) => void): void;
  authenticate(client: Client, username: string | undefined, password: Buffer | undefined, cb: (err: (Error & { returnCode?: number }) | null, ok: boolean | null) => void): void;
  registerClient(client: Client): void;
  emit(type: string, ...args: unknown[]): boolean;
}

interface Client {
  id: string | null;
  clean: boolean;
  version: number | null;
  closed: boolean;
  connecting: boolean;
  connected: boolean;
  connackSent: boolean;
  _authorized: boolean;
  _will: object | null | undefined;
  will: object | null | undefined;
  _connectTimer: unknown;
  broker: Broker;
  conn: Duplex;
  pause(): void;
  resume(): void;
  close(done?: () => void): void;
  emit(type: string, ...args: unknown[]): boolean;
}

type Write = (client: Client, packet: object, done: Callback) => void;

/** MQTT 3.1/3.1.1's CONNACK: session present 0, accepted. */
const CONNACK_ACCEPTED = Buffer.from([0x20, 0x02, 0x00, 0x00]);
/** What 'connackSent' listeners get for it (Aedes gives its Connack object). */
const ACCEPTED = Object.freeze({ cmd: 'connack', returnCode: 0, sessionPresent: false });

/** True when `packet` is a CONNECT this module answers (see above); the others go to Aedes' handler. */
export function takesConnect(client: Client, packet: { cmd: string }): packet is ConnectPacket {
  if (packet.cmd !== 'connect' || client.connecting || client.connected) return false;
  const p = packet as ConnectPacket;
  const b = client.broker;
  return (
    p.clean === true &&
    (p.protocolVersion === 4 || (p.protocolVersion === 3 && p.clientId.length <= b.maxClientsIdLength)) &&
    !b.keepaliveLimit &&
    typeof (b.persistence as Partial<SyncStore>).dropOutgoing === 'function'
  );
}

// ---- the steps of Aedes 1.2.0 lib/handlers/connect.js, for a clean session ----
// MIT License
// Copyright (c) Aedes Contributors
// Copyright (c) 2015-2020 Matteo Collina, http://matteocollina.com
// (the whole notice: node_modules/aedes/LICENSE)

const errorMessages = ['', 'unacceptable protocol version', 'identifier rejected', 'Server unavailable', 'bad user name or password', 'not authorized', 'keep alive limit exceeded'];

/** Aedes' handleConnect and init for a packet takesConnect() accepted; `write` is Aedes' lib/write.js. */
export function connect(client: Client, packet: ConnectPacket, done: Callback, write: Write): void {
  clearTimeout(client._connectTimer as NodeJS.Timeout);
  client._connectTimer = null;
  client.connecting = true;
  client.broker.preConnect(client, packet, (err, successful) => {
    if (err || successful !== true) {
      client.connecting = false;
      done(err);
      return;
    }
    client.id = packet.clientId || 'aedes_' + randomUUID();
    client.clean = packet.clean;
    client.version = packet.protocolVersion;
    client._will = packet.will;
    client.pause();
    client.broker.authenticate(client, packet.username, packet.password, (e, ok) => authenticated(client, done, write, e, ok));
  });
}

function authenticated(client: Client, done: Callback, write: Write, err: (Error & { returnCode?: number; errorCode?: number }) | null, successful: boolean | null): void {
  const broker = client.broker;
  // client.close() or broker.close() happened before authenticate() came back
  if (client.closed || broker.closed) return;
  if (!err && successful) {
    client._authorized = true;
    return accepted(client, done);
  }
  let returnCode = 5;
  if (err) {
    const code = err.returnCode;
    if (code && code >= 2 && code <= 5) returnCode = code;
    if (!err.message) err.message = errorMessages[returnCode]!;
  } else {
    err = new Error(errorMessages[returnCode]);
  }
  err.errorCode = returnCode;
  const connack = { cmd: 'connack', returnCode, sessionPresent: false };
  write(client, connack, (e) => {
    if (!e) {
      broker.emit('connackSent', connack, client);
      client.connackSent = true;
    }
    // [MQTT-3.2.2-5]
    client.close(() => done(err));
  });
}

function accepted(client: Client, done: Callback): void {
  const broker = client.broker;
  const store = broker.persistence as SyncStore;
  const failed = (e: Error): void => void client.emit('error', e);
  // setKeepAlive: none; the broker's preConnect gave the keepalive to its sweep (packet.keepalive is 0)
  // fetchSubs, restoreSubs: a clean session has none, and none of an earlier one stays [MQTT-3.2.2-1]
  store.cleanSubscriptions(client).catch(failed);
  // storeWill
  client.will = client._will;
  store.delWill(client).catch(failed);
  if (client.will) store.putWill(client, client.will).catch(failed);
  broker.registerClient(client);
  // cleanIncoming [MQTT-3.1.2-6], after registerClient's takeover of an earlier client of this id
  store.cleanIncoming?.(client).catch(failed);
  // doConnack: a connection's first bytes out, four of them, never wait for 'drain'
  client.conn.write(CONNACK_ACCEPTED);
  broker.emit('connackSent', ACCEPTED, client);
  client.connackSent = true;
  // emptyQueue: what a clean session had queued is never delivered
  store.dropOutgoing(client.id!);
  client.resume();
  client.connecting = false;
  client.connected = true;
  broker.emit('clientReady', client);
  client.emit('connected');
  done(null);
}
