// What the Proplet controller builds and reads, as pure functions: the
// Deployment of a `type: k8s` Proplet and its group credentials, the
// credentials Secret of a `type: external` device, the status from the
// control plane's registry, the proplet records a k8s Proplet leaves behind,
// and the Proplet resource of a device that registered on its own
// (discovery). Nothing here talks to an API; controllers/proplet.ts does.
//
// A k8s Proplet's pods share one MQTT account: the broker's group account
// `NAME-*` (broker/README.md, Credentials) admits any username `NAME-<rest>`
// with the group's secret, as the proplet `NAME-<rest>`. A Deployment's pods
// are named `NAME-<pod-template-hash>-<5 random>`, so each pod takes its
// proplet id from the downward API (metadata.name) and the group's secret
// from one Secret key. Pod names are unknown in advance, but their shape is
// known: isPodId tells a pod's proplet id from any other id under the prefix.

import { createHash } from 'node:crypto';
import type { V1Container, V1Deployment, V1EnvVar, V1ResourceRequirements, V1Secret } from '@kubernetes/client-node';
import type { ControlPlaneClient } from '../control-plane/client.ts';
import { isId } from '../protocol/index.ts';
import { base, scope } from '../topics/index.ts';
import { NAME as ADAPTER_NAME } from './manifests.ts';
import { setCondition, type ConditionInput } from './runtime/conditions.ts';
import { kubeTime } from './runtime/kube.ts';
import { HYBRID_API_VERSION, type ObjectMeta, type OwnerReference, type Proplet, type PropletPhase, type PropletStatus } from './types.ts';

/** On the Deployment, its pods and the Secrets of a Proplet: its name (the pods' selector). */
export const PROPLET_LABEL = 'propeller.absmach.fr/proplet';
/** On the Deployment: the hash of what its spec was built from, but the replica count; another hash means the spec is rewritten. */
export const TEMPLATE_HASH_ANNOTATION = 'propeller.absmach.fr/template-hash';
/** On a discovered Proplet: "true". */
export const DISCOVERED_LABEL = 'propeller.absmach.fr/discovered';
/** On an external Proplet: the device's proplet id, when it is not metadata.name (always on discovered ones). */
export const PROPLET_ID_ANNOTATION = 'propeller.absmach.fr/proplet-id';
/** The proplet label (`--label`) that carries the Proplet's namespace to the control plane. */
export const NAMESPACE_LABEL = 'propeller.absmach.fr/namespace';
/** The key of a k8s Proplet's Secret that holds the group's MQTT secret. */
export const SECRET_KEY = 'PROPLET_SECRET';
const MANAGED_BY = { 'app.kubernetes.io/managed-by': ADAPTER_NAME };

/**
 * The longest name of a k8s Proplet: its pods are named by the apiserver from
 * generateName `NAME-<hash of up to 10>-`, which it cuts at 58 characters; up
 * to 46, every pod name is `NAME-<hash>-<5>` in full.
 */
export const MAX_K8S_NAME = 46;

/** A proplet as GET /proplets lists it. */
export type ControlPlaneProplet = Awaited<ReturnType<ControlPlaneClient['listProplets']>>['proplets'][number];

/** What the adapter knows that a Proplet may leave out. */
export interface PropletDefaults {
  /** The broker as pods reach it (e.g. mqtt://propeller.propeller-system.svc:1883); spec.connectionConfig.broker wins. */
  broker: string;
  /** The control plane's scope; spec.connectionConfig.domainId/channelId win. */
  domain: string;
  channel: string;
  /** The proplet container's command; default ['propeller', 'proplet'] (the propeller-edge image). */
  command?: string[];
  /** More env for every proplet pod, e.g. PROPLET_HEARTBEAT, PROPLET_MAX_TASKS. */
  env?: Record<string, string>;
}

export interface Connection {
  broker: string;
  domain: string;
  channel: string;
}

export function connectionOf(p: Proplet, d: PropletDefaults): Connection {
  const c = p.spec.connectionConfig ?? {};
  return { broker: c.broker || d.broker, domain: c.domainId || d.domain, channel: c.channelId || d.channel };
}

