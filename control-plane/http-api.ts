// The HTTP API: Propeller's resource paths, JSON in and out. 400 names the
// field, 404 the id, 413 the limit; nothing a client sends can crash it.

import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isId, MAX_INLINE_MODULE, sha256Digest } from '../protocol/index.ts';
import { ConfigError, parseDuration } from './config.ts';
import type { Logger } from './log.ts';
import type { ControlPlaneMetrics } from './metrics.ts';
import { parseGroupInput, type GroupService } from './groups.ts';
import { TERMINAL, type Proplet, type PropletGroup, type Task, type TaskState } from './model.ts';
import type { Registry } from './registry.ts';
import { InputError, isWasm, parseTaskInput, type TaskInput } from './task-input.ts';
import { onProplet, TokenError } from './task-index.ts';
import { TaskError, type TaskService } from './tasks.ts';

export interface HttpApiOptions {
  host?: string;
  port?: number;
  /** JSON bodies (a task with an inline base64 module is the largest). */
  maxBodyBytes?: number;
  maxUploadBytes?: number;
  /**
   * Every request but the open ones (see OPEN below) needs this token, as
   * `Authorization: Bearer <token>` or the session cookie `GET /login` sets.
   * One of `token` or `noAuth: true` is required: the API is never open by omission.
   */
  token?: string;
  /** Serve every route without a token (an explicit, logged choice of the caller). */
  noAuth?: boolean;
  /** Where a client finds the token, said in 401 answers (e.g. the token file's path). */
  tokenHint?: string;
  tasks: TaskService;
  registry: Registry;
  groups: GroupService;
  metrics: ControlPlaneMetrics;
  log: Logger;
  /**
   * Issues MQTT credentials for a proplet (`rotate`: an existing account gets a new secret); absent when an
   * external broker manages them. On an external broker it answers once the broker has the account, and
   * throws an HttpError (409, 502, 503) saying why it has not.
   */
  issueCredentials?: (propletId: string, rotate: boolean) => string | Promise<string>;
  revokeCredentials?: (propletId: string) => void | Promise<void>;
  /** The role of an existing broker account ('proplet', 'manager', 'debug'), undefined when there is none. */
  accountRole?: (id: string) => string | undefined;
  /** /health's report; `ready: false` answers 503 (control-plane/health.ts). */
  health?: () => Record<string, unknown> & { ready?: boolean };
  /** Why writes are refused now (a dependency is down): they answer 503 with it, nothing changed. */
  refuseWrites?: () => string | undefined;
  putModule: (digest: string, bytes: Uint8Array) => void;
  /** Resolves when the state store has committed what was written so far: no answer shows uncommitted state. */
  durable?: () => Promise<void>;
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

type Handler = (req: IncomingMessage, url: URL, params: string[]) => Promise<unknown> | unknown;
/** Given the raw request (event streams, static files); true when it answered. */
export type RawHandler = (req: IncomingMessage, res: ServerResponse, url: URL) => boolean | Promise<boolean>;

/** A JSON answer with a status of its own (a probe's 503). */
class Answer {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {}
}

/** The probes: /health (= /health/ready) and /health/live. */
const HEALTH = /^\/health(\/(ready|live))?\/?$/;

/** A handler's answer that is not JSON (a model's bytes). */
export class RawBody {
  constructor(
    readonly contentType: string,
    readonly bytes: Uint8Array,
    readonly headers: Record<string, string> = {},
  ) {}
}
interface Route {
  method: string;
  re: RegExp;
  handler: Handler;
  status?: number;
}

const MAX_WAIT_MS = 60_000;
/** The most tasks one page of GET /tasks holds. */
const MAX_PAGE = 1000;
const TASK_STATES: TaskState[] = ['Pending', 'Scheduled', 'Running', 'Completed', 'Failed', 'Stopped'];
export const SESSION_COOKIE = 'propeller_session';

/**
 * Routes served without the token: probes (/health says counts and MQTT state,
 * no ids), the sign-in page, and models, which are fetched by content digest
 * (unguessable, immutable) by proplets that hold no API token.
 */
function isOpen(method: string, path: string): boolean {
  return HEALTH.test(path) || (method === 'GET' && (path === '/login' || path.startsWith('/models/')));
}

const sha = (s: string) => createHash('sha256').update(s).digest();

/** Equal strings, in a time that does not depend on where they differ. */
export function sameToken(given: string, expected: string): boolean {
  return timingSafeEqual(sha(given), sha(expected));
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const i = part.indexOf('=');
    if (i > 0 && part.slice(0, i).trim() === name) return decodeURIComponent(part.slice(i + 1).trim());
  }
  return undefined;
}

