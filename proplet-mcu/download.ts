// Module download in registry chunks, as a device does it: a buffer pre-sized
// from the module size, a bitmap of the chunks held, at most `window` chunks
// asked for and not yet arrived, CRC-32 checked per chunk (a bad one is asked
// again by index), and the SHA-256 of the whole module checked against the
// digest before anyone may run it. What arrived is kept across a reconnect:
// resume() asks again for what is missing, from the first missing index.
//
// The class does no I/O: `request` publishes a chunk request, and the owner
// feeds every chunk for this digest to onChunk().

import { crc32, sha256Digest, type Chunk } from '../protocol/index.ts';

export type Ask = { next: number; window: number } | { missing: number[] };

export interface DownloadFaults {
  /** Sees each chunk's data before its CRC is checked and may change it in place (a transfer error). */
  chunkReceived?(digest: string, idx: number, data: Uint8Array): void;
  /** Sees the assembled module before its SHA-256 is checked and may change it (corrupt storage). */
  moduleAssembled?(digest: string, bytes: Uint8Array): void;
}

export interface DownloadOptions {
  digest: string;
  /** Module size from the start message (`module_size`); else taken from the first chunk's `size`. */
  size?: number;
  chunkSize: number;
  window: number;
  /** Largest module accepted. */
  maxBytes: number;
  /** Publishes a request; false when it cannot be sent now (offline): resume() asks again later. */
  request(ask: Ask): boolean;
  /** Called once the size is known, before the buffer is allocated; false aborts (the RAM budget said no). */
  onSize?(size: number): string | undefined;
  /** The whole download must finish within this (default 60 s). */
  timeoutMs?: number;
  /** In-flight chunks not seen for this long are asked again (default 2 s). */
  stallMs?: number;
  faults?: DownloadFaults;
  now?: () => number;
}

export interface DownloadStats {
  chunks: number;
  corrupt: number;
  duplicates: number;
  requests: number;
  rerequests: number;
  resumes: number;
  /** Sizes of the data of every chunk accepted, by count. */
  chunkBytes: Map<number, number>;
}

export class DownloadError extends Error {
  override name = 'DownloadError';
  /** True when the device cannot take the module at all (it is too large): the task is refused, not failed. */
  constructor(
    message: string,
    readonly refuse = false,
  ) {
    super(message);
  }
}

export class ModuleDownload {
  readonly promise: Promise<Uint8Array>;
  readonly stats: DownloadStats = { chunks: 0, corrupt: 0, duplicates: 0, requests: 0, rerequests: 0, resumes: 0, chunkBytes: new Map() };
  private resolve!: (b: Uint8Array) => void;
  private reject!: (e: Error) => void;
  private size?: number;
  private total = 0;
  private buf?: Uint8Array;
  private have?: Uint8Array;
  private received = 0;
  /** Asked for and not arrived: index → when asked. */
  private inflight = new Map<number, number>();
  /** Lowest index that may still be missing and not in flight. */
  private cursor = 0;
  private done = false;
  private timer?: NodeJS.Timeout;
  private readonly deadline: number;
  private readonly stallMs: number;
  private readonly now: () => number;

  constructor(private readonly o: DownloadOptions) {
    this.promise = new Promise<Uint8Array>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.promise.catch(() => {}); // the owner awaits it; never an unhandled rejection
    this.now = o.now ?? Date.now;
    this.deadline = this.now() + (o.timeoutMs ?? 60_000);
    this.stallMs = o.stallMs ?? 2000;
    if (o.size !== undefined && !this.setSize(o.size)) return;
    this.timer = setInterval(() => this.tick(), Math.max(20, Math.min(this.stallMs / 2, 1000)));
    this.timer.unref();
    this.pump();
  }

  get finished(): boolean {
    return this.done;
  }
  get progress(): { received: number; total: number } {
    return { received: this.received, total: this.total };
  }

  /** The first index not held yet (total when complete). */
  firstMissing(): number {
    if (!this.have) return 0;
    for (let i = 0; i < this.total; i++) if (this.have[i] === 0) return i;
    return this.total;
  }