/** The Proplet as the controlling owner of what is built for it. */
export function ownerReference(p: Proplet): OwnerReference {
  return { apiVersion: p.apiVersion || HYBRID_API_VERSION, kind: 'Proplet', name: p.metadata.name!, uid: p.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

/** The Secret holding the MQTT credentials: NAME-mqtt (status.credentialsSecret). */
export function credentialsSecretName(p: Proplet): string {
  return `${p.metadata.name}-mqtt`;
}

/** `propeller.absmach.fr/proplet=NAME`: the pods' label selector (status.selector, the scale subresource's). */
export function podSelector(p: Proplet): string {
  return `${PROPLET_LABEL}=${p.metadata.name}`;
}

export const desiredReplicas = (p: Proplet): number => p.spec.k8s?.replicas ?? 1;

/** The MQTT group account of a k8s Proplet's pods: `NAME-*`. */
export function groupAccount(p: Proplet): string {
  return `${p.metadata.name}-*`;
}

/** The characters of a pod-template-hash and of a generated name's suffix (Kubernetes' rand.SafeEncodeString: no vowels). */
const SAFE = '[bcdfghjklmnpqrstvwxz2456789]';
const POD_SUFFIX = new RegExp(`^${SAFE}{1,10}-${SAFE}{5}$`);

/**
 * Whether `id` is the name of a pod of this k8s Proplet's Deployment:
 * `NAME-<hash>-<suffix>`. Another Proplet's pods (`NAME-a-...`: vowels never
 * occur in a hash) and devices with other ids under the prefix are not.
 */
export function isPodId(p: Proplet, id: string): boolean {
  const prefix = `${p.metadata.name}-`;
  return id.startsWith(prefix) && POD_SUFFIX.test(id.slice(prefix.length));
}

/** An external Proplet's device id: the annotation, else metadata.name. */
export function propletIdOf(p: Proplet): string {
  return p.metadata.annotations?.[PROPLET_ID_ANNOTATION] ?? p.metadata.name!;
}

export const isDiscovered = (p: Proplet): boolean => p.metadata.labels?.[DISCOVERED_LABEL] === 'true';

/** Whether a proplet id belongs to this Proplet: its device, or one of its pods. */
export function claims(p: Proplet, id: string): boolean {
  return p.spec.type === 'k8s' ? isPodId(p, id) : propletIdOf(p) === id;
}

/**
 * What is wrong with a Proplet that its CRD schema cannot say, or undefined.
 * The controller reports it (status Failed, condition Ready False, reason
 * InvalidSpec) and builds nothing.
 */
export function propletProblem(p: Proplet): string | undefined {
  const name = p.metadata.name ?? '';
  if (p.spec.type === 'k8s') {
    if (!p.spec.k8s) return 'spec.k8s (image, replicas) is required for type k8s';
    if (name.length > MAX_K8S_NAME) return `metadata.name must be at most ${MAX_K8S_NAME} characters for type k8s (its pods are named NAME-<hash>-<suffix>, the proplet ids), not ${name.length}`;
    return undefined;
  }
  const id = propletIdOf(p);
  const where = p.metadata.annotations?.[PROPLET_ID_ANNOTATION] ? `annotation ${PROPLET_ID_ANNOTATION}` : 'metadata.name';
  if (!isId(id) || id.includes('*')) return `proplet id ${JSON.stringify(id)} (${where}) must be 1-128 characters without '+', '#', '/', '*' or control characters`;
  return undefined;
}

const age = (p: Proplet) => `${p.metadata.creationTimestamp ?? '~'} ${p.metadata.namespace}/${p.metadata.name}`;

/** What two Proplets both stand for in the control plane's one name space of ids, or undefined. */
function overlap(a: Proplet, b: Proplet): string | undefined {
  const [an, bn] = [a.metadata.name!, b.metadata.name!];
  if (a.spec.type === 'k8s' && b.spec.type === 'k8s') {
    // the broker picks the longest group prefix: pods of `pool` named pool-x-... would fall under `pool-x-*`
    if (an === bn || an.startsWith(`${bn}-`) || bn.startsWith(`${an}-`)) return `group account ${groupAccount(a)} overlaps ${groupAccount(b)}`;
    return undefined;
  }
  if (a.spec.type === 'k8s' || b.spec.type === 'k8s') {
    const [pool, device] = a.spec.type === 'k8s' ? [a, b] : [b, a];
    const id = propletIdOf(device);
    return isPodId(pool, id) ? `proplet id ${id} is a pod name of ${groupAccount(pool)}` : undefined;
  }
  return propletIdOf(a) === propletIdOf(b) ? `proplet id ${propletIdOf(a)}` : undefined;
}

/**
 * Proplet ids are one name space for the whole control plane, Kubernetes
 * namespaces aside: a Proplet that stands for ids an older Proplet stands for
 * too (the same k8s name in two namespaces, pools `pool` and `pool-x`, an
 * external device named like a pod of a pool) must yield; a discovered
 * Proplet yields to any other (see supersededBy). The reason why, or
 * undefined; the controller reports it (condition Ready False, reason
 * IdConflict) and builds nothing.
 */
export function idConflict(p: Proplet, proplets: Proplet[]): string | undefined {
  for (const q of proplets) {
    if (q.metadata.uid === p.metadata.uid) continue;
    // a discovered Proplet yields to any other; else the younger yields
    const older = isDiscovered(q) !== isDiscovered(p) ? isDiscovered(p) : age(q) < age(p);
    if (!older) continue;
    const what = overlap(p, q);
    if (what) return `${what}: it belongs to Proplet ${q.metadata.namespace}/${q.metadata.name}`;
  }
  return undefined;
}

/** The Proplet a user made for a discovered device, which then replaces the discovered one; or undefined. */
export function supersededBy(p: Proplet, proplets: Proplet[]): Proplet | undefined {
  return isDiscovered(p) ? proplets.find((q) => !isDiscovered(q) && claims(q, propletIdOf(p))) : undefined;
}

// --- names ----------------------------------------------------------------------------

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** `v` if it may be a Kubernetes label value (at most 63 characters, alphanumeric ends), else undefined. */
export function labelValue(v: string): string | undefined {
  return v === '' || (v.length <= 63 && LABEL_NAME.test(v)) ? v : undefined;
}

/** Whether `k` may be a Kubernetes label key: [prefix/]name, prefix a DNS subdomain. */
export function isLabelKey(k: string): boolean {
  const i = k.lastIndexOf('/');
  const prefix = i < 0 ? undefined : k.slice(0, i);
  const name = k.slice(i + 1);
  return name.length <= 63 && LABEL_NAME.test(name) && (prefix === undefined || (prefix.length <= 253 && DNS_SUBDOMAIN.test(prefix)));
}
const HASH_CHARS = 10;

const sha256hex = (s: string) => createHash('sha256').update(s).digest('hex');

/**
 * A DNS label (at most `max` characters) for any string, one-to-one: a
 * string that already is one and has no `--` is kept as it is; any other
 * becomes its lower-cased letters and digits joined by single dashes, `--`,
 * and 10 hex digits of its SHA-256. Kept names never contain `--` and
 * hashed ones always end in `--<hex>`, so two strings cannot share a name
 * (short of a 40-bit hash collision).
 */
export function dnsLabel(s: string, max = 63): string {
  if (s.length <= max && DNS_LABEL.test(s) && !s.includes('--')) return s;
  return hashedLabel(s, s, max);
}

/** `<readable stem of s>--<10 hex digits of the SHA-256 of key>`, at most `max` characters. */
export function hashedLabel(s: string, key: string, max = 63): string {
  const stem = s
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .slice(0, max - HASH_CHARS - 2)
    .replace(/^-+|-+$/g, '');
  return `${stem || 'x'}--${sha256hex(key).slice(0, HASH_CHARS)}`;
}

// --- type k8s: the Deployment ---------------------------------------------------------

/** The plain byte sizes `propeller proplet --memory` reads (no milli, no exponent). */
const PLAIN_SIZE = /^\d+(\.\d+)?(Ki|Mi|Gi|Ti|K|k|M|G|T)?$/;

const quantities = (r?: Record<string, string | number>) => (r ? Object.fromEntries(Object.entries(r).map(([k, v]) => [k, String(v)])) : undefined);

function podResources(p: Proplet): V1ResourceRequirements | undefined {
  const r = p.spec.k8s?.resources;
  if (!r) return undefined;
  const requests = quantities(r.requests);
  const limits = quantities(r.limits);
  return requests || limits ? { ...(requests ? { requests } : {}), ...(limits ? { limits } : {}) } : undefined;
}

/** Memory the proplet offers to tasks: spec.resources.memory, else the pod's memory limit. */
function offeredMemory(p: Proplet): string | undefined {
  const m = String(p.spec.resources?.memory ?? p.spec.k8s?.resources?.limits?.memory ?? '');
  return PLAIN_SIZE.test(m) ? m : undefined;
}

/** JSON with sorted keys: the same value hashes the same whatever order the API sent. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v !== null && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The hash of everything the Deployment's spec is built from, but the replica count. */
export function templateHash(p: Proplet, d: PropletDefaults): string {
  const input = { k8s: { ...p.spec.k8s, replicas: undefined }, resources: p.spec.resources, connection: connectionOf(p, d), command: d.command, env: d.env };
  return sha256hex(canonical(input)).slice(0, HASH_CHARS);
}

function podEnv(p: Proplet, d: PropletDefaults): V1EnvVar[] {
  const c = connectionOf(p, d);
  const memory = offeredMemory(p);
  return [
    // the pod's name is its proplet id, under the group account NAME-*
    { name: 'PROPLET_ID', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    // optional: with an external broker the control plane issues no secrets (POST /proplets answers 501)
    { name: 'PROPLET_SECRET', valueFrom: { secretKeyRef: { name: credentialsSecretName(p), key: SECRET_KEY, optional: true } } },
    { name: 'PROPLET_TYPE', value: 'k8s' },
    { name: 'MQTT_BROKER', value: c.broker },
    { name: 'PROPELLER_DOMAIN_ID', value: c.domain },
    { name: 'PROPELLER_CHANNEL_ID', value: c.channel },
    ...(memory ? [{ name: 'PROPLET_MEMORY', value: memory }] : []),
    ...Object.entries(d.env ?? {}).map(([name, value]) => ({ name, value })),
  ];
}

/**
 * The Deployment of a k8s Proplet: named like it, owned by it, spec.replicas
 * its spec.k8s.replicas, pods labelled for its selector with the connection
 * env, their proplet id from the downward API and the group's secret from
 * the credentials Secret. The template hash annotation tells the controller
 * when the spec must be written again.
 */
export function propletDeployment(p: Proplet, d: PropletDefaults): V1Deployment {
  const name = p.metadata.name!;
  const labels = { ...MANAGED_BY, [PROPLET_LABEL]: name };
  const resources = podResources(p);
  // the control plane sees the Proplet's name and namespace as proplet labels, for PropletGroup selectors
  const labelArgs = ['--label', `${PROPLET_LABEL}=${name}`, '--label', `${NAMESPACE_LABEL}=${p.metadata.namespace ?? 'default'}`];
  const container: V1Container = {
    name: 'proplet',
    image: p.spec.k8s!.image,
    command: d.command ?? ['propeller', 'proplet'],
    ...(d.command ? {} : { args: labelArgs }),
    env: podEnv(p, d),
    ...(resources ? { resources } : {}),
  };
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, namespace: p.metadata.namespace, labels, annotations: { [TEMPLATE_HASH_ANNOTATION]: templateHash(p, d) }, ownerReferences: [ownerReference(p)] },
    spec: {
      replicas: desiredReplicas(p),
      selector: { matchLabels: { [PROPLET_LABEL]: name } },
      template: {
        metadata: { labels },
        spec: {
          containers: [container],
          // a proplet closes its MQTT session in well under a second
          terminationGracePeriodSeconds: 10,
          // it talks to the broker only: no API token, no service env
          automountServiceAccountToken: false,
          enableServiceLinks: false,
        },
      },
    },
  };
}

/** The pods' credentials Secret: the group account's secret under SECRET_KEY, and the account's name. */
export function groupCredentialsSecret(p: Proplet, secret: string): V1Secret {
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    metadata: { name: credentialsSecretName(p), namespace: p.metadata.namespace, labels: { ...MANAGED_BY, [PROPLET_LABEL]: p.metadata.name! }, ownerReferences: [ownerReference(p)] },
    stringData: { [SECRET_KEY]: secret, PROPLET_ACCOUNT: groupAccount(p) },
  };
}

