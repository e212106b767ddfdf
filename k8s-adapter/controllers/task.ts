// WasmTask (propeller.absmach.io) and Task (propeller.absmach.fr): each
// resource is one control-plane task, created and started through the HTTP
// API, its state mirrored into status until it ends.
//
// Idempotent across restarts: the task's id is kept in status.taskId and the
// task carries the resource's uid as a label, so an adapter that died between
// creating the task and writing status finds it again instead of creating a
// second one. A finished task's status is final. Deleting the resource stops
// its task and deletes it in the control plane (finalizer).
//
// WasmTask `spec.execution: job`: the task is pinned to a proplet of its own,
// run by a batch/v1 Job (`propeller proplet`, its settings in a ConfigMap and
// its MQTT password in a Secret, all three owned by the WasmTask). When the
// task ends the adapter deletes the Job (a node proplet does not exit by
// itself) and revokes the proplet's credentials.

import type { V1Job, V1ResourceRequirements } from '@kubernetes/client-node';
import { ApiError, type ControlPlaneClient, type TaskSpec as ControlPlaneTaskSpec } from '../../control-plane/client.ts';
import type { AdapterContext } from '../adapter.ts';
import { setCondition, type ConditionInput } from '../runtime/conditions.ts';
import type { Controller, ReconcileResult } from '../runtime/controller.ts';
import { isConflict, isNotFound, kubeTime } from '../runtime/kube.ts';
import { writeStatus } from '../runtime/status.ts';
import { TASK, WASM_TASK, type ObjectReference, type OwnerReference, type Task, type TaskPhase, type TaskStatus, type WasmTask } from '../types.ts';

export type TaskResource = WasmTask | Task;
type ControlPlaneTask = Awaited<ReturnType<ControlPlaneClient['getTask']>>;

/** Labels of the control-plane task: the resource it belongs to. */
export const UID_LABEL = 'propeller.absmach.io/uid';
export const RESOURCE_LABEL = 'propeller.absmach.io/resource';
const MANAGED_BY = { 'app.kubernetes.io/managed-by': 'propeller-k8s-adapter' };
const TERMINAL: ReadonlySet<string> = new Set<TaskPhase>(['Completed', 'Failed', 'Stopped']);
/** Longest stdout/stderr kept in status (etcd objects are small). */
const MAX_OUTPUT = 16 * 1024;

export const wasmTaskController = (ctx: AdapterContext) => taskControllerOf(ctx, WASM_TASK);
export const hybridTaskController = (ctx: AdapterContext) => taskControllerOf(ctx, TASK);

// --- spec ------------------------------------------------------------------------

