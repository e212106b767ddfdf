// The control plane: registry, tasks, placement, MQTT gateway and HTTP API
// wired together. It reaches the broker only by URL, so it neither knows nor
// cares whether the broker is embedded or external.

import type { Scope } from '../topics/index.ts';
import { validateHealth, type HealthConfig } from './config.ts';
import { ChunkServer } from './chunk-server.ts';
import { CronScheduler } from './cron.ts';
import { fetchPolicy } from './modules/policy.ts';
import { fetchArtifact, resolveModule } from './modules/resolve.ts';
import { FlCoordinator } from './fl/coordinator.ts';
import { addFlRoutes } from './fl/http-routes.ts';
import { GroupService } from './groups.ts';
import { EventBus } from './events.ts';
import { readiness, registerHealthMetrics, writesRefused, type Dependency } from './health.ts';
import { HttpApi } from './http-api.ts';
import { silent, type Logger } from './log.ts';
import { ControlPlaneMetrics } from './metrics.ts';
import { MqttGateway, type LocalBroker } from './mqtt-gateway.ts';
import { addPropellerApiRoutes } from './propeller-api.ts';
import { PropellerCompat, wireOf } from './propeller-compat.ts';
import type { ShapeOptions } from './propeller-shapes.ts';
import { DEFAULT_START_ACK_TIMEOUT_MS, StartAckDeadline } from './start-ack.ts';
import type { Placement } from './placement.ts';
import { createScheduler, type CreateSchedulerConfig } from './scheduling/index.ts';
import { Registry } from './registry.ts';
import type { RetentionConfig } from './retention.ts';
import { MemoryStore, type Store } from './store.ts';
import { staticDirectory } from './static.ts';
import { registerStoreMetrics } from './store-metrics.ts';
import { TaskService } from './tasks.ts';
import type { Task } from './model.ts';

export interface ControlPlaneOptions {
  scope: Scope;
  /** `trustPayloadSender`: see GatewayOptions (external brokers only). */
  mqtt: { url: string; local?: LocalBroker; username?: string; password?: string; clientId?: string; trustPayloadSender?: boolean; shareGroup?: string };
  /** The HTTP API; `token` or `noAuth: true` is required (the API is never open by omission). */
  http: { host?: string; port?: number; token?: string; noAuth?: boolean; tokenHint?: string; maxBodyBytes?: number; maxUploadBytes?: number; staticDir?: string };
  health: HealthConfig;
  store?: Store;
  /** The scheduler (seed: SCHEDULER_TYPE and the config file's scheduler section). Default hybrid. */
  scheduler?: CreateSchedulerConfig;
  /** Replaces the scheduler entirely (tests). */
  placement?: Placement;
  maxAttempts?: number;
  defaultTimeoutMs?: number;
  /**
   * After a restart, how long tasks placed before it stay where they are while
   * their proplets reconnect and report (default: the offline threshold); no attempt is used meanwhile.
   */
  restartGraceMs?: number;
  /** How long a start may be in flight before a report without it means it was lost (default 5 s). */
  reconcileGraceMs?: number;
  /** How long finished tasks and scheduled runs are kept (default 24 h; 3 successful, 1 failed run per schedule). */
  retention?: Partial<RetentionConfig>;
  /** Evacuate tasks from failed proplets (seed: healthMonitor.autoEvacuateTasks). */
  autoEvacuateTasks?: boolean;
  credentials?: {
    /** `rotate`: a new secret for an existing account. May answer later (an external broker's accounts). */
    issue(propletId: string, rotate: boolean): string | Promise<string>;
    revoke(propletId: string): void | Promise<void>;
    /** The role of an existing account, undefined when there is none: reserved accounts are refused by the API. */
    role(id: string): string | undefined;
  };
  log?: Logger;
  defaultMetrics?: boolean;
  /**
   * Where module and model URLs may be fetched from: loopback, link-local and
   * private addresses are denied unless `allow` names them (CIDRs, addresses, host names).
   */
  fetch?: { allow?: readonly string[]; deny?: readonly string[] };
  /** One of N replicas (replica.ts): the owner-only work runs when isOwner() says so. */
  replica?: { isOwner(): boolean; onAcquired(f: () => void): void; module(digest: string): Promise<Uint8Array | undefined> };
  /** More that readiness depends on (a replica's plane identity on the broker). */
  dependencies?: Dependency[];
  /** This control plane's HTTP address as proplets reach it (FL tasks' MODEL_URI). Default: http://<http host>:<port>. */
  publicUrl?: string;
  /** How long one of our proplets may take to acknowledge a start before it counts as refused (START_ACK_TIMEOUT). Default 10 s. */
  startAckTimeoutMs?: number;
  /** Limits of Propeller's own proplets (the Rust proplets' PROPLET_MQTT_MAX_PACKET_SIZE). */
  propeller?: ShapeOptions;
}