/** What a pod looks like to the status and the clean-up: any V1Pod, as the API gives it. */
export interface PodView {
  metadata?: { name?: string; deletionTimestamp?: unknown };
}

const terminating = (pod: PodView) => Boolean(pod.metadata?.deletionTimestamp);

/** The names of this Proplet's pods (with its label, named like its Deployment's pods), but those terminating. */
function livePodNames(p: Proplet, pods: PodView[]): string[] {
  return pods
    .filter((pod) => !terminating(pod) && pod.metadata?.name !== undefined && isPodId(p, pod.metadata.name))
    .map((pod) => pod.metadata!.name!)
    .sort();
}

/**
 * The proplet records a k8s Proplet has left in the control plane: its pods'
 * ids (registered as type k8s) whose pod no longer exists, and that are not
 * alive. The controller deletes them (DELETE /proplets/{id}). List the
 * registry before the pods, so that a pod created in between is not missed.
 */
export function leftoverProplets(p: Proplet, registered: ControlPlaneProplet[], pods: PodView[]): string[] {
  const names = new Set(pods.map((pod) => pod.metadata?.name));
  return registered.filter((x) => x.proplet_type === 'k8s' && x.state !== 'alive' && isPodId(p, x.id) && !names.has(x.id)).map((x) => x.id);
}

