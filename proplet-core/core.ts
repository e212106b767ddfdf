// The task state machine every proplet kind runs, as a pure core: state +
// event -> commands, in the shape of wasmCloud's wadm scalers. It decides which
// starts are taken, refused or ignored, what a stop does, which result goes out
// when, and what a proplet says after it reconnects. It does no I/O and reads
// no clock: the proplet around it (node, MCU) decodes messages into events,
// executes the commands over its own transport, and reports back how loading
// and running went. Its profile (limits, RAM budget) is its configuration.

import type { Result, TaskRef } from '../protocol/index.ts';
import { RamBudget } from './budget.ts';

/** What the core needs to know of a start message, decoded by the proplet. */
export interface StartInfo<P> {
  id: string;
  attempt?: number;
  /** The proplet the start names, when it names one. */
  proplet_id?: string;
  /** Module bytes, when known before loading (inline file or module_size). */
  moduleBytes?: number;
  /** Linear memory the task holds, when known before loading (memory_bytes, or the inline module's initial memory). */
  linearBytes?: number;
  fl?: boolean;
  /** Why this proplet cannot take the start whatever its load (unreadable start, no module it can get): refused with it. */
  unfit?: string;
  /** The decoded start, handed back in `load` and `run`; absent for a start that could not be decoded. */
  payload?: P;
}

export interface Profile {
  propletId: string;
  /** Tasks held at once (loading or running). */
  maxTasks: number;
  /** Largest module taken. */
  maxModuleBytes: number;
  /** RAM for tasks (module bytes + linear memory of every task held); undefined: not accounted. */
  ramBudgetBytes?: number;
  /** Final results kept while offline, sent first after the next connect (default 64). */
  outboxSize?: number;
  /** Say the new load (alive) after each task ends, not only at the next heartbeat (default true, as docs/protocol.md §4 says). */
  aliveOnFinish?: boolean;
  /** How long a stop that arrived before its start is remembered (default 60 s). */
  stopMemoryMs?: number;
  /**
   * Final results of the last attempts that ended here, kept to answer the control plane's
   * "how did it end?" (a stop for an attempt that ended) when the first copy was lost,
   * e.g. published into a broker that had just restarted empty (default 64; 0 keeps none).
   */
  retainedResults?: number;
}

/** Fields of a final result, without the identity and attempt the core fills in. */
export type Outcome = Omit<Result, 'v' | 'proplet_id' | 'task_id' | 'attempt'> & { status: 'completed' | 'failed' | 'stopped' };

export type Event<P> =
  | { t: 'start'; start: StartInfo<P>; now: number }
  | { t: 'stop'; id: string; attempt?: number; proplet_id?: string; now: number }
  /** Part of a task's memory became known while loading (the size of a chunked module, of an FL model). */
  | { t: 'sized'; key: string; part: 'module' | 'model'; bytes: number; linearBytes?: number }
  /** The module (and FL model) are in hand: the run may begin. */
  | { t: 'loaded'; key: string; moduleBytes: number; linearBytes: number }
  /** The task cannot run here but could elsewhere (found while loading). */
  | { t: 'refuse'; key: string; reason: string }
  /** The run (or the loading, when it failed) ended. */
  | { t: 'finished'; key: string; outcome: Outcome }
  | { t: 'connected' }
  | { t: 'disconnected' }
  /** A `publish` could not be sent after all (the connection was already gone): keep a final result for the next connect. */
  | { t: 'unsent'; result: Result };

export type Command<P> =
  /** Get the task's module (and FL model); answer with `loaded`, `refuse` or `finished`. */
  | { t: 'load'; key: string; id: string; payload: P }
  /** Stop getting it: the task was stopped or superseded while loading. */
  | { t: 'abort-load'; key: string; id: string }
  | { t: 'run'; key: string; id: string; payload: P; linearBytes: number }
  /** End the run (it finishes with status stopped). */
  | { t: 'kill'; key: string; id: string }
  /** Send this result; `flushed` when it waited in the outbox for a connection, `again` when it was sent before (asked by a stop). */
  | { t: 'publish'; result: Result; flushed?: true; again?: true }
  /** A final result kept for the next connection (the proplet is offline). */
  | { t: 'deferred'; result: Result }
  /** Register again with what runs (after a (re)connect): the control plane reconciles with it. */
  | { t: 'announce'; running: TaskRef[] }
  | { t: 'alive'; running: TaskRef[] }
  /** Nothing done, for a reason worth logging and counting. */
  | { t: 'ignored'; id: string; reason: IgnoreReason; detail?: string }
  | { t: 'dropped-result'; result: Result; reason: string };

