// `propeller serve --broker-accounts dynsec`: two replicas on PostgreSQL and
// Debian's Mosquitto with its dynamic security plugin, as real processes. A
// proplet added with `propeller proplet add` (the CLI, against one replica)
// connects with its own credentials and runs a task; it is refused on another
// proplet's topics; rotating through the other replica refuses the old secret;
// `propeller proplet rm` removes the account. With Mosquitto away an add
// answers 503 and leaves nothing behind.

import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt, { type MqttClient } from 'mqtt';
import type { ApiError } from '../control-plane/client.ts';
import { accountsFrom } from '../cli/broker-accounts.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { encode } from '../protocol/index.ts';
import { scope, topic } from '../topics/index.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { postgresMissing, testPostgres } from './helpers/postgres.ts';
import { BIN, startProplet, startServe, type Proc, type Serve } from './helpers/procs.ts';
import { EmbedProplet } from './helpers/propeller-devices.ts';
import { freePort, until } from './helpers/stack.ts';

const missing = postgresMissing() ?? mosquittoMissing(true);
const S = scope('propeller', 'control');
const TOKEN = 'dynsec-token';
const CP = { username: 'cp-dynsec', password: 'cp-dynsec-secret' };
const procs: Proc[] = [];
const dirs: string[] = [];
const clients: MqttClient[] = [];
let mosquitto: Mosquitto;
let replicas: Serve[] = [];

