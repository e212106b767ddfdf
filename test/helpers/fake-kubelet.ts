// A FAKE KUBELET for the Kubernetes tests: these machines run a real
// kube-apiserver and kube-controller-manager but no kubelet and no
// scheduler, so pods would stay Pending. The fake kubelet stands in for
// both, for the pods of one namespace that match a label selector, and runs
// each pod as a local `propeller proplet` process instead of a container:
//
//   - it registers a Node (`fake-kubelet`, Ready, address 127.0.0.1), so the
//     pod garbage collector keeps the pods bound to it;
//   - it binds each pending pod to that Node (pods/binding, as a scheduler
//     does);
//   - it resolves the container's env as a kubelet does: literal values with
//     $(VAR) expansion, envFrom and valueFrom (fieldRef on the downward API
//     fields, secretKeyRef and configMapKeyRef read from the API server); a
//     missing required key leaves the container waiting
//     (CreateContainerConfigError) and is retried;
//   - it runs `node bin/propeller.js ARGS` with exactly that env (plus PATH
//     and HOME), where ARGS are the container's command and args without the
//     leading `propeller` (the image's entrypoint is taken to be
//     `propeller proplet` when the pod names none); images, volumes, probes
//     and resource limits are ignored;
//   - it reports the pod Running and Ready through the status subresource
//     (podIP 127.0.0.1), restarts a process that exits (restartPolicy
//     Always/OnFailure, with backoff, counting restarts) and reports it;
//   - when a pod is deleted it sends SIGTERM, then SIGKILL after the pod's
//     grace period (capped by maxGraceMs), and then removes the pod for good
//     (delete with grace 0 and the pod's uid as precondition), which is the
//     kubelet's part of a graceful deletion.

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import {
  CoreV1Api,
  KubeConfig,
  makeInformer,
  PatchStrategy,
  setHeaderOptions,
  type Informer,
  type ObjectCache,
  type V1Container,
  type V1Pod,
} from '@kubernetes/client-node';
import { BIN } from './procs.ts';

export const FAKE_NODE = 'fake-kubelet';
const MERGE_PATCH = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const LOG_LINES = 200;

export interface FakeKubeletOptions {
  /** A kubeconfig file (the test cluster's DIR/kubeconfig). */
  kubeconfig: string;
  namespace: string;
  /** Only pods with these labels, e.g. `propeller.absmach.fr/proplet`. */
  labelSelector?: string;
  /** The Node the pods are bound to; default `fake-kubelet`. */
  nodeName?: string;
  /** Longest SIGTERM-to-SIGKILL wait, whatever the pod asks; default 10 s. */
  maxGraceMs?: number;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
}

/** One pod (by uid): its process, its last stderr lines, its restarts. */
interface PodRun {
  uid: string;
  name: string;
  proc?: ChildProcess;
  /** stderr lines of every process of the pod, oldest first. */
  lines: string[];
  restarts: number;
  /** Deleted or deleting: nothing is started again. */
  ending: boolean;
  timer?: NodeJS.Timeout;
  /** The pod's steps, one after the other. */
  chain: Promise<void>;
}

class ContainerConfigError extends Error {}

const kill = async (proc: ChildProcess, graceMs: number): Promise<void> => {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = once(proc, 'exit');
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
};

/** Kubernetes' $(VAR) expansion: defined names are replaced, $$ is a literal $, anything else stays. */
export function expandVars(s: string, vars: Record<string, string>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (m, name?: string) => (m === '$$' ? '$' : name !== undefined && name in vars ? vars[name]! : m));
}

/** The downward API fields an env var may name (fieldRef.fieldPath). */
function podField(pod: V1Pod, path: string): string | undefined {
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (m) return (m[1] === 'labels' ? pod.metadata?.labels : pod.metadata?.annotations)?.[m[2]!];
  const fields: Record<string, string | undefined> = {
    'metadata.name': pod.metadata?.name,
    'metadata.namespace': pod.metadata?.namespace,
    'metadata.uid': pod.metadata?.uid,
    'spec.nodeName': pod.spec?.nodeName,
    'spec.serviceAccountName': pod.spec?.serviceAccountName,
    'status.hostIP': '127.0.0.1',
    'status.podIP': '127.0.0.1',
    'status.podIPs': '127.0.0.1',
  };
  if (!(path in fields)) throw new ContainerConfigError(`fieldRef ${path} is not supported by the fake kubelet`);
  return fields[path];
}

export class FakeKubelet {
  private readonly core: CoreV1Api;
  private informer?: Informer<V1Pod> & ObjectCache<V1Pod>;
  private readonly runs = new Map<string, PodRun>();
  private readonly nodeName: string;
  private readonly maxGraceMs: number;
  private readonly log: NonNullable<FakeKubeletOptions['log']>;
  private stopped = false;
  private retry?: NodeJS.Timeout;

