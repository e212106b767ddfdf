// The pure pieces of the Proplet and FederatedJob controllers
// (k8s-adapter/proplet-objects.ts, k8s-adapter/fl-objects.ts), without a
// Kubernetes API server: the Deployment and Secret contents, pod ids under
// the group account, the records left behind, the status mapping, id
// conflicts, discovery names; and the FL mappings, fed with the records of a
// real coordinator that ran a real (small) job with scripted participants,
// one round of which failed and was retried. The controllers on a real API
// server: test/k8s-proplets.test.ts and test/k8s-fl.test.ts.

import test from 'ava';
import type { V1EnvVar } from '@kubernetes/client-node';
import { decode, encode } from '../protocol/index.ts';
import { encodeModel, MODEL_FORMAT, type Model } from '../protocol/model-format.ts';
import { flUpdateTopic, propletSubscriptions, topic } from '../topics/index.ts';
import {
  CONTROL_PLANE_NAME_ANNOTATION,
  controlPlaneJobName,
  controlPlaneRoundName,
  federatedJobManifest,
  federatedJobStatus,
  isJobRound,
  JOB_LABEL,
  modelCheckpointResource,
  resourceName,
  ROUND_LABEL,
  roundCheckpointResource,
  trainingRoundManifest,
  trainingRoundResource,
  trainingRoundStatus,
  type ControlPlaneCheckpoint,
  type ControlPlaneJob,
  type ControlPlaneRound,
} from '../k8s-adapter/fl-objects.ts';
import {
  claimant,
  discoveredProplet,
  dnsLabel,
  externalCredentialsSecret,
  groupCredentialsSecret,
  idConflict,
  isPodId,
  leftoverProplets,
  propletDeployment,
  propletProblem,
  propletStatus,
  shouldDiscover,
  supersededBy,
  TEMPLATE_HASH_ANNOTATION,
  templateHash,
  type ControlPlaneProplet,
  type PodView,
  type PropletDefaults,
} from '../k8s-adapter/proplet-objects.ts';
import { API_VERSION, HYBRID_API_VERSION, type FederatedJob, type FederatedJobSpec, type Proplet, type TrainingRound } from '../k8s-adapter/types.ts';
import { expandVars } from './helpers/fake-kubelet.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

const D: PropletDefaults = { broker: 'mqtt://propeller.propeller-system.svc:1883', domain: 'propeller', channel: 'control' };

const k8sProplet = (replicas: number, extra: Partial<Proplet['spec']> = {}, name = 'pool'): Proplet => ({
  apiVersion: HYBRID_API_VERSION,
  kind: 'Proplet',
  metadata: { name, namespace: 'edge', uid: `uid-${name}`, generation: 4 },
  spec: { type: 'k8s', k8s: { image: 'propeller/propeller-edge:1', replicas }, ...extra },
});

const external = (name: string, extra: Partial<Proplet['metadata']> = {}): Proplet => ({
  apiVersion: HYBRID_API_VERSION,
  kind: 'Proplet',
  metadata: { name, namespace: 'edge', uid: `uid-${name}`, generation: 1, ...extra },
  spec: { type: 'external', external: { deviceType: 'esp32', capabilities: ['wasm'] } },
});

/** Pod names as a Deployment `pool` makes them: pool-<pod-template-hash>-<5 characters>. */
const POD = ['pool-7c9d5b8f4-x2kqz', 'pool-7c9d5b8f4-9wvbn', 'pool-7c9d5b8f4-tmh5l'];
const pod = (name: string, deleting = false): PodView => ({ metadata: { name, ...(deleting ? { deletionTimestamp: '2025-01-01T00:00:00Z' } : {}) } });

const envOf = (env: V1EnvVar[] | undefined) => Object.fromEntries((env ?? []).map((e) => [e.name, e.value ?? e.valueFrom]));

