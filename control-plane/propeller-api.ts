// The Go manager's HTTP API, as Propeller's CLI and SDK call it (absmach/propeller
// manager/api/transport.go, pkg/sdk), under /manager: point the CLI's
// `manager_url` at http://HOST:7070/manager. Same tasks and proplets as our own
// API; only the shapes differ: task `state` is a number (Pending 0, Scheduled 1,
// Running 2, Completed 3, Failed 4, Interrupted 6 for a stopped task), `inputs`
// are strings, times are RFC 3339 with Go's zero time for "never", lists are
// {offset, limit, total, tasks|proplets}, a delete answers 204 with no body.
//
// Auth: Propeller's CLI sends no header of its own, but Go's HTTP client sends
// Basic auth from a URL's user info, so http://propeller:TOKEN@HOST:7070/manager
// carries the API token (HttpApi takes it as the password of Basic auth).

import type { IncomingMessage } from 'node:http';
import type { HttpApi } from './http-api.ts';
import { HttpError, RawBody } from './http-api.ts';
import type { Proplet, Task, TaskState } from './model.ts';
import type { Registry } from './registry.ts';
import { parseTaskInput, type TaskInput } from './task-input.ts';
import type { TaskService } from './tasks.ts';

export const MANAGER_PREFIX = '/manager';

const GO_ZERO_TIME = '0001-01-01T00:00:00Z';
/** pkg/task State: Pending, Scheduled, Running, Completed, Failed, Skipped, Interrupted. */
const STATE: Record<TaskState, number> = { Pending: 0, Scheduled: 1, Running: 2, Completed: 3, Failed: 4, Stopped: 6 };

/** Fields the Go SDK sends that have no meaning here when empty; refused when set, so nothing is silently ignored. */
const IGNORED_WHEN_EMPTY = ['kind', 'mode', 'latent', 'encrypted', 'kbs_resource_path', 'broadcast', 'priority', 'metadata', 'depends_on', 'run_if', 'workflow_id', 'job_id', 'is_recurring', 'monitoring_profile', 'hal_storage_path', 'next_run'];
const EMPTY_OK: Record<string, unknown[]> = { kind: ['standard', ''], mode: [''], priority: [0], is_recurring: [false], next_run: [GO_ZERO_TIME] };

/** A task as the Go manager returns it (pkg/task Task). */
export function goTask(t: Task): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: t.id,
    name: t.name,
    kind: 'standard',
    state: STATE[t.state],
    cli_args: t.cli_args,
    inputs: t.inputs.map((x) => (typeof x === 'string' ? x : String(x))),
    daemon: t.daemon,
    encrypted: false,
    start_time: t.started_at ?? t.attempts.at(-1)?.started_at ?? GO_ZERO_TIME,
    finish_time: t.finished_at ?? GO_ZERO_TIME,
    created_at: t.created_at,
    updated_at: t.updated_at,
    next_run: GO_ZERO_TIME,
  };
  if (t.image_url) out.image_url = t.image_url;
  if (Object.keys(t.env).length) out.env = t.env;
  const proplet = t.proplet_id ?? t.pinned_proplet_id;
  if (proplet) out.proplet_id = proplet;
  if (t.result?.results !== undefined) out.results = t.result.results;
  if (t.error) out.error = t.error;
  if (t.schedule) out.schedule = t.schedule;
  if (t.timezone) out.timezone = t.timezone;
  return out;
}

/** A proplet as the Go manager lists it (pkg/proplet Proplet, and the SDK's last_alive_at). */
export function goProplet(p: Proplet, taskCount: number): Record<string, unknown> {
  return {
    id: p.id,
    name: p.name,
    task_count: taskCount,
    alive: p.state === 'alive',
    alive_at: p.alive_history,
    last_alive_at: p.last_seen,
    metadata: { wasm_runtime: p.wasm_runtime ?? '', os: '', environment: p.device_type },
  };
}

/** A Go SDK task body as our task input: its zero values dropped, anything it sets that we cannot do refused. */
export function fromGoTask(body: unknown, partial: boolean): Partial<TaskInput> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new HttpError(400, 'body: must be an object', 'body');
  const o = { ...(body as Record<string, unknown>) };
  for (const k of IGNORED_WHEN_EMPTY) {
    const v = o[k];
    const empty = v === undefined || v === null || v === false || v === '' || (Array.isArray(v) && v.length === 0) || (typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0) || EMPTY_OK[k]?.includes(v);
    if (!empty) throw new HttpError(400, `${k}: not supported by this manager`, k);
    delete o[k];
  }
  // Go's zero values for what we would otherwise validate
  if (o.state === 0) delete o.state;
  for (const k of ['image_url', 'file', 'proplet_id', 'schedule', 'timezone']) if (o[k] === '') delete o[k];
  return parseTaskInput(o, partial);
}

