import test, { type ExecutionContext } from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline, Readable, Writable } from 'node:stream';
import { pipeline as pipelinePromise } from 'node:stream/promises';
import { promisify } from 'node:util';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { Registry } from 'prom-client';
import { CredentialStore, EmbeddedBroker, hashSecret, type BrokerOptions } from '../broker/index.ts';
import { decode, encode } from '../protocol/index.ts';
import { allFilter, base, managerFilters, propletSubscriptions, scope, topic } from '../topics/index.ts';

const S = scope('propeller', 'control');

interface LogLine {
  level: string;
  msg: string;
  fields?: Record<string, unknown>;
}

interface Setup {
  broker: EmbeddedBroker;
  creds: CredentialStore;
  secrets: Record<string, string>;
  logs: LogLine[];
  registry: Registry;
  connect: (user: string | undefined, password?: string, opts?: IClientOptions) => Promise<MqttClient>;
}

async function setup(t: ExecutionContext, opts: Partial<BrokerOptions> = {}): Promise<Setup> {
  const creds = new CredentialStore();
  const secrets: Record<string, string> = {
    manager: creds.issue('manager', 'manager'),
    debug: creds.issue('debug', 'debug'),
    p1: creds.issue('p1', 'proplet'),
    p2: creds.issue('p2', 'proplet'),
  };
  const logs: LogLine[] = [];
  const registry = new Registry();
  const broker = await EmbeddedBroker.start({
    scope: S,
    credentials: creds,
    port: 0,
    registry,
    log: (level, msg, fields) => logs.push({ level, msg, fields }),
    ...opts,
  });
  const clients: MqttClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.end(true);
    await broker.close();
  });
  const connect = async (user: string | undefined, password?: string, o: IClientOptions = {}): Promise<MqttClient> => {
    const c = await mqtt.connectAsync(broker.url, {
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 3000,
      ...(user !== undefined ? { username: user, password: password ?? secrets[user] } : {}),
      ...o,
    });
    clients.push(c);
    collect(c);
    return c;
  };
  return { broker, creds, secrets, logs, registry, connect };
}

type Msg = { topic: string; payload: Buffer };
const inboxes = new WeakMap<MqttClient, { msgs: Msg[]; taken: Set<number> }>();

/** Starts recording a client's messages (at creation, so none is missed); returns the live list. */
function collect(c: MqttClient): Msg[] {
  let box = inboxes.get(c);
  if (!box) {
    const b = { msgs: [] as Msg[], taken: new Set<number>() };
    c.on('message', (topic, payload) => b.msgs.push({ topic, payload }));
    inboxes.set(c, b);
    box = b;
  }
  return box.msgs;
}

