// The packet guard: reads only the MQTT fixed headers of what a connection
// (TCP, TLS or WebSocket) hands to Aedes. Aedes' parser buffers a packet until
// it is complete, whatever length its header announces (up to 256 MiB); the
// guard refuses a packet as soon as its header announces more than the limit,
// before any of its body is buffered, and refuses byte streams that cannot be
// MQTT 3.1.1 (reserved packet types, a first packet that is not CONNECT, a
// length field longer than 4 bytes). Aedes sees the same bytes, unchanged,
// otherwise.
//
// It sits on the connection's own stream rather than being a stream between
// it and Aedes: Aedes pulls bytes with `read()`, and the guard's `read()`
// scans what it returns. A Duplex in between cost every connection some
// 1.5 KiB of heap and every written chunk a second pass through Node's
// Writable machinery.

import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';

export type Violation =
  | { reason: 'too_large'; size: number; limit: number }
  | { reason: 'malformed_packet'; detail: string };

/** What the guard asks its owner; one object serves every connection. */
export interface GuardPolicy<S extends GuardState> {
  /** The largest packet allowed now (fixed header included); read once per packet. */
  limit(state: S, first: boolean): number;
  /** Called once, before the connection is destroyed. */
  violation(state: S, v: Violation): void;
  /** Called when the stream is destroyed, before its handle closes (`err`: why, if for an error). */
  destroying?(state: S, err: Error | undefined): void;
}

const HEADER = 0;
const LENGTH = 1;
const BODY = 2;

const GUARD = Symbol('propeller.guard');

type Guarded = Duplex & { [GUARD]: GuardState };

/**
 * The guard's state for one connection. The broker extends it with what it
 * keeps per connection, so that a connection costs one object of ours.
 */
export class GuardState {
  private state = HEADER;
  private first = true;
  private firstOfPacket = true;
  private len = 0;
  private mult = 1;
  private lenBytes = 0;
  private skip = 0;
  private failed = false;
  /** A cork of ours is on the socket until the setImmediate that lifts it. */
  private held = false;
  /** When the stream last gave bytes, in whole ms of performance.now() (an integer: no boxed double per connection): its owner's keepalive clock. */
  lastRead = 0;

  constructor(
    readonly stream: Duplex,
    private readonly policy: GuardPolicy<GuardState>,
  ) {}

  /** The first violation in `chunk`, if any; the state moves past the headers and bodies it holds. */
  scan(chunk: Buffer): Violation | undefined {
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.state === BODY) {
        const take = Math.min(this.skip, n - i);
        this.skip -= take;
        i += take;
        if (this.skip === 0) this.state = HEADER;
        continue;
      }
      const b = chunk[i++]!;
      if (this.state === HEADER) {
        const type = b >> 4;
        if (type === 0 || type === 15) return { reason: 'malformed_packet', detail: `reserved packet type ${type}` };
        if (this.first && type !== 1) return { reason: 'malformed_packet', detail: `first packet has type ${type}, not CONNECT` };
        this.firstOfPacket = this.first;
        this.first = false;
        this.state = LENGTH;
        this.len = 0;
        this.mult = 1;
        this.lenBytes = 0;
        continue;
      }
      // LENGTH: variable byte integer, at most 4 bytes
      this.len += (b & 0x7f) * this.mult;
      this.mult *= 128;
      this.lenBytes++;
      if (b & 0x80) {
        if (this.lenBytes >= 4) return { reason: 'malformed_packet', detail: 'remaining length longer than 4 bytes' };
        continue;
      }
      const size = 1 + this.lenBytes + this.len;
      const limit = this.policy.limit(this, this.firstOfPacket);
      if (size > limit) return { reason: 'too_large', size, limit };
      if (this.len === 0) {
        this.state = HEADER;
      } else {
        this.skip = this.len;
        this.state = BODY;
      }
    }
    return undefined;
  }

  /** Reads through the guard (Node's own read() of the stream's class, then the scan). */
  static read(this: Guarded, n?: number): Buffer | string | null {
    const g = this[GUARD];
    if (g.failed) return null;
    const chunk = (Object.getPrototypeOf(this) as Duplex).read.call(this, n) as Buffer | string | null;
    if (chunk === null) return null;
    g.lastRead = Math.ceil(performance.now());
    const v = g.scan(typeof chunk === 'string' ? Buffer.from(chunk) : chunk);
    if (!v) return chunk;
    // Nothing of this chunk reaches Aedes: the connection is gone.
    g.failed = true;
    try {
      g.policy.violation(g, v);
    } finally {
      this.destroy();
    }
    return null;
  }

  /**
   * Aedes writes each delivery from a setImmediate of its own (and
   * mqtt-packet uncorks on the next tick), so without this every delivered
   * packet was one writev system call. A socket stays corked from the first
   * write of an event-loop turn until a setImmediate queued then, which runs
   * after every delivery of that turn: one writev per socket per turn.
   */
  static write(this: Guarded, chunk: unknown, encoding?: unknown, cb?: unknown): boolean {
    const g = this[GUARD];
    if (!g.held && !this.destroyed) {
      g.held = true;
      this.cork();
      setImmediate(GuardState.release, this);
    }
    return (Object.getPrototypeOf(this) as { write: (...a: unknown[]) => boolean }).write.call(this, chunk, encoding, cb);
  }

  private static release(s: Guarded): void {
    const g = s[GUARD];
    if (!g.held) return;
    g.held = false;
    if (!s.destroyed) s.uncork();
  }

  static destroy(this: Guarded, err?: Error): Duplex {
    const g = this[GUARD];
    g.policy.destroying?.(g, err);
    // What was written before the close (a refusing CONNACK) still goes out.
    GuardState.release(this);
    return (Object.getPrototypeOf(this) as Duplex).destroy.call(this, err);
  }
}


/**
 * Puts the guard on `stream` (the stream Aedes is then given): its reads are
 * scanned; a socket's writes (TCP or TLS) are also batched per event-loop
 * turn. A WebSocket stream sends chunk after chunk, asynchronously, so
 * batching would not spare it anything.
 */
export function guard(stream: Duplex, state: GuardState): void {
  (stream as Guarded)[GUARD] = state;
  stream.read = GuardState.read as Duplex['read'];
  stream.destroy = GuardState.destroy as Duplex['destroy'];
  if (stream instanceof Socket) stream.write = GuardState.write as Duplex['write'];
}

/** The guard state put on `stream`, if any. */
export function guardOf(stream: unknown): GuardState | undefined {
  return stream ? (stream as Partial<Guarded>)[GUARD] : undefined;
}
