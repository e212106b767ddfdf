// Which control-plane tasks of the adapter moved on, for the task
// controllers: instead of one GET per unfinished task every pollMs, one list
// of the adapter's unfinished tasks per pollMs (a request per unfinished
// state, every page), and a reconcile only for a task whose state or
// updated_at changed, or that left the list (it finished, or is gone).
//
// The adapter's tasks carry the label MANAGED_LABEL; a task made by an older
// adapter without it is polled on its own as before (the controller requeues
// it).

import type { ControlPlaneClient } from '../../control-plane/client.ts';
import type { Log } from '../runtime/kube.ts';

export const MANAGED_LABEL = { key: 'app.kubernetes.io/managed-by', value: 'propeller-k8s-adapter' } as const;
const UNFINISHED = ['Pending', 'Scheduled', 'Running'];
const PAGE = 1000;

interface TaskView {
  id: string;
  state: string;
  updated_at: string;
}

interface Followed {
  /** Called when the task moved on. */
  changed: () => void;
  /** state@updated_at when the controller last read it */
  seen: string;
}

export class TaskWatch {
  private followed = new Map<string, Followed>();
  private timer?: NodeJS.Timeout;
  private stopped = false;
  /** Lists made, for the benchmark and tests. */
  passes = 0;

  constructor(
    private cp: ControlPlaneClient,
    private everyMs: number,
    private log: Log,
  ) {}

  /** Tells `changed` once, when the task is no longer as the controller read it. */
  follow(task: TaskView, changed: () => void): void {
    this.followed.set(task.id, { changed, seen: `${task.state}@${task.updated_at}` });
    this.schedule();
  }

  unfollow(id: string): void {
    this.followed.delete(id);
  }

  get size(): number {
    return this.followed.size;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.timer || this.stopped || this.followed.size === 0) return;
    this.timer = setTimeout(() => {
      void this.pass()
        .catch((e: Error) => this.log('warn', 'listing the adapter tasks failed: retrying', { error: e.message }))
        .finally(() => {
          this.timer = undefined;
          this.schedule();
        });
    }, this.everyMs);
    this.timer.unref();
  }

  private async pass(): Promise<void> {
    this.passes++;
    const now = new Map<string, string>();
    for (const state of UNFINISHED) {
      for (let offset = 0; ; offset += PAGE) {
        const q = new URLSearchParams({ state, label: `${MANAGED_LABEL.key}=${MANAGED_LABEL.value}`, offset: String(offset), limit: String(PAGE) });
        const page = await this.cp.request<{ total: number; tasks: TaskView[] }>('GET', `/tasks?${q}`);
        for (const t of page.tasks) now.set(t.id, `${t.state}@${t.updated_at}`);
        if (page.tasks.length < PAGE || offset + PAGE >= page.total) break;
      }
    }
    for (const [id, f] of this.followed) {
      if (now.get(id) === f.seen) continue;
      // the controller reads it again and follows it again if it is still unfinished
      this.followed.delete(id);
      f.changed();
    }
  }
}
