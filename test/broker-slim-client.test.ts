// The broker builds Aedes' clients leaner (broker/slim-client.ts): no timers,
// no end-of-stream watcher, no bound listeners, no per-client emitter. These
// tests fail when that patch is not applied (an Aedes upgrade changes the
// sources it was written against), and check what the missing timers did:
// the connect timeout and the MQTT keepalive, now one sweep per broker.

import test from 'ava';
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import mqtt from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { CredentialStore, EmbeddedBroker } from '../broker/index.ts';
import { CONNECT_PENDING } from '../broker/slim-client.ts';
import { encode } from '../protocol/index.ts';
import { managerFilters, topic } from '../topics/index.ts';
import { hasCommand, scope as S, until } from './helpers/stack.ts';

type Line = { level: string; msg: string; fields: Record<string, unknown> };

async function setup(t: { teardown(fn: () => Promise<void>): void }, connectTimeout = 30_000) {
  const creds = new CredentialStore();
  const secret = creds.issue('p1', 'proplet');
  const logs: Line[] = [];
  const log = (level: string, msg: string, fields: Record<string, unknown> = {}): void => void logs.push({ level, msg, fields });
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, connectTimeout, log });
  t.teardown(() => broker.close());
  const aedes = (broker as unknown as { aedes: { clients: Record<string, Record<string, unknown>> } }).aedes;
  return { broker, secret, logs, aedes };
}

function rawSocket(port: number): Promise<net.Socket> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.on('error', () => {});
    s.resume(); // read the CONNACK, so that the broker's close is seen
  });
}

function connectBytes(secret: string, keepalive: number): Buffer {
  return mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw', clean: true, keepalive, username: 'p1', password: Buffer.from(secret) });
}

test("Aedes' clients are the slim ones: no timers, no watcher, no emitters of their own", async (t) => {
  const { broker, secret, aedes } = await setup(t);
  const sock = await rawSocket(broker.port);
  await until(() => (broker as unknown as { conns: Set<unknown> }).conns.size === 1, 'the connection accepted');
  const conn = [...(broker as unknown as { conns: Set<{ client: Record<string, unknown> }> }).conns][0]!;
  t.is(conn.client._connectTimer, CONNECT_PENDING, 'no connect Timeout: the sweep watches it (patch not applied: did Aedes change?)');
  sock.write(connectBytes(secret, 60));
  await until(() => broker.connectedClients === 1, 'connected');
  const client = aedes.clients['p1/raw']!;
  t.is(client._keepaliveTimer, null, 'no keepalive Timeout');
  t.is(client._deliver0, null, 'no delivery closures before a subscription');
  t.is((client._parser as { _events?: unknown })._events, undefined, 'the parser has no emitter state');
  const stream = client.conn as net.Socket;
  t.is(stream.listenerCount('close'), 1, "one 'close' listener (the broker's), no end-of-stream watcher");
  t.is(stream.listenerCount('finish'), 0);
  t.is(stream.listenerCount('end'), 1, "Node's own: the socket closes after it");
  t.is((client.subscriptions as Record<string, unknown>).constructor as unknown, undefined, "inherited names read back as absent ('constructor')");
  sock.destroy();
  await until(() => broker.connectedClients === 0, 'closed');
});

test('a connection that sends no CONNECT is closed after connectTimeout', async (t) => {
  const { broker, logs } = await setup(t, 200);
  const t0 = performance.now(); // before the broker accepts it
  const sock = await rawSocket(broker.port);
  const port = sock.localPort;
  await new Promise<void>((r) => sock.once('close', () => r()));
  t.true(performance.now() - t0 >= 200, 'not before its time');
  const line = logs.find((l) => String(l.fields.error).includes('connect did not arrive in time'));
  // logged after the socket was destroyed: the address is still known
  t.is(line?.fields.remote, `127.0.0.1:${port}`);
});