export class ControlPlane {
  readonly store: Store;
  readonly registry: Registry;
  readonly tasks: TaskService;
  readonly metrics: ControlPlaneMetrics;
  readonly gateway: MqttGateway;
  readonly http: HttpApi;
  readonly cron: CronScheduler;
  readonly groups: GroupService;
  readonly chunks: ChunkServer;
  readonly fl: FlCoordinator;
  readonly events: EventBus;
  readonly compat: PropellerCompat;
  readonly startAcks: StartAckDeadline;
  /** What /health's readiness and the refusal of writes look at. */
  readonly dependencies: Dependency[];
  private readonly log: Logger;

  constructor(private o: ControlPlaneOptions) {
    validateHealth(o.health);
    this.log = o.log ?? silent;
    const policy = fetchPolicy(o.fetch);
    this.store = o.store ?? new MemoryStore();
    this.registry = new Registry(this.store, o.health);
    this.metrics = new ControlPlaneMetrics(
      {
        proplets: () => this.registry.values(),
        tasks: () => this.tasks.values(),
        taskCounts: () => this.tasks.countsByState(),
        flJobPhases: () => this.fl.jobPhaseCounts(),
        flRoundPhases: () => this.fl.roundPhaseCounts(),
        flActiveRounds: () => this.fl.activeRounds,
        flKeptMemoryBytes: () => this.fl.keptMemoryBytes,
      },
      { defaultMetrics: o.defaultMetrics },
    );
    registerStoreMetrics(this.metrics.registry, this.store);
    this.gateway = new MqttGateway({ ...o.mqtt, scope: o.scope, log: this.log, metrics: this.metrics, shape: o.propeller });
    this.compat = new PropellerCompat({
      scope: o.scope,
      shape: o.propeller,
      log: this.log,
      module: (digest) => this.store.getModule(digest),
      tasks: () => this.tasks.values(),
      fetch: (url) => resolveModule(url, policy),
      send: (p, _kind, payload, qos) => this.gateway.sendChunk(p, payload, qos),
      reject: (kind, reason, detail) => this.gateway.reject(kind, reason, detail),
    });
    this.tasks = new TaskService({
      store: this.store,
      registry: this.registry,
      placement: o.placement ?? createScheduler(o.scheduler ?? { type: 'hybrid' }),
      groups: (name) => this.groups.get(name),
      dispatcher: this.gateway,
      metrics: this.metrics,
      log: this.log,
      maxAttempts: o.maxAttempts,
      defaultTimeoutMs: o.defaultTimeoutMs,
      restartGraceMs: o.restartGraceMs ?? o.health.offlineThresholdMs,
      ...(o.reconcileGraceMs !== undefined ? { reconcileGraceMs: o.reconcileGraceMs } : {}),
      ...(o.retention ? { retention: o.retention } : {}),
      resolveModule: (url) => resolveModule(url, policy),
      admit: (t, p, start) => this.compat.admit(t, p, start, this.registry.values()),
    });
    this.startAcks = new StartAckDeadline({
      tasks: this.tasks,
      acknowledges: (id) => {
        const p = this.registry.get(id);
        return p !== undefined && wireOf(p, o.scope).kind === 'ours';
      },
      timeoutMs: o.startAckTimeoutMs ?? DEFAULT_START_ACK_TIMEOUT_MS,
      log: this.log,
      stop: (propletId, id, attempt) => {
        const p = this.registry.get(propletId);
        if (p) this.gateway.stop(p, { v: 1, id, proplet_id: propletId, attempt });
      },
    });
    this.groups = new GroupService(this.store, this.registry, (id) => this.tasks.assigned(id));
    this.dependencies = [
      { name: 'store', what: `the state store`, outage: () => this.store.outage() },
      // a single process keeps a change made while its broker is away (the start waits in the client's queue);
      // a replica refuses it, so that clients go to a replica that can act on it
      { name: 'broker', what: 'the MQTT broker', outage: () => this.gateway.outage(), refusesWrites: o.replica !== undefined },
      ...(o.dependencies ?? []),
    ];
    registerHealthMetrics(this.metrics.registry, this.dependencies);
    this.http = new HttpApi({
      ...o.http,
      tasks: this.tasks,
      groups: this.groups,
      registry: this.registry,
      metrics: this.metrics,
      log: this.log,
      issueCredentials: o.credentials && ((id, rotate) => o.credentials!.issue(id, rotate)),
      revokeCredentials: o.credentials && ((id) => o.credentials!.revoke(id)),
      accountRole: o.credentials && ((id) => o.credentials!.role(id)),
      health: () => ({
        ...readiness(this.dependencies),
        mqtt: this.gateway.connected ? 'connected' : 'disconnected',
        store: this.store.outage() ? 'unreachable' : 'ok',
        ...(o.replica ? { owner: o.replica.isOwner() } : {}),
      }),
      refuseWrites: () => writesRefused(this.dependencies),
      putModule: (digest, bytes) => this.store.putModule(digest, bytes),
      durable: () => this.store.flush(),
    });
    const m = this.metrics;
    this.fl = new FlCoordinator({
      store: this.store,
      tasks: this.tasks,
      proplets: () => this.registry.values(),
      groups: (name) => this.groups.get(name),
      fetch: (url) => fetchArtifact(url, policy),
      modelUri: (ref) => `${this.publicUrl()}/models/${ref}`,
      metrics: {
        update: (result) => m.flUpdates.inc({ result }),
        roundEnded: (phase, seconds) => m.flRoundDuration.observe({ phase }, seconds),
        taskCreated: () => m.flTasksCreated.inc(),
        aggregation: (seconds) => m.flAggregation.observe(seconds),
      },
      log: this.log,
      ...(o.replica ? { load: (digest: string) => this.loadModule(digest) } : {}),
    });
    addFlRoutes(this.http, this.fl);
    addPropellerApiRoutes(this.http, this.tasks, this.registry, (req) => this.http.module(req));
    this.cron = new CronScheduler(this.tasks, this.log);
    this.chunks = new ChunkServer({
      // a device's own tasks' artifacts only: the module, and an FL task's model (MODEL_DIGEST, or MODEL_URI ending in it)
      module: (p, digest) => (this.tasks.activeTaskOn(p.id, (t) => t.module_digest === digest || modelDigest(t) === digest) ? this.store.getModule(digest) : undefined),
      digestByName: (p, url) => this.tasks.activeTaskOn(p.id, (t) => t.image_url === url && t.module_digest !== undefined)?.module_digest,
      send: (p, payload) => this.gateway.sendChunk(p, payload),
      log: this.log,
      onChunk: () => this.metrics.chunksSent.inc(),
      onRefused: (reason) => this.metrics.messagesRejected.inc({ kind: 'registry.proplet', reason }),
    });
    this.events = new EventBus({ registry: this.registry, tasks: this.tasks, metrics: this.metrics, log: this.log, propletView: (p) => ({ ...p, assigned_tasks: this.tasks.assigned(p.id) }) });
    this.events.attach(this.registry, this.gateway, this.fl);
    this.http.mount((req, res, url) => this.events.serve(req, res, url));
    if (o.http?.staticDir) this.http.mount(staticDirectory(o.http.staticDir), { open: true });
    this.wireEvents();
    // while the broker is away nobody is heard: silence is no sign of death, and when it is back
    // every proplet gets a fresh grace to reconnect (as after a restart)
    this.registry.hearing = () => this.gateway.connected;
    this.gateway.onReconnect = () => {
      this.registry.regrace();
      this.tasks.regrace();
      this.log('info', 'broker reachable again: proplets get a fresh liveness grace');
    };
    if (o.replica) {
      const own = () => o.replica!.isOwner();
      this.tasks.owner = own;
      this.tasks.replicated = true;
      this.registry.owner = own;
      this.cron.owner = own;
      this.fl.owner = own;
      // a new owner catches up: liveness, and what waits for placement
      o.replica.onAcquired(() => {
        this.registry.sweep();
        this.tasks.schedulePlacement();
        // rounds the dead owner ran start over, as after a restart
        this.fl.resume();
      });
    }
  }

