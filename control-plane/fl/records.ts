// The FL records (jobs, rounds, checkpoints) kept in memory beside the store,
// indexed by name, by job and by phase: listing a job's rounds or counting
// phases for a metrics scrape no longer parses the whole table. The store is
// read once, at start; every write goes through here, to the store first.

import type { Collection } from '../store.ts';

interface Record_ {
  metadata: { name: string };
  spec: object;
  status: { phase?: string };
}

export class IndexedRecords<T extends Record_> implements Collection<T> {
  private readonly byName = new Map<string, T>();
  private readonly byJob = new Map<string, Set<string>>();
  private readonly phases = new Map<string, number>();
  /** What each record was indexed under: a record changed in place cannot skew the counts. */
  private readonly indexed = new Map<string, { job?: string; phase: string }>();

  constructor(
    private readonly inner: Collection<T>,
    /** The job a record belongs to (its own name for a job). */
    private readonly jobOf: (r: T) => string | undefined = (r) => (r.spec as { federatedJobRef?: { name: string } }).federatedJobRef?.name,
  ) {
    for (const r of inner.list()) this.index(r.metadata.name, r);
  }

  /** A copy, as the store gives: the caller may change it and put it back. */
  get(name: string): T | undefined {
    const r = this.byName.get(name);
    return r === undefined ? undefined : structuredClone(r);
  }

  put(name: string, r: T): void {
    this.inner.put(name, r);
    this.unindex(name);
    this.index(name, structuredClone(r));
  }

  delete(name: string): boolean {
    const had = this.inner.delete(name);
    this.unindex(name);
    return had;
  }

  /** Copies of every record, in insertion order. */
  list(): T[] {
    return [...this.byName.values()].map((r) => structuredClone(r));
  }

  /** The records themselves (or a job's), to read and not to change: no copy, no parse. */
  view(job?: string): T[] {
    if (job === undefined) return [...this.byName.values()];
    return [...(this.byJob.get(job) ?? [])].map((n) => this.byName.get(n)!);
  }

  /** How many records are in each phase, kept on write. */
  phaseCounts(): ReadonlyMap<string, number> {
    return this.phases;
  }

  get size(): number {
    return this.byName.size;
  }

  private index(name: string, r: T): void {
    this.byName.set(name, r);
    const job = this.jobOf(r);
    if (job !== undefined) {
      let s = this.byJob.get(job);
      if (!s) this.byJob.set(job, (s = new Set()));
      s.add(name);
    }
    const phase = r.status.phase ?? '';
    this.phases.set(phase, (this.phases.get(phase) ?? 0) + 1);
    this.indexed.set(name, { ...(job !== undefined ? { job } : {}), phase });
  }

  private unindex(name: string): void {
    const at = this.indexed.get(name);
    if (!at) return;
    this.byName.delete(name);
    this.indexed.delete(name);
    const { job, phase } = at;
    const s = job !== undefined ? this.byJob.get(job) : undefined;
    if (s) {
      s.delete(name);
      if (s.size === 0) this.byJob.delete(job!);
    }
    const n = (this.phases.get(phase) ?? 1) - 1;
    if (n > 0) this.phases.set(phase, n);
    else this.phases.delete(phase);
  }
}
