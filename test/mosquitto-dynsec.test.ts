// Per-proplet accounts on an external Mosquitto through its dynamic security
// plugin: Debian's mosquitto with mosquitto_dynamic_security.so, on a free
// loopback port, provisioned by broker/mosquitto-dynsec.ts over MQTT.

import test from 'ava';
import mqtt, { type MqttClient } from 'mqtt';
import { DynsecConflict, DynsecError, managerRole, MosquittoDynsec, propletAcls, propletRole } from '../broker/mosquitto-dynsec.ts';
import { encode } from '../protocol/index.ts';
import { flUpdateTopic, managerFilters, ROOT_FL_FILTER, topic } from '../topics/index.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { scope, until } from './helpers/stack.ts';

const missing = mosquittoMissing(true);
const skip = missing !== undefined && process.env.PROPELLER_SKIP_MOSQUITTO === '1' && process.env.CI !== 'true';
const maybe = skip ? test.serial.skip : test.serial;

let broker: Mosquitto;
let admin: MosquittoDynsec;
const clients: MqttClient[] = [];

test.before(async () => {
  if (skip) return;
  if (missing) throw new Error(missing);
  broker = await startMosquitto({ dynsec: true });
  admin = await MosquittoDynsec.connect({ url: broker.url, ...broker.admin! });
});

test.after.always(async () => {
  for (const c of clients) c.end(true);
  await admin?.close();
  await broker?.stop();
});

async function login(username: string, password: string): Promise<MqttClient> {
  const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, username, password, reconnectPeriod: 0, clientId: `${username}-${clients.length}` });
  clients.push(c);
  return c;
}

/** Why a CONNECT was refused, or 'accepted'. */
async function tryLogin(username: string, password: string): Promise<string> {
  try {
    await login(username, password);
    return 'accepted';
  } catch (e) {
    return (e as Error).message;
  }
}

/** The QoS granted, or 128 when refused (mqtt.js rejects a refused SUBACK). */
async function grant(c: MqttClient, filter: string): Promise<number> {
  try {
    return (await c.subscribeAsync(filter, { qos: 1 }))[0]!.qos;
  } catch (e) {
    const granted = (e as { packet?: { granted?: number[] } }).packet?.granted;
    if (granted?.[0] === 128) return 128;
    throw e;
  }
}

const alive = (id: string) => encode('proplet.alive', { proplet_id: id, status: 'alive' }, 'json');

maybe('a provisioned proplet publishes and subscribes on its own topics only', async (t) => {
  await admin.addManager(scope, 'cp', 'cp-secret');
  await admin.addProplet(scope, 'dev-1', 'secret-1');
  await admin.addProplet(scope, 'dev-2', 'secret-2');

  const cp = await login('cp', 'cp-secret');
  const got: string[] = [];
  cp.on('message', (tp) => got.push(tp));
  const granted = await cp.subscribeAsync(managerFilters(scope), { qos: 1 });
  t.false(granted.some((g) => g.qos === 128), 'the manager reads every proplet topic');

  const dev1 = await login('dev-1', 'secret-1');
  // as dev-2, on dev-2's topic: dropped by the broker; then its own, which arrives after it if at all
  await dev1.publishAsync(topic(scope, 'proplet.alive', 'dev-2'), alive('dev-2'), { qos: 1 });
  await dev1.publishAsync(topic(scope, 'proplet.alive', 'dev-1'), alive('dev-1'), { qos: 1 });
  await until(() => got.includes(topic(scope, 'proplet.alive', 'dev-1')), 'dev-1 heard on its own topic');
  t.deepEqual(got, [topic(scope, 'proplet.alive', 'dev-1')], 'nothing on dev-2 topic from dev-1');

  // the shared topics (no sender in them) are closed to proplets on an external broker
  await dev1.publishAsync(topic(scope, 'proplet.alive'), alive('dev-1'), { qos: 1 });
  await dev1.publishAsync(topic(scope, 'proplet.metrics', 'dev-1'), encode('proplet.metrics', { proplet_id: 'dev-1' }, 'json'), { qos: 1 });
  await until(() => got.includes(topic(scope, 'proplet.metrics', 'dev-1')), 'metrics on its own topic');
  t.false(got.includes(topic(scope, 'proplet.alive')), 'nothing on the shared alive topic');

  t.is(await grant(dev1, topic(scope, 'manager.start', 'dev-1')), 1);
  t.is(await grant(dev1, topic(scope, 'manager.start', 'dev-2')), 128, "dev-1 may not read dev-2's starts");
  t.is(await grant(dev1, topic(scope, 'manager.start') + '/+'), 128, 'nor everyone’s');
});