// --- type external: the device's credentials ---------------------------------------------

/**
 * The credentials Secret of a pre-registered device (the secret from POST
 * /proplets, issued once: issuing again replaces it and cuts the device off,
 * so the controller registers only while this Secret does not exist). Its
 * keys are the env names `propeller proplet` reads, so `envFrom: secretRef`
 * runs a node proplet as that device; MQTT_TOPIC_BASE is the device's topic
 * scope (docs/protocol.md).
 */
export function externalCredentialsSecret(p: Proplet, account: { propletId: string; secret: string }, d: PropletDefaults): V1Secret {
  const c = connectionOf(p, d);
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    type: 'Opaque',
    metadata: { name: credentialsSecretName(p), namespace: p.metadata.namespace, labels: { ...MANAGED_BY, [PROPLET_LABEL]: p.metadata.name! }, ownerReferences: [ownerReference(p)] },
    stringData: {
      PROPLET_ID: account.propletId,
      PROPLET_SECRET: account.secret,
      MQTT_BROKER: c.broker,
      PROPELLER_DOMAIN_ID: c.domain,
      PROPELLER_CHANNEL_ID: c.channel,
      MQTT_TOPIC_BASE: base(scope(c.domain, c.channel)),
    },
  };
}

// --- status ------------------------------------------------------------------------------

