// The durable store's core, shared by SQLite and PostgreSQL: reads are served
// synchronously from an in-memory mirror loaded at open; writes update the
// mirror at once and are queued, then committed together in ONE transaction
// a millisecond after the first of them, or at the end of the turn in which
// someone waits for them (flush): group commit. Each row carries a version
// and every write is guarded by the version this process last saw (optimistic concurrency, like
// Kubernetes' resourceVersion): a write that lost to another writer is counted,
// logged and dropped, and the row is reloaded — never silently overwritten.

import type { FederatedJob, ModelCheckpoint, TrainingRound } from './fl/resources.ts';
import { FencedError, type Fence } from './lease.ts';
import { silent, type Logger } from './log.ts';
import type { Proplet, PropletGroup, Task, Transition } from './model.ts';
import { zeroStats, type Collection, type Store, type StoredCredential, type StoreOutage } from './store.ts';
import { sameTransition, taskFromRow, taskToRow, type DocKind, type Engine, type HistoryWrite, type LoadedTask, type Op, type RowKey, type TaskRow } from './store-rows.ts';

export interface MirrorOptions {
  log?: Logger;
  /** Called after a write lost to another writer and the row was reloaded: re-read it. */
  onConflict?: (key: RowKey) => void;
  /** Called after another writer's committed change was loaded into the mirror (PostgreSQL's change feed). */
  onChange?: (key: RowKey) => void;
  /** Replicas: the lease's fence while this replica owns it; writes made in asOwner carry it. */
  fence?: () => Fence | undefined;
  /** Replicas: the database refused writes made under a stale fence (another replica owns the lease now). */
  onFenced?: (reason: string) => void;
}

/** A write as made by a caller; its versions are filled in at commit time. */
type Intent = (
  | { t: 'task'; key: string; id: string; row: TaskRow | null; spec: boolean; hist?: HistoryWrite }
  | { t: 'doc'; key: string; kind: DocKind; id: string; doc: string | null }
  | { t: 'module'; key: string; digest: string; bytes: Uint8Array }
) & { epoch: number; fence: Fence | undefined };

interface TaskEntry {
  row: TaskRow;
  history: Transition[];
}

type Undo = () => void;
type NewIntent = Intent extends infer I ? (I extends Intent ? Omit<I, 'epoch' | 'fence'> : never) : never;

/** How long the first write waits for others to share its commit (writes nobody awaits: flush() does not wait for it). */
const GROUP_WINDOW_MS = 1;

const keyOf = (kind: string, id: string) => `${kind}\u0000${id}`;
const splitKey = (key: string): RowKey => {
  const i = key.indexOf('\u0000');
  return { kind: key.slice(0, i) as RowKey['kind'], id: key.slice(i + 1) };
};

export class MirrorStore implements Store {
  readonly tasks: Collection<Task>;
  readonly proplets: Collection<Proplet>;
  readonly groups: Collection<PropletGroup>;
  readonly credentials: Collection<StoredCredential>;
  readonly flJobs: Collection<FederatedJob>;
  readonly flRounds: Collection<TrainingRound>;
  readonly flCheckpoints: Collection<ModelCheckpoint>;
  readonly stats = zeroStats();

  private taskRows = new Map<string, TaskEntry>();
  private docs = new Map<DocKind, Map<string, string>>();
  /** Version of each row in the database, as of our last commit or load. */
  private dbVersion = new Map<string, number>();
  /** Bumped when a row is reloaded after a conflict: writes made before are stale. */
  private epochs = new Map<string, number>();
  private queue: Intent[][] = [];
  /** Rows other writers committed, by key: the version they reached (change feed), not yet reloaded. */
  private remote = new Map<string, number>();
  /** The feed was interrupted: these are all the rows there are (others were deleted meanwhile). */
  private remoteFull = false;
  /** Groups enqueued, and groups committed (or dropped): flush() waits for the count it saw. */
  private enqueued = 0;
  private settled = 0;
  /** The group `atomically` is building, and how to undo it in the mirror. */
  private open?: { intents: Intent[]; undo: Undo[] };
  private flushing?: Promise<void>;
  private groupTimer?: NodeJS.Timeout;
  private retry?: NodeJS.Timeout;
  private closed = false;
  /** Set inside asOwner: the fence its writes carry. */
  private fencing?: Fence;
  /** Since when commits fail because the database is unreachable. */
  private down?: StoreOutage;
  private readonly log: Logger;