/** The first recorded message matching `want` not returned before, waiting for it if need be. */
async function nextMessage(c: MqttClient, want: (topic: string, payload: Buffer) => boolean = () => true, ms = 3000): Promise<Msg> {
  collect(c);
  const box = inboxes.get(c)!;
  const deadline = Date.now() + ms;
  for (;;) {
    const i = box.msgs.findIndex((m, k) => !box.taken.has(k) && want(m.topic, m.payload));
    if (i >= 0) {
      box.taken.add(i);
      return box.msgs[i]!;
    }
    if (Date.now() > deadline) throw new Error(`no message within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

function closed(c: MqttClient, ms = 3000): Promise<void> {
  if (!c.connected) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('client not disconnected within ' + ms + ' ms')), ms);
    c.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/** Granted QoS per filter, in order (128 = refused); mqtt.js rejects a SUBACK holding any 128. */
async function granted(c: MqttClient, filters: string[], qos: 0 | 1 = 0): Promise<number[]> {
  const req = Object.fromEntries(filters.map((f) => [f, { qos }]));
  try {
    return (await c.subscribeAsync(req)).map((g) => g.qos);
  } catch (e) {
    const p = (e as { packet?: { granted?: number[] } }).packet;
    if (!p?.granted) throw e;
    return p.granted;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function managerClient(s: Setup): Promise<{ c: MqttClient; got: { topic: string; payload: Buffer }[] }> {
  const c = await s.connect('manager');
  await c.subscribeAsync(managerFilters(S), { qos: 1 });
  return { c, got: collect(c) };
}

async function refusedCode(p: Promise<unknown>): Promise<number | undefined> {
  try {
    await p;
  } catch (e) {
    return (e as { code?: number }).code;
  }
  return undefined;
}

const alive = (id: string): Buffer => encode('proplet.alive', { proplet_id: id, status: 'alive' }, 'json');

test('authentication: wrong secret, unknown user and anonymous are refused, without crashing', async (t) => {
  const s = await setup(t);
  t.is(await refusedCode(s.connect('p1', 'not-the-secret')), 4);
  t.is(await refusedCode(s.connect('nobody', 'whatever')), 4);
  t.is(await refusedCode(s.connect(undefined)), 5);
  t.is(await refusedCode(s.connect('p1', '')), 4);
  const ok = await s.connect('p1');
  t.true(ok.connected);
  t.is(s.broker.authFailures, 4);
  t.regex(await s.registry.metrics(), /propeller_mqtt_auth_failures_total 4/);
  const warn = s.logs.find((l) => l.msg === 'mqtt connect refused' && l.fields?.reason === 'bad_secret');
  t.truthy(warn);
  t.false(JSON.stringify(s.logs).includes('not-the-secret'), 'secrets are never logged');
});

test('anonymous clients get the read-only debug role when allowAnonymous', async (t) => {
  const s = await setup(t, { allowAnonymous: true });
  const anon = await s.connect(undefined);
  t.deepEqual(await granted(anon, [allFilter(S), '#']), [0, 128]);
  anon.publish(topic(S, 'proplet.alive', 'p1'), alive('p1'));
  await closed(anon);
  t.is(s.broker.dropped().read_only, 1);
});

test('a proplet publishes its own alive, JSON and compact CBOR, and the manager receives both', async (t) => {
  const s = await setup(t);
  const m = await managerClient(s);
  const p1 = await s.connect('p1', undefined, { clientId: 'random-' + Math.random() });
  await p1.publishAsync(topic(S, 'proplet.alive'), alive('p1'), { qos: 1 });
  const first = await nextMessage(m.c);
  t.is(first.topic, topic(S, 'proplet.alive', 'p1'), 'a shared-topic publish is delivered on the sender\'s own topic');
  t.is(decode('proplet.alive', first.payload).msg.proplet_id, 'p1');

  const cbor = encode('proplet.alive', { proplet_id: 'p1', running_tasks: 2 }, 'cbor', { omitSender: true });
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), cbor, { qos: 1 });
  const second = await nextMessage(m.c);
  t.is(second.topic, topic(S, 'proplet.alive', 'p1'));
  const d = decode('proplet.alive', second.payload, { propletId: 'p1' });
  t.is(d.encoding, 'cbor');
  t.is(d.msg.running_tasks, 2);

  // CBOR that names the sender on the shared topic
  await p1.publishAsync(topic(S, 'proplet.metrics'), encode('proplet.metrics', { proplet_id: 'p1', cpu_percent: 3.5 }, 'cbor'), { qos: 1 });
  t.is(decode('proplet.metrics', (await nextMessage(m.c)).payload).msg.cpu_percent, 3.5);
  t.true(p1.connected);
  t.deepEqual(s.broker.dropped(), {});
});

test('a proplet cannot speak for another proplet or as the manager: dropped, counted, logged, disconnected', async (t) => {
  const s = await setup(t);
  const m = await managerClient(s);
  const forgeries: [string, string, Buffer, string][] = [
    ['alive naming p2 on the shared topic', topic(S, 'proplet.alive'), alive('p2'), 'sender_mismatch'],
    ['result on p2 per-proplet topic', topic(S, 'proplet.results', 'p2'), encode('proplet.results', { proplet_id: 'p2', task_id: 't1' }, 'cbor', { omitSender: true }), 'topic_id_mismatch'],
    ['result naming p2 on own topic', topic(S, 'proplet.results', 'p1'), encode('proplet.results', { proplet_id: 'p2', task_id: 't1' }, 'json'), 'sender_mismatch'],
    ['start from a proplet', topic(S, 'manager.start'), encode('manager.start', { id: 't1', proplet_id: 'p2' }, 'json'), 'kind_not_allowed'],
    ['stop to a proplet', topic(S, 'manager.stop', 'p2'), encode('manager.stop', { id: 't1' }, 'json'), 'kind_not_allowed'],
    ['alive naming the sender twice', topic(S, 'proplet.alive'), Buffer.from('{"proplet_id":"p1","status":"alive","proplet_id":"p2"}'), 'duplicate_field'],
    ['outside the scope', 'm/other/c/control/messages/control/proplet/alive', alive('p1'), 'outside_scope'],
  ];
  for (const [what, tp, payload, reason] of forgeries) {
    const p1 = await s.connect('p1');
    p1.publish(tp, payload, { qos: 1 });
    await closed(p1);
    t.is(s.broker.dropped()[reason] !== undefined, true, what);
    const line = s.logs.find((l) => l.level === 'warn' && l.fields?.topic === tp && l.fields?.reason === reason);
    t.truthy(line, `warn logged for ${what}`);
    t.is(line?.fields?.username, 'p1');
    t.truthy(line?.fields?.clientId);
  }
  const drops = s.broker.dropped();
  t.is(drops.sender_mismatch, 2);
  t.is(drops.topic_id_mismatch, 1);
  t.is(drops.kind_not_allowed, 2);
  // The honest proplet's marker arrives; nothing forged came before it.
  const p2 = await s.connect('p2');
  await p2.publishAsync(topic(S, 'proplet.alive', 'p2'), alive('p2'), { qos: 1 });
  await nextMessage(m.c, (tp) => tp === topic(S, 'proplet.alive', 'p2'));
  t.deepEqual(
    m.got.map((x) => x.topic),
    [topic(S, 'proplet.alive', 'p2')],
  );
  t.regex(await s.registry.metrics(), /propeller_mqtt_dropped_total\{reason="sender_mismatch"\} 2/);
});

test('a proplet\'s repeated topic is decided once, its payload every time: a forgery after honest heartbeats on the same topic is refused', async (t) => {
  const s = await setup(t);
  const m = await managerClient(s);
  const shared = topic(S, 'proplet.alive');
  const cbor = (id: string): Buffer => encode('proplet.alive', { proplet_id: id, status: 'alive' }, 'cbor');
  // same topic, then another one, then back: each delivered on the sender's own topic
  const p1 = await s.connect('p1');
  for (const [tp, payload] of [[shared, cbor('p1')], [shared, alive('p1')], [topic(S, 'proplet.metrics'), encode('proplet.metrics', { proplet_id: 'p1' }, 'cbor')], [shared, cbor('p1')]] as const) {
    await p1.publishAsync(tp, payload, { qos: 1 });
    t.is((await nextMessage(m.c)).topic, `${tp}/p1`);
  }
  // the same (cached) topic, a payload naming p2: refused, the connection closed
  p1.publish(shared, cbor('p2'), { qos: 1 });
  await closed(p1);
  t.is(s.broker.dropped().sender_mismatch, 1);
  // a new connection of p1 after a cached topic of p2's: decided for p1, not from p2's
  const p2 = await s.connect('p2');
  await p2.publishAsync(topic(S, 'proplet.alive', 'p2'), cbor('p2'), { qos: 1 });
  t.is((await nextMessage(m.c)).topic, topic(S, 'proplet.alive', 'p2'));
  const again = await s.connect('p1');
  again.publish(topic(S, 'proplet.alive', 'p2'), cbor('p1'), { qos: 1 });
  await closed(again);
  t.is(s.broker.dropped().topic_id_mismatch, 1);
  t.is(m.got.length, 5);
});

test('a proplet subscribes only to its own topics and the shared ones, never with wildcards', async (t) => {
  const s = await setup(t);
  const m = await s.connect('manager');
  const p1 = await s.connect('p1');
  const got = collect(p1);
  const filters = [
    topic(S, 'manager.start', 'p2'),
    `${base(S)}/control/manager/+`,
    `${base(S)}/#`,
    ...propletSubscriptions(S, 'p1'),
    topic(S, 'manager.start'),
    topic(S, 'manager.stop'),
    topic(S, 'registry.server'),
    topic(S, 'proplet.alive'),
  ];
  t.deepEqual(await granted(p1, filters, 1), [128, 128, 128, 1, 1, 1, 1, 1, 1, 128]);
  await m.publishAsync(topic(S, 'manager.start', 'p2'), encode('manager.start', { id: 'for-p2' }, 'json'), { qos: 1 });
  await m.publishAsync(topic(S, 'manager.start', 'p1'), encode('manager.start', { id: 'for-p1' }, 'json'), { qos: 1 });
  await m.publishAsync(topic(S, 'manager.stop'), encode('manager.stop', { id: 'shared-stop' }, 'json'), { qos: 1 });
  await nextMessage(p1, (tp) => tp === topic(S, 'manager.stop'));
  t.deepEqual(
    got.map((g) => [g.topic, decode('manager.start', g.payload).msg.id]),
    [
      [topic(S, 'manager.start', 'p1'), 'for-p1'],
      [topic(S, 'manager.stop'), 'shared-stop'],
    ],
  );
  t.true(p1.connected, 'a refused subscription does not close the connection');
  t.is(s.broker.dropped().subscribe_refused, 4);
});

