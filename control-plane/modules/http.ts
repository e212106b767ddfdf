// Modules from http(s) URLs, fetched by the control plane so that every
// proplet kind gets them the same way (inline or in registry chunks).

import { ModuleFetchError, readCapped } from './fetch-util.ts';
import { OPEN_POLICY, type FetchPolicy } from './policy.ts';

const MAX_REDIRECTS = 5;

export async function fetchHttpModule(url: string, opts: { maxBytes: number; timeoutMs?: number; policy?: FetchPolicy }): Promise<Uint8Array> {
  const policy = opts.policy ?? OPEN_POLICY;
  const signal = AbortSignal.timeout(opts.timeoutMs ?? 30_000);
  let at = new URL(url);
  for (let hop = 0; ; hop++) {
    // every hop is checked: a public URL must not redirect the control plane onto loopback
    await policy.check(at);
    let res: Response;
    try {
      res = await fetch(at, { signal, redirect: 'manual' });
    } catch (e) {
      const cause = (e as { cause?: { code?: string } }).cause;
      throw new ModuleFetchError(`cannot fetch ${url}: ${cause?.code ?? (e as Error).name}`);
    }
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      await res.body?.cancel();
      if (hop >= MAX_REDIRECTS) throw new ModuleFetchError(`cannot fetch ${url}: more than ${MAX_REDIRECTS} redirects`);
      at = new URL(location, at);
      if (at.protocol !== 'http:' && at.protocol !== 'https:') throw new ModuleFetchError(`cannot fetch ${url}: redirected to a ${at.protocol} URL`);
      continue;
    }
    // the status only: the body of an answer is never echoed into errors (it may be anyone's)
    if (!res.ok) {
      await res.body?.cancel();
      throw new ModuleFetchError(`cannot fetch ${url}: HTTP ${res.status}`);
    }
    return readCapped(res, url, opts.maxBytes);
  }
}
