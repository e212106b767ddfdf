// The shape every controller has, and what runs it: an informer of its kind
// feeds a work queue of keys; each key is processed by
//   1. the object gone from the cache: nothing to do;
//   2. the object being deleted: `finalize` undoes the work outside
//      Kubernetes, then the finalizer is removed and the apiserver deletes it;
//   3. otherwise: the finalizer is added (when the controller has a
//      `finalize`) before `reconcile` runs.
// `reconcile` is idempotent: it is called on every change, on every resync
// (all keys, every resyncMs) and after an adapter restart, and must converge
// to the same state whatever it finds. A throw is retried with backoff.

import { customResourceSource, Informer, type InformerOptions } from './informer.ts';
import { apiMessage, isNotFound, type Kube, type KubeObject, type Log, type ResourceKind } from './kube.ts';
import { addFinalizer, hasFinalizer, removeFinalizer } from './finalizers.ts';
import { WorkQueue, type ProcessResult } from './work-queue.ts';

export type ReconcileResult = ProcessResult | void;

/** What a running controller offers its own code: the informer's cache and its queue. */
export interface ControllerView<T extends KubeObject = KubeObject> {
  /** Queues a key of this kind: a change seen outside Kubernetes (a task that moved on). */
  enqueue(key: string): void;
  /**
   * Every object of the kind, from the informer's cache (no request): only
   * when the controller watches the whole cluster, else undefined (the
   * caller lists what it needs).
   */
  all(): T[] | undefined;
  /** Resolves once the cache holds a first full list. */
  synced: Promise<void>;
}

export interface Controller<T extends KubeObject = KubeObject> {
  /** The kind it reconciles. */
  kind: ResourceKind;
  /** Makes the world match `obj` and writes what it found into obj's status. */
  reconcile(obj: T, view: ControllerView<T>): Promise<ReconcileResult>;
  /**
   * The object is being deleted: undo its work outside Kubernetes. The
   * finalizer is removed when this returns without requeueAfterMs. Without
   * it, the controller puts no finalizer on its objects.
   */
  finalize?(obj: T, view: ControllerView<T>): Promise<ReconcileResult>;
  /** Work of its own besides reconciles (a poll loop) starts here, once the controller runs. */
  start?(view: ControllerView<T>): void;
  /** ... and ends here, when the controller stops (adapter closed, leadership lost). */
  stop?(): void;
}

export interface RunOptions {
  /** Only this namespace; default all. */
  namespace?: string;
  /** Every key is reconciled again this often; default 30 s. */
  resyncMs?: number;
  /** Keys reconciled at once; default 4. */
  concurrency?: number;
  /** First retry after an error; doubles per key up to maxRetryMs (default 100 ms and 60 s). */
  baseRetryMs?: number;
  maxRetryMs?: number;
  informer?: InformerOptions;
}

export interface RunningController {
  kind: string;
  informer: Informer<KubeObject>;
  queue: WorkQueue;
  stop(): Promise<void>;
}

export function runController<T extends KubeObject>(kube: Kube, ctl: Controller<T>, log: Log, o: RunOptions = {}): RunningController {
  const kind = ctl.kind;
  const informer = new Informer<T>(kube, customResourceSource<T>(kube, kind, o.namespace), (key) => queue.add(key), log, o.informer);
  const view: ControllerView<T> = {
    enqueue: (key) => queue.add(key),
    all: () => (o.namespace === undefined ? informer.list() : undefined),
    synced: informer.synced,
  };
  const queue = new WorkQueue(
    async (key) => {
      let obj = informer.get(key);
      if (!obj) return;
      if (obj.metadata.deletionTimestamp) {
        if (!hasFinalizer(obj)) return;
        const r = ctl.finalize ? await ctl.finalize(obj, view) : undefined;
        if (r?.requeueAfterMs !== undefined) return r;
        await removeFinalizer(kube, kind, obj).catch((e) => {
          if (!isNotFound(e)) throw e;
        });
        log('info', 'finalized', { kind: kind.kind, key });
        return;
      }
      if (ctl.finalize && !hasFinalizer(obj)) obj = await addFinalizer(kube, kind, obj);
      return ctl.reconcile(obj, view);
    },
    {
      concurrency: o.concurrency ?? 4,
      baseDelayMs: o.baseRetryMs ?? 100,
      maxDelayMs: o.maxRetryMs ?? 60_000,
      onError: (key, e, retryInMs) => log('warn', 'reconcile failed', { kind: kind.kind, key, error: apiMessage(e), retry_ms: retryInMs }),
    },
  );
  informer.start();
  ctl.start?.(view);
  const resync = setInterval(() => {
    for (const key of informer.keys()) queue.add(key);
  }, o.resyncMs ?? 30_000);
  return {
    kind: kind.kind,
    informer: informer as unknown as Informer<KubeObject>,
    queue,
    async stop() {
      ctl.stop?.();
      clearInterval(resync);
      await informer.stop();
      await queue.close();
    },
  };
}
