// The Proplet controller on a real kube-apiserver 1.20.2 and
// kube-controller-manager (deployment, replicaset, garbage collector), with a
// real control plane (`propeller serve`, embedded broker) and a FAKE KUBELET
// (test/helpers/fake-kubelet.ts) that runs each pod as a local `propeller
// proplet` process. Resources go in with kubectl; what the adapter made of
// them is read back from the apiserver and the control plane's HTTP API:
// a 3-replica k8s Proplet is a Deployment whose 3 pods register as alive
// k8s proplets under one group account; `kubectl scale` to 1 leaves 1 (the
// others' processes are killed, their records removed); an external
// Proplet's Secret lets a real MQTT client register; a device that
// registers on its own becomes a discovered Proplet beside them; deleting
// the k8s Proplet revokes its group account and forgets its proplets.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AppsV1Api, type CoreV1Event } from '@kubernetes/client-node';
import mqtt, { type MqttClient } from 'mqtt';
import { startAdapter, type Adapter } from '../k8s-adapter/adapter.ts';
import { propletControllerWith } from '../k8s-adapter/controllers/proplet.ts';
import { isPodId, podSelector, type ControlPlaneProplet } from '../k8s-adapter/proplet-objects.ts';
import { isNotFound, kubeClients, loadKubeConfig, type Kube } from '../k8s-adapter/runtime/kube.ts';
import { HYBRID_API_VERSION, type Proplet } from '../k8s-adapter/types.ts';
import { encode } from '../protocol/index.ts';
import { propletSubscriptions, scope, topic } from '../topics/index.ts';
import { FAKE_NODE, FakeKubelet } from './helpers/fake-kubelet.ts';
import { applyObjects, eventually, getJson, installCrds, k8sCluster, kubectlOk } from './helpers/k8s.ts';
import { startServe, type Serve } from './helpers/procs.ts';
import { freePort } from './helpers/stack.ts';

const NS = 'default';
const SCOPE = scope('propeller', 'control');
const k8s = k8sCluster(test);
const clients: MqttClient[] = [];
const logs: { level: string; msg: string }[] = [];
let dir: string | undefined;
let serve: Serve | undefined;
let kubelet: FakeKubelet | undefined;
let adapter: Adapter | undefined;
let kube: Kube;
let apps: AppsV1Api;

if (k8s.available) {
  test.before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'propeller-k8s-proplets-'));
    const args = ['--mqtt-port', String(await freePort()), '--http-port', String(await freePort()), '--data-dir', dir, '--fetch-allow', '127.0.0.0/8'];
    // heartbeats every 500 ms (the pods' env below), offline 2 s after the last
    const env = { HEALTH_CHECK_INTERVAL: '200ms', OFFLINE_THRESHOLD: '2s', FAILURE_THRESHOLD: '5m' };
    const [s, c] = await Promise.all([startServe(args, env), k8s.started()]);
    serve = s;
    await installCrds(c);
    kube = kubeClients(loadKubeConfig(c.env.KUBECONFIG));
    apps = kube.config.makeApiClient(AppsV1Api);
    kubelet = await FakeKubelet.start({ kubeconfig: c.env.KUBECONFIG!, namespace: NS, labelSelector: 'propeller.absmach.fr/proplet', maxGraceMs: 3000 });
    adapter = await startAdapter({
      kubeconfig: c.env.KUBECONFIG!,
      controlPlane: s.api,
      log: (level, msg, fields) => logs.push({ level, msg, ...fields }),
      pollMs: 250,
      groupPollMs: 1000,
      job: { broker: s.brokerUrl },
      controllers: [propletControllerWith({ discoveryNamespace: NS, discoveryMs: 500, pods: { env: { PROPLET_HEARTBEAT: '500ms' } } })],
    });
  });
  test.after.always(async () => {
    if (process.env.DEBUG_ADAPTER) console.error(JSON.stringify(logs.slice(-60), null, 1));
    await Promise.all(clients.map((c) => c.endAsync(true)));
    await adapter?.close();
    await kubelet?.stop();
    await serve?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });
}

// --- helpers ---------------------------------------------------------------------------------

const kubectl = (args: string[], input?: string) => kubectlOk(k8s.cluster(), args, input);
const getProplet = (name: string) => getJson<Proplet>(k8s.cluster(), ['proplet', name, '-n', NS]);
const waitProplet = (name: string, what: string, ok: (p: Proplet) => boolean, ms = 30_000) =>
  eventually(`Proplet ${name}: ${what}`, () => getProplet(name), (p) => p !== undefined && ok(p), ms, 200) as Promise<Proplet>;
