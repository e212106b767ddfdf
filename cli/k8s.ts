// `propeller k8s manifests`: the CRDs, RBAC and adapter Deployment as YAML,
// for `kubectl apply -f -`. `propeller k8s adapter`: the adapter itself (also
// started by `propeller serve --kubeconfig`).

import { hostname } from 'node:os';
import type { KubeConfig } from '@kubernetes/client-node';
import { ControlPlaneClient } from '../control-plane/client.ts';
import { createLogger, type Level, type Logger } from '../control-plane/log.ts';
import type { Adapter } from '../k8s-adapter/adapter.ts';
import type { JobModeConfig } from '../k8s-adapter/controllers/task.ts';
import { DEFAULT_IMAGE, DEFAULT_NAMESPACE, defaultControlPlane, manifests, NAME, PARTS, toYaml, type Part } from '../k8s-adapter/manifests.ts';
import { UsageError, str, type Command } from './args.ts';

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export const k8sManifests: Command = {
  usage: 'propeller k8s manifests [--only crds|rbac|deployment] [options]',
  summary: 'print the Kubernetes CRDs, RBAC and adapter Deployment as YAML',
  options: {
    namespace: { type: 'string' },
    image: { type: 'string' },
    'control-plane': { type: 'string' },
    only: { type: 'string' },
  },
  help: `  --only PART            print one part: crds (the seven CRDs), rbac (Namespace, ServiceAccount,
                         ClusterRole, ClusterRoleBinding, and a Role for the leader-election Lease)
                         or deployment (the adapter); default: all three, in that order
  --namespace NS         where the adapter runs (default ${DEFAULT_NAMESPACE})
  --image IMAGE          the adapter's image, whose propeller command runs 'k8s adapter'
                         (default ${DEFAULT_IMAGE})
  --control-plane URL    the control plane's HTTP API as the adapter's pod reaches it
                         (default ${defaultControlPlane('NS')})

  Examples:
    propeller k8s manifests | kubectl apply -f -
    propeller k8s manifests --only crds > crds.yaml
  The same objects are in the Helm chart deploy/helm/propeller and under config/ (kubectl apply -k config/default).`,
  async run(v, pos) {
    if (pos.length) throw new UsageError(`unexpected argument ${JSON.stringify(pos[0])}`);
    const only = str(v.only);
    if (only !== undefined && !(PARTS as readonly string[]).includes(only)) throw new UsageError(`--only must be one of ${PARTS.join(', ')}, got ${JSON.stringify(only)}`);
    const namespace = str(v.namespace) ?? DEFAULT_NAMESPACE;
    if (namespace.length > 63 || !DNS_LABEL.test(namespace)) throw new UsageError(`--namespace must be a DNS label (lowercase letters, digits and -), got ${JSON.stringify(namespace)}`);
    const controlPlane = str(v['control-plane']) ?? defaultControlPlane(namespace);
    if (!/^https?:\/\/[^/]+/.test(controlPlane)) throw new UsageError(`--control-plane must be an http(s) URL, got ${JSON.stringify(controlPlane)}`);
    const image = str(v.image) ?? DEFAULT_IMAGE;
    if (!image || /\s/.test(image)) throw new UsageError(`--image must be an image reference, got ${JSON.stringify(image)}`);
    process.stdout.write(toYaml(manifests({ namespace, image, controlPlane }, only as Part | undefined)));
  },
};

/** How `propeller k8s adapter` and `propeller serve --kubeconfig` run the adapter. */
export interface AdapterSettings {
  /** Default $KUBECONFIG, ~/.kube/config, then the pod's service account. */
  kubeconfig?: string;
  controlPlane: string;
  token?: string;
  namespace?: string;
  leaseNamespace?: string;
  id?: string;
  job?: Partial<JobModeConfig>;
  log: Logger;
}

export async function launchAdapter(s: AdapterSettings): Promise<Adapter> {
  // the Kubernetes client is large: loaded only by the commands that run the adapter
  const [{ startAdapter }, { loadKubeConfig }] = await Promise.all([import('../k8s-adapter/adapter.ts'), import('../k8s-adapter/runtime/kube.ts')]);
  let kc: KubeConfig;
  try {
    kc = loadKubeConfig(s.kubeconfig);
  } catch (e) {
    throw new UsageError(`cannot load the kubeconfig${s.kubeconfig ? ` ${s.kubeconfig}` : ''}: ${(e as Error).message.split('\n')[0]}`);
  }
  const contextNamespace = kc.getContextObject(kc.getCurrentContext())?.namespace;
  return startAdapter({
    kubeconfig: kc,
    controlPlane: new ControlPlaneClient(s.controlPlane, s.token),
    ...(s.namespace ? { namespace: s.namespace } : {}),
    leaderElection: {
      namespace: s.leaseNamespace ?? process.env.POD_NAMESPACE ?? contextNamespace ?? 'default',
      name: NAME,
      identity: s.id ?? process.env.POD_NAME ?? `${hostname()}-${process.pid}`,
    },
    ...(s.job ? { job: s.job } : {}),
    log: s.log,
  });
}

