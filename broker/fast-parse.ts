// A shortcut in front of Aedes' parser (mqtt-packet) for what a fleet sends
// most: whole PUBLISH and PINGREQ packets, and the CONNECT that opens each of
// its connections. mqtt-packet appends every chunk to a buffer list, walks four
// named states per packet through string-keyed dispatch, and calls `debug()` a
// dozen times per packet, enabled or not: with heartbeats, some 12 % of the JS
// samples of the broker's process; in a connect storm 7-8 % of its samples,
// half of them in _parseConnect (each field of a CONNECT goes through the
// list's slice, a string then through toString). When the parser sits at a
// packet boundary with nothing buffered, the chunk's leading complete PUBLISH,
// PINGREQ and MQTT 3.1/3.1.1 CONNECT packets are read here into the same
// Packet objects, field for field (payload, will payload and password views of
// the chunk, as the buffer list gives), and emitted the same way; everything
// else (a partial packet, any other type, MQTT 5, anything mqtt-packet would
// refuse or read differently) is handed to mqtt-packet's own parse from that
// byte on, so its errors and its state stay its own.
// test/broker-parse.test.ts compares both on random and adversarial streams.

import type { EventEmitter } from 'node:events';

interface PacketLike {
  cmd: string | null;
  retain: boolean;
  qos: number;
  dup: boolean;
  length: number;
  topic: string | null;
  payload: Buffer | null;
  messageId?: number;
}

/** The fields mqtt-packet's _parseConnect adds, in the order it adds them. */
interface ConnectLike extends PacketLike {
  protocolId?: string;
  protocolVersion?: number;
  bridgeMode?: boolean;
  will?: { retain: boolean; qos: number; topic: string; payload: Buffer };
  clean?: boolean;
  keepalive?: number;
  clientId?: string;
  username?: string;
  password?: Buffer;
}

/** The part of mqtt-packet's Parser this reads. */
export interface MqttParser extends EventEmitter {
  settings: { protocolVersion?: number } | undefined;
  error: Error | null;
  packet: PacketLike;
  _list: { length: number };
  _stateCounter: number;
  parse(buf: Buffer): number;
}

const CONNECT = 1;
const PUBLISH = 3;
const PINGREQ = 12;

type Parse = (this: MqttParser, buf: Buffer) => number;
/** mqtt-packet's own parse (Parser.prototype.parse), found on the first parser given. */
let original: Parse | undefined;

// Chunks handed to parse() while a packet of an earlier chunk is being emitted
// (Aedes reads on from its done callback, which can run synchronously): they
// wait for the rest of that chunk, in order. (mqtt-packet itself would re-enter
// its state machine in the middle of the packet it is emitting; Aedes avoids
// that only because a socket has no new bytes within one turn.)
const WAITING = Symbol('propeller.parseWaiting');
type Shortcut = MqttParser & { [WAITING]: Buffer[] | null };

/** Busy with nothing waiting: no array per chunk until a nested call needs one. */
const BUSY: Buffer[] = Object.freeze([]) as unknown as Buffer[];

// Between packets, a parser's Packet under construction and its buffer list
// are empty, and on an idle connection they stay so for hours: then they are
// shared ones (one of each, frozen), some 160 bytes less per connection, and
// a parser gets its own again before mqtt-packet's parse runs.
let idlePacket: PacketLike | undefined;
let idleList: { length: number } | undefined;

/** Lends the shared empty Packet and list to a parser between packets (of the classes the first parser had). */
function rest(p: MqttParser): void {
  if (p.packet === idlePacket || !atBoundary(p)) return;
  if (!idlePacket) {
    const list = new (p._list.constructor as new () => { length: number; _bufs?: unknown[] })();
    if (list.length !== 0) return;
    if (Array.isArray(list._bufs)) Object.freeze(list._bufs);
    idleList = Object.freeze(list);
    idlePacket = Object.freeze(new (p.packet.constructor as new () => PacketLike)());
  }
  if (p.packet.constructor !== idlePacket.constructor || p._list.constructor !== idleList!.constructor) return;
  p.packet = idlePacket;
  p._list = idleList!;
}