test('the debug account reads everything under the base and its publishes are dropped', async (t) => {
  const s = await setup(t);
  const m = await managerClient(s);
  const dbg = await s.connect('debug');
  t.deepEqual(await granted(dbg, [allFilter(S), '#', '$SYS/#']), [0, 128, 128]);
  const p1 = await s.connect('p1');
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  const seen = await nextMessage(dbg);
  t.is(seen.topic, topic(S, 'proplet.alive', 'p1'));
  await nextMessage(m.c);

  dbg.publish(topic(S, 'manager.start', 'p1'), encode('manager.start', { id: 'x' }, 'json'), { qos: 1 });
  await closed(dbg);
  t.is(s.broker.dropped().read_only, 1);
  await sleep(50);
  t.false(m.got.some((g) => g.topic.includes('manager')));
});

test('the manager publishes and subscribes under the base only', async (t) => {
  const s = await setup(t);
  const m = await s.connect('manager');
  t.deepEqual(await granted(m, [allFilter(S), 'm/other/c/control/messages/#', '#']), [0, 128, 128]);
  m.publish('m/other/c/control/messages/control/manager/start', '{}');
  await closed(m);
  t.is(s.broker.dropped().outside_scope, 1);
});

test('oversized packets are refused before they are buffered, and counted', async (t) => {
  const s = await setup(t, { maxPacketSize: 8 * 1024 });
  const m = await managerClient(s);
  const p1 = await s.connect('p1');
  await p1.subscribeAsync(topic(S, 'manager.start', 'p1'));
  // the manager's own, larger limit applies to the manager
  const big = encode('manager.start', { id: 'big', file: new Uint8Array(100 * 1024) }, 'cbor');
  await m.c.publishAsync(topic(S, 'manager.start', 'p1'), big, { qos: 1 });
  t.is((await nextMessage(p1)).payload.length, big.length);

  const huge = encode('proplet.results', { proplet_id: 'p1', task_id: 't', stdout: 'x'.repeat(16 * 1024) }, 'json');
  p1.publish(topic(S, 'proplet.results', 'p1'), huge, { qos: 1 });
  await closed(p1);
  t.is(s.broker.dropped().too_large, 1);
  const line = s.logs.find((l) => l.fields?.reason === 'too_large');
  t.is(line?.fields?.limit, 8 * 1024);
  t.is(line?.fields?.username, 'p1');

  // A raw socket announcing a 200 MiB CONNECT is cut at the header.
  const sock = net.connect(s.broker.port, '127.0.0.1');
  await new Promise<void>((r) => sock.once('connect', () => r()));
  sock.on('error', () => {});
  sock.write(Buffer.from([0x10, 0xff, 0xff, 0xff, 0x64]));
  await new Promise<void>((r) => sock.once('close', () => r()));
  t.is(s.broker.dropped().too_large, 2);
  await sleep(50);
  t.false(m.got.some((g) => g.topic.startsWith(topic(S, 'proplet.results'))));
});

