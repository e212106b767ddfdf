// Reading a response body with a size cap, for every module source.

export class ModuleFetchError extends Error {
  override name = 'ModuleFetchError';
}

export async function readCapped(res: Response, what: string, maxBytes: number): Promise<Uint8Array> {
  const declared = Number(res.headers.get('content-length'));
  if (declared > maxBytes) throw new ModuleFetchError(`${what} is ${declared} bytes, over the limit of ${maxBytes}`);
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (res.body) {
    for await (const c of res.body as unknown as AsyncIterable<Uint8Array>) {
      size += c.length;
      if (size > maxBytes) throw new ModuleFetchError(`${what} exceeds the limit of ${maxBytes} bytes`);
      chunks.push(c);
    }
  }
  return Buffer.concat(chunks);
}
