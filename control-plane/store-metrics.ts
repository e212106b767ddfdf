// The durable store's counters as Prometheus metrics, read at scrape time.

import { Counter, Gauge, type Registry } from 'prom-client';
import type { Store, StoreStats } from './store.ts';

const COUNTERS: [keyof StoreStats, string, string][] = [
  ['commits', 'propeller_store_commits_total', 'Store transactions committed (one per tick at most: group commit)'],
  ['writes', 'propeller_store_writes_total', 'Store row writes committed'],
  ['conflicts', 'propeller_store_conflicts_total', 'Store writes refused because another writer changed the row first (the row was reloaded)'],
  ['dropped', 'propeller_store_dropped_total', 'Store writes dropped because the database refused their data'],
  ['failures', 'propeller_store_commit_failures_total', 'Store commits that failed (database unreachable) and were retried'],
  ['fenced', 'propeller_store_fenced_total', "Owner-only writes refused because another replica had taken the lease (stale fencing token)"],
];

export function registerStoreMetrics(registry: Registry, store: Store): void {
  for (const [key, name, help] of COUNTERS) {
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(store.stats[key]);
      },
    });
  }
  new Gauge({
    name: 'propeller_store_pending_writes',
    help: 'Store writes waiting for the next commit',
    registers: [registry],
    collect() {
      this.set(store.stats.pending);
    },
  });
}
