// What listing and counting tasks need, kept up to date on every write so no
// request walks the whole history: tasks in creation order (pages newest
// first, resumed from a continue token), counts per state, and the runs of
// each scheduled task.

import { TERMINAL, type Task, type TaskState } from './model.ts';

export interface Page {
  tasks: Task[];
  /** Opaque: pass it back as `continue` for the next (older) page; absent on the last page. */
  continue?: string;
}

/** (created_at, id): the order tasks are listed in; ids break ties between tasks created in one millisecond. */
const before = (a: Task, created: string, id: string) => a.created_at < created || (a.created_at === created && a.id < id);

/** The task runs, ran (an attempt of its latest run) or is pinned on the proplet: what `GET /tasks?proplet=` lists. */
export const onProplet = (t: Task, id: string): boolean => t.proplet_id === id || t.pinned_proplet_id === id || t.attempts.some((a) => a.proplet_id === id);

export class TaskIndex {
  /** Ascending by (created_at, id); mostly appended to, since new tasks are the newest. */
  private order: Task[] = [];
  private stateOf = new Map<string, TaskState>();
  private counts = new Map<TaskState, number>();
  private runs = new Map<string, Set<string>>();

  get size(): number {
    return this.order.length;
  }

  count(state?: TaskState): number {
    return state === undefined ? this.order.length : this.counts.get(state) ?? 0;
  }

  countsByState(): ReadonlyMap<TaskState, number> {
    return this.counts;
  }

  /** Adds a task or notes its new state. */
  upsert(t: Task): void {
    const prev = this.stateOf.get(t.id);
    if (prev === t.state) return;
    if (prev === undefined) {
      const i = this.position(t.created_at, t.id);
      if (i === this.order.length) this.order.push(t);
      else this.order.splice(i, 0, t);
      if (t.scheduled_by) {
        let s = this.runs.get(t.scheduled_by);
        if (!s) this.runs.set(t.scheduled_by, (s = new Set()));
        s.add(t.id);
      }
    } else this.bump(prev, -1);
    this.stateOf.set(t.id, t.state);
    this.bump(t.state, 1);
  }

  remove(t: Task): void {
    const prev = this.stateOf.get(t.id);
    if (prev === undefined) return;
    this.stateOf.delete(t.id);
    this.bump(prev, -1);
    const i = this.position(t.created_at, t.id);
    if (this.order[i]?.id === t.id) this.order.splice(i, 1);
    if (t.scheduled_by) this.runs.get(t.scheduled_by)?.delete(t.id);
    this.runs.delete(t.id);
  }

  /** Runs of a scheduled task that have not finished. */
  activeRuns(templateId: string, get: (id: string) => Task | undefined): Task[] {
    const out: Task[] = [];
    for (const id of this.runs.get(templateId) ?? []) {
      const r = get(id);
      if (r && !TERMINAL.has(r.state)) out.push(r);
    }
    return out;
  }

  /** Newest first, at most `limit`, older than the `after` token; `match` filters. Cost: the tasks looked at, not the history. */
  page(limit: number, after?: string, match?: (t: Task) => boolean): Page {
    let i = this.order.length - 1;
    if (after !== undefined) {
      const c = decodeToken(after);
      i = this.position(c.created_at, c.id) - 1;
    }
    const tasks: Task[] = [];
    for (; i >= 0 && tasks.length < limit; i--) {
      const t = this.order[i]!;
      if (!match || match(t)) tasks.push(t);
    }
    // more may follow: only a look further says whether one matches, so a filtered last page may carry a token
    const more = i >= 0;
    const last = tasks.at(-1);
    return more && last ? { tasks, continue: encodeToken(last) } : { tasks };
  }

  /** The first index whose task is not before (created, id). */
  private position(created: string, id: string): number {
    let lo = 0;
    let hi = this.order.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (before(this.order[mid]!, created, id)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private bump(state: TaskState, by: number): void {
    this.counts.set(state, (this.counts.get(state) ?? 0) + by);
  }
}

export class TokenError extends Error {
  override name = 'TokenError';
}

function encodeToken(t: Task): string {
  return Buffer.from(JSON.stringify([t.created_at, t.id])).toString('base64url');
}

function decodeToken(s: string): { created_at: string; id: string } {
  try {
    const v = JSON.parse(Buffer.from(s, 'base64url').toString('utf8')) as unknown;
    if (Array.isArray(v) && v.length === 2 && typeof v[0] === 'string' && typeof v[1] === 'string') return { created_at: v[0], id: v[1] };
  } catch {}
  throw new TokenError('continue: not a token from a previous page');
}
