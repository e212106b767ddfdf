// GET /events: one Server-Sent Events stream per browser with what changed:
// proplets, tasks, FL jobs/rounds/checkpoints and (with ?wire=1) the decoded
// wire. Changes are coalesced per flush tick (the latest state of each object
// wins) and serialized once for every client. A slow client never slows the
// control plane: what it has not read stays in its socket buffer, and past a
// bound further frames are dropped for it and it gets a 'gap' event telling
// the page to fetch the state again.
//
// Other control-plane files report to a bus through one-line `tap(this, ...)`
// hooks; a bus is attached per source object, so several control planes in one
// process keep their streams apart, and an unattached source costs one lookup.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { Counter } from 'prom-client';
import { detectEncoding, FIELDS, toDisplay, type MessageKind } from '../protocol/index.ts';
import { parseTopic } from '../topics/index.ts';
import type { FederatedJob, ModelCheckpoint, TrainingRound } from './fl/resources.ts';
import type { Logger } from './log.ts';
import type { ControlPlaneMetrics } from './metrics.ts';
import type { Proplet, Task } from './model.ts';
import type { Registry } from './registry.ts';
import type { TaskService } from './tasks.ts';

/** What the hooks in registry.ts, mqtt-gateway.ts and fl/coordinator.ts report. */
export interface Taps {
  proplet: [p: Proplet];
  'proplet-removed': [id: string];
  wire: [dir: 'in' | 'out', topic: string, payload: Uint8Array];
  'fl-job': [j: FederatedJob];
  'fl-round': [r: TrainingRound];
  'fl-checkpoint': [c: ModelCheckpoint];
  'fl-removed': [what: 'job' | 'round', name: string];
}

const buses = new WeakMap<object, EventBus>();

/** Reports an event of `source` to the bus attached to it, if any. */
export function tap<K extends keyof Taps>(source: object, kind: K, ...args: Taps[K]): void {
  buses.get(source)?.onTap(kind, args);
}

export interface WireLine {
  t: string;
  dir: 'in' | 'out';
  topic: string;
  kind: string | null;
  proplet_id?: string;
  encoding: string;
  bytes: number;
  payload: unknown;
}

export interface EventBusOptions {
  registry: Registry;
  tasks: TaskService;
  /** A proplet as GET /proplets shows it. */
  propletView: (p: Proplet) => unknown;
  metrics: ControlPlaneMetrics;
  log: Logger;
  flushMs?: number;
  /** Bytes a client may leave unread before frames are dropped for it (default 1 MiB). */
  maxClientBytes?: number;
  /** Wire lines kept per flush tick; more are counted as dropped (default 2,000). */
  maxWirePerFlush?: number;
  pingMs?: number;
}

interface Client {
  res: ServerResponse;
  wire: boolean;
  /** Frames dropped since the last gap event. */
  dropped: number;
}

export class EventBus {
  private clients = new Set<Client>();
  private wireClients = 0;
  private proplets = new Map<string, Proplet | null>();
  private tasks = new Map<string, Task | null>();
  private flJobs = new Map<string, FederatedJob>();
  private flRounds = new Map<string, TrainingRound>();
  private flCheckpoints = new Map<string, ModelCheckpoint>();
  private flRemoved: { job: Set<string>; round: Set<string> } = { job: new Set(), round: new Set() };
  private wire: WireLine[] = [];
  private wireDropped = 0;
  private timer?: NodeJS.Timeout;
  private ping?: NodeJS.Timeout;
  private readonly dropped: Counter<'reason'>;
  private readonly o: Required<Pick<EventBusOptions, 'flushMs' | 'maxClientBytes' | 'maxWirePerFlush' | 'pingMs'>> & EventBusOptions;

  constructor(opts: EventBusOptions) {
    this.o = { flushMs: 200, maxClientBytes: 1024 * 1024, maxWirePerFlush: 2000, pingMs: 15_000, ...opts };
    this.dropped = new Counter({
      name: 'propeller_events_dropped_total',
      help: 'Event-stream frames not sent: slow_client (its buffer was full) or wire_overflow (more wire messages than a tick keeps)',
      labelNames: ['reason'],
      registers: [opts.metrics.registry],
    });
    const proplet = (p: Proplet) => this.onTap('proplet', [p]);
    opts.registry.on('up', proplet);
    opts.registry.on('state', proplet);
    opts.registry.on('load', proplet);
    opts.tasks.on('changed', (t) => this.clients.size && this.tasks.set(t.id, t));
    opts.tasks.on('deleted', (id) => this.clients.size && this.tasks.set(id, null));
  }

