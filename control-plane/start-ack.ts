// No start silently dropped. Our proplets answer every start, with `running`
// once the module is loaded or with a refusal; a start not answered within the
// deadline is taken as refused by that proplet, so the task moves on at once
// with that reason instead of waiting for the proplet to be declared failed;
// that proplet is told to stop the attempt, so a start it takes late (a busy
// device, a slow link) does not run beside the replacement.
// A proplet that asks for its module's chunks shows it is working on the
// start: its deadline starts over. Propeller's proplets never answer a start,
// so they get no deadline: the control plane sends them only starts they can
// take (propeller-compat.ts).

import type { Logger } from './log.ts';
import type { Task } from './model.ts';
import type { TaskService } from './tasks.ts';

export const DEFAULT_START_ACK_TIMEOUT_MS = 10_000;

interface Pending {
  attempt: number;
  propletId: string;
  timer: NodeJS.Timeout;
}

export interface StartAckOptions {
  tasks: TaskService;
  /** True when the proplet acknowledges starts (ours); false for Propeller's proplets. */
  acknowledges(propletId: string): boolean;
  timeoutMs: number;
  log: Logger;
  /** Tells the proplet to drop that attempt: a start that arrives late must not run beside its replacement. */
  stop(propletId: string, taskId: string, attempt: number): void;
}

export class StartAckDeadline {
  private pending = new Map<string, Pending>();

  constructor(private o: StartAckOptions) {
    o.tasks.on('changed', (t) => this.onChanged(t));
    o.tasks.on('deleted', (id) => this.clear(id));
  }

  /** The proplet works on a start (a chunk request): its waiting starts get a fresh deadline. */
  progress(propletId: string): void {
    // a snapshot: arm() deletes and re-adds, which a live Map iteration would visit again forever
    for (const [id, p] of [...this.pending]) if (p.propletId === propletId) this.arm(id, p.attempt, propletId);
  }

  close(): void {
    for (const id of [...this.pending.keys()]) this.clear(id);
  }

  private onChanged(t: Task): void {
    if (t.state !== 'Scheduled' || !t.proplet_id) return this.clear(t.id);
    const cur = this.pending.get(t.id);
    if (cur && cur.attempt === t.attempt && cur.propletId === t.proplet_id) return;
    if (!this.o.acknowledges(t.proplet_id)) return this.clear(t.id);
    this.arm(t.id, t.attempt, t.proplet_id);
  }

  private arm(id: string, attempt: number, propletId: string): void {
    this.clear(id);
    const timer = setTimeout(() => this.expire(id, attempt, propletId), this.o.timeoutMs);
    timer.unref();
    this.pending.set(id, { attempt, propletId, timer });
  }

  private clear(id: string): void {
    const p = this.pending.get(id);
    if (!p) return;
    clearTimeout(p.timer);
    this.pending.delete(id);
  }

  private expire(id: string, attempt: number, propletId: string): void {
    this.pending.delete(id);
    const t = this.o.tasks.get(id);
    if (!t || t.state !== 'Scheduled' || t.attempt !== attempt || t.proplet_id !== propletId) return;
    const error = `start not acknowledged within ${this.o.timeoutMs / 1000} s (START_ACK_TIMEOUT)`;
    this.o.log('warn', 'start not acknowledged', { task_id: id, proplet_id: propletId, attempt });
    this.o.stop(propletId, id, attempt);
    this.o.tasks.onResult({ proplet_id: propletId, task_id: id, attempt, status: 'refused', error });
  }
}