export type IgnoreReason = 'not_mine' | 'duplicate' | 'stale_attempt' | 'stopped_before_start' | 'unknown_task' | 'not_held';

interface Held<P> {
  id: string;
  attempt?: number;
  key: string;
  phase: 'loading' | 'running';
  payload: P;
  fl: boolean;
}

const MEMO = 1024;

/** The key of one attempt of one task: what the runner and the budget know it by. */
export function runKey(id: string, attempt: number | undefined): string {
  return attempt === undefined ? id : `${id}@${attempt}`;
}

export class PropletCore<P> {
  readonly budget?: RamBudget;
  private readonly tasks = new Map<string, Held<P>>();
  private readonly byKey = new Map<string, Held<P>>();
  /** Stops by task id, remembered for a while: starts and stops travel on different topics, so a stop may overtake its start. */
  private readonly stops = new Map<string, { attempt?: number; at: number }>();
  /** Attempts that ended here: a redelivered start (QoS 1) for one of them is not run again. */
  private readonly ended = new Map<string, true>();
  /** The final results of the last `retainedResults` of those attempts, by run key, oldest first. */
  private readonly retained = new Map<string, Result>();
  private readonly outbox: Result[] = [];
  private online = false;

  constructor(readonly profile: Profile) {
    if (profile.ramBudgetBytes !== undefined) this.budget = new RamBudget(profile.ramBudgetBytes);
  }

  get isOnline(): boolean {
    return this.online;
  }
  /** Tasks held (loading or running). */
  get size(): number {
    return this.tasks.size;
  }
  /** Final results waiting for a connection. */
  get pendingResults(): number {
    return this.outbox.length;
  }
  running(): TaskRef[] {
    return [...this.tasks.values()].map((h) => ({ task_id: h.id, ...(h.attempt !== undefined ? { attempt: h.attempt } : {}) }));
  }
  /** True while the core still wants this attempt loaded or run. */
  holds(key: string): boolean {
    return this.byKey.has(key);
  }
  phase(id: string): 'loading' | 'running' | undefined {
    return this.tasks.get(id)?.phase;
  }

  handle(e: Event<P>): Command<P>[] {
    switch (e.t) {
      case 'start':
        return this.onStart(e.start, e.now);
      case 'stop':
        return this.onStop(e);
      case 'sized':
        return this.onSized(e);
      case 'loaded':
        return this.onLoaded(e);
      case 'refuse': {
        const h = this.byKey.get(e.key);
        if (!h) return [{ t: 'ignored', id: e.key, reason: 'not_held' }];
        this.drop(h);
        return this.refusal(h.id, h.attempt, e.reason);
      }
      case 'finished':
        return this.onFinished(e.key, e.outcome);
      case 'connected': {
        this.online = true;
        // results first: the registration's `running` no longer lists these tasks, and the
        // control plane would otherwise place them again before hearing how they ended
        const out: Command<P>[] = this.outbox.splice(0).map((result) => ({ t: 'publish', result, flushed: true }));
        out.push({ t: 'announce', running: this.running() });
        return out;
      }
      case 'disconnected':
        this.online = false;
        return [];
      case 'unsent':
        this.online = false;
        return this.publish(e.result);
    }
  }

