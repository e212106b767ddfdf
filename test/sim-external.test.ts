// `propeller sim` against an external broker (Debian's Mosquitto), with
// `propeller serve --broker` WITHOUT --trust-payload-sender: Mosquitto cannot
// stamp the sender into the topic, so the simulated MCUs publish on their own
// per-proplet topics, and register and run tasks. On the shared topics (the
// MCU's default form) the control plane refuses them.

import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { mosquittoMissing, startMosquitto, type Mosquitto } from './helpers/mosquitto.ts';
import { BIN, metricOf, startServe, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

let broker: Mosquitto | undefined;
const dirs: string[] = [];
const procs: ChildProcess[] = [];
const serves: Serve[] = [];

test.before(async () => {
  if (mosquittoMissing()) return;
  await buildExamples();
  broker = await startMosquitto();
});
test.after.always(async () => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await Promise.all(serves.map((s) => s.kill()));
  await broker?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'propeller-sim-ext-'));
  dirs.push(d);
  return d;
}

/** serve on Mosquitto in a domain of its own (tests run at once, and each control plane's session is per domain) */
async function setup(t: { fail(m: string): void; pass(m: string): void }, domain: string, ids: string[]): Promise<{ serve: Serve; creds: string } | undefined> {
  if (!broker) {
    if (process.env.PROPELLER_SKIP_MOSQUITTO === '1') return void t.pass('mosquitto not installed; skipped on request');
    return void t.fail(mosquittoMissing()!);
  }
  const dir = tmp();
  const serve = await startServe(['--broker', broker.url, '--domain', domain, '--data-dir', dir, '--http-port', String(await freePort())]);
  serves.push(serve);
  // Mosquitto here takes any account (allow_anonymous): the devices' secrets are the file's
  const creds = join(dir, 'devices.json');
  writeFileSync(creds, JSON.stringify(Object.fromEntries(ids.map((id) => [id, `secret-${id}`]))));
  return { serve, creds };
}

function sim(args: string[]): ChildProcess {
  const p = spawn('node', [BIN, 'sim', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  procs.push(p);
  return p;
}

test('sim --broker mqtt://… (Mosquitto): the MCUs publish on their own topics, register and run a task', async (t) => {
  const s = await setup(t, 'ext1', ['mcu-ext-1']);
  if (!s) return;
  const p = sim(['--devices', '1', '--domain', 'ext1', '--broker', broker!.url, '--credentials', s.creds, '--heartbeat', '1s']);
  await until(async () => (await s.serve.api.listProplets()).proplets.some((x) => x.id === 'mcu-ext-1' && x.state === 'alive'), 'the simulated MCU registered through Mosquitto');
  const task = await s.serve.api.createTask({ name: 'add', file: readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64'), inputs: [7, 8], proplet_id: 'mcu-ext-1' });
  await s.serve.api.startTask(task.id);
  await until(async () => ['Completed', 'Failed'].includes((await s.serve.api.getTask(task.id)).state), 'the task ended');
  const done = await s.serve.api.getTask(task.id);
  t.is(done.state, 'Completed', done.error);
  t.is(done.result?.results, 15);
  t.is(await metricOf(s.serve, 'propeller_messages_rejected_total{kind="proplet.create",reason="no_topic_id"}'), 0);
  p.kill('SIGTERM');
  await once(p, 'exit');
});

test('sim --topics shared on Mosquitto: serve (without --trust-payload-sender) refuses the registration, and says why', async (t) => {
  const s = await setup(t, 'ext2', ['mcu-ext-2']);
  if (!s) return;
  const p = sim(['--devices', '1', '--domain', 'ext2', '--broker', broker!.url, '--credentials', s.creds, '--heartbeat', '1s', '--topics', 'shared']);
  await until(async () => (await metricOf(s.serve, 'propeller_messages_rejected_total{kind="proplet.create",reason="no_topic_id"}')) >= 1, 'the shared-topic registration refused');
  t.false((await s.serve.api.listProplets()).proplets.some((x) => x.id === 'mcu-ext-2'));
  p.kill('SIGTERM');
  await once(p, 'exit');
});

test('sim --topics other: one clear error line', async (t) => {
  const r = spawn('node', [BIN, 'sim', '--devices', '1', '--topics', 'own', '--credentials', '/nonexistent'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  r.stderr!.on('data', (d) => (err += d));
  const [code] = await once(r, 'exit');
  t.is(code, 2);
  t.is(err, 'propeller: --topics must be shared or per-proplet, got "own"\n');
});