/** Gives a new parser the shared empty Packet and list, once the first parser has made them; false before. */
export function startIdle(p: MqttParser): boolean {
  if (!idlePacket) return false;
  p.packet = idlePacket;
  p._list = idleList!;
  return true;
}

/** Gives a parser its own Packet and list again, before mqtt-packet's parse writes to them. */
function wake(p: MqttParser): void {
  if (p.packet === idlePacket) p.packet = new (idlePacket.constructor as new () => PacketLike)();
  if (p._list === idleList) p._list = new (idleList.constructor as new () => { length: number })();
}

function fastParse(this: Shortcut, buf: Buffer): number {
  const waiting = this[WAITING];
  if (waiting) {
    if (waiting === BUSY) this[WAITING] = [buf];
    else waiting.push(buf);
    return this._list.length;
  }
  this[WAITING] = BUSY;
  try {
    let next: Buffer | undefined = buf;
    while (next) {
      parseChunk(this, next, original!);
      const q = this[WAITING]!;
      next = q === BUSY ? undefined : q.shift();
    }
    rest(this);
  } finally {
    this[WAITING] = null;
  }
  return this._list.length;
}

function parseChunk(p: MqttParser, buf: Buffer, original: Parse): void {
  const n = buf.length;
  let i = 0;
  while (i < n && atBoundary(p)) {
    const b0 = buf[i]!;
    const type = b0 >> 4;
    if (type !== PUBLISH && type !== PINGREQ && type !== CONNECT) break;
    // remaining length: a variable byte integer of at most 4 bytes
    let len = 0;
    let mult = 1;
    let j = i + 1;
    let complete = false;
    for (let k = 0; k < 4 && j < n; k++) {
      const b = buf[j++]!;
      len += (b & 0x7f) * mult;
      mult *= 128;
      if ((b & 0x80) === 0) {
        complete = true;
        break;
      }
    }
    if (!complete) break;
    const end = j + len;
    if (end > n) break;
    const Packet = p.packet.constructor as new () => ConnectLike;
    const packet = new Packet();
    if (type === CONNECT) {
      if (b0 !== 0x10 || !readConnect(packet, buf, j, end)) break;
      p.settings = packet; // as _parseConnect does: the version it names reads the packets after it
    } else if (type === PINGREQ) {
      if ((b0 & 0x0f) !== 0) break; // reserved flags: mqtt-packet's error
      packet.cmd = 'pingreq';
      packet.length = len;
    } else {
      const qos = (b0 >> 1) & 3;
      if (qos === 3 || len < 2) break;
      const topicEnd = j + 2 + buf.readUInt16BE(j);
      const idEnd = qos > 0 ? topicEnd + 2 : topicEnd;
      if (idEnd > end) break; // mqtt-packet refuses it, or reads the id from the next packet: its call
      packet.cmd = 'publish';
      packet.retain = (b0 & 1) !== 0;
      packet.qos = qos;
      packet.dup = (b0 & 8) !== 0;
      packet.length = len;
      packet.topic = buf.toString('utf8', j + 2, topicEnd);
      if (qos > 0) packet.messageId = buf.readUInt16BE(topicEnd);
      packet.payload = buf.subarray(idEnd, end);
    }
    i = end;
    p.emit('packet', packet);
  }
  if (i < n) {
    wake(p);
    original.call(p, i === 0 ? buf : buf.subarray(i));
  }
}

// The protocol name and level an MQTT 3.1.1 and an MQTT 3.1 CONNECT start
// with. mqtt-packet takes either name with level 3, 4 or 5; other pairings are
// left to it, as MQTT 5 is (its properties).
const MQTT_311 = Buffer.from('\x00\x04MQTT\x04', 'latin1');
const MQTT_31 = Buffer.from('\x00\x06MQIsdp\x03', 'latin1');

/**
 * Reads the body buf[at, end) of an MQTT 3.1/3.1.1 CONNECT into `packet` as
 * mqtt-packet's _parseConnect does (strings decoded as UTF-8 without checks,
 * bad bytes as U+FFFD, as it does; will payload and password views of the
 * chunk). False, with nothing read, when mqtt-packet would refuse it or when
 * it is odd: a password without a user name, a will of QoS 3 (mqtt-packet
 * reads both as given), bytes after the last field (it skips them); Aedes
 * then gets whatever mqtt-packet makes of it.
 */