test('a k8s Proplet’s Deployment: replicas, the pods’ id from the downward API, the group’s secret, the connection, owned by the Proplet', (t) => {
  const p = k8sProplet(3, {
    k8s: { image: 'propeller/propeller-edge:1', replicas: 3, resources: { requests: { cpu: '100m' }, limits: { memory: '256Mi', cpu: 1 } } },
    connectionConfig: { broker: 'mqtt://mqtt-broker:1883', domainId: 'farm' },
  });
  const d = propletDeployment(p, { ...D, env: { PROPLET_HEARTBEAT: '5s' } });
  const labels = { 'propeller.absmach.fr/proplet': 'pool', 'app.kubernetes.io/managed-by': 'propeller-k8s-adapter' };
  t.like(d.metadata, { name: 'pool', namespace: 'edge', labels });
  t.deepEqual(d.metadata?.ownerReferences, [{ apiVersion: HYBRID_API_VERSION, kind: 'Proplet', name: 'pool', uid: 'uid-pool', controller: true, blockOwnerDeletion: true }]);
  t.regex(d.metadata?.annotations?.[TEMPLATE_HASH_ANNOTATION] ?? '', /^[0-9a-f]{10}$/);
  t.is(d.spec?.replicas, 3);
  t.deepEqual(d.spec?.selector, { matchLabels: { 'propeller.absmach.fr/proplet': 'pool' } });
  t.deepEqual(d.spec?.template.metadata?.labels, labels);
  const c = d.spec!.template.spec!.containers[0]!;
  t.is(c.image, 'propeller/propeller-edge:1');
  t.deepEqual([...c.command!, ...c.args!], ['propeller', 'proplet', '--label', 'propeller.absmach.fr/proplet=pool', '--label', 'propeller.absmach.fr/namespace=edge']);
  t.deepEqual(envOf(c.env), {
    PROPLET_ID: { fieldRef: { fieldPath: 'metadata.name' } },
    PROPLET_SECRET: { secretKeyRef: { name: 'pool-mqtt', key: 'PROPLET_SECRET', optional: true } },
    PROPLET_TYPE: 'k8s',
    // spec.connectionConfig wins, the adapter's defaults fill in
    MQTT_BROKER: 'mqtt://mqtt-broker:1883',
    PROPELLER_DOMAIN_ID: 'farm',
    PROPELLER_CHANNEL_ID: 'control',
    PROPLET_MEMORY: '256Mi',
    PROPLET_HEARTBEAT: '5s',
  });
  t.deepEqual(c.resources, { requests: { cpu: '100m' }, limits: { memory: '256Mi', cpu: '1' } });
  t.like(d.spec?.template.spec, { automountServiceAccountToken: false, enableServiceLinks: false, terminationGracePeriodSeconds: 10 });
  // spec.resources.memory is what the proplet offers; a quantity the proplet cannot read is left out
  const memory = (q: string) => envOf(propletDeployment(k8sProplet(1, { resources: { memory: q } }), D).spec!.template.spec!.containers[0]!.env).PROPLET_MEMORY;
  t.is(memory('1Gi'), '1Gi');
  t.is(memory('5e8'), undefined);
  // another image's command: no propeller flags appended
  const other = propletDeployment(p, { ...D, command: ['/bin/proplet'] }).spec!.template.spec!.containers[0]!;
  t.deepEqual([other.command, other.args], [['/bin/proplet'], undefined]);
  // a replica count change alone is a scale, not a new template
  t.is(templateHash(k8sProplet(1), D), templateHash(k8sProplet(5), D));
  t.not(templateHash(k8sProplet(1, { k8s: { image: 'propeller/propeller-edge:2' } }), D), templateHash(k8sProplet(1), D));

  const s = groupCredentialsSecret(p, 'S3cret');
  t.like(s.metadata, { name: 'pool-mqtt', namespace: 'edge' });
  t.is(s.metadata?.ownerReferences?.[0]?.uid, 'uid-pool');
  t.deepEqual(s.stringData, { PROPLET_SECRET: 'S3cret', PROPLET_ACCOUNT: 'pool-*' });
});

test('pod ids of the group: NAME-<hash>-<suffix> in Kubernetes’ vowel-free alphabet; not another pool’s, not a device under the prefix', (t) => {
  const pool = k8sProplet(3);
  for (const id of POD) t.true(isPodId(pool, id), id);
  const not = ['pool', 'pool-', 'pool-7c9d5b8f4', 'pool-7c9d5b8f4-x2kq', 'pool-7c9d5b8f4-x2kqzz', 'pool-a-7c9d5b8f4-x2kqz', 'pool-sensor-01', 'pool-7c9d5b8f4b2-x2kqz', 'poolx-7c9d5b8f4-x2kqz', 'pool-7C9D-x2kqz'];
  for (const id of not) t.false(isPodId(pool, id), id);
  // the pods of pool-b are not pool's, and the other way round
  t.false(isPodId(pool, 'pool-b-7c9d5b8f4-x2kqz'));
  t.true(isPodId(k8sProplet(1, {}, 'pool-b'), 'pool-b-7c9d5b8f4-x2kqz'));
  t.false(isPodId(k8sProplet(1, {}, 'pool-b'), 'pool-b-x2kqz'), 'a pod of pool with hash b is not pool-b’s (but the broker would send it to pool-b-*: idConflict)');
});

