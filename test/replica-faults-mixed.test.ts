// Two control planes that would mix silently are refused: a replica on another
// store for a domain/channel a plane already serves on the broker, and a replica
// for another domain/channel on a database that already holds a plane. A plane
// that hears another store announced for its domain/channel while running goes
// not ready (and comes back when that one leaves).

import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import mqtt from 'mqtt';
import { planeTopic } from '../topics/index.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { postgresMissing, testPostgres } from './helpers/postgres.ts';
import { BIN, startServe, type Proc, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const missing = postgresMissing() ?? mosquittoMissing();
const exec = promisify(execFile);
const procs: Proc[] = [];
const dirs: string[] = [];
let mosquitto: Mosquitto | undefined;
const TOKEN = 'mixed-token';

test.before(async () => {
  if (!missing) mosquitto = await startMosquitto();
});
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await mosquitto?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const dir = () => {
  const d = mkdtempSync(join(tmpdir(), 'propeller-mixed-'));
  dirs.push(d);
  return d;
};

async function refused(args: string[]): Promise<{ code: number; stderr: string }> {
  const r = await exec('node', [BIN, 'serve', '--broker', mosquitto!.url, '--http-port', '0', '--data-dir', dir(), '--api-token', TOKEN, ...args], { timeout: 60_000 }).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  return r;
}

(missing ? test.skip : test.serial)('another store on the same domain/channel and broker, or another domain on the same database: one line, refused; a plane running when another appears goes not ready', async (t) => {
  const [store1, store2] = [await testPostgres(), await testPostgres()];
  const a = await startServe(['--broker', mosquitto!.url, '--store', store1, '--domain', 'mix', '--http-port', String(await freePort()), '--data-dir', dir(), '--api-token', TOKEN]);
  procs.push(a);
  // a second replica of the same plane is welcome
  const b = await startServe(['--broker', mosquitto!.url, '--store', store1, '--domain', 'mix', '--http-port', String(await freePort()), '--data-dir', dir(), '--api-token', TOKEN]);
  procs.push(b);

  const other = await refused(['--store', store2, '--domain', 'mix']);
  t.is(other.code, 1);
  const lines = other.stderr.trim().split('\n');
  t.is(lines.length, 1, other.stderr);
  t.regex(lines[0]!, /^propeller: another control plane \(store id [0-9a-f-]{36}\) serves domain "mix", channel "control" on the broker mqtt:\/\/127\.0\.0\.1:\d+, and this one's store is [0-9a-f-]{36}: refusing to mix two planes/);
  t.false(other.stderr.includes(new URL(store1).pathname.slice(1)), 'names no database');

  const domain = await refused(['--store', store1, '--domain', 'elsewhere']);
  t.is(domain.code, 1);
  t.is(domain.stderr.trim().split('\n').length, 1, domain.stderr);
  t.regex(domain.stderr, /^propeller: the PostgreSQL database postgres:\/\/\S+ holds the control plane of domain "mix", channel "control" \(store id [0-9a-f-]{36}\); this one was started for domain "elsewhere", channel "control": give it a database of its own, or the same --domain and --channel\n$/);

  // the refused starts left the running plane alone
  for (const s of [a, b]) t.is((await fetch(`${s.apiUrl}/health`)).status, 200);

  // two planes started at the same moment both announce: each sees the other's store and stops taking work
  const intruder = await mqtt.connectAsync(mosquitto!.url, { protocolVersion: 4 });
  t.teardown(() => intruder.end(true));
  const where = planeTopic({ domain: 'mix', channel: 'control' }, 'intruder');
  await intruder.publishAsync(where, JSON.stringify({ v: 1, store_id: 'another-store' }), { qos: 1, retain: true });
  const notReady = async (s: Serve) => {
    const r = await fetch(`${s.apiUrl}/health`);
    const body = (await r.json()) as { down?: { dependency: string; error: string }[] };
    return r.status === 503 && body.down?.some((d) => d.dependency === 'plane' && d.error.includes('another-store')) === true;
  };
  await until(async () => (await notReady(a)) && (await notReady(b)), 'both replicas not ready');
  const write = await fetch(`${a.apiUrl}/tasks`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ name: 'x' }) });
  t.is(write.status, 503);
  t.regex(((await write.json()) as { error: string }).error, /^not ready: this plane's domain\/channel on the broker is unavailable since \S+ \(another control plane \(store id another-store\)/);
  t.true(a.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('not ready: another control plane (store id another-store)')), 'said once in the log');
  // it leaves (its last will clears its announcement): ready again
  await intruder.publishAsync(where, '', { qos: 1, retain: true });
  await until(async () => (await fetch(`${a.apiUrl}/health`)).status === 200 && (await fetch(`${b.apiUrl}/health`)).status === 200, 'ready again');
  t.is((await a.api.createTask({ name: 'x' })).state, 'Pending');
});
