// Status goes through the /status subresource as a JSON merge patch, and
// only when it changed: an unchanged status is no request at all.

import { MERGE_PATCH, type Kube, type KubeObject, type ResourceKind } from './kube.ts';

type Json = unknown;

const isPlainObject = (v: Json): v is Record<string, Json> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Structural equality of JSON values (key order ignored). */
export function jsonEqual(a: Json, b: Json): boolean {
  if (a === b) return true;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  if (isPlainObject(a) && isPlainObject(b)) {
    const ka = Object.keys(a).filter((k) => a[k] !== undefined);
    const kb = Object.keys(b).filter((k) => b[k] !== undefined);
    return ka.length === kb.length && ka.every((k) => jsonEqual(a[k], b[k]));
  }
  return false;
}

/**
 * The RFC 7386 merge patch that turns `from` into `to`: changed values, null
 * for removed keys, nested objects patched key by key, arrays replaced whole.
 * Undefined when they are equal.
 */
export function mergePatch(from: Json, to: Json): Json | undefined {
  if (jsonEqual(from, to)) return undefined;
  if (!isPlainObject(from) || !isPlainObject(to)) return to === undefined ? null : to;
  const patch: Record<string, Json> = {};
  for (const k of Object.keys(from)) if (from[k] !== undefined && to[k] === undefined) patch[k] = null;
  for (const [k, v] of Object.entries(to)) {
    if (v === undefined) continue;
    const p = mergePatch(from[k], v);
    if (p !== undefined) patch[k] = p;
  }
  return patch;
}

/**
 * Writes `status` (with observedGeneration set to the object's generation)
 * when it differs from the object's; returns the updated object, or
 * undefined when nothing was written.
 */
export async function writeStatus<T extends KubeObject>(kube: Kube, k: ResourceKind, obj: T, status: Record<string, unknown>): Promise<T | undefined> {
  const next = { ...status, ...(obj.metadata.generation !== undefined ? { observedGeneration: obj.metadata.generation } : {}) };
  const patch = mergePatch(obj.status ?? {}, JSON.parse(JSON.stringify(next)));
  if (patch === undefined) return undefined;
  const { group, version, plural } = k;
  return (await kube.custom.patchNamespacedCustomObjectStatus(
    { group, version, plural, namespace: obj.metadata.namespace!, name: obj.metadata.name!, body: { status: patch } },
    MERGE_PATCH,
  )) as T;
}