test('records left behind: the pool’s k8s proplets whose pod is gone and that are not alive', (t) => {
  const pool = k8sProplet(1);
  const rec = (id: string, state: ControlPlaneProplet['state'], type: ControlPlaneProplet['proplet_type'] = 'k8s') => cpProplet(id, state, { proplet_type: type });
  const registered = [
    rec(POD[0]!, 'alive'),
    rec(POD[1]!, 'offline'),
    rec(POD[2]!, 'offline'),
    rec('pool-5f6d7b9c8-qqqqq', 'alive'), // its pod is gone but it still heartbeats: it stays until it stops
    rec('pool-5f6d7b9c8-wwwww', 'failed'),
    rec('pool-5f6d7b9c8-zzzzz', 'offline', 'external'), // a device named like a pod: not the pool's to remove
    rec('pool-b-5f6d7b9c8-zzzzz', 'offline'), // another pool's
  ];
  t.deepEqual(leftoverProplets(pool, registered, [pod(POD[0]!), pod(POD[2]!, true)]), [POD[1]!, 'pool-5f6d7b9c8-wwwww']);
});

test('an external device’s credentials Secret: id, secret, broker, scope, owned by the Proplet', (t) => {
  const p = external('esp32-sensor-node');
  const s = externalCredentialsSecret(p, { propletId: 'esp32-sensor-node', secret: 'S3cret' }, D);
  t.like(s.metadata, { name: 'esp32-sensor-node-mqtt', namespace: 'edge' });
  t.is(s.metadata?.ownerReferences?.[0]?.uid, 'uid-esp32-sensor-node');
  t.deepEqual(s.stringData, {
    PROPLET_ID: 'esp32-sensor-node',
    PROPLET_SECRET: 'S3cret',
    MQTT_BROKER: D.broker,
    PROPELLER_DOMAIN_ID: 'propeller',
    PROPELLER_CHANNEL_ID: 'control',
    MQTT_TOPIC_BASE: 'm/propeller/c/control/messages',
  });
});

const cpProplet = (id: string, state: ControlPlaneProplet['state'], o: Partial<ControlPlaneProplet> = {}): ControlPlaneProplet => ({
  id,
  name: id,
  device_type: 'node',
  proplet_type: 'k8s',
  capabilities: ['wasm'],
  labels: {},
  capacity: { max_tasks: 4 },
  encoding: 'json',
  addressing: 'direct',
  state,
  state_since: '2025-03-01T10:00:00.000Z',
  registered_at: '2025-03-01T09:00:00.000Z',
  last_seen: '2025-03-01T10:00:00.250Z',
  running_tasks: 0,
  alive_history: [],
  assigned_tasks: 0,
  ...o,
});

