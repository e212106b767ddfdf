// The `propeller` command as a user runs it: `serve` as a real process, then
// `task run`, `watch`, and Debian's mosquitto_sub against it.

import test from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { encode } from '../protocol/index.ts';
import { COMMANDS } from '../cli/commands.ts';
import { describe } from '../cli/watch.ts';
import { freePort, hasCommand, until } from './helpers/stack.ts';

const exec = promisify(execFile);
const BIN = new URL('../bin/propeller.js', import.meta.url).pathname;
let server: ChildProcess;
let api: string;
let brokerPort: string;
let dataDir: string;
/** Everything serve has logged so far. */
let serverLog = '';

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
      serverLog += d;
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
  t.regex(r.stderr, /--secret=-XYZ/, 'and says how to write it');
});

test('the overview loads no command: no control plane, no wasm runtime, no Kubernetes client', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-trace-'));
  const trace = join(dir, 'loaded');
  // a loader hook that writes down every module the process loads
  writeFileSync(join(dir, 'hooks.mjs'), `import { appendFileSync } from 'node:fs';\nexport async function load(url, context, next) { appendFileSync(${JSON.stringify(trace)}, url + '\\n'); return next(url, context); }\n`);
  writeFileSync(join(dir, 'register.mjs'), `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${join(dir, 'hooks.mjs')}`)});\n`);
  try {
    const { stdout } = await exec('node', ['--import', join(dir, 'register.mjs'), BIN, '--help'], { timeout: 30_000 });
    t.regex(stdout, /^ {2}serve {2,}/m);
    // judged on paths inside the checkout, so that a checkout under a folder named like a part still passes
    const root = new URL('..', import.meta.url).href;
    const loaded = readFileSync(trace, 'utf8').trim().split('\n').map((u) => (u.startsWith(root) ? u.slice(root.length) : u));
    for (const part of ['control-plane', 'wasm-runtime', 'broker', 'k8s-adapter', '@kubernetes', 'aedes', 'mqtt', 'serve']) {
      t.false(loaded.some((u) => u.includes(part)), `--help loaded ${loaded.find((u) => u.includes(part))}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("each command's overview line is its own summary", async (t) => {
  for (const [name, entry] of Object.entries(COMMANDS)) t.is((await entry.load()).summary, entry.summary, name);
});

test('task run of a task pinned to an unknown proplet prints why it is still Pending', async (t) => {
  const r = await propeller('task', 'run', join(EXAMPLES_BUILD_DIR, 'hello.wasm'), '--proplet', 'sim-1', '--wait', '1', '--api', api);
  t.is(r.code, 1);
  t.regex(r.stderr, /still Pending after waiting \(.*sim-1.*\); follow it with: propeller task get /);
});

test('proplet rm and proplet delete remove a proplet and its credentials', async (t) => {
  for (const [verb, id] of [['rm', 'rm-me'], ['delete', 'delete-me']] as const) {
    const add = await propeller('proplet', 'add', id, '--api', api);
    t.is(add.code, 0, add.stderr);
    const rm = await propeller('proplet', verb, id, '--api', api);
    t.is(rm.code, 0, rm.stderr);
    t.deepEqual(JSON.parse(rm.stdout), { deleted: id });
  }
  const none = await propeller('proplet', 'rm', '--api', api);
  t.is(none.code, 2);
  t.is(none.stderr, 'propeller: expected exactly one proplet id\n');
});