test('garbage bytes on raw sockets never crash the broker', async (t) => {
  const s = await setup(t, { connectTimeout: 500 });
  const connectBytes = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw', clean: true, keepalive: 0, username: 'p1', password: Buffer.from(s.secrets.p1!) });
  let seed = 7;
  const rnd = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) & 0xff));
  const cases: Buffer[] = [
    rnd(4096),
    Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'),
    Buffer.from([0x10, 0x80, 0x80, 0x80, 0x80, 0x01]), // 5-byte length
    Buffer.from([0x10, 0x0a, 0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x09, 0xff, 0xff, 0xff]), // bad protocol level and flags
    Buffer.from([0x10, 0x03, 0x00, 0xff, 0xff]), // truncated protocol name
    Buffer.from([0x00, 0x00]),
    Buffer.from([0xf0, 0x00]), // AUTH (MQTT 5 only)
    Buffer.concat([connectBytes, rnd(512)]), // a good CONNECT, then noise
    Buffer.concat([connectBytes, Buffer.from([0x30, 0x05, 0x00, 0x10, 0x61, 0x62, 0x63])]), // publish with a topic length beyond the packet
    Buffer.concat([connectBytes, Buffer.from([0x82, 0x04, 0x00, 0x01, 0x00, 0x00])]), // subscribe with an empty filter and no qos
    Buffer.from([0x10]), // a lone header byte: the connect timeout ends it
  ];
  for (const bytes of cases) {
    const sock = net.connect(s.broker.port, '127.0.0.1');
    sock.on('error', () => {});
    await new Promise<void>((r) => sock.once('connect', () => r()));
    sock.write(bytes);
    await new Promise<void>((r) => {
      sock.once('close', () => r());
      setTimeout(() => {
        sock.destroy();
        r();
      }, 2000);
    });
  }
  t.true((s.broker.dropped().malformed_packet ?? 0) >= 4);

  // Mutation fuzzing past the guard: a valid session (CONNECT, SUBSCRIBE,
  // PUBLISH) with a few bytes changed, many sockets at once.
  const session = Buffer.concat([
    connectBytes,
    mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: topic(S, 'manager.start', 'p1'), qos: 1 }] }),
    mqttPacket.generate({ cmd: 'publish', topic: topic(S, 'proplet.alive', 'p1'), payload: alive('p1'), qos: 1, messageId: 2, retain: false, dup: false }),
    mqttPacket.generate({ cmd: 'pingreq' }),
  ]);
  await Promise.all(
    Array.from({ length: 60 }, async () => {
      const bytes = Buffer.from(session);
      const flips = 1 + (rnd(1)[0]! % 4);
      for (let k = 0; k < flips; k++) bytes[rnd(2).readUInt16LE() % bytes.length] = rnd(1)[0]!;
      const sock = net.connect(s.broker.port, '127.0.0.1');
      sock.on('error', () => {});
      sock.on('data', () => {});
      await new Promise<void>((r) => sock.once('connect', () => r()));
      sock.write(bytes);
      await sleep(100);
      sock.destroy();
    }),
  );
  // still serving
  const m = await managerClient(s);
  const p1 = await s.connect('p1');
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'));
  t.is((await nextMessage(m.c)).topic, topic(S, 'proplet.alive', 'p1'));
  for (let i = 0; i < 50 && s.broker.connectedClients !== 2; i++) await sleep(20);
  t.is(s.broker.connectedClients, 2);
});

