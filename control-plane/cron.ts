// Scheduled tasks: node-cron fires, each firing becomes a run (a task of its
// own), and the concurrency policy decides what happens while an earlier run
// is still active: Allow starts another, Forbid skips, Replace stops it first.

import cron, { type ScheduledTask } from 'node-cron';
import type { Logger } from './log.ts';
import type { Task } from './model.ts';
import type { TaskService } from './tasks.ts';

export class CronScheduler {
  private jobs = new Map<string, { job: ScheduledTask; key: string }>();
  /** Replicas: only the lease's owner fires (see replica.ts). */
  owner: () => boolean = () => true;

  constructor(
    private tasks: TaskService,
    private log: Logger,
  ) {}

  /** Schedules every active scheduled task, and follows later changes. */
  start(): void {
    for (const t of this.tasks.values()) this.sync(t);
    this.tasks.on('changed', this.onChange);
    this.tasks.on('deleted', this.onDelete);
  }

  close(): void {
    this.tasks.off('changed', this.onChange);
    this.tasks.off('deleted', this.onDelete);
    for (const { job } of this.jobs.values()) void job.destroy();
    this.jobs.clear();
  }

  private onChange = (t: Task) => this.sync(t);
  private onDelete = (id: string) => this.unschedule(id);

  private sync(t: Task): void {
    if (!t.schedule || t.suspended) return this.unschedule(t.id);
    const key = `${t.schedule}|${t.timezone ?? ''}`;
    if (this.jobs.get(t.id)?.key === key) return;
    this.unschedule(t.id);
    const job = cron.schedule(t.schedule, () => this.fire(t.id), { timezone: t.timezone, name: `task-${t.id}`, unref: true });
    this.jobs.set(t.id, { job, key });
    this.noteNext(t.id);
  }

  private unschedule(id: string): void {
    const j = this.jobs.get(id);
    if (!j) return;
    void j.job.destroy();
    this.jobs.delete(id);
  }

  private noteNext(id: string): void {
    const t = this.tasks.get(id);
    const next = this.jobs.get(id)?.job.getNextRun();
    if (!t?.cron || !next) return;
    t.cron.next_run_at = next.toISOString();
  }

  private fire(id: string): void {
    if (!this.owner()) return;
    this.tasks.asOwner(() => this.fireOwned(id));
  }

  private fireOwned(id: string): void {
    try {
      const t = this.tasks.get(id);
      if (!t?.schedule || t.suspended || !t.cron) return;
      const active = this.tasks.activeRuns(id);
      t.cron.last_fired_at = new Date().toISOString();
      if (active.length > 0 && t.concurrency_policy === 'Forbid') {
        t.cron.runs_skipped++;
        this.log('info', 'scheduled run skipped: previous run still active', { task_id: id, active: active.map((r) => r.id) });
      } else {
        if (active.length > 0 && t.concurrency_policy === 'Replace') for (const r of active) this.tasks.stop(r.id);
        const run = this.tasks.createRun(t);
        t.cron.runs_started++;
        t.cron.last_run_id = run.id;
      }
      this.noteNext(id);
      this.tasks.touch(t);
    } catch (e) {
      this.log('error', 'scheduled run failed to start', { task_id: id, error: (e as Error).message });
    }
  }
}
