// Debian's mosquitto_pub and mosquitto_sub (package mosquitto-clients), an
// independent MQTT 3.1.1 implementation, against the embedded broker.
import test, { type ExecutionContext } from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import mqtt from 'mqtt';
import { CredentialStore, EmbeddedBroker } from '../broker/index.ts';
import { decode, encode } from '../protocol/index.ts';
import { allFilter, managerFilters, scope, topic } from '../topics/index.ts';

const S = scope('propeller', 'control');

function haveMosquitto(): boolean {
  return spawnSync('mosquitto_sub', ['--help'], { stdio: 'ignore' }).error === undefined && spawnSync('mosquitto_pub', ['--help'], { stdio: 'ignore' }).error === undefined;
}

const available = haveMosquitto();
const skip = !available && process.env.PROPELLER_SKIP_MOSQUITTO === '1';
if (skip) console.log('mosquitto_sub/mosquitto_pub not on PATH: mosquitto tests skipped (PROPELLER_SKIP_MOSQUITTO=1)');

/** Fails the test when the clients are missing (unless skipped above). */
function requireMosquitto(t: ExecutionContext): boolean {
  if (available) return true;
  t.fail('mosquitto_sub/mosquitto_pub not on PATH: install them (apt-get install -y mosquitto-clients) or set PROPELLER_SKIP_MOSQUITTO=1 to skip this test');
  return false;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 10_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : null) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

(skip ? test.skip : test)('mosquitto_pub and mosquitto_sub against the embedded broker', async (t) => {
  if (!requireMosquitto(t)) return;
  const creds = new CredentialStore();
  const secrets = {
    manager: creds.issue('manager', 'manager'),
    debug: creds.issue('debug', 'debug'),
    p1: creds.issue('esp32-01', 'proplet'),
  };
  const broker = await EmbeddedBroker.start({ scope: S, credentials: creds, port: 0, log: () => {} });
  t.teardown(() => broker.close());
  const port = String(broker.port);
  const common = ['-h', '127.0.0.1', '-p', port, '-V', 'mqttv311'];

  const manager = await mqtt.connectAsync(broker.url, { protocolVersion: 4, reconnectPeriod: 0, username: 'manager', password: secrets.manager });
  t.teardown(() => manager.end(true));
  const got: { topic: string; payload: Buffer }[] = [];
  manager.on('message', (tp, payload) => got.push({ topic: tp, payload }));
  await manager.subscribeAsync(managerFilters(S), { qos: 1 });

  // the debug account, read-only, sees everything under the base; -C 1 -W 5 makes it exit
  const sub = run('mosquitto_sub', [...common, '-u', 'debug', '-P', secrets.debug, '-t', allFilter(S), '-C', '1', '-W', '5', '-v']);
  let subDone = false;
  void sub.then(() => (subDone = true));

  const alive = encode('proplet.alive', { proplet_id: 'esp32-01', status: 'alive', running_tasks: 0 }, 'json').toString();
  const aliveTopic = topic(S, 'proplet.alive', 'esp32-01');
  // publish until mosquitto_sub has seen one (its SUBSCRIBE may land after the first)
  for (let i = 0; i < 25 && !subDone; i++) {
    const pub = await run('mosquitto_pub', [...common, '-u', 'esp32-01', '-P', secrets.p1, '-q', '1', '-t', aliveTopic, '-m', alive]);
    t.is(pub.code, 0, pub.stderr);
    await new Promise((r) => setTimeout(r, 200));
  }
  const seen = await sub;
  t.is(seen.code, 0, seen.stderr);
  t.is(seen.stdout.trim(), `${aliveTopic} ${alive}`);

  t.true(got.length >= 1);
  for (const g of got) {
    t.is(g.topic, aliveTopic);
    t.is(decode('proplet.alive', g.payload).msg.proplet_id, 'esp32-01');
  }
  const received = got.length;

  // a wrong password is refused: non-zero exit
  const bad = await run('mosquitto_pub', [...common, '-u', 'esp32-01', '-P', 'wrong', '-t', aliveTopic, '-m', alive]);
  t.not(bad.code, 0);
  t.regex(bad.stderr + bad.stdout, /refused|not authori[sz]ed|bad user name or password/i);

  // a proplet speaking for another: mosquitto_pub itself succeeds (QoS 0), the manager never sees it
  const forged = encode('proplet.alive', { proplet_id: 'esp32-02' }, 'json').toString();
  await run('mosquitto_pub', [...common, '-u', 'esp32-01', '-P', secrets.p1, '-t', topic(S, 'proplet.alive'), '-m', forged]);
  for (let i = 0; i < 100 && !broker.dropped().sender_mismatch; i++) await new Promise((r) => setTimeout(r, 20));
  t.is(broker.dropped().sender_mismatch, 1);

  // the debug account cannot publish: QoS 1 never gets its PUBACK and the broker hangs up
  const dbgPub = await run('mosquitto_pub', [...common, '-u', 'debug', '-P', secrets.debug, '-q', '1', '-t', aliveTopic, '-m', alive]);
  t.not(dbgPub.code, 0);
  t.is(broker.dropped().read_only, 1);
  await new Promise((r) => setTimeout(r, 50));
  t.is(got.length, received, 'nothing forged reached the manager');
});