  /** Store, broker (and plane) all there: what a replica needs to take the lease. */
  ready(): boolean {
    return readiness(this.dependencies).ready;
  }

  /** A row another replica committed (the store's change feed): refresh this replica's view of it. */
  refresh(key: { kind: string; id: string }): void {
    if (key.kind === 'task') {
      // a module another replica stored (a task created there with its file) is not in this one's mirror: load it first
      const d = this.store.tasks.get(key.id)?.module_digest;
      if (d && this.o.replica && !this.store.getModule(d)) void this.loadModule(d).then(() => this.tasks.adopt(key.id, this.store.tasks.get(key.id)));
      else this.tasks.adopt(key.id, this.store.tasks.get(key.id));
    }
    else if (key.kind === 'proplet') this.registry.adopt(key.id, this.store.proplets.get(key.id));
    // FL resources read fresh on every replica; a round's live state stays with the replica that runs it (docs/scaling.md)
    else if (key.kind === 'fl-job' || key.kind === 'fl-round' || key.kind === 'fl-checkpoint') {
      this.fl.reloadRecord(key.kind, key.id);
      this.fl.adopted(key.kind, key.id);
    }
  }

  private loading = new Map<string, Promise<void>>();
  private loadModule(digest: string): Promise<void> {
    let p = this.loading.get(digest);
    if (!p) {
      p = this.o
        .replica!.module(digest)
        .then(
          (bytes) => bytes && this.store.putModule(digest, bytes),
          (e: Error) => this.log('warn', 'cannot load a module another replica stored', { digest, error: e.message }),
        )
        .finally(() => this.loading.delete(digest));
      this.loading.set(digest, p);
    }
    return p;
  }