maybe('wrong secrets are refused; an account is not created twice; a rotated secret replaces the old one', async (t) => {
  await admin.addProplet(scope, 'dev-3', 'secret-3');
  t.regex(await tryLogin('dev-3', 'wrong'), /Not authorized|Bad User Name or Password/i);
  const e = await t.throwsAsync(admin.addProplet(scope, 'dev-3', 'again'), { instanceOf: DynsecConflict });
  t.is(e!.kind, 'exists');
  t.is(await tryLogin('dev-3', 'secret-3'), 'accepted', 'the first secret still stands');
  await admin.setSecret('dev-3', 'rotated');
  t.regex(await tryLogin('dev-3', 'secret-3'), /Not authorized|Bad User Name or Password/i);
  t.is(await tryLogin('dev-3', 'rotated'), 'accepted');
});

maybe('removing a proplet disconnects it and refuses it from then on', async (t) => {
  await admin.addProplet(scope, 'dev-4', 'secret-4');
  const dev4 = await login('dev-4', 'secret-4');
  const closed = new Promise<void>((resolve) => dev4.once('close', () => resolve()));
  await admin.removeProplet('dev-4');
  await closed;
  t.regex(await tryLogin('dev-4', 'secret-4'), /Not authorized|Bad User Name or Password/i);
});

maybe('a command the plugin refuses is an error naming the command', async (t) => {
  const e = await t.throwsAsync(admin.setSecret('nobody', 'x'), { instanceOf: DynsecError });
  t.regex(e!.message, /setClientPassword: .*not found/i);
});

maybe('FL updates: a proplet publishes its own in every form proplets use, never another proplet’s', async (t) => {
  const s = { domain: 'fl-dom', channel: 'ch' };
  await admin.ensureManager(s, 'cp-fl', 'cp-fl-secret');
  await admin.addProplet(s, 'fl-1', 'fl-secret-1');
  await admin.addProplet(s, 'fl-2', 'fl-secret-2');
  const cp = await login('cp-fl', 'cp-fl-secret');
  const got: string[] = [];
  cp.on('message', (tp) => got.push(tp));
  const granted = await cp.subscribeAsync([...managerFilters(s, true), ROOT_FL_FILTER], { qos: 1 });
  t.deepEqual(granted.filter((g) => g.qos === 128), [], 'the manager reads every FL form');
  const fl1 = await login('fl-1', 'fl-secret-1');
  const update = (id: string) => encode('fl.update', { round_id: 'r1', proplet_id: id, task_id: 't1', num_samples: 1, metrics: { loss: 1 } }, 'json');
  const others = [flUpdateTopic(s, 'r1', 'fl-2'), flUpdateTopic(s, 'r1', 'fl-2', 'bare'), 'fl/rounds/r1/updates/fl-2'];
  const own = [flUpdateTopic(s, 'r1', 'fl-1'), flUpdateTopic(s, 'r1', 'fl-1', 'bare'), 'fl/rounds/r1/updates/fl-1'];
  // another's first: the broker handles one client's publishes in order, so when its own have arrived the others had their chance
  for (const tp of others) await fl1.publishAsync(tp, update('fl-2'), { qos: 1 });
  for (const tp of own) await fl1.publishAsync(tp, update('fl-1'), { qos: 1 });
  await until(() => own.every((tp) => got.includes(tp)), 'fl-1’s own updates, in the three forms');
  t.deepEqual(got.filter((tp) => tp.endsWith('/fl-2')), [], 'none on fl-2’s topics');
});

maybe('replicas’ shared subscriptions are granted to the manager; a manager account is made once and its role completed', async (t) => {
  const s = { domain: 'rep', channel: 'ch' };
  // an older role without the shared and root FL filters
  await admin.call([{ command: 'createRole', rolename: managerRole(s), acls: [{ acltype: 'publishClientSend', topic: 'm/rep/+/#', allow: true }] }]);
  t.true(await admin.ensureManager(s, 'cp-rep', 'first'), 'created');
  t.false(await admin.ensureManager(s, 'cp-rep', 'second'), 'found, not made again');
  t.regex(await tryLogin('cp-rep', 'second'), /Not authorized|Bad User Name or Password/i, 'an existing account keeps its password');
  const cp = await login('cp-rep', 'first');
  const filters = [`$share/propeller-rep-ch/${topic(s, 'proplet.results')}/#`, `$share/other/${topic(s, 'registry.proplet')}`, ROOT_FL_FILTER, `${topic(s, 'proplet.alive')}/#`];
  const granted = await cp.subscribeAsync(filters, { qos: 1 });
  t.deepEqual(granted.map((g) => g.qos), [1, 1, 1, 1]);
});

