// The broker's PUBLISH/PINGREQ shortcut in front of mqtt-packet's parser
// (broker/fast-parse.ts) against mqtt-packet alone: the same byte streams, cut
// into the same chunks, must give the same packets (every field, in order) and
// the same errors; valid streams, random bytes and packets mqtt-packet refuses
// or reads oddly. Then over TCP: a broker still delivers what a client sends
// in one write, several packets per chunk and packets split across chunks.

import test from 'ava';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import { fastPublishParse, type MqttParser } from '../broker/fast-parse.ts';
import { propletSubscriptions, topic } from '../topics/index.ts';
import { scope as S, startStack, until } from './helpers/stack.ts';

type Event = ['packet', Record<string, unknown>] | ['error', string];

function events(parser: MqttParser): Event[] {
  const out: Event[] = [];
  parser.on('packet', (p: Record<string, unknown>) => {
    // own enumerable fields in order (the Packet's shape), the payload as bytes
    out.push(['packet', Object.fromEntries(Object.entries(p).map(([k, v]) => [k, Buffer.isBuffer(v) ? `bytes:${v.toString('hex')}` : v]))]);
  });
  parser.on('error', (e: Error) => out.push(['error', e.message]));
  return out;
}

function both(version = 4): { plain: MqttParser; fast: MqttParser; a: Event[]; b: Event[] } {
  const plain = mqttPacket.parser({ protocolVersion: version }) as unknown as MqttParser;
  const fast = mqttPacket.parser({ protocolVersion: version }) as unknown as MqttParser;
  fastPublishParse(fast);
  return { plain, fast, a: events(plain), b: events(fast) };
}

/** Feeds `stream` to both parsers in the same chunks; returns both event lists. */
function feed(stream: Buffer, cuts: number[], version = 4): { a: Event[]; b: Event[] } {
  const { plain, fast, a, b } = both(version);
  let at = 0;
  for (const c of [...cuts.filter((x) => x > 0 && x < stream.length).sort((x, y) => x - y), stream.length]) {
    if (c <= at) continue;
    plain.parse(stream.subarray(at, c));
    fast.parse(stream.subarray(at, c));
    at = c;
  }
  return { a, b };
}

const gen = (p: object, protocolVersion = 4): Buffer => mqttPacket.generate(p as mqttPacket.Packet, { protocolVersion } as never);

function randomPacket(rnd: () => number): Buffer {
  const topics = ['m/propeller/c/control/messages/control/proplet/alive', 'a', 'ü/日本/🙂', 'x'.repeat(300)];
  switch (Math.floor(rnd() * 8)) {
    case 0:
    case 1:
    case 2: {
      const qos = Math.floor(rnd() * 3) as 0 | 1 | 2;
      const len = [0, 1, 29, 127, 128, 200, 16_384, 70_000][Math.floor(rnd() * 8)]!;
      return gen({ cmd: 'publish', topic: topics[Math.floor(rnd() * topics.length)], payload: randomBytes(len), qos, retain: rnd() < 0.2, dup: rnd() < 0.2, ...(qos ? { messageId: 1 + Math.floor(rnd() * 65_535) } : {}) });
    }
    case 3:
      return gen({ cmd: 'pingreq' });
    case 4:
      return gen({ cmd: 'puback', messageId: 1 + Math.floor(rnd() * 65_535) });
    case 5:
      return gen({ cmd: 'subscribe', messageId: 7, subscriptions: [{ topic: 'a/+', qos: 1 }] });
    case 6:
      return gen({ cmd: 'pingresp' });
    default:
      return gen({ cmd: 'disconnect' });
  }
}

function seeded(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

test('valid streams, cut anywhere: the same packets as mqtt-packet alone', (t) => {
  for (let seed = 1; seed <= 300; seed++) {
    const rnd = seeded(seed);
    const stream = Buffer.concat(Array.from({ length: 1 + Math.floor(rnd() * 12) }, () => randomPacket(rnd)));
    const cuts = Array.from({ length: Math.floor(rnd() * 6) }, () => Math.floor(rnd() * stream.length));
    const { a, b } = feed(stream, cuts);
    t.deepEqual(b, a, `seed ${seed}`);
    t.true(a.length > 0);
  }
});

test('refused and odd packets: the same errors and packets as mqtt-packet alone', (t) => {
  const pub = (b0: number, body: number[]): Buffer => Buffer.from([b0, body.length, ...body]);
  const cases: Buffer[] = [
    pub(0x36, [0, 1, 0x61, 0, 1, 9]), // QoS 3
    pub(0x30, [0, 5, 0x61]), // topic longer than the packet
    pub(0x30, [0]), // remaining length 1: no room for the topic length
    Buffer.from([0x30, 0]), // remaining length 0
    pub(0x32, [0, 1, 0x61]), // QoS 1 without a message id
    Buffer.concat([pub(0x32, [0, 1, 0x61, 0]), gen({ cmd: 'pingreq' })]), // half an id, the next packet after it
    Buffer.from([0xc1, 0]), // PINGREQ with reserved flags
    Buffer.from([0xc0, 1, 0]), // PINGREQ with a body
    Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]), // 5-byte length
    pub(0x30, [0, 2, 0xc3, 0x28, 1, 2]), // invalid UTF-8 in the topic
    pub(0x30, [0, 0, 1]), // empty topic
    Buffer.from([0x00, 0]), // reserved type 0
    Buffer.from([0xf0, 0]), // reserved type 15
  ];
  for (const [i, bad] of cases.entries()) {
    for (const stream of [bad, Buffer.concat([gen({ cmd: 'pingreq' }), bad, gen({ cmd: 'publish', topic: 't', payload: Buffer.from('after'), qos: 0 })])]) {
      for (const cuts of [[], [1], [2], [3]]) {
        const { a, b } = feed(stream, cuts);
        t.deepEqual(b, a, `case ${i}, cuts ${cuts}`);
      }
    }
  }
  for (let seed = 1; seed <= 2000; seed++) {
    const rnd = seeded(seed * 7919);
    // mostly PUBLISH and PINGREQ headers, so that the shortcut sees them
    const stream = Buffer.from(Array.from({ length: 1 + Math.floor(rnd() * 40) }, (_, k) => (k % 5 === 0 ? [0x30, 0x32, 0x34, 0x36, 0x3b, 0xc0, 0xc1][Math.floor(rnd() * 7)]! : Math.floor(rnd() * 256))));
    const { a, b } = feed(stream, [Math.floor(rnd() * stream.length)]);
    t.deepEqual(b, a, `random seed ${seed}: ${stream.toString('hex')}`);
  }
});

