// The adapter's controller runtime and its task and group controllers on a
// real kube-apiserver 1.20.2, against a real control plane (startStack:
// embedded broker, control plane, node proplets over TCP) and, last, as real
// `propeller serve --kubeconfig` and `propeller k8s adapter` processes.
// Resources go in with kubectl; the adapter's answers are read back from the
// apiserver (status, Events, owned objects, the Lease) and from the control
// plane's HTTP API. The work queue and status helpers are tested without a
// cluster.

import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CoreV1Event } from '@kubernetes/client-node';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startAdapter, type Adapter } from '../k8s-adapter/adapter.ts';
import { UID_LABEL } from '../k8s-adapter/controllers/task.ts';
import { setCondition } from '../k8s-adapter/runtime/conditions.ts';
import { EventRecorder } from '../k8s-adapter/runtime/events.ts';
import { FINALIZER } from '../k8s-adapter/runtime/finalizers.ts';
import { customResourceSource, INSTALL_CRDS, Informer } from '../k8s-adapter/runtime/informer.ts';
import { ControlPlaneClient } from '../control-plane/client.ts';
import { isNotFound, kubeClients, loadKubeConfig, type Kube, type KubeObject } from '../k8s-adapter/runtime/kube.ts';
import { mergePatch } from '../k8s-adapter/runtime/status.ts';
import { WorkQueue } from '../k8s-adapter/runtime/work-queue.ts';
import { PROPLET_GROUP, TASK, WASM_TASK, type KindDef, type PropletGroup, type Task, type WasmTask } from '../k8s-adapter/types.ts';
import { applyObjects, eventually, getJson, installCrds, k8sCluster, kubectlOk } from './helpers/k8s.ts';
import { BIN, startServe, type Proc } from './helpers/procs.ts';
import { freePort, startStack, until, type Stack } from './helpers/stack.ts';

const k8s = k8sCluster(test);
const NS = 'default';
/** Leader election as the tests run it: a 4 s lease renewed every 0.5 s. */
const LEASE = { namespace: NS, name: 'tasks-test', leaseDurationSeconds: 4, renewIntervalMs: 500, retryIntervalMs: 500 };
const JOB_IMAGE = 'registry.example/propeller/propeller-edge:test';

let stack: Stack;
let kube: Kube;
let adapter: Adapter | undefined;
let modules: Server;
let moduleUrl: string;
const wasm: Record<string, string> = {};
const logs = new Map<string, { level: string; msg: string; [k: string]: unknown }[]>();
const extra: { close(): Promise<void> }[] = [];
/** Every request the adapters made to the control plane, in order: 'GET /tasks/ID', ... */
const requests: string[] = [];

/** The real client, writing down each request it makes. */
class CountingClient extends ControlPlaneClient {
  override request<T>(method: string, path: string, body?: unknown, contentType?: string): Promise<T> {
    requests.push(`${method} ${path}`);
    return super.request<T>(method, path, body, contentType);
  }
}

function startOne(identity: string): Promise<Adapter> {
  const lines: { level: string; msg: string }[] = [];
  logs.set(identity, lines);
  return startAdapter({
    kubeconfig: k8s.cluster().env.KUBECONFIG!,
    controlPlane: new CountingClient(stack.api.baseUrl),
    leaderElection: { ...LEASE, identity },
    log: (level, msg, fields) => lines.push({ level, msg, ...fields }),
    pollMs: 200,
    groupPollMs: 300,
    job: { image: JOB_IMAGE, broker: stack.broker.url },
  });
}

if (k8s.available) {
  test.before(async () => {
    await buildExamples();
    for (const name of ['hello', 'daemon', 'sleep']) wasm[name] = readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`)).toString('base64');
    modules = createServer((req, res) => {
      const m = /^\/(\w+)\.wasm$/.exec(req.url ?? '');
      if (!m || !wasm[m[1]!]) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-type': 'application/wasm' }).end(Buffer.from(wasm[m[1]!]!, 'base64'));
    }).listen(0, '127.0.0.1');
    await new Promise((r) => modules.once('listening', r));
    moduleUrl = `http://127.0.0.1:${(modules.address() as AddressInfo).port}`;
    await installCrds(await k8s.started());
    kube = kubeClients(loadKubeConfig(k8s.cluster().env.KUBECONFIG));
    stack = await startStack();
    await stack.addProplet('ext-1', { propletType: 'external', labels: { tier: 'edge' } });
    await stack.addProplet('k8s-1', { propletType: 'k8s', labels: { tier: 'cloud' } });
    adapter = await startOne('adapter-a');
    await until(() => adapter!.acting, 'adapter-a leading', 10_000);
  });
  test.after.always(async () => {
    if (process.env.DEBUG_ADAPTER) for (const [id, l] of logs) console.error(id, JSON.stringify(l.slice(-40), null, 1));
    await adapter?.close().catch(() => {});
    await Promise.all(extra.map((x) => x.close().catch(() => {})));
    await stack?.close();
    modules?.close();
  });
}

