// The broker's PUBLISH/PINGREQ/CONNECT shortcut in front of mqtt-packet's
// parser (broker/fast-parse.ts) against mqtt-packet alone: the same byte
// streams, cut into the same chunks, must give the same packets (class, every
// field, in order), the same errors and the same parser settings; valid
// streams, random bytes, every corruption of a CONNECT and packets mqtt-packet
// refuses or reads oddly. Then over TCP: a broker still delivers what a client
// sends in one write, several packets per chunk and packets split across chunks.

import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import { fastPublishParse, type MqttParser } from '../broker/fast-parse.ts';
import { base, propletSubscriptions, topic } from '../topics/index.ts';
import { scope as S, startStack, until } from './helpers/stack.ts';

type Event = ['packet', Record<string, unknown>] | ['error', string] | ['end', Record<string, unknown>];
/** The events, and the cmds of the packets the shortcut emitted. */
type Events = Event[] & { shortcut: string[] };

/** Own enumerable fields in order (a Packet's shape) and its class, nested ones too, Buffers as bytes. */
function plain(v: unknown): unknown {
  if (Buffer.isBuffer(v)) return `bytes:${v.toString('hex')}`;
  if (Array.isArray(v)) return v.map(plain);
  if (v === null || typeof v !== 'object') return v;
  return { class: v.constructor?.name, ...Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)])) };
}

function events(parser: MqttParser): Events {
  // not enumerable: deepEqual compares the events only
  const out = Object.defineProperty([] as Event[], 'shortcut', { value: [] as string[] }) as Events;
  parser.on('packet', (p: Record<string, unknown>) => {
    // and what the parser reads the next packets by: _parseConnect's packet
    out.push(['packet', { ...(plain(p) as object), settingsIsPacket: parser.settings === p }]);
    // mqtt-packet emits the packet it holds as its current one; the shortcut's never is
    if ((parser.packet as unknown) !== p) out.shortcut.push(p.cmd as string);
  });
  parser.on('error', (e: Error) => out.push(['error', e.message]));
  return out;
}

/** What the parser holds once a stream is fed: bytes buffered, error, settings. */
function end(parser: MqttParser): Event {
  return ['end', { buffered: parser._list.length, error: parser.error?.message ?? null, settings: plain(parser.settings) }];
}

function both(version = 4): { slow: MqttParser; fast: MqttParser; a: Events; b: Events } {
  const slow = mqttPacket.parser({ protocolVersion: version }) as unknown as MqttParser;
  const fast = mqttPacket.parser({ protocolVersion: version }) as unknown as MqttParser;
  fastPublishParse(fast);
  return { slow, fast, a: events(slow), b: events(fast) };
}

/** Feeds `stream` to both parsers in the same chunks; returns both event lists, each ending with the parser's state. */
function feed(stream: Buffer, cuts: number[], version = 4): { a: Events; b: Events } {
  const { slow, fast, a, b } = both(version);
  let at = 0;
  for (const c of [...cuts.filter((x) => x > 0 && x < stream.length).sort((x, y) => x - y), stream.length]) {
    if (c <= at) continue;
    slow.parse(stream.subarray(at, c));
    fast.parse(stream.subarray(at, c));
    at = c;
  }
  a.push(end(slow));
  b.push(end(fast));
  return { a, b };
}

const gen = (p: object, protocolVersion = 4): Buffer => mqttPacket.generate(p as mqttPacket.Packet, { protocolVersion } as never);

