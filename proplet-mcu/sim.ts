// A fleet of simulated MCU proplets in one process: each device has its own
// MQTT connection and credentials, they connect at a bounded rate, and they
// share one small sandbox (a warm pool of 4 workers by default), since a
// process cannot afford a worker per device. `failRate` makes devices lose
// their connection at random (no DISCONNECT: the broker publishes the will)
// and come back through their own jittered backoff.

import { randomBytes } from 'node:crypto';
import { WasmRunner } from '../wasm-runtime/index.ts';
import type { Scope } from '../topics/index.ts';
import { McuProplet, type Log, type McuPropletOptions } from './device.ts';

export interface FleetOptions {
  devices: number;
  url: string;
  scope: Scope;
  /** The MQTT password of a device, e.g. from the control plane's POST /proplets. */
  credentials(id: string): string | Promise<string>;
  /** Device ids: given, or generated ('uuid': lowercase UUIDs, 16 bytes on the wire; 'name': `<prefix><n>`). */
  ids?: string[];
  idStyle?: 'uuid' | 'name';
  idPrefix?: string;
  heartbeatMs?: number;
  /** Probability per heartbeat period that a device drops its connection (default 0). */
  failRate?: number;
  /** New connections per second while starting (default 500). */
  connectRate?: number;
  /**
   * Devices started and not yet online, at most (default 64): on a slow or
   * busy host the pace drops below connectRate instead of piling up connection
   * attempts that time out and retry.
   */
  maxPendingConnects?: number;
  /** Credential look-ups in parallel while starting (default 8). */
  credentialConcurrency?: number;
  /** Options for every device (budget, buffer, chunk size...). */
  device?: Partial<McuPropletOptions>;
  /** Workers of the shared sandbox (default 4). */
  runnerPoolSize?: number;
  runner?: WasmRunner;
  log?: Log;
  random?: () => number;
}

export interface FleetCounts {
  devices: number;
  /** Devices started so far (the connect rate paces them). */
  started: number;
  /** Online: connected, subscribed, registered. */
  connected: number;
  /** Online without a task. */
  idle: number;
  /** Online with at least one task loading or running. */
  running: number;
  /** Waiting for their first connection. */
  connecting: number;
  /** Were online, lost it, and are in backoff or reconnecting. */
  reconnecting: number;
  /** Connections dropped on purpose (failRate). */
  drops: number;
  disconnects: number;
  tasksCompleted: number;
  tasksFailed: number;
  refused: number;
  rxDropped: number;
}

/** A lowercase UUID made from a per-fleet random prefix and the device number, so ids are unique and sortable. */
export function fleetUuid(prefix: string, n: number): string {
  const h = n.toString(16).padStart(12, '0');
  return `${prefix.slice(0, 8)}-${prefix.slice(8, 12)}-4${prefix.slice(12, 15)}-8${prefix.slice(15, 18)}-${h}`;
}

export class Fleet {
  readonly devices: McuProplet[] = [];
  readonly runner: WasmRunner;
  private readonly ownRunner: boolean;
  private drops = 0;
  private stopped = false;
  private failTimer?: NodeJS.Timeout;
  private starting?: Promise<void>;
  private readonly ids: string[];
  private wakeAll = (): void => {};

  constructor(readonly o: FleetOptions) {
    if (!Number.isInteger(o.devices) || o.devices < 0) throw new RangeError(`devices must be a non-negative integer, got ${o.devices}`);
    this.ownRunner = o.runner === undefined;
    this.runner = o.runner ?? new WasmRunner({ poolSize: o.runnerPoolSize ?? 4, maxConcurrent: o.runnerPoolSize ?? 4, outputLimitBytes: 16 * 1024 });
    if (o.ids) this.ids = o.ids.slice(0, o.devices);
    else if ((o.idStyle ?? 'uuid') === 'uuid') {
      const prefix = o.idPrefix && /^[0-9a-f]{20}$/.test(o.idPrefix) ? o.idPrefix : randomBytes(10).toString('hex');
      this.ids = Array.from({ length: o.devices }, (_, i) => fleetUuid(prefix, i + 1));
    } else {
      const width = String(o.devices).length;
      this.ids = Array.from({ length: o.devices }, (_, i) => `${o.idPrefix ?? 'sim-'}${String(i + 1).padStart(width, '0')}`);
    }
    if (this.ids.length < o.devices) throw new RangeError(`${o.devices} devices asked for, ${this.ids.length} ids given`);
  }

  /** Starts every device at the connect rate; resolves when the last one has been started (not connected). */
  start(): Promise<void> {
    this.starting ??= this.startAll();
    this.armFailures();
    return this.starting;
  }