// --- helpers ---------------------------------------------------------------------------------

async function getResource<T>(k: KindDef, name: string): Promise<T | undefined> {
  try {
    return (await kube.custom.getNamespacedCustomObject({ group: k.group, version: k.version, plural: k.plural, namespace: NS, name })) as T;
  } catch (e) {
    if (isNotFound(e)) return undefined;
    throw e;
  }
}

/** The resource once `ok` holds of it. */
function waitFor<T extends { status?: unknown }>(k: KindDef, name: string, what: string, ok: (o: T) => boolean, ms = 20_000): Promise<T> {
  return eventually(`${k.kind} ${name}: ${what}`, () => getResource<T>(k, name), (o) => o !== undefined && ok(o), ms) as Promise<T>;
}

const wasmTask = (name: string, spec: WasmTask['spec'], labels?: Record<string, string>): WasmTask => ({
  apiVersion: WASM_TASK.apiVersion,
  kind: 'WasmTask',
  metadata: { name, namespace: NS, ...(labels ? { labels } : {}) },
  spec,
});

async function eventsOf(name: string): Promise<CoreV1Event[]> {
  const list = await getJson<{ items: CoreV1Event[] }>(k8s.cluster(), ['events', '-n', NS, '--field-selector', `involvedObject.name=${name}`]);
  return list?.items ?? [];
}

const reasons = (events: CoreV1Event[]) => events.map((e) => e.reason!).sort();

/** Control-plane tasks that belong to the resource with this uid. */
async function tasksOf(uid: string) {
  return stack.api.tasksLabelled({ [UID_LABEL]: uid });
}

const ready = (o: { status?: { conditions?: { type: string }[] } }) => o.status?.conditions?.find((c) => c.type === 'Ready') as { status: string; reason: string; message: string; observedGeneration?: number } | undefined;

async function closeAdapter(): Promise<void> {
  await adapter?.close();
  adapter = undefined;
}

// --- the runtime, without a cluster ------------------------------------------------------------------

const tick = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('work queue: a key waits once, runs one at a time, runs again once when added meanwhile', async (t) => {
  const runs: string[] = [];
  let active = 0;
  let most = 0;
  const q = new WorkQueue(async (key) => {
    active++;
    most = Math.max(most, active);
    runs.push(key);
    await tick(30);
    active--;
  }, { concurrency: 4 });
  q.add('a');
  q.add('a'); // running: marked to run again once
  q.add('a');
  q.add('b');
  q.add('b'); // 'b' started at once too (4 workers): this is a rerun
  await until(() => runs.length === 4 && active === 0, 'four runs', 2000);
  await tick(60);
  t.deepEqual(runs.sort(), ['a', 'a', 'b', 'b']);
  t.is(most, 2, 'a and b together, never a twice at once');
  const one = new WorkQueue(async (key) => {
    runs.push(`one:${key}`);
    await tick(20);
  }, { concurrency: 1 });
  one.add('x'); // running
  one.add('y'); // waiting
  one.add('y'); // already waiting: nothing
  await until(() => runs.includes('one:y'), 'y ran', 2000);
  await tick(60);
  t.deepEqual(runs.filter((r) => r.startsWith('one:')), ['one:x', 'one:y']);
  await Promise.all([q.close(), one.close()]);
});

test('work queue: a failing key is retried with a delay that doubles per failure, up to the cap; requeueAfterMs runs it again', async (t) => {
  const at: number[] = [];
  const q = new WorkQueue(async () => {
    at.push(Date.now());
    if (at.length <= 4) throw new Error('not yet');
    if (at.length === 5) return { requeueAfterMs: 50 };
  }, { baseDelayMs: 20, maxDelayMs: 60 });
  q.add('k');
  await until(() => at.length === 6, 'six runs');
  const gaps = at.slice(1).map((x, i) => x - at[i]!);
  // 20, 40, 60 (capped), 60, then the 50 asked for: no retry comes sooner (a busy machine may make any later)
  for (const [i, want] of [20, 40, 60, 60, 50].entries()) t.true(gaps[i]! >= want - 2, `gap ${i}: ${gaps[i]} ms, want at least ${want}`);
  await q.close();
});