  onChunk(c: Chunk): void {
    if (this.done) return;
    if (c.error) return this.fail(new DownloadError(`the registry cannot serve ${this.o.digest}: ${c.error}`));
    if (this.size === undefined) {
      if (c.size === undefined) return this.fail(new DownloadError('the first chunk carries no module size'));
      if (!this.setSize(c.size)) return;
    }
    if (c.size !== undefined && c.size !== this.size) return this.fail(new DownloadError(`chunk ${c.idx} says the module has ${c.size} bytes, the start said ${this.size}`));
    if (c.total !== this.total) {
      return this.fail(new DownloadError(`the registry cut the module into ${c.total} chunks, expected ${this.total} of ${this.o.chunkSize} bytes`));
    }
    const idx = c.idx;
    if (idx >= this.total) return this.fail(new DownloadError(`chunk index ${idx} out of range (${this.total} chunks)`));
    const expect = idx === this.total - 1 ? this.size! - idx * this.o.chunkSize : this.o.chunkSize;
    if (c.data.length !== expect) return this.fail(new DownloadError(`chunk ${idx} has ${c.data.length} bytes, expected ${expect}`));
    if (this.have![idx] === 1) {
      this.stats.duplicates++;
      this.inflight.delete(idx);
      return this.pump();
    }
    this.o.faults?.chunkReceived?.(this.o.digest, idx, c.data);
    if (crc32(c.data) !== c.crc32) {
      // corrupt on the way: ask for this one again, keep everything else
      this.stats.corrupt++;
      this.ask({ missing: [idx] }, [idx], true);
      return;
    }
    this.buf!.set(c.data, idx * this.o.chunkSize);
    this.have![idx] = 1;
    this.received++;
    this.stats.chunks++;
    this.stats.chunkBytes.set(c.data.length, (this.stats.chunkBytes.get(c.data.length) ?? 0) + 1);
    this.inflight.delete(idx);
    if (this.received === this.total) return this.complete();
    this.pump();
  }

  /** After a reconnect: chunks in flight were lost with the session; ask again from the first missing one. */
  resume(): void {
    if (this.done) return;
    this.stats.resumes++;
    this.inflight.clear();
    this.cursor = this.firstMissing();
    this.pump();
  }

  abort(reason: string): void {
    this.fail(new DownloadError(reason));
  }

  private setSize(size: number): boolean {
    if (size > this.o.maxBytes) {
      this.fail(new DownloadError(`module of ${size} bytes exceeds this device's limit of ${this.o.maxBytes}`, true));
      return false;
    }
    const no = this.o.onSize?.(size);
    if (no !== undefined) {
      this.fail(new DownloadError(no, true));
      return false;
    }
    this.size = size;
    this.total = Math.max(1, Math.ceil(size / this.o.chunkSize));
    this.buf = new Uint8Array(size);
    this.have = new Uint8Array(this.total);
    return true;
  }

  /** Fills the window: asks for the next chunks not held and not in flight, once half the window is free. */
  private pump(): void {
    if (this.done) return;
    if (this.size === undefined) {
      // size unknown: one chunk tells it
      if (this.inflight.size === 0) this.ask({ next: 0, window: 1 }, [0], false);
      return;
    }
    const free = this.o.window - this.inflight.size;
    if (free < Math.max(1, Math.ceil(this.o.window / 2))) return;
    const want: number[] = [];
    let i = this.cursor;
    while (i < this.total && want.length < free) {
      if (this.have![i] === 0 && !this.inflight.has(i)) want.push(i);
      i++;
    }
    this.cursor = i;
    if (want.length === 0) return;
    const contiguous = want[want.length - 1]! - want[0]! === want.length - 1;
    this.ask(contiguous ? { next: want[0]!, window: want.length } : { missing: want }, want, false);
  }

  private ask(a: Ask, idx: number[], again: boolean): void {
    const at = this.now();
    if (!this.o.request(a)) {
      // offline: nothing is in flight; resume() starts over from the first missing chunk
      for (const i of idx) this.inflight.delete(i);
      this.cursor = Math.min(this.cursor, ...idx);
      return;
    }
    this.stats.requests++;
    if (again) this.stats.rerequests++;
    for (const i of idx) this.inflight.set(i, at);
  }

  private tick(): void {
    if (this.done) return;
    const now = this.now();
    if (now >= this.deadline) {
      const { received, total } = this.progress;
      return this.fail(new DownloadError(`module download timed out after ${this.o.timeoutMs ?? 60_000} ms with ${received} of ${total} chunks`));
    }
    const stale = [...this.inflight].filter(([, at]) => now - at >= this.stallMs).map(([i]) => i);
    if (stale.length > 0) this.ask({ missing: stale.slice(0, 64) }, stale.slice(0, 64), true);
    else if (this.inflight.size === 0) this.pump();
  }

  private complete(): void {
    const bytes = this.buf!;
    this.o.faults?.moduleAssembled?.(this.o.digest, bytes);
    const got = sha256Digest(bytes);
    if (got !== this.o.digest) {
      return this.fail(new DownloadError(`module digest mismatch: the assembled ${bytes.length} bytes hash to ${got}, the start names ${this.o.digest}; discarded without running`));
    }
    this.finish();
    this.resolve(bytes);
  }

  private fail(e: Error): void {
    if (this.done) return;
    this.finish();
    this.buf = undefined;
    this.reject(e);
  }

  private finish(): void {
    this.done = true;
    this.inflight.clear();
    if (this.timer) clearInterval(this.timer);
  }
}