test('status from the registry: the phase and Ready condition of devices and pools, heartbeats, running tasks, replicas', (t) => {
  const now = new Date('2025-03-01T10:00:05Z');
  const dev = external('esp32-01');
  const one = (state?: ControlPlaneProplet['state']) => propletStatus(dev, { proplets: state ? [cpProplet('esp32-01', state, { proplet_type: 'external', device_type: 'esp32', running_tasks: 2 })] : [], now });
  t.like(one(), { phase: 'Pending', propletIds: ['esp32-01'], credentialsSecret: 'esp32-01-mqtt' });
  t.like(one('alive'), { phase: 'Ready', lastHeartbeat: '2025-03-01T10:00:00Z', runningTasks: 2 });
  t.like(one('offline'), { phase: 'Offline' });
  t.like(one('failed'), { phase: 'Failed' });
  t.deepEqual(one('alive').conditions, [{ type: 'Ready', status: 'True', reason: 'Alive', message: one('alive').message!, lastTransitionTime: '2025-03-01T10:00:05Z', observedGeneration: 1 }]);
  // the transition time stays while the status does
  const later = propletStatus({ ...dev, status: one('alive') }, { proplets: [cpProplet('esp32-01', 'alive', { proplet_type: 'external' })], now: new Date('2025-03-01T11:00:00Z') });
  t.is(later.conditions?.[0]?.lastTransitionTime, '2025-03-01T10:00:05Z');
  // without a Secret (an external broker issues none): none named
  t.is(propletStatus(dev, { proplets: [], hasSecret: false, now }).credentialsSecret, undefined);

  const p = k8sProplet(3);
  const pods = [...POD.map((n) => pod(n)), pod('pool-5f6d7b9c8-zzzzz', true), pod('pool-sensor')];
  const pool = (states: ControlPlaneProplet['state'][], deployment = { replicas: 3, readyReplicas: 3 }) =>
    propletStatus(p, { proplets: new Map(states.map((s, i) => [POD[i]!, cpProplet(POD[i]!, s, { running_tasks: i, last_seen: `2025-03-01T10:00:0${i}.900Z` })])), pods, deployment, now });
  t.like(pool(['alive', 'alive', 'alive']), {
    phase: 'Ready',
    propletIds: [...POD].sort(),
    replicas: 3,
    readyReplicas: 3,
    selector: 'propeller.absmach.fr/proplet=pool',
    lastHeartbeat: '2025-03-01T10:00:02Z',
    runningTasks: 3,
    credentialsSecret: 'pool-mqtt',
    message: '3 of 3 proplets alive (3 pods, 3 registered)',
  });
  t.like(pool(['alive', 'alive', 'alive'], { replicas: 3, readyReplicas: 2 }), { phase: 'Ready', readyReplicas: 2 }, 'ready: pods Kubernetes calls ready whose proplet is alive');
  t.like(pool(['alive', 'offline']), { phase: 'Pending', readyReplicas: 1 });
  t.is(pool(['alive']).conditions?.[0]?.reason, 'Scaling');
  t.like(pool(['offline', 'failed', 'failed']), { phase: 'Offline', readyReplicas: 0 });
  t.like(pool(['failed', 'failed', 'failed']), { phase: 'Failed' });
  t.like(pool([]), { phase: 'Pending', replicas: 3, readyReplicas: 0, runningTasks: 0 });
  // scaled to 1, the others' pods still there: not Ready until they are gone
  t.like(propletStatus(k8sProplet(1), { proplets: POD.map((id) => cpProplet(id, 'alive')), pods, deployment: { replicas: 3, readyReplicas: 3 }, now }), { phase: 'Pending', replicas: 3 });
  t.like(propletStatus(k8sProplet(0), { proplets: [], pods: [], now }), { phase: 'Ready', replicas: 0 });

  // what the schema cannot say
  const bad = k8sProplet(1, {}, 'p'.repeat(47));
  t.like(propletStatus(bad, { proplets: [], now }), { phase: 'Failed' });
  t.is(propletStatus(bad, { proplets: [], now }).conditions?.[0]?.reason, 'InvalidSpec');
  t.regex(propletProblem(bad)!, /at most 46 characters/);
  t.is(propletProblem(k8sProplet(1, {}, 'p'.repeat(46))), undefined);
  t.regex(propletProblem({ ...k8sProplet(1), spec: { type: 'k8s' } })!, /spec.k8s/);
  t.regex(propletProblem(external('x', { annotations: { 'propeller.absmach.fr/proplet-id': 'a/b' } }))!, /annotation/);
  t.regex(propletProblem(external('x', { annotations: { 'propeller.absmach.fr/proplet-id': 'pool-*' } }))!, /'\*'/);
  t.is(propletProblem(external('esp32-01')), undefined);
});

