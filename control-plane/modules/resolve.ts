// One entry point for every module source an image_url can name.

import { MAX_INLINE_MODULE } from '../../protocol/index.ts';
import { ModuleFetchError } from './fetch-util.ts';
import { fetchHttpModule } from './http.ts';
import { notWasm, OciError, pullModule } from './oci.ts';

export async function resolveModule(url: string, maxBytes = MAX_INLINE_MODULE): Promise<Uint8Array> {
  let bytes: Uint8Array;
  if (/^https?:\/\//.test(url)) bytes = await fetchHttpModule(url, { maxBytes });
  else if (url.startsWith('oci://')) {
    try {
      bytes = (await pullModule(url, { maxBytes })).bytes;
    } catch (e) {
      if (e instanceof OciError) throw new ModuleFetchError(e.message);
      throw e;
    }
  } else throw new ModuleFetchError(`cannot fetch ${url}: unsupported scheme (use http://, https:// or oci://)`);
  const bad = notWasm(bytes);
  if (bad) throw new ModuleFetchError(`${url}: ${bad}`);
  return bytes;
}