const registry = async () => (await serve!.api.listProplets()).proplets;
const ofPool = (p: Proplet, all: ControlPlaneProplet[]) => all.filter((x) => isPodId(p, x.id));
const podNames = async (p: Proplet) => (await kube.core.listNamespacedPod({ namespace: NS, labelSelector: podSelector(p) })).items.map((x) => x.metadata!.name!).sort();

async function reasons(name: string): Promise<string[]> {
  const list = await getJson<{ items: CoreV1Event[] }>(k8s.cluster(), ['events', '-n', NS, '--field-selector', `involvedObject.name=${name}`]);
  return [...new Set((list?.items ?? []).map((e) => e.reason!))].sort();
}

/** An MQTT device: connects with the given account, registers, and heartbeats every 500 ms until the test ends. */
async function device(url: string, id: string, secret: string, o: { deviceType: string; capabilities: string[] }): Promise<MqttClient> {
  const c = await mqtt.connectAsync(url, { protocolVersion: 4, username: id, password: secret, reconnectPeriod: 0 });
  clients.push(c);
  await c.subscribeAsync(propletSubscriptions(SCOPE, id), { qos: 1 });
  const create = { v: 1, proplet_id: id, device_type: o.deviceType, capabilities: o.capabilities, proplet_type: 'external' as const, addressing: 'direct' as const, capacity: { max_tasks: 1 } };
  await c.publishAsync(topic(SCOPE, 'proplet.create'), encode('proplet.create', create, 'json'), { qos: 1 });
  const timer = setInterval(() => void c.publishAsync(topic(SCOPE, 'proplet.alive'), encode('proplet.alive', { v: 1, proplet_id: id, status: 'alive', running_tasks: 0 }, 'json')).catch(() => {}), 500);
  c.once('close', () => clearInterval(timer));
  return c;
}

const WORKERS: Proplet = {
  apiVersion: HYBRID_API_VERSION,
  kind: 'Proplet',
  metadata: { name: 'workers', namespace: NS },
  spec: { type: 'k8s', k8s: { image: 'propeller/propeller-edge:latest', replicas: 3, resources: { limits: { memory: '256Mi' } } } },
};

function failWithLogs(t: ExecutionContext, p: Proplet) {
  return async (err: unknown) => {
    for (const name of kubelet!.running()) t.log(name, kubelet!.logs(name).slice(-3).join('\n'));
    t.log(JSON.stringify((await getProplet(p.metadata.name!))?.status));
    throw err;
  };
}

// --- tests -----------------------------------------------------------------------------------

k8s.test('a k8s Proplet with 3 replicas: a Deployment, 3 pods run by the fake kubelet, 3 alive k8s proplets under the group account, status Ready 3/3', async (t) => {
  await applyObjects(k8s.cluster(), WORKERS);
  const p = await waitProplet('workers', 'Ready with 3 replicas', (x) => x.status?.phase === 'Ready' && x.status.readyReplicas === 3, 45_000).catch(failWithLogs(t, WORKERS));
  const pods = await podNames(p);
  t.is(pods.length, 3);
  t.deepEqual(kubelet!.running(), pods);
  t.like(p.status, { replicas: 3, readyReplicas: 3, selector: 'propeller.absmach.fr/proplet=workers', credentialsSecret: 'workers-mqtt', propletIds: pods });
  t.is(p.status?.conditions?.find((c) => c.type === 'Ready')?.reason, 'AllAlive');

  // each pod is its own proplet, named after it, of type k8s, offering its memory limit
  const registered = ofPool(p, await registry());
  t.deepEqual(registered.map((x) => x.id).sort(), pods);
  for (const x of registered) {
    t.like(x, { state: 'alive', proplet_type: 'k8s', capacity: { memory_bytes: 256 * 1024 * 1024 } });
    t.like(x.labels, { 'propeller.absmach.fr/proplet': 'workers', 'propeller.absmach.fr/namespace': NS });
  }
  // the Deployment and the Secret, owned by the Proplet; the pods on the fake node
  const dep = await apps.readNamespacedDeployment({ name: 'workers', namespace: NS });
  t.deepEqual(dep.metadata?.ownerReferences?.map((o) => [o.kind, o.uid, o.controller]), [['Proplet', p.metadata.uid, true]]);
  t.is(dep.spec?.replicas, 3);
  const secret = await kube.core.readNamespacedSecret({ name: 'workers-mqtt', namespace: NS });
  t.is(Buffer.from(secret.data!.PROPLET_ACCOUNT!, 'base64').toString(), 'workers-*');
  t.deepEqual(secret.metadata?.ownerReferences?.map((o) => o.uid), [p.metadata.uid]);
  const pod = await kube.core.readNamespacedPod({ name: pods[0]!, namespace: NS });
  t.like(pod, { spec: { nodeName: FAKE_NODE }, status: { phase: 'Running' } });
  // the scale subresource reads status.replicas and status.selector
  const scale = JSON.parse(await kubectl(['get', '--raw', `/apis/${HYBRID_API_VERSION}/namespaces/${NS}/proplets/workers/scale`])) as { spec: { replicas: number }; status: { replicas: number; selector: string } };
  t.deepEqual([scale.spec.replicas, scale.status], [3, { replicas: 3, selector: 'propeller.absmach.fr/proplet=workers' }]);
  t.true((await reasons('workers')).includes('DeploymentCreated'));
  t.true((await reasons('workers')).includes('CredentialsIssued'));
});