test('client ids are free but cannot take over another account\'s session', async (t) => {
  const s = await setup(t);
  const m = await s.connect('manager', undefined, { clientId: 'propeller-manager' });
  const mGot = collect(m);
  let managerClosed = false;
  m.on('close', () => (managerClosed = true));
  const p1 = await s.connect('p1', undefined, { clientId: 'propeller-manager' });
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'));
  await sleep(100);
  t.false(managerClosed);
  t.true(p1.connected);
  t.is(s.broker.connectedClients, 2);
  // the same account with the same client id does take over, as MQTT says
  const m2 = await s.connect('manager', undefined, { clientId: 'propeller-manager' });
  await closed(m);
  t.true(m2.connected);
  t.deepEqual(mGot, []);
});

test('a persistent session (the control plane\'s) survives a reconnect under the namespaced client id', async (t) => {
  const s = await setup(t);
  const m1 = await s.connect('manager', undefined, { clientId: 'cp-1', clean: false });
  t.deepEqual(await granted(m1, managerFilters(S), 1), managerFilters(S).map(() => 1));
  m1.end();
  await closed(m1);
  const p1 = await s.connect('p1');
  await p1.publishAsync(topic(S, 'proplet.results', 'p1'), encode('proplet.results', { proplet_id: 'p1', task_id: 't9' }, 'json'), { qos: 1 });
  // listen before CONNECT: the queued message may come in the same read as CONNACK
  const m2 = mqtt.connect(s.broker.url, { protocolVersion: 4, reconnectPeriod: 0, clientId: 'cp-1', clean: false, username: 'manager', password: s.secrets.manager });
  collect(m2);
  t.teardown(() => m2.end(true));
  const msg = await nextMessage(m2);
  t.is(decode('proplet.results', msg.payload).msg.task_id, 't9');
});