export const k8sAdapter: Command = {
  usage: 'propeller k8s adapter --control-plane URL [options]',
  summary: "run the Kubernetes adapter: the seeds' custom resources onto a control plane",
  options: {
    'control-plane': { type: 'string' },
    token: { type: 'string' },
    kubeconfig: { type: 'string' },
    namespace: { type: 'string' },
    'lease-namespace': { type: 'string' },
    id: { type: 'string' },
    'job-image': { type: 'string' },
    'job-broker': { type: 'string' },
    'log-level': { type: 'string' },
  },
  help: `  --control-plane URL    the control plane's HTTP API (env PROPELLER_API; required)
  --token TOKEN          its bearer token (env PROPELLER_API_TOKEN)
  --kubeconfig FILE      the cluster (default: env KUBECONFIG, ~/.kube/config, then the pod's
                         service account when run in a cluster)
  --namespace NS         reconcile resources in NS only (default: every namespace)
  --lease-namespace NS   where the leader-election Lease ${NAME} lives (env POD_NAMESPACE,
                         default the kubeconfig context's namespace, else default)
  --id ID                this replica in the Lease and in Events (env POD_NAME, default HOST-PID)
  --job-image IMAGE      the image of the proplet Jobs of 'execution: job' WasmTasks
                         (default ${DEFAULT_IMAGE})
  --job-broker URL       the broker as those pods reach it (default mqtt://CONTROL-PLANE-HOST:1883)
  --log-level LEVEL      debug, info, warn, error or silent (default info)

  Replicas elect a leader with the Lease; only the leader acts, and another takes over
  within the lease duration (15 s) when it dies. Controllers: WasmTask and Task (a
  control-plane task each), PropletGroup (a control-plane group). Stop with SIGINT or SIGTERM.

  Example:
    propeller k8s manifests --only crds | kubectl apply -f -
    propeller k8s adapter --control-plane http://127.0.0.1:7070 --kubeconfig ~/.kube/config`,
  async run(v, pos) {
    if (pos.length) throw new UsageError(`unexpected argument ${JSON.stringify(pos[0])}`);
    const controlPlane = str(v['control-plane']) ?? process.env.PROPELLER_API;
    if (!controlPlane) throw new UsageError('--control-plane URL (or env PROPELLER_API) is required');
    if (!/^https?:\/\/[^/]+/.test(controlPlane)) throw new UsageError(`--control-plane must be an http(s) URL, got ${JSON.stringify(controlPlane)}`);
    for (const o of ['namespace', 'lease-namespace'] as const) {
      const ns = str(v[o]);
      if (ns !== undefined && (ns.length > 63 || !DNS_LABEL.test(ns))) throw new UsageError(`--${o} must be a DNS label (lowercase letters, digits and -), got ${JSON.stringify(ns)}`);
    }
    const broker = str(v['job-broker']);
    if (broker !== undefined && !/^(mqtt|mqtts|tcp|ssl|ws|wss):\/\/[^/]+/.test(broker)) throw new UsageError(`--job-broker must look like mqtt://host:port, got ${JSON.stringify(broker)}`);
    const level = (str(v['log-level']) ?? 'info') as Level | 'silent';
    if (!['debug', 'info', 'warn', 'error', 'silent'].includes(level)) throw new UsageError('--log-level must be debug, info, warn, error or silent');
    const log = createLogger(level);
    const image = str(v['job-image']);
    const adapter = await launchAdapter({
      kubeconfig: str(v.kubeconfig),
      controlPlane,
      token: str(v.token) ?? process.env.PROPELLER_API_TOKEN,
      namespace: str(v.namespace),
      leaseNamespace: str(v['lease-namespace']),
      id: str(v.id),
      job: { ...(image ? { image } : {}), ...(broker ? { broker } : {}) },
      log,
    });
    log('info', 'adapter running', { identity: adapter.identity, control_plane: controlPlane });
    await new Promise<void>((resolve) => {
      process.once('SIGINT', () => resolve());
      process.once('SIGTERM', () => resolve());
    });
    await adapter.close();
    return 0;
  },
};