  /** Makes `tap(source, ...)` reach this bus. */
  attach(...sources: object[]): void {
    for (const s of sources) buses.set(s, this);
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Clients dropping frames now (their buffer is full), waiting to be sent a gap. */
  get lagging(): number {
    let n = 0;
    for (const c of this.clients) if (c.dropped > 0) n++;
    return n;
  }

  onTap<K extends keyof Taps>(kind: K, args: Taps[K]): void {
    if (this.clients.size === 0) return;
    const a = args as unknown[];
    switch (kind) {
      case 'proplet':
        this.proplets.set((a[0] as Proplet).id, a[0] as Proplet);
        return;
      case 'proplet-removed':
        this.proplets.set(a[0] as string, null);
        return;
      case 'fl-job':
        this.flJobs.set((a[0] as FederatedJob).metadata.name, a[0] as FederatedJob);
        this.flRemoved.job.delete((a[0] as FederatedJob).metadata.name);
        return;
      case 'fl-round':
        this.flRounds.set((a[0] as TrainingRound).metadata.name, a[0] as TrainingRound);
        this.flRemoved.round.delete((a[0] as TrainingRound).metadata.name);
        return;
      case 'fl-checkpoint':
        this.flCheckpoints.set((a[0] as ModelCheckpoint).metadata.name, a[0] as ModelCheckpoint);
        return;
      case 'fl-removed': {
        const [what, name] = a as ['job' | 'round', string];
        (what === 'job' ? this.flJobs : this.flRounds).delete(name);
        this.flRemoved[what].add(name);
        return;
      }
      case 'wire':
        if (this.wireClients === 0) return;
        if (this.wire.length >= this.o.maxWirePerFlush) {
          this.wireDropped++;
          return;
        }
        this.wire.push(wireLine(a[0] as 'in' | 'out', a[1] as string, a[2] as Uint8Array));
        return;
    }
  }

  /** Answers GET /events; returns false for any other request. */
  serve(req: IncomingMessage, res: ServerResponse, url: URL): boolean {
    if (url.pathname !== '/events') return false;
    if (req.method !== 'GET') {
      res.writeHead(405, { 'content-type': 'application/json', allow: 'GET' }).end(JSON.stringify({ error: `${req.method} not allowed on /events; allowed: GET` }));
      return true;
    }
    const c: Client = { res, wire: url.searchParams.get('wire') === '1', dropped: 0 };
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-store', 'x-accel-buffering': 'no' });
    res.socket?.setNoDelay(true);
    // the browser reconnects after 2 s by itself; 'hello' tells the page to (re)fetch the state
    res.write(`retry: 2000\n${frame('hello', { at: new Date().toISOString(), wire: c.wire })}`);
    this.clients.add(c);
    if (c.wire) this.wireClients++;
    this.arm();
    const gone = () => {
      if (!this.clients.delete(c)) return;
      if (c.wire) this.wireClients--;
      if (this.clients.size === 0) this.disarm();
    };
    res.on('close', gone);
    res.on('error', gone);
    res.on('drain', () => this.sendGap(c));
    return true;
  }

  close(): void {
    for (const c of this.clients) c.res.end();
    this.clients.clear();
    this.wireClients = 0;
    this.disarm();
  }

  private arm(): void {
    this.timer ??= setInterval(() => this.flush(), this.o.flushMs);
    this.ping ??= setInterval(() => this.broadcast(': ping\n\n', false), this.o.pingMs);
  }

  private disarm(): void {
    clearInterval(this.timer);
    clearInterval(this.ping);
    this.timer = this.ping = undefined;
    this.proplets.clear();
    this.tasks.clear();
    this.flJobs.clear();
    this.flRounds.clear();
    this.flCheckpoints.clear();
    this.flRemoved.job.clear();
    this.flRemoved.round.clear();
    this.wire = [];
  }

  /** One tick: every category that changed, serialized once, to every client. */
  flush(): void {
    let common = '';
    if (this.proplets.size) {
      const changed: unknown[] = [];
      const removed: string[] = [];
      // read again through the registry: a heartbeat updates last_seen lazily (see Registry.alive)
      for (const [id, p] of this.proplets) {
        const now = p && this.o.registry.get(id);
        if (now) changed.push(this.o.propletView(withoutHistory(now)));
        else removed.push(id);
      }
      common += frame('proplets', { changed, removed });
      this.proplets.clear();
    }
    if (this.tasks.size) {
      const changed: unknown[] = [];
      const deleted: string[] = [];
      for (const [id, t] of this.tasks) t ? changed.push(taskSummary(t)) : deleted.push(id);
      common += frame('tasks', { changed, deleted });
      this.tasks.clear();
    }
    const { job: goneJobs, round: goneRounds } = this.flRemoved;
    if (this.flJobs.size || this.flRounds.size || this.flCheckpoints.size || goneJobs.size || goneRounds.size) {
      common += frame('fl', {
        jobs: [...this.flJobs.values()],
        rounds: [...this.flRounds.values()],
        checkpoints: [...this.flCheckpoints.values()],
        removed: { jobs: [...goneJobs], rounds: [...goneRounds] },
      });
      this.flJobs.clear();
      this.flRounds.clear();
      this.flCheckpoints.clear();
      goneJobs.clear();
      goneRounds.clear();
    }
    let wire = '';
    if (this.wire.length || this.wireDropped) {
      if (this.wireDropped) this.dropped.inc({ reason: 'wire_overflow' }, this.wireDropped);
      wire = frame('wire', { lines: this.wire, dropped: this.wireDropped });
      this.wire = [];
      this.wireDropped = 0;
    }
    if (common) this.broadcast(common, false);
    if (wire) this.broadcast(wire, true);
  }

  private broadcast(text: string, wireOnly: boolean): void {
    for (const c of this.clients) {
      if (wireOnly && !c.wire) continue;
      this.send(c, text);
    }
  }

  private send(c: Client, text: string): void {
    const res = c.res;
    if (res.writableEnded || res.destroyed) return;
    if (c.dropped > 0 && res.writableLength < this.o.maxClientBytes / 2) this.sendGap(c);
    // Node buffers what the socket has not taken; past the bound we stop adding to it
    // (a frame larger than the bound still goes to an empty buffer, or it never could)
    if (c.dropped > 0 || (res.writableLength > 0 && res.writableLength + text.length > this.o.maxClientBytes)) {
      if (c.dropped === 0) this.o.log('warn', 'event stream client is slow: dropping frames until it catches up', { buffered: res.writableLength });
      c.dropped++;
      this.dropped.inc({ reason: 'slow_client' });
      return;
    }
    res.write(text);
  }

  private sendGap(c: Client): void {
    if (c.dropped === 0 || c.res.writableEnded) return;
    const n = c.dropped;
    c.dropped = 0;
    c.res.write(frame('gap', { dropped: n }));
  }
}

function frame(event: string, data: unknown): string {
  return `event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}

/** The heartbeat history is for the API's detail; a stream of 10,000 proplets does without it. */
function withoutHistory(p: Proplet): Proplet {
  const { alive_history: _, ...rest } = p;
  return rest as Proplet;
}

/** A task without its output: the page fetches a task's detail when it shows it. */
function taskSummary(t: Task): unknown {
  const { result, ...rest } = t;
  return result ? { ...rest, has_result: true } : rest;
}

/** The line `propeller watch` prints, plus the direction seen from the control plane. */
export function wireLine(dir: 'in' | 'out', topic: string, payload: Uint8Array): WireLine {
  const parsed = parseTopic(topic);
  const kind = parsed && parsed.kind in FIELDS ? (parsed.kind as MessageKind) : undefined;
  const ctx = parsed?.propletId !== undefined ? { propletId: parsed.propletId } : {};
  const shown = toDisplay(payload, kind, ctx);
  const sender = (shown as { proplet_id?: unknown } | null)?.proplet_id;
  const propletId = parsed?.propletId ?? (typeof sender === 'string' ? sender : undefined);
  return {
    t: new Date().toISOString(),
    dir,
    topic,
    kind: parsed?.kind ?? null,
    ...(propletId !== undefined ? { proplet_id: propletId } : {}),
    encoding: detectEncoding(payload) ?? 'unknown',
    bytes: payload.length,
    payload: shown,
  };
}