test('status patches and conditions: a merge patch of what changed; lastTransitionTime moves only with the status', (t) => {
  t.is(mergePatch({ phase: 'Running', a: { b: 1 } }, { a: { b: 1 }, phase: 'Running' }), undefined);
  t.deepEqual(mergePatch({ phase: 'Running', error: 'x', results: { a: 1, b: [1, 2] } }, { phase: 'Completed', results: { a: 1, b: [1] } }), {
    phase: 'Completed',
    error: null,
    results: { b: [1] },
  });
  const t0 = new Date('2030-01-01T00:00:00Z');
  const t1 = new Date('2030-01-01T00:01:00Z');
  const c0 = setCondition(undefined, { type: 'Ready', status: 'False', reason: 'Pending', message: 'waiting' }, 1, t0);
  const c1 = setCondition(c0, { type: 'Ready', status: 'False', reason: 'Scheduled', message: 'placed' }, 2, t1);
  t.deepEqual(c1, [{ type: 'Ready', status: 'False', reason: 'Scheduled', message: 'placed', lastTransitionTime: '2030-01-01T00:00:00Z', observedGeneration: 2 }]);
  const c2 = setCondition(c1, { type: 'Ready', status: 'True', reason: 'Running', message: 'on p1' }, 2, t1);
  t.is(c2[0]!.lastTransitionTime, '2030-01-01T00:01:00Z');
  t.is(setCondition(c2, { type: 'Other', status: 'Unknown', reason: 'X', message: '' }).length, 2);
});

// --- the runtime on the apiserver --------------------------------------------------------------------

k8s.test('runtime: a repeated Event bumps the count of the first; an informer whose watch gets 410 Gone relists and goes on', async (t) => {
  const c = k8s.cluster();
  const lines: { msg: string }[] = [];
  const log = (_l: string, msg: string) => void lines.push({ msg });
  const cm = JSON.parse(await kubectlOk(c, ['create', 'configmap', 'event-target', '-n', NS, '-o', 'json'])) as KubeObject;
  const events = new EventRecorder(kube, 'propeller-k8s-adapter', 'runtime-test', log);
  await events.record(cm, 'Warning', 'JobFailed', 'participant p1 failed');
  await events.record(cm, 'Warning', 'JobFailed', 'participant p1 failed');
  await events.record(cm, 'Normal', 'RoundStarted', 'round 1');
  const got = await eventsOf('event-target');
  t.deepEqual(got.map((e) => [e.reason, e.count]).sort(), [['JobFailed', 2], ['RoundStarted', 1]]);

  // a first list that claims an ancient resourceVersion: the watch from it is refused with 410 Gone
  const real = customResourceSource<KubeObject>(kube, WASM_TASK, NS);
  let lists = 0;
  const source = { ...real, list: async () => ({ ...(await real.list()), ...(++lists === 1 ? { resourceVersion: '1' } : {}) }) };
  const seen = new Set<string>();
  const informer = new Informer(kube, source, (key, obj) => void (obj && seen.add(key)), log, { minBackoffMs: 50 });
  informer.start();
  t.teardown(() => informer.stop());
  await until(() => lists >= 2, 'a second list', 10_000);
  t.true(lines.some((l) => l.msg === 'watch expired (410 Gone): relisting'), JSON.stringify(lines));
  await applyObjects(c, wasmTask('after-gone', { file: wasm.hello }));
  await until(() => seen.has(`${NS}/after-gone`), 'the watch after the relist sees a new object', 10_000);
  t.is(lists, 2);
});

k8s.test('runtime: a kind whose CRD is not installed is named once, with the command that installs it', async (t) => {
  k8s.cluster();
  const lines: { level: string; msg: string }[] = [];
  const real = customResourceSource<KubeObject>(kube, { ...WASM_TASK, plural: 'nosuchtasks', kind: 'NoSuchTask' }, NS);
  let lists = 0;
  const source = {
    ...real,
    list: () => {
      lists++;
      return real.list();
    },
  };
  const informer = new Informer(kube, source, () => {}, (level, msg) => void lines.push({ level, msg }), { minBackoffMs: 20, maxBackoffMs: 50 });
  informer.start();
  t.teardown(() => informer.stop());
  await until(() => lists >= 4, 'the list tried again and again');
  const errors = lines.filter((l) => l.level === 'error');
  t.is(errors.length, 1, JSON.stringify(lines));
  t.is(errors[0]!.msg, `the cluster has no CustomResourceDefinition nosuchtasks.${WASM_TASK.group} (kind NoSuchTask); install the CRDs with: ${INSTALL_CRDS}`);
  t.is(INSTALL_CRDS, 'propeller k8s manifests --only crds | kubectl apply -f -');
  t.false(lines.some((l) => l.msg === 'list/watch failed: retrying'), 'no retry chatter');
});

// --- tasks -------------------------------------------------------------------------------------

