// Connection limits per account and back-off on failed logins, with real
// mqtt.js clients over TCP against the embedded broker.

import test, { type ExecutionContext } from 'ava';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { Registry } from 'prom-client';
import { CredentialStore, EmbeddedBroker, type BrokerOptions } from '../broker/index.ts';
import { FailureLog } from '../broker/limits.ts';
import { encode } from '../protocol/index.ts';
import { managerFilters, scope, topic } from '../topics/index.ts';
import { until } from './helpers/stack.ts';

const S = scope('propeller', 'control');

async function setup(t: ExecutionContext, opts: Partial<BrokerOptions> = {}) {
  const creds = new CredentialStore();
  const secrets: Record<string, string> = { manager: creds.issue('manager', 'manager'), p1: creds.issue('p1', 'proplet'), 'pods-*': creds.issue('pods-*', 'proplet') };
  const registry = new Registry();
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, registry, log: () => {}, ...opts });
  const clients: MqttClient[] = [];
  t.teardown(async () => {
    for (const c of clients) c.end(true);
    await broker.close();
  });
  const connect = async (user: string, password?: string, o: IClientOptions = {}): Promise<MqttClient> => {
    const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, username: user, password: password ?? secrets[user] ?? secrets['pods-*'], ...o });
    clients.push(c);
    return c;
  };
  /** The CONNACK refusal code, 'closed' when the broker closed without one, or 'accepted'. */
  const refused = (user: string, password: string): Promise<number | string> =>
    new Promise((resolve) => {
      const c = mqtt.connect(broker.url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, username: user, password });
      c.once('connect', () => {
        c.end(true);
        resolve('accepted');
      });
      c.once('error', (e) => {
        c.end(true);
        resolve((e as { code?: number }).code ?? 'closed');
      });
      c.once('close', () => {
        c.end(true);
        resolve('closed');
      });
    });
  return { broker, registry, connect, refused };
}

test('a proplet account holds one connection: a newer one replaces the oldest, without its will', async (t) => {
  const s = await setup(t);
  const m = await s.connect('manager');
  const wills: string[] = [];
  m.on('message', (tp) => wills.push(tp));
  await m.subscribeAsync(managerFilters(S), { qos: 1 });
  const will = { topic: topic(S, 'proplet.alive', 'p1'), payload: encode('proplet.alive', { proplet_id: 'p1', status: 'offline' }, 'json'), qos: 1 as const, retain: false };
  const a = await s.connect('p1', undefined, { will });
  const closedA = new Promise<void>((r) => a.once('close', () => r()));
  const b = await s.connect('p1', undefined, { will });
  await closedA;
  t.true(b.connected);
  const c = await s.connect('p1', undefined, { will });
  await until(() => !b.connected, 'the second replaced by the third');
  t.true(c.connected);
  t.is(s.broker.connectedClients, 2); // the manager and p1's newest
  t.is(s.broker.limited.replaced, 2);
  t.regex(await s.registry.metrics(), /propeller_mqtt_connections_replaced_total\{role="proplet"\} 2/);
  // an honest marker arrives; no 'offline' will of a replaced connection came before it
  await c.publishAsync(topic(S, 'proplet.metrics', 'p1'), encode('proplet.metrics', { proplet_id: 'p1' }, 'json'), { qos: 1 });
  await until(() => wills.includes(topic(S, 'proplet.metrics', 'p1')), 'marker');
  t.deepEqual(wills, [topic(S, 'proplet.metrics', 'p1')]);
});

test('limits are configurable per role, and group members count apart', async (t) => {
  const s = await setup(t, { connectionLimits: { proplet: 2, manager: 1 } });
  const p = [await s.connect('p1'), await s.connect('p1'), await s.connect('pods-a'), await s.connect('pods-b')];
  t.true(p.every((c) => c.connected));
  t.is(s.broker.connectedClients, 4);
  const m1 = await s.connect('manager');
  await s.connect('manager');
  await until(() => !m1.connected, 'the first manager connection replaced');
  t.is(s.broker.limited.replaced, 1);
});

test('failed logins from one address are answered later and later; good logins are not held back', async (t) => {
  const s = await setup(t, { authBackoff: { failures: 3, windowMs: 60_000, maxDelayMs: 300 } });
  for (let i = 0; i < 3; i++) t.is(await s.refused('nobody', 'x'), 4);
  t.is(s.broker.limited.refusalsDelayed, 0);
  t.is(await s.refused('nobody', 'x'), 4); // the 4th failure: refused, late
  t.is(s.broker.limited.refusalsDelayed, 1);
  const ok = await s.connect('manager'); // same address, right credentials: not delayed
  t.true(ok.connected);
  t.is(s.broker.limited.delayed, 0);
  // many at once: beyond the pending cap, closed without a CONNACK
  const results = await Promise.all(Array.from({ length: 48 }, () => s.refused('nobody', 'x')));
  t.true(results.every((r) => r === 4 || r === 'closed'), JSON.stringify(results));
  t.true(s.broker.limited.dropped >= 1, 'some dropped at the cap');
  const metrics = await s.registry.metrics();
  t.regex(metrics, /propeller_mqtt_auth_backoff_total\{action="refusal_delayed"\} \d+/);
  t.regex(metrics, /propeller_mqtt_auth_backoff_total\{action="dropped"\} \d+/);
});

test('an account under attack is slowed down, not locked out, and the back-off ends with its next good login', async (t) => {
  const s = await setup(t, { authBackoff: { failures: 2, windowMs: 60_000, maxDelayMs: 200 } });
  for (let i = 0; i < 2; i++) t.is(await s.refused('p1', 'wrong'), 4);
  const c = await s.connect('p1');
  t.true(c.connected, 'the device still gets in');
  t.is(s.broker.limited.delayed, 1);
  c.end(true);
  await s.connect('p1');
  t.is(s.broker.limited.delayed, 1, 'the good login reset the account\'s back-off');
});

test('failures are forgotten after the window, and the log never grows past its cap', (t) => {
  let now = 0;
  const log = new FailureLog(1000, () => now);
  log.fail('a');
  log.fail('a');
  t.is(log.count('a'), 2);
  now = 999;
  t.is(log.count('a'), 2);
  now = 2000;
  t.is(log.count('a'), 0);
  for (let i = 0; i < 12_000; i++) log.fail(`k${i}`);
  t.is(log.size, 10_000);
  t.is(log.count('k0'), 0, 'the oldest went first');
  t.is(log.count('k11999'), 1);
});