function page(url: URL, dflt: number): { offset: number; limit: number } {
  const num = (name: string, d: number) => {
    const v = url.searchParams.get(name);
    if (v === null) return d;
    if (!/^\d{1,9}$/.test(v)) throw new HttpError(400, `${name}: must be a non-negative integer`, name);
    return Number(v);
  };
  return { offset: num('offset', 0), limit: num('limit', dflt) };
}

const NO_CONTENT = new RawBody('application/json', new Uint8Array(0));

/** Mounts the Go manager's routes under /manager. */
export function addPropellerApiRoutes(http: HttpApi, tasks: TaskService, registry: Registry, module: (req: IncomingMessage) => Promise<Uint8Array>): void {
  const P = MANAGER_PREFIX;
  const json = async (req: IncomingMessage): Promise<unknown> => {
    const raw = await http.read(req, 24 * 1024 * 1024);
    if (raw.length === 0) return {};
    try {
      return JSON.parse(raw.toString('utf8'));
    } catch (e) {
      throw new HttpError(400, `body is not valid JSON: ${(e as Error).message}`, 'body');
    }
  };
  http.route('GET', `${P}/health`, () => ({ status: 'pass', version: '0.5.0', commit: '', description: 'propeller-edge control plane (Propeller manager API)', build_time: '', instance_id: '' }));
  http.route('POST', `${P}/tasks`, async (req) => goTask(tasks.create(fromGoTask(await json(req), false) as TaskInput)), 201);
  http.route('GET', `${P}/tasks`, (_req, url) => {
    const { offset, limit } = page(url, 100);
    const all = tasks.list().sort((a, b) => a.created_at.localeCompare(b.created_at));
    return { offset, limit, total: all.length, tasks: all.slice(offset, offset + limit).map(goTask) };
  });
  http.route('GET', `${P}/tasks/{id}`, (_req, _url, [id]) => goTask(tasks.require(id!)));
  http.route('PUT', `${P}/tasks/{id}`, async (req, _url, [id]) => {
    tasks.require(id!);
    return goTask(tasks.update(id!, fromGoTask(await json(req), true)));
  });
  http.route('DELETE', `${P}/tasks/{id}`, (_req, _url, [id]) => {
    tasks.delete(id!);
    return NO_CONTENT;
  }, 204);
  http.route('PUT', `${P}/tasks/{id}/upload`, async (req, _url, [id]) => {
    tasks.require(id!);
    return goTask(tasks.upload(id!, await module(req)));
  });
  http.route('POST', `${P}/tasks/{id}/start`, (_req, _url, [id]) => (tasks.start(id!), { started: true }));
  http.route('POST', `${P}/tasks/{id}/stop`, (_req, _url, [id]) => (tasks.stop(id!), { stopped: true }));
  http.route('GET', `${P}/tasks/{id}/results`, (_req, _url, [id]) => {
    const t = tasks.require(id!);
    return { task_id: t.id, results: t.result?.results ?? null, ...(t.error ? { error: t.error } : {}) };
  });
  http.route('POST', `${P}/tasks/{id}/invoke`, () => {
    throw new HttpError(501, 'invoke (latent tasks) is not supported by this manager');
  });
  http.route('GET', `${P}/proplets`, (_req, url) => {
    const { offset, limit } = page(url, 100);
    const all = registry.list().sort((a, b) => a.id.localeCompare(b.id));
    return { offset, limit, total: all.length, proplets: all.slice(offset, offset + limit).map((p) => goProplet(p, tasks.assigned(p.id))) };
  });
  http.route('GET', `${P}/proplets/{id}`, (_req, _url, [id]) => {
    const p = registry.get(id!);
    if (!p) throw new HttpError(404, `proplet ${id} not found`);
    return goProplet(p, tasks.assigned(p.id));
  });
  http.route('DELETE', `${P}/proplets/{id}`, (_req, _url, [id]) => {
    if (!registry.remove(id!)) throw new HttpError(404, `proplet ${id} not found`);
    return NO_CONTENT;
  }, 204);
}
