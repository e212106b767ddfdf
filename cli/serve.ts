// `propeller serve`: the embedded broker (unless an external one is named),
// the control plane with its HTTP API, and optionally local node proplets.

import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CredentialStore, EmbeddedBroker, parseCredentials, type BrokerOptions, type LocalLink } from '../broker/index.ts';
import { ConfigError, ControlPlane, healthFromEnv, parseDuration, type Store } from '../control-plane/index.ts';
import { parseFetchList } from '../control-plane/modules/policy.ts';
import { loadConfigFile, type FileConfig } from '../control-plane/config-file.ts';
import { parseSchedulerType, type CreateSchedulerConfig } from '../control-plane/scheduling/index.ts';
import { DEFAULT_LEASE_MS, Replica } from '../control-plane/replica.ts';
import { openStore, parseStoreUrl, StoreError, type StoreLocation } from '../control-plane/open-store.ts';
import { claimStore, PlanePresence } from '../control-plane/plane.ts';
import { createLogger, type Level } from '../control-plane/log.ts';
import { NodeProplet } from '../proplet-node/proplet.ts';
import { base } from '../topics/index.ts';
import { UsageError, int, str, type Command } from './args.ts';
import { accountsFrom, accountsHelp, accountsOptions, openDynsecAccounts, type DynsecAccounts } from './broker-accounts.ts';
import { debugAccount } from './debug-account.ts';
import { brokerUrl, dataDirFrom, ensureApiToken, scopeFrom, scopeHelp, scopeOptions } from './settings.ts';

/** After SIGTERM/SIGINT, the process ends within this long whatever state the MQTT side is in. */
const SHUTDOWN_DEADLINE_MS = 10_000;