  private constructor(
    private readonly kc: KubeConfig,
    private readonly o: FakeKubeletOptions,
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
    this.nodeName = o.nodeName ?? FAKE_NODE;
    this.maxGraceMs = o.maxGraceMs ?? 10_000;
    this.log = o.log ?? (() => {});
  }

  static async start(o: FakeKubeletOptions): Promise<FakeKubelet> {
    const kc = new KubeConfig();
    kc.loadFromFile(o.kubeconfig);
    const k = new FakeKubelet(kc, o);
    await k.registerNode();
    await k.watch();
    return k;
  }

  /** Names of the pods whose process is alive now. */
  running(): string[] {
    return [...this.runs.values()].filter((r) => r.proc && r.proc.exitCode === null && r.proc.signalCode === null).map((r) => r.name).sort();
  }

  /** The pid of a pod's live process, if it has one. */
  pid(podName: string): number | undefined {
    return [...this.runs.values()].find((r) => r.name === podName && r.proc?.exitCode === null && r.proc.signalCode === null)?.proc?.pid;
  }

  /** The stderr lines (JSON log lines of `propeller proplet`) of a pod's processes. */
  logs(podName: string): string[] {
    return [...this.runs.values()].filter((r) => r.name === podName).flatMap((r) => r.lines);
  }

  /** Stops watching and kills every process (SIGTERM, then SIGKILL); the pods stay as they are. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
    await this.informer?.stop();
    await Promise.all(
      [...this.runs.values()].map(async (r) => {
        r.ending = true;
        if (r.timer) clearTimeout(r.timer);
        if (r.proc) await kill(r.proc, 2000);
      }),
    );
  }

  private async registerNode(): Promise<void> {
    const name = this.nodeName;
    try {
      await this.core.createNode({ body: { apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { 'kubernetes.io/hostname': name, 'propeller.absmach.fr/fake-kubelet': 'true' } } } });
    } catch (e) {
      if ((e as { code?: number }).code !== 409) throw e;
    }
    const now = new Date().toISOString();
    const status = {
      conditions: [{ type: 'Ready', status: 'True', reason: 'FakeKubeletReady', message: 'the fake kubelet of the tests runs pods as local processes', lastHeartbeatTime: now, lastTransitionTime: now }],
      addresses: [{ type: 'InternalIP', address: '127.0.0.1' }, { type: 'Hostname', address: name }],
    };
    await this.core.patchNodeStatus({ name, body: { status } }, MERGE_PATCH);
  }

  private async watch(): Promise<void> {
    const { namespace, labelSelector } = this.o;
    const informer = makeInformer<V1Pod>(this.kc, `/api/v1/namespaces/${namespace}/pods`, () => this.core.listNamespacedPod({ namespace, labelSelector }), labelSelector);
    informer.on('add', (pod) => this.enqueue(pod, (r) => this.sync(r, pod)));
    informer.on('update', (pod) => this.enqueue(pod, (r) => this.sync(r, pod)));
    informer.on('delete', (pod) => this.enqueue(pod, (r) => this.gone(r)));
    // the informer stops on an error: start it again, as a kubelet keeps watching
    informer.on('error', (err) => {
      if (this.stopped) return;
      this.log('watch error, restarting', { error: String((err as Error)?.message ?? err) });
      this.retry = setTimeout(() => void informer.start().catch(() => {}), 500);
    });
    this.informer = informer;
    await informer.start();
  }

  /** Runs `step` after the pod's earlier steps; a pod is handled by one step at a time. */
  private enqueue(pod: V1Pod, step: (r: PodRun) => Promise<void>): void {
    const uid = pod.metadata?.uid;
    if (!uid || this.stopped) return;
    if (pod.spec?.nodeName && pod.spec.nodeName !== this.nodeName) return;
    let r = this.runs.get(uid);
    if (!r) {
      r = { uid, name: pod.metadata!.name!, lines: [], restarts: 0, ending: false, chain: Promise.resolve() };
      this.runs.set(uid, r);
    }
    const run = r;
    run.chain = run.chain
      .then(() => step(run))
      .catch((e) => this.log('pod step failed', { pod: run.name, error: (e as Error).message }));
  }

  private async sync(r: PodRun, pod: V1Pod): Promise<void> {
    if (r.ending) return;
    if (pod.metadata?.deletionTimestamp) return this.terminate(r, pod);
    if (!pod.spec?.nodeName) await this.bind(pod);
    if (!r.proc && !r.timer) await this.startContainer(r, pod);
  }

