// How long finished tasks are kept: a time-to-live after they finish (as
// Kubernetes' ttlSecondsAfterFinished) and, for the runs of a scheduled task,
// only the newest few by outcome (as CronJob's successful/failedJobsHistoryLimit).
// Pure bookkeeping: it says which ids are due; the task service deletes them.

export interface RetentionConfig {
  /** Default time-to-live of a finished task; a task's ttl_seconds_after_finished overrides it. 0 keeps tasks forever. */
  finishedTtlMs: number;
  successfulRunsHistoryLimit: number;
  failedRunsHistoryLimit: number;
}

export const DEFAULT_RETENTION: RetentionConfig = { finishedTtlMs: 24 * 3_600_000, successfulRunsHistoryLimit: 3, failedRunsHistoryLimit: 1 };

/** A binary min-heap of (due time, id). Entries are checked when they come due, so stale ones cost nothing but their slot. */
export class ExpiryQueue {
  private heap: { at: number; id: string }[] = [];

  get size(): number {
    return this.heap.length;
  }

  push(at: number, id: string): void {
    const h = this.heap;
    h.push({ at, id });
    for (let i = h.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (h[p]!.at <= h[i]!.at) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }

  /** Removes and returns every entry due at `now`. */
  due(now: number): { at: number; id: string }[] {
    const out: { at: number; id: string }[] = [];
    const h = this.heap;
    while (h.length && h[0]!.at <= now) {
      out.push(h[0]!);
      const last = h.pop()!;
      if (h.length === 0) break;
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && h[l]!.at < h[m]!.at) m = l;
        if (r < h.length && h[r]!.at < h[m]!.at) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return out;
  }
}

/** Finished runs of one scheduled task, oldest first, by outcome: what exceeds the limits is due for deletion. */
export class RunHistory {
  private kept = new Map<string, { ok: string[]; failed: string[] }>();

  /** Notes a finished run; returns the ids of older runs now over the limit. */
  finished(templateId: string, runId: string, ok: boolean, limit: number): string[] {
    let h = this.kept.get(templateId);
    if (!h) this.kept.set(templateId, (h = { ok: [], failed: [] }));
    const list = ok ? h.ok : h.failed;
    if (!list.includes(runId)) list.push(runId);
    return list.length > limit ? list.splice(0, list.length - limit) : [];
  }

  forget(templateId: string, runId?: string): void {
    if (runId === undefined) return void this.kept.delete(templateId);
    const h = this.kept.get(templateId);
    if (!h) return;
    for (const list of [h.ok, h.failed]) {
      const i = list.indexOf(runId);
      if (i >= 0) list.splice(i, 1);
    }
  }
}
