// Liveness: last will marks a proplet offline at once; silence marks it
// offline after the threshold and failed after the longer one.

import test from 'ava';
import { encode } from '../protocol/index.ts';
import { topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
test.before(async () => {
  s = await startStack({ health: { checkIntervalMs: 50, offlineThresholdMs: 400, failureThresholdMs: 900 } });
});
test.after.always(async () => {
  await s?.close();
});

test('a proplet whose socket is destroyed is offline at once (last will)', async (t) => {
  // A heartbeat threshold no test waits for: offline can only come from the will, however busy the machine.
  const slow = await startStack({ health: { checkIntervalMs: 50, offlineThresholdMs: 600_000, failureThresholdMs: 1_200_000 } });
  t.teardown(() => slow.close());
  const p = await slow.addProplet('lwt-1', { heartbeatMs: 100 });
  p.destroy();
  await until(() => slow.cp.registry.get('lwt-1')!.state !== 'alive', 'offline by the will', 30_000);
  t.is(slow.cp.registry.get('lwt-1')!.state, 'offline');
});

test('a proplet that stops heartbeating goes offline after the threshold, then failed', async (t) => {
  const c = await s.client('quiet-1');
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: 'quiet-1' }, 'json'), { qos: 1 });
  await until(() => s.cp.registry.get('quiet-1')?.state === 'alive', 'registered');
  const t0 = Date.now();
  const seen: { state: string; after: number }[] = [];
  const onState = (p: { id: string; state: string }) => p.id === 'quiet-1' && seen.push({ state: p.state, after: Date.now() - t0 });
  s.cp.registry.on('state', onState);
  t.teardown(() => s.cp.registry.off('state', onState));
  await until(() => s.cp.registry.get('quiet-1')!.state === 'failed', 'failed', 30_000);
  // offline first, then failed; a sweep that comes late on a busy machine may go from alive to failed at once
  t.deepEqual(
    seen.map((x) => x.state),
    seen.length === 2 ? ['offline', 'failed'] : ['failed'],
  );
  // never before the thresholds (a busy machine can only make them later)
  t.true(seen[0]!.after >= 300, `first transition after ${seen[0]!.after} ms`);
  t.true(seen.at(-1)!.after >= 800, `failed after ${seen.at(-1)!.after} ms`);
  // a heartbeat brings it back
  await c.publishAsync(topic(scope, 'proplet.alive'), encode('proplet.alive', { proplet_id: 'quiet-1', status: 'alive' }, 'cbor'), { qos: 1 });
  await until(() => s.cp.registry.get('quiet-1')!.state === 'alive', 'alive again');
  t.true(s.cp.registry.get('quiet-1')!.alive_history.length >= 2);
});

test('heartbeats from unknown proplets and malformed payloads are dropped and counted', async (t) => {
  const c = await s.client('stranger');
  await c.publishAsync(topic(scope, 'proplet.alive'), encode('proplet.alive', { proplet_id: 'stranger' }, 'json'), { qos: 1 });
  // the broker already refuses malformed payloads from proplets; the manager account is trusted by
  // the broker, so its garbage reaches the control plane's own validation
  const m = await s.client('mgr-liveness', 'manager');
  await m.publishAsync(topic(scope, 'proplet.create', 'stranger'), Buffer.from('{"proplet_id": 12'), { qos: 1 });
  await m.publishAsync(topic(scope, 'proplet.create', 'stranger'), Buffer.from([0xa1, 0x01]), { qos: 1 });
  await until(async () => {
    const m = await s.cp.metrics.registry.getSingleMetricAsString('propeller_messages_rejected_total');
    return /reason="unknown_proplet"/.test(m) && /reason="malformed"/.test(m);
  }, 'rejections counted');
  t.is(s.cp.registry.get('stranger'), undefined);
});

test('a proplet whose credentials are revoked is cut off, and close() still returns at once', async (t) => {
  const p = await s.addProplet('revoked-1');
  await s.api.removeProplet('revoked-1');
  await until(() => !p.connected, 'disconnected by the broker');
  await new Promise((r) => setTimeout(r, 300)); // it is now retrying with refused credentials
  const closed = await Promise.race([p.close().then(() => true), new Promise((r) => setTimeout(() => r(false), 3000))]);
  t.true(closed, 'close() returned');
});
