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
  /** The module's bytes, only when it is one of this device's own tasks' modules. */
  module(p: Proplet, digest: string): Uint8Array | undefined;
  /** The digest of this device's own task module named by URL; nothing is fetched on a device's say-so. */
  digestByName?(p: Proplet, name: string): string | undefined;
  /** Publishes one chunk message to the device. */
  send(p: Proplet, payload: Uint8Array): void;
  log: Logger;
  onChunk?: () => void;
  onRefused?: (reason: string) => void;
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
    if (!req.digest && req.name) {
      // the answer's chunks carry the digest, which the device verifies and asks by from then on
      const digest = this.o.digestByName?.(p, req.name);
      if (!digest) return this.refuse(p, req.name, `${req.name} is not the module of a task of yours`, 'not_yours');
      return this.onRequest(p, { ...req, digest });
    }
    const digest = req.digest;
    if (!digest) return this.refuse(p, '', 'the request names no digest or name', 'invalid');
    const bytes = this.o.module(p, digest);
    if (!bytes) return this.refuse(p, digest, `unknown module ${digest}`, 'not_yours');
    const size = Math.min(Math.max(req.chunk_size ?? DEFAULT_CHUNK, 64), MAX_CHUNK);
    const total = Math.max(1, Math.ceil(bytes.length / size));
    for (const idx of requestedChunks(req, total)) {
      const data = bytes.subarray(idx * size, Math.min(bytes.length, (idx + 1) * size));
      const chunk: Chunk = { v: 1, digest, idx, total, data, crc32: crc32(data), size: bytes.length };
      this.o.send(p, encode('registry.server', chunk, p.encoding));
      this.o.onChunk?.();
    }
  }

  private refuse(p: Proplet, digest: string, why: string, reason: string): void {
    this.o.log('warn', 'chunk request refused', { proplet_id: p.id, reason: why });
    this.o.onRefused?.(reason);
    this.o.send(p, encode('registry.server', { v: 1, digest, idx: 0, total: 1, data: new Uint8Array(0), crc32: 0, error: why }, p.encoding));
  }
}
