// A shortcut in front of Aedes' parser (mqtt-packet) for what a fleet sends
// most: whole PUBLISH and PINGREQ packets. mqtt-packet appends every chunk to a
// buffer list, walks four named states per packet through string-keyed
// dispatch, and calls `debug()` a dozen times per packet, enabled or not: with
// heartbeats, some 12 % of the JS samples of the broker's process. When the parser sits at a
// packet boundary with nothing buffered, the chunk's leading complete PUBLISH
// and PINGREQ packets are read here into the same Packet objects, field for
// field (payload a view of the chunk, as the buffer list gives), and emitted
// the same way; everything else (a partial packet, any other type, anything
// mqtt-packet would refuse or read differently) is handed to mqtt-packet's own
// parse from that byte on, so its errors and its state stay its own.
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

/** The part of mqtt-packet's Parser this reads. */
export interface MqttParser extends EventEmitter {
  settings: { protocolVersion?: number } | undefined;
  error: Error | null;
  packet: PacketLike;
  _list: { length: number };
  _stateCounter: number;
  parse(buf: Buffer): number;
}

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
    if (type !== PUBLISH && type !== PINGREQ) break;
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
    const Packet = p.packet.constructor as new () => PacketLike;
    const packet = new Packet();
    if (type === PINGREQ) {
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
  if (i < n) original.call(p, i === 0 ? buf : buf.subarray(i));
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
}
