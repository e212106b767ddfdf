// The adapter's finalizer: on an object before the adapter does anything for
// it in the control plane, so that deleting the object waits until that work
// is undone; removed once it is. Both patch the freshest copy of the object
// with its resourceVersion, so a concurrent change is a 409 and a retry, never
// a lost finalizer of someone else.

import { MERGE_PATCH, type Kube, type KubeObject, type ResourceKind } from './kube.ts';

export const FINALIZER = 'propeller.absmach.io/cleanup';

export function hasFinalizer(obj: KubeObject): boolean {
  return obj.metadata.finalizers?.includes(FINALIZER) ?? false;
}

async function patchFinalizers<T extends KubeObject>(kube: Kube, k: ResourceKind, obj: T, change: (list: string[]) => string[]): Promise<T> {
  const { group, version, plural } = k;
  const at = { group, version, plural, namespace: obj.metadata.namespace!, name: obj.metadata.name! };
  const fresh = (await kube.custom.getNamespacedCustomObject(at)) as T;
  const before = fresh.metadata.finalizers ?? [];
  const after = change(before);
  if (after.length === before.length && after.every((f, i) => f === before[i])) return fresh;
  const body = { metadata: { finalizers: after, resourceVersion: fresh.metadata.resourceVersion } };
  return (await kube.custom.patchNamespacedCustomObject({ ...at, body }, MERGE_PATCH)) as T;
}

/** Adds the finalizer; returns the object as it now is. */
export function addFinalizer<T extends KubeObject>(kube: Kube, k: ResourceKind, obj: T): Promise<T> {
  return patchFinalizers(kube, k, obj, (l) => (l.includes(FINALIZER) ? l : [...l, FINALIZER]));
}

export function removeFinalizer<T extends KubeObject>(kube: Kube, k: ResourceKind, obj: T): Promise<T> {
  return patchFinalizers(kube, k, obj, (l) => l.filter((f) => f !== FINALIZER));
}