k8s.test('kubectl scale proplet to 1: the Deployment follows, two pods and their processes go, their records are removed; 1 alive', async (t) => {
  const before = await getProplet('workers');
  const old = await podNames(before!);
  t.regex(await kubectl(['scale', 'proplet', 'workers', '-n', NS, '--replicas', '1']), /scaled/);
  const p = await waitProplet('workers', 'Ready with 1 replica', (x) => x.status?.phase === 'Ready' && x.status.replicas === 1 && x.status.propletIds?.length === 1, 30_000).catch(
    failWithLogs(t, WORKERS),
  );
  t.is((await apps.readNamespacedDeployment({ name: 'workers', namespace: NS })).spec?.replicas, 1);
  const [left] = p.status!.propletIds!;
  t.true(old.includes(left!), 'the pod that stays is one of the three');
  await eventually('two processes killed', async () => kubelet!.running(), (r) => r.length === 1 && r[0] === left, 15_000);
  // their pods are gone: once offline their records go from the control plane
  const registered = await eventually('records of the gone pods removed', async () => ofPool(p, await registry()), (r) => r.length === 1, 20_000);
  t.like(registered[0], { id: left, state: 'alive', proplet_type: 'k8s' });
  t.like(p.status, { readyReplicas: 1 });
  t.is(await kubectl(['get', 'proplet', 'workers', '-n', NS, '-o', 'jsonpath={.spec.k8s.replicas}/{.status.replicas}/{.status.readyReplicas}']), '1/1/1');
  const r = await reasons('workers');
  t.true(r.includes('Scaled'), r.join());
  t.true(r.includes('PropletsRemoved'), r.join());
});

