// A transparent stream between a connection (TCP, TLS or WebSocket) and
// Aedes that reads only MQTT fixed headers. Aedes' parser buffers a packet
// until it is complete, whatever length its header announces (up to 256 MiB);
// the guard refuses a packet as soon as its header announces more than the
// limit, before any of its body is buffered, and refuses byte streams that
// cannot be MQTT 3.1.1 (reserved packet types, a first packet that is not
// CONNECT, a length field longer than 4 bytes). Aedes sees the same bytes,
// unchanged, otherwise.

import { Socket } from 'node:net';
import { Duplex } from 'node:stream';

export type Violation =
  | { reason: 'too_large'; size: number; limit: number }
  | { reason: 'malformed_packet'; detail: string };

export interface GuardOptions {
  /** The largest packet allowed now (fixed header included); read once per packet. */
  limit: (first: boolean) => number;
  /** Called once, before the connection is destroyed. */
  onViolation: (v: Violation) => void;
}

const HEADER = 0;
const LENGTH = 1;
const BODY = 2;

export class PacketGuard extends Duplex {
  private state = HEADER;
  private first = true;
  private firstOfPacket = true;
  private len = 0;
  private mult = 1;
  private lenBytes = 0;
  private skip = 0;
  private failed = false;

  constructor(
    readonly inner: Duplex,
    private readonly opts: GuardOptions,
  ) {
    super({ allowHalfOpen: false });
    this.batch = inner instanceof Socket;
    inner.on('data', (chunk: Buffer) => this.onData(chunk));
    inner.on('end', () => this.push(null));
    inner.on('error', (err) => this.destroy(err));
    inner.on('close', () => {
      if (!this.destroyed) this.destroy();
    });
  }

  private onData(chunk: Buffer): void {
    if (this.failed || this.destroyed) return;
    if (typeof chunk === 'string') chunk = Buffer.from(chunk);
    const v = this.scan(chunk);
    if (v) {
      // Nothing of this chunk reaches Aedes: the connection is gone.
      this.failed = true;
      this.inner.pause();
      try {
        this.opts.onViolation(v);
      } finally {
        this.destroy();
      }
      return;
    }
    if (!this.push(chunk)) this.inner.pause();
  }

  private scan(chunk: Buffer): Violation | undefined {
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
      const limit = this.opts.limit(this.firstOfPacket);
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

  override _read(): void {
    this.inner.resume();
  }

  /**
   * Aedes writes each delivery from a setImmediate of its own (and
   * mqtt-packet uncorks on the next tick), so without this every delivered
   * packet was one writev system call. The connection stays corked from the
   * first write of an event-loop turn until a setImmediate queued then, which
   * runs after every delivery of that turn: one writev per socket per turn.
   */
  private corked = false;
  private readonly batch: boolean;
  private readonly flush = (): void => {
    this.corked = false;
    if (!this.inner.destroyed) this.inner.uncork();
  };

  private hold(): void {
    // Only sockets write a corked batch in one go (_writev); a WebSocket stream sends chunk after chunk, asynchronously.
    if (this.corked || !this.batch) return;
    this.corked = true;
    this.inner.cork();
    setImmediate(this.flush);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.inner.destroyed) return cb(new Error('connection closed'));
    this.hold();
    if (this.inner.write(chunk)) cb();
    else this.inner.once('drain', () => cb());
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    if (this.inner.destroyed) return cb(new Error('connection closed'));
    const inner = this.inner;
    this.hold();
    if (!this.batch) inner.cork();
    let ok = true;
    for (const c of chunks) ok = inner.write(c.chunk) && ok;
    if (!this.batch) inner.uncork();
    if (ok) cb();
    else inner.once('drain', () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.inner.end();
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // What was written before the close (a refusing CONNACK) still goes out, as it did unbatched.
    if (this.corked) this.flush();
    this.inner.destroy();
    cb(err);
  }
}
