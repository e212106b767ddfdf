// Where a task's module comes from: inline bytes in the start message, or an
// http(s) URL. Bytes are cached by digest, so a task that runs again skips the
// download (the runner caches what it compiled from them).

import { LRUCache } from 'lru-cache';
import { sha256Digest, type Start } from '../protocol/index.ts';

export class ModuleError extends Error {
  override name = 'ModuleError';
  /** True when the module cannot run here but could elsewhere (too large for this proplet). */
  constructor(
    message: string,
    readonly refuse = false,
  ) {
    super(message);
  }
}

export interface Loaded {
  bytes: Uint8Array;
  digest: string;
}

export interface ModuleSourceOptions {
  /** Largest module accepted, downloaded or inline. */
  maxModuleBytes?: number;
  fetchTimeoutMs?: number;
  /** Module bytes kept, in total. */
  cacheBytes?: number;
}


export class ModuleSource {
  private cache: LRUCache<string, Loaded>;
  private readonly maxBytes: number;

  constructor(private o: ModuleSourceOptions = {}) {
    this.maxBytes = o.maxModuleBytes ?? 64 * 1024 * 1024;
    this.cache = new LRUCache<string, Loaded>({ maxSize: o.cacheBytes ?? 256 * 1024 * 1024, sizeCalculation: (l) => Math.max(1, l.bytes.length) });
  }

  /** Resolves the start message's module. Throws ModuleError with a reason a user can act on. */
  async load(msg: Start): Promise<Loaded> {
    if (msg.digest) {
      const hit = this.cache.get(msg.digest);
      if (hit) return hit;
    }
    let bytes: Uint8Array;
    if (msg.file && msg.file.length > 0) bytes = msg.file;
    else if (msg.image_url) bytes = await this.fetchUrl(msg.image_url);
    else throw new ModuleError('start message carries neither file nor image_url');
    if (bytes.length > this.maxBytes) throw new ModuleError(`module of ${bytes.length} bytes exceeds this proplet's limit of ${this.maxBytes}`, true);
    const digest = sha256Digest(bytes);
    if (msg.digest && msg.digest !== digest) throw new ModuleError(`module digest ${digest} does not match the expected ${msg.digest}`);
    const hit = this.cache.get(digest);
    if (hit) return hit;
    const loaded = { bytes, digest };
    this.cache.set(digest, loaded);
    return loaded;
  }

  private async fetchUrl(url: string): Promise<Uint8Array> {
    if (!/^https?:\/\//.test(url)) throw new ModuleError(`cannot fetch ${url}: only http(s) URLs are supported by this proplet`);
    let res: Response;
    try {
      res = await fetch(url, { signal: AbortSignal.timeout(this.o.fetchTimeoutMs ?? 30_000) });
    } catch (e) {
      throw new ModuleError(`cannot fetch ${url}: ${(e as Error).message}`);
    }
    if (!res.ok) throw new ModuleError(`cannot fetch ${url}: HTTP ${res.status}`);
    const declared = Number(res.headers.get('content-length'));
    if (declared > this.maxBytes) throw new ModuleError(`module at ${url} is ${declared} bytes, over this proplet's limit of ${this.maxBytes}`, true);
    const chunks: Uint8Array[] = [];
    let size = 0;
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
      size += c.length;
      if (size > this.maxBytes) throw new ModuleError(`module at ${url} exceeds this proplet's limit of ${this.maxBytes} bytes`, true);
      chunks.push(c);
    }
    return Buffer.concat(chunks);
  }
}
