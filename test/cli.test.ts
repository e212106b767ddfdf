// The `propeller` command as a user runs it: `serve` as a real process, then
// `task run`, `watch`, and Debian's mosquitto_sub against it.

import test from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { freePort, hasCommand } from './helpers/stack.ts';

const exec = promisify(execFile);
const BIN = new URL('../bin/propeller.js', import.meta.url).pathname;
let server: ChildProcess;
let api: string;
let brokerPort: string;
let dataDir: string;

async function propeller(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    // the API token is found as the README's commands find it: in serve's data dir
    const { stdout, stderr } = await exec('node', [BIN, ...args], { timeout: 30_000, env: { ...process.env, PROPELLER_DATA_DIR: dataDir } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test.before(async () => {
  await buildExamples();
  dataDir = mkdtempSync(join(tmpdir(), 'propeller-cli-'));
  server = spawn('node', [BIN, 'serve', '--mqtt-port', '0', '--http-port', '0', '--local-proplets', '1', '--debug-account', '--data-dir', dataDir], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, HEALTH_CHECK_INTERVAL: '1s' },
  });
  const ready = await new Promise<{ api: string; broker: string }>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`serve did not get ready: ${buf}`)), 20_000);
    server.stderr!.on('data', (d) => {
      buf += d;
      for (const line of buf.split('\n')) {
        if (!line.includes('"msg":"ready"')) continue;
        clearTimeout(timer);
        resolve(JSON.parse(line));
      }
    });
    server.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${buf}`)));
  });
  api = ready.api;
  brokerPort = new URL(ready.broker).port;
});

test.after.always(async () => {
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test('task run prints the module output and exits 0', async (t) => {
  const r = await propeller('task', 'run', join(EXAMPLES_BUILD_DIR, 'hello.wasm'), '--api', api, '--env', 'GREETING=from the cli', '--', 'first-arg');
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /Hello from WebAssembly!/);
  t.regex(r.stdout, /first-arg/);
  t.regex(r.stdout, /from the cli/);
});

test('task run of a compute function prints its value', async (t) => {
  const r = await propeller('task', 'run', join(EXAMPLES_BUILD_DIR, 'add.wasm'), '--name', 'add', '--input', '19', '--input', '23', '--api', api);
  t.is(r.code, 0, r.stderr);
  t.is(r.stdout.trim(), '42');
});

test('a failing module exits non-zero with its exit code or 1 and one line', async (t) => {
  const exit = await propeller('task', 'run', join(EXAMPLES_BUILD_DIR, 'exit.wasm'), '--api', api);
  t.is(exit.code, 3);
  const trap = await propeller('task', 'run', join(EXAMPLES_BUILD_DIR, 'trap.wasm'), '--api', api);
  t.is(trap.code, 1);
  t.regex(trap.stderr, /^propeller: task failed: .*trap/m);
});

test('bad input exits non-zero with one clear line', async (t) => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  const cases: [string[], number, RegExp][] = [
    [['task', 'run', 'no-such.wasm', '--api', api], 2, /^propeller: cannot read no-such.wasm: ENOENT\n$/],
    [['task', 'run', join(EXAMPLES_BUILD_DIR, 'add.wasm'), '--input', 'abc', '--api', api], 2, /^propeller: --input must be a number, got "abc"\n$/],
    [['task', 'frobnicate'], 2, /^propeller: unknown command "task frobnicate"; try one of: task run/],
    [['nope'], 2, /^propeller: unknown command "nope"/],
    [['task', 'get', 'nope', '--api', api], 1, /^propeller: task nope not found\n$/],
    [['task', 'list', '--api', dead], 1, /^propeller: cannot reach the control plane at http:\/\/127.0.0.1:\d+: ECONNREFUSED\n$/],
    [['task', 'list', '--bogus'], 2, /^propeller: Unknown option '--bogus'/],
    [['serve', '--domain', 'a/b'], 2, /^propeller: invalid domain "a\/b"/],
    [['serve', '--scheduler', 'fastest'], 2, /^propeller: unknown scheduler type "fastest"/],
    [['serve', '--config', 'no-such.yaml'], 2, /^propeller: cannot read no-such.yaml: ENOENT\n$/],
  ];
  for (const [args, code, re] of cases) {
    const r = await propeller(...args);
    t.is(r.code, code, args.join(' '));
    t.regex(r.stderr, re, args.join(' '));
    t.is(r.stderr.trim().split('\n').length, 1, args.join(' '));
  }
});

test('--help on every command', async (t) => {
  const top = await propeller('--help');
  t.is(top.code, 0);
  const commands = [...top.stdout.matchAll(/^ {2}([a-z]+(?: [a-z]+)?) {2,}/gm)].map((m) => m[1]!);
  t.true(commands.length >= 12);
  for (const c of commands) {
    const r = await propeller(...c.split(' '), '--help');
    t.is(r.code, 0, c);
    t.regex(r.stdout, new RegExp(`^Usage: propeller ${c}`), c);
  }
});

test('proplet list shows the local proplet', async (t) => {
  const r = await propeller('proplet', 'list', '--api', api);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /^local-1\s+external\s+node\s+alive/m);
});

test('watch prints decoded heartbeats as JSON lines', async (t) => {
  const r = await propeller('watch', '--broker', `mqtt://127.0.0.1:${brokerPort}`, '--data-dir', dataDir, '--count', '1');
  t.is(r.code, 0, r.stderr);
  const line = JSON.parse(r.stdout.trim().split('\n')[0]!);
  t.regex(line.topic, /^m\/propeller\/c\/control\/messages\//);
  t.truthy(line.kind);
  t.is(typeof line.payload, 'object');
});

test('mosquitto_sub (Debian) sees a proplet heartbeat', async (t) => {
  if (!hasCommand('mosquitto_sub')) {
    if (process.env.PROPELLER_SKIP_MOSQUITTO === '1') return t.pass('mosquitto_sub not installed; skipped on request');
    return t.fail('mosquitto_sub not found: install mosquitto-clients (.ci/run does)');
  }
  const secret = readFileSync(join(dataDir, 'debug.secret'), 'utf8').trim();
  const { stdout } = await exec(
    'mosquitto_sub',
    ['-h', '127.0.0.1', '-p', brokerPort, '-u', 'debug', '-P', secret, '-V', 'mqttv311', '-t', 'm/propeller/c/control/messages/control/proplet/alive/local-1', '-C', '1', '-W', '15'],
    { timeout: 20_000 },
  );
  const hb = JSON.parse(stdout.trim());
  t.is(hb.proplet_id, 'local-1');
  t.is(hb.status, 'alive');
});

test('an option value that starts with a dash is one clear line', async (t) => {
  const r = await propeller('proplet', '--id', 'x', '--secret', '-abc');
  t.is(r.code, 2);
  t.is(r.stderr.trim().split('\n').length, 1);
  t.regex(r.stderr, /--secret/);
});
