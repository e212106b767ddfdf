// A client for the control plane's HTTP API: what the CLI and the Kubernetes
// adapter use. It depends on nothing but fetch and the API's JSON shapes.

import type { FederatedJob, ModelCheckpoint, TrainingRound } from './fl/resources.ts';
import type { GroupStatus } from './groups.ts';
import type { Proplet, PropletGroup, Task } from './model.ts';

export class ApiError extends Error {
  override name = 'ApiError';
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

export interface TaskSpec {
  name: string;
  image_url?: string;
  /** base64 */
  file?: string;
  cli_args?: string[];
  inputs?: (number | string)[];
  env?: Record<string, string>;
  daemon?: boolean;
  proplet_id?: string;
  resources?: { cpu?: string | number; memory?: string | number };
  labels?: Record<string, string>;
  timeout_ms?: number;
  /** Cron expression: the task becomes a schedule that starts a run per firing. */
  schedule?: string;
  timezone?: string;
  concurrency_policy?: 'Allow' | 'Forbid' | 'Replace';
  preferred_proplet_type?: 'k8s' | 'external' | 'any';
  proplet_selector?: { match_device_types?: string[]; match_capabilities?: string[]; match_labels?: Record<string, string> };
  proplet_group?: string;
  /** Seconds a finished task is kept (default: the control plane's, 24 h). */
  ttl_seconds_after_finished?: number;
  /** On a scheduled task: finished runs kept, by outcome (default 3 and 1). */
  successful_runs_history_limit?: number;
  failed_runs_history_limit?: number;
}

export interface GroupInput {
  name: string;
  selector?: { match_labels?: Record<string, string> };
  scheduling?: { algorithm?: PropletGroup['scheduling']['algorithm']; max_tasks_per_proplet?: number };
}

export interface TaskResults {
  task_id: string;
  state: Task['state'];
  error?: string;
  results?: unknown;
  stdout?: string;
  stderr?: string;
  exit_code?: number;
  duration_ms?: number;
  proplet_id?: string;
}

export class ControlPlaneClient {
  constructor(
    readonly baseUrl: string,
    private token?: string,
  ) {}