k8s.test('a WasmTask with an inline module runs to Completed: results, proplet, Events, finalizer, kubectl columns', async (t) => {
  const c = k8s.cluster();
  await applyObjects(c, wasmTask('hello', { file: wasm.hello, cliArgs: ['world'], env: { GREETING: 'from kubernetes' } }, { app: 'demo' }));
  const wt = await waitFor<WasmTask>(WASM_TASK, 'hello', 'Completed', (o) => o.status?.phase === 'Completed');
  const s = wt.status!;
  t.true(['ext-1', 'k8s-1'].includes(s.propletId!), s.propletId);
  t.deepEqual(s.results, { stdout: 'Hello from WebAssembly!\nworld\nfrom kubernetes\n', durationMs: (s.results as { durationMs: number }).durationMs });
  t.is(s.exitCode, 0);
  t.is(s.observedGeneration, 1);
  t.truthy(s.startTime && s.finishTime);
  t.like(ready(wt), { status: 'True', reason: 'Completed', observedGeneration: 1 });
  t.deepEqual(wt.metadata.finalizers, [FINALIZER]);

  // the control-plane task: labelled with the resource, its labels carried over
  const task = await stack.api.getTask(s.taskId!);
  t.is(task.state, 'Completed');
  t.is(task.name, 'hello');
  t.like(task.labels, { app: 'demo', [UID_LABEL]: wt.metadata.uid, 'propeller.absmach.io/resource': 'WasmTask/default/hello' });

  const events = await eventsOf('hello');
  t.deepEqual(reasons(events), ['TaskCompleted', 'TaskCreated', 'TaskStarted']);
  for (const e of events) t.like(e, { type: 'Normal', count: 1, source: { component: 'propeller-k8s-adapter', host: 'adapter-a' }, involvedObject: { kind: 'WasmTask', uid: wt.metadata.uid } });

  const row = (await kubectlOk(c, ['get', 'wasmtask', 'hello', '-n', NS])).split('\n')[1]!;
  t.regex(row, new RegExp(`^hello\\s+Completed\\s+${s.propletId}\\s`));
});

k8s.test('Tasks (propeller.absmach.fr) from an http URL run on the proplet type they prefer', async (t) => {
  const c = k8s.cluster();
  const task = (name: string, preferred: 'k8s' | 'external'): Task => ({
    apiVersion: TASK.apiVersion,
    kind: 'Task',
    metadata: { name, namespace: NS },
    spec: { name: `hello-${preferred}`, imageUrl: `${moduleUrl}/hello.wasm`, preferredPropletType: preferred, cliArgs: [preferred] },
  });
  await applyObjects(c, task('on-k8s', 'k8s'), task('on-device', 'external'));
  for (const [name, proplet, type] of [['on-k8s', 'k8s-1', 'k8s'], ['on-device', 'ext-1', 'external']] as const) {
    const done = await waitFor<Task>(TASK, name, 'Completed', (o) => o.status?.phase === 'Completed');
    t.is(done.status!.propletId, proplet, name);
    t.is((done.status!.results as { stdout: string }).stdout, `Hello from WebAssembly!\n${type}\n`);
    const cpTask = await stack.api.getTask(done.status!.taskId!);
    t.like(cpTask, { name: `hello-${type}`, preferred_proplet_type: type, image_url: `${moduleUrl}/hello.wasm` });
    t.deepEqual(reasons(await eventsOf(name)), ['TaskCompleted', 'TaskCreated', 'TaskStarted']);
  }
  t.regex(await kubectlOk(c, ['get', 'tasks.propeller.absmach.fr', 'on-k8s', '-n', NS]), /on-k8s\s+Completed\s+k8s-1\s+k8s\s/);
});

