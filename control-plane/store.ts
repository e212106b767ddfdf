// State behind one interface, so the same control plane runs on memory (tests),
// on the embedded SQLite file (sqlite-store.ts) or on PostgreSQL (pg-store.ts).
// Reads are synchronous; the durable stores serve them from an in-memory
// mirror and commit writes once per tick in one transaction (group commit,
// mirror-store.ts). `atomically` groups several writes so they land together.

import type { FederatedJob, ModelCheckpoint, TrainingRound } from './fl/resources.ts';
import type { Proplet, PropletGroup, Task } from './model.ts';

export interface Collection<T> {
  get(id: string): T | undefined;
  put(id: string, value: T): void;
  delete(id: string): boolean;
  list(): T[];
}

/** An account of the embedded broker, as kept by the control plane (hash only). */
export interface StoredCredential {
  id: string;
  role: 'proplet' | 'manager' | 'debug';
  hash: string;
}

/** Counters of the durable stores (all zero for the memory store). */
export interface StoreStats {
  /** Transactions committed. */
  commits: number;
  /** Row writes (insert, update, delete) committed. */
  writes: number;
  /** Writes refused because the row's version had moved on (another writer won). */
  conflicts: number;
  /** Writes dropped because the database refused their data. */
  dropped: number;
  /** Commits that failed (database unreachable) and were retried. */
  failures: number;
  /** Writes waiting for the next commit. */
  pending: number;
  /** Owner-only writes refused because the lease had moved to another replica (fencing token stale). */
  fenced: number;
}

/** Why the store cannot commit now, and since when (ms since the epoch). */
export interface StoreOutage {
  since: number;
  error: string;
}

export interface Store {
  readonly tasks: Collection<Task>;
  readonly proplets: Collection<Proplet>;
  readonly groups: Collection<PropletGroup>;
  readonly credentials: Collection<StoredCredential>;
  readonly flJobs: Collection<FederatedJob>;
  readonly flRounds: Collection<TrainingRound>;
  readonly flCheckpoints: Collection<ModelCheckpoint>;
  /** Content-addressed modules (and FL models): key is 'sha256:<hex>'. */
  putModule(digest: string, bytes: Uint8Array): void;
  getModule(digest: string): Uint8Array | undefined;
  /** Deletes these tasks (and their history) in one go; returns how many existed. */
  deleteTasks(ids: readonly string[]): number;
  /** Runs fn so that all its writes land together or not at all. */
  atomically<R>(fn: () => R): R;
  /**
   * Runs fn as the replicas' lease owner (placement, liveness, cron, FL rounds):
   * its writes land together, and only while the lease is still this replica's
   * (checked in the committing transaction). Elsewhere the same as atomically.
   */
  asOwner<R>(fn: () => R): R;
  /** Set while the store cannot commit (its database is unreachable). */
  outage(): StoreOutage | undefined;
  readonly stats: StoreStats;
  /** Resolves once every write made before the call is committed. */
  flush(): Promise<void>;
  /** Commits what is pending, then releases the database. */
  close(): Promise<void>;
}

export function zeroStats(): StoreStats {
  return { commits: 0, writes: 0, conflicts: 0, dropped: 0, failures: 0, pending: 0, fenced: 0 };
}

/** Copies on the way in and out, so callers cannot change stored state by accident. */
class MemoryCollection<T> implements Collection<T> {
  private m = new Map<string, T>();
  get(id: string) {
    const v = this.m.get(id);
    return v === undefined ? undefined : structuredClone(v);
  }
  put(id: string, v: T) {
    this.m.set(id, structuredClone(v));
  }
  delete(id: string) {
    return this.m.delete(id);
  }
  list() {
    return [...this.m.values()].map((v) => structuredClone(v));
  }
}

export class MemoryStore implements Store {
  readonly tasks = new MemoryCollection<Task>();
  readonly proplets = new MemoryCollection<Proplet>();
  readonly groups = new MemoryCollection<PropletGroup>();
  readonly credentials = new MemoryCollection<StoredCredential>();
  readonly flJobs = new MemoryCollection<FederatedJob>();
  readonly flRounds = new MemoryCollection<TrainingRound>();
  readonly flCheckpoints = new MemoryCollection<ModelCheckpoint>();
  readonly stats = zeroStats();
  private modules = new Map<string, Uint8Array>();
  putModule(digest: string, bytes: Uint8Array) {
    this.modules.set(digest, bytes);
  }
  getModule(digest: string) {
    return this.modules.get(digest);
  }
  deleteTasks(ids: readonly string[]): number {
    let n = 0;
    for (const id of ids) if (this.tasks.delete(id)) n++;
    return n;
  }
  atomically<R>(fn: () => R): R {
    return fn();
  }
  asOwner<R>(fn: () => R): R {
    return fn();
  }
  outage() {
    return undefined;
  }
  async flush() {}
  async close() {}
}