const PHASE_OF_STATE: Record<ControlPlaneProplet['state'], PropletPhase> = { alive: 'Ready', offline: 'Offline', failed: 'Failed' };

export interface StatusInput {
  /** GET /proplets, as a list or by id. */
  proplets: ControlPlaneProplet[] | ReadonlyMap<string, ControlPlaneProplet>;
  /** For type k8s: the pods with podSelector(proplet). */
  pods?: PodView[];
  /** For type k8s: the Deployment's status (absent before it exists). */
  deployment?: { replicas?: number; readyReplicas?: number };
  /** Whether the credentials Secret exists (or is not needed: an external broker issues no secrets). */
  hasSecret?: boolean;
  now?: Date;
}

const latest = (times: string[]) => times.reduce<string | undefined>((a, b) => (a === undefined || b > a ? b : a), undefined);

/**
 * The Proplet's status from the registry (and its Deployment and pods, for
 * type k8s): phase, the proplet ids, replicas/readyReplicas/selector (the
 * scale subresource reads status.replicas and status.selector), the latest
 * heartbeat, running tasks, the Secret, and the Ready condition.
 * observedGeneration is left to the status writer.
 */
export function propletStatus(p: Proplet, o: StatusInput): PropletStatus {
  const byId: ReadonlyMap<string, ControlPlaneProplet> = Array.isArray(o.proplets) ? new Map(o.proplets.map((x) => [x.id, x])) : (o.proplets as ReadonlyMap<string, ControlPlaneProplet>);
  const finish = (s: Omit<PropletStatus, 'conditions'>, ready: ConditionInput): PropletStatus => ({
    ...s,
    conditions: setCondition(p.status?.conditions, ready, p.metadata.generation, o.now),
  });
  const problem = propletProblem(p);
  if (problem) return finish({ phase: 'Failed', propletIds: [], message: problem }, { type: 'Ready', status: 'False', reason: 'InvalidSpec', message: problem });
  const secret = o.hasSecret !== false && !isDiscovered(p) ? { credentialsSecret: credentialsSecretName(p) } : {};

  if (p.spec.type === 'external') {
    const id = propletIdOf(p);
    const cp = byId.get(id);
    if (!cp) {
      const message = `device ${id} has not registered yet`;
      return finish({ phase: 'Pending', propletIds: [id], runningTasks: 0, ...secret, message }, { type: 'Ready', status: 'False', reason: 'NotRegistered', message });
    }
    const phase = PHASE_OF_STATE[cp.state];
    const message = `device ${id} (${cp.device_type}) is ${cp.state} since ${cp.state_since}`;
    return finish(
      { phase, propletIds: [id], lastHeartbeat: kubeTime(cp.last_seen), runningTasks: cp.running_tasks, ...secret, message },
      { type: 'Ready', status: phase === 'Ready' ? 'True' : 'False', reason: phase === 'Ready' ? 'Alive' : phase, message },
    );
  }

  const ids = livePodNames(p, o.pods ?? []);
  const registered = ids.map((id) => byId.get(id)).filter((x): x is ControlPlaneProplet => x !== undefined);
  const alive = registered.filter((x) => x.state === 'alive');
  const desired = desiredReplicas(p);
  const replicas = o.deployment?.replicas ?? 0;
  // pods Kubernetes calls ready whose proplet is alive too
  const readyReplicas = Math.min(o.deployment?.readyReplicas ?? 0, alive.length);
  let phase: PropletPhase;
  if (ids.length === desired && alive.length === desired) phase = 'Ready';
  else if (alive.length === 0 && registered.length > 0) phase = registered.every((x) => x.state === 'failed') ? 'Failed' : 'Offline';
  else phase = 'Pending';
  const message = `${alive.length} of ${desired} proplets alive (${ids.length} pods, ${registered.length} registered)`;
  const heartbeat = latest(registered.map((x) => x.last_seen));
  return finish(
    {
      phase,
      propletIds: ids,
      replicas,
      readyReplicas,
      selector: podSelector(p),
      ...(heartbeat ? { lastHeartbeat: kubeTime(heartbeat) } : {}),
      runningTasks: registered.reduce((n, x) => n + x.running_tasks, 0),
      ...secret,
      message,
    },
    { type: 'Ready', status: phase === 'Ready' ? 'True' : 'False', reason: phase === 'Ready' ? 'AllAlive' : phase === 'Pending' ? 'Scaling' : phase, message },
  );
}

