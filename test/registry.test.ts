// Registry heartbeats: alive() only records numbers; the proplet's last_seen and
// alive_history strings must still be exact whenever the proplet is read.

import test from 'ava';
import { Registry } from '../control-plane/registry.ts';
import { MemoryStore } from '../control-plane/store.ts';

const T0 = Date.parse('2026-01-01T00:00:00.000Z');
const iso = (t: number): string => new Date(t).toISOString();

function setup() {
  const clock = { t: T0 };
  const store = new MemoryStore();
  const reg = new Registry(store, { checkIntervalMs: 1000, offlineThresholdMs: 5000, failureThresholdMs: 20_000 }, () => clock.t);
  reg.register({ proplet_id: 'a', name: 'a' });
  reg.register({ proplet_id: 'b', name: 'b' });
  return { clock, store, reg };
}

test('heartbeats read back exactly through get, list, values and the store, the history capped at 10', (t) => {
  const { clock, store, reg } = setup();
  const beats: number[] = [T0];
  for (let k = 1; k <= 25; k++) {
    clock.t = T0 + k * 1000;
    beats.push(clock.t);
    t.true(reg.alive({ proplet_id: 'a', status: 'alive' }));
    if (k === 3) {
      t.is(reg.get('a')!.last_seen, iso(clock.t));
      t.deepEqual(reg.get('a')!.alive_history, beats.map(iso));
    }
  }
  const want = beats.slice(-10).map(iso);
  t.deepEqual([...reg.values()].find((p) => p.id === 'a')!.alive_history, want);
  t.deepEqual(reg.list().find((p) => p.id === 'a')!.alive_history, want);
  t.is(reg.get('a')!.last_seen, iso(T0 + 25_000));
  t.is(reg.get('b')!.last_seen, iso(T0), 'a proplet without heartbeats keeps its registration time');
  t.false(reg.alive({ proplet_id: 'ghost', status: 'alive' }));
  // A transition stores the current strings.
  clock.t = T0 + 25_000 + 6000;
  reg.sweep();
  t.is(reg.get('a')!.state, 'offline');
  t.is(store.proplets.get('a')!.last_seen, iso(T0 + 25_000));
  t.is(store.proplets.get('b')!.state, 'failed');
});

test('liveness counts from the last heartbeat, and a heartbeat brings an offline proplet back with current strings', (t) => {
  const { clock, reg } = setup();
  const states: string[] = [];
  reg.on('state', (p, from, why) => states.push(`${p.id} ${from}->${p.state} ${why} ${p.last_seen}`));
  clock.t = T0 + 4000;
  reg.alive({ proplet_id: 'a', status: 'alive' });
  clock.t = T0 + 8000; // 4 s after a's heartbeat, 8 s after b's registration
  reg.sweep();
  t.is(reg.get('a')!.state, 'alive');
  t.is(reg.get('b')!.state, 'offline');
  clock.t = T0 + 9000;
  reg.alive({ proplet_id: 'b', status: 'alive', running_tasks: 2 });
  t.is(reg.get('b')!.state, 'alive');
  t.is(reg.get('b')!.state_since, iso(T0 + 9000));
  t.is(reg.get('b')!.running_tasks, 2);
  t.deepEqual(states, [`b alive->offline no heartbeat for 8 s ${iso(T0)}`, `b offline->alive heartbeat ${iso(T0 + 9000)}`]);
});
