// How records map onto rows, shared by the SQLite and PostgreSQL engines.
// A task is columns for what is queried and changes at each transition (state,
// attempt, proplet, timestamps, labels), one row per history entry (appended,
// never rewritten), and two JSON columns: `status` (small, changes with the
// lifecycle) and `spec` (what the user asked for, written only when it changes).
// Every other record is one versioned JSON document.

import type { Fence } from './lease.ts';
import type { Task, TaskState, Transition } from './model.ts';

export type DocKind = 'proplet' | 'group' | 'credential' | 'fl-job' | 'fl-round' | 'fl-checkpoint';

export interface TaskRow {
  id: string;
  name: string;
  state: TaskState;
  attempt: number;
  proplet_id: string | null;
  labels: string | null;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  spec: string;
  status: string;
}

/** New history entries of a task: appended from `from`, or all of them (`replace`). */
export interface HistoryWrite {
  replace: boolean;
  from: number;
  entries: Transition[];
}

/**
 * One row write of a commit. `expected` is the version the row has in the
 * database (0: no row yet), `next` the version it gets: the write applies only
 * if the row still has `expected` (optimistic concurrency).
 */
export type Op =
  | { t: 'task'; id: string; expected: number; next: number; row: TaskRow | null; spec: boolean; hist?: HistoryWrite }
  | { t: 'doc'; kind: DocKind; id: string; expected: number; next: number; doc: string | null }
  | { t: 'module'; digest: string; bytes: Uint8Array };

export interface LoadedTask {
  row: TaskRow;
  version: number;
  history: Transition[];
}
export interface LoadedDoc {
  kind: DocKind;
  id: string;
  version: number;
  doc: string;
}

export interface RowKey {
  kind: DocKind | 'task';
  id: string;
}

/** A row another writer committed, as the change feed tells it. */
export interface ChangedRow {
  kind: RowKey['kind'];
  id: string;
  version: number;
}

/** What a database must do for the mirror store; commits are all-or-nothing. */
export interface Engine {
  readonly name: string;
  load(): Promise<{ tasks: LoadedTask[]; docs: LoadedDoc[] }>;
  /**
   * Applies ops in one transaction. Returns the keys whose version had moved
   * on; when there are any, nothing was applied.
   */
  commit(ops: Op[], fence?: Fence): Promise<RowKey[]>;
  /** Set while the engine knows its database is unreachable (e.g. its change feed's connection is down). */
  outage?(): { since: number; error: string } | undefined;
  /** The rows as the database has them now (undefined: no such row). */
  reload(keys: RowKey[]): Promise<(LoadedTask | LoadedDoc | undefined)[]>;
  /**
   * Calls back with rows other writers committed (`full`: every row's version,
   * after the feed was interrupted). Absent where one process owns the database.
   */
  watch?(onChange: (rows: ChangedRow[], full: boolean) => void): Promise<void>;
  /** Modules are read synchronously; the engine keeps what it needs for that. */
  cacheModule(digest: string, bytes: Uint8Array): void;
  getModule(digest: string): Uint8Array | undefined;
  /** True for errors caused by the data of a write (retrying cannot help). */
  isDataError(e: unknown): boolean;
  close(): Promise<void>;
}

const COLUMNS = new Set(['id', 'name', 'state', 'attempt', 'proplet_id', 'labels', 'created_at', 'updated_at', 'started_at', 'finished_at', 'history']);
/** Fields that change during a task's lifecycle; everything else is spec. */
const STATUS = new Set(['start_requested', 'pending_reason', 'excluded_proplets', 'attempts', 'error', 'result', 'suspended', 'cron']);

/**
 * The spec JSON last written for each task object, with the values it was made of: a task is
 * written at every transition (five times for a short run) and its spec seldom changes. Spec
 * values are replaced when they change, never changed in place (TaskService.update assigns the
 * patch's), so the same keys holding the same values give the same JSON.
 */
const specs = new WeakMap<Task, { keys: string[]; values: unknown[]; json: string }>();

function specJson(t: Task, keys: string[], values: unknown[]): string {
  const last = specs.get(t);
  if (last && last.keys.length === keys.length && last.keys.every((k, i) => k === keys[i] && last.values[i] === values[i])) return last.json;
  const spec: Record<string, unknown> = {};
  keys.forEach((k, i) => (spec[k] = values[i]));
  const json = JSON.stringify(spec);
  specs.set(t, { keys, values, json });
  return json;
}

export function taskToRow(t: Task): TaskRow {
  const keys: string[] = [];
  const values: unknown[] = [];
  const status: Record<string, unknown> = {};
  for (const k of Object.keys(t)) {
    if (COLUMNS.has(k)) continue;
    const v = (t as unknown as Record<string, unknown>)[k];
    if (STATUS.has(k)) status[k] = v;
    else {
      keys.push(k);
      values.push(v);
    }
  }
  return {
    id: t.id,
    name: t.name,
    state: t.state,
    attempt: t.attempt,
    proplet_id: t.proplet_id ?? null,
    labels: t.labels === undefined ? null : JSON.stringify(t.labels),
    created_at: t.created_at,
    updated_at: t.updated_at,
    started_at: t.started_at ?? null,
    finished_at: t.finished_at ?? null,
    spec: specJson(t, keys, values),
    status: JSON.stringify(status),
  };
}

export function taskFromRow(r: TaskRow, history: readonly Transition[]): Task {
  const t = { ...JSON.parse(r.spec), ...JSON.parse(r.status), id: r.id, name: r.name, state: r.state, attempt: r.attempt } as Task;
  if (r.proplet_id !== null) t.proplet_id = r.proplet_id;
  if (r.labels !== null) t.labels = JSON.parse(r.labels);
  t.created_at = r.created_at;
  t.updated_at = r.updated_at;
  if (r.started_at !== null) t.started_at = r.started_at;
  if (r.finished_at !== null) t.finished_at = r.finished_at;
  t.history = history.map((h) => ({ ...h }));
  return t;
}

/** A history entry as stored: optional fields absent rather than null. */
export function transition(state: string, at: string, reason: string | null, proplet_id: string | null, attempt: number | null): Transition {
  const h: Transition = { state: state as TaskState, at };
  if (reason !== null) h.reason = reason;
  if (proplet_id !== null) h.proplet_id = proplet_id;
  if (attempt !== null) h.attempt = attempt;
  return h;
}

export function sameTransition(a: Transition | undefined, b: Transition | undefined): boolean {
  return !!a && !!b && a.at === b.at && a.state === b.state && a.reason === b.reason && a.attempt === b.attempt && a.proplet_id === b.proplet_id;
}

/** Thrown for a store URL or database this code cannot use: one line for the operator. */
export class StoreError extends Error {
  override name = 'StoreError';
}
