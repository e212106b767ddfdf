// `propeller serve`'s flags for the embedded broker's per-account connection
// limit and login back-off: real process, real MQTT clients over TCP.

import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { BIN, metricOf, startServe, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const exec = promisify(execFile);
const dirs: string[] = [];
const procs: Serve[] = [];
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function serve(args: string[], env: Record<string, string> = {}): Promise<Serve> {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-limits-'));
  dirs.push(dir);
  const s = await startServe(['--data-dir', dir, '--mqtt-port', String(await freePort()), '--http-port', String(await freePort()), ...args], env);
  procs.push(s);
  return s;
}

function connect(url: string, username: string, password: string, clientId: string): Promise<mqtt.MqttClient | Error> {
  const c = mqtt.connect(url, { username, password, clientId, reconnectPeriod: 0, connectTimeout: 60_000 });
  return new Promise((resolve) => {
    c.once('connect', () => resolve(c));
    c.once('error', (e) => {
      c.end(true);
      resolve(e);
    });
  });
}

test('--max-connections-per-proplet 2: a proplet account holds two connections; the third replaces only the oldest', async (t) => {
  const s = await serve(['--max-connections-per-proplet', '2']);
  const { secret } = await s.api.addProplet('dev-1');
  const clients: mqtt.MqttClient[] = [];
  const closed: boolean[] = [];
  for (const [i, id] of ['a', 'b', 'c'].entries()) {
    const c = await connect(s.brokerUrl, 'dev-1', secret, `dev-1-${id}`);
    if (c instanceof Error) throw c;
    closed[i] = false;
    c.on('close', () => (closed[i] = true));
    clients.push(c);
  }
  await until(() => closed[0] === true, 'the oldest connection closed');
  // with the default limit (1) the second connect already replaced the first and the third the second: 2
  t.is(await metricOf(s, 'propeller_mqtt_connections_replaced_total{role="proplet"}'), 1);
  t.false(closed[1]);
  t.false(closed[2]);
  for (const c of clients) c.end(true);
});

test('--auth-backoff-failures 2: the third wrong password from one address is answered late and counted', async (t) => {
  const s = await serve(['--auth-backoff-failures', '2', '--auth-backoff-window', '10m']);
  await s.api.addProplet('dev-2');
  for (let i = 0; i < 3; i++) {
    const r = await connect(s.brokerUrl, 'dev-2', 'wrong', `guess-${i}`);
    t.true(r instanceof Error);
  }
  // with the default (10 failures) nothing is delayed yet
  t.is(await metricOf(s, 'propeller_mqtt_auth_backoff_total{action="refusal_delayed"}'), 1);
  t.is(await metricOf(s, 'propeller_mqtt_auth_failures_total'), 3);
});

test('PROPELLER_AUTH_BACKOFF_FAILURES=0 turns the back-off off: twelve wrong passwords, none answered late', async (t) => {
  const s = await serve([], { PROPELLER_AUTH_BACKOFF_FAILURES: '0' });
  await s.api.addProplet('dev-3');
  for (let i = 0; i < 12; i++) t.true((await connect(s.brokerUrl, 'dev-3', 'wrong', `guess-${i}`)) instanceof Error);
  t.is(await metricOf(s, 'propeller_mqtt_auth_failures_total'), 12);
  // the default (10) would have delayed the last two
  t.is(await metricOf(s, 'propeller_mqtt_auth_backoff_total{action="refusal_delayed"}'), 0);
});

for (const [args, env, msg] of [
  [['--max-connections-per-proplet', '0'], {}, /^propeller: --max-connections-per-proplet must be at least 1, got "0"\n$/],
  [['--max-connections-per-proplet', 'many'], {}, /^propeller: --max-connections-per-proplet must be a non-negative integer, got "many"\n$/],
  [[], { PROPELLER_AUTH_BACKOFF_WINDOW: 'soon' }, /^propeller: --auth-backoff-window: "soon" is not a duration .*\n$/],
  [['--auth-backoff-window', '0s'], {}, /^propeller: --auth-backoff-window must be longer than 0, got "0s"\n$/],
  [['--auth-backoff-failures=1.5'], {}, /^propeller: --auth-backoff-failures must be a non-negative integer, got "1.5"\n$/],
  [['--broker', 'mqtt://127.0.0.1:1', '--max-connections-per-proplet', '3'], {}, /^propeller: .*set the embedded broker; an external broker has its own.*\n$/],
] as const) {
  test(`serve ${args.join(' ')} ${JSON.stringify(env)}: one clear error line, exit 2`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'propeller-limits-'));
    dirs.push(dir);
    const r = (await exec('node', [BIN, 'serve', '--data-dir', dir, ...args], { env: { ...process.env, ...env } }).catch((e: unknown) => e)) as { code: number; stderr: string };
    t.is(r.code, 2);
    t.regex(r.stderr, msg);
  });
}
