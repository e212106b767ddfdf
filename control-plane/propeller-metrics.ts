// What proplets say of their own use, on /metrics: the CPU and memory each one
// last reported in its metrics message (Propeller's `cpu_metrics.percent` and
// `memory_metrics`, or ours), and per running task from Propeller's
// task_metrics (`metrics.cpu_percent`, `metrics.memory_bytes`). Only
// registered, not failed proplets and tasks still running on their proplet are
// shown, so a label goes away with what it names.

import { Gauge, type Registry } from 'prom-client';
import type { Proplet, Task } from './model.ts';

export class PropletUsage {
  private cpu = new Map<string, number>();
  private tasks = new Map<string, { proplet: string; cpu?: number; memory?: number }>();

  constructor(registry: Registry, proplets: () => Iterable<Proplet>, task: (id: string) => Task | undefined) {
    const cpu = this.cpu;
    const tasks = this.tasks;
    // tasks still running where they reported from; the others are forgotten
    const running = function* () {
      for (const [id, u] of tasks) {
        const t = task(id);
        if (t?.state === 'Running' && t.proplet_id === u.proplet) yield { id, ...u };
        else tasks.delete(id);
      }
    };
    for (const [name, help, key] of [
      ['propeller_task_cpu_percent', 'CPU use of each running task, as its proplet last reported it (Propeller task_metrics)', 'cpu'],
      ['propeller_task_memory_bytes', 'Memory of each running task, as its proplet last reported it (Propeller task_metrics)', 'memory'],
    ] as const) {
      new Gauge({
        name,
        help,
        labelNames: ['task_id', 'proplet_id'],
        registers: [registry],
        collect() {
          this.reset();
          for (const u of running()) if (u[key] !== undefined) this.set({ task_id: u.id, proplet_id: u.proplet }, u[key]);
        },
      });
    }
    const live = function* () {
      for (const p of proplets()) if (p.state !== 'failed') yield p;
    };
    new Gauge({
      name: 'propeller_proplet_cpu_percent',
      help: 'CPU use each proplet last reported, in percent',
      labelNames: ['proplet_id'],
      registers: [registry],
      collect() {
        this.reset();
        const seen = new Set<string>();
        for (const p of live()) {
          seen.add(p.id);
          const v = cpu.get(p.id);
          if (v !== undefined) this.set({ proplet_id: p.id }, v);
        }
        for (const id of cpu.keys()) if (!seen.has(id)) cpu.delete(id); // removed or failed: reported again if it comes back
      },
    });
    new Gauge({
      name: 'propeller_proplet_memory_used_bytes',
      help: 'Memory each proplet last reported using',
      labelNames: ['proplet_id'],
      registers: [registry],
      collect() {
        this.reset();
        for (const p of live()) if (p.memory_used !== undefined) this.set({ proplet_id: p.id }, p.memory_used);
      },
    });
  }

  /** A task's report (Propeller's task_metrics `metrics`), from the proplet it runs on. */
  task(taskId: string, propletId: string, metrics: unknown): void {
    if (metrics === null || typeof metrics !== 'object') return;
    const { cpu_percent: c, memory_bytes: m } = metrics as Record<string, unknown>;
    const ok = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;
    this.tasks.set(taskId, { proplet: propletId, ...(ok(c) ? { cpu: c } : {}), ...(ok(m) ? { memory: m } : {}) });
  }

  /** A proplet's report; values that are not finite, non-negative numbers are left out. */
  report(propletId: string, cpuPercent: number | undefined): void {
    if (typeof cpuPercent === 'number' && Number.isFinite(cpuPercent) && cpuPercent >= 0) this.cpu.set(propletId, cpuPercent);
  }
}