test.before(async () => {
  if (missing) return;
  await buildExamples();
  mosquitto = await startMosquitto({ dynsec: true });
  const store = await testPostgres();
  for (let i = 0; i < 2; i++) {
    const dir = mkdtempSync(join(tmpdir(), 'propeller-dynsec-'));
    dirs.push(dir);
    const s = await startServe(
      [
        ...['--broker', mosquitto.url, '--store', store, '--http-port', String(await freePort()), '--data-dir', dir, '--api-token', TOKEN],
        ...['--broker-accounts', 'dynsec', '--broker-admin-username', mosquitto.admin!.username, '--broker-admin-password', mosquitto.admin!.password],
        ...['--mqtt-username', CP.username, '--mqtt-password', CP.password],
      ],
      { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '3s', FAILURE_THRESHOLD: '6s' },
    );
    procs.push(s);
    replicas.push(s);
  }
});
test.after.always(async () => {
  for (const c of clients) c.end(true);
  await Promise.all(procs.map((p) => p.kill()));
  await mosquitto?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

/** `propeller ARGS --api URL --token T`: its printed JSON, or its one-line error. */
async function cli(s: Serve, ...args: string[]): Promise<Record<string, string>> {
  const { stdout } = await promisify(execFile)('node', [BIN, ...args, '--api', s.apiUrl, '--token', TOKEN]);
  return JSON.parse(stdout) as Record<string, string>;
}

async function login(username: string, password: string): Promise<MqttClient> {
  const c = await mqtt.connectAsync(mosquitto.url, { protocolVersion: 4, username, password, reconnectPeriod: 0, clientId: `${username}-test-${clients.length}` });
  clients.push(c);
  return c;
}

async function tryLogin(username: string, password: string): Promise<string> {
  try {
    const c = await login(username, password);
    await c.endAsync();
    return 'accepted';
  } catch (e) {
    return (e as Error).message;
  }
}
const REFUSED = /Not authorized|Bad User Name or Password/i;

const status = (p: Promise<unknown>) => p.then(() => 201, (e: ApiError) => e.status);

(missing ? test.skip : test.serial)('a proplet added with `propeller proplet add` connects with its own credentials, runs a task, is refused on another’s topics; rotate and rm from either replica', async (t) => {
  const [a, b] = replicas as [Serve, Serve];
  const dyn1 = await cli(a, 'proplet', 'add', 'dyn-1');
  t.is(dyn1.proplet_id, 'dyn-1');
  const dyn2 = await b.api.addProplet('dyn-2');
  // any replica knows it exists: the broker refuses a second account of that name
  t.is(await status(b.api.addProplet('dyn-1')), 409);
  t.is(await status(a.api.addProplet('dyn-2')), 409);

  const proplet = await startProplet(['--id', 'dyn-1', '--secret', dyn1.secret!, '--broker', mosquitto.url, '--heartbeat', '300ms']);
  procs.push(proplet);
  await until(async () => (await b.api.getProplet('dyn-1').catch(() => undefined))?.state === 'alive', 'dyn-1 alive on the other replica');
  const add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  const task = await a.api.createTask({ name: 'add', file: add, inputs: [2, 3], proplet_id: 'dyn-1' }, { start: true });
  await until(async () => (await b.api.getTask(task.id).catch(() => undefined))?.state === 'Completed', 'the task completed on dyn-1', 60_000);
  t.is((await b.api.getTask(task.id)).result?.results, 5);

  // dyn-1 on dyn-2's topics: its publish is not delivered, its subscribe refused
  const watcher = await login(CP.username, CP.password);
  const heard: string[] = [];
  watcher.on('message', (tp) => heard.push(tp));
  await watcher.subscribeAsync(`${topic(S, 'proplet.alive')}/#`, { qos: 1 });
  const as1 = await login('dyn-1', dyn1.secret!);
  await as1.publishAsync(topic(S, 'proplet.alive', 'dyn-2'), encode('proplet.alive', { proplet_id: 'dyn-2', status: 'alive' }, 'json'), { qos: 1 });
  await as1.publishAsync(topic(S, 'proplet.alive', 'dyn-1'), encode('proplet.alive', { proplet_id: 'dyn-1', status: 'alive' }, 'json'), { qos: 1 });
  await until(() => heard.includes(topic(S, 'proplet.alive', 'dyn-1')), 'dyn-1 heard on its own topic');
  t.false(heard.includes(topic(S, 'proplet.alive', 'dyn-2')), 'nothing on dyn-2’s topic');
  const granted = await as1.subscribeAsync(topic(S, 'manager.start', 'dyn-2'), { qos: 1 }).then(
    (g) => g[0]!.qos,
    (e: { packet?: { granted?: number[] } }) => e.packet?.granted?.[0],
  );
  t.is(granted, 128, 'dyn-1 may not read dyn-2’s starts');
  await t.throwsAsync(a.api.getProplet('dyn-2'), { message: /not found/ }, 'dyn-2 never appeared');

  // rotated through the other replica: the running proplet is cut off, the old secret refused, the new one works
  const rotated = await cli(b, 'proplet', 'add', 'dyn-1', '--rotate');
  t.not(rotated.secret, dyn1.secret);
  t.regex(await tryLogin('dyn-1', dyn1.secret!), REFUSED);
  t.is(await tryLogin('dyn-1', rotated.secret!), 'accepted');
  await until(async () => (await a.api.getProplet('dyn-1')).state !== 'alive', 'the proplet with the old secret is gone');

  // removed: no longer connects, through either replica's account
  t.deepEqual(await cli(a, 'proplet', 'rm', 'dyn-2'), { deleted: 'dyn-2' });
  t.regex(await tryLogin('dyn-2', dyn2.secret), REFUSED);
  // the other replica learns of the deletion one commit and one notification later (409 until then)
  await until(async () => (await status(b.api.addProplet('dyn-2'))) === 201, 'the name is free again on the other replica');
  // the replicas' shared subscriptions and the root FL filter were granted to the control plane's account
  for (const s of replicas) t.deepEqual(s.logs.filter((l) => /refused/.test(String(l.msg))), [], 'no subscription refused');
});

/** (module (func (export "main") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))): what embed-proplet calls */
const MAIN_ADD = Buffer.from('0061736d0100000001070160027f7f017f03020100070801046d61696e00000a09010700200020016a0b', 'hex');

(missing ? test.skip : test.serial)('Propeller’s embed-proplet added through the API registers on its device channel and runs a task there', async (t) => {
  const [a, b] = replicas as [Serve, Serve];
  const { secret } = await a.api.addProplet('esp-dyn');
  const dev = new EmbedProplet({ url: mosquitto.url, id: 'esp-dyn', secret, channel: 'esp-dyn', firstAliveMs: 100, livelinessMs: 300, metricsMs: 300 });
  await dev.start();
  t.teardown(() => dev.close());
  await until(async () => (await b.api.getProplet('esp-dyn').catch(() => undefined))?.state === 'alive', 'esp-dyn alive');
  t.deepEqual((await b.api.getProplet('esp-dyn')).wire, { kind: 'embed', layout: 'bare', channel: 'esp-dyn' });
  const task = await b.api.createTask({ name: 'main', file: MAIN_ADD.toString('base64'), inputs: [40, 2], proplet_id: 'esp-dyn' }, { start: true });
  await until(async () => (await a.api.getTask(task.id).catch(() => undefined))?.state === 'Completed', 'the task completed on esp-dyn', 60_000);
  t.is((await a.api.getTask(task.id)).result?.results, '42');
});

(missing ? test.skip : test.serial)('the control plane’s own, the admin and group accounts are refused; with Mosquitto away an add answers 503 and leaves nothing behind', async (t) => {
  const [a, b] = replicas as [Serve, Serve];
  for (const id of [CP.username, mosquitto.admin!.username]) {
    const e = await t.throwsAsync(a.api.addProplet(id, { rotate: true }));
    t.is((e as ApiError).status, 409, id);
    t.regex(e!.message, /reserved/);
    t.is((await t.throwsAsync(a.api.removeProplet(id)) as ApiError).status, 409);
  }
  t.is(await tryLogin(CP.username, CP.password), 'accepted', 'the control plane’s account unchanged');
  const lone = await t.throwsAsync(a.api.addProplet('bad\ud800id'));
  t.is((lone as ApiError).status, 400, lone!.message);
  const group = await t.throwsAsync(b.api.addGroupAccount('pods'));
  t.is((group as ApiError).status, 501);
  t.regex(group!.message, /wildcard/);

  await mosquitto.restart(async () => {
    const e = await t.throwsAsync(a.api.addProplet('dyn-3'));
    t.is((e as ApiError).status, 503, e!.message);
    // a replica that saw the broker go refuses every write first (docs/scaling.md, Faults)
    t.regex(e!.message, /broker account of dyn-3: .*not connected|^not ready: the MQTT broker is unavailable since .*nothing was changed/);
    // a removal the broker could not make leaves the proplet as it was
    t.is((await t.throwsAsync(b.api.removeProplet('dyn-1')) as ApiError).status, 503);
  });
  t.is((await a.api.getProplet('dyn-1')).id, 'dyn-1');
  // once the broker is back, the same add succeeds as a first one: nothing of the failed one was kept
  let answer: number | undefined;
  await until(async () => (answer = await status(b.api.addProplet('dyn-3'))) !== 503, 'an add once Mosquitto is back');
  t.is(answer, 201);
});

(missing ? test.skip : test.serial)('a wrong admin password stops serve at start with one line and a non-zero exit', async (t) => {
  const e = await promisify(execFile)('node', [
    BIN,
    'serve',
    ...['--broker', mosquitto.url, '--broker-accounts', 'dynsec', '--broker-admin-username', mosquitto.admin!.username, '--broker-admin-password', 'wrong'],
    ...['--mqtt-username', CP.username, '--mqtt-password', CP.password, '--data-dir', dirs[0]!, '--http-port', '0'],
  ]).then(
    () => undefined,
    (err: { code?: number; stderr?: string }) => err,
  );
  t.is(e?.code, 1);
  t.regex(e!.stderr!, /^propeller: --broker-accounts dynsec: dynsec-admin at mqtt:\/\/127\.0\.0\.1:\d+: .*Not authorized\n$/);
});

test('--broker-accounts: dynsec needs --broker and the admin account; a typo is a usage error', (t) => {
  const admin = { 'broker-admin-username': 'adm', 'broker-admin-password': 'pw' };
  t.is(accountsFrom({}, 'mqtt://b:1883', {}), undefined, 'external by default');
  t.deepEqual(accountsFrom({ 'broker-accounts': 'dynsec', ...admin }, 'mqtt://b:1883', {}), { admin: { username: 'adm', password: 'pw' } });
  t.deepEqual(accountsFrom({}, 'mqtt://b:1883', { PROPELLER_BROKER_ACCOUNTS: 'dynsec', MQTT_ADMIN_USERNAME: 'e', MQTT_ADMIN_PASSWORD: 'p' }), { admin: { username: 'e', password: 'p' } }, 'from env');
  t.throws(() => accountsFrom({ 'broker-accounts': 'dynsec', ...admin }, undefined, {}), { message: /needs --broker/ });
  t.throws(() => accountsFrom({ 'broker-accounts': 'dynsec' }, 'mqtt://b:1883', {}), { message: /needs --broker-admin-username and --broker-admin-password/ });
  t.throws(() => accountsFrom({ 'broker-accounts': 'dynsek' }, 'mqtt://b:1883', {}), { message: /must be external or dynsec, got "dynsek"/ });
  t.throws(() => accountsFrom(admin, 'mqtt://b:1883', {}), { message: /used with --broker-accounts dynsec/ });
});