test('fl delete, and fl run --replace, let the same FederatedJob run again', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-fl-'));
  const yaml = join(dir, 'job.yaml');
  const example = new URL('../examples/fl-logreg/', import.meta.url).pathname;
  writeFileSync(
    yaml,
    `apiVersion: propeller.absmach.io/v1alpha1
kind: FederatedJob
metadata: {name: cli-again}
spec:
  experimentId: cli-again
  modelRef: ${join(example, 'initial-model.json')}
  taskWasmImage: ${join(EXAMPLES_BUILD_DIR, 'fl-logreg.wasm')}
  participants: [{propletId: local-1}]
  kOfN: 1
  timeoutSeconds: 60
  rounds: {total: 1}
  aggregator: {algorithm: fedavg}
`,
  );
  try {
    const first = await propeller('fl', 'run', yaml, '--watch', '--api', api);
    t.is(first.code, 0, first.stderr);
    const again = await propeller('fl', 'run', yaml, '--api', api);
    t.is(again.code, 1);
    t.regex(again.stderr, /already exists; run it again with --replace, or delete it first: propeller fl delete cli-again\n$/);
    const replaced = await propeller('fl', 'run', yaml, '--replace', '--watch', '--api', api);
    t.is(replaced.code, 0, replaced.stderr);
    t.regex(replaced.stdout, /cli-again +Completed +round 1\/1 +completed 1/);
    const del = await propeller('fl', 'delete', 'cli-again', '--api', api);
    t.is(del.code, 0, del.stderr);
    t.is(del.stdout, 'federatedjob cli-again deleted with its 1 round\n');
    const gone = await propeller('fl', 'get', 'cli-again', '--api', api);
    t.is(gone.code, 1);
    const rerun = await propeller('fl', 'run', yaml, '--watch', '--api', api);
    t.is(rerun.code, 0, rerun.stderr);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('watch shows the fields the protocol does not name, JSON and CBOR', (t) => {
  const topic = 'm/propeller/c/control/messages/control/proplet/alive';
  const alive = Buffer.from(JSON.stringify({ proplet_id: 'rust-1', status: 'alive', metadata: { os: 'zephyr', version: '0.3' } }));
  const json = describe(topic, alive);
  t.is(json.kind, 'proplet.alive');
  t.deepEqual(json.payload, { proplet_id: 'rust-1', status: 'alive' });
  t.deepEqual(json.unknown_fields, { metadata: { os: 'zephyr', version: '0.3' } });
  t.false('unknown_fields' in describe(topic, encode('proplet.alive', { proplet_id: 'rust-1', status: 'alive' }, 'json')));
  // CBOR: append key 17 → "x" to the map (its header counts one more pair)
  const cbor = encode('proplet.alive', { proplet_id: 'rust-1', status: 'alive' }, 'cbor');
  const extended = Buffer.concat([Buffer.from([cbor[0]! + 1]), cbor.subarray(1), Buffer.from([0x11, 0x61, 0x78])]);
  t.regex(JSON.stringify(describe(topic, extended)), /"17":"x"/);
});

test('the debug account refused m/# is told which topics it may read', async (t) => {
  if (!hasCommand('mosquitto_sub')) {
    if (process.env.PROPELLER_SKIP_MOSQUITTO === '1') return t.pass('mosquitto_sub not installed; skipped on request');
    return t.fail('mosquitto_sub not found: install mosquitto-clients (.ci/run does)');
  }
  const secret = readFileSync(join(dataDir, 'debug.secret'), 'utf8').trim();
  await exec('mosquitto_sub', ['-h', '127.0.0.1', '-p', brokerPort, '-u', 'debug', '-P', secret, '-V', 'mqttv311', '-t', 'm/#', '-C', '1', '-W', '2'], { timeout: 20_000 }).catch(() => undefined);
  await until(() => serverLog.includes('"msg":"mqtt subscribe refused"'), 'the refusal logged');
  const line = JSON.parse(serverLog.split('\n').find((l) => l.includes('"msg":"mqtt subscribe refused"'))!);
  t.is(line.filter, 'm/#');
  t.is(line.may_subscribe, 'm/propeller/c/control/messages/#');
});

test('serve --debug-account keeps its password across restarts, and watch reconnects saying so', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-debug-'));
  const [mqttPort, httpPort] = [String(await freePort()), String(await freePort())];
  const start = () => {
    const p = spawn('node', [BIN, 'serve', '--mqtt-port', mqttPort, '--http-port', httpPort, '--local-proplets', '1', '--debug-account', '--data-dir', dir], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, HEALTH_CHECK_INTERVAL: '1s' },
    });
    const log = { text: '' };
    p.stderr!.on('data', (d) => (log.text += d));
    return { p, log };
  };
  const stop = async (p: ChildProcess) => {
    if (p.exitCode !== null) return;
    p.kill('SIGTERM');
    await new Promise((r) => p.once('exit', r));
  };
  let first = start();
  let second: ReturnType<typeof start> | undefined;
  let watch: ChildProcess | undefined;
  let out = '';
  let err = '';
  try {
    await until(() => first.log.text.includes('"msg":"ready"'), 'serve ready');
    watch = spawn('node', [BIN, 'watch', '--broker', `mqtt://127.0.0.1:${mqttPort}`, '--data-dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
    watch.stdout!.on('data', (d) => (out += d));
    watch.stderr!.on('data', (d) => (err += d));
    const secret = readFileSync(join(dir, 'debug.secret'), 'utf8');
    t.is(statSync(join(dir, 'debug.secret')).mode & 0o777, 0o600);
    await until(() => out.includes('"kind":"proplet.alive"') || watch!.exitCode !== null, 'a heartbeat watched');
    t.is(watch.exitCode, null, err);
    await stop(first.p);
    await until(() => err.includes('lost the broker at'), 'watch says the broker went away');
    t.is(watch.exitCode, null, 'watch keeps running');
    second = start();
    await until(() => second!.log.text.includes('"msg":"ready"'), 'serve ready again');
    t.is(readFileSync(join(dir, 'debug.secret'), 'utf8'), secret, 'the same password');
    t.regex(second.log.text, /"kept_from_last_start":true/);
    await until(() => err.includes('reconnected to'), 'watch reconnects with the same password');
    const before = out.length;
    await until(() => out.slice(before).includes('"kind":"proplet.alive"'), 'heartbeats again after the restart');
  } finally {
    watch?.kill('SIGTERM');
    await stop(first.p);
    if (second) await stop(second.p);
    rmSync(dir, { recursive: true, force: true });
  }
});