  protected constructor(
    protected readonly engine: Engine,
    private o: MirrorOptions = {},
  ) {
    this.log = o.log ?? silent;
    this.tasks = this.taskCollection();
    this.proplets = this.docCollection<Proplet>('proplet');
    this.groups = this.docCollection<PropletGroup>('group');
    this.credentials = this.docCollection<StoredCredential>('credential');
    this.flJobs = this.docCollection<FederatedJob>('fl-job');
    this.flRounds = this.docCollection<TrainingRound>('fl-round');
    this.flCheckpoints = this.docCollection<ModelCheckpoint>('fl-checkpoint');
  }

  /** Loads every row into the mirror; the subclasses' open() calls it once. */
  protected async load(): Promise<void> {
    const { tasks, docs } = await this.engine.load();
    for (const t of tasks) this.setLoaded('task', t.row.id, t);
    for (const d of docs) this.setLoaded(d.kind, d.id, d);
  }

  /** Follows other writers' commits (where the engine has a change feed). */
  protected async watch(): Promise<void> {
    await this.engine.watch?.((rows, full) => {
      if (full) {
        this.remote.clear();
        this.remoteFull = true;
      }
      for (const r of rows) {
        const key = keyOf(r.kind, r.id);
        this.remote.set(key, Math.max(this.remote.get(key) ?? 0, r.version));
      }
      this.schedule();
    });
  }

  private setLoaded(kind: RowKey['kind'], id: string, row: LoadedTask | { version: number; doc: string } | undefined): void {
    const key = keyOf(kind, id);
    if (kind === 'task') {
      if (row) this.taskRows.set(id, { row: (row as LoadedTask).row, history: (row as LoadedTask).history });
      else this.taskRows.delete(id);
    } else {
      const m = this.docMap(kind);
      if (row) m.set(id, (row as { doc: string }).doc);
      else m.delete(id);
    }
    if (row) this.dbVersion.set(key, row.version);
    else this.dbVersion.delete(key);
  }

  private docMap(kind: DocKind): Map<string, string> {
    let m = this.docs.get(kind);
    if (!m) this.docs.set(kind, (m = new Map()));
    return m;
  }

  private taskCollection(): Collection<Task> {
    const rows = this.taskRows;
    return {
      get: (id) => {
        const e = rows.get(id);
        return e && taskFromRow(e.row, e.history);
      },
      list: () => [...rows.values()].map((e) => taskFromRow(e.row, e.history)),
      put: (id, t) => {
        const prev = rows.get(id);
        const row = taskToRow(t);
        const hist = historyWrite(prev?.history, t.history ?? []);
        const next: TaskEntry = { row, history: hist.replace ? hist.entries : prev!.history.concat(hist.entries) };
        rows.set(id, next);
        this.record({ t: 'task', key: keyOf('task', id), id, row, spec: !prev || prev.row.spec !== row.spec, hist }, () => (prev ? rows.set(id, prev) : rows.delete(id)));
      },
      delete: (id) => this.deleteTask(id),
    };
  }

  private deleteTask(id: string): boolean {
    const prev = this.taskRows.get(id);
    if (!prev) return false;
    this.taskRows.delete(id);
    this.record({ t: 'task', key: keyOf('task', id), id, row: null, spec: false }, () => this.taskRows.set(id, prev));
    return true;
  }

