// An informer: list a collection, then watch it from the list's
// resourceVersion, keeping a local cache and calling back on each change.
// A watch the server ends cleanly is resumed from the last resourceVersion;
// 410 Gone (the version is too old) and any other error relist, after a
// backoff that doubles up to a cap. Objects that vanished between two lists
// are reported as deleted.

import { collectionPath, isNotFound, keyOf, sleep, type Kube, type KubeObject, type Log, type ResourceKind } from './kube.ts';

/** The one command that installs what a 404 on a kind of ours says is missing. */
export const INSTALL_CRDS = 'propeller k8s manifests --only crds | kubectl apply -f -';

export interface ListResult<T> {
  items: T[];
  resourceVersion: string;
}

export interface InformerSource<T extends KubeObject> {
  /** What the logs call it, e.g. the kind. */
  name: string;
  list(): Promise<ListResult<T>>;
  /** The collection's path for the watch, e.g. /apis/GROUP/VERSION/PLURAL. */
  watchPath: string;
  /** What a 404 on the list means and how to fix it (a CustomResourceDefinition not installed). */
  missing?: string;
}

export interface InformerOptions {
  /** First wait after an error; doubles each time, up to maxBackoffMs. */
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** The server ends each watch after this long (then it is resumed). */
  watchTimeoutSeconds?: number;
}

/** Called with the new object, or undefined and the last known one when it was deleted. */
export type ChangeHandler<T> = (key: string, obj: T | undefined, old: T | undefined) => void;

class Gone extends Error {}

/** Lists and watches a custom resource kind, cluster-wide or in one namespace. */
export function customResourceSource<T extends KubeObject>(kube: Kube, k: ResourceKind, namespace?: string): InformerSource<T> {
  const { group, version, plural } = k;
  return {
    name: k.kind,
    watchPath: collectionPath(k, namespace),
    missing: `the cluster has no CustomResourceDefinition ${plural}.${group} (kind ${k.kind}); install the CRDs with: ${INSTALL_CRDS}`,
    async list() {
      const res = (namespace
        ? await kube.custom.listNamespacedCustomObject({ group, version, plural, namespace })
        : await kube.custom.listClusterCustomObject({ group, version, plural })) as { items: T[]; metadata: { resourceVersion: string } };
      return { items: res.items, resourceVersion: res.metadata.resourceVersion };
    },
  };
}

export class Informer<T extends KubeObject> {
  private cache = new Map<string, T>();
  private resourceVersion = '';
  private stopper = new AbortController();
  private watchAbort?: AbortController;
  private running?: Promise<void>;
  private syncedOnce!: () => void;
  /** Resolves after the first successful list. */
  readonly synced = new Promise<void>((r) => (this.syncedOnce = r));

  constructor(
    private kube: Kube,
    private source: InformerSource<T>,
    private onChange: ChangeHandler<T>,
    private log: Log,
    private o: InformerOptions = {},
  ) {}

  start(): void {
    this.running ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    this.watchAbort?.abort();
    await this.running;
  }

  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  keys(): string[] {
    return [...this.cache.keys()];
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  private get stopped() {
    return this.stopper.signal.aborted;
  }

  private async run(): Promise<void> {
    const min = this.o.minBackoffMs ?? 200;
    const max = this.o.maxBackoffMs ?? 30_000;
    let backoff = min;
    let relist = true;
    let missing = false;
    while (!this.stopped) {
      try {
        if (relist) {
          await this.relist();
          relist = false;
          backoff = min;
          if (missing) this.log('info', 'the kind is installed now', { kind: this.source.name });
          missing = false;
        }
        await this.watchOnce();
        // the server closed the watch cleanly: resume from where it was
      } catch (e) {
        if (this.stopped) break;
        relist = true;
        if (e instanceof Gone) {
          this.log('info', 'watch expired (410 Gone): relisting', { kind: this.source.name });
          continue;
        }
        if (this.source.missing && isNotFound(e)) {
          // said once, at error level: retrying cannot help until someone installs it
          if (!missing) this.log('error', this.source.missing, { kind: this.source.name, retry_ms: max });
          missing = true;
          backoff = max;
        } else {
          this.log('warn', 'list/watch failed: retrying', { kind: this.source.name, error: (e as Error).message?.split('\n')[0], retry_ms: backoff });
        }
        await sleep(backoff, this.stopper.signal);
        backoff = Math.min(backoff * 2, max);
      }
    }
  }

  private async relist(): Promise<void> {
    const { items, resourceVersion } = await this.source.list();
    if (this.stopped) return;
    const fresh = new Map(items.map((o) => [keyOf(o), o]));
    for (const [key, old] of this.cache) {
      if (!fresh.has(key)) {
        this.cache.delete(key);
        this.onChange(key, undefined, old);
      }
    }
    for (const [key, obj] of fresh) {
      const old = this.cache.get(key);
      this.cache.set(key, obj);
      if (old?.metadata.resourceVersion !== obj.metadata.resourceVersion) this.onChange(key, obj, old);
    }
    this.resourceVersion = resourceVersion;
    this.syncedOnce();
  }

  /** One watch request: resolves when the server ends it, rejects on an error (Gone for 410). */
  private watchOnce(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const onStop = () => finish();
      const finish = (err?: unknown) => {
        if (settled) return;
        settled = true;
        this.stopper.signal.removeEventListener('abort', onStop);
        this.watchAbort?.abort();
        if (err) reject(err);
        else resolve();
      };
      const onEvent = (type: string, obj: T & { code?: number; message?: string }) => {
        if (settled) return;
        if (type === 'ERROR') {
          finish(obj.code === 410 ? new Gone() : new Error(`watch error ${obj.code}: ${obj.message}`));
          return;
        }
        const rv = obj.metadata?.resourceVersion;
        if (rv) this.resourceVersion = rv;
        if (type === 'BOOKMARK') return;
        const key = keyOf(obj);
        const old = this.cache.get(key);
        if (type === 'DELETED') {
          this.cache.delete(key);
          this.onChange(key, undefined, old ?? obj);
        } else {
          this.cache.set(key, obj);
          this.onChange(key, obj, old);
        }
      };
      const params = { resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds: this.o.watchTimeoutSeconds ?? 300 };
      this.kube.watch
        .watch(this.source.watchPath, params, onEvent, (err: unknown) => finish(err ?? undefined))
        .then((abort) => {
          this.watchAbort = abort;
          if (this.stopped || settled) abort.abort();
        })
        .catch(finish);
      this.stopper.signal.addEventListener('abort', onStop, { once: true });
    });
  }
}
