// The FL records' in-memory index: queries and phase counts come from memory,
// the store's table is read once, and counts follow every write.

import test from 'ava';
import { IndexedRecords } from '../control-plane/fl/records.ts';
import { MemoryStore, type Collection } from '../control-plane/store.ts';
import type { TrainingRound } from '../control-plane/fl/resources.ts';

function counted<T>(c: Collection<T>) {
  const calls = { list: 0, get: 0 };
  const wrapped: Collection<T> = {
    get: (id) => (calls.get++, c.get(id)),
    put: (id, v) => c.put(id, v),
    delete: (id) => c.delete(id),
    list: () => (calls.list++, c.list()),
  };
  return { wrapped, calls };
}

const round = (name: string, job: string | undefined, phase: TrainingRound['status']['phase']) =>
  ({ metadata: { name }, spec: job ? { federatedJobRef: { name: job } } : {}, status: { phase } }) as unknown as TrainingRound;

test('reads the table once; lists by job and counts by phase from memory, following every write', (t) => {
  const store = new MemoryStore();
  for (let i = 0; i < 50; i++) store.flRounds.put(`r${i}`, round(`r${i}`, i % 2 ? 'odd' : 'even', 'Completed'));
  const { wrapped, calls } = counted(store.flRounds);
  const idx = new IndexedRecords<TrainingRound>(wrapped);
  idx.put('new', round('new', 'odd', 'Pending'));
  for (let i = 0; i < 100; i++) {
    t.is(idx.view('odd').length, 26);
    t.is(idx.phaseCounts().get('Completed'), 50);
  }
  const r = idx.get('new')!;
  r.status.phase = 'Running'; // a copy: the index does not change until it is put back
  t.is(idx.phaseCounts().get('Pending'), 1);
  idx.put('new', r);
  t.deepEqual([...idx.phaseCounts()].sort(), [['Completed', 50], ['Running', 1]]);
  idx.view('odd').find((x) => x.metadata.name === 'r1')!.status.phase = 'Failed'; // changed in place by a careless reader
  idx.delete('r1');
  t.is(idx.phaseCounts().get('Completed'), 49, 'counts follow what was indexed');
  t.is(idx.view('odd').length, 25);
  t.is(store.flRounds.get('r1'), undefined, 'the delete reached the store');
  t.is(store.flRounds.get('new')!.status.phase, 'Running', 'the put reached the store');
  t.is(calls.list, 1);
  t.is(calls.get, 0);
});
