// Real processes: `propeller serve` and `propeller proplet` as a user starts
// them, so tests can SIGKILL one and see what the others do.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { ControlPlaneClient } from '../../control-plane/client.ts';

export const BIN = new URL('../../bin/propeller.js', import.meta.url).pathname;

export interface Proc {
  proc: ChildProcess;
  /** stderr JSON log lines seen so far. */
  logs: Record<string, unknown>[];
  kill(signal?: NodeJS.Signals): Promise<void>;
}

function watchLogs(proc: ChildProcess): Record<string, unknown>[] {
  const logs: Record<string, unknown>[] = [];
  let buf = '';
  proc.stderr!.on('data', (d) => {
    buf += d;
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ raw: line });
      }
    }
  });
  return logs;
}

function wrap(proc: ChildProcess, logs: Record<string, unknown>[]): Proc {
  return {
    proc,
    logs,
    async kill(signal = 'SIGKILL') {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill(signal);
      await once(proc, 'exit');
    },
  };
}

async function waitLog(p: Proc, match: (l: Record<string, unknown>) => boolean, what: string, ms = 45_000): Promise<Record<string, unknown>> {
  const end = Date.now() + ms;
  for (;;) {
    const hit = p.logs.find(match);
    if (hit) return hit;
    if (p.proc.exitCode !== null) throw new Error(`${what}: process exited ${p.proc.exitCode}: ${JSON.stringify(p.logs.slice(-5))}`);
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(p.logs.slice(-5))}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface Serve extends Proc {
  api: ControlPlaneClient;
  apiUrl: string;
  brokerUrl: string;
  /** The API token serve created or was given (undefined with --no-auth). */
  token?: string;
}

export async function startServe(args: string[], env: Record<string, string> = {}): Promise<Serve> {
  const proc = spawn('node', [BIN, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const p = wrap(proc, watchLogs(proc));
  const ready = await waitLog(p, (l) => l.msg === 'ready', 'serve ready').catch(async (e) => {
    await p.kill();
    throw e;
  });
  const apiUrl = ready.api as string;
  const tokenLog = p.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('API token'));
  const token = args.includes('--api-token') ? args[args.indexOf('--api-token') + 1] : tokenLog ? readFileSync(tokenLog.file as string, 'utf8').trim() : undefined;
  return { ...p, api: new ControlPlaneClient(apiUrl, token), apiUrl, brokerUrl: ready.broker as string, ...(token ? { token } : {}) };
}

export async function startProplet(args: string[], env: Record<string, string> = {}): Promise<Proc> {
  const proc = spawn('node', [BIN, 'proplet', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
  const p = wrap(proc, watchLogs(proc));
  await waitLog(p, (l) => l.msg === 'proplet running', 'proplet running').catch(async (e) => {
    await p.kill();
    throw e;
  });
  return p;
}

/** One series' value on serve's /metrics, e.g. `propeller_mqtt_auth_failures_total` or `x_total{reason="y"}` (0 when absent). */
export async function metricOf(s: Serve, series: string): Promise<number> {
  const text = await (await fetch(`${s.apiUrl}/metrics`, { headers: s.token ? { authorization: `Bearer ${s.token}` } : {} })).text();
  const hit = text.split('\n').find((l) => l.startsWith(series + ' '));
  return hit ? Number(hit.slice(series.length + 1)) : 0;
}