test('proplet ids are one name space: the younger of two Proplets whose ids or group accounts overlap yields', (t) => {
  const at = (p: Proplet, ns: string, created: string): Proplet => ({ ...p, metadata: { ...p.metadata, namespace: ns, uid: `${p.metadata.uid}-${ns}`, creationTimestamp: created } });
  const poolA = at(k8sProplet(3), 'a', '2025-01-01T00:00:00Z');
  const poolB = at(k8sProplet(2), 'b', '2025-01-02T00:00:00Z');
  const poolX = at(k8sProplet(2, {}, 'pool-x'), 'a', '2025-01-02T00:00:00Z');
  const other = at(k8sProplet(2, {}, 'pools'), 'a', '2025-01-02T00:00:00Z');
  const podNamed = at(external(POD[0]!), 'a', '2025-01-03T00:00:00Z');
  const underPrefix = at(external('pool-sensor'), 'a', '2025-01-03T00:00:00Z');
  const esp = at(external('esp32-01'), 'a', '2025-01-01T00:00:00Z');
  const esp2 = at(external('other', { annotations: { 'propeller.absmach.fr/proplet-id': 'esp32-01' } }), 'b', '2025-01-04T00:00:00Z');
  const all = [poolA, poolB, poolX, other, podNamed, underPrefix, esp, esp2];
  t.is(idConflict(poolA, all), undefined, 'the oldest keeps its ids');
  t.is(idConflict(poolB, all), 'group account pool-* overlaps pool-*: it belongs to Proplet a/pool');
  t.is(idConflict(poolX, all), 'group account pool-x-* overlaps pool-*: it belongs to Proplet a/pool', 'the broker would take pool-x-… pods of pool for pool-x’s');
  t.is(idConflict(other, all), undefined, 'pools-* and pool-* do not overlap');
  t.is(idConflict(podNamed, all), `proplet id ${POD[0]} is a pod name of pool-*: it belongs to Proplet a/pool`);
  t.is(idConflict(underPrefix, all), undefined, 'a device’s own account wins over the group, and it is no pod');
  t.is(idConflict(esp2, all), 'proplet id esp32-01: it belongs to Proplet a/esp32-01');
  // a discovered Proplet yields to a user's, however old, and is superseded by it
  const found = at({ ...external('esp32-01'), metadata: { ...external('esp32-01').metadata, labels: { 'propeller.absmach.fr/discovered': 'true' } } }, 'c', '2024-01-01T00:00:00Z');
  t.is(idConflict(esp, [esp, found]), undefined);
  t.regex(idConflict(found, [esp, found]) ?? '', /belongs to Proplet a\/esp32-01/);
  t.is(supersededBy(found, [esp, found])?.metadata.namespace, 'a');
  t.is(supersededBy(found, [found]), undefined);
  t.is(supersededBy(esp, [esp, esp2]), undefined, 'only discovered ones are superseded');
  // a pool younger than a device named like its pods yields
  t.regex(idConflict(at(k8sProplet(1), 'c', '2025-01-05T00:00:00Z'), [at(external(POD[1]!), 'a', '2024-12-31T00:00:00Z')]) ?? '', /is a pod name of pool-\*/);
});

test('discovery names: DNS labels, the id itself when it is one, one-to-one otherwise', (t) => {
  const kept = ['esp32-01', 'a', '0', 'node-7f3a'];
  for (const id of kept) t.is(dnsLabel(id), id);
  const ids = ['ESP32-01', 'esp32_01', 'esp32.01', 'esp32--01', 'esp32-01-', '-esp32', 'Ünïcode-Gerät', '温度计', 'x'.repeat(64), 'x'.repeat(128), 'a b', 'A-B', 'a-b', 'a--b', 'a---b', 'a.b', 'a_b'];
  const names = ids.map((id) => dnsLabel(id));
  for (const n of names) t.regex(n, /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/), t.true(n.length <= 63, n);
  t.is(new Set(names).size, ids.length, 'no two ids share a name');
  t.is(dnsLabel('ESP32-01'), dnsLabel('ESP32-01'), 'stable');
  t.regex(dnsLabel('ESP32-01'), /^esp32-01--[0-9a-f]{10}$/);
  t.regex(dnsLabel('温度计'), /^x--[0-9a-f]{10}$/);
  // a kept name never contains --, a hashed one always does: a device cannot pick an id that takes another's name
  t.not(dnsLabel(dnsLabel('ESP32-01')), dnsLabel('ESP32-01'));
});

