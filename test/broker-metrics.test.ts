// `propeller serve` as a real process: the embedded broker's counters (refused
// CONNECTs, dropped publishes) reach the control plane's /metrics.

import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { until } from './helpers/stack.ts';

const BIN = new URL('../bin/propeller.js', import.meta.url).pathname;
const TOKEN = 'broker-metrics-test-token';
let server: ChildProcess;
let api: string;
let brokerUrl: string;
let dataDir: string;

test.before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'propeller-broker-metrics-'));
  server = spawn('node', [BIN, 'serve', '--mqtt-port', '0', '--http-port', '0', '--debug-account', '--data-dir', dataDir, '--api-token', TOKEN], { stdio: ['ignore', 'ignore', 'pipe'] });
  const ready = await new Promise<{ api: string; broker: string }>((resolve, reject) => {
    let buf = '';
    server.stderr!.on('data', (d) => {
      buf += d;
      const line = buf.split('\n').find((l) => l.includes('"msg":"ready"'));
      if (line) resolve(JSON.parse(line));
    });
    server.once('exit', (code) => reject(new Error(`serve exited with ${code}: ${buf}`)));
  });
  api = ready.api;
  brokerUrl = ready.broker;
});

test.after.always(async () => {
  if (server && server.exitCode === null) {
    server.kill('SIGTERM');
    await new Promise((r) => server.once('exit', r));
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function scrape(): Promise<string> {
  const r = await fetch(`${api}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } });
  return r.text();
}

test('a refused CONNECT and a dropped publish are counted on /metrics', async (t) => {
  const before = await scrape();
  t.regex(before, /# TYPE propeller_mqtt_auth_failures_total counter/);
  const err = await mqtt.connectAsync(brokerUrl, { protocolVersion: 4, username: 'propeller-manager', password: 'not-the-secret', reconnectPeriod: 0 }).then(
    () => undefined,
    (e: { code?: number }) => e,
  );
  t.is(err?.code, 4);
  const secret = readFileSync(join(dataDir, 'debug.secret'), 'utf8').trim();
  const debug = await mqtt.connectAsync(brokerUrl, { protocolVersion: 4, username: 'debug', password: secret, reconnectPeriod: 0 });
  const closed = new Promise<void>((r) => debug.once('close', () => r()));
  debug.publish('m/propeller/c/control/messages/control/proplet/alive/x', '{"proplet_id":"x"}');
  await closed;
  let text = '';
  await until(async () => /propeller_mqtt_dropped_total\{reason="read_only"\} 1/.test((text = await scrape())), 'the drop on /metrics');
  t.regex(text, /propeller_mqtt_auth_failures_total 1/);
  debug.end(true);
});
