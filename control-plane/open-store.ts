// Which store a URL names: `postgres://…` (or `postgresql://…`), `sqlite:PATH`,
// or the SQLite file in the data directory by default.

import type { MirrorOptions } from './mirror-store.ts';
import type { Store } from './store.ts';
import { StoreError } from './store-rows.ts';

export { StoreError } from './store-rows.ts';

export type StoreLocation = { engine: 'sqlite'; path: string } | { engine: 'postgres'; url: string };

export function parseStoreUrl(url: string): StoreLocation {
  if (/^postgres(ql)?:\/\//.test(url)) {
    try {
      const u = new URL(url);
      if (!u.hostname) throw new Error('no host');
    } catch {
      throw new StoreError(`store URL ${JSON.stringify(url)} is not a valid postgres://USER@HOST:PORT/DB URL`);
    }
    return { engine: 'postgres', url };
  }
  if (url.startsWith('sqlite:')) {
    const path = url.slice('sqlite:'.length).replace(/^\/\/(?=\/)/, '');
    if (!path) throw new StoreError('store URL sqlite: needs a path, as in sqlite:/var/lib/propeller/state.db');
    return { engine: 'sqlite', path };
  }
  throw new StoreError(`store URL ${JSON.stringify(url)} is neither postgres://USER@HOST:PORT/DB nor sqlite:PATH`);
}

/** Opens the store a location names; the drivers are loaded only when used. */
export async function openStore(loc: StoreLocation, o: MirrorOptions = {}): Promise<Store> {
  if (loc.engine === 'postgres') return (await import('./pg-store.ts')).PgStore.open(loc.url, o);
  return (await import('./sqlite-store.ts')).SqliteStore.open(loc.path, o);
}