  async request<T>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const headers: Record<string, string> = {};
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    let payload: BodyInit | undefined;
    if (body instanceof Uint8Array) {
      payload = body as Uint8Array<ArrayBuffer>;
      headers['content-type'] = contentType;
    } else if (body !== undefined) {
      payload = JSON.stringify(body);
      headers['content-type'] = 'application/json';
    }
    let res: Response;
    try {
      const send = () => fetch(new URL(path, this.baseUrl), { method, headers, body: payload });
      // a kept-alive connection the server closed while this process was busy fails once on reuse: a read may be sent again
      res = await send().catch((e: { cause?: { code?: string } }) => {
        if (method === 'GET' && e.cause?.code === 'UND_ERR_SOCKET') return send();
        throw e;
      });
    } catch (e) {
      const cause = (e as { cause?: { code?: string; message?: string } }).cause;
      throw new ApiError(0, `cannot reach the control plane at ${this.baseUrl}: ${cause?.code ?? cause?.message ?? (e as Error).message}`);
    }
    const text = await res.text();
    let json: unknown;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      throw new ApiError(res.status, `control plane answered ${res.status} with a body that is not JSON`);
    }
    if (!res.ok) {
      const err = json as { error?: string; field?: string } | undefined;
      throw new ApiError(res.status, err?.error ?? `HTTP ${res.status}`, err?.field);
    }
    return json as T;
  }

  /** With `start`, the task starts at once; with `waitMs` too, the answer comes when it has finished. */
  createTask(spec: TaskSpec, opts: { start?: boolean; waitMs?: number } = {}) {
    const q = opts.start ? `?start=true${opts.waitMs ? `&wait=${opts.waitMs}ms` : ''}` : '';
    return this.request<Task>('POST', `/tasks${q}`, spec);
  }
  getTask(id: string, waitMs?: number) {
    return this.request<Task>('GET', `/tasks/${encodeURIComponent(id)}${waitMs ? `?wait=${waitMs}ms` : ''}`);
  }
  /** One page, newest first; pass the answer's `continue` back for the next (older) one. */
  listTasks(opts: { state?: string; limit?: number; continue?: string; label?: string[]; proplet?: string } = {}) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(opts)) for (const x of Array.isArray(v) ? v : v === undefined ? [] : [v]) q.append(k, String(x));
    return this.request<{ total?: number; limit: number; tasks: Task[]; continue?: string }>('GET', `/tasks?${q}`);
  }
  updateTask(id: string, patch: Partial<TaskSpec>) {
    return this.request<Task>('PUT', `/tasks/${encodeURIComponent(id)}`, patch);
  }
  deleteTask(id: string) {
    return this.request<{ deleted: string }>('DELETE', `/tasks/${encodeURIComponent(id)}`);
  }
  upload(id: string, wasm: Uint8Array) {
    return this.request<Task>('PUT', `/tasks/${encodeURIComponent(id)}/upload`, wasm, 'application/wasm');
  }
  startTask(id: string) {
    return this.request<Task>('POST', `/tasks/${encodeURIComponent(id)}/start`);
  }
  stopTask(id: string) {
    return this.request<Task>('POST', `/tasks/${encodeURIComponent(id)}/stop`);
  }
  results(id: string, waitMs?: number) {
    return this.request<TaskResults>('GET', `/tasks/${encodeURIComponent(id)}/results${waitMs ? `?wait=${waitMs}ms` : ''}`);
  }
  listProplets() {
    return this.request<{ total: number; proplets: (Proplet & { assigned_tasks: number })[] }>('GET', '/proplets');
  }
  getProplet(id: string) {
    return this.request<Proplet & { assigned_tasks: number }>('GET', `/proplets/${encodeURIComponent(id)}`);
  }
  /** New credentials; an existing proplet's secret is replaced only with `rotate`. */
  addProplet(id: string, opts: { rotate?: boolean } = {}) {
    return this.request<{ proplet_id: string; secret: string }>('POST', '/proplets', { proplet_id: id, ...(opts.rotate ? { rotate: true } : {}) });
  }
  /** The group account PREFIX-* (one secret for every proplet id PREFIX-<anything>); replaced only with `rotate`. */
  addGroupAccount(prefix: string, opts: { rotate?: boolean } = {}) {
    return this.request<{ account: string; secret: string }>('POST', '/group-accounts', { prefix, ...(opts.rotate ? { rotate: true } : {}) });
  }
  /** Revokes the group account PREFIX-* (its proplets are disconnected). */
  removeGroupAccount(prefix: string) {
    return this.request<{ deleted: string }>('DELETE', `/group-accounts/${encodeURIComponent(prefix)}`);
  }
  /** Forgets a proplet and revokes its MQTT credentials. */
  removeProplet(id: string) {
    return this.request<{ deleted: string }>('DELETE', `/proplets/${encodeURIComponent(id)}`);
  }
  /** Every task whose labels include all of `labels`, page by page. */
  async tasksLabelled(labels: Record<string, string>): Promise<Task[]> {
    const out: Task[] = [];
    const label = Object.entries(labels).map(([k, v]) => `${k}=${v}`);
    for (let after: string | undefined; ; ) {
      const page = await this.listTasks({ limit: 1000, label, ...(after ? { continue: after } : {}) });
      out.push(...page.tasks);
      if (!page.continue) return out;
      after = page.continue;
    }
  }
  /** A PropletGroup; answered with its status (the proplets its selector matches). */
  createGroup(group: GroupInput) {
    return this.request<PropletGroup & { status: GroupStatus }>('POST', '/proplet-groups', group);
  }
  getGroup(name: string) {
    return this.request<PropletGroup & { status: GroupStatus }>('GET', `/proplet-groups/${encodeURIComponent(name)}`);
  }
  replaceGroup(name: string, group: Omit<GroupInput, 'name'>) {
    return this.request<PropletGroup & { status: GroupStatus }>('PUT', `/proplet-groups/${encodeURIComponent(name)}`, group);
  }
  deleteGroup(name: string) {
    return this.request<{ deleted: string }>('DELETE', `/proplet-groups/${encodeURIComponent(name)}`);
  }
  health() {
    return this.request<Record<string, unknown>>('GET', '/health');
  }

  /** Stores a module for digest references (an FL job's taskWasmImage: sha256:<hex>). */
  pushModule(wasm: Uint8Array) {
    return this.request<{ digest: string; size: number }>('POST', '/modules', wasm, 'application/wasm');
  }
  /** Stores a model: compact CBOR bytes, or the JSON form as an object. */
  pushModel(model: Uint8Array | object) {
    return model instanceof Uint8Array ? this.request<{ ref: string; size: number }>('POST', '/models', model, 'application/cbor') : this.request<{ ref: string; size: number }>('POST', '/models', model);
  }
  /** A stored model's compact CBOR bytes. */
  async pullModel(ref: string): Promise<Uint8Array> {
    const res = await fetch(new URL(`/models/${encodeURIComponent(ref)}`, this.baseUrl), { headers: this.token ? { authorization: `Bearer ${this.token}` } : {} }).catch((e: Error) => {
      throw new ApiError(0, `cannot reach the control plane at ${this.baseUrl}: ${e.message}`);
    });
    if (!res.ok) throw new ApiError(res.status, ((await res.json().catch(() => ({}))) as { error?: string }).error ?? `HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  }
  /** A FederatedJob manifest (the seed's shape: metadata.name and spec). */
  createFlJob(manifest: object) {
    return this.request<FederatedJob>('POST', '/fl/jobs', manifest);
  }
  getFlJob(name: string) {
    return this.request<FederatedJob>('GET', `/fl/jobs/${encodeURIComponent(name)}`);
  }
  listFlJobs() {
    return this.request<{ total: number; jobs: FederatedJob[] }>('GET', '/fl/jobs');
  }
  deleteFlJob(name: string) {
    return this.request<{ deleted: string }>('DELETE', `/fl/jobs/${encodeURIComponent(name)}`);
  }
  flRounds(job?: string) {
    return this.request<{ total: number; rounds: TrainingRound[] }>('GET', job === undefined ? '/fl/rounds' : `/fl/jobs/${encodeURIComponent(job)}/rounds`);
  }
  getFlRound(name: string) {
    return this.request<TrainingRound>('GET', `/fl/rounds/${encodeURIComponent(name)}`);
  }
  createFlRound(manifest: object) {
    return this.request<TrainingRound>('POST', '/fl/rounds', manifest);
  }
  deleteFlRound(name: string) {
    return this.request<{ deleted: string }>('DELETE', `/fl/rounds/${encodeURIComponent(name)}`);
  }
  getFlCheckpoint(name: string) {
    return this.request<ModelCheckpoint>('GET', `/fl/checkpoints/${encodeURIComponent(name)}`);
  }
  flCheckpoints(job?: string) {
    return this.request<{ total: number; checkpoints: ModelCheckpoint[] }>('GET', `/fl/checkpoints${job ? `?job=${encodeURIComponent(job)}` : ''}`);
  }
}
