// Everything a cluster needs to run the adapter, as plain objects: the CRDs,
// least-privilege RBAC, and the adapter's Deployment. `propeller k8s
// manifests` prints them; gen-manifests.ts writes the same objects into the
// Helm chart and the kustomize config/ tree.

import { stringify } from 'yaml';
import { crds, PART_OF } from './crds.ts';
import { KINDS, MODEL_CHECKPOINT, PROPLET, TRAINING_ROUND, type KindDef } from './types.ts';

export const NAME = 'propeller-k8s-adapter';
export const DEFAULT_NAMESPACE = 'propeller-system';
export const DEFAULT_IMAGE = 'propeller/propeller-edge:latest';
export const PARTS = ['crds', 'rbac', 'deployment'] as const;
export type Part = (typeof PARTS)[number];

export interface ManifestOptions {
  namespace: string;
  /** The adapter's image; its `propeller` command runs `k8s adapter`. */
  image: string;
  /** The control plane's HTTP API, as the adapter's pod reaches it. */
  controlPlane: string;
}

export function defaultControlPlane(namespace: string): string {
  return `http://propeller.${namespace}.svc:7070`;
}

export interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  [field: string]: unknown;
}

interface Rule {
  apiGroups: string[];
  resources: string[];
  verbs: string[];
}

const labels = { 'app.kubernetes.io/name': NAME, ...PART_OF };
const READ = ['get', 'list', 'watch'];
const OWN = [...READ, 'create', 'update', 'patch', 'delete'];

/**
 * Kinds the adapter creates: rounds and checkpoints of a FederatedJob, and
 * Proplets for devices that register on their own. The others belong to
 * users: the adapter reads them and updates their finalizers and status.
 */
const CREATED_BY_ADAPTER = new Set<KindDef>([TRAINING_ROUND, MODEL_CHECKPOINT, PROPLET]);

function customResourceRules(): Rule[] {
  const rules: Rule[] = [];
  for (const group of [...new Set(KINDS.map((k) => k.group))]) {
    const kinds = KINDS.filter((k) => k.group === group) as KindDef[];
    const users = kinds.filter((k) => !CREATED_BY_ADAPTER.has(k)).map((k) => k.plural);
    const own = kinds.filter((k) => CREATED_BY_ADAPTER.has(k)).map((k) => k.plural);
    if (users.length) rules.push({ apiGroups: [group], resources: users, verbs: [...READ, 'update', 'patch'] });
    if (own.length) rules.push({ apiGroups: [group], resources: own, verbs: OWN });
    rules.push({ apiGroups: [group], resources: kinds.map((k) => `${k.plural}/status`), verbs: ['get', 'update', 'patch'] });
    rules.push({ apiGroups: [group], resources: kinds.map((k) => `${k.plural}/finalizers`), verbs: ['update'] });
  }
  return rules;
}

/** The adapter's rights everywhere: its kinds, and what it runs for them in users' namespaces. */
export function clusterRole(): Manifest {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'ClusterRole',
    metadata: { name: NAME, labels },
    rules: [
      ...customResourceRules(),
      { apiGroups: [''], resources: ['events'], verbs: ['create', 'patch'] },
      // Proplet type k8s: a Deployment of proplet pods; WasmTask execution job: a ConfigMap and a Job
      { apiGroups: ['apps'], resources: ['deployments'], verbs: OWN },
      { apiGroups: ['batch'], resources: ['jobs'], verbs: OWN },
      // ConfigMaps for Jobs, Secrets for proplet credentials
      { apiGroups: [''], resources: ['configmaps', 'secrets'], verbs: OWN },
      { apiGroups: [''], resources: ['pods'], verbs: READ },
    ] satisfies Rule[],
  };
}

/** Leader election: a Lease in the adapter's own namespace, nowhere else. */
export function leaseRole(o: ManifestOptions): Manifest {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: { name: `${NAME}-leader-election`, namespace: o.namespace, labels },
    rules: [{ apiGroups: ['coordination.k8s.io'], resources: ['leases'], verbs: ['get', 'create', 'update'] }] satisfies Rule[],
  };
}

const subjects = (o: ManifestOptions) => [{ kind: 'ServiceAccount', name: NAME, namespace: o.namespace }];

export function rbac(o: ManifestOptions): Manifest[] {
  return [
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: o.namespace, labels: { ...PART_OF } } },
    { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: NAME, namespace: o.namespace, labels } },
    clusterRole(),
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'ClusterRoleBinding',
      metadata: { name: NAME, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: NAME },
      subjects: subjects(o),
    },
    leaseRole(o),
    {
      apiVersion: 'rbac.authorization.k8s.io/v1',
      kind: 'RoleBinding',
      metadata: { name: `${NAME}-leader-election`, namespace: o.namespace, labels },
      roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: `${NAME}-leader-election` },
      subjects: subjects(o),
    },
  ];
}

export function deployment(o: ManifestOptions): Manifest {
  const fieldEnv = (name: string, fieldPath: string) => ({ name, valueFrom: { fieldRef: { fieldPath } } });
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: NAME, namespace: o.namespace, labels },
    spec: {
      replicas: 1,
      selector: { matchLabels: { 'app.kubernetes.io/name': NAME } },
      template: {
        metadata: { labels },
        spec: {
          serviceAccountName: NAME,
          securityContext: { runAsNonRoot: true, runAsUser: 1000 },
          containers: [
            {
              name: 'adapter',
              image: o.image,
              command: ['propeller'],
              args: ['k8s', 'adapter', '--control-plane', o.controlPlane],
              env: [
                // the Lease holder's identity and namespace
                fieldEnv('POD_NAME', 'metadata.name'),
                fieldEnv('POD_NAMESPACE', 'metadata.namespace'),
                { name: 'PROPELLER_API_TOKEN', valueFrom: { secretKeyRef: { name: 'propeller-api-token', key: 'token', optional: true } } },
              ],
              resources: { requests: { cpu: '50m', memory: '128Mi' }, limits: { memory: '512Mi' } },
              securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
            },
          ],
        },
      },
    },
  };
}

export function manifests(o: ManifestOptions, only?: Part): Manifest[] {
  const parts: Record<Part, () => Manifest[]> = {
    crds: () => crds() as unknown as Manifest[],
    rbac: () => rbac(o),
    deployment: () => [deployment(o)],
  };
  return only ? parts[only]() : PARTS.flatMap((p) => parts[p]());
}

/** One YAML document, or several separated by `---`. */
export function toYaml(docs: object | object[]): string {
  const list = Array.isArray(docs) ? docs : [docs];
  return list.map((d) => stringify(d, { lineWidth: 0, aliasDuplicateObjects: false })).join('---\n');
}
