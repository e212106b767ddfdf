// Debian's Mosquitto as an outside broker on a free loopback port, optionally with
// the dynamic security plugin and an admin account made by mosquitto_ctrl.

import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, hasCommand, until } from './stack.ts';

export const MOSQUITTO = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : hasCommand('mosquitto') ? 'mosquitto' : undefined;
export const DYNSEC_PLUGIN = ['/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so', '/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so'].find((p) => existsSync(p));

/** Why Mosquitto (with dynsec, when asked) cannot run here, or undefined when it can. */
export function mosquittoMissing(dynsec = false): string | undefined {
  if (!MOSQUITTO) return 'mosquitto not found: install the mosquitto package (.ci/run does)';
  if (dynsec && !DYNSEC_PLUGIN) return 'mosquitto_dynamic_security.so not found (Debian package mosquitto)';
  if (dynsec && !hasCommand('mosquitto_ctrl')) return 'mosquitto_ctrl not found (Debian package mosquitto-clients)';
  return undefined;
}

export interface Mosquitto {
  url: string;
  port: number;
  /** The dynsec admin account, when started with `dynsec`. */
  admin?: { username: string; password: string };
  /** Stops the broker and starts it again on the same port and files (dynsec accounts kept); `between` runs while it is down. */
  restart(between?: () => Promise<void>): Promise<void>;
  stop(): Promise<void>;
}

export async function startMosquitto(o: { dynsec?: boolean; extra?: string } = {}): Promise<Mosquitto> {
  const missing = mosquittoMissing(o.dynsec);
  if (missing) throw new Error(missing);
  const dir = mkdtempSync(join(tmpdir(), 'propeller-mosquitto-'));
  const port = await freePort();
  const lines = [`listener ${port} 127.0.0.1`, 'persistence false', 'max_queued_messages 100000'];
  let admin: Mosquitto['admin'];
  if (o.dynsec) {
    admin = { username: 'dynsec-admin', password: `pw-${process.pid}-${port}` };
    const file = join(dir, 'dynamic-security.json');
    execFileSync('mosquitto_ctrl', ['dynsec', 'init', file, admin.username, admin.password], { stdio: 'ignore' });
    // started as root, mosquitto drops to its own user, which must read and rewrite the plugin's file
    chmodSync(dir, 0o777);
    chmodSync(file, 0o666);
    lines.push('allow_anonymous false', `plugin ${DYNSEC_PLUGIN}`, `plugin_opt_config_file ${file}`);
  } else {
    lines.push('allow_anonymous true');
  }
  if (o.extra) lines.push(o.extra);
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(conf, lines.join('\n') + '\n');
  let proc: ChildProcess;
  let stderr = '';
  const accepts = () =>
    new Promise<boolean>((resolve) => {
      const c = connect(port, '127.0.0.1', () => {
        c.destroy();
        resolve(true);
      });
      c.on('error', () => resolve(false));
    });
  const launch = async () => {
    const p = spawn(MOSQUITTO!, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    proc = p;
    p.stderr!.on('data', (d) => (stderr += d));
    await until(async () => {
      if (p.exitCode !== null) throw new Error(`mosquitto exited ${p.exitCode}: ${stderr}`);
      return accepts();
    }, `mosquitto on ${port}`);
  };
  const halt = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await once(proc, 'exit');
    }
  };
  await launch();
  return {
    url: `mqtt://127.0.0.1:${port}`,
    port,
    admin,
    async restart(between) {
      await halt();
      await between?.();
      await launch();
    },
    async stop() {
      await halt();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