function readConnect(packet: ConnectLike, buf: Buffer, at: number, end: number): boolean {
  const name = startsWith(buf, at, end, MQTT_311) ? MQTT_311 : startsWith(buf, at, end, MQTT_31) ? MQTT_31 : undefined;
  if (!name) return false;
  const v = at + name.length - 1; // the level; bit 7: a bridge, mqtt-packet's bridgeMode (its SUBSCRIBE parser reads it too)
  if (v + 4 > end) return false; // flags and keepalive
  const level = buf[v]!;
  const flags = buf[v + 1]!;
  const will = (flags & 0x04) !== 0;
  const willQos = (flags >> 3) & 3;
  // reserved bit, will QoS or retain without a will: mqtt-packet's errors; will QoS 3, password without user name: odd
  if ((flags & 0x01) !== 0 || (will ? willQos === 3 : (flags & 0x38) !== 0) || (flags & 0xc0) === 0x40) return false;
  const idEnd = field(buf, v + 4, end);
  const topicEnd = will ? field(buf, idEnd, end) : idEnd;
  const payloadEnd = will ? field(buf, topicEnd, end) : topicEnd;
  const userEnd = (flags & 0x80) !== 0 ? field(buf, payloadEnd, end) : payloadEnd;
  const passEnd = (flags & 0x40) !== 0 ? field(buf, userEnd, end) : userEnd;
  if (passEnd !== end) return false; // a field past the packet (-1), or bytes after the last
  packet.cmd = 'connect';
  packet.length = end - at;
  packet.protocolId = name === MQTT_311 ? 'MQTT' : 'MQIsdp';
  packet.protocolVersion = level & 0x7f;
  if (level & 0x80) packet.bridgeMode = true;
  if (will) packet.will = { retain: (flags & 0x20) !== 0, qos: willQos, topic: buf.toString('utf8', idEnd + 2, topicEnd), payload: buf.subarray(topicEnd + 2, payloadEnd) };
  packet.clean = (flags & 0x02) !== 0;
  packet.keepalive = buf.readUInt16BE(v + 2);
  packet.clientId = buf.toString('utf8', v + 6, idEnd);
  if ((flags & 0x80) !== 0) packet.username = buf.toString('utf8', payloadEnd + 2, userEnd);
  if ((flags & 0x40) !== 0) packet.password = buf.subarray(userEnd + 2, passEnd);
  return true;
}

/** Whether buf[at, end) starts with `bytes`, the last one (the level) read without bit 7. */
function startsWith(buf: Buffer, at: number, end: number, bytes: Buffer): boolean {
  if (at + bytes.length > end) return false;
  const last = bytes.length - 1;
  for (let k = 0; k < last; k++) if (buf[at + k] !== bytes[k]) return false;
  return (buf[at + last]! & 0x7f) === bytes[last];
}

/** Where the field with a 2-byte length at `pos` ends, or -1 when it runs past `end` (or pos is -1). */
function field(buf: Buffer, pos: number, end: number): number {
  if (pos < 0 || pos + 2 > end) return -1;
  const e = pos + 2 + buf.readUInt16BE(pos);
  return e > end ? -1 : e;
}

/** mqtt-packet is between packets, with nothing buffered and no error, on MQTT 3.1/3.1.1. */
function atBoundary(p: MqttParser): boolean {
  return p._stateCounter === 0 && p._list.length === 0 && p.error === null && p.packet.length === -1 && p.settings?.protocolVersion !== 5;
}

/** Puts the shortcut in front of one parser (Aedes' parser of one client). */
export function fastPublishParse(parser: MqttParser): void {
  const own = (Object.getPrototypeOf(parser) as { parse?: Parse }).parse;
  if (typeof own !== 'function' || (original && own !== original)) return; // another parser than the one this was written against
  original = own;
  (parser as Shortcut)[WAITING] = null;
  parser.parse = fastParse as Parse;
  rest(parser);
}
