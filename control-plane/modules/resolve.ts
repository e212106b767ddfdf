// One entry point for every module source an image_url can name.

import { MAX_INLINE_MODULE } from '../../protocol/index.ts';
import { isWasm } from '../task-input.ts';
import { ModuleFetchError } from './fetch-util.ts';
import { fetchHttpModule } from './http.ts';

export async function resolveModule(url: string, maxBytes = MAX_INLINE_MODULE): Promise<Uint8Array> {
  let bytes: Uint8Array;
  if (/^https?:\/\//.test(url)) bytes = await fetchHttpModule(url, { maxBytes });
  else throw new ModuleFetchError(`cannot fetch ${url}: unsupported scheme (use http://, https:// or oci://)`);
  if (!isWasm(bytes)) throw new ModuleFetchError(`${url} is not a WebAssembly module`);
  return bytes;
}