maybe('accounts that are not proplets’ are never changed: not rotated, not deleted, not taken by an add', async (t) => {
  await admin.ensureManager(scope, 'cp-own', 'cp-own-secret');
  for (const id of ['cp-own', broker.admin!.username]) {
    const rot = await t.throwsAsync(admin.rotateProplet(scope, id, 'x'), { instanceOf: DynsecConflict });
    t.is(rot!.kind, 'not_ours');
    const rm = await t.throwsAsync(admin.removeProplet(id), { instanceOf: DynsecConflict });
    t.is(rm!.kind, 'not_ours');
    const add = await t.throwsAsync(admin.addProplet(scope, id, 'x'), { instanceOf: DynsecConflict });
    t.is(add!.kind, 'not_ours');
    // the role the failed add made is gone again
    await t.throwsAsync(admin.call([{ command: 'getRole', rolename: propletRole(id) }]), { message: /not found/i });
  }
  t.is(await tryLogin('cp-own', 'cp-own-secret'), 'accepted');
  t.is(await tryLogin(broker.admin!.username, broker.admin!.password), 'accepted');
});

maybe('a rotation disconnects the proplet’s open connection; rotating an unknown proplet makes its account', async (t) => {
  await admin.addProplet(scope, 'dev-5', 'old');
  const dev5 = await login('dev-5', 'old');
  const closed = new Promise<void>((resolve) => dev5.once('close', () => resolve()));
  await admin.rotateProplet(scope, 'dev-5', 'new');
  await closed;
  t.is(await tryLogin('dev-5', 'new'), 'accepted');
  // a role an older version made (no FL at the root): a rotation completes it
  await admin.call([
    { command: 'createRole', rolename: propletRole('dev-7'), acls: [{ acltype: 'publishClientSend', topic: topic(scope, 'proplet.alive', 'dev-7'), allow: true }] },
    { command: 'createClient', username: 'dev-7', password: 'seven', roles: [{ rolename: propletRole('dev-7') }] },
  ]);
  await admin.rotateProplet(scope, 'dev-7', 'seven-2');
  const [role] = await admin.call([{ command: 'getRole', rolename: propletRole('dev-7') }]);
  const topics = (role!.data as { role: { acls: { topic: string }[] } }).role.acls.map((a) => a.topic);
  const sorted = (xs: string[]) => [...new Set(xs)].sort();
  t.deepEqual(sorted(topics), sorted(propletAcls(scope, 'dev-7').map((a) => a.topic)));
  await admin.rotateProplet(scope, 'dev-6', 'six');
  t.is(await tryLogin('dev-6', 'six'), 'accepted');
  t.true(await admin.removeProplet('dev-6'));
  t.false(await admin.removeProplet('dev-6'), 'gone');
});

maybe('a device channel (Propeller’s embed-proplet) is its own proplet’s only, and never the scope’s channel', async (t) => {
  await admin.addProplet(scope, 'esp-a', 'secret-a');
  await admin.addProplet(scope, 'esp-b', 'secret-b');
  const cp = await login('cp', 'cp-secret');
  const got: string[] = [];
  cp.on('message', (tp) => got.push(tp));
  await cp.subscribeAsync(managerFilters(scope, true), { qos: 1 });
  const a = await login('esp-a', 'secret-a');
  const own = { domain: scope.domain, channel: 'esp-a' };
  const other = { domain: scope.domain, channel: 'esp-b' };
  const alive = (s: typeof own) => topic(s, 'proplet.alive', undefined, 'bare');
  await a.publishAsync(alive(other), '{"status":"alive"}', { qos: 1 });
  await a.publishAsync(alive(scope), '{"status":"alive"}', { qos: 1 });
  await a.publishAsync(alive(own), '{"status":"alive"}', { qos: 1 });
  await until(() => got.includes(alive(own)), 'esp-a heard on its device channel');
  t.deepEqual(got, [alive(own)], 'nothing on esp-b’s channel or the scope’s shared topic');
  t.is(await grant(a, topic(own, 'manager.start', undefined, 'bare')), 1);
  t.is(await grant(a, topic(other, 'manager.start', undefined, 'bare')), 128);
  // a proplet named like the scope's channel gets no device channel: it would be everyone's shared topics
  await admin.addProplet(scope, scope.channel, 'secret-c');
  const c = await login(scope.channel, 'secret-c');
  t.is(await grant(c, topic(scope, 'manager.start', undefined, 'bare')), 128);
});
