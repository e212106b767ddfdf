// `propeller k8s manifests`: the CRDs, RBAC and adapter Deployment as YAML,
// for `kubectl apply -f -`.

import { DEFAULT_IMAGE, DEFAULT_NAMESPACE, defaultControlPlane, manifests, PARTS, toYaml, type Part } from '../k8s-adapter/manifests.ts';
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