test("the broker's shortcut for empty outgoing queues leaves every other stream.pipeline of the process as it was", async (t) => {
  await setup(t); // the shortcut is installed when a broker starts
  const piped = async (run: (src: Readable, dst: Writable) => Promise<unknown>): Promise<string> => {
    let got = '';
    const dst = new Writable({ write: (c, _e, cb) => ((got += String(c)), cb()) });
    await run(Readable.from(['a', 'b', 'c']), dst);
    return got;
  };
  t.is(await piped((src, dst) => new Promise((resolve, reject) => pipeline(src, dst, (e) => (e ? reject(e) : resolve(undefined))))), 'abc');
  t.is(await piped((src, dst) => promisify(pipeline)(src, dst)), 'abc');
  t.is(await piped((src, dst) => pipelinePromise(src, dst)), 'abc');
  // an empty array (not the broker's own marker) still goes through Node's pipeline
  let ended = false;
  await new Promise((resolve) => pipeline([], new Writable({ objectMode: true, write: (_c, _e, cb) => cb(), final: (cb) => ((ended = true), cb()) }), resolve));
  t.true(ended);
  await t.throwsAsync(promisify(pipeline)(Readable.from(['x']), new Writable({ write: (_c, _e, cb) => cb(new Error('boom')) })), { message: 'boom' });
});

test('keepalive 0 is accepted', async (t) => {
  const s = await setup(t);
  const c = await s.connect('p1', undefined, { keepalive: 0 });
  await sleep(50);
  t.true(c.connected);
});

test('a will is checked on CONNECT like a publish', async (t) => {
  const s = await setup(t);
  t.is(await refusedCode(s.connect('p1', undefined, { will: { topic: topic(S, 'manager.stop'), payload: Buffer.from('{"id":"x"}'), qos: 0, retain: false } })), 5);
  const ok = await s.connect('p1', undefined, { will: { topic: topic(S, 'proplet.alive', 'p1'), payload: alive('p1'), qos: 0, retain: false } });
  t.true(ok.connected);
});