export const serve: Command = {
  usage: 'propeller serve [options]',
  summary: 'run the broker, the control plane and its HTTP API (and local proplets)',
  options: {
    ...scopeOptions,
    host: { type: 'string' },
    'mqtt-port': { type: 'string' },
    'http-port': { type: 'string' },
    'ws-port': { type: 'string' },
    'tls-port': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    broker: { type: 'string' },
    'mqtt-username': { type: 'string' },
    'mqtt-password': { type: 'string' },
    'trust-payload-sender': { type: 'boolean' },
    ...accountsOptions,
    'max-connections-per-proplet': { type: 'string' },
    'auth-backoff-failures': { type: 'string' },
    'auth-backoff-window': { type: 'string' },
    'data-dir': { type: 'string' },
    store: { type: 'string' },
    'lease-duration': { type: 'string' },
    credentials: { type: 'string' },
    'debug-account': { type: 'boolean' },
    'local-proplets': { type: 'string' },
    'api-token': { type: 'string' },
    'no-auth': { type: 'boolean' },
    'fetch-allow': { type: 'string' },
    'fetch-deny': { type: 'string' },
    'log-level': { type: 'string' },
    config: { type: 'string' },
    scheduler: { type: 'string' },
    'public-url': { type: 'string' },
    kubeconfig: { type: 'string' },
    'console-dir': { type: 'string' },
  },
  help: `  --host ADDR            address the broker and HTTP API listen on (default 127.0.0.1)
  --mqtt-port N          embedded broker port (env PROPELLER_MQTT_PORT, default 1883)
  --http-port N          HTTP API port (env PROPELLER_HTTP_PORT, default 7070)
  --ws-port N            also serve MQTT over WebSocket on this port
  --tls-port N           also serve MQTT over TLS on this port (needs --tls-cert, --tls-key)
  --broker URL           use this external broker instead of the embedded one (env MQTT_BROKER)
  --mqtt-username U      control plane's account on the external broker (env MQTT_USERNAME)
  --mqtt-password P      its password (env MQTT_PASSWORD)
  --trust-payload-sender with --broker: accept proplet messages on the shared topics and take their sender from the
                         payload, as Propeller does (the external broker cannot stamp the topic; see docs/security.md)
${accountsHelp}
  --max-connections-per-proplet N
                         embedded broker: open connections one proplet account may hold; a newer one closes the
                         oldest (env PROPELLER_MAX_CONNECTIONS_PER_PROPLET, default 1)
  --auth-backoff-failures N
                         embedded broker: failed logins from one address (or for one account) before its answers
                         are slowed; 0 turns the back-off off (env PROPELLER_AUTH_BACKOFF_FAILURES, default 10)
  --auth-backoff-window D
                         how long after the last failure they are forgotten, e.g. 60s, 5m
                         (env PROPELLER_AUTH_BACKOFF_WINDOW, default 60s)
  --data-dir DIR         state directory (env PROPELLER_DATA_DIR, default .propeller)
  --store URL            where state lives: postgres://USER@HOST:PORT/DB or sqlite:PATH (env STORE_URL,
                         default sqlite:DATA_DIR/state.db)
  --lease-duration D     replicas (--store postgres://… with --broker): how long the owner of placement, liveness,
                         cron and FL rounds may go without renewing its lease; another replica takes over within
                         D + 1 s of its death (env LEASE_DURATION, default 5s, at least 1s)
  --credentials FILE     extra broker accounts (see broker/README.md for the format)
  --debug-account        enable the read-only 'debug' account (subscribe under m/DOMAIN/c/CHANNEL/messages/#);
                         its password is in DATA_DIR/debug.secret, kept across restarts (delete it for a new one)
  --local-proplets N     start N node proplets in this process (default 0; npm start uses 1)
  --api-token TOKEN      the HTTP API's token (env PROPELLER_API_TOKEN; default: DATA_DIR/api.token,
                         created on first start, mode 0600; the CLI reads it from there)
  --no-auth              serve the HTTP API without a token (anyone who reaches the port controls the fleet)
  --fetch-allow LIST     comma-separated CIDRs, addresses or host names the control plane may fetch modules
                         from although loopback, link-local or private (env PROPELLER_FETCH_ALLOW; default none)
  --fetch-deny LIST      more CIDRs, addresses or host names never fetched from (env PROPELLER_FETCH_DENY)
  --log-level LEVEL      debug, info, warn, error or silent (default info)
  --config FILE          YAML settings shaped like the seed's propeller-config (scheduler, healthMonitor)
  --scheduler TYPE       round-robin, least-loaded, random, resource-aware or hybrid (env SCHEDULER_TYPE, default hybrid)
  --public-url URL       this API's address as proplets reach it, for FL tasks' MODEL_URI (env PROPELLER_PUBLIC_URL,
                         default http://HOST:HTTP_PORT)
  --kubeconfig FILE      also run the Kubernetes adapter against this cluster (see propeller k8s adapter --help)
  --console-dir DIR      web console assets served at / (env PROPELLER_CONSOLE_DIR; default the built console/dist; '' for none)
${scopeHelp}
  Health: HEALTH_CHECK_INTERVAL (10s), OFFLINE_THRESHOLD (30s), FAILURE_THRESHOLD (2m) in env, over the config file.
  RECONNECT_GRACE (default OFFLINE_THRESHOLD): after a restart, how long tasks placed before it wait for their
  proplets to reconnect and report before they count as lost.
  START_ACK_TIMEOUT (10s): a start our proplets do not acknowledge in time counts as refused.
  PROPELLER_RUST_MAX_PACKET (10485760): Propeller Rust proplets' PROPLET_MQTT_MAX_PACKET_SIZE; larger modules go in chunks.`,
  async run(v) {
    const env = process.env;
    const level = (str(v['log-level']) ?? env.PROPELLER_LOG_LEVEL ?? 'info') as Level | 'silent';
    if (!['debug', 'info', 'warn', 'error', 'silent'].includes(level)) throw new UsageError(`--log-level must be debug, info, warn, error or silent`);
    const log = createLogger(level);
    const sc = scopeFrom(v);
    const host = str(v.host) ?? '127.0.0.1';
    const limits = brokerLimits(v, env);
    if (Object.keys(limits).length && (str(v.broker) ?? env.MQTT_BROKER)) {
      throw new UsageError('--max-connections-per-proplet and --auth-backoff-* set the embedded broker; an external broker has its own (Mosquitto: max_connections)');
    }
    const dataDir = dataDirFrom(v);
    mkdirSync(dataDir, { recursive: true });
    let health;
    let file: FileConfig = {};
    let schedulerType: string;
    let restartGraceMs: number | undefined;
    let startAckTimeoutMs: number | undefined;
    try {
      if (env.START_ACK_TIMEOUT) startAckTimeoutMs = parseDuration('START_ACK_TIMEOUT', env.START_ACK_TIMEOUT);
      const cfgPath = str(v.config) ?? env.PROPELLER_CONFIG;
      if (cfgPath) file = loadConfigFile(cfgPath);
      health = healthFromEnv(env, { checkIntervalMs: 10_000, offlineThresholdMs: 30_000, failureThresholdMs: 120_000, ...file.health });
      restartGraceMs = env.RECONNECT_GRACE ? parseDuration('RECONNECT_GRACE', env.RECONNECT_GRACE) : undefined;
      schedulerType = parseSchedulerType(str(v.scheduler) ?? env.SCHEDULER_TYPE ?? file.scheduler?.type ?? 'hybrid');
    } catch (e) {
      if (e instanceof ConfigError) throw new UsageError(e.message);
      throw e;
    }
    // rows other replicas committed refresh this one's view (the control plane exists by then)
    let cp: ControlPlane | undefined;
    const loc = storeLocation(str(v.store) ?? env.STORE_URL, dataDir);
    const external = str(v.broker) ?? env.MQTT_BROKER;
    const leaseMs = leaseDuration(str(v['lease-duration']) ?? env.LEASE_DURATION);
    const dynsec = accountsFrom(v, external);
    // PostgreSQL and an external broker: one of N replicas (docs/scaling.md)
    const replica =
      loc.engine === 'postgres' && external
        ? new Replica({
            url: loc.url,
            name: `propeller/${sc.domain}/${sc.channel}`,
            holder: `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`,
            leaseMs,
            // a replica without its broker or store hands the lease to one that has them
            eligible: () => cp?.ready() ?? true,
            log: (l, m, f) => log(l, m, { c: 'replica', ...f }),
          })
        : undefined;
    const store = await openStore(loc, {
      log: (l, m, f) => log(l, m, { c: 'store', ...f }),
      onChange: (k) => cp?.refresh(k),
      onConflict: (k) => cp?.refresh(k),
      // owner-only writes carry the lease's fencing token, checked when they commit
      ...(replica ? { fence: () => replica.fence(), onFenced: (why: string) => replica.stepDown(why) } : {}),
    });
    // one plane = one store + one domain/channel: refuse to mix two (docs/scaling.md, "Faults")
    let storeId: string | undefined;
    if (loc.engine === 'postgres') {
      try {
        storeId = await claimStore(loc.url, sc);
      } catch (e) {
        await store.close();
        throw e;
      }
    }
    let broker: EmbeddedBroker | undefined;
    let creds: CredentialStore | undefined;
    let accounts: DynsecAccounts | undefined;
    let mqtt: { url: string; local?: LocalLink; username?: string; password?: string; trustPayloadSender?: boolean; shareGroup?: string; clientId?: string };
    if (external) {
      mqtt = {
        url: brokerUrl(external),
        username: str(v['mqtt-username']) ?? env.MQTT_USERNAME,
        password: str(v['mqtt-password']) ?? env.MQTT_PASSWORD,
        trustPayloadSender: v['trust-payload-sender'] === true,
        ...(replica ? { shareGroup: `propeller-${sc.domain}-${sc.channel}`, clientId: `propeller-manager-${randomUUID()}` } : {}),
      };
      if (dynsec) accounts = await openDynsecAccounts({ url: mqtt.url, scope: sc, admin: dynsec.admin, manager: mqtt, store, log });
    } else {
      creds = openCredentials(store, str(v.credentials));
      const managerSecret = creds.issue('propeller-manager', 'manager');
      if (v['debug-account']) {
        const { path, reused } = debugAccount(creds, dataDir);
        log('info', 'debug account enabled: read-only, username debug', { password_file: path, kept_from_last_start: reused, may_subscribe: `${base(sc)}/#` });
      }
      const tlsPort = str(v['tls-port']);
      broker = await EmbeddedBroker.start({
        scope: sc,
        credentials: creds,
        managerFirst: true,
        ...limits,
        host,
        port: int('mqtt-port', v['mqtt-port'] ?? env.PROPELLER_MQTT_PORT, 1883),
        ...(v['ws-port'] ? { ws: { host, port: int('ws-port', v['ws-port'], 0) } } : {}),
        ...(tlsPort ? { tls: { host, port: int('tls-port', tlsPort, 0), cert: readText(need(v, 'tls-cert')), key: readText(need(v, 'tls-key')) } } : {}),
        log: (lvl, msg, fields) => log(lvl, msg, { c: 'broker', ...fields }),
      });
      mqtt = { url: broker.url, local: broker.local(), username: 'propeller-manager', password: managerSecret };
      log('info', 'embedded broker listening', { url: broker.url, ...(broker.wsUrl ? { ws: broker.wsUrl } : {}), ...(broker.tlsUrl ? { tls: broker.tlsUrl } : {}) });
    }
    // replicas announce their store on the broker; another store there for this domain/channel is refused
    const presence =
      replica && storeId
        ? await PlanePresence.start({ url: mqtt.url, username: mqtt.username, password: mqtt.password, scope: sc, storeId, log }).catch(async (e: Error) => {
            await accounts?.close();
            await store.close();
            throw e.name === 'PlaneConflictError' ? e : new Error(`cannot connect to MQTT broker ${mqtt.url}: ${e.message}`);
          })
        : undefined;
    const auth = apiAuth(v, dataDir, log);
    let fetchRules: { allow: string[]; deny: string[] };
    try {
      fetchRules = { allow: parseFetchList('--fetch-allow', str(v['fetch-allow']) ?? env.PROPELLER_FETCH_ALLOW), deny: parseFetchList('--fetch-deny', str(v['fetch-deny']) ?? env.PROPELLER_FETCH_DENY) };
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const publicUrl = str(v['public-url']) ?? env.PROPELLER_PUBLIC_URL;
    if (publicUrl !== undefined && !/^https?:\/\/[^/]+/.test(publicUrl)) throw new UsageError(`--public-url must be an http(s) URL, got ${JSON.stringify(publicUrl)}`);
    const staticDir = consoleDir(str(v['console-dir']) ?? env.PROPELLER_CONSOLE_DIR);
    await replica?.start();
    cp = new ControlPlane({
      ...(replica ? { replica } : {}),
      ...(presence ? { dependencies: [presence.dependency] } : {}),
      scope: sc,
      mqtt,
      http: { host, port: int('http-port', v['http-port'] ?? env.PROPELLER_HTTP_PORT, 7070), ...auth, staticDir },
      health,
      store,
      fetch: fetchRules,
      scheduler: { ...file.scheduler, type: schedulerType as CreateSchedulerConfig['type'] },
      ...(file.autoEvacuateTasks !== undefined ? { autoEvacuateTasks: file.autoEvacuateTasks } : {}),
      ...(file.maxAttempts !== undefined ? { maxAttempts: file.maxAttempts } : {}),
      ...(restartGraceMs !== undefined ? { restartGraceMs } : {}),
      log,
      defaultMetrics: true,
      ...(publicUrl ? { publicUrl } : {}),
      ...(startAckTimeoutMs !== undefined ? { startAckTimeoutMs } : {}),
      ...(env.PROPELLER_RUST_MAX_PACKET ? { propeller: { rustMaxPacket: int('PROPELLER_RUST_MAX_PACKET', env.PROPELLER_RUST_MAX_PACKET, 10 * 1024 * 1024) } } : {}),
      ...(creds ? { credentials: { issue: (id: string) => creds.issue(id, 'proplet'), revoke: (id: string) => {
              creds.delete(id);
              broker?.disconnect(id);
            },
            role: (id: string) => creds.get(id)?.role,
          },
        } : {}),
      ...(accounts ? { credentials: accounts.credentials } : {}),
    });
    broker?.attachMetrics(cp.metrics.registry); // the broker's drops and refused CONNECTs on /metrics
    const port = await cp.start();
    broker?.admitAll();
    const proplets: NodeProplet[] = [];
    const n = int('local-proplets', v['local-proplets'], 0);
    for (let i = 1; i <= n; i++) {
      const id = `local-${i}`;
      const secret = creds ? creds.issue(id, 'proplet') : await accounts?.issueLocal(id);
      const p = new NodeProplet({ id, secret, url: mqtt.url, scope: sc, heartbeatMs: Math.min(10_000, health.offlineThresholdMs / 3), log: (l, m, f) => log(l, m, { c: id, ...f }) });
      await p.start();
      proplets.push(p);
    }
    const token = 'token' in auth ? auth.token : undefined;
    const kubeconfig = str(v.kubeconfig);
    const apiHost = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host.includes(':') ? `[${host}]` : host;
    const adapter = kubeconfig ? await (await import('./k8s.ts')).launchAdapter({ kubeconfig, controlPlane: `http://${apiHost}:${port}`, token, log, job: { broker: mqtt.url } }) : undefined;
    if (token) log('info', 'web console (signs this browser in)', { url: `http://${apiHost}:${port}/login?token=${token}` });
    else if (staticDir) log('info', 'web console', { url: `http://${apiHost}:${port}/` });
    log('info', 'ready', { api: `http://${host}:${port}`, broker: mqtt.url, local_proplets: n });
    await new Promise<void>((resolve) => {
      const stop = (sig: string) => {
        log('info', `${sig}: shutting down`);
        // A clean shutdown waits on peers (broker, proplets, adapter); none may hold the process past the deadline.
        setTimeout(() => {
          log('error', `shutdown did not finish within ${SHUTDOWN_DEADLINE_MS / 1000}s: exiting`);
          process.exit(1);
        }, SHUTDOWN_DEADLINE_MS).unref();
        process.once('SIGINT', () => process.exit(130));
        process.once('SIGTERM', () => process.exit(143));
        resolve();
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
    });
    await adapter?.close();
    await Promise.all(proplets.map((p) => p.close()));
    await replica?.stop();
    await presence?.close();
    await cp.close();
    await accounts?.close();
    await broker?.close();
    return 0;
  },
};

/**
 * The embedded broker's per-account connection limit and login back-off, from flags over env; the
 * defaults are the broker's own (broker/limits.ts). A bad value is a usage error naming the flag.
 */
function brokerLimits(v: Record<string, unknown>, env: NodeJS.ProcessEnv): Pick<BrokerOptions, 'connectionLimits' | 'authBackoff'> {
  const given = (flag: string, name: string): string | undefined => str(v[flag]) ?? env[name];
  const out: Pick<BrokerOptions, 'connectionLimits' | 'authBackoff'> = {};
  const perProplet = given('max-connections-per-proplet', 'PROPELLER_MAX_CONNECTIONS_PER_PROPLET');
  if (perProplet !== undefined) {
    const n = int('max-connections-per-proplet', perProplet, 1);
    if (n < 1) throw new UsageError(`--max-connections-per-proplet must be at least 1, got ${JSON.stringify(perProplet)}`);
    out.connectionLimits = { proplet: n };
  }
  const failures = given('auth-backoff-failures', 'PROPELLER_AUTH_BACKOFF_FAILURES');
  const window = given('auth-backoff-window', 'PROPELLER_AUTH_BACKOFF_WINDOW');
  const backoff: { failures?: number; windowMs?: number } = {};
  if (failures !== undefined) backoff.failures = int('auth-backoff-failures', failures, 10);
  if (window !== undefined) {
    try {
      backoff.windowMs = parseDuration('--auth-backoff-window', window);
    } catch (e) {
      if (e instanceof ConfigError) throw new UsageError(e.message);
      throw e;
    }
    if (!(backoff.windowMs > 0)) throw new UsageError(`--auth-backoff-window must be longer than 0, got ${JSON.stringify(window)}`);
  }
  if (backoff.failures === 0) out.authBackoff = false;
  else if (failures !== undefined || window !== undefined) out.authBackoff = backoff;
  return out;
}

/** The web console's built assets: as given, or console/dist of this package when it has been built. */
function consoleDir(given: string | undefined): string | undefined {
  if (given !== undefined) return given || undefined;
  for (const up of ['../console/dist', '../../console/dist']) {
    const dir = fileURLToPath(new URL(up, import.meta.url));
    if (existsSync(join(dir, 'index.html'))) return dir;
  }
  return undefined;
}

/** --lease-duration / LEASE_DURATION: a duration of at least 1 s (default 5 s). */
function leaseDuration(given: string | undefined): number {
  if (given === undefined) return DEFAULT_LEASE_MS;
  let ms: number;
  try {
    ms = parseDuration('--lease-duration', given);
  } catch {
    ms = NaN;
  }
  if (!(ms >= 1000)) throw new UsageError(`--lease-duration (LEASE_DURATION) must be a duration of at least 1s, such as 5s or 2500ms; got ${JSON.stringify(given)}`);
  return ms;
}

function storeLocation(url: string | undefined, dataDir: string): StoreLocation {
  if (!url) return { engine: 'sqlite', path: join(dataDir, 'state.db') };
  try {
    return parseStoreUrl(url);
  } catch (e) {
    if (e instanceof StoreError) throw new UsageError(e.message);
    throw e;
  }
}

/** The API's token: given, or the data dir's (created on first start); or none, when --no-auth says so. */
function apiAuth(v: Record<string, unknown>, dataDir: string, log: ReturnType<typeof createLogger>): { token: string; tokenHint: string } | { noAuth: true } {
  const given = str(v['api-token']) ?? process.env.PROPELLER_API_TOKEN;
  if (v['no-auth']) {
    if (given) throw new UsageError('--no-auth and --api-token (or PROPELLER_API_TOKEN) contradict each other');
    log('warn', 'HTTP API without authentication (--no-auth): anyone who can reach its port can run code on every proplet');
    return { noAuth: true };
  }
  if (given) return { token: given, tokenHint: 'the token serve was given with --api-token or PROPELLER_API_TOKEN' };
  const { token, file, created } = ensureApiToken(dataDir);
  log('info', created ? 'API token created' : 'API token', { file: resolve(file) });
  return { token, tokenHint: `the token is in ${file} on the control plane's host` };
}

function need(v: Record<string, unknown>, name: string): string {
  const x = str(v[name]);
  if (!x) throw new UsageError(`--${name} is required with --tls-port`);
  return x;
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * Accounts issued by the control plane live in the durable store (hashes
 * only). Accounts from --credentials stay in their own file, which is their
 * source of truth.
 */
function openCredentials(store: Store, file: string | undefined): CredentialStore {
  const fromFile = new Set<string>();
  const creds = new CredentialStore({
    onChange: (c) => {
      if (fromFile.has(c.id)) return;
      if ('deleted' in c) store.credentials.delete(c.id);
      else store.credentials.put(c.id, { id: c.id, role: c.role, hash: c.hash });
    },
  });
  for (const rec of store.credentials.list()) creds.set(rec, { notify: false });
  if (file) {
    for (const rec of parseCredentials(readText(file), file)) {
      creds.set(rec, { notify: false });
      fromFile.add(rec.id);
    }
  }
  return creds;
}