/** A path on this server (`/x`), never another origin (`//host`, `/\\host`, `http:`). */
function localPath(next: string | null): string {
  return next && /^\/(?![/\\])[\x21-\x7e]*$/.test(next) ? next : '/';
}

export class HttpApi {
  private server: Server;
  private routes: Route[] = [];
  private mounts: { handler: RawHandler; open: boolean }[] = [];
  /** Requests waiting (?wait=) for a task to finish, by task id. */
  private waiters = new Map<string, Set<() => void>>();

  constructor(private o: HttpApiOptions) {
    if (!o.token && o.noAuth !== true) throw new Error('HttpApi: give a token, or noAuth: true to serve without one');
    this.server = createServer((req, res) => {
      this.serve(req, res).catch((e) => {
        o.log('error', 'http handler crashed', { error: (e as Error).stack });
        if (!res.headersSent) res.writeHead(500).end();
      });
    });
    o.tasks.on('changed', this.onTaskChanged);
    this.server.headersTimeout = 30_000;
    this.server.requestTimeout = 120_000;
    this.defineRoutes();
  }

  async listen(): Promise<number> {
    const { host = '127.0.0.1', port = 7070 } = this.o;
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    return (this.server.address() as AddressInfo).port;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.o.tasks.off('changed', this.onTaskChanged);
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  /** Adds a route; `{name}` in the path matches one segment, passed to the handler in order. */
  route(method: string, path: string, handler: Handler, status?: number): void {
    const re = new RegExp('^' + path.replace(/\{[a-z_]+\}/g, '([^/]+)') + '/?$');
    this.routes.push({ method, re, handler, status });
  }

  /** A raw handler, tried before the routes; `open` ones are served without authentication. */
  mount(handler: RawHandler, o: { open?: boolean } = {}): void {
    this.mounts.push({ handler, open: o.open === true });
  }

  private async mounted(req: IncomingMessage, res: ServerResponse, url: URL, open: boolean): Promise<boolean> {
    for (const m of this.mounts) if (m.open === open && (await m.handler(req, res, url))) return true;
    return false;
  }

  private defineRoutes(): void {
    const { tasks, registry } = this.o;
    // readiness: 503 while the store or the broker is away (which, since when); liveness: the process answers
    const health = () => {
      const h = this.o.health?.() ?? {};
      const body = { status: h.ready === false ? 'not ready' : 'ok', proplets: registry.size, tasks: tasks.count(), ...h };
      return h.ready === false ? new Answer(503, body) : body;
    };
    this.route('GET', '/health', health);
    this.route('GET', '/health/ready', health);
    this.route('GET', '/health/live', () => ({ status: 'alive' }));
    // ?start=true starts it at once and ?wait=DURATION answers when it has finished: one round trip for a run.
    this.route('POST', '/tasks', async (req, url) => {
      const input = parseTaskInput(await this.json(req)) as TaskInput;
      this.checkModuleSize(input.file);
      const start = url.searchParams.get('start');
      if (start !== null && start !== 'true' && start !== 'false') throw new HttpError(400, 'start: must be true or false', 'start');
      // ?require_proplet=true: a pin to a proplet never registered is refused (the console's form) instead of waiting for it
      const strict = url.searchParams.get('require_proplet');
      if (strict !== null && strict !== 'true' && strict !== 'false') throw new HttpError(400, 'require_proplet: must be true or false', 'require_proplet');
      if (strict === 'true' && input.proplet_id && !registry.get(input.proplet_id)) {
        throw new HttpError(400, `proplet_id: no proplet ${JSON.stringify(input.proplet_id)} is registered`, 'proplet_id');
      }
      const wait = url.searchParams.get('wait');
      const t = tasks.create(input, { start: start === 'true' });
      if (start === 'true' && wait) await this.waitTerminal(t.id, wait);
      return tasks.require(t.id);
    }, 201);
    // newest first, `limit` at a time; `continue` (from the previous page) goes on with older ones
    this.route('GET', '/tasks', (_req, url) => {
      const state = url.searchParams.get('state');
      const limit = Math.min(this.intParam(url, 'limit', 100), MAX_PAGE);
      const offset = this.intParam(url, 'offset', 0);
      const after = url.searchParams.get('continue') ?? undefined;
      const labels: [string, string][] = [];
      // ?label=KEY=VALUE, repeatable: every one must match
      for (const sel of url.searchParams.getAll('label')) {
        const i = sel.indexOf('=');
        if (i <= 0) throw new HttpError(400, `label: expected KEY=VALUE, got ${JSON.stringify(sel)}`, 'label');
        labels.push([sel.slice(0, i), sel.slice(i + 1)]);
      }
      const wanted = state ? TASK_STATES.find((s) => s.toLowerCase() === state.toLowerCase()) : undefined;
      if (state && !wanted) throw new HttpError(400, `state: must be one of ${TASK_STATES.join(', ')}`, 'state');
      const proplet = url.searchParams.get('proplet');
      if (proplet !== null && !isId(proplet)) throw new HttpError(400, "proplet: must be a proplet id (1-128 characters without '+', '#', '/' or control characters)", 'proplet');
      const match =
        wanted || labels.length || proplet !== null
          ? (t: Task) => (!wanted || t.state === wanted) && labels.every(([k, v]) => t.labels[k] === v) && (proplet === null || onProplet(t, proplet))
          : undefined;
      let page;
      try {
        page = tasks.page(offset + limit, after, match);
      } catch (e) {
        if (e instanceof TokenError) throw new HttpError(400, e.message, 'continue');
        throw e;
      }
      const shown = page.tasks.slice(offset);
      // a total is given when it is known without walking the history (no label or proplet filter)
      const total = labels.length || proplet !== null ? undefined : tasks.count(wanted);
      return {
        ...(total !== undefined ? { total } : {}),
        limit,
        ...(offset ? { offset } : {}),
        tasks: shown,
        ...(page.continue ? { continue: page.continue } : {}),
      };
    });
    this.route('GET', '/tasks/{id}', async (_req, url, [id]) => {
      const wait = url.searchParams.get('wait');
      if (wait) await this.waitTerminal(id!, wait);
      return tasks.require(id!);
    });
    this.route('PUT', '/tasks/{id}', async (req, _url, [id]) => {
      tasks.require(id!);
      const patch = parseTaskInput(await this.json(req), true);
      this.checkModuleSize(patch.file);
      return tasks.update(id!, patch);
    });
    this.route('DELETE', '/tasks/{id}', (_req, _url, [id]) => {
      tasks.delete(id!);
      return { deleted: id };
    });
    this.route('PUT', '/tasks/{id}/upload', async (req, _url, [id]) => {
      tasks.require(id!);
      return tasks.upload(id!, await this.module(req));
    });
    // modules referred to by digest (FL rounds' taskWasmImage: sha256:<hex>)
    this.route('POST', '/modules', async (req) => {
      const bytes = await this.module(req);
      const digest = sha256Digest(bytes);
      this.o.putModule(digest, bytes);
      return { digest, size: bytes.length };
    }, 201);
    this.route('POST', '/tasks/{id}/start', (_req, _url, [id]) => tasks.start(id!));
    this.route('POST', '/tasks/{id}/stop', (_req, _url, [id]) => tasks.stop(id!));
    this.route('GET', '/tasks/{id}/results', async (_req, url, [id]) => {
      const wait = url.searchParams.get('wait');
      if (wait) await this.waitTerminal(id!, wait);
      const t = tasks.require(id!);
      return { task_id: t.id, state: t.state, ...(t.error ? { error: t.error } : {}), ...(t.result ?? {}) };
    });
    const groups = this.o.groups;
    const withStatus = (g: PropletGroup) => ({ ...g, status: groups.status(g) });
    this.route('POST', '/proplet-groups', async (req) => withStatus(groups.create(parseGroupInput(await this.json(req)))), 201);
    this.route('GET', '/proplet-groups', () => ({ total: groups.list().length, groups: groups.list().map(withStatus) }));
    this.route('GET', '/proplet-groups/{name}', (_req, _url, [name]) => withStatus(groups.require(name!)));
    this.route('PUT', '/proplet-groups/{name}', async (req, _url, [name]) => {
      groups.require(name!);
      return withStatus(groups.replace(parseGroupInput(await this.json(req), name!)));
    });
    this.route('DELETE', '/proplet-groups/{name}', (_req, _url, [name]) => {
      groups.delete(name!);
      return { deleted: name };
    });
    this.route('GET', '/proplets', (_req, url) => {
      const offset = this.intParam(url, 'offset', 0);
      const limit = this.intParam(url, 'limit', 1000);
      const all = registry.list().sort((a, b) => a.id.localeCompare(b.id));
      return { total: all.length, offset, limit, proplets: all.slice(offset, offset + limit).map((p) => this.propletView(p)) };
    });
    this.route('GET', '/proplets/{id}', (_req, _url, [id]) => {
      const p = registry.get(id!);
      if (!p) throw new HttpError(404, `proplet ${id} not found`);
      return this.propletView(p);
    });
    // {proplet_id, rotate?}: a new account; an existing one's secret is replaced only with rotate: true
    this.route('POST', '/proplets', async (req) => {
      const body = (await this.json(req)) as Record<string, unknown>;
      const id = body.proplet_id;
      if (!isId(id)) throw new HttpError(400, "proplet_id: must be 1-128 characters without '+', '#', '/' or control characters", 'proplet_id');
      this.refuseReserved(id);
      return { proplet_id: id, secret: await this.issue(id, body.rotate, `proplet ${id}`, `propeller proplet add ${id} --rotate`) };
    }, 201);
    // {prefix, rotate?}: the group account PREFIX-*, one secret for every proplet id PREFIX-<anything>
    // (the pods of a Kubernetes Proplet); its own route, so no proplet request can create or replace one
    this.route('POST', '/group-accounts', async (req) => {
      const body = (await this.json(req)) as Record<string, unknown>;
      const prefix = body.prefix;
      if (!isId(prefix) || prefix.includes('*') || !isId(`${prefix}-*`)) throw new HttpError(400, "prefix: must be 1-126 characters without '*', '+', '#', '/' or control characters", 'prefix');
      const account = `${prefix}-*`;
      this.refuseReserved(prefix);
      return { account, secret: await this.issue(account, body.rotate, `group account ${account}`) };
    }, 201);
    this.route('DELETE', '/group-accounts/{prefix}', async (_req, _url, [prefix]) => {
      if (!this.o.revokeCredentials) throw new HttpError(501, 'credentials are managed by the external broker');
      this.refuseReserved(prefix!);
      const account = `${prefix}-*`;
      if (this.o.accountRole?.(account) === undefined) throw new HttpError(404, `group account ${account} not found`);
      await this.o.revokeCredentials(account);
      return { deleted: account };
    });
    this.route('DELETE', '/proplets/{id}', async (_req, _url, [id]) => {
      this.refuseReserved(id!);
      // the account first: if the broker cannot delete it, the proplet stays as it was
      await this.o.revokeCredentials?.(id!);
      const had = registry.remove(id!);
      if (!had && !this.o.revokeCredentials) throw new HttpError(404, `proplet ${id} not found`);
      return { deleted: id };
    });
  }

  /**
   * The control plane's own account, the debug account and group accounts
   * (PREFIX-*) are not proplets: one request must not be able to lock the
   * control plane out of its broker or take over a whole group's ids.
   */
  /** New credentials for `id`; an existing account's secret is replaced only when `rotate` is true. */
  private async issue(id: string, rotate: unknown, what: string, cli?: string): Promise<string> {
    if (!this.o.issueCredentials) throw new HttpError(501, 'credentials are managed by the external broker');
    if (rotate !== undefined && typeof rotate !== 'boolean') throw new HttpError(400, 'rotate: must be true or false', 'rotate');
    if (this.o.accountRole?.(id) !== undefined && rotate !== true) {
      throw new HttpError(409, `${what} already has credentials: to replace its secret (the device must then use the new one), ask again with rotate: true${cli ? ` (CLI: ${cli})` : ''}`);
    }
    return this.o.issueCredentials(id, rotate === true);
  }

  private refuseReserved(id: string): void {
    const role = this.o.accountRole?.(id);
    let why: string | undefined;
    if (id.startsWith('propeller-manager') || role === 'manager') why = "the control plane's own MQTT account";
    else if (id === 'debug' || role === 'debug') why = 'the debug account (serve --debug-account)';
    else if (id.includes('*')) why = 'a group account (PREFIX-*: POST /group-accounts, or the --credentials file)';
    if (why) throw new HttpError(409, `${id} is reserved: ${why}; it cannot be created, replaced or deleted through the API`, 'proplet_id');
  }

  /** No proplet takes a module over MAX_INLINE_MODULE (the protocol's limit): refuse it here, not after placement. */
  private checkModuleSize(bytes: Uint8Array | undefined, limit = MAX_INLINE_MODULE): void {
    if (bytes && bytes.length > limit) throw new HttpError(413, moduleTooLarge(bytes.length, limit), 'file');
  }

  private propletView(p: Proplet) {
    return { ...p, assigned_tasks: this.o.tasks.assigned(p.id) };
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const method = req.method ?? 'GET';
    let status = 200;
    let body: unknown;
    if (await this.mounted(req, res, url, true)) return;
    try {
      if (!this.authorized(req, method, url.pathname)) {
        throw new HttpError(401, `missing or wrong API token: send Authorization: Bearer TOKEN${this.o.tokenHint ? ` (${this.o.tokenHint})` : ''}`);
      }
      if (url.pathname === '/login' && method === 'GET') return this.login(req, res, url);
      if (url.pathname === '/metrics' && method === 'GET') {
        const text = await this.o.metrics.registry.metrics();
        res.writeHead(200, { 'content-type': this.o.metrics.registry.contentType }).end(text);
        this.o.metrics.httpRequests.inc({ method, code: '200' });
        return;
      }
      if (await this.mounted(req, res, url, false)) return;
      const route = this.routes.find((r) => r.method === method && r.re.test(url.pathname));
      if (!route) {
        const matching = this.routes.filter((r) => r.re.test(url.pathname));
        if (matching.length === 0) throw new HttpError(404, `no such path: ${url.pathname}`);
        throw new HttpError(405, `${method} not allowed on ${url.pathname}; allowed: ${matching.map((r) => r.method).join(', ')}`);
      }
      const params = route.re.exec(url.pathname)!.slice(1).map(decodeURIComponent);
      const refused = method === 'GET' || method === 'HEAD' ? undefined : this.o.refuseWrites?.();
      if (refused) throw new HttpError(503, refused);
      body = await route.handler(req, url, params);
      status = route.status ?? 200;
      if (body instanceof Answer) ({ status, body } = body);
      // what a client is shown is committed: a crash cannot take back what it saw (health answers regardless)
      if (!HEALTH.test(url.pathname)) await this.durable();
      if (body instanceof RawBody) {
        res.writeHead(status, { 'content-type': body.contentType, 'content-length': body.bytes.length, ...body.headers }).end(body.bytes);
        this.o.metrics.httpRequests.inc({ method, code: String(status) });
        return;
      }
    } catch (e) {
      ({ status, body } = this.errorBody(e));
      if (status >= 500) this.o.log('error', 'http error', { path: url.pathname, error: (e as Error).stack });
      // Unread request bodies would otherwise keep the socket busy.
      if (!req.complete) req.resume();
    }
    this.o.metrics.httpRequests.inc({ method, code: String(status) });
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
    res.end(text);
  }

  private async durable(): Promise<void> {
    try {
      await this.o.durable?.();
    } catch (e) {
      throw new HttpError(503, `the state store did not commit the change yet (${(e as Error).message}); it is kept and committed when the store is back`);
    }
  }

  private authorized(req: IncomingMessage, method: string, path: string): boolean {
    const token = this.o.token;
    if (!token || isOpen(method, path)) return true;
    const auth = req.headers.authorization;
    if (auth?.startsWith('Bearer ') && sameToken(auth.slice(7), token)) return true;
    // Basic with the token as the password: what Go's client sends from a URL's user info (Propeller's CLI)
    if (auth?.startsWith('Basic ')) {
      const plain = Buffer.from(auth.slice(6), 'base64').toString('utf8');
      const colon = plain.indexOf(':');
      if (colon >= 0 && sameToken(plain.slice(colon + 1), token)) return true;
    }
    const c = cookie(req, SESSION_COOKIE);
    return c !== undefined && sameToken(c, token);
  }

  /** `GET /login?token=T[&next=/path]`: a browser session (the URL `serve` prints, as Jupyter does). */
  private login(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const given = url.searchParams.get('token');
    const token = this.o.token;
    const code = !token || (given !== null && sameToken(given, token)) ? 303 : 401;
    this.o.metrics.httpRequests.inc({ method: 'GET', code: String(code) });
    if (code === 303) {
      const headers: Record<string, string> = { location: localPath(url.searchParams.get('next')) };
      // HttpOnly: scripts cannot read it; SameSite=Strict: other sites cannot send it (no CSRF)
      if (token) headers['set-cookie'] = `${SESSION_COOKIE}=${encodeURIComponent(token)}; HttpOnly; SameSite=Strict; Path=/`;
      res.writeHead(303, headers).end();
      return;
    }
    if (!req.complete) req.resume();
    const page = `<!doctype html><meta charset="utf-8"><title>propeller: sign in</title>
<h1>Wrong or missing token</h1>
<p>Open the sign-in link <code>propeller serve</code> printed when it started (<code>http://HOST:PORT/login?token=...</code>),
or the same URL with the token from the data directory's <code>api.token</code> file${this.o.tokenHint ? ` (${escapeHtml(this.o.tokenHint)})` : ''}.</p>`;
    res.writeHead(401, { 'content-type': 'text/html; charset=utf-8', 'content-length': Buffer.byteLength(page) }).end(page);
  }

  private errorBody(e: unknown): { status: number; body: unknown } {
    if (e instanceof HttpError) return { status: e.status, body: { error: e.message, ...(e.field ? { field: e.field } : {}) } };
    if (e instanceof InputError) return { status: 400, body: { error: e.message, field: e.field } };
    if (e instanceof TaskError) {
      const status = e.code === 'not_found' ? 404 : e.code === 'conflict' ? 409 : 400;
      return { status, body: { error: e.message } };
    }
    return { status: 500, body: { error: 'internal error' } };
  }

  private intParam(url: URL, name: string, dflt: number): number {
    const v = url.searchParams.get(name);
    if (v === null) return dflt;
    if (!/^\d{1,9}$/.test(v)) throw new HttpError(400, `${name}: must be a non-negative integer`, name);
    return Number(v);
  }

  private async waitTerminal(id: string, wait: string): Promise<void> {
    const t = this.o.tasks.require(id);
    let ms: number;
    try {
      ms = Math.min(parseDuration('wait', wait), MAX_WAIT_MS);
    } catch (e) {
      throw new HttpError(400, (e as ConfigError).message, 'wait');
    }
    if (TERMINAL.has(t.state)) return;
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        const set = this.waiters.get(id);
        set?.delete(done);
        if (set?.size === 0) this.waiters.delete(id);
        resolve();
      };
      const timer = setTimeout(done, ms);
      let set = this.waiters.get(id);
      if (!set) this.waiters.set(id, (set = new Set()));
      set.add(done);
    });
  }

  /** Wakes the requests waiting for this task to finish (one listener for all: a change costs O(1), not O(waiting requests)). */
  private onTaskChanged = (t: Task): void => {
    if (!TERMINAL.has(t.state)) return;
    const set = this.waiters.get(t.id);
    if (set) for (const done of [...set]) done();
  };

  async read(req: IncomingMessage, limit: number): Promise<Buffer> {
    const declared = Number(req.headers['content-length']);
    if (declared > limit) throw new HttpError(413, `request body of ${declared} bytes exceeds the limit of ${limit}`);
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const c of req) {
      size += (c as Buffer).length;
      if (size > limit) throw new HttpError(413, `request body exceeds the limit of ${limit} bytes`);
      chunks.push(c as Buffer);
    }
    return Buffer.concat(chunks);
  }

  private async json(req: IncomingMessage): Promise<unknown> {
    const type = req.headers['content-type'] ?? 'application/json';
    if (!type.startsWith('application/json')) throw new HttpError(415, `expected application/json, got ${type}`);
    const raw = await this.read(req, this.o.maxBodyBytes ?? 24 * 1024 * 1024);
    if (raw.length === 0) return {};
    try {
      return JSON.parse(raw.toString('utf8'));
    } catch (e) {
      throw new HttpError(400, `body is not valid JSON: ${(e as Error).message}`, 'body');
    }
  }

  /** A module upload: raw bytes (application/wasm, octet-stream) or multipart with a `file` field, as Propeller's CLI sends. */
  async module(req: IncomingMessage): Promise<Uint8Array> {
    const limit = this.o.maxUploadBytes ?? MAX_INLINE_MODULE;
    const type = req.headers['content-type'] ?? 'application/octet-stream';
    let bytes: Uint8Array;
    if (type.startsWith('multipart/form-data')) {
      const raw = await this.read(req, limit + 64 * 1024);
      let form: FormData;
      try {
        form = await new Request('http://upload/', { method: 'POST', headers: { 'content-type': type }, body: new Uint8Array(raw) }).formData();
      } catch (e) {
        throw new HttpError(400, `multipart body does not parse: ${(e as Error).message}`, 'file');
      }
      const f = form.get('file');
      if (!f || typeof f === 'string') throw new HttpError(400, 'multipart body has no file field named "file"', 'file');
      bytes = new Uint8Array(await f.arrayBuffer());
      this.checkModuleSize(bytes, limit);
    } else {
      const declared = Number(req.headers['content-length']);
      if (declared > limit) throw new HttpError(413, moduleTooLarge(declared, limit), 'file');
      bytes = await this.read(req, limit);
    }
    if (!isWasm(bytes)) throw new HttpError(400, 'file: not a WebAssembly module (missing \\0asm magic and version)', 'file');
    return bytes;
  }
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export function moduleTooLarge(size: number, limit: number): string {
  const what = limit === MAX_INLINE_MODULE ? 'the most any proplet can take' : 'the limit of this API';
  return `module of ${size} bytes exceeds ${limit} bytes (${(limit / 1024 / 1024).toFixed(limit % (1024 * 1024) ? 2 : 0)} MiB), ${what}`;
}