test('MQTT 5 parsers are left to mqtt-packet (properties)', (t) => {
  const stream = gen({ cmd: 'publish', topic: 't', payload: Buffer.from('x'), qos: 1, messageId: 3, properties: { contentType: 'text/plain' } }, 5);
  const { a, b } = feed(stream, [], 5);
  t.deepEqual(b, a);
  t.is((a[0]![1] as { properties?: unknown }).properties !== undefined, true);
});

test('a chunk handed over while a packet is being emitted waits for the rest of the chunk it came after', (t) => {
  const { fast, b } = both();
  const p = (s: string): Buffer => gen({ cmd: 'publish', topic: s, payload: Buffer.alloc(0), qos: 0 });
  let nested = false;
  fast.on('packet', () => {
    if (nested) return;
    nested = true;
    fast.parse(Buffer.concat([p('third'), p('fourth').subarray(0, 3)])); // Aedes reads on from a synchronous done callback
    fast.parse(p('fourth').subarray(3));
  });
  fast.parse(Buffer.concat([p('first'), p('second')]));
  t.deepEqual(
    b.map(([, x]) => (x as { topic: string }).topic),
    ['first', 'second', 'third', 'fourth'],
  );
});

test('over TCP: many publishes in one write, and one split across writes, all delivered in order', async (t) => {
  const s = await startStack();
  t.teardown(() => s.close());
  const id = 'parse-p1';
  const secret = s.creds.issue(id, 'proplet');
  const got: string[] = [];
  const watcher = await s.client('parse-watch', 'debug');
  t.teardown(() => watcher.endAsync());
  await watcher.subscribeAsync(`${topic(S, 'proplet.metrics')}/#`);
  watcher.on('message', (_t, payload) => got.push(JSON.parse(payload.toString()).cpu_percent));
  const sock = net.connect(s.broker.port, '127.0.0.1');
  t.teardown(() => sock.destroy());
  await new Promise((r) => sock.once('connect', r));
  sock.write(gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw', clean: true, keepalive: 0, username: id, password: Buffer.from(secret) }));
  await new Promise((r) => sock.once('data', r)); // CONNACK
  const metric = (n: number, qos: 0 | 1): Buffer => gen({ cmd: 'publish', topic: topic(S, 'proplet.metrics'), payload: Buffer.from(JSON.stringify({ proplet_id: id, cpu_percent: n })), qos, ...(qos ? { messageId: n + 1 } : {}) });
  sock.write(Buffer.concat([metric(1, 0), metric(2, 0), gen({ cmd: 'pingreq' }), metric(3, 0)]));
  const split = metric(4, 1);
  sock.write(split.subarray(0, 5));
  await until(() => got.length >= 3, 'three metrics');
  sock.write(split.subarray(5));
  await until(() => got.length >= 4, 'the split metric');
  t.deepEqual(got, [1, 2, 3, 4]);
  t.deepEqual(s.broker.dropped(), {});
  t.truthy(propletSubscriptions(S, id).length);
});

test("once a broker runs, mqtt-packet's parsers buffer in a plain BufferList, not a Duplex, from the start and after an error", async (t) => {
  const s = await startStack();
  t.teardown(() => s.close());
  const parser = mqttPacket.parser({ protocolVersion: 4 }) as unknown as MqttParser & { _list: object };
  t.is(typeof (parser._list as { pipe?: unknown }).pipe, 'undefined');
  const got: string[] = [];
  parser.on('packet', (p: { cmd: string; topic?: string }) => got.push(p.topic ?? p.cmd));
  parser.on('error', (e: Error) => got.push(`error: ${e.message}`));
  const stream = gen({ cmd: 'publish', topic: 'a/b', payload: Buffer.from('x'.repeat(200)), qos: 1, messageId: 9 });
  for (let i = 0; i < stream.length; i++) parser.parse(stream.subarray(i, i + 1));
  parser.parse(Buffer.from([0x36, 0]));
  parser.parse(gen({ cmd: 'pingreq' }));
  t.deepEqual(got, ['a/b', 'error: Packet must not have both QoS bits set to 1', 'pingreq']);
  t.is(typeof (parser._list as { pipe?: unknown }).pipe, 'undefined');
});