  private async startAll(): Promise<void> {
    const rate = this.o.connectRate ?? 500;
    const interval = 1000 / rate;
    const maxPending = Math.max(1, this.o.maxPendingConnects ?? 64);
    let nextAt = performance.now();
    let next = 0;
    let pending = 0;
    const waiting: (() => void)[] = [];
    this.wakeAll = () => waiting.splice(0).forEach((w) => w());
    const worker = async () => {
      while (!this.stopped && next < this.ids.length) {
        while (pending >= maxPending && !this.stopped) await new Promise<void>((r) => waiting.push(r));
        if (this.stopped || next >= this.ids.length) return;
        const id = this.ids[next++]!;
        pending++;
        // pace: one start per interval across all workers
        const now = performance.now();
        const wait = nextAt - now;
        nextAt = Math.max(now, nextAt) + interval;
        if (wait >= 1) await new Promise((r) => setTimeout(r, wait));
        const secret = await this.o.credentials(id);
        if (this.stopped) return;
        const d = new McuProplet({
          heartbeatMs: this.o.heartbeatMs,
          ...this.o.device,
          id,
          secret,
          url: this.o.url,
          scope: this.o.scope,
          runner: this.runner,
          log: this.o.log,
          random: this.o.random,
        });
        this.devices.push(d);
        void d.start().then(() => {
          pending--;
          waiting.shift()?.();
        });
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, this.o.credentialConcurrency ?? 8) }, worker));
  }

  private armFailures(): void {
    const rate = this.o.failRate ?? 0;
    if (rate <= 0 || this.failTimer) return;
    const period = this.o.heartbeatMs ?? this.o.device?.heartbeatMs ?? 10_000;
    const tick = Math.min(100, period / 10);
    const random = this.o.random ?? Math.random;
    let last = performance.now();
    this.failTimer = setInterval(() => {
      // from the time that really passed, so that a late timer does not lower the rate
      const now = performance.now();
      const p = 1 - (1 - rate) ** ((now - last) / period);
      last = now;
      for (const d of this.devices) {
        if (d.online && random() < p) {
          this.drops++;
          d.dropConnection();
        }
      }
    }, tick);
    this.failTimer.unref();
  }

  counts(): FleetCounts {
    const c: FleetCounts = { devices: this.o.devices, started: this.devices.length, connected: 0, idle: 0, running: 0, connecting: 0, reconnecting: 0, drops: this.drops, disconnects: 0, tasksCompleted: 0, tasksFailed: 0, refused: 0, rxDropped: 0 };
    for (const d of this.devices) {
      if (d.online) {
        c.connected++;
        if (d.runningTasks > 0) c.running++;
        else c.idle++;
      } else if (d.state !== 'closed') {
        if (d.stats.connects === 0) c.connecting++;
        else c.reconnecting++;
      }
      c.disconnects += d.stats.disconnects;
      c.tasksCompleted += d.stats.completed;
      c.tasksFailed += d.stats.failed;
      c.refused += d.stats.refused;
      c.rxDropped += d.stats.rxDropped;
    }
    return c;
  }

  /** Resolves when `n` devices (default all) are online at once; rejects after `timeoutMs`. */
  async waitOnline(n = this.o.devices, timeoutMs = 60_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    for (;;) {
      const c = this.counts();
      if (c.connected >= n) return;
      if (Date.now() > end) throw new Error(`${c.connected} of ${n} devices online after ${timeoutMs} ms (${c.connecting} connecting, ${c.reconnecting} reconnecting)`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Disconnects every device cleanly, in batches, and closes the shared sandbox. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.wakeAll();
    if (this.failTimer) clearInterval(this.failTimer);
    await this.starting?.catch(() => {});
    for (let i = 0; i < this.devices.length; i += 500) {
      await Promise.all(this.devices.slice(i, i + 500).map((d) => d.close().catch(() => {})));
    }
    if (this.ownRunner) await this.runner.close();
  }
}

/** Creates a fleet and starts it (paced); `await fleet.waitOnline()` for the moment all are online. */
export async function startFleet(o: FleetOptions): Promise<Fleet> {
  const f = new Fleet(o);
  void f.start().catch((e: unknown) => o.log?.('error', 'fleet start failed', { error: (e as Error).message }));
  return f;
}

/** One line of counts, as `propeller sim` prints it. */
export function formatCounts(c: FleetCounts): string {
  return `devices ${c.started}/${c.devices} | connected ${c.connected} | idle ${c.idle} | running ${c.running} | connecting ${c.connecting} | reconnecting ${c.reconnecting} | drops ${c.drops} | tasks done ${c.tasksCompleted} failed ${c.tasksFailed} refused ${c.refused}${c.rxDropped ? ` | rx dropped ${c.rxDropped}` : ''}`;
}