  private docCollection<T>(kind: DocKind): Collection<T> {
    const m = this.docMap(kind);
    return {
      get: (id) => {
        const d = m.get(id);
        return d === undefined ? undefined : (JSON.parse(d) as T);
      },
      list: () => [...m.values()].map((d) => JSON.parse(d) as T),
      put: (id, v) => {
        const prev = m.get(id);
        const doc = JSON.stringify(v);
        m.set(id, doc);
        this.record({ t: 'doc', key: keyOf(kind, id), kind, id, doc }, () => (prev === undefined ? m.delete(id) : m.set(id, prev)));
      },
      delete: (id) => {
        const prev = m.get(id);
        if (prev === undefined) return false;
        m.delete(id);
        this.record({ t: 'doc', key: keyOf(kind, id), kind, id, doc: null }, () => m.set(id, prev));
        return true;
      },
    };
  }

  putModule(digest: string, bytes: Uint8Array): void {
    if (this.engine.getModule(digest)) return;
    this.engine.cacheModule(digest, bytes);
    this.record({ t: 'module', key: keyOf('module', digest), digest, bytes }, () => {});
  }
  getModule(digest: string): Uint8Array | undefined {
    return this.engine.getModule(digest);
  }

  deleteTasks(ids: readonly string[]): number {
    return this.atomically(() => {
      let n = 0;
      for (const id of ids) if (this.deleteTask(id)) n++;
      return n;
    });
  }

  atomically<R>(fn: () => R): R {
    const outer = !this.open;
    const open = (this.open ??= { intents: [], undo: [] });
    const mark = { intents: open.intents.length, undo: open.undo.length };
    try {
      const r = fn();
      if (outer) {
        this.open = undefined;
        if (open.intents.length) this.enqueue(open.intents);
      }
      return r;
    } catch (e) {
      // roll the mirror back to where this (possibly nested) group began
      for (const u of open.undo.splice(mark.undo).reverse()) u();
      open.intents.length = mark.intents;
      if (outer) this.open = undefined;
      throw e;
    }
  }

  asOwner<R>(fn: () => R): R {
    const prev = this.fencing;
    // owner work run by a replica that does not hold the lease (a timer armed while it did) is refused at commit
    this.fencing = this.o.fence && (this.o.fence() ?? NOT_OWNER);
    try {
      return fn();
    } finally {
      this.fencing = prev;
    }
  }

  outage(): StoreOutage | undefined {
    return this.down ?? this.engine.outage?.();
  }

  private record(i: NewIntent, undo: Undo): void {
    if (this.closed) {
      // a late event after shutdown: nothing can be committed any more
      this.stats.dropped++;
      this.log('warn', 'store write after close; dropped', { engine: this.engine.name, row: i.key.replace('\u0000', '/') });
      return;
    }
    const intent = { ...i, epoch: this.epochs.get(i.key) ?? 0, fence: this.fencing } as Intent;
    if (this.open) {
      this.open.intents.push(intent);
      this.open.undo.push(undo);
    } else this.enqueue([intent]);
  }

  private enqueue(group: Intent[]): void {
    this.queue.push(group);
    this.enqueued++;
    this.stats.pending += group.length;
    this.schedule();
  }

  private schedule(): void {
    // a running flush loops until the queue is empty; a pending retry waits its turn
    if (this.groupTimer || this.retry || this.flushing || this.closed) return;
    // Commit GROUP_WINDOW_MS after the first write rather than at the end of its turn: the
    // writes of the next few turns join the transaction (a task's placement, its Running and
    // its result are one commit instead of three). Nobody waits for it: whoever must see a
    // write committed (an API answer, a replica's start) calls flush(), which commits at the end of its turn.
    this.groupTimer = setTimeout(() => {
      this.groupTimer = undefined;
      void this.flush().catch(() => {});
    }, GROUP_WINDOW_MS);
  }