test('a client that pings stays past 1.5 × its keepalive and gets its deliveries; once it stops pinging it is dropped', async (t) => {
  const { broker, secret, logs } = await setup(t, 1000);
  const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, keepalive: 1, username: 'p1', password: secret });
  t.teardown(() => c.endAsync(true));
  let pongs = 0;
  c.on('packetreceive', (p) => {
    if (p.cmd === 'pingresp') pongs++;
  });
  await until(() => pongs >= 2, 'two keepalive periods with pings (past 1.5 × keepalive)');
  t.true(c.connected);
  // its delivery functions are made on its first subscription
  const inbox: string[] = [];
  c.on('message', (topic) => inbox.push(topic));
  const own = topic(S, 'manager.start', 'p1');
  await c.subscribeAsync(own, { qos: 1 });
  await new Promise<void>((resolve, reject) => broker.local().publish(own, Buffer.from('{}'), 1, (err) => (err ? reject(err) : resolve())));
  await until(() => inbox.length === 1, 'the start delivered');
  t.is(inbox[0], own);

  // the device goes quiet: mqtt.js stops its keepalive, the connection stays open
  const closed = new Promise<void>((r) => c.once('close', () => r()));
  (c as unknown as { _destroyKeepaliveManager(): void })._destroyKeepaliveManager();
  const t0 = performance.now();
  await closed;
  t.true(performance.now() - t0 >= 500, 'closed by the broker once 1.5 s passed without a packet (not at once)');
  t.true(logs.some((l) => l.msg === 'mqtt keepalive timeout' && l.fields.username === 'p1'));
});

test('a raw client that never sends a packet after CONNECT is dropped after 1.5 × its keepalive, not before', async (t) => {
  const { broker, secret, logs } = await setup(t, 1000);
  const sock = await rawSocket(broker.port);
  const t0 = performance.now(); // before the CONNECT is read
  sock.write(connectBytes(secret, 1));
  await new Promise<void>((r) => sock.once('close', () => r()));
  t.true(performance.now() - t0 >= 1500, 'not before 1.5 × keepalive');
  t.true(logs.some((l) => l.msg === 'mqtt keepalive timeout'));
});

test('TCP keepalive is on for clients whose MQTT keepalive would find a dead peer later (0, or over 490 s), off for the others', async (t) => {
  if (!hasCommand('ss')) return t.pass('ss (iproute2) is not installed');
  const creds = new CredentialStore();
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, log: () => {} });
  t.teardown(() => broker.close());
  const ports = new Map<number, number>();
  for (const keepalive of [0, 60, 600]) {
    const id = `p${keepalive}`;
    const secret = creds.issue(id, 'proplet');
    const sock = await rawSocket(broker.port);
    t.teardown(() => sock.destroy());
    ports.set(sock.localPort!, keepalive);
    sock.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'c', clean: true, keepalive, username: id, password: Buffer.from(secret) }));
  }
  await until(() => broker.connectedClients === 3, 'three connected');
  // the broker's side of each connection, as the kernel sees it: `timer:(keepalive,...)` when SO_KEEPALIVE is on
  const lines = execFileSync('ss', ['-tnoH', 'state', 'established', 'src', `127.0.0.1:${broker.port}`], { encoding: 'utf8' }).trim().split('\n');
  const probed = new Map<number, boolean>();
  for (const line of lines) {
    const m = /127\.0\.0\.1:\d+\s+127\.0\.0\.1:(\d+)/.exec(line);
    if (m && ports.has(Number(m[1]))) probed.set(ports.get(Number(m[1]))!, line.includes('timer:(keepalive'));
  }
  t.deepEqual(Object.fromEntries(probed), { 0: true, 60: false, 600: true });
});