test('revoked or replaced credentials end the connection', async (t) => {
  const s = await setup(t);
  const m = await managerClient(s);
  const p2 = await s.connect('p2');
  s.creds.delete('p2');
  t.is(s.broker.disconnect('p2'), 1);
  await closed(p2);
  t.is(await refusedCode(s.connect('p2')), 4);
  t.is(s.broker.disconnect('p2'), 0);

  // re-issuing p1's secret: the old connection's next publish is refused
  const p1 = await s.connect('p1');
  s.secrets.p1 = s.creds.issue('p1', 'proplet');
  p1.publish(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  await closed(p1);
  t.is(s.broker.dropped().credentials_revoked, 1);
  const again = await s.connect('p1');
  await again.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  t.is((await nextMessage(m.c)).topic, topic(S, 'proplet.alive', 'p1'));
});

test('an account is read again only after the credentials changed, and a change still ends a connection that published before it', async (t) => {
  const s = await setup(t);
  const m = await managerClient(s);
  const p1 = await s.connect('p1');
  const reads = new Map<string, number>();
  const get = s.creds.get.bind(s.creds);
  s.creds.get = (id: string) => {
    reads.set(id, (reads.get(id) ?? 0) + 1);
    return get(id);
  };
  for (let i = 0; i < 5; i++) await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  t.is(reads.get('p1'), 1); // the first publish; the next four found the credentials unchanged
  s.creds.issue('p9', 'proplet'); // another account: p1's is read once more, and still holds
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  await p1.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  t.is(reads.get('p1'), 2);
  for (let i = 0; i < 7; i++) await nextMessage(m.c);

  // p1 has published (its account was found unchanged): replacing its secret still cuts it at its next publish
  s.secrets.p1 = s.creds.issue('p1', 'proplet');
  p1.publish(topic(S, 'proplet.alive', 'p1'), alive('p1'), { qos: 1 });
  await closed(p1);
  t.is(s.broker.dropped().credentials_revoked, 1);
  // and a deleted group account cuts its members that had published
  s.creds.set({ id: 'grp-*', role: 'proplet', hash: hashSecret('g') });
  const g = await s.connect('grp-a', 'g');
  await g.publishAsync(topic(S, 'proplet.alive', 'grp-a'), alive('grp-a'), { qos: 1 });
  s.creds.delete('grp-*');
  g.publish(topic(S, 'proplet.alive', 'grp-a'), alive('grp-a'), { qos: 1 });
  await closed(g);
  t.is(s.broker.dropped().credentials_revoked, 2);
});

test('MQTT over WebSocket and over TLS', async (t) => {
  let tlsOpts: BrokerOptions['tls'];
  const dir = mkdtempSync(join(tmpdir(), 'broker-tls-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  try {
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem')], { stdio: 'ignore' });
    tlsOpts = { port: 0, key: readFileSync(join(dir, 'key.pem')), cert: readFileSync(join(dir, 'cert.pem')) };
  } catch {
    t.log('openssl not available: TLS listener not tested');
  }
  const s = await setup(t, { ws: { port: 0 }, tls: tlsOpts });
  t.regex(s.broker.wsUrl!, /^ws:\/\/127\.0\.0\.1:\d+\/mqtt$/);
  const m = await managerClient(s);
  const ws = await mqtt.connectAsync(s.broker.wsUrl!, { protocolVersion: 4, reconnectPeriod: 0, username: 'p1', password: s.secrets.p1 });
  collect(ws);
  t.teardown(() => ws.end(true));
  await ws.publishAsync(topic(S, 'proplet.alive', 'p1'), alive('p1'));
  t.is((await nextMessage(m.c)).topic, topic(S, 'proplet.alive', 'p1'));
  ws.publish(topic(S, 'proplet.alive', 'p2'), alive('p2'));
  await closed(ws);
  t.is(s.broker.dropped().topic_id_mismatch, 1);
  t.is(await refusedCode(mqtt.connectAsync(s.broker.wsUrl!, { protocolVersion: 4, reconnectPeriod: 0, username: 'p1', password: 'bad' })), 4);

  if (tlsOpts) {
    const c = await mqtt.connectAsync(s.broker.tlsUrl!, { protocolVersion: 4, reconnectPeriod: 0, username: 'p2', password: s.secrets.p2, ca: tlsOpts.cert });
    t.teardown(() => c.end(true));
    await c.publishAsync(topic(S, 'proplet.alive', 'p2'), alive('p2'));
    t.is((await nextMessage(m.c)).topic, topic(S, 'proplet.alive', 'p2'));
  }
});

test('close() ends every connection, including those that never sent CONNECT', async (t) => {
  const creds = new CredentialStore();
  const secret = creds.issue('p1', 'proplet');
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, log: () => {} });
  t.regex(broker.url, /^mqtt:\/\/127\.0\.0\.1:\d+$/);
  const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'p1', password: secret });
  const idle = net.connect(broker.port, '127.0.0.1');
  idle.on('error', () => {});
  await new Promise<void>((r) => idle.once('connect', () => r()));
  const idleClosed = new Promise<void>((r) => idle.once('close', () => r()));
  const t0 = Date.now();
  await broker.close();
  await idleClosed;
  await closed(c);
  t.true(Date.now() - t0 < 2000);
  await broker.close(); // idempotent
});