  /** Resolves when everything queued before the call is in the database (later writes need not wait). */
  async flush(): Promise<void> {
    const target = this.enqueued;
    while (this.settled < target || this.remote.size || this.remoteFull) {
      if (this.flushing) {
        await this.flushing.catch(() => {});
        continue;
      }
      // at the end of this turn: every caller waiting now, and what this turn still writes, share the commit
      this.flushing = new Promise<void>((r) => setImmediate(r)).then(() => this.commitQueued());
      try {
        await this.flushing;
      } finally {
        this.flushing = undefined;
        // writes made while this commit was in flight: the next batch
        if (this.queue.length) this.schedule();
      }
    }
  }

  private async commitQueued(): Promise<void> {
    const groups = this.queue;
    this.queue = [];
    try {
      // first what others committed, so that a write made over it is known stale
      if (this.remote.size || this.remoteFull) await this.applyRemote(groups);
      await this.commitGroups(groups);
      this.stats.pending -= groups.reduce((n, g) => n + g.length, 0);
      this.settled += groups.length;
      if (this.down) this.log('info', 'store reachable again', { engine: this.engine.name, down_s: (Date.now() - this.down.since) / 1000 });
      this.down = undefined;
    } catch (e) {
      // the database is unreachable: keep the writes, in order, and try again
      this.stats.failures++;
      this.down = { since: this.down?.since ?? Date.now(), error: (e as Error).message };
      this.queue = groups.concat(this.queue);
      this.log('error', 'store commit failed; retrying', { engine: this.engine.name, error: (e as Error).message, pending: this.stats.pending });
      if (!this.closed && !this.retry)
        this.retry = setTimeout(() => {
          this.retry = undefined;
          this.schedule();
        }, 1000);
      throw e;
    }
  }

  /**
   * All groups in one transaction. The groups that lose a version check are set aside (their rows
   * reloaded) and the rest go again in one transaction: with replicas, a conflict is common and one
   * transaction per group after it would multiply the database's work. A group the database refuses
   * (bad data, a stale fence) falls back to one transaction per group, to find which.
   */
  private async commitGroups(groups: Intent[][]): Promise<void> {
    let live = this.dropStaleGroups(groups);
    // owner-only writes made under different tokens (the lease changed hands meanwhile) go one group at a time
    let fence: Fence | undefined;
    let mixed = false;
    for (const g of live) {
      const f = fenceOf(g);
      if (f && fence && f.token !== fence.token) mixed = true;
      fence ??= f;
    }
    while (!mixed && live.length) {
      const ops = this.coalesce(live);
      if (!ops.length) return;
      let conflicts: RowKey[];
      try {
        conflicts = await this.engine.commit(ops, fence);
      } catch (e) {
        if (!this.engine.isDataError(e) && !(e instanceof FencedError)) throw e;
        break;
      }
      if (!conflicts.length) return this.committed(ops);
      const lost = new Set(conflicts.map((k) => keyOf(k.kind, k.id)));
      const losers = live.filter((g) => g.some((i) => lost.has(i.key)));
      if (!losers.length) break; // not attributable to a group: find it one group at a time
      await this.conflicted(this.coalesce(losers), conflicts);
      // the reload made any other write to those rows stale
      const lostGroups = new Set(losers);
      live = this.dropStaleGroups(live.filter((g) => !lostGroups.has(g)));
    }
    for (const g of live) {
      if (this.isStale(g)) {
        this.dropStale(g);
        continue;
      }
      const ops = this.coalesce([g]);
      if (!ops.length) continue;
      let conflicts: RowKey[];
      try {
        conflicts = await this.engine.commit(ops, fenceOf(g));
      } catch (e) {
        if (e instanceof FencedError) {
          await this.refuseFenced(ops, e);
          continue;
        }
        if (!this.engine.isDataError(e)) throw e;
        this.stats.dropped += ops.length;
        this.log('error', 'store write refused by the database; dropped', { engine: this.engine.name, keys: ops.map(describe), error: (e as Error).message });
        await this.reloadRows(ops.filter((o) => o.t !== 'module').map((o) => keyOf(o.t === 'task' ? 'task' : o.kind, o.id)));
        continue;
      }
      if (conflicts.length) await this.conflicted(ops, conflicts);
      else this.committed(ops);
    }
  }