test('without the end-of-stream watcher, every way a connection ends still closes its client: DISCONNECT, a dropped TCP socket (its will published), a dropped WebSocket', async (t) => {
  const creds = new CredentialStore();
  const secrets = Object.fromEntries(['p1', 'p2', 'p3'].map((id) => [id, creds.issue(id, 'proplet')]));
  const managerSecret = creds.issue('manager', 'manager');
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, ws: { port: 0 }, log: () => {} });
  t.teardown(() => broker.close());
  const aedes = (broker as unknown as { aedes: { clients: Record<string, unknown> } }).aedes;
  const m = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'manager', password: managerSecret });
  t.teardown(() => m.endAsync(true));
  const wills: string[] = [];
  m.on('message', (tp, payload) => {
    if (tp.startsWith(topic(S, 'proplet.alive', 'p'))) wills.push(payload.toString());
  });
  await m.subscribeAsync(managerFilters(S));
  const will = (id: string) => ({ topic: topic(S, 'proplet.alive', id), payload: encode('proplet.alive', { proplet_id: id, status: 'offline' }, 'json'), qos: 0 as const, retain: false });
  const clean = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'p1', password: secrets.p1, will: will('p1') });
  const dropped = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'p2', password: secrets.p2, will: will('p2') });
  const ws = await mqtt.connectAsync(broker.wsUrl!, { protocolVersion: 4, reconnectPeriod: 0, username: 'p3', password: secrets.p3, will: will('p3') });
  await until(() => broker.connectedClients === 4, 'all connected');
  await clean.endAsync(); // DISCONNECT: no will
  (dropped as unknown as { stream: net.Socket }).stream.destroy();
  (ws as unknown as { stream: { destroy(): void } }).stream.destroy();
  await until(() => broker.connectedClients === 1 && Object.keys(aedes.clients).length === 1, 'only the manager left, in the broker and in Aedes');
  await until(() => wills.length === 2, 'the wills of the two dropped connections');
  t.deepEqual(wills.map((w) => JSON.parse(w).proplet_id).sort(), ['p2', 'p3']);
});

test("a clean CONNECT is answered in one pass (fast-connect.ts) with Aedes' events and store calls; a persistent one goes through Aedes' steps, and its queue is dropped when its client id comes back clean", async (t) => {
  const creds = new CredentialStore();
  const secret = creds.issue('p1', 'proplet');
  const managerSecret = creds.issue('manager', 'manager');
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, log: () => {} });
  t.teardown(() => broker.close());
  type Store = Record<string, (...a: unknown[]) => unknown>;
  const aedes = (broker as unknown as { aedes: { persistence: Store; on(e: string, fn: () => void): void } }).aedes;
  const calls: string[] = [];
  for (const name of ['outgoingStream', 'dropOutgoing', 'cleanSubscriptions', 'delWill', 'putWill', 'cleanIncoming']) {
    const own = aedes.persistence[name]!;
    aedes.persistence[name] = function (this: unknown, ...a: unknown[]) {
      calls.push(name);
      return own.apply(this, a);
    };
  }
  const events: string[] = [];
  for (const e of ['client', 'connackSent', 'clientReady']) aedes.on(e, () => void events.push(e));
  const will = { topic: topic(S, 'proplet.alive', 'p1'), payload: encode('proplet.alive', { proplet_id: 'p1', status: 'offline' }, 'json'), qos: 0 as const, retain: false };
  const p1 = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'p1', password: secret, will });
  t.teardown(() => p1.endAsync(true));
  await until(() => events.length === 3, 'the three events');
  t.deepEqual(calls, ['cleanSubscriptions', 'delWill', 'putWill', 'cleanIncoming', 'dropOutgoing'], "the clean CONNECT's store calls, in Aedes' order; its queue dropped, not piped (fast path not taken?)");
  t.deepEqual(events, ['client', 'connackSent', 'clientReady']);

  // the manager's persistent session: Aedes' own steps (it pipes the session's queue)
  calls.length = 0;
  const m = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, clientId: 'ctl', clean: false, username: 'manager', password: managerSecret });
  await until(() => calls.includes('outgoingStream'), "Aedes' emptyQueue step");
  t.false(calls.includes('dropOutgoing'));
  await m.subscribeAsync(managerFilters(S), { qos: 1 });
  await m.endAsync();
  await until(() => broker.connectedClients === 1, 'the manager gone, its session kept');
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), encode('proplet.alive', { proplet_id: 'p1', status: 'alive' }, 'json'), { qos: 1 });
  await until(() => broker.outgoingQueues === 1, "a heartbeat queued for the manager's session");
  // the same client id, clean: what its earlier session had queued is never delivered
  calls.length = 0;
  const again = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, clientId: 'ctl', clean: true, username: 'manager', password: managerSecret });
  t.teardown(() => again.endAsync(true));
  t.true(calls.includes('dropOutgoing'));
  t.is(broker.outgoingQueues, 0);
});