  private onStart(s: StartInfo<P>, now: number): Command<P>[] {
    const p = this.profile;
    if (s.proplet_id !== undefined && s.proplet_id !== p.propletId) return [{ t: 'ignored', id: s.id, reason: 'not_mine' }];
    const out: Command<P>[] = [];
    const cur = this.tasks.get(s.id);
    if (cur) {
      if (cur.attempt === undefined || s.attempt === undefined || cur.attempt === s.attempt) return [{ t: 'ignored', id: s.id, reason: 'duplicate' }];
      if (s.attempt < cur.attempt) return [{ t: 'ignored', id: s.id, reason: 'stale_attempt', detail: `attempt ${s.attempt}, running ${cur.attempt}` }];
      // the control plane placed it here again: the older attempt no longer counts
      this.drop(cur);
      out.push(cur.phase === 'loading' ? { t: 'abort-load', key: cur.key, id: cur.id } : { t: 'kill', key: cur.key, id: cur.id });
    }
    if (s.attempt !== undefined && this.ended.has(runKey(s.id, s.attempt))) return [...out, { t: 'ignored', id: s.id, reason: 'duplicate', detail: 'this attempt already ended here' }];
    const st = this.stops.get(s.id);
    if (st && now - st.at < (p.stopMemoryMs ?? 60_000) && compatible(st.attempt, s.attempt)) {
      return [...out, { t: 'ignored', id: s.id, reason: 'stopped_before_start' }];
    }
    const refuse = (reason: string) => [...out, ...this.refusal(s.id, s.attempt, reason)];
    if (s.unfit !== undefined || s.payload === undefined) return refuse(s.unfit ?? 'start message unreadable');
    if (this.tasks.size >= p.maxTasks) return refuse(`at capacity: ${this.tasks.size}/${p.maxTasks} tasks running`);
    const moduleBytes = s.moduleBytes ?? 0;
    if (moduleBytes > p.maxModuleBytes) return refuse(`module of ${moduleBytes} bytes exceeds this proplet's limit of ${p.maxModuleBytes}`);
    const key = runKey(s.id, s.attempt);
    if (this.budget) {
      const need = { module: moduleBytes, linear: s.linearBytes ?? 0 };
      const short = this.budget.shortfall(need);
      if (short !== undefined) return refuse(short);
      this.budget.reserve(key, need.module + need.linear);
    }
    const h: Held<P> = { id: s.id, attempt: s.attempt, key, phase: 'loading', payload: s.payload, fl: s.fl ?? false };
    this.tasks.set(s.id, h);
    this.byKey.set(key, h);
    out.push({ t: 'load', key, id: s.id, payload: s.payload });
    return out;
  }

  private onStop(e: { id: string; attempt?: number; proplet_id?: string; now: number }): Command<P>[] {
    if (e.proplet_id !== undefined && e.proplet_id !== this.profile.propletId) return [{ t: 'ignored', id: e.id, reason: 'not_mine' }];
    this.stops.set(e.id, { attempt: e.attempt, at: e.now });
    trim(this.stops);
    const h = this.tasks.get(e.id);
    // it ended here: the control plane asks because it never heard how; say it again
    const kept = !h && e.attempt !== undefined ? this.retained.get(runKey(e.id, e.attempt)) : undefined;
    if (kept) return this.online ? [{ t: 'publish', result: kept, again: true }] : this.publish(kept);
    if (!h) return [{ t: 'ignored', id: e.id, reason: 'unknown_task', detail: 'remembered in case its start follows' }];
    // a stop for an old attempt (reconciliation) must not end the current one
    if (!compatible(e.attempt, h.attempt)) return [{ t: 'ignored', id: e.id, reason: 'stale_attempt', detail: `stop for attempt ${e.attempt}, running ${h.attempt}` }];
    if (h.phase === 'running') return [{ t: 'kill', key: h.key, id: h.id }]; // the run ends 'stopped' and reports it
    // still loading: forget it; nothing ran, and the control plane has already ended the attempt
    this.drop(h);
    return [{ t: 'abort-load', key: h.key, id: h.id }];
  }

  private onSized(e: { key: string; part: 'module' | 'model'; bytes: number; linearBytes?: number }): Command<P>[] {
    const h = this.byKey.get(e.key);
    if (!h) return [{ t: 'ignored', id: e.key, reason: 'not_held' }];
    if (e.part === 'module' && e.bytes > this.profile.maxModuleBytes) {
      this.drop(h);
      return [{ t: 'abort-load', key: h.key, id: h.id }, ...this.refusal(h.id, h.attempt, `module of ${e.bytes} bytes exceeds this proplet's limit of ${this.profile.maxModuleBytes}`)];
    }
    if (!this.budget) return [];
    const bkey = e.part === 'module' ? h.key : `${h.key}#model`;
    const bytes = e.bytes + (e.part === 'module' ? (e.linearBytes ?? 0) : 0);
    const short = this.budget.shortfall(e.part === 'module' ? { module: e.bytes, linear: e.linearBytes ?? 0 } : { module: e.bytes, linear: 0 }, bkey);
    if (short !== undefined) {
      this.drop(h);
      return [{ t: 'abort-load', key: h.key, id: h.id }, ...this.refusal(h.id, h.attempt, short)];
    }
    this.budget.reserve(bkey, bytes);
    return [];
  }

