// The Kubernetes clients the adapter uses (@kubernetes/client-node 1.x), how
// a kubeconfig is found, and what an API error says.

import { BatchV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, KubeConfig, PatchStrategy, setHeaderOptions, Watch } from '@kubernetes/client-node';
import type { ObjectMeta } from '../types.ts';

export type Level = 'debug' | 'info' | 'warn' | 'error';
/** The control plane's logger shape: one structured line per event. */
export type Log = (level: Level, msg: string, fields?: Record<string, unknown>) => void;

/** A custom resource kind as the API addresses it (every KindDef of types.ts is one). */
export interface ResourceKind {
  group: string;
  version: string;
  apiVersion: string;
  kind: string;
  plural: string;
}

/** Any object as the API sends it: plain JSON, timestamps as strings. */
export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  spec?: unknown;
  status?: unknown;
}

export interface Kube {
  config: KubeConfig;
  custom: CustomObjectsApi;
  core: CoreV1Api;
  batch: BatchV1Api;
  coordination: CoordinationV1Api;
  watch: Watch;
}

/**
 * A kubeconfig file, or else the usual places in order: $KUBECONFIG,
 * ~/.kube/config, the pod's service account (in-cluster).
 */
export function loadKubeConfig(file?: string): KubeConfig {
  const kc = new KubeConfig();
  if (file) kc.loadFromFile(file);
  else if (!process.env.KUBECONFIG && process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  if (!kc.getCurrentCluster()) throw new Error(`no cluster in the kubeconfig${file ? ` ${file}` : ''}`);
  return kc;
}

export function kubeClients(config: KubeConfig): Kube {
  return {
    config,
    custom: config.makeApiClient(CustomObjectsApi),
    core: config.makeApiClient(CoreV1Api),
    batch: config.makeApiClient(BatchV1Api),
    coordination: config.makeApiClient(CoordinationV1Api),
    watch: new Watch(config),
  };
}

/** Request options for a JSON merge patch (client-node 1.x sends JSON patch unless told). */
export const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

/** The HTTP status of an API error (ApiException.code), or 0 when the request did not get an answer. */
export function httpStatus(e: unknown): number {
  const code = (e as { code?: unknown }).code;
  return typeof code === 'number' ? code : 0;
}

export const isNotFound = (e: unknown) => httpStatus(e) === 404;
export const isConflict = (e: unknown) => httpStatus(e) === 409;

/** The apiserver's own message (its Status body) rather than client-node's long dump of headers. */
export function apiMessage(e: unknown): string {
  const body = (e as { body?: unknown }).body;
  if (typeof body === 'string') {
    try {
      const m = (JSON.parse(body) as { message?: string }).message;
      if (m) return `${httpStatus(e)}: ${m}`;
    } catch {
      // not JSON: fall through
    }
  }
  if (body && typeof body === 'object' && typeof (body as { message?: unknown }).message === 'string') return `${httpStatus(e)}: ${(body as { message: string }).message}`;
  return (e as Error).message?.split('\n')[0] ?? String(e);
}

/** namespace/name, or name for a cluster-scoped object: the work queue's key. */
export function keyOf(o: { metadata: ObjectMeta }): string {
  return o.metadata.namespace ? `${o.metadata.namespace}/${o.metadata.name}` : o.metadata.name!;
}

export function splitKey(key: string): { namespace?: string; name: string } {
  const i = key.indexOf('/');
  return i < 0 ? { name: key } : { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/** The path of a kind's collection, cluster-wide or in one namespace. */
export function collectionPath(k: ResourceKind, namespace?: string): string {
  return `/apis/${k.group}/${k.version}${namespace ? `/namespaces/${namespace}` : ''}/${k.plural}`;
}

/** metav1.Time: RFC 3339 in whole seconds, as Kubernetes writes it. */
export function kubeTime(d: Date | string | number = new Date()): string {
  return new Date(d).toISOString().replace(/\.\d+Z$/, 'Z');
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done, { once: true });
  });
}