const pick = <T>(rnd: () => number, xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;

/** A valid MQTT 3.1 or 3.1.1 CONNECT (now and then a bridge's), with or without will, user name and password, by mqtt-packet's own generator. */
function randomConnect(rnd: () => number): Buffer {
  const v = rnd() < 0.3 ? 3 : 4;
  const clientId = pick(rnd, v === 3 ? ['c', 'propeller-manager', 'ü日🙂', 'x'.repeat(300)] : ['', 'c', 'propeller-manager', 'ü日🙂', 'x'.repeat(300)]);
  const username = rnd() < 0.7 ? pick(rnd, ['', 'p1', 'proplet-ü', 'u'.repeat(20_000)]) : undefined;
  return gen({
    cmd: 'connect',
    protocolId: v === 4 ? 'MQTT' : 'MQIsdp',
    protocolVersion: v,
    ...(rnd() < 0.15 ? { bridgeMode: true } : {}),
    clientId,
    clean: clientId === '' || rnd() < 0.7,
    keepalive: pick(rnd, [0, 1, 60, 65_535]),
    ...(rnd() < 0.4 ? { will: { topic: pick(rnd, ['w', 'ü/日本/🙂', 'x'.repeat(300)]), payload: randomBytes(pick(rnd, [0, 1, 100, 20_000])), qos: Math.floor(rnd() * 3), retain: rnd() < 0.5 } } : {}),
    ...(username !== undefined ? { username } : {}),
    ...(username !== undefined && rnd() < 0.8 ? { password: randomBytes(pick(rnd, [0, 1, 43, 300])) } : {}),
  }, v);
}

function randomPacket(rnd: () => number): Buffer {
  const topics = ['m/propeller/c/control/messages/control/proplet/alive', 'a', 'ü/日本/🙂', 'x'.repeat(300)];
  switch (Math.floor(rnd() * 10)) {
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
    case 7:
      return randomConnect(rnd);
    case 8: // MQTT 5: mqtt-packet reads it, and the packets after it as MQTT 5
      return gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'v5', clean: true, keepalive: 10, properties: { sessionExpiryInterval: 9 } }, 5);
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
    t.true(a.some(([kind]) => kind === 'packet'));
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

/** A CONNECT's bytes as given: protocol name, level, flags, keepalive, then each field with its 2-byte length, then `extra`. */
function rawConnect(o: { name?: string; level?: number; flags: number; keepalive?: number; fields: (string | Buffer)[]; extra?: number[] }): Buffer {
  const field = (x: string | Buffer): Buffer => {
    const b = Buffer.from(x);
    return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b]);
  };
  const ka = o.keepalive ?? 60;
  const body = Buffer.concat([field(o.name ?? 'MQTT'), Buffer.from([o.level ?? 4, o.flags, ka >> 8, ka & 0xff]), ...o.fields.map(field), Buffer.from(o.extra ?? [])]);
  return withLength(body);
}

/** A CONNECT fixed header (remaining length as a variable byte integer) before `body`. */
function withLength(body: Buffer): Buffer {
  const len: number[] = [];
  let n = body.length;
  do {
    len.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n >>= 7;
  } while (n > 0);
  return Buffer.concat([Buffer.from([0x10, ...len]), body]);
}

/** The body of a CONNECT made by withLength (after its fixed header). */
function bodyOf(connect: Buffer): Buffer {
  let j = 1;
  while (connect[j]! & 0x80) j++;
  return connect.subarray(j + 1);
}

const USER = 0x80;
const PASS = 0x40;
const WILL = 0x04;
const CLEAN = 0x02;

