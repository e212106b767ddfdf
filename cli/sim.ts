// `propeller sim`: N simulated MCU proplets in one process, each with its own
// MQTT connection and credentials, sharing one small wasm sandbox. Prints live
// counts (one updating line on a terminal, a line every few seconds
// otherwise) until interrupted.

import { readFileSync } from 'node:fs';
import { ControlPlaneClient } from '../control-plane/client.ts';
import { parseBytes, parseDuration } from '../control-plane/config.ts';
import { createLogger, type Level } from '../control-plane/log.ts';
import { formatCounts, startFleet, type Fleet } from '../proplet-mcu/sim.ts';
import { UsageError, int, pairs, str, type Command } from './args.ts';
import { apiFrom, apiHelp, apiOptions, brokerUrl, scopeFrom, scopeHelp, scopeOptions } from './settings.ts';

function num(name: string, v: unknown, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = typeof v === 'string' && /^\d*\.?\d+$/.test(v) ? Number(v) : NaN;
  if (!(n >= min && n <= max)) throw new UsageError(`--${name} must be a number from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return n;
}

function guard<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export const sim: Command = {
  usage: 'propeller sim --devices N [options]',
  summary: 'simulate a fleet of MCU proplets (compact CBOR, chunked modules, RAM budget)',
  options: {
    ...scopeOptions,
    ...apiOptions,
    devices: { type: 'string' },
    broker: { type: 'string' },
    topics: { type: 'string' },
    heartbeat: { type: 'string' },
    'fail-rate': { type: 'string' },
    'connect-rate': { type: 'string' },
    credentials: { type: 'string' },
    'id-prefix': { type: 'string' },
    uuid: { type: 'boolean' },
    memory: { type: 'string' },
    'rx-buffer': { type: 'string' },
    'chunk-size': { type: 'string' },
    'max-tasks': { type: 'string' },
    'device-type': { type: 'string' },
    label: { type: 'string', multiple: true },
    duration: { type: 'string' },
    'status-every': { type: 'string' },
    'log-level': { type: 'string' },
  },
  help: `  --devices N            devices to simulate (required)
  --broker URL           broker (env MQTT_BROKER, default mqtt://127.0.0.1:1883)
  --topics FORM          where devices publish: shared (…/proplet/results, as docs/mcu.md counts its bytes; the
                         embedded broker stamps the sender) or per-proplet (…/proplet/results/ID, which an external
                         broker such as Mosquitto needs). Default: per-proplet when --broker or MQTT_BROKER is given
  --heartbeat DURATION   heartbeat period of every device (default 10s)
  --fail-rate R          probability per heartbeat period that a device drops its
                         connection without DISCONNECT (its will fires); it comes
                         back with jittered exponential backoff (default 0)
  --connect-rate N       new connections per second while starting (default 200)
  --credentials FILE     JSON object {"<proplet id>": "<secret>", ...}: the devices
                         are its ids; without it, each device is enrolled through
                         the control plane's POST /proplets (--api)
  --id-prefix P          ids are P and the device number, zero-padded to the width of N:
                         sim-001 ... sim-100 for --devices 100; sim-1 ... sim-9 for 9 (default sim-)
  --uuid                 ids are lowercase UUIDs (16 bytes on the wire) instead
  --memory SIZE          RAM budget per device, e.g. 256Ki (default 256Ki)
  --rx-buffer SIZE       receive buffer = capacity.max_packet_bytes (default 1024)
  --chunk-size N         registry chunk size asked for (default 512)
  --max-tasks N          modules at once per device (default 2)
  --device-type TYPE     reported device type (default esp32)
  --label KEY=VALUE      label of every device (repeat)
  --duration DURATION    stop after this long (default: until Ctrl-C)
  --status-every DURATION  status line period when stdout is not a terminal (default 5s)
  --log-level LEVEL      debug, info, warn, error or silent (default error)
${apiHelp}
${scopeHelp}`,
  async run(v) {
    const env = process.env;
    const devices = int('devices', v.devices, -1);
    if (devices <= 0) throw new UsageError('--devices N is required (N > 0)');
    const heartbeatMs = guard(() => parseDuration('--heartbeat', str(v.heartbeat) ?? '10s'));
    if (heartbeatMs <= 0) throw new UsageError('--heartbeat must be positive');
    const failRate = num('fail-rate', v['fail-rate'], 0, 0, 1);
    const connectRate = num('connect-rate', v['connect-rate'], 200, 0.1, 100_000);
    const budget = guard(() => parseBytes('--memory', str(v.memory) ?? '256Ki'));
    const rx = guard(() => parseBytes('--rx-buffer', str(v['rx-buffer']) ?? '1024'));
    const chunkSize = int('chunk-size', v['chunk-size'], 512);
    const maxTasks = int('max-tasks', v['max-tasks'], 2);
    const durationMs = str(v.duration) ? guard(() => parseDuration('--duration', str(v.duration)!)) : undefined;
    const statusEveryMs = guard(() => parseDuration('--status-every', str(v['status-every']) ?? '5s'));
    const level = (str(v['log-level']) ?? 'error') as Level | 'silent';
    if (!['debug', 'info', 'warn', 'error', 'silent'].includes(level)) throw new UsageError('--log-level must be debug, info, warn, error or silent');
    const log = createLogger(level, 'sim');
    const named = str(v.broker) ?? env.MQTT_BROKER;
    const form = str(v.topics) ?? (named !== undefined ? 'per-proplet' : 'shared');
    if (form !== 'shared' && form !== 'per-proplet') throw new UsageError(`--topics must be shared or per-proplet, got ${JSON.stringify(form)}`);

    let ids: string[] | undefined;
    let credentials: (id: string) => string | Promise<string>;
    const file = str(v.credentials);
    if (file) {
      let map: Record<string, unknown>;
      try {
        map = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
      } catch (e) {
        throw new UsageError(`--credentials ${file}: ${(e as Error).message}`);
      }
      ids = Object.keys(map).filter((k) => typeof map[k] === 'string');
      if (ids.length < devices) throw new UsageError(`--credentials ${file} has ${ids.length} accounts, --devices asks for ${devices}`);
      credentials = (id) => map[id] as string;
    } else {
      const { url, token } = apiFrom(v);
      const api = new ControlPlaneClient(url, token);
      credentials = async (id) => (await api.addProplet(id, { rotate: true })).secret; // a re-run of the same simulated fleet
    }

    const fleet: Fleet = await startFleet({
      devices,
      url: brokerUrl(named ?? 'mqtt://127.0.0.1:1883'),
      scope: scopeFrom(v),
      credentials,
      ...(ids ? { ids } : {}),
      idStyle: v.uuid ? 'uuid' : 'name',
      idPrefix: str(v['id-prefix']) ?? 'sim-',
      heartbeatMs,
      failRate,
      connectRate,
      device: {
        ramBudgetBytes: budget,
        rxBufferBytes: rx,
        chunkSize,
        maxTasks,
        deviceType: str(v['device-type']) ?? 'esp32',
        labels: pairs('label', v.label),
        perPropletTopics: form === 'per-proplet',
      },
      log: (l, m, f) => log(l, m, f),
    });
    // a start failure (unreachable API, refused enrolment) ends the run with its message
    let failure: Error | undefined;
    const started = fleet.start().catch((e: unknown) => {
      failure = e as Error;
    });

    const tty = process.stdout.isTTY === true;
    const t0 = Date.now();
    const line = () => `sim ${Math.round((Date.now() - t0) / 1000)}s | ${formatCounts(fleet.counts())}`;
    const print = () => {
      if (tty) process.stdout.write(`\r\x1b[2K${line()}`);
      else process.stdout.write(`${line()}\n`);
    };
    const ticker = setInterval(print, tty ? 500 : statusEveryMs);
    let stop!: () => void;
    const stopped = new Promise<void>((r) => (stop = r));
    const onSignal = () => stop();
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    const timer = durationMs !== undefined ? setTimeout(stop, durationMs) : undefined;
    const failWatch = setInterval(() => failure && stop(), 200);
    await stopped;
    clearInterval(ticker);
    clearInterval(failWatch);
    if (timer) clearTimeout(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    if (tty) process.stdout.write('\n');
    process.stdout.write(`${line()}\n`);
    await fleet.stop();
    await started;
    process.stdout.write(`sim: ${fleet.devices.length} devices disconnected\n`);
    if (failure) {
      process.stderr.write(`propeller sim: ${failure.message}\n`);
      return 1;
    }
    return 0;
  },
};