// --- discovery ---------------------------------------------------------------------------

/** The Proplet, among `proplets` (all namespaces), that claims a proplet id. */
export function claimant(proplets: Proplet[], id: string): Proplet | undefined {
  return proplets.find((p) => claims(p, id));
}

/**
 * claimant() for many ids at once: the Proplets indexed by device id and by
 * pod-name prefix, so each lookup costs the length of the id, not the number
 * of Proplets (discovery asks it for every registered device).
 */
export function claimIndex(proplets: Proplet[]): (id: string) => Proplet | undefined {
  const devices = new Map<string, Proplet>();
  const pools = new Map<string, Proplet>();
  for (const p of proplets) {
    if (p.spec.type === 'k8s') pools.set(p.metadata.name!, p);
    else if (!devices.has(propletIdOf(p))) devices.set(propletIdOf(p), p);
  }
  return (id) => {
    const device = devices.get(id);
    if (device) return device;
    // a pod id is NAME-<hash>-<suffix>: try each prefix ending before a '-'
    for (let i = id.indexOf('-'); i > 0; i = id.indexOf('-', i + 1)) {
      const pool = pools.get(id.slice(0, i));
      if (pool && isPodId(pool, id)) return pool;
    }
    return undefined;
  };
}

/**
 * Whether a registered proplet should appear as a discovered Proplet: a
 * device (proplet_type external: pods register as k8s, and the id of a gone
 * pod must not come back as a device) that no Proplet claims.
 */
export function shouldDiscover(cp: ControlPlaneProplet, proplets: Proplet[]): boolean {
  return cp.proplet_type === 'external' && claimant(proplets, cp.id) === undefined;
}

/**
 * The Proplet of a device that registered on its own: type external, named
 * dnsLabel(id) (the id itself when it is a DNS label), the id in the
 * PROPLET_ID_ANNOTATION annotation, labelled DISCOVERED_LABEL=true and with
 * the labels it announced that Kubernetes allows, with the device type and
 * capabilities it announced. No credentials Secret: the
 * device has its account already, and the controller must not issue another.
 */
export function discoveredProplet(cp: ControlPlaneProplet, namespace: string): Proplet {
  // the device's own labels, where Kubernetes allows them and they are not the adapter's
  const own = Object.entries(cp.labels).filter(([k, v]) => isLabelKey(k) && labelValue(v) !== undefined && !k.startsWith('propeller.absmach.fr/') && !(k in MANAGED_BY));
  const metadata: ObjectMeta = {
    name: dnsLabel(cp.id),
    namespace,
    labels: { ...Object.fromEntries(own), ...MANAGED_BY, [DISCOVERED_LABEL]: 'true' },
    annotations: { [PROPLET_ID_ANNOTATION]: cp.id },
  };
  return {
    apiVersion: HYBRID_API_VERSION,
    kind: 'Proplet',
    metadata,
    spec: { type: 'external', external: { deviceType: cp.device_type, capabilities: [...cp.capabilities] } },
  };
}