test('whole MQTT 3.1/3.1.1 CONNECTs are read by the shortcut, into what mqtt-packet reads', (t) => {
  const cases: Buffer[] = [
    rawConnect({ flags: CLEAN | USER | PASS, fields: ['propeller-manager', 'propeller-manager', 'secret'] }),
    rawConnect({ flags: CLEAN, fields: [''] }), // empty client id, no credentials
    rawConnect({ name: 'MQIsdp', level: 3, flags: USER | PASS, keepalive: 0, fields: ['c31', 'u', ''] }), // 3.1, persistent session, empty password
    rawConnect({ name: 'MQIsdp', level: 3, flags: CLEAN, fields: [''] }), // 3.1 with an empty id: mqtt-packet reads it
    rawConnect({ level: 0x84, flags: CLEAN | USER | PASS, fields: ['bridge', 'u', 'p'] }), // a bridge: bridgeMode
    rawConnect({ name: 'MQIsdp', level: 0x83, flags: 0, fields: ['bridge31'] }),
    rawConnect({ flags: CLEAN | WILL | 0x20 | 0x10 | USER | PASS, keepalive: 65_535, fields: ['w', 'will/topic', Buffer.from('last words'), 'u', Buffer.from([0, 0xff, 0x80])] }), // will QoS 2, retained
    rawConnect({ flags: WILL | 0x08, fields: ['w1', '', ''] }), // will QoS 1, empty topic and payload
    rawConnect({ flags: CLEAN | USER | PASS, fields: ['ü日🙂', 'proplet-ü', Buffer.alloc(300, 7)] }), // multi-byte UTF-8
    rawConnect({ flags: CLEAN | USER | PASS | WILL, fields: [Buffer.from([0xc3, 0x28]), Buffer.from([0xff, 0xfe, 0x61]), Buffer.from([1]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xf0, 0x9f])] }), // invalid UTF-8: U+FFFD, as mqtt-packet decodes it
    rawConnect({ flags: CLEAN | USER | PASS, fields: ['x'.repeat(65_535), 'u'.repeat(65_535), Buffer.alloc(65_535, 1)] }), // longest strings, 4-byte remaining length
    Buffer.concat([Buffer.from([0x10, 0x80 | 13, 0x80, 0x00]), bodyOf(rawConnect({ flags: CLEAN, fields: ['c'] }))]), // a length (13) in more bytes than needed
  ];
  for (const [i, c] of cases.entries()) {
    for (const stream of [c, Buffer.concat([c, gen({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/+', qos: 1 }] }), gen({ cmd: 'pingreq' })])]) {
      const { a, b } = feed(stream, []);
      t.deepEqual(b, a, `case ${i}`);
      t.is(a[0]![0], 'packet', `case ${i}`);
      t.deepEqual(b.shortcut.slice(0, 1), ['connect'], `case ${i}: read by the shortcut`);
      t.deepEqual(a.shortcut, [], `case ${i}`);
    }
  }
  // what it read, beside mqtt-packet's own reading above
  const { fast, b } = both();
  const c = cases[6]!;
  fast.parse(c);
  const p = (b[0]![1] as Record<string, unknown>);
  t.like(p, { class: 'Packet', cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 65_535, clientId: 'w', username: 'u', password: 'bytes:00ff80', settingsIsPacket: true });
  t.deepEqual(p.will, { class: 'Object', retain: true, qos: 2, topic: 'will/topic', payload: `bytes:${Buffer.from('last words').toString('hex')}` });
  t.is(fast.settings?.protocolVersion, 4);
});

test("the will payload and the password are views of the chunk, as mqtt-packet's buffer list gives", (t) => {
  const c = rawConnect({ flags: CLEAN | WILL | USER | PASS, fields: ['v', 't', Buffer.from('payload'), 'u', Buffer.from('pass')] });
  const { slow, fast } = both();
  for (const [name, parser] of [['mqtt-packet', slow], ['shortcut', fast]] as const) {
    const got: Record<string, { password: Buffer; will: { payload: Buffer } }> = {};
    parser.once('packet', (p) => (got.p = p));
    parser.parse(c);
    t.is(got.p!.password.buffer, c.buffer, name);
    t.is(got.p!.will.payload.buffer, c.buffer, name);
    t.is(got.p!.password.byteOffset, c.byteOffset + c.length - 4, name);
  }
});

test('CONNECTs mqtt-packet refuses or reads oddly, and every corruption, truncation and extension of valid ones: the same as mqtt-packet alone', (t) => {
  const handedOver: [string, Buffer][] = [
    ['password without user name', rawConnect({ flags: CLEAN | PASS, fields: ['c', 'p'] })],
    ['will QoS 3', rawConnect({ flags: CLEAN | WILL | 0x18, fields: ['c', 't', 'p'] })],
    ['bytes after the password', rawConnect({ flags: CLEAN | USER | PASS, fields: ['c', 'u', 'p'], extra: [1, 2, 3] })],
    ['bytes after the client id', rawConnect({ flags: CLEAN, fields: ['c'], extra: [0] })],
    ['"MQTT" at level 3', rawConnect({ level: 3, flags: CLEAN, fields: ['c'] })],
    ['"MQIsdp" at level 4', rawConnect({ name: 'MQIsdp', level: 4, flags: CLEAN, fields: ['c'] })],
    ['MQTT 5', gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'v5', clean: true, keepalive: 10, properties: { sessionExpiryInterval: 9 } }, 5)],
    ['MQTT 5, a bridge', rawConnect({ level: 0x85, flags: CLEAN, fields: ['c'] })],
    ['reserved flag', rawConnect({ flags: CLEAN | 1, fields: ['c'] })],
    ['will retain without a will', rawConnect({ flags: CLEAN | 0x20, fields: ['c'] })],
    ['will QoS without a will', rawConnect({ flags: CLEAN | 0x08, fields: ['c'] })],
    ['header flags', Buffer.from([0x12, ...rawConnect({ flags: CLEAN, fields: ['c'] }).subarray(1)])],
    ['level 6', rawConnect({ level: 6, flags: CLEAN, fields: ['c'] })],
    ['protocol "mqtt"', rawConnect({ name: 'mqtt', flags: CLEAN, fields: ['c'] })],
    ['no client id', rawConnect({ flags: CLEAN, fields: [] })],
    ['remaining length 0', Buffer.from([0x10, 0])],
    ['client id past the packet', Buffer.concat([withLength(Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, CLEAN, 0, 60, 0, 5, 0x61])), gen({ cmd: 'pingreq' }), gen({ cmd: 'pingreq' })])],
    ['keepalive past the packet', Buffer.concat([withLength(Buffer.from([0, 4, 0x4d, 0x51, 0x54, 0x54, 4, CLEAN, 0])), Buffer.from([60, 0, 1, 0x61])])],
  ];
  const after = Buffer.concat([gen({ cmd: 'pingreq' }), gen({ cmd: 'publish', topic: 't', payload: Buffer.from('after'), qos: 0 })]);
  for (const [what, bad] of handedOver) {
    for (const stream of [bad, Buffer.concat([bad, after]), Buffer.concat([gen({ cmd: 'pingreq' }), bad, after])]) {
      for (const cuts of [[], [1], [2], [bad.length - 1]]) {
        const { a, b } = feed(stream, cuts);
        t.deepEqual(b, a, `${what}, cuts ${cuts}`);
        t.false(b.shortcut.includes('connect'), `${what}: left to mqtt-packet`);
      }
    }
  }
  const valid = [
    rawConnect({ flags: CLEAN | WILL | 0x28 | USER | PASS, fields: ['cid', 'w/t', Buffer.from('wp'), 'user', Buffer.from('pw')] }),
    rawConnect({ name: 'MQIsdp', level: 0x83, flags: USER, fields: ['c31', 'ü'] }),
    rawConnect({ flags: CLEAN, fields: [''] }),
  ];
  let compared = 0;
  for (const c of valid) {
    const body = bodyOf(c);
    const variants: Buffer[] = [];
    for (let k = 0; k < c.length; k++) {
      for (const x of new Set([0, 0xff, c[k]! ^ 0x01, c[k]! ^ 0x80, c[k]! ^ 0x40, (c[k]! + 1) & 0xff, (c[k]! - 1) & 0xff])) {
        const v = Buffer.from(c);
        v[k] = x;
        variants.push(v); // one byte changed
      }
      variants.push(c.subarray(0, k)); // cut short: mqtt-packet waits for the rest
    }
    for (let k = 0; k <= body.length + 3; k++) {
      variants.push(withLength(body.subarray(0, k))); // fields cut short, under a length that says so
      variants.push(withLength(Buffer.concat([body, Buffer.alloc(Math.max(0, k - body.length), 0x61)]))); // bytes after the last field
    }
    for (const v of variants) {
      for (const stream of [v, Buffer.concat([v, after])]) {
        for (const cuts of [[], [stream.length - 1]]) {
          const { a, b } = feed(stream, cuts);
          t.deepEqual(b, a, `${stream.toString('hex')}, cuts ${cuts}`);
          compared++;
        }
      }
    }
  }
  t.true(compared > 2000);
  for (let seed = 1; seed <= 2000; seed++) {
    const rnd = seeded(seed * 104_729);
    // a CONNECT header and length, then bytes near a CONNECT's
    const body = Buffer.from(Array.from({ length: Math.floor(rnd() * 40) }, (_, k) => (k < 8 && rnd() < 0.8 ? [0, 4, 0x4d, 0x51, 0x54, 0x54, 4, 0xc2][k]! : rnd() < 0.5 ? Math.floor(rnd() * 4) : Math.floor(rnd() * 256))));
    const stream = Buffer.concat([withLength(body), rnd() < 0.5 ? after : Buffer.alloc(0)]);
    const { a, b } = feed(stream, [Math.floor(rnd() * stream.length)]);
    t.deepEqual(b, a, `random seed ${seed}: ${stream.toString('hex')}`);
  }
});