  private async bind(pod: V1Pod): Promise<void> {
    const { name, namespace } = pod.metadata as { name: string; namespace: string };
    const body = { apiVersion: 'v1', kind: 'Binding', metadata: { name, namespace }, target: { apiVersion: 'v1', kind: 'Node', name: this.nodeName } };
    try {
      await this.core.createNamespacedPodBinding({ name, namespace, body });
    } catch (e) {
      // 409: bound already; anything else the next event retries
      if ((e as { code?: number }).code !== 409) throw e;
    }
  }

  private container(pod: V1Pod): V1Container {
    return pod.spec!.containers.find((c) => c.name === 'proplet') ?? pod.spec!.containers[0]!;
  }

  /** The container's env, resolved as a kubelet resolves it. */
  private async resolveEnv(pod: V1Pod, c: V1Container): Promise<Record<string, string>> {
    const namespace = pod.metadata!.namespace!;
    const secrets = new Map<string, Record<string, string> | undefined>();
    const configMaps = new Map<string, Record<string, string> | undefined>();
    const readSecret = async (name: string) => {
      if (!secrets.has(name)) {
        const s = await this.core.readNamespacedSecret({ name, namespace }).catch((e) => ((e as { code?: number }).code === 404 ? undefined : Promise.reject(e)));
        secrets.set(name, s ? Object.fromEntries(Object.entries(s.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')])) : undefined);
      }
      return secrets.get(name);
    };
    const readConfigMap = async (name: string) => {
      if (!configMaps.has(name)) {
        const m = await this.core.readNamespacedConfigMap({ name, namespace }).catch((e) => ((e as { code?: number }).code === 404 ? undefined : Promise.reject(e)));
        configMaps.set(name, m ? (m.data ?? {}) : undefined);
      }
      return configMaps.get(name);
    };
    const keyOf = async (kind: 'secret' | 'configmap', ref: { name?: string; key: string; optional?: boolean }): Promise<string | undefined> => {
      const data = kind === 'secret' ? await readSecret(ref.name!) : await readConfigMap(ref.name!);
      const v = data?.[ref.key];
      if (v === undefined && !ref.optional) throw new ContainerConfigError(`${kind} ${ref.name}${data ? ` has no key ${ref.key}` : ' not found'}`);
      return v;
    };

    const env: Record<string, string> = {};
    for (const from of c.envFrom ?? []) {
      const ref = from.secretRef ?? from.configMapRef;
      if (!ref?.name) continue;
      const data = from.secretRef ? await readSecret(ref.name) : await readConfigMap(ref.name);
      if (!data && !ref.optional) throw new ContainerConfigError(`${from.secretRef ? 'secret' : 'configmap'} ${ref.name} not found`);
      for (const [k, v] of Object.entries(data ?? {})) env[`${from.prefix ?? ''}${k}`] = v;
    }
    for (const e of c.env ?? []) {
      let v: string | undefined;
      const f = e.valueFrom;
      if (!f) v = expandVars(e.value ?? '', env);
      else if (f.fieldRef) v = podField(pod, f.fieldRef.fieldPath);
      else if (f.secretKeyRef) v = await keyOf('secret', f.secretKeyRef);
      else if (f.configMapKeyRef) v = await keyOf('configmap', f.configMapKeyRef);
      else throw new ContainerConfigError(`env ${e.name}: only value, fieldRef, secretKeyRef and configMapKeyRef are supported by the fake kubelet`);
      if (v !== undefined) env[e.name] = v;
    }
    return env;
  }

  /** `propeller` arguments: the container's command and args, $(VAR)-expanded, without the leading `propeller`. */
  private argv(c: V1Container, env: Record<string, string>): string[] {
    const all = [...(c.command ?? ['propeller', ...(c.args ? [] : ['proplet'])]), ...(c.args ?? [])].map((a) => expandVars(a, env));
    if (all[0] !== 'propeller') throw new ContainerConfigError(`the fake kubelet runs only the propeller command, not ${JSON.stringify(all[0])}`);
    return all.slice(1);
  }

  private async startContainer(r: PodRun, pod: V1Pod): Promise<void> {
    const c = this.container(pod);
    let env: Record<string, string>;
    let args: string[];
    try {
      env = await this.resolveEnv(pod, c);
      args = this.argv(c, env);
    } catch (e) {
      if (!(e instanceof ContainerConfigError)) throw e;
      await this.patchStatus(pod, { waiting: { reason: 'CreateContainerConfigError', message: e.message } }, r.restarts);
      this.later(r, pod, 1000);
      return;
    }
    const proc = spawn(process.execPath, [BIN, ...args], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...(process.env.HOME ? { HOME: process.env.HOME } : {}), ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    r.proc = proc;
    let buf = '';
    proc.stderr!.on('data', (d) => {
      buf += d;
      const parts = buf.split('\n');
      buf = parts.pop()!;
      r.lines.push(...parts);
      if (r.lines.length > LOG_LINES) r.lines.splice(0, r.lines.length - LOG_LINES);
    });
    const startedAt = new Date().toISOString();
    proc.once('exit', (code, signal) => {
      // after gone() the run is no longer the pod's: nothing to restart
      if (this.runs.get(r.uid) !== r) return;
      r.chain = r.chain.then(() => this.exited(r, pod, code ?? (signal ? 137 : 1), startedAt)).catch((e) => this.log('pod step failed', { pod: r.name, error: (e as Error).message }));
    });
    this.log('pod started', { pod: r.name, pid: proc.pid, args });
    await this.patchStatus(pod, { running: { startedAt } }, r.restarts);
  }

  /** The process ended without the pod being deleted: restart it as restartPolicy says. */
  private async exited(r: PodRun, pod: V1Pod, exitCode: number, startedAt: string): Promise<void> {
    r.proc = undefined;
    if (r.ending) return;
    const policy = pod.spec?.restartPolicy ?? 'Always';
    const terminated = { exitCode, reason: exitCode === 0 ? 'Completed' : 'Error', startedAt, finishedAt: new Date().toISOString() };
    this.log('pod process exited', { pod: r.name, exitCode, tail: r.lines.slice(-3) });
    if (policy === 'Never' || (policy === 'OnFailure' && exitCode === 0)) {
      await this.patchStatus(pod, { terminated }, r.restarts, exitCode === 0 ? 'Succeeded' : 'Failed');
      return;
    }
    r.restarts++;
    await this.patchStatus(pod, { waiting: { reason: 'CrashLoopBackOff', message: `exited with ${exitCode}` } }, r.restarts, 'Running', terminated);
    this.later(r, pod, Math.min(10_000, 250 * 2 ** r.restarts));
  }

  /** Tries to start the container again after `ms`, with the pod as the API has it then. */
  private later(r: PodRun, pod: V1Pod, ms: number): void {
    r.timer = setTimeout(() => {
      r.timer = undefined;
      const fresh = this.informer?.get(pod.metadata!.name!, pod.metadata!.namespace) ?? pod;
      if (fresh.metadata?.uid === r.uid) this.enqueue(fresh, (run) => this.sync(run, fresh));
    }, ms);
  }

  /** Graceful deletion: SIGTERM, SIGKILL after the grace period, then the pod is removed for good. */
  private async terminate(r: PodRun, pod: V1Pod): Promise<void> {
    r.ending = true;
    if (r.timer) clearTimeout(r.timer);
    const graceMs = Math.min(this.maxGraceMs, (pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000);
    if (r.proc) await kill(r.proc, graceMs);
    this.log('pod stopped', { pod: r.name });
    const { name, namespace } = pod.metadata as { name: string; namespace: string };
    await this.core.deleteNamespacedPod({ name, namespace, gracePeriodSeconds: 0, body: { gracePeriodSeconds: 0, preconditions: { uid: r.uid } } }).catch((e) => {
      // 404: gone already; 409: the name is another pod's now
      if (![404, 409].includes((e as { code?: number }).code ?? 0)) throw e;
    });
  }

  /** The pod object is gone from the API: nothing of it may keep running. */
  private async gone(r: PodRun): Promise<void> {
    r.ending = true;
    if (r.timer) clearTimeout(r.timer);
    if (r.proc) await kill(r.proc, 0);
    this.runs.delete(r.uid);
  }

  private async patchStatus(pod: V1Pod, state: object, restartCount: number, phase = 'Running', lastTerminated?: object): Promise<void> {
    const now = new Date().toISOString();
    const c = this.container(pod);
    const ready = 'running' in state;
    const cond = (type: string, ok: boolean) => ({ type, status: ok ? 'True' : 'False', lastTransitionTime: now });
    const status = {
      phase,
      conditions: [cond('PodScheduled', true), cond('Initialized', true), cond('ContainersReady', ready), cond('Ready', ready)],
      hostIP: '127.0.0.1',
      podIP: '127.0.0.1',
      podIPs: [{ ip: '127.0.0.1' }],
      startTime: pod.status?.startTime ?? now,
      containerStatuses: [
        { name: c.name, image: c.image ?? '', imageID: '', ready, started: ready, restartCount, state, ...(lastTerminated ? { lastState: { terminated: lastTerminated } } : {}) },
      ],
    };
    const { name, namespace } = pod.metadata as { name: string; namespace: string };
    // the uid in the patch makes it fail (422) on a newer pod of the same name
    await this.core.patchNamespacedPodStatus({ name, namespace, body: { metadata: { uid: pod.metadata!.uid }, status } }, MERGE_PATCH).catch((e) => {
      if (![404, 409, 422].includes((e as { code?: number }).code ?? 0)) throw e;
    });
  }
}