test('discovery: a device no Proplet claims becomes a Proplet; pods, claimed devices and annotated ids do not', (t) => {
  const proplets = [k8sProplet(3), external('esp32-01'), external('renamed', { annotations: { 'propeller.absmach.fr/proplet-id': 'Pi 4 (2)' } })];
  const dev = (id: string) =>
    cpProplet(id, 'alive', {
      proplet_type: 'external',
      device_type: 'raspberry-pi',
      capabilities: ['wasm', 'camera'],
      labels: { zone: 'north', 'example.com/room': '12', 'bad key': 'x', long: 'v'.repeat(64), 'propeller.absmach.fr/discovered': 'false' },
    });
  t.is(claimant(proplets, POD[2]!)?.metadata.name, 'pool', 'any pod of a pool');
  t.is(claimant(proplets, 'pool-x'), undefined);
  t.false(shouldDiscover(dev('esp32-01'), proplets));
  t.false(shouldDiscover(dev('Pi 4 (2)'), proplets));
  t.false(shouldDiscover(cpProplet('other-7c9d5b8f4-x2kqz', 'alive'), proplets), 'k8s proplets are pods, not devices');
  t.true(shouldDiscover(dev('Pi 4 (3)'), proplets));
  const d = discoveredProplet(dev('Pi 4 (3)'), 'edge');
  t.deepEqual(d, {
    apiVersion: HYBRID_API_VERSION,
    kind: 'Proplet',
    metadata: {
      name: dnsLabel('Pi 4 (3)'),
      namespace: 'edge',
      labels: { zone: 'north', 'example.com/room': '12', 'app.kubernetes.io/managed-by': 'propeller-k8s-adapter', 'propeller.absmach.fr/discovered': 'true' },
      annotations: { 'propeller.absmach.fr/proplet-id': 'Pi 4 (3)' },
    },
    spec: { type: 'external', external: { deviceType: 'raspberry-pi', capabilities: ['wasm', 'camera'] } },
  });
  t.true(shouldDiscover(dev('Pi 4 (3)'), proplets));
  t.false(shouldDiscover(dev('Pi 4 (3)'), [...proplets, d]), 'once created it claims its id');
  t.like(propletStatus(d, { proplets: [dev('Pi 4 (3)')] }), { phase: 'Ready', propletIds: ['Pi 4 (3)'], credentialsSecret: undefined });
});

test('the fake kubelet expands $(VAR) in env values and args as a kubelet does', (t) => {
  const vars = { A: 'x', B_2: 'y' };
  const cases: [string, string][] = [
    ['$(A)', 'x'],
    ['pre-$(A)-$(B_2)-post', 'pre-x-y-post'],
    ['$(UNDEFINED)', '$(UNDEFINED)'],
    ['$$(A)', '$(A)'],
    ['$$$(A)', '$x'],
    ['$A', '$A'],
    ['$(A', '$(A'],
    ['', ''],
  ];
  for (const [input, want] of cases) t.is(expandVars(input, vars), want, input);
});

// --- FL ------------------------------------------------------------------------------------------

const JOB_SPEC: FederatedJobSpec = {
  experimentId: 'mnist-k8s',
  modelRef: '',
  taskWasmImage: '',
  participants: [{ propletId: 'fl-a' }, { propletId: 'fl-b' }],
  hyperparams: { lr: 0.1 },
  kOfN: 2,
  timeoutSeconds: 20,
  rounds: { total: 2, strategy: 'sequential' },
  aggregator: { algorithm: 'fedavg' },
  roundRetries: 1,
};

const jobResource = (namespace: string, spec: FederatedJobSpec = JOB_SPEC): FederatedJob => ({
  apiVersion: API_VERSION,
  kind: 'FederatedJob',
  metadata: { name: 'mnist', namespace, uid: `uid-mnist-${namespace}`, generation: 1 },
  spec,
});

test('FL names: the control-plane job name is one per resource (namespace, name, uid); rounds and checkpoints are named after the resource', (t) => {
  const a = jobResource('team-a');
  t.regex(controlPlaneJobName(a), /^team-a-mnist--[0-9a-f]{10}$/);
  t.not(controlPlaneJobName(a), controlPlaneJobName(jobResource('team-b')));
  t.is(controlPlaneJobName(a), controlPlaneJobName(jobResource('team-a')), 'the same for the same resource: an adapter that restarts finds its job');
  t.not(controlPlaneJobName(a), controlPlaneJobName({ ...a, metadata: { ...a.metadata, uid: 'uid-2' } }), 'another for the same name created again');
  t.regex(controlPlaneJobName({ ...a, metadata: { ...a.metadata, namespace: 'Ü', name: `x${'.y'.repeat(100)}` } }), /^x-y(-y)*--[0-9a-f]{10}$/);
  t.true(controlPlaneJobName({ ...a, metadata: { ...a.metadata, name: 'z'.repeat(253) } }).length <= 52);
  const cp = controlPlaneJobName(a);
  t.is(resourceName(a, `round-3-${cp}`), 'round-3-mnist');
  t.is(resourceName(a, `round-3-${cp}-retry-2`), 'round-3-mnist-retry-2');
  t.is(resourceName(a, `model-${cp}-round-3`), 'model-mnist-round-3');
  t.is(resourceName(a, 'standalone-round'), 'standalone-round');
  const long = { ...a, metadata: { ...a.metadata, name: `j${'.x'.repeat(125)}` } };
  t.true(resourceName(long, `round-100-${controlPlaneJobName(long)}-retry-10`).length <= 253);
  const m = federatedJobManifest(a);
  t.deepEqual(m, { apiVersion: 'propeller.absmach.io/v1alpha1', kind: 'FederatedJob', metadata: { name: cp }, spec: JOB_SPEC });
});