k8s.test('an external Proplet: the controller pre-registers the device and its Secret lets a real MQTT client register; status Ready', async (t) => {
  const esp: Proplet = {
    apiVersion: HYBRID_API_VERSION,
    kind: 'Proplet',
    metadata: { name: 'esp32-sensor-node', namespace: NS },
    spec: { type: 'external', external: { deviceType: 'esp32', capabilities: ['wasm', 'sensor', 'wifi'] } },
  };
  await applyObjects(k8s.cluster(), esp);
  const pending = await waitProplet('esp32-sensor-node', 'Pending with its Secret', (x) => x.status?.phase === 'Pending' && x.status.credentialsSecret === 'esp32-sensor-node-mqtt');
  t.is(pending.status?.conditions?.[0]?.reason, 'NotRegistered');
  const secret = await kube.core.readNamespacedSecret({ name: 'esp32-sensor-node-mqtt', namespace: NS });
  t.deepEqual(secret.metadata?.ownerReferences?.map((o) => [o.kind, o.uid, o.controller]), [['Proplet', pending.metadata.uid, true]]);
  const creds = Object.fromEntries(Object.entries(secret.data!).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
  t.like(creds, { PROPLET_ID: 'esp32-sensor-node', MQTT_BROKER: serve!.brokerUrl, PROPELLER_DOMAIN_ID: 'propeller', PROPELLER_CHANNEL_ID: 'control', MQTT_TOPIC_BASE: 'm/propeller/c/control/messages' });

  // the device, from what the Secret holds
  await device(creds.MQTT_BROKER!, creds.PROPLET_ID!, creds.PROPLET_SECRET!, { deviceType: 'esp32', capabilities: ['wasm', 'sensor', 'wifi'] });
  const p = await waitProplet('esp32-sensor-node', 'Ready', (x) => x.status?.phase === 'Ready');
  t.like(p.status, { propletIds: ['esp32-sensor-node'], runningTasks: 0, credentialsSecret: 'esp32-sensor-node-mqtt' });
  t.regex(p.status?.lastHeartbeat ?? '', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  t.like((await registry()).find((x) => x.id === 'esp32-sensor-node'), { proplet_type: 'external', device_type: 'esp32', state: 'alive' });
  // issued once: a wrong secret is refused (CONNACK 4), the Secret's still works after more reconciles
  const err = await mqtt.connectAsync(creds.MQTT_BROKER!, { protocolVersion: 4, username: creds.PROPLET_ID, password: 'not-the-secret', reconnectPeriod: 0 }).then(
    (c) => (clients.push(c), undefined),
    (x: Error) => x,
  );
  t.regex(String(err?.message), /Bad username or password/i);
});

k8s.test('a device that registers on its own appears as a discovered Proplet, beside the pods and the pre-registered device', async (t) => {
  const id = 'Field_Sensor.07';
  const { secret } = await serve!.api.addProplet(id);
  await device(serve!.brokerUrl, id, secret, { deviceType: 'raspberry-pi', capabilities: ['wasm', 'camera'] });
  const found = await eventually(
    'a discovered Proplet',
    async () => ((await getJson<{ items: Proplet[] }>(k8s.cluster(), ['proplets', '-n', NS, '-l', 'propeller.absmach.fr/discovered=true']))?.items ?? []),
    (items) => items.some((x) => x.status?.phase === 'Ready'),
    15_000,
  );
  t.is(found.length, 1, 'only the device: the pods are k8s proplets, the esp32 is claimed');
  const d = found[0]!;
  t.regex(d.metadata.name!, /^field-sensor-07--[0-9a-f]{10}$/);
  t.is(d.metadata.annotations?.['propeller.absmach.fr/proplet-id'], id);
  t.like(d.spec, { type: 'external', external: { deviceType: 'raspberry-pi', capabilities: ['wasm', 'camera'] } });
  t.like(d.status, { phase: 'Ready', propletIds: [id] });
  t.is(d.status?.credentialsSecret, undefined, 'a discovered device has its account already');
  t.true((await reasons(d.metadata.name!)).includes('Discovered'));

  // kubectl get proplets: pods and devices side by side
  const table = await kubectl(['get', 'proplets', '-n', NS]);
  t.regex(table, /^workers\s+k8s\s+(<none>\s+)?1\s+Ready\s+0\s/m);
  t.regex(table, /^esp32-sensor-node\s+external\s+esp32\s+(<none>\s+)?Ready\s+0\s/m);
  t.regex(table, new RegExp(`^${d.metadata.name}\\s+external\\s+raspberry-pi\\s+(<none>\\s+)?Ready\\s+0\\s`, 'm'));
});

k8s.test('deleting the k8s Proplet revokes its group account and forgets its proplets, leaving the Deployment to garbage collection', async (t) => {
  const p = (await getProplet('workers'))!;
  const groupSecret = Buffer.from((await kube.core.readNamespacedSecret({ name: 'workers-mqtt', namespace: NS })).data!.PROPLET_SECRET!, 'base64').toString();
  const connect = () => mqtt.connectAsync(serve!.brokerUrl, { protocolVersion: 4, username: 'workers-7c9d5b8f4-x2kqz', password: groupSecret, reconnectPeriod: 0 });
  await (await connect()).endAsync(true);
  await kubectl(['delete', 'proplet', 'workers', '-n', NS, '--wait=false']);
  await eventually('the Proplet gone', () => getProplet('workers'), (x) => x === undefined, 20_000);
  await eventually('its proplets forgotten', async () => ofPool(p, await registry()), (r) => r.length === 0, 10_000);
  // the group's secret no longer admits anyone
  const err = await connect().then(
    (c) => (clients.push(c), undefined),
    (x: Error) => x,
  );
  t.regex(String(err?.message), /Bad username or password|Not authorized/i);
  // the Deployment (and with it the pods) is garbage collection's: it is owned by the Proplet that is gone
  // (the test cluster's collector learns new kinds every 30 s, so it is not waited for here)
  const dep = await apps.readNamespacedDeployment({ name: 'workers', namespace: NS }).catch((e) => (isNotFound(e) ? undefined : Promise.reject(e)));
  if (dep) t.deepEqual(dep.metadata?.ownerReferences?.map((o) => [o.kind, o.uid, o.blockOwnerDeletion]), [['Proplet', p.metadata.uid, true]]);
  // the esp32's Proplet stays
  t.truthy(await getProplet('esp32-sensor-node'));
});