/** The control-plane task a resource asks for, or what is wrong with its spec. */
export function controlPlaneSpec(obj: TaskResource): { spec: ControlPlaneTaskSpec } | { invalid: string } {
  const s = obj.spec ?? {};
  const file = s.file?.replace(/\s/g, '');
  const image = s.imageUrl?.trim();
  if (!file && !image) return { invalid: 'spec has no module: set imageUrl (oci://, http(s)://) or file (the module, base64)' };
  if (file && !/^[A-Za-z0-9+/]*={0,2}$/.test(file)) return { invalid: 'spec.file is not base64' };
  const spec: ControlPlaneTaskSpec = {
    name: (obj.kind === 'Task' ? obj.spec.name : undefined) || obj.metadata.name!,
    // file takes precedence (seed 000); a reference without a scheme is an OCI one (seed 004: registry.example.com/hello-wasm:latest)
    ...(file ? { file } : { image_url: /^[a-z][a-z0-9+.-]*:\/\//i.test(image!) ? image! : `oci://${image}` }),
    cli_args: s.cliArgs ?? [],
    inputs: s.inputs ?? [],
    env: s.env ?? {},
    daemon: s.daemon ?? false,
    labels: controlPlaneLabels(obj),
  };
  if (obj.kind === 'WasmTask') {
    const w = obj.spec;
    if (w.propletId) spec.proplet_id = w.propletId;
    if (w.propletGroupRef?.name) spec.proplet_group = w.propletGroupRef.name;
    const r = w.resources?.requests ?? w.resources?.limits;
    if (r?.cpu !== undefined || r?.memory !== undefined) spec.resources = { ...(r.cpu !== undefined ? { cpu: r.cpu } : {}), ...(r.memory !== undefined ? { memory: r.memory } : {}) };
  } else {
    const t = obj.spec;
    if (t.preferredPropletType) spec.preferred_proplet_type = t.preferredPropletType;
    const sel = t.propletSelector;
    if (sel) {
      spec.proplet_selector = {
        ...(sel.matchDeviceTypes ? { match_device_types: sel.matchDeviceTypes } : {}),
        ...(sel.matchCapabilities ? { match_capabilities: sel.matchCapabilities } : {}),
        ...(sel.matchLabels ? { match_labels: sel.matchLabels } : {}),
      };
    }
    if (t.resourceRequirements) spec.resources = t.resourceRequirements;
  }
  return { spec };
}

/** The resource's own labels (at most 60) and the three that say which resource the task is. */
function controlPlaneLabels(obj: TaskResource): Record<string, string> {
  const own = Object.entries(obj.metadata.labels ?? {}).slice(0, 60);
  return { ...Object.fromEntries(own), [UID_LABEL]: obj.metadata.uid!, [RESOURCE_LABEL]: `${obj.kind}/${obj.metadata.namespace}/${obj.metadata.name}` };
}

// --- status ------------------------------------------------------------------------

function readyOf(t: ControlPlaneTask, job?: JobObjects): ConditionInput {
  const on = t.proplet_id ?? t.result?.proplet_id;
  const c = (status: 'True' | 'False', reason: string, message: string): ConditionInput => ({ type: 'Ready', status, reason, message });
  switch (t.state) {
    case 'Pending':
      if (job) {
        const why = t.pending_reason && !t.pending_reason.includes(job.propletId) ? `: ${t.pending_reason}` : '';
        return c('False', 'WaitingForJob', `waiting for Job ${job.ref.name} to run proplet ${job.propletId}${why}`);
      }
      return c('False', 'Pending', t.pending_reason ?? 'waiting for a proplet');
    case 'Scheduled':
      return c('False', 'Scheduled', `placed on proplet ${on}, starting`);
    case 'Running':
      return c('True', 'Running', `running on proplet ${on}`);
    case 'Completed':
      return c('True', 'Completed', `completed on proplet ${on}`);
    case 'Failed':
      return c('False', 'TaskFailed', t.error ?? t.result?.error ?? 'failed');
    case 'Stopped':
      return c('False', 'Stopped', 'stopped in the control plane');
  }
}

function statusOf(obj: TaskResource, t: ControlPlaneTask, job?: JobObjects): TaskStatus {
  const r = t.result;
  const cap = (s?: string) => (s && s.length > MAX_OUTPUT ? `${s.slice(0, MAX_OUTPUT)}\n[truncated: ${s.length} characters]` : s);
  const results = r ? { value: r.results, stdout: cap(r.stdout) || undefined, stderr: cap(r.stderr) || undefined, durationMs: r.duration_ms !== undefined ? Math.round(r.duration_ms) : undefined } : undefined;
  const status: TaskStatus = {
    phase: t.state,
    taskId: t.id,
    propletId: t.proplet_id ?? r?.proplet_id,
    jobRef: job?.ref,
    startTime: t.started_at ? kubeTime(t.started_at) : undefined,
    finishTime: t.finished_at ? kubeTime(t.finished_at) : undefined,
    results: results && Object.values(results).some((v) => v !== undefined) ? results : undefined,
    exitCode: r?.exit_code,
    error: t.error ?? r?.error,
    conditions: setCondition(obj.status?.conditions, readyOf(t, job), obj.metadata.generation),
  };
  return JSON.parse(JSON.stringify(status)) as TaskStatus;
}

// --- the controller ----------------------------------------------------------------

function taskControllerOf(ctx: AdapterContext, kind: typeof WASM_TASK | typeof TASK): Controller<TaskResource> {
  const { cp, events, kube } = ctx;

  /** The resource's control-plane task: by status.taskId, else by the uid label (an adapter that died before writing status). */
  async function findTask(obj: TaskResource): Promise<ControlPlaneTask | undefined> {
    const id = obj.status?.taskId;
    if (id) {
      try {
        return await cp.getTask(id);
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) throw e;
      }
    }
    return (await cp.tasksLabelled({ [UID_LABEL]: obj.metadata.uid! }))[0];
  }

  async function invalid(obj: TaskResource, message: string): Promise<ReconcileResult> {
    const status: TaskStatus = {
      phase: 'Failed',
      error: message,
      conditions: setCondition(obj.status?.conditions, { type: 'Ready', status: 'False', reason: 'InvalidSpec', message }, obj.metadata.generation),
    };
    if (await writeStatus(kube, kind, obj, status)) await events.record(obj, 'Warning', 'InvalidSpec', message);
    return {};
  }

  async function phaseEvents(obj: TaskResource, before: TaskStatus | undefined, now: TaskStatus): Promise<void> {
    const was = before?.phase;
    if (was === now.phase) return;
    const on = now.propletId ? ` on proplet ${now.propletId}` : '';
    if ((now.phase === 'Running' || now.phase === 'Completed') && was !== 'Running') await events.record(obj, 'Normal', 'TaskStarted', `task ${now.taskId} started${on}`);
    if (now.phase === 'Completed') await events.record(obj, 'Normal', 'TaskCompleted', `task ${now.taskId} completed${on}${now.exitCode !== undefined ? ` (exit code ${now.exitCode})` : ''}`);
    if (now.phase === 'Failed') await events.record(obj, 'Warning', 'TaskFailed', `task ${now.taskId} failed${on}: ${now.error ?? 'no reason given'}`);
    if (now.phase === 'Stopped') await events.record(obj, 'Normal', 'TaskStopped', `task ${now.taskId} was stopped`);
  }

  return {
    kind,
    async reconcile(obj) {
      const before = obj.status;
      // a finished task's status is final; a later spec change is not run again
      if (before?.taskId && TERMINAL.has(before.phase ?? '')) {
        await writeStatus(kube, kind, obj, before);
        return {};
      }
      const ready = before?.conditions?.find((c) => c.type === 'Ready');
      if (before && !before.taskId && ready?.reason === 'InvalidSpec' && before.observedGeneration === obj.metadata.generation) return {};

      const jobMode = obj.kind === 'WasmTask' && obj.spec.execution === 'job';
      let task = await findTask(obj);
      if (before?.taskId && task?.id !== before.taskId) await events.record(obj, 'Warning', 'TaskLost', `control-plane task ${before.taskId} is gone; ${task ? `using ${task.id}` : 'creating it again'}`);
      // the spec matters until the task exists, and in job mode until its proplet runs it (a Job deleted meanwhile is made again)
      const want = !task || (jobMode && task.state === 'Pending') ? controlPlaneSpec(obj) : undefined;
      if (!task && want && 'invalid' in want) return invalid(obj, want.invalid);
      const valid = want && 'spec' in want ? want.spec : undefined;
      // job mode: the task is pinned to the Job's proplet, whose id is known before the Job exists
      let job = jobMode ? jobObjectsOf(obj as WasmTask) : undefined;
      if (valid && job) valid.proplet_id = job.propletId;
      if (!task) {
        const spec = valid!;
        try {
          task = await cp.createTask(spec, { start: true });
        } catch (e) {
          if (e instanceof ApiError && e.status === 400) return invalid(obj, `the control plane refused the task: ${e.message}`);
          throw e;
        }
        await events.record(obj, 'Normal', 'TaskCreated', `control-plane task ${task.id} created${job ? ` for the proplet of Job ${job.ref.name}` : ''}`);
      }
      if (job && valid && task.state === 'Pending') job = await ensureJobObjects(ctx, obj as WasmTask, valid);
      // the Job's proplet runs with --once and exits by itself; its credentials are no longer needed
      if (job && TERMINAL.has(task.state)) await revokeJobProplet(ctx, obj as WasmTask);
      const now = statusOf(obj, task, job);
      if (job && !now.jobRef?.uid && before?.jobRef) now.jobRef = before.jobRef;
      if (await writeStatus(kube, kind, obj, now)) await phaseEvents(obj, before, now);
      return TERMINAL.has(task.state) ? {} : { requeueAfterMs: ctx.pollMs };
    },

    async finalize(obj) {
      const task = await findTask(obj);
      if (task) {
        if (!TERMINAL.has(task.state)) {
          await cp.stopTask(task.id).catch((e) => {
            if (!(e instanceof ApiError && (e.status === 409 || e.status === 404))) throw e;
          });
          await events.record(obj, 'Normal', 'TaskStopped', `control-plane task ${task.id} stopped: the ${obj.kind} is being deleted`);
        }
        await cp.deleteTask(task.id).catch((e) => {
          if (!(e instanceof ApiError && e.status === 404)) throw e;
        });
      }
      if (obj.kind === 'WasmTask' && obj.spec.execution === 'job') await revokeJobProplet(ctx, obj);
      return {};
    },
  };
}

// --- execution: job ------------------------------------------------------------------

interface JobObjects {
  ref: ObjectReference;
  propletId: string;
}

/** Settings of the Jobs' proplets: how a pod reaches the broker, and the image that has `propeller`. */
export interface JobModeConfig {
  image: string;
  broker: string;
  domain: string;
  channel: string;
}

const jobPropletId = (obj: WasmTask) => `k8s-job-${obj.metadata.uid}`;

/** NAME-job (the seed's `kubectl logs job/hello-wasm-job`), shortened to fit a label value. */
function jobName(obj: WasmTask): string {
  const n = `${obj.metadata.name}-job`;
  return n.length <= 63 ? n : `${obj.metadata.name!.slice(0, 50).replace(/[-.]+$/, '')}-${obj.metadata.uid!.slice(0, 8)}-job`;
}

function jobObjectsOf(obj: WasmTask, uid?: string): JobObjects {
  const ref: ObjectReference = { apiVersion: 'batch/v1', kind: 'Job', namespace: obj.metadata.namespace, name: jobName(obj), ...(uid ? { uid } : {}) };
  return { ref, propletId: jobPropletId(obj) };
}

function ownerOf(obj: WasmTask): OwnerReference {
  return { apiVersion: obj.apiVersion, kind: obj.kind, name: obj.metadata.name!, uid: obj.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

/** Creates what is missing of the Secret, ConfigMap and Job of a job-mode WasmTask. */
async function ensureJobObjects(ctx: AdapterContext, obj: WasmTask, spec: ControlPlaneTaskSpec): Promise<JobObjects> {
  const { core, batch } = ctx.kube;
  const namespace = obj.metadata.namespace!;
  const name = jobName(obj);
  const propletId = jobPropletId(obj);
  const labels = { ...MANAGED_BY, [UID_LABEL]: obj.metadata.uid! };
  const metadata = { name, namespace, labels, ownerReferences: [ownerOf(obj)] };
  const absent = (read: Promise<unknown>) =>
    read.then(
      () => false,
      (e) => {
        if (isNotFound(e)) return true;
        throw e;
      },
    );
  const ignoreExists = (e: unknown) => {
    if (!isConflict(e)) throw e;
  };

  // the proplet's MQTT password, issued once (absent when an external broker manages accounts)
  if (await absent(core.readNamespacedSecret({ name, namespace }))) {
    let secret: string | undefined;
    try {
      secret = (await ctx.cp.addProplet(propletId, { rotate: true })).secret; // issued only while its Secret is absent: a new secret is the intent
    } catch (e) {
      if (!(e instanceof ApiError && e.status === 501)) throw e;
    }
    if (secret) await core.createNamespacedSecret({ namespace, body: { metadata, type: 'Opaque', stringData: { PROPLET_SECRET: secret } } }).catch(ignoreExists);
  }
  if (await absent(core.readNamespacedConfigMap({ name, namespace }))) {
    const shown = spec.file ? { ...spec, file: `(inline module of ${Buffer.from(spec.file, 'base64').length} bytes: see the WasmTask)` } : spec;
    const data = {
      PROPLET_ID: propletId,
      PROPLET_TYPE: 'k8s',
      PROPLET_MAX_TASKS: '1',
      MQTT_BROKER: ctx.job.broker,
      PROPELLER_DOMAIN_ID: ctx.job.domain,
      PROPELLER_CHANNEL_ID: ctx.job.channel,
      'task.json': JSON.stringify(shown, null, 2),
    };
    await core.createNamespacedConfigMap({ namespace, body: { metadata, data } }).catch(ignoreExists);
  }
  let job: V1Job;
  try {
    job = await batch.readNamespacedJob({ name, namespace });
  } catch (e) {
    if (!isNotFound(e)) throw e;
    job = await batch.createNamespacedJob({ namespace, body: jobSpec(ctx, obj, metadata) }).catch(async (err) => {
      if (!isConflict(err)) throw err;
      return batch.readNamespacedJob({ name, namespace });
    });
  }
  return jobObjectsOf(obj, job.metadata?.uid);
}

function jobSpec(ctx: AdapterContext, obj: WasmTask, metadata: { name: string; namespace: string; labels: Record<string, string>; ownerReferences: OwnerReference[] }): V1Job {
  const str = (r?: Record<string, string | number>) => (r ? Object.fromEntries(Object.entries(r).map(([k, v]) => [k, String(v)])) : undefined);
  const resources: V1ResourceRequirements = JSON.parse(JSON.stringify({ requests: str(obj.spec.resources?.requests), limits: str(obj.spec.resources?.limits) }));
  const name = metadata.name;
  return {
    apiVersion: 'batch/v1',
    kind: 'Job',
    metadata,
    spec: {
      backoffLimit: 0,
      template: {
        metadata: { labels: metadata.labels },
        spec: {
          restartPolicy: obj.spec.restartPolicy === 'OnFailure' ? 'OnFailure' : 'Never',
          containers: [
            {
              name: 'proplet',
              image: ctx.job.image,
              command: ['propeller'],
              args: ['proplet', '--once'],
              envFrom: [{ configMapRef: { name } }],
              env: [{ name: 'PROPLET_SECRET', valueFrom: { secretKeyRef: { name, key: 'PROPLET_SECRET', optional: true } } }],
              resources,
              volumeMounts: [{ name: 'task', mountPath: '/etc/propeller', readOnly: true }],
            },
          ],
          volumes: [{ name: 'task', configMap: { name, items: [{ key: 'task.json', path: 'task.json' }] } }],
        },
      },
    },
  };
}

async function revokeJobProplet(ctx: AdapterContext, obj: WasmTask): Promise<void> {
  await ctx.cp.removeProplet(jobPropletId(obj)).catch((e) => {
    if (!(e instanceof ApiError && (e.status === 404 || e.status === 501))) throw e;
  });
}
