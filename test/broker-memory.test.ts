// Memory under malformed and abusive input: what a refused or departed client
// leaves behind must not stay. Over real TCP against the broker and the control
// plane in this process; the heap and external memory are read after a full GC.

import test from 'ava';
import net from 'node:net';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import mqtt, { type MqttClient } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { CredentialStore, EmbeddedBroker } from '../broker/index.ts';
import { encode, encodeCbor } from '../protocol/index.ts';
import { flUpdateTopic, topic } from '../topics/index.ts';
import { scope as S, startStack, until, type Stack } from './helpers/stack.ts';

const gc = (() => {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
})();

const MiB = 1024 * 1024;

function footprint(): number {
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

let s: Stack;
test.before(async () => {
  s = await startStack();
  // mqtt.js loads its connection code on its first connect (some 8 MiB of heap): done here, so that a footprint holds only what the broker keeps
  await (await s.client('warm-up', 'debug')).endAsync();
});
test.after.always(async () => {
  await s?.close();
});

async function series(name: string): Promise<number> {
  const m = s.cp.metrics.registry.getSingleMetric(name);
  return m ? (await m.get()).values.length : 0;
}

test.serial('sessions a proplet account leaves behind hold nothing: 20 departed clean:false clients, 40 shared starts of 256 KiB', async (t) => {
  const secret = s.creds.issue('hoarder', 'proplet');
  const before = footprint();
  for (let i = 0; i < 20; i++) {
    // any client id, a persistent session, QoS 1 on the shared start topic: then gone
    const c = await mqtt.connectAsync(s.broker.url, { protocolVersion: 4, username: 'hoarder', password: secret, clientId: `hoard-${i}`, clean: false, reconnectPeriod: 0 });
    await c.subscribeAsync(topic(S, 'manager.start'), { qos: 1 });
    await c.endAsync(true);
  }
  const manager = await s.client('mgr-mem', 'manager');
  for (let i = 0; i < 40; i++) {
    const file = Buffer.alloc(256 * 1024, i);
    await manager.publishAsync(topic(S, 'manager.start'), encode('manager.start', { id: `t-${i}`, proplet_id: 'nobody', file }, 'cbor'), { qos: 1 });
  }
  const grown = (footprint() - before) / MiB;
  t.log(`footprint after the run: ${grown.toFixed(1)} MiB above the start (10 MiB of starts were published)`);
  t.true(grown < 4, `${grown.toFixed(1)} MiB still held`);
  // and none of the sessions was kept
  const again = mqtt.connect(s.broker.url, { protocolVersion: 4, username: 'hoarder', password: secret, clientId: 'hoard-0', clean: false, reconnectPeriod: 0 });
  const ack = await new Promise<{ sessionPresent: boolean }>((r) => again.once('connect', r));
  t.false(ack.sessionPresent, 'a proplet account gets no persistent session');
  await again.endAsync(true);
});

test.serial('malformed and abusive publishes: memory returns, metric series stay bounded, retained messages are not kept', async (t) => {
  const secret = s.creds.issue('noisy', 'proplet');
  const seriesBefore = { dropped: await series('propeller_mqtt_dropped_total'), rejected: await series('propeller_messages_rejected_total') };
  const before = footprint();
  // built one at a time, so that the test itself holds none of them afterwards
  const payloads: [string, () => Buffer, boolean][] = [];
  for (let i = 0; i < 30; i++) {
    // 30 attacker-chosen topics and payloads: duplicates, bombs, garbage, retained FL updates under fresh round ids
    payloads.push([topic(S, 'proplet.alive'), () => Buffer.from(`{"proplet_id":"noisy","proplet_id":"x${i}"}`), false]);
    payloads.push([`${topic(S, 'proplet.alive')}/x${i}/y`, () => Buffer.from('{}'), false]);
    payloads.push([topic(S, 'proplet.results'), () => Buffer.from(`{"proplet_id":"noisy","task_id":"t","stdout":"${'a'.repeat(3 * MiB)}${i}"}`), false]);
    payloads.push([topic(S, 'proplet.results'), () => encodeCbor(new Map<unknown, unknown>([[1, 'noisy'], [2, 't'], [5, Object.fromEntries(Array.from({ length: 20_000 }, (_, k) => [`k${k}-${i}`, k]))]])), false]);
  }
  for (let i = 0; i < 30; i++) {
    const update = encode('fl.update', { proplet_id: 'noisy', round_id: `round-${i}`, task_id: 't', model: Buffer.alloc(64 * 1024, i) }, 'cbor');
    payloads.push([flUpdateTopic(S, `round-${i}`, 'noisy'), () => update, true]);
  }
  let conn: MqttClient | undefined;
  for (const [tp, payload, retain] of payloads) {
    if (!conn?.connected) conn = await mqtt.connectAsync(s.broker.url, { protocolVersion: 4, username: 'noisy', password: secret, reconnectPeriod: 0 });
    const c = conn;
    let onClose!: () => void;
    const closed = new Promise<void>((r) => c.once('close', (onClose = () => r())));
    c.publish(tp, payload(), { qos: 0, retain });
    // a refused publish closes the connection; an accepted one is followed by a ping round trip
    await Promise.race([closed, new Promise<void>((r) => c.publish(topic(S, 'proplet.metrics', 'noisy'), '{"proplet_id":"noisy"}', { qos: 1 }, () => r()))]);
    c.off('close', onClose);
  }
  conn?.end(true);
  // retained FL updates were not kept: a new subscriber gets none
  const watcher = await s.client('mem-watch', 'debug');
  const retained: string[] = [];
  let marked = false;
  watcher.on('message', (tp, _p, packet) => {
    if (packet.retain) retained.push(tp);
    else if (tp === flUpdateTopic(S, 'marker', 'noisy')) marked = true;
  });
  await watcher.subscribeAsync(`m/${S.domain}/c/${S.channel}/messages/fl/#`, { qos: 1 });
  // retained messages come right after the SUBACK, before anything published later
  const manager = await s.client('mem-marker', 'manager');
  await manager.publishAsync(flUpdateTopic(S, 'marker', 'noisy'), '{}', { qos: 1 });
  await until(() => marked, 'the marker');
  t.deepEqual(retained, []);
  const grown = (footprint() - before) / MiB;
  t.log(`footprint after ${payloads.length} abusive publishes (~${((30 * 3 * MiB + 30 * 64 * 1024) / MiB).toFixed(0)} MiB sent): ${grown.toFixed(1)} MiB above the start`);
  t.true(grown < 8, `${grown.toFixed(1)} MiB still held`);
  t.true((await series('propeller_mqtt_dropped_total')) - seriesBefore.dropped <= 4, 'drop reasons are a fixed set');
  t.true((await series('propeller_messages_rejected_total')) - seriesBefore.rejected <= 4, 'reject reasons are a fixed set');
});

test.serial('an idle proplet connection costs the broker some 2 KiB of heap (under 6.5 KiB with the client socket beside it): its state is one object of its own, Aedes\' client a lean one', async (t) => {
  // Before: the packet guard was a Duplex of its own per connection, and deleting the
  // CONNECT's will from Aedes' client turned every client into a dictionary-mode object
  // (15 KiB per connection here, the client socket included; then 7.5 KiB with
  // Aedes' own clients, their timers, watchers and closures; some 5 now).
  const creds = new CredentialStore();
  const n = 300;
  const secrets = Array.from({ length: n + 1 }, (_, i) => creds.issue(`idle-${i}`, 'proplet'));
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, log: () => {} });
  t.teardown(() => broker.close());
  const socks: net.Socket[] = [];
  const open = (i: number): Promise<void> =>
    new Promise((resolve, reject) => {
      const connect = mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: `idle-${i}`, clean: true, keepalive: 0, username: `idle-${i}`, password: Buffer.from(secrets[i]!) });
      const s = net.connect(broker.port, '127.0.0.1', () => s.write(connect));
      socks.push(s);
      s.once('data', (d: Buffer) => (d[0] === 0x20 && d[3] === 0 ? resolve() : reject(new Error(`CONNACK ${d.toString('hex')}`))));
      s.once('error', reject);
    });
  t.teardown(() => socks.forEach((s) => s.destroy()));
  await open(n); // the first CONNACK allocates what every later one shares
  const before = footprint();
  for (let i = 0; i < n; i++) await open(i);
  await until(() => broker.connectedClients === n + 1, 'every connection authenticated');
  const perConnection = (footprint() - before) / n / 1024;
  t.log(`${perConnection.toFixed(1)} KiB of heap per idle connection, broker and client socket together`);
  t.true(perConnection < 6.5, `${perConnection.toFixed(1)} KiB per connection`);
});

