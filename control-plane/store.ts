// State behind one interface, so the same control plane runs on memory (tests)
// or on the durable embedded store (sqlite-store.ts). Every put is one atomic
// write of one record; `atomically` groups several into one.

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
  /** Runs fn so that all its writes land together or not at all. */
  atomically<R>(fn: () => R): R;
  close(): void;
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
  private modules = new Map<string, Uint8Array>();
  putModule(digest: string, bytes: Uint8Array) {
    this.modules.set(digest, bytes);
  }
  getModule(digest: string) {
    return this.modules.get(digest);
  }
  atomically<R>(fn: () => R): R {
    return fn();
  }
  close() {}
}
