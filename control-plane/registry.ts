// Proplet registry and liveness. Heartbeat ingestion lives here, apart from
// placement: it only records what proplets say and moves them through
// alive -> offline -> failed; others react to its events.

import { EventEmitter } from 'node:events';
import type { Alive, Encoding, Register, TaskRef } from '../protocol/index.ts';
import type { HealthConfig } from './config.ts';
import { tap } from './events.ts';
import type { Proplet, PropletState } from './model.ts';
import type { Store } from './store.ts';

const HISTORY = 10;

export interface RegistryEvents {
  /** A proplet registered or came back; `running` is what it says it runs. */
  up: [proplet: Proplet, running: TaskRef[] | undefined];
  /** alive -> offline or offline -> failed (or alive -> failed after a long silence). */
  state: [proplet: Proplet, from: PropletState, reason: string];
  /** Its reported load changed: placement may have room now. */
  load: [proplet: Proplet];
  /** A heartbeat that lists what the proplet runs: starts lost on the way show up here. */
  report: [proplet: Proplet, running: TaskRef[]];
}

export class Registry extends EventEmitter<RegistryEvents> {
  private proplets = new Map<string, Proplet>();
  private timer?: NodeJS.Timeout;
  /** Replicas: only the lease's owner sweeps (see replica.ts). */
  owner: () => boolean = () => true;

  constructor(
    private store: Store,
    private health: HealthConfig,
    private now: () => number = Date.now,
  ) {
    super();
    // After a restart every proplet gets a fresh grace period: we did not see
    // it while we were down, which is not its fault.
    const at = new Date(this.now()).toISOString();
    for (const p of store.proplets.list()) {
      p.last_seen = at;
      this.proplets.set(p.id, p);
    }
  }

  get(id: string): Proplet | undefined {
    return this.proplets.get(id);
  }
  list(): Proplet[] {
    return [...this.proplets.values()];
  }
  values(): IterableIterator<Proplet> {
    return this.proplets.values();
  }
  get size(): number {
    return this.proplets.size;
  }

  /** `wireEncoding` is how the registration arrived: the default answer encoding when it names none. */
  register(msg: Register, wireEncoding: Encoding = 'json'): Proplet {
    const at = new Date(this.now()).toISOString();
    const prev = this.proplets.get(msg.proplet_id);
    const p: Proplet = {
      id: msg.proplet_id,
      name: msg.name ?? prev?.name ?? msg.proplet_id,
      device_type: msg.device_type ?? prev?.device_type ?? 'unknown',
      proplet_type: msg.proplet_type ?? prev?.proplet_type ?? 'external',
      capabilities: msg.capabilities ?? prev?.capabilities ?? [],
      labels: msg.labels ?? prev?.labels ?? {},
      capacity: msg.capacity ?? prev?.capacity ?? {},
      wasm_runtime: msg.wasm_runtime ?? prev?.wasm_runtime,
      encoding: msg.encoding ?? wireEncoding,
      addressing: msg.addressing ?? 'shared',
      state: 'alive',
      state_since: prev?.state === 'alive' ? prev.state_since : at,
      registered_at: at,
      last_seen: at,
      running_tasks: msg.running?.length ?? prev?.running_tasks ?? 0,
      memory_used: prev?.memory_used,
      alive_history: [...(prev?.alive_history ?? []), at].slice(-HISTORY),
    };
    if (p.wasm_runtime === undefined) delete p.wasm_runtime;
    if (p.memory_used === undefined) delete p.memory_used;
    this.proplets.set(p.id, p);
    this.store.proplets.put(p.id, p);
    if (prev && prev.state !== 'alive') this.emit('state', p, prev.state, 're-registered');
    this.emit('up', p, msg.running);
    return p;
  }

  /** Returns false for an unknown proplet: it must register first. */
  alive(msg: Alive): boolean {
    const p = this.proplets.get(msg.proplet_id);
    if (!p) return false;
    if (msg.status === 'offline') {
      this.markOffline(p, 'connection lost (last will)');
      return true;
    }
    const now = this.now();
    const at = new Date(now).toISOString();
    p.last_seen = at;
    p.alive_history.push(at);
    if (p.alive_history.length > HISTORY) p.alive_history.shift();
    const loadChanged = msg.running_tasks !== undefined && msg.running_tasks !== p.running_tasks;
    if (msg.running_tasks !== undefined) p.running_tasks = msg.running_tasks;
    if (msg.memory_used !== undefined) p.memory_used = msg.memory_used;
    tap(this, 'proplet', p);
    if (p.state !== 'alive') {
      const from = p.state;
      p.state = 'alive';
      p.state_since = at;
      this.store.proplets.put(p.id, p);
      this.emit('state', p, from, 'heartbeat');
      this.emit('up', p, msg.running);
    } else {
      if (loadChanged) this.emit('load', p);
      if (msg.running) this.emit('report', p, msg.running);
    }
    return true;
  }

  markOffline(p: Proplet, reason: string): void {
    if (p.state !== 'alive') return;
    this.transition(p, 'offline', reason);
  }

  /** Another replica registered, changed or removed this proplet in the store: take its version. */
  adopt(id: string, p: Proplet | undefined): void {
    const old = this.proplets.get(id);
    if (!p) {
      this.proplets.delete(id);
      return;
    }
    // liveness is what this replica hears itself: keep its own last_seen
    if (old) p.last_seen = old.last_seen > p.last_seen ? old.last_seen : p.last_seen;
    this.proplets.set(id, p);
  }

  remove(id: string): boolean {
    const had = this.proplets.delete(id);
    tap(this, 'proplet-removed', id);
    this.store.proplets.delete(id);
    return had;
  }

  /** One liveness pass: missed heartbeats past the thresholds move proplets down. */
  sweep(): void {
    if (!this.owner()) return;
    const now = this.now();
    for (const p of this.proplets.values()) {
      if (p.state === 'failed') continue;
      const silent = now - Date.parse(p.last_seen);
      if (silent >= this.health.failureThresholdMs) {
        this.transition(p, 'failed', `no heartbeat for ${Math.round(silent / 1000)} s`);
      } else if (p.state === 'alive' && silent >= this.health.offlineThresholdMs) {
        this.transition(p, 'offline', `no heartbeat for ${Math.round(silent / 1000)} s`);
      }
    }
  }

  start(): void {
    // Checking at least 4 times per offline threshold keeps detection within a quarter of it.
    const every = Math.max(50, Math.min(this.health.checkIntervalMs, this.health.offlineThresholdMs / 4));
    this.timer = setInterval(() => this.sweep(), every);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private transition(p: Proplet, to: PropletState, reason: string): void {
    const from = p.state;
    p.state = to;
    p.state_since = new Date(this.now()).toISOString();
    this.store.proplets.put(p.id, p);
    this.emit('state', p, from, reason);
  }
}
