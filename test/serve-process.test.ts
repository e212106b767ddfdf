// `propeller serve` as a user runs it: the API token it creates and the CLI
// finds, and SIGTERM ending it whatever state its MQTT side is in.

import test from 'ava';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { execFile } from 'node:child_process';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { encode } from '../protocol/index.ts';
import { scope as mkScope, topic } from '../topics/index.ts';
import { BIN, startServe, type Serve } from './helpers/procs.ts';
import { freePort, until } from './helpers/stack.ts';

const exec = promisify(execFile);
const scope = mkScope('propeller', 'control');
const dirs: string[] = [];
const procs: Serve[] = [];

test.before(async () => {
  await buildExamples();
});
test.after.always(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), 'propeller-serve-'));
  dirs.push(d);
  return d;
}

test("first start creates a 0600 API token in ./.propeller; the README's task run finds it from the same folder; others get 401", async (t) => {
  const cwd = tmp();
  const port = await freePort();
  const serve = await startServeIn(cwd, ['--mqtt-port', String(await freePort()), '--http-port', String(port), '--local-proplets', '1']);
  const created = serve.logs.find((l) => l.msg === 'API token created')!;
  t.truthy(created, 'serve says where the token is');
  const file = created.file as string;
  t.is(file, join(cwd, '.propeller', 'api.token'));
  t.is(statSync(file).mode & 0o777, 0o600);
  const token = readFileSync(file, 'utf8').trim();
  t.true(token.length >= 40);
  const consoleLine = serve.logs.find((l) => l.msg === 'web console (signs this browser in)')!;
  t.is(consoleLine.url, `http://127.0.0.1:${port}/login?token=${token}`);
  t.is((await fetch(`${serve.apiUrl}/tasks`)).status, 401);

  // the README's second terminal: same folder, nothing else set but where the API listens
  const env: NodeJS.ProcessEnv = { ...process.env, PROPELLER_API: serve.apiUrl };
  delete env.PROPELLER_API_TOKEN;
  delete env.PROPELLER_DATA_DIR;
  const r = await exec('node', [BIN, 'task', 'run', join(EXAMPLES_BUILD_DIR, 'add.wasm'), '--name', 'add', '--input', '2', '--input', '3'], { cwd, env });
  t.is(r.stdout.trim(), '5');
  const elsewhere = tmp();
  const denied = (await exec('node', [BIN, 'task', 'list'], { cwd: elsewhere, env }).catch((e: unknown) => e)) as { code: number; stderr: string };
  t.is(denied.code, 1);
  t.regex(denied.stderr, /missing or wrong API token/);
  await serve.kill('SIGTERM');
});

test('serve in a folder uses ./.propeller: a restart keeps the token', async (t) => {
  const cwd = tmp();
  const args = ['--mqtt-port', String(await freePort()), '--http-port', String(await freePort())];
  const run = () => startServeIn(cwd, args);
  const a = await run();
  const token = readFileSync(join(cwd, '.propeller', 'api.token'), 'utf8').trim();
  t.is(a.token, token);
  await a.kill('SIGTERM');
  const b = await run();
  t.truthy(b.logs.find((l) => l.msg === 'API token'));
  t.is(b.token, token);
  t.is((await b.api.listTasks()).total, 0);
  await b.kill('SIGTERM');
});

test('--no-auth serves without a token and warns', async (t) => {
  const serve = await startServe(['--mqtt-port', String(await freePort()), '--http-port', String(await freePort()), '--data-dir', tmp(), '--no-auth']);
  procs.push(serve);
  t.truthy(serve.logs.find((l) => l.level === 'warn' && /without authentication/.test(String(l.msg))));
  t.is((await fetch(`${serve.apiUrl}/tasks`)).status, 200);
  await serve.kill('SIGTERM');
});

/**
 * A broker that takes the control plane's first connection, tells it that a
 * proplet registered, then drops it and refuses every reconnect (CONNACK 4, bad user
 * name or password): the state a replaced manager account used to leave it in.
 */
async function refusingBroker(): Promise<{ url: string; refuse(): void; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  let refusing = false;
  const register = publishPacket(topic(scope, 'proplet.create', 'fake-1'), encode('proplet.create', { proplet_id: 'fake-1', addressing: 'direct', capacity: { max_tasks: 4 } }, 'json'));
  const srv = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => {});
    s.on('data', (d) => {
      const type = d[0]! >> 4;
      if (type === 1 && refusing) return void s.end(Buffer.from([0x20, 0x02, 0x00, 0x04])); // as Aedes and Mosquitto do: answer, then close
      if (type === 1) s.write(Buffer.from([0x20, 0x02, 0x00, 0x00]));
      if (type === 8) {
        s.write(Buffer.from([0x90, 0x03, d[2]!, d[3]!, 0x01])); // SUBACK, QoS 1 (one filter is enough for mqtt.js)
        s.write(register);
      }
      if (type === 12) s.write(Buffer.from([0xd0, 0x00]));
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    refuse() {
      refusing = true;
      for (const s of sockets) s.destroy();
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((r) => srv.close(r));
    },
  };
}

/** An MQTT 3.1.1 PUBLISH at QoS 0. */
function publishPacket(t: string, payload: Uint8Array): Buffer {
  const name = Buffer.from(t);
  const body = Buffer.concat([Buffer.from([name.length >> 8, name.length & 0xff]), name, Buffer.from(payload)]);
  const len: number[] = [];
  for (let n = body.length; ; ) {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    len.push(b);
    if (n === 0) break;
  }
  return Buffer.concat([Buffer.from([0x30, ...len]), body]);
}

test('SIGTERM ends serve within 10 s while a start waits to be sent and its broker refuses every reconnect', async (t) => {
  const broker = await refusingBroker();
  t.teardown(() => broker.close());
  const serve = await startServe(['--broker', broker.url, '--http-port', String(await freePort()), '--data-dir', tmp()]);
  procs.push(serve);
  await until(async () => (await serve.api.listProplets()).proplets.some((p) => p.id === 'fake-1'), 'the proplet registered', 20_000);
  broker.refuse();
  await until(async () => (await (await fetch(`${serve.apiUrl}/health`)).json()).mqtt === 'disconnected', 'the control plane lost its broker', 20_000);
  // a start sent while disconnected waits in the client's queue: what a graceful MQTT end used to wait on forever
  const task = await serve.api.createTask({ name: 'x', file: readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm')).toString('base64'), proplet_id: 'fake-1' }, { start: true });
  await until(async () => (await serve.api.getTask(task.id)).state === 'Scheduled', 'the start queued', 20_000);
  const at = Date.now();
  serve.proc.kill('SIGTERM');
  const exited = await Promise.race([once(serve.proc, 'exit').then(() => true), new Promise((r) => setTimeout(() => r(false), 60_000))]);
  t.true(exited, 'serve still running 60 s after SIGTERM');
  t.log(`exited ${Date.now() - at} ms after SIGTERM with code ${serve.proc.exitCode}`);
  // 0: the shutdown finished (a graceful MQTT end used to wait forever for the queued start; with
  // nothing else holding the event loop, node then gave up with 13, an unsettled top-level await)
  t.is(serve.proc.exitCode, 0);
});

async function startServeIn(cwd: string, args: string[]): Promise<Serve> {
  // startServe spawns at once, in this process's cwd: switch only around that call
  const prev = process.cwd();
  process.chdir(cwd);
  const starting = startServe(args);
  process.chdir(prev);
  const s = await starting;
  procs.push(s);
  return s;
}