// A real job on a real coordinator: two scripted participants answer each round task
// with an update; fl-b fails the first attempt of round 1, which the job retries.

/** The model every update sends: w = [v, v], b = v. */
const model = (v: number): Model => ({ format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [2], data: new Float32Array([v, v]) }, { name: 'b', shape: [], data: new Float32Array([v]) }] });

/** A proplet that answers every round task with `w` (or an error, for the first task if `failFirst`). */
async function participant(s: Stack, id: string, w: number, failFirst = false): Promise<void> {
  const c = await s.client(id);
  let tasks = 0;
  c.on('message', (_t, payload) => {
    const start = decode('manager.start', payload).msg;
    const env = start.env!;
    const head = { v: 1, proplet_id: id, round_id: env.ROUND_ID!, task_id: start.id };
    const update = failFirst && tasks++ === 0 ? { ...head, error: 'sensor offline' } : { ...head, num_samples: 10, metrics: { loss: 0.5, accuracy: 0.75 }, model: encodeModel(model(w)) };
    void c.publishAsync(flUpdateTopic(scope, env.ROUND_ID!, id), encode('fl.update', update, 'cbor'), { qos: 1 }).then(() =>
      c.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: id, task_id: start.id, attempt: start.attempt, status: 'completed' }, 'cbor'), { qos: 1 }),
    );
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', encoding: 'cbor', capacity: { max_tasks: 4 } }, 'cbor'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', `${id} registered`);
}