test('a CONNECT then other packets, in one chunk and split across chunks: the same as mqtt-packet alone, the CONNECT by the shortcut when whole', (t) => {
  for (let seed = 1; seed <= 300; seed++) {
    const rnd = seeded(seed * 31);
    const connect = randomConnect(rnd);
    const stream = Buffer.concat([connect, ...Array.from({ length: Math.floor(rnd() * 6) }, () => randomPacket(rnd))]);
    const cuts = rnd() < 0.5 ? [] : Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => Math.floor(rnd() * stream.length));
    const { a, b } = feed(stream, cuts);
    t.deepEqual(b, a, `seed ${seed}`);
    if (!cuts.some((c) => c > 0 && c < connect.length)) t.is(b.shortcut[0], 'connect', `seed ${seed}: read by the shortcut`);
  }
});

test('between packets, parsers share one frozen empty Packet and buffer list; a partial packet gets its own, and the packet comes out whole', (t) => {
  const [p1, p2] = [0, 1].map(() => {
    const p = mqttPacket.parser({ protocolVersion: 4 }) as unknown as MqttParser;
    fastPublishParse(p);
    return p;
  }) as [MqttParser, MqttParser];
  t.is(p1.packet, p2.packet, 'shared from the start (not applied?)');
  t.is(p1._list, p2._list);
  t.true(Object.isFrozen(p1.packet) && Object.isFrozen(p1._list));
  const got: { topic: string; payload: Buffer }[] = [];
  p1.on('packet', (p: { topic: string; payload: Buffer }) => void got.push(p));
  const pub = mqttPacket.generate({ cmd: 'publish', topic: 'a/b', payload: Buffer.from('hello'), qos: 0, retain: false, dup: false });
  p1.parse(pub.subarray(0, 6));
  t.not(p1.packet, p2.packet, 'its own while a packet is partial');
  t.false(Object.isFrozen(p1.packet) || Object.isFrozen(p1._list));
  p1.parse(pub.subarray(6));
  t.deepEqual(got.map((p) => [p.topic, p.payload.toString()]), [['a/b', 'hello']]);
  t.is(p1.packet, p2.packet, 'shared again');
  t.is(p1._list, p2._list);
  p1.parse(pub);
  t.is(got.length, 2, 'a whole packet, by the shortcut');
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

/** A stack, a debug client collecting what `read` makes of each message on `filter`, and a raw socket to the broker for account `id`. */
async function rawClient(t: ExecutionContext, id: string, role: 'proplet' | 'manager', filter: string, read: (topic: string, payload: Buffer) => unknown) {
  const s = await startStack();
  t.teardown(() => s.close());
  const secret = s.creds.issue(id, role);
  const got: unknown[] = [];
  const watcher = await s.client(`${id}-watch`, 'debug');
  t.teardown(() => watcher.endAsync());
  await watcher.subscribeAsync(filter);
  watcher.on('message', (tp, payload) => got.push(read(tp, payload)));
  const sock = net.connect(s.broker.port, '127.0.0.1');
  t.teardown(() => sock.destroy());
  await new Promise((r) => sock.once('connect', r));
  return { s, secret, got, sock };
}

test('over TCP: many publishes in one write, and one split across writes, all delivered in order', async (t) => {
  const id = 'parse-p1';
  const { s, secret, got, sock } = await rawClient(t, id, 'proplet', `${topic(S, 'proplet.metrics')}/#`, (_t, payload) => JSON.parse(payload.toString()).cpu_percent);
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

test('over TCP: CONNECT with a will, SUBSCRIBE and PINGREQ in one write are all answered, and the will is published', async (t) => {
  const id = 'parse-m1';
  const { s, secret, got: wills, sock } = await rawClient(t, id, 'manager', `${base(S)}/cparse/#`, (tp, payload) => `${tp} ${payload.toString()}`);
  let got = Buffer.alloc(0);
  sock.on('data', (d: Buffer) => (got = Buffer.concat([got, d])));
  sock.write(Buffer.concat([
    gen({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw-ü', clean: true, keepalive: 0, username: id, password: Buffer.from(secret), will: { topic: `${base(S)}/cparse/will`, payload: Buffer.from('gone'), qos: 0, retain: false } }),
    gen({ cmd: 'subscribe', messageId: 5, subscriptions: [{ topic: `${base(S)}/cparse/echo`, qos: 0 }] }),
    gen({ cmd: 'pingreq' }),
  ]));
  await until(() => got.length >= 11, 'CONNACK, SUBACK and PINGRESP');
  // accepted; then QoS 0 granted and the pong, in the order Aedes finishes them (the SUBSCRIBE is asynchronous)
  const answers: string[] = [];
  for (let i = 0; i < got.length; i += 2 + got[i + 1]!) answers.push(got.subarray(i, i + 2 + got[i + 1]!).toString('hex')); // short packets: 1-byte lengths
  t.is(answers[0], '20020000');
  t.deepEqual(answers.slice(1).sort(), ['9003000500', 'd000']);
  sock.destroy();
  await until(() => wills.length >= 1, 'the will');
  t.deepEqual(wills, [`${base(S)}/cparse/will gone`]);
  t.deepEqual(s.broker.dropped(), {});
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
