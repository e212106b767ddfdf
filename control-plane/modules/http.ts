// Modules from http(s) URLs, fetched by the control plane so that every
// proplet kind gets them the same way (inline or in registry chunks).

import { ModuleFetchError, readCapped } from './fetch-util.ts';

export async function fetchHttpModule(url: string, opts: { maxBytes: number; timeoutMs?: number }): Promise<Uint8Array> {
  let res: Response;
  try {
    res = await fetch(url, { signal: AbortSignal.timeout(opts.timeoutMs ?? 30_000) });
  } catch (e) {
    const cause = (e as { cause?: { code?: string } }).cause;
    throw new ModuleFetchError(`cannot fetch ${url}: ${cause?.code ?? (e as Error).message}`);
  }
  if (!res.ok) throw new ModuleFetchError(`cannot fetch ${url}: HTTP ${res.status}`);
  return readCapped(res, url, opts.maxBytes);
}