test('FL records of a real coordinator become FederatedJob status, TrainingRound and ModelCheckpoint resources owned by the job', async (t) => {
  const s = await startStack();
  t.teardown(() => s.close());
  await participant(s, 'fl-a', 1);
  await participant(s, 'fl-b', 3, true);
  const { ref } = await s.api.pushModel(encodeModel(model(0)));
  const { digest } = await s.api.pushModule(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
  const job = jobResource('default', { ...JOB_SPEC, modelRef: ref, taskWasmImage: digest });
  const cpName = controlPlaneJobName(job);

  // the manifest is what POST /fl/jobs takes
  await s.api.createFlJob(federatedJobManifest(job));
  await until(async () => (await s.api.getFlJob(cpName)).status.phase === 'Completed', 'job completed', 20_000);
  const cpJob: ControlPlaneJob = await s.api.getFlJob(cpName);
  const rounds: ControlPlaneRound[] = (await s.api.flRounds(cpName)).rounds;
  const checkpoints: ControlPlaneCheckpoint[] = (await s.api.flCheckpoints(cpName)).checkpoints;
  t.deepEqual(rounds.map((r) => [r.metadata.name, r.status.phase]), [[`round-1-${cpName}`, 'Failed'], [`round-1-${cpName}-retry-1`, 'Completed'], [`round-2-${cpName}`, 'Completed']]);

  // the job's status, as it is
  const status = federatedJobStatus(cpJob);
  t.like(status, { phase: 'Completed', completedRounds: 2, retriesUsed: 1, aggregatedModelRef: checkpoints[1]!.spec.modelRef });
  t.deepEqual(status.participants?.map((p) => [p.propletId, p.roundsContributed]), [['fl-a', 2], ['fl-b', 2]]);
  t.true(status.conditions!.some((c) => c.type === 'Ready' && c.status === 'True'));

  // rounds: named after the resource, owned by it, refs to resources
  const owner = { apiVersion: API_VERSION, kind: 'FederatedJob', name: 'mnist', uid: 'uid-mnist-default', controller: true, blockOwnerDeletion: true };
  const trs = rounds.map((r) => trainingRoundResource(job, r));
  t.deepEqual(trs.map((r) => r.metadata.name), ['round-1-mnist', 'round-1-mnist-retry-1', 'round-2-mnist']);
  for (const [i, tr] of trs.entries()) {
    const cp = rounds[i]!;
    t.deepEqual(tr.metadata.ownerReferences, [owner]);
    t.is(tr.metadata.namespace, 'default');
    t.deepEqual(tr.metadata.labels, { [JOB_LABEL]: 'mnist', [ROUND_LABEL]: String(cp.spec.round) });
    t.is(tr.metadata.annotations?.[CONTROL_PLANE_NAME_ANNOTATION], cp.metadata.name);
    t.deepEqual(tr.spec, { ...cp.spec, federatedJobRef: { name: 'mnist' } });
    // the record's fields as they are; its reason becomes the conditions' (the adapter's words)
    const { reason, ...plain } = cp.status;
    t.deepEqual({ ...tr.status, checkpoint: undefined, conditions: undefined }, { ...plain, checkpoint: undefined, conditions: undefined });
    t.is(tr.status?.conditions?.find((c) => c.type === 'RoundActive')?.reason, reason);
  }
  t.deepEqual(
    trs[2]!.status?.conditions?.map((c) => [c.type, c.status]),
    [['RoundActive', 'False'], ['ParticipantsReady', 'Unknown'], ['AggregationComplete', 'True']],
  );
  t.like(trs[0]!.status, { phase: 'Failed', updatesRequired: 2 });
  t.is(trs[0]!.status?.checkpoint, undefined);
  t.regex(trs[0]!.status?.message ?? '', /can still send an update/);
  t.is(trs[1]!.status?.checkpoint, 'model-mnist-round-1');
  t.is(trs[2]!.status?.checkpoint, 'model-mnist-round-2');
  t.like(trs[2]!.status, { phase: 'Completed', updatesReceived: 2, metrics: { totalSamples: 20 } });
  const { reason: _, ...plain } = rounds[1]!.status;
  t.deepEqual({ ...trainingRoundStatus(rounds[1]!), conditions: undefined }, { ...plain, conditions: undefined }, 'without its job: as it is');

  // checkpoints: per round, roundRef to the TrainingRound resource
  const mcs = checkpoints.map((c) => modelCheckpointResource(job, c));
  t.deepEqual(mcs.map((m) => [m.metadata.name, m.spec.roundRef?.name, m.spec.federatedJobRef?.name]), [
    ['model-mnist-round-1', 'round-1-mnist-retry-1', 'mnist'],
    ['model-mnist-round-2', 'round-2-mnist', 'mnist'],
  ]);
  for (const [i, mc] of mcs.entries()) {
    const cp = checkpoints[i]!;
    t.deepEqual(mc.metadata.ownerReferences, [owner]);
    t.is(mc.metadata.labels?.[ROUND_LABEL], String(i + 1));
    t.like(mc.spec, { modelRef: cp.spec.modelRef, algorithm: 'fedavg', metadata: { totalSamples: 20, numParticipants: 2, round: i + 1 } });
    t.deepEqual(mc.status, cp.status);
    t.like(mc.status, { phase: 'Ready' });
    t.is(`sha256:${mc.status?.sha256}`, cp.spec.modelRef);
  }
  t.true(trs.every(isJobRound));

  // a standalone round: its manifest drops the job, its checkpoint is owned by the round
  const mine: TrainingRound = { apiVersion: API_VERSION, kind: 'TrainingRound', metadata: { name: 'probe', namespace: 'default', uid: 'uid-probe' }, spec: { ...rounds[2]!.spec } };
  t.false(isJobRound(mine));
  const manifest = trainingRoundManifest(mine);
  t.deepEqual(manifest.metadata, { name: controlPlaneRoundName(mine) });
  t.regex(manifest.metadata.name, /^default-probe--[0-9a-f]{10}$/);
  t.is(manifest.spec.federatedJobRef, undefined);
  t.is(manifest.spec.round, 2);
  const own = roundCheckpointResource(mine, checkpoints[1]!);
  t.like(own.metadata, { name: 'model-probe', namespace: 'default', labels: { [ROUND_LABEL]: '2' } });
  t.deepEqual(own.metadata.ownerReferences, [{ apiVersion: API_VERSION, kind: 'TrainingRound', name: 'probe', uid: 'uid-probe', controller: true, blockOwnerDeletion: true }]);
  t.like(own.spec, { roundRef: { name: 'probe' }, modelRef: checkpoints[1]!.spec.modelRef });
  t.is(own.spec.federatedJobRef, undefined);
  t.is(trainingRoundStatus(rounds[2]!, mine).checkpoint, 'model-probe');

  // every name the resources refer to is one of them
  const names = new Set([...trs, ...mcs].map((r) => r.metadata.name));
  for (const tr of trs) if (tr.status?.checkpoint) t.true(names.has(tr.status.checkpoint));
  for (const mc of mcs) t.true(names.has(mc.spec.roundRef!.name));
});