k8s.test('a bad spec: Ready=False InvalidSpec with a Warning event, no control-plane task; fixed, it runs', async (t) => {
  const c = k8s.cluster();
  const cases: [string, WasmTask['spec'], RegExp][] = [
    ['bad-scheme', { imageUrl: 'ftp://example.com/app.wasm' }, /the control plane refused the task: image_url: must be an http\(s\):\/\/ or oci:\/\/ URL/],
    ['bad-file', { file: Buffer.from('not a module').toString('base64') }, /file: is not a WebAssembly module/],
    ['no-module', { imageUrl: '  ' }, /spec has no module: set imageUrl/],
    ['bad-job', { imageUrl: 'ftp://example.com/app.wasm', execution: 'job' }, /image_url: must be an http\(s\):\/\/ or oci:\/\/ URL/],
  ];
  await applyObjects(c, ...cases.map(([name, spec]) => wasmTask(name, spec)));
  for (const [name, , message] of cases) {
    const wt = await waitFor<WasmTask>(WASM_TASK, name, 'InvalidSpec', (o) => ready(o)?.reason === 'InvalidSpec');
    t.like(ready(wt), { status: 'False', reason: 'InvalidSpec', observedGeneration: 1 });
    t.regex(ready(wt)!.message, message, name);
    t.is(wt.status!.phase, 'Failed');
    t.regex(wt.status!.error!, message);
    t.is(wt.status!.taskId, undefined);
    const events = await eventually(`${name} event`, () => eventsOf(name), (e) => e.length > 0);
    t.like(events[0], { type: 'Warning', reason: 'InvalidSpec', count: 1 });
    t.deepEqual(await tasksOf(wt.metadata.uid!), []);
  }
  t.is(await getJson(c, ['job', 'bad-job-job', '-n', NS]), undefined, 'no Job for a task the control plane refused');
  // the spec fixed: a new generation, and it runs
  await kubectlOk(c, ['patch', 'wasmtask', 'bad-scheme', '-n', NS, '--type', 'merge', '-p', JSON.stringify({ spec: { imageUrl: `${moduleUrl}/hello.wasm` } })]);
  const fixed = await waitFor<WasmTask>(WASM_TASK, 'bad-scheme', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is(fixed.status!.observedGeneration, 2);
  t.like(ready(fixed), { status: 'True', reason: 'Completed', observedGeneration: 2 });
  t.is(fixed.status!.error, undefined);
});

// --- groups --------------------------------------------------------------------------------------

k8s.test('a PropletGroup becomes a control-plane group whose proplets its status lists; tasks use it; deleting it deletes the group', async (t) => {
  const c = k8s.cluster();
  const pg: PropletGroup = {
    apiVersion: PROPLET_GROUP.apiVersion,
    kind: 'PropletGroup',
    metadata: { name: 'edge-group', namespace: NS },
    spec: { selector: { matchLabels: { tier: 'edge' } }, scheduling: { algorithm: 'least-loaded', maxTasksPerProplet: 2 } },
  };
  await applyObjects(c, pg);
  let g = await waitFor<PropletGroup>(PROPLET_GROUP, 'edge-group', 'one proplet', (o) => o.status?.totalProplets === 1);
  t.deepEqual(g.status!.proplets, [{ id: 'ext-1', phase: 'Ready', assignedTasks: 0 }]);
  t.is(g.status!.availableProplets, 1);
  t.like(ready(g), { status: 'True', reason: 'GroupSynced', message: '1 of 1 proplets available' });
  t.like(await stack.api.getGroup('edge-group'), { selector: { match_labels: { tier: 'edge' } }, scheduling: { algorithm: 'least-loaded', max_tasks_per_proplet: 2 } });

  // a proplet that matches comes: the status follows within the poll
  await stack.addProplet('ext-2', { propletType: 'external', labels: { tier: 'edge' } });
  g = await waitFor<PropletGroup>(PROPLET_GROUP, 'edge-group', 'two proplets', (o) => o.status?.totalProplets === 2);
  t.deepEqual(g.status!.proplets!.map((p) => p.id).sort(), ['ext-1', 'ext-2']);
  t.regex(await kubectlOk(c, ['get', 'pg', 'edge-group', '-n', NS]), /edge-group\s+least-loaded\s+2\s+2\s/);

  // a WasmTask placed through the group runs on one of its proplets
  await applyObjects(c, wasmTask('in-group', { file: wasm.hello, propletGroupRef: { name: 'edge-group' } }));
  const wt = await waitFor<WasmTask>(WASM_TASK, 'in-group', 'Completed', (o) => o.status?.phase === 'Completed');
  t.true(['ext-1', 'ext-2'].includes(wt.status!.propletId!));
  t.is((await stack.api.getTask(wt.status!.taskId!)).proplet_group, 'edge-group');

  // an edit reaches the control plane
  await kubectlOk(c, ['patch', 'pg', 'edge-group', '-n', NS, '--type', 'merge', '-p', '{"spec":{"scheduling":{"algorithm":"round-robin"}}}']);
  await eventually('group updated', () => stack.api.getGroup('edge-group'), (x) => x.scheduling.algorithm === 'round-robin');
  t.deepEqual(reasons(await eventually('GroupUpdated', () => eventsOf('edge-group'), (e) => e.length >= 2)), ['GroupCreated', 'GroupUpdated']);

  await kubectlOk(c, ['delete', 'pg', 'edge-group', '-n', NS, '--timeout', '20s']);
  t.is(await getResource(PROPLET_GROUP, 'edge-group'), undefined);
  await t.throwsAsync(stack.api.getGroup('edge-group'), { message: /not found/ });
});

// --- deletion ----------------------------------------------------------------------------------

k8s.test('deleting a WasmTask mid-run stops its control-plane task, then deletes it there, then the resource goes', async (t) => {
  const c = k8s.cluster();
  const states: string[] = [];
  let id = '';
  const onChange = (x: { id: string; state: string }) => x.id === id && states.push(x.state);
  stack.cp.tasks.on('changed', onChange);
  t.teardown(() => stack.cp.tasks.off('changed', onChange));
  await applyObjects(c, wasmTask('forever', { file: wasm.daemon, daemon: true }));
  const running = await waitFor<WasmTask>(WASM_TASK, 'forever', 'Running', (o) => o.status?.phase === 'Running');
  id = running.status!.taskId!;
  t.is((await stack.api.getTask(id)).state, 'Running');

  await kubectlOk(c, ['delete', 'wasmtask', 'forever', '-n', NS, '--timeout', '20s']);
  t.is(await getResource(WASM_TASK, 'forever'), undefined);
  t.is(states[0], 'Stopped', 'stopped in the control plane, from Running');
  await t.throwsAsync(stack.api.getTask(id), { message: /not found/ });
  t.true(reasons(await eventsOf('forever')).includes('TaskStopped'));
});

k8s.test('running tasks are followed with one list per poll: no request per task until one moves on', async (t) => {
  const c = k8s.cluster();
  const names = ['follow-1', 'follow-2', 'follow-3'];
  await applyObjects(c, ...names.map((n) => wasmTask(n, { file: wasm.daemon, daemon: true })));
  const ids: string[] = [];
  for (const n of names) ids.push((await waitFor<WasmTask>(WASM_TASK, n, 'Running', (o) => o.status?.phase === 'Running')).status!.taskId!);
  t.teardown(() => kubectlOk(c, ['delete', 'wasmtask', ...names, '-n', NS, '--wait=false']).catch(() => {}));
  const mark = requests.length;
  const since = () => requests.slice(mark);
  const lists = () => since().filter((r) => r.startsWith('GET /tasks?') && r.includes('state=Running')).length;
  await until(() => lists() >= 5, 'five polls');
  const gets = (id: string) => since().filter((r) => r === `GET /tasks/${id}`).length;
  // before: a GET of each task every poll (5 or more each here); now none, or one if the 30 s resync fell in the window
  for (const id of ids) t.true(gets(id) <= 1, `${gets(id)} GETs of ${id} in ${lists()} polls`);

  await stack.api.stopTask(ids[1]!);
  await waitFor<WasmTask>(WASM_TASK, 'follow-2', 'Stopped', (o) => o.status?.phase === 'Stopped');
  t.true(gets(ids[1]!) >= 1, 'the task that moved on was read');
  t.true(gets(ids[0]!) <= 1 && gets(ids[2]!) <= 1, 'the others were not');
});

// --- execution: job ----------------------------------------------------------------------------

interface Owned {
  metadata: { name: string; ownerReferences?: { kind: string; name: string; uid: string; controller?: boolean; blockOwnerDeletion?: boolean }[] };
  data?: Record<string, string>;
  spec?: { backoffLimit: number; template: { spec: { restartPolicy: string; containers: Record<string, unknown>[] } } };
}

k8s.test('execution: job: a Secret, ConfigMap and Job owned by the WasmTask, status waiting for the Job; a stand-in kubelet runs its proplet and the task completes', async (t) => {
  const c = k8s.cluster();
  const resources = { requests: { cpu: '100m', memory: '32Mi' }, limits: { memory: '64Mi' } };
  await applyObjects(c, wasmTask('job-hello', { file: wasm.hello, execution: 'job', cliArgs: ['in', 'a', 'pod'], resources }));
  const waiting = await waitFor<WasmTask>(WASM_TASK, 'job-hello', 'waiting for its Job', (o) => ready(o)?.reason === 'WaitingForJob' && !!o.status?.jobRef?.uid);
  const uid = waiting.metadata.uid!;
  const propletId = `k8s-job-${uid}`;
  t.is(waiting.status!.phase, 'Pending');
  t.like(waiting.status!.jobRef, { apiVersion: 'batch/v1', kind: 'Job', namespace: NS, name: 'job-hello-job' });
  t.regex(ready(waiting)!.message, new RegExp(`waiting for Job job-hello-job to run proplet ${propletId}`));
  t.like(await stack.api.getTask(waiting.status!.taskId!), { state: 'Pending', pinned_proplet_id: propletId, cli_args: ['in', 'a', 'pod'] });

  const owner = { kind: 'WasmTask', name: 'job-hello', uid, controller: true, blockOwnerDeletion: true };
  const [job, cm, secret] = await Promise.all(['job', 'configmap', 'secret'].map((k) => getJson<Owned>(c, [k, 'job-hello-job', '-n', NS])));
  for (const o of [job, cm, secret]) t.like(o!.metadata.ownerReferences, [owner]);
  t.is(job!.metadata.ownerReferences![0]!.uid, uid);
  t.like(job!.spec, { backoffLimit: 0, template: { spec: { restartPolicy: 'Never' } } });
  t.like(job!.spec!.template.spec.containers[0], {
    image: JOB_IMAGE,
    command: ['propeller'],
    args: ['proplet', '--once'],
    envFrom: [{ configMapRef: { name: 'job-hello-job' } }],
    env: [{ name: 'PROPLET_SECRET', valueFrom: { secretKeyRef: { name: 'job-hello-job', key: 'PROPLET_SECRET', optional: true } } }],
    resources,
  });
  t.like(cm!.data, { PROPLET_ID: propletId, PROPLET_TYPE: 'k8s', MQTT_BROKER: stack.broker.url, PROPELLER_DOMAIN_ID: 'propeller', PROPELLER_CHANNEL_ID: 'control' });
  t.like(JSON.parse(cm!.data!['task.json']!), { name: 'job-hello', cli_args: ['in', 'a', 'pod'], proplet_id: propletId });

  // no kubelet here: the test stands in for it, running the pod's command with the pod's settings
  const env = cm!.data!;
  const pod = spawn('node', [BIN, ...(job!.spec!.template.spec.containers[0]!.args as string[])], {
    stdio: 'ignore',
    env: { ...process.env, ...Object.fromEntries(Object.entries(env).filter(([k]) => k !== 'task.json')), PROPLET_SECRET: Buffer.from(secret!.data!.PROPLET_SECRET!, 'base64').toString(), PROPLET_HEARTBEAT: '500ms' },
  });
  extra.push({ close: async () => void pod.kill('SIGKILL') });
  const exited = once(pod, 'exit');
  const done = await waitFor<WasmTask>(WASM_TASK, 'job-hello', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is(done.status!.propletId, propletId);
  t.is((done.status!.results as { stdout: string }).stdout, 'Hello from WebAssembly!\nin\na\npod\n');
  t.is(done.status!.jobRef!.uid, waiting.status!.jobRef!.uid, 'jobRef kept');
  // the one-shot proplet exits 0 once its task has completed, as the Job's pod would; its credentials are revoked
  t.deepEqual(await exited, [0, null]);
  await eventually('credentials revoked', () => stack.api.getProplet(propletId).then(() => 'there', () => undefined), (x) => x === undefined);
  t.truthy(await getJson(c, ['job', 'job-hello-job', '-n', NS]), 'the Job stays, owned by the WasmTask');
});

// --- restarts and leader election ------------------------------------------------------------------

k8s.test('an adapter restarted mid-way keeps every status, adopts the task of a resource whose status was never written, and creates no duplicate', async (t) => {
  const c = k8s.cluster();
  const helloBefore = (await getResource<WasmTask>(WASM_TASK, 'hello'))!;
  const tasksBefore = (await stack.api.listTasks({ limit: 1 })).total!;
  // 'sleep' is the export the module runs: 2.5 s
  await applyObjects(c, wasmTask('sleep', { file: wasm.sleep, inputs: [2500] }));
  const running = await waitFor<WasmTask>(WASM_TASK, 'sleep', 'Running', (o) => o.status?.phase === 'Running');
  await closeAdapter();

  // while no adapter runs: a resource whose task an adapter created but died before writing status
  await applyObjects(c, wasmTask('adopted', { file: wasm.hello, cliArgs: ['adopted'] }));
  const fresh = await eventually('adopted exists', () => getResource<WasmTask>(WASM_TASK, 'adopted'), (o) => !!o);
  const orphan = await stack.api.createTask({ name: 'adopted', file: wasm.hello, cli_args: ['adopted'], labels: { [UID_LABEL]: fresh!.metadata.uid! } }, { start: true });

  adapter = await startOne('adapter-b');
  const slept = await waitFor<WasmTask>(WASM_TASK, 'sleep', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is(slept.status!.taskId, running.status!.taskId, 'the same control-plane task');
  t.deepEqual(slept.status!.results, { value: 2500, durationMs: (slept.status!.results as { durationMs: number }).durationMs });
  const adopted = await waitFor<WasmTask>(WASM_TASK, 'adopted', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is(adopted.status!.taskId, orphan.id, 'the orphan task adopted');
  t.is((adopted.status!.results as { stdout: string }).stdout, 'Hello from WebAssembly!\nadopted\n');

  for (const o of [slept, adopted]) t.is((await tasksOf(o.metadata.uid!)).length, 1, `${o.metadata.name}: one task`);
  t.is((await stack.api.listTasks({ limit: 1 })).total, tasksBefore + 2, 'sleep and the orphan: nothing else');
  const helloAfter = (await getResource<WasmTask>(WASM_TASK, 'hello'))!;
  t.deepEqual(helloAfter.status, helloBefore.status, 'a finished status is not rewritten');
  t.is(helloAfter.metadata.resourceVersion, helloBefore.metadata.resourceVersion);
  t.false(reasons(await eventsOf('adopted')).includes('TaskCreated'), 'adopted, not created');
});

k8s.test('two adapters: only the leader acts; killed without releasing the Lease, the other takes over within the lease duration', async (t) => {
  const c = k8s.cluster();
  await closeAdapter();
  const a = await startOne('leader-a');
  extra.push(a);
  await until(() => a.acting, 'leader-a leading', 10_000);
  const b = await startOne('leader-b');
  extra.push(b);
  await tick(1000);
  t.true(a.acting);
  t.false(b.acting, 'one leader');

  await applyObjects(c, wasmTask('le-1', { file: wasm.hello, cliArgs: ['one'] }));
  const one = await waitFor<WasmTask>(WASM_TASK, 'le-1', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is((await tasksOf(one.metadata.uid!)).length, 1);
  const hosts = (await eventsOf('le-1')).map((e) => e.source?.host);
  t.deepEqual([...new Set(hosts)], ['leader-a'], 'only the leader wrote');
  t.false(logs.get('leader-b')!.some((l) => l.msg === 'controllers started' || l.msg === 'reconcile failed'), 'the other did nothing');
  t.like(await getJson(c, ['lease', LEASE.name, '-n', NS]), { spec: { holderIdentity: 'leader-a', leaseDurationSeconds: 4 } });

  // death: no release, so the other has to wait the lease out
  const killedAt = Date.now();
  await a.close({ releaseLease: false });
  await until(() => b.acting, 'leader-b leading');
  const takeover = Date.now() - killedAt;
  // how long it took depends on the machine; what matters is that b waited for the lease to run out, not less
  t.log(`takeover after ${takeover} ms (lease ${LEASE.leaseDurationSeconds} s, candidates retry every ${LEASE.retryIntervalMs} ms)`);
  t.true(takeover >= (LEASE.leaseDurationSeconds * 1000) / 2, `not before the lease could have expired: ${takeover} ms`);
  const lease = await getJson<{ spec: { holderIdentity: string; leaseTransitions: number } }>(c, ['lease', LEASE.name, '-n', NS]);
  t.is(lease!.spec.holderIdentity, 'leader-b');
  t.true(lease!.spec.leaseTransitions >= 1);

  await applyObjects(c, wasmTask('le-2', { file: wasm.hello, cliArgs: ['two'] }));
  const two = await waitFor<WasmTask>(WASM_TASK, 'le-2', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is((two.status!.results as { stdout: string }).stdout, 'Hello from WebAssembly!\ntwo\n');
  t.deepEqual([...new Set((await eventsOf('le-2')).map((e) => e.source?.host))], ['leader-b']);

  // a leader that finds someone else holding the Lease stops acting at its next renewal
  await kubectlOk(c, ['patch', 'lease', LEASE.name, '-n', NS, '--type', 'merge', '-p', '{"spec":{"holderIdentity":"intruder"}}']);
  await until(() => !b.acting, 'leader-b stops', LEASE.renewIntervalMs * 3);
  t.true(logs.get('leader-b')!.some((l) => l.msg === 'lost the lease: stopping'));
  await b.close();
});

// --- the commands --------------------------------------------------------------------------------

k8s.test('propeller serve --kubeconfig runs the adapter against its own control plane', async (t: ExecutionContext) => {
  const c = k8s.cluster();
  const dir = mkdtempSync(join(tmpdir(), 'propeller-k8s-serve-'));
  let serve: Proc | undefined;
  t.teardown(async () => {
    await serve?.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });
  const args = ['--mqtt-port', String(await freePort()), '--http-port', String(await freePort()), '--data-dir', dir, '--fetch-allow', '127.0.0.0/8', '--local-proplets', '1', '--kubeconfig', c.env.KUBECONFIG!];
  const s = await startServe(args);
  serve = s;
  await applyObjects(c, { apiVersion: TASK.apiVersion, kind: 'Task', metadata: { name: 'served', namespace: NS }, spec: { imageUrl: `${moduleUrl}/hello.wasm`, cliArgs: ['served'] } });
  const done = await waitFor<Task>(TASK, 'served', 'Completed', (o) => o.status?.phase === 'Completed', 30_000);
  t.is(done.status!.propletId, 'local-1');
  t.is((await s.api.getTask(done.status!.taskId!)).state, 'Completed');
  t.true(s.logs.some((l) => l.msg === 'became leader' && l.c === 'k8s-adapter'));
  await s.kill('SIGTERM');
  t.is(s.proc.exitCode, 0);
});

k8s.test('propeller k8s adapter runs against a control plane and stops on SIGTERM', async (t) => {
  const c = k8s.cluster();
  // the Lease propeller serve used was released when it stopped: this one acts at once
  const proc = spawn('node', [BIN, 'k8s', 'adapter', '--control-plane', stack.apiUrl, '--kubeconfig', c.env.KUBECONFIG!, '--id', 'cli-adapter', '--namespace', NS], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (d) => (stderr += d));
  t.teardown(() => void proc.kill('SIGKILL'));
  await until(() => stderr.includes('"controllers started"'), 'the adapter acts', 20_000).catch((e) => {
    throw new Error(`${(e as Error).message}: ${stderr}`);
  });
  await applyObjects(c, wasmTask('via-cli', { file: wasm.hello, cliArgs: ['cli'] }));
  const done = await waitFor<WasmTask>(WASM_TASK, 'via-cli', 'Completed', (o) => o.status?.phase === 'Completed');
  t.is((done.status!.results as { stdout: string }).stdout, 'Hello from WebAssembly!\ncli\n');
  t.deepEqual([...new Set((await eventsOf('via-cli')).map((e) => e.source?.host))], ['cli-adapter']);
  proc.kill('SIGTERM');
  const [code] = (await once(proc, 'exit')) as [number];
  t.is(code, 0, stderr);
});
