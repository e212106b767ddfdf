// One entry point for every module source an image_url can name.

import { MAX_INLINE_MODULE } from '../../protocol/index.ts';
import { ModuleFetchError } from './fetch-util.ts';
import { fetchHttpModule } from './http.ts';
import { notWasm, OciError, pullModule } from './oci.ts';
import type { FetchPolicy } from './policy.ts';

/** The bytes an http(s):// or oci:// reference names, whatever they are (a module, a model). */
export async function fetchArtifact(url: string, policy: FetchPolicy, maxBytes = MAX_INLINE_MODULE): Promise<Uint8Array> {
  if (/^https?:\/\//.test(url)) return fetchHttpModule(url, { maxBytes, policy });
  if (url.startsWith('oci://')) {
    try {
      return (await pullModule(url, { maxBytes, policy })).bytes;
    } catch (e) {
      if (e instanceof OciError) throw new ModuleFetchError(e.message);
      throw e;
    }
  }
  throw new ModuleFetchError(`cannot fetch ${url}: unsupported scheme (use http://, https:// or oci://)`);
}

export async function resolveModule(url: string, policy: FetchPolicy, maxBytes = MAX_INLINE_MODULE): Promise<Uint8Array> {
  const bytes = await fetchArtifact(url, policy, maxBytes);
  const bad = notWasm(bytes);
  if (bad) throw new ModuleFetchError(`${url}: ${bad}`);
  return bytes;
}
