// Module delivery in chunks over MQTT, for devices whose receive buffer is far
// smaller than a module. The device asks (its id, the module digest, its chunk
// size, where to start, how many), the server answers on the device's own
// registry topic. The device sets the pace and resumes after a reconnect by
// asking again from where it stopped, or for the chunks it lacks.

import { crc32, encode, type Chunk, type ChunkRequest } from '../protocol/index.ts';
import type { Logger } from './log.ts';
import type { Proplet } from './model.ts';

export const DEFAULT_CHUNK = 512;
export const MAX_CHUNK = 64 * 1024;
export const MAX_WINDOW = 64;

export interface ChunkServerOptions {
  module(digest: string): Uint8Array | undefined;
  /** Fetches a module named by URL (http(s), oci) and keeps it; returns its digest. */
  fetchByName?(name: string): Promise<string>;
  /** Publishes one chunk message to the device. */
  send(p: Proplet, payload: Uint8Array): void;
  log: Logger;
  onChunk?: () => void;
}

/** Indices the request asks for: the listed missing ones, or a window from `next`. */
export function requestedChunks(req: ChunkRequest, total: number): number[] {
  if (req.missing && req.missing.length > 0) return [...new Set(req.missing)].filter((i) => i < total).slice(0, MAX_WINDOW);
  const from = req.next ?? 0;
  const n = Math.min(req.window ?? 1, MAX_WINDOW);
  const out: number[] = [];
  for (let i = from; i < total && out.length < n; i++) out.push(i);
  return out;
}

export class ChunkServer {
  constructor(private o: ChunkServerOptions) {}

  onRequest(p: Proplet, req: ChunkRequest): void {
    if (!req.digest && req.name && this.o.fetchByName) {
      // the answer's chunks carry the digest, which the device verifies and asks by from then on
      this.o.fetchByName(req.name).then(
        (digest) => this.onRequest(p, { ...req, digest }),
        (e: Error) => this.refuse(p, req.name!, `cannot fetch ${req.name}: ${e.message}`),
      );
      return;
    }
    const digest = req.digest;
    const bytes = digest ? this.o.module(digest) : undefined;
    if (!digest || !bytes) return this.refuse(p, digest ?? '', digest ? `unknown module ${digest}` : 'the request names no digest or name');
    const size = Math.min(Math.max(req.chunk_size ?? DEFAULT_CHUNK, 64), MAX_CHUNK);
    const total = Math.max(1, Math.ceil(bytes.length / size));
    for (const idx of requestedChunks(req, total)) {
      const data = bytes.subarray(idx * size, Math.min(bytes.length, (idx + 1) * size));
      const chunk: Chunk = { v: 1, digest, idx, total, data, crc32: crc32(data), size: bytes.length };
      this.o.send(p, encode('registry.server', chunk, p.encoding));
      this.o.onChunk?.();
    }
  }

  private refuse(p: Proplet, digest: string, why: string): void {
    this.o.log('warn', 'chunk request refused', { proplet_id: p.id, reason: why });
    this.o.send(p, encode('registry.server', { v: 1, digest, idx: 0, total: 1, data: new Uint8Array(0), crc32: 0, error: why }, p.encoding));
  }
}