  private wireEvents(): void {
    // with replicas, only the owner reconciles: another replica's view of a task may lag the feed
    const owner = () => this.o.replica?.isOwner() ?? true;
    this.registry.on('up', (p, running) => {
      if (owner()) this.tasks.asOwner(() => this.tasks.reconcile(p, running));
      this.tasks.schedulePlacement();
    });
    this.registry.on('load', () => this.tasks.schedulePlacement());
    this.registry.on('report', (p, running) => {
      if (owner()) this.tasks.asOwner(() => this.tasks.reconcile(p, running));
    });
    this.registry.on('state', (p, from, reason) => {
      this.metrics.propletTransitions.inc({ to: p.state });
      this.log(p.state === 'alive' ? 'info' : 'warn', 'proplet state', { proplet_id: p.id, from, to: p.state, reason });
      if (p.state === 'failed' && this.o.autoEvacuateTasks !== false) {
        const moved = this.tasks.evacuate(p.id, 'failed');
        if (moved.length) this.log('warn', 'evacuated tasks', { proplet_id: p.id, tasks: moved });
      }
    });
  }

  /** Connects to the broker and opens the HTTP API; returns the API's port. */
  async start(): Promise<number> {
    await this.gateway.connect({
      registry: this.registry,
      tasks: this.tasks,
      chunks: this.chunks,
      fl: this.fl,
      compat: this.compat,
      onProgress: (id) => this.startAcks.progress(id),
    });
    const port = await this.http.listen();
    this.registry.start();
    this.tasks.startTimers();
    this.cron.start();
    this.fl.resume();
    this.log('info', 'control plane started', { http_port: port, broker: this.o.mqtt.url, domain: this.o.scope.domain, channel: this.o.scope.channel });
    return port;
  }

  private publicUrl(): string {
    if (this.o.publicUrl) return this.o.publicUrl.replace(/\/+$/, '');
    const host = this.o.http?.host ?? '127.0.0.1';
    const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
    return `http://${h}:${this.http.port}`;
  }

  async close(): Promise<void> {
    this.fl.close();
    this.cron.close();
    this.registry.stop();
    this.tasks.stopTimers();
    this.events.close();
    this.startAcks.close();
    await this.http.close();
    await this.gateway.close();
    await this.store.close();
  }
}

/** The model an FL task's participant fetches, by digest. */
function modelDigest(t: Task): string | undefined {
  return t.env.MODEL_DIGEST ?? /sha256:[0-9a-f]{64}$/.exec(t.env.MODEL_URI ?? '')?.[0];
}

export { parseDuration, healthFromEnv, ConfigError } from './config.ts';
export { MemoryStore, type Store } from './store.ts';
export type { Proplet, Task, TaskState } from './model.ts';
