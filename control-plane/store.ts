// State behind one interface, so the same control plane runs on memory (tests)
// or on a durable embedded store. Every put is one atomic write of one record.

import type { Proplet, Task } from './model.ts';

export interface Store {
  getTask(id: string): Task | undefined;
  putTask(task: Task): void;
  deleteTask(id: string): boolean;
  listTasks(): Task[];

  getProplet(id: string): Proplet | undefined;
  putProplet(p: Proplet): void;
  deleteProplet(id: string): boolean;
  listProplets(): Proplet[];

  /** Content-addressed modules: key is 'sha256:<hex>'. */
  putModule(digest: string, bytes: Uint8Array): void;
  getModule(digest: string): Uint8Array | undefined;

  close(): void;
}

/** Keeps everything in maps; copies on the way in and out so callers cannot mutate stored state by accident. */
export class MemoryStore implements Store {
  private tasks = new Map<string, Task>();
  private proplets = new Map<string, Proplet>();
  private modules = new Map<string, Uint8Array>();

  getTask(id: string) {
    const t = this.tasks.get(id);
    return t && structuredClone(t);
  }
  putTask(task: Task) {
    this.tasks.set(task.id, structuredClone(task));
  }
  deleteTask(id: string) {
    return this.tasks.delete(id);
  }
  listTasks() {
    return [...this.tasks.values()].map((t) => structuredClone(t));
  }
  getProplet(id: string) {
    const p = this.proplets.get(id);
    return p && structuredClone(p);
  }
  putProplet(p: Proplet) {
    this.proplets.set(p.id, structuredClone(p));
  }
  deleteProplet(id: string) {
    return this.proplets.delete(id);
  }
  listProplets() {
    return [...this.proplets.values()].map((p) => structuredClone(p));
  }
  putModule(digest: string, bytes: Uint8Array) {
    this.modules.set(digest, bytes);
  }
  getModule(digest: string) {
    return this.modules.get(digest);
  }
  close() {}
}