  private dropStaleGroups(groups: Intent[][]): Intent[][] {
    const live: Intent[][] = [];
    for (const g of groups) {
      if (this.isStale(g)) this.dropStale(g);
      else live.push(g);
    }
    return live;
  }

  /** Writes that lost a version check: counted, their rows reloaded, the losers told. */
  private async conflicted(ops: Op[], conflicts: RowKey[]): Promise<void> {
    this.stats.conflicts += conflicts.length;
    this.log('warn', 'store write conflict: another writer changed these rows first; reloaded them', {
      engine: this.engine.name,
      rows: conflicts.map((k) => `${k.kind}/${k.id}`),
      dropped_writes: ops.length,
    });
    await this.reloadRows(ops.filter((o) => o.t !== 'module').map((o) => keyOf(o.t === 'task' ? 'task' : o.kind, o.id)), conflicts);
  }

  /** An ex-owner's writes: never committed; its view goes back to what the database has, and it steps down. */
  private async refuseFenced(ops: Op[], e: FencedError): Promise<void> {
    this.stats.fenced += ops.length;
    const keys = ops.filter((o) => o.t !== 'module').map((o) => keyOf(o.t === 'task' ? 'task' : o.kind, o.id));
    this.log('warn', 'owner write refused: another replica owns the lease now; dropped', { engine: this.engine.name, rows: keys.map((k) => k.replace('\u0000', '/')), reason: e.message });
    this.o.onFenced?.(e.message);
    await this.reloadRows(keys, keys.map(splitKey));
  }

  private async applyRemote(queued: Intent[][]): Promise<void> {
    const changes = this.remote;
    const full = this.remoteFull;
    this.remote = new Map();
    this.remoteFull = false;
    // our own commits come back with versions we already have
    const keys = [...changes].filter(([k, v]) => v > (this.dbVersion.get(k) ?? 0)).map(([k]) => k);
    if (full) for (const k of this.dbVersion.keys()) if (!changes.has(k)) keys.push(k); // deleted while the feed was down
    if (!keys.length) return;
    try {
      const pending = new Set(queued.flatMap((g) => g.map((i) => i.key)));
      await this.reloadRows(keys);
      for (const k of keys) {
        const key = splitKey(k);
        if (!pending.has(k)) this.o.onChange?.(key);
      }
    } catch (e) {
      // the database is away: ask again next time
      for (const [k, v] of changes) this.remote.set(k, Math.max(this.remote.get(k) ?? 0, v));
      this.remoteFull ||= full;
      throw e;
    }
  }

  private isStale(g: Intent[]): boolean {
    return g.some((i) => (this.epochs.get(i.key) ?? 0) !== i.epoch);
  }

  /** A write made before its row was reloaded: the caller had not seen the winner's change. */
  private dropStale(g: Intent[]): void {
    this.stats.conflicts++;
    const rows = g.filter((i) => i.t !== 'module').map((i) => splitKey(i.key));
    this.log('warn', 'store write conflict: written over a row that was reloaded since; dropped', { engine: this.engine.name, rows: rows.map((k) => `${k.kind}/${k.id}`) });
    for (const k of rows) this.o.onConflict?.(k);
  }

  private async reloadRows(keys: string[], notify: RowKey[] = []): Promise<void> {
    const rows = keys.map(splitKey);
    const fresh = await this.engine.reload(rows);
    rows.forEach((k, i) => {
      const key = keyOf(k.kind, k.id);
      this.setLoaded(k.kind, k.id, fresh[i] as never);
      this.epochs.set(key, (this.epochs.get(key) ?? 0) + 1);
    });
    for (const k of notify) this.o.onConflict?.(k);
  }

