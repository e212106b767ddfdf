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

/**
 * A proplet and its heartbeat times as numbers. A heartbeat only stores
 * numbers here (no Date, no ISO string, no array growth): the Proplet's
 * `last_seen` and `alive_history` strings are brought up to date when the
 * proplet is read through the registry (get, list, values, events), at most
 * HISTORY strings per read however many heartbeats came in between.
 */
interface Entry {
  p: Proplet;
  /** Last heartbeat (or registration), ms since the epoch. */
  at: number;
  /** Heartbeats not yet in p.alive_history, a ring of the newest HISTORY. */
  pend: Float64Array;
  npend: number;
  /** Where the next pending heartbeat goes in the ring. */
  w: number;
}

export class Registry extends EventEmitter<RegistryEvents> {
  private entries = new Map<string, Entry>();
  private timer?: NodeJS.Timeout;
  /** Replicas: only the lease's owner sweeps (see replica.ts). */
  owner: () => boolean = () => true;
  /** False while the broker is away: the proplets' silence then says nothing about them. */
  hearing: () => boolean = () => true;

  constructor(
    private store: Store,
    private health: HealthConfig,
    private now: () => number = Date.now,
  ) {
    super();
    // After a restart every proplet gets a fresh grace period: we did not see
    // it while we were down, which is not its fault.
    const t = this.now();
    const at = new Date(t).toISOString();
    for (const p of store.proplets.list()) {
      p.last_seen = at;
      this.entries.set(p.id, entry(p, t));
    }
  }

  /** The entry's proplet with its heartbeat strings brought up to date. */
  private fresh(e: Entry): Proplet {
    if (e.npend === 0) return e.p;
    const h = e.p.alive_history;
    let at = '';
    for (let k = e.npend; k > 0; k--) {
      at = new Date(e.pend[(e.w - k + HISTORY) % HISTORY]!).toISOString();
      h.push(at);
    }
    if (h.length > HISTORY) h.splice(0, h.length - HISTORY);
    e.p.last_seen = at;
    e.npend = 0;
    return e.p;
  }

  get(id: string): Proplet | undefined {
    const e = this.entries.get(id);
    return e === undefined ? undefined : this.fresh(e);
  }
  list(): Proplet[] {
    return Array.from(this.entries.values(), (e) => this.fresh(e));
  }
  *values(): IterableIterator<Proplet> {
    for (const e of this.entries.values()) yield this.fresh(e);
  }
  get size(): number {
    return this.entries.size;
  }

  /** `wireEncoding` is how the registration arrived: the default answer encoding when it names none. */
  register(msg: Register, wireEncoding: Encoding = 'json', wire?: Proplet['wire']): Proplet {
    const at = new Date(this.now()).toISOString();
    const prev = this.get(msg.proplet_id);
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
    const w = wire ?? prev?.wire;
    if (w) p.wire = w;
    if (p.wasm_runtime === undefined) delete p.wasm_runtime;
    if (p.memory_used === undefined) delete p.memory_used;
    this.entries.set(p.id, entry(p, Date.parse(at)));
    this.store.proplets.put(p.id, p);
    if (prev && prev.state !== 'alive') this.emit('state', p, prev.state, 're-registered');
    this.emit('up', p, msg.running);
    return p;
  }

  /**
   * Returns false for an unknown proplet: it must register first. O(1), and
   * allocates nothing for a proplet that stays alive (see Entry).
   */
  alive(msg: Alive): boolean {
    const e = this.entries.get(msg.proplet_id);
    if (e === undefined) return false;
    const p = e.p;
    if (msg.status === 'offline') {
      this.markOffline(this.fresh(e), 'connection lost (last will)');
      return true;
    }
    const now = this.now();
    e.at = now;
    e.pend[e.w] = now;
    e.w = e.w === HISTORY - 1 ? 0 : e.w + 1;
    if (e.npend < HISTORY) e.npend++;
    const loadChanged = msg.running_tasks !== undefined && msg.running_tasks !== p.running_tasks;
    if (msg.running_tasks !== undefined) p.running_tasks = msg.running_tasks;
    if (msg.memory_used !== undefined) p.memory_used = msg.memory_used;
    tap(this, 'proplet', p);
    if (p.state !== 'alive') {
      const from = p.state;
      this.fresh(e);
      p.state = 'alive';
      p.state_since = p.last_seen;
      this.store.proplets.put(p.id, p);
      this.emit('state', p, from, 'heartbeat');
      this.emit('up', p, msg.running);
    } else {
      if (loadChanged) this.emit('load', this.fresh(e));
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
    if (!p) {
      this.entries.delete(id);
      return;
    }
    const e = this.entries.get(id);
    // liveness is what this replica hears itself: keep its own heartbeat times
    if (e) e.p = p;
    else this.entries.set(id, entry(p, this.now()));
  }

  remove(id: string): boolean {
    const had = this.entries.delete(id);
    tap(this, 'proplet-removed', id);
    this.store.proplets.delete(id);
    return had;
  }

  /** One liveness pass: missed heartbeats past the thresholds move proplets down. */
  sweep(): void {
    if (!this.owner() || !this.hearing()) return;
    const now = this.now();
    // what the transitions cause (evacuations) commits only while this replica owns the lease
    this.store.asOwner(() => {
      for (const e of this.entries.values()) {
        const p = e.p;
        if (p.state === 'failed') continue;
        const silent = now - e.at;
        if (silent >= this.health.failureThresholdMs) {
          this.transition(p, 'failed', `no heartbeat for ${Math.round(silent / 1000)} s`);
        } else if (p.state === 'alive' && silent >= this.health.offlineThresholdMs) {
          this.transition(p, 'offline', `no heartbeat for ${Math.round(silent / 1000)} s`);
        }
      }
    });
  }

  /** The broker is back: every proplet gets a fresh grace, as after a restart (it could not reach us meanwhile). */
  regrace(): void {
    const now = this.now();
    for (const e of this.entries.values()) e.at = Math.max(e.at, now);
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
    const e = this.entries.get(p.id);
    if (e !== undefined && e.p === p) this.fresh(e); // the store and listeners get the current strings
    const from = p.state;
    p.state = to;
    p.state_since = new Date(this.now()).toISOString();
    this.store.proplets.put(p.id, p);
    this.emit('state', p, from, reason);
  }
}

function entry(p: Proplet, at: number): Entry {
  return { p, at, pend: new Float64Array(HISTORY), npend: 0, w: 0 };
}
