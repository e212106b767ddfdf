// The durable store: records and modules survive closing and reopening the file.

import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../control-plane/sqlite-store.ts';

test('records, modules and atomic groups of writes survive a reopen', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-store-'));
  try {
    const path = join(dir, 'state.db');
    const a = new SqliteStore(path);
    a.groups.put('g', { name: 'g', selector: {}, scheduling: { algorithm: 'random' }, created_at: 'x' });
    a.credentials.put('p', { id: 'p', role: 'proplet', hash: 'sha256$a$b' });
    a.putModule('sha256:00', new Uint8Array([0, 0x61, 0x73, 0x6d]));
    t.throws(() =>
      a.atomically(() => {
        a.groups.put('h', { name: 'h', selector: {}, scheduling: { algorithm: 'random' }, created_at: 'x' });
        throw new Error('crash in the middle');
      }),
    );
    t.is(a.groups.get('h'), undefined, 'the half-done group of writes was rolled back');
    a.close();
    const b = new SqliteStore(path);
    t.is(b.groups.get('g')?.scheduling.algorithm, 'random');
    t.is(b.credentials.list().length, 1);
    t.deepEqual([...b.getModule('sha256:00')!], [0, 0x61, 0x73, 0x6d]);
    t.true(b.groups.delete('g'));
    t.false(b.groups.delete('g'));
    b.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
