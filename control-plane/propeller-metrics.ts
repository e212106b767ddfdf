// What proplets say of their own use, on /metrics: the CPU and memory each one
// last reported in its metrics message (Propeller's `cpu_metrics.percent` and
// `memory_metrics`, or ours). Only registered, not failed proplets are shown,
// so a label goes away with its proplet.

import { Gauge, type Registry } from 'prom-client';
import type { Proplet } from './model.ts';

export class PropletUsage {
  private cpu = new Map<string, number>();

  constructor(registry: Registry, proplets: () => Iterable<Proplet>) {
    const cpu = this.cpu;
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

  /** A proplet's report; values that are not finite, non-negative numbers are left out. */
  report(propletId: string, cpuPercent: number | undefined): void {
    if (typeof cpuPercent === 'number' && Number.isFinite(cpuPercent) && cpuPercent >= 0) this.cpu.set(propletId, cpuPercent);
  }
}