test('start() refuses bad options and a busy port without leaking', async (t) => {
  const creds = new CredentialStore();
  await t.throwsAsync(EmbeddedBroker.start({ scope: { domain: 'a/b', channel: 'c' }, credentials: creds, port: 0 }), { message: /invalid domain/ });
  await t.throwsAsync(EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, maxPacketSize: 10 }), { instanceOf: RangeError });
  const first = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, log: () => {} });
  t.teardown(() => first.close());
  await t.throwsAsync(EmbeddedBroker.start({ scope: S, credentials: creds, port: first.port, log: () => {} }), { code: 'EADDRINUSE' });
});

test('a group account PREFIX-* admits every PREFIX-<name> without an account of its own, each as itself; revoking it disconnects them', async (t) => {
  const s = await setup(t);
  const group = s.creds.issue('pool-*', 'proplet');
  const own = s.creds.issue('pool-owned', 'proplet');
  const m = await managerClient(s);
  const a = await s.connect('pool-7d9f-abcde', group);
  const b = await s.connect('pool-7d9f-fghij', group);
  // each is a proplet of its own id: its own alive passes, one naming its sibling does not
  await a.publishAsync(topic(S, 'proplet.alive', 'pool-7d9f-abcde'), alive('pool-7d9f-abcde'), { qos: 1 });
  await nextMessage(m.c, (tp) => tp === topic(S, 'proplet.alive', 'pool-7d9f-abcde'));
  b.publish(topic(S, 'proplet.alive'), alive('pool-7d9f-abcde'), { qos: 1 });
  await closed(b);
  t.is(s.broker.dropped().sender_mismatch, 1);
  // not under the prefix, the bare prefix, and an id with an account of its own: refused with the group secret
  for (const user of ['other-1', 'pool-', 'pool', 'pool-owned']) await t.throwsAsync(s.connect(user, group), undefined, user);
  await s.connect('pool-owned', own);
  t.throws(() => s.creds.issue('pool*', 'proplet'), { message: /only allowed at the end of a proplet group account/ });
  t.throws(() => s.creds.issue('mgr-*', 'manager'), { message: /only allowed at the end of a proplet group account/ });
  // revocation: the group's clients go, the one with its own account stays
  s.creds.delete('pool-*');
  t.is(s.broker.disconnect('pool-*'), 1);
  await closed(a);
  await t.throwsAsync(s.connect('pool-7d9f-abcde', group));
});
