// Readiness: what a control plane needs to do its work (its state store, its
// broker, and for replicas a plane that is not mixed with another) and, when one
// is missing, since when and why. Liveness is only "the process answers": a
// restart cannot bring a database or a broker back, so the liveness probe never
// depends on them (docs/scaling.md, "Faults").

import { Gauge, type Registry } from 'prom-client';

export interface Outage {
  /** ms since the epoch */
  since: number;
  error: string;
}

export interface Dependency {
  /** As /health names it: 'store', 'broker', 'plane'. */
  name: string;
  /** In a sentence: "the state store (postgres)". */
  what: string;
  outage(): Outage | undefined;
  /** While it is down, writes are refused (503) instead of being kept for later. Default true. */
  refusesWrites?: boolean;
}

export interface Down {
  dependency: string;
  since: string;
  for_s: number;
  error: string;
}

export interface Readiness {
  ready: boolean;
  down: Down[];
}

export function readiness(deps: readonly Dependency[], now = Date.now()): Readiness {
  const down: Down[] = [];
  for (const d of deps) {
    const o = d.outage();
    if (o) down.push({ dependency: d.name, since: new Date(o.since).toISOString(), for_s: Math.max(0, Math.round((now - o.since) / 100) / 10), error: o.error });
  }
  return { ready: down.length === 0, down };
}

/** Why a write is refused now, in one line, or undefined when writes are taken. */
export function writesRefused(deps: readonly Dependency[]): string | undefined {
  for (const d of deps) {
    if (d.refusesWrites === false) continue;
    const o = d.outage();
    if (o) return `not ready: ${d.what} is unavailable since ${new Date(o.since).toISOString()} (${o.error}); nothing was changed, retry later`;
  }
  return undefined;
}

/** `propeller_dependency_up{dependency}` (1 up, 0 down) and `propeller_ready`, read at scrape time: for alerts. */
export function registerHealthMetrics(registry: Registry, deps: readonly Dependency[]): void {
  new Gauge({
    name: 'propeller_dependency_up',
    help: 'Whether a dependency of the control plane is there (1) or down (0): store, broker, plane',
    labelNames: ['dependency'],
    registers: [registry],
    collect() {
      for (const d of deps) this.set({ dependency: d.name }, d.outage() ? 0 : 1);
    },
  });
  new Gauge({
    name: 'propeller_ready',
    help: 'Whether the control plane is ready (1) or not (0): what GET /health says',
    registers: [registry],
    collect() {
      this.set(readiness(deps).ready ? 1 : 0);
    },
  });
}