test.serial("a connection's parser buffers partial packets in a plain buffer list, not a Duplex stream of its own", async (t) => {
  // mqtt-packet's parser keeps a `bl` BufferListStream per connection (two stream
  // states and an emitter nobody uses, ~1 KiB); the broker swaps in the plain BufferList.
  const secret = s.creds.issue('lister', 'proplet');
  const c = await mqtt.connectAsync(s.broker.url, { protocolVersion: 4, username: 'lister', password: secret, clientId: 'lister-1', reconnectPeriod: 0 });
  t.teardown(() => c.end(true));
  const clients = (s.broker as unknown as { aedes: { clients: Record<string, { _parser: { _list: object } }> } }).aedes.clients;
  const parser = clients['lister/lister-1']!._parser;
  t.false('pipe' in parser._list, 'no stream methods');
  t.false('on' in parser._list, 'no event emitter');
  // and it still parses what follows CONNECT
  await c.subscribeAsync(topic(S, 'manager.start', 'lister'), { qos: 1 });
});

test.serial('devices that reconnect under fresh client ids leave no outgoing queue behind once their QoS 1 deliveries are acknowledged', async (t) => {
  const secret = s.creds.issue('roamer', 'proplet');
  const manager = await s.client('mgr-roam', 'manager');
  const startTopic = topic(S, 'manager.start', 'roamer');
  const queuesBefore = s.broker.outgoingQueues;
  for (let i = 0; i < 30; i++) {
    // a fresh client id each time, as Propeller's proplets connect
    const c = await mqtt.connectAsync(s.broker.url, { protocolVersion: 4, username: 'roamer', password: secret, clientId: `roam-${i}-${Date.now()}`, reconnectPeriod: 0 });
    await c.subscribeAsync(startTopic, { qos: 1 });
    const got = new Promise<void>((r) => c.once('message', () => r()));
    await manager.publishAsync(startTopic, encode('manager.start', { id: `roam-${i}`, proplet_id: 'roamer', file: Buffer.from([0, 97, 115, 109, 1, 0, 0, 0]) }, 'json'), { qos: 1 });
    await got; // mqtt.js acknowledges before it emits
    await c.endAsync();
  }
  await until(() => s.broker.outgoingQueues === queuesBefore, 'every acknowledged queue gone');
  t.is(s.broker.outgoingQueues, queuesBefore);
  await manager.endAsync();
});