  /** One op per row: the last write wins, guarded by the version the database has. */
  private coalesce(groups: Intent[][]): Op[] {
    const byKey = new Map<string, Op>();
    for (const g of groups)
      for (const i of g) {
        const prev = byKey.get(i.key);
        if (i.t === 'module') {
          byKey.set(i.key, { t: 'module', digest: i.digest, bytes: i.bytes });
          continue;
        }
        const expected = this.dbVersion.get(i.key) ?? 0;
        if (i.t === 'doc') {
          byKey.set(i.key, { t: 'doc', kind: i.kind, id: i.id, expected, next: expected + 1, doc: i.doc });
          continue;
        }
        const p = prev as Extract<Op, { t: 'task' }> | undefined;
        byKey.set(i.key, {
          t: 'task',
          id: i.id,
          expected,
          next: expected + 1,
          row: i.row,
          spec: i.spec || !!p?.spec,
          hist: i.row === null ? undefined : mergeHistory(p?.row ? p.hist : undefined, i.hist!),
        });
      }
    const ops: Op[] = [];
    for (const op of byKey.values()) {
      if (op.t !== 'module' && op.expected === 0 && (op.t === 'task' ? op.row === null : op.doc === null)) continue; // created and deleted before any commit
      ops.push(op);
    }
    // modules first: a task committed in the same transaction may refer to one
    return ops.sort((a, b) => (a.t === 'module' ? 0 : 1) - (b.t === 'module' ? 0 : 1));
  }

  private committed(ops: Op[]): void {
    this.stats.commits++;
    this.stats.writes += ops.length;
    for (const op of ops) {
      if (op.t === 'module') continue;
      const key = keyOf(op.t === 'task' ? 'task' : op.kind, op.id);
      if ((op.t === 'task' ? op.row : op.doc) === null) this.dbVersion.delete(key);
      else this.dbVersion.set(key, op.next);
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    clearTimeout(this.groupTimer);
    clearTimeout(this.retry);
    this.groupTimer = this.retry = undefined;
    // a graceful stop loses nothing: drain, retrying while the database is away for a while
    for (let attempt = 0; ; attempt++) {
      try {
        await this.flush();
        break;
      } catch (e) {
        if (attempt >= 10) {
          this.log('error', 'store closed with writes not committed', { engine: this.engine.name, pending: this.stats.pending, error: (e as Error).message });
          break;
        }
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    this.closed = true;
    clearTimeout(this.retry);
    await this.engine.close();
  }
}

/** What of a task's history is new since the mirror last had it. */
function historyWrite(prev: Transition[] | undefined, now: Transition[]): HistoryWrite {
  const n = prev?.length ?? 0;
  if (prev && n > 0 && now.length >= n && sameTransition(prev[0], now[0]) && sameTransition(prev[n - 1], now[n - 1])) {
    return { replace: false, from: n, entries: now.slice(n).map((h) => ({ ...h })) };
  }
  // first write, or the history was trimmed: rewrite it
  return { replace: true, from: 0, entries: now.map((h) => ({ ...h })) };
}

const NOT_OWNER: Fence = { name: '', holder: '', token: -1 };

/** The fence a group's writes were made under (asOwner), if any. */
function fenceOf(g: Intent[]): Fence | undefined {
  for (const i of g) if (i.fence) return i.fence;
  return undefined;
}

function mergeHistory(a: HistoryWrite | undefined, b: HistoryWrite): HistoryWrite {
  if (!a || b.replace) return b;
  return { replace: a.replace, from: a.from, entries: a.entries.concat(b.entries) };
}

function describe(o: Op): string {
  return o.t === 'module' ? `module/${o.digest}` : `${o.t === 'task' ? 'task' : o.kind}/${o.id}`;
}