  private onLoaded(e: { key: string; moduleBytes: number; linearBytes: number }): Command<P>[] {
    const h = this.byKey.get(e.key);
    if (!h) return [{ t: 'ignored', id: e.key, reason: 'not_held' }];
    if (e.moduleBytes > this.profile.maxModuleBytes) {
      this.drop(h);
      return this.refusal(h.id, h.attempt, `module of ${e.moduleBytes} bytes exceeds this proplet's limit of ${this.profile.maxModuleBytes}`);
    }
    if (this.budget) {
      // the sizes are known now: hold exactly them
      const short = this.budget.shortfall({ module: e.moduleBytes, linear: e.linearBytes }, h.key);
      if (short !== undefined) {
        this.drop(h);
        return this.refusal(h.id, h.attempt, short);
      }
      this.budget.reserve(h.key, e.moduleBytes + e.linearBytes);
    }
    h.phase = 'running';
    return [...this.publish({ ...this.base(h.id, h.attempt), status: 'running' }), { t: 'run', key: h.key, id: h.id, payload: h.payload, linearBytes: e.linearBytes }];
  }

  private onFinished(key: string, o: Outcome): Command<P>[] {
    const h = this.byKey.get(key);
    // stopped while loading, superseded, or closed: the control plane no longer waits for it
    if (!h) return [{ t: 'ignored', id: key, reason: 'not_held' }];
    this.drop(h);
    if (h.attempt !== undefined) {
      this.ended.set(h.key, true);
      trim(this.ended);
    }
    const result: Result = { ...this.base(h.id, h.attempt), ...o };
    if (h.fl) result.fl = true;
    if (h.attempt !== undefined) this.retain(h.key, result);
    const out = this.publish(result);
    if ((this.profile.aliveOnFinish ?? true) && this.online) out.push({ t: 'alive', running: this.running() });
    return out;
  }

  private retain(key: string, result: Result): void {
    const keep = this.profile.retainedResults ?? 64;
    if (keep <= 0) return;
    this.retained.set(key, result);
    while (this.retained.size > keep) this.retained.delete(this.retained.keys().next().value!);
  }

  private refusal(id: string, attempt: number | undefined, reason: string): Command<P>[] {
    return this.publish({ ...this.base(id, attempt), status: 'refused', error: reason });
  }

  private base(id: string, attempt: number | undefined): Result {
    return { v: 1, proplet_id: this.profile.propletId, task_id: id, ...(attempt !== undefined ? { attempt } : {}) };
  }

  /** A result goes out now, or (a final one) waits in the outbox for the next connection. */
  private publish(result: Result): Command<P>[] {
    if (this.online) return [{ t: 'publish', result }];
    if (result.status === 'running') return []; // the final result follows, or the registration says it runs
    this.outbox.push(result);
    const out: Command<P>[] = [{ t: 'deferred', result }];
    if (this.outbox.length > (this.profile.outboxSize ?? 64)) out.push({ t: 'dropped-result', result: this.outbox.shift()!, reason: 'outbox full while offline' });
    return out;
  }

  private drop(h: Held<P>): void {
    if (this.tasks.get(h.id) === h) this.tasks.delete(h.id);
    this.byKey.delete(h.key);
    this.budget?.release(h.key);
    this.budget?.release(`${h.key}#model`);
  }
}

/** Two attempts name the same run unless both are given and differ. */
function compatible(a: number | undefined, b: number | undefined): boolean {
  return a === undefined || b === undefined || a === b;
}

function trim(m: Map<string, unknown>): void {
  while (m.size > MEMO) m.delete(m.keys().next().value!);
}
