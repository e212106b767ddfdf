// A whole system in one test process: the embedded broker and the control plane
// on free loopback ports, node proplets connected over real TCP.

import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { CredentialStore, EmbeddedBroker } from '../../broker/index.ts';
import { ControlPlaneClient } from '../../control-plane/client.ts';
import type { HealthConfig } from '../../control-plane/config.ts';
import { ControlPlane, type ControlPlaneOptions } from '../../control-plane/index.ts';
import { SqliteStore } from '../../control-plane/sqlite-store.ts';
import { NodeProplet, type NodePropletOptions } from '../../proplet-node/proplet.ts';
import { decode, type Result } from '../../protocol/index.ts';
import { scope as mkScope, topic } from '../../topics/index.ts';

export const scope = mkScope('propeller', 'control');

export interface Stack {
  broker: EmbeddedBroker;
  cp: ControlPlane;
  api: ControlPlaneClient;
  apiUrl: string;
  creds: CredentialStore;
  proplets: NodeProplet[];
  addProplet(id: string, o?: Partial<NodePropletOptions>): Promise<NodeProplet>;
  /** An mqtt.js client with fresh credentials of the given role. */
  client(id: string, role?: 'proplet' | 'manager' | 'debug', o?: mqtt.IClientOptions): Promise<MqttClient>;
  close(): Promise<void>;
}

export async function startStack(
  o: {
    proplets?: number;
    health?: Partial<HealthConfig>;
    cp?: Partial<ControlPlaneOptions>;
    proplet?: Partial<NodePropletOptions>;
    /** Require this API token (`api` sends it); without one the API is served with noAuth, an explicit test-only choice. */
    token?: string;
  } = {},
): Promise<Stack> {
  const creds = new CredentialStore();
  const broker = await EmbeddedBroker.start({ scope, credentials: creds, port: 0, log: () => {} });
  // the store users get (SQLite in a data dir), unless a test brings its own
  const dataDir = o.cp?.store ? undefined : mkdtempSync(join(tmpdir(), 'propeller-stack-'));
  const store = o.cp?.store ?? (await SqliteStore.open(join(dataDir!, 'state.db')));
  const cp = new ControlPlane({
    scope,
    store,
    // as `propeller serve` does: the control plane reaches its embedded broker in process
    mqtt: { url: broker.url, local: broker.local(), username: 'propeller-manager', password: creds.issue('propeller-manager', 'manager'), clientId: `cp-${Math.random()}` },
    health: { checkIntervalMs: 100, offlineThresholdMs: 5_000, failureThresholdMs: 10_000, ...o.health },
    credentials: { issue: (id) => creds.issue(id, 'proplet'), revoke: (id) => void creds.delete(id), role: (id) => creds.get(id)?.role },
    // test servers and registries live on loopback: allowed here explicitly (the default denies it)
    fetch: { allow: ['127.0.0.0/8', '::1'] },
    ...o.cp,
    http: { port: 0, ...(o.token ? { token: o.token } : { noAuth: true }), ...o.cp?.http },
  });
  const port = await cp.start();
  const apiUrl = `http://127.0.0.1:${port}`;
  const proplets: NodeProplet[] = [];
  const clients: MqttClient[] = [];
  const stack: Stack = {
    broker,
    cp,
    apiUrl,
    api: new ControlPlaneClient(apiUrl, o.token),
    creds,
    proplets,
    async addProplet(id, po = {}) {
      const p = new NodeProplet({ id, secret: creds.issue(id, 'proplet'), url: broker.url, scope, heartbeatMs: 1000, maxTasks: 4, ...o.proplet, ...po });
      await p.start();
      proplets.push(p);
      await until(() => cp.registry.get(id)?.state === 'alive', `proplet ${id} registered`);
      return p;
    },
    async client(id, role = 'proplet', co = {}) {
      const c = await mqtt.connectAsync(broker.url, { protocolVersion: 4, username: id, password: creds.issue(id, role), reconnectPeriod: 0, ...co });
      clients.push(c);
      return c;
    },
    async close() {
      await Promise.all(clients.map((c) => c.endAsync(true)));
      await Promise.all(proplets.map((p) => p.close().catch(() => {})));
      await cp.close();
      await broker.close();
      if (dataDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  for (let i = 1; i <= (o.proplets ?? 0); i++) await stack.addProplet(`p${i}`);
  return stack;
}

/**
 * Polls until `cond` holds; fails with `what` after `ms`, or after 30 s whichever is longer: the
 * limit only bounds a wait for something that never happens, and a busy machine must not fail a test
 * whose event comes late.
 */
/** A manager-role client that collects every proplet result the broker delivers, in arrival order. */
export async function watchResults(s: Stack, id: string): Promise<{ client: MqttClient; results: Result[] }> {
  const client = await s.client(id, 'manager');
  const results: Result[] = [];
  client.on('message', (t, payload) => {
    if (t.startsWith(topic(scope, 'proplet.results'))) results.push(decode('proplet.results', payload).msg);
  });
  await client.subscribeAsync(`${topic(scope, 'proplet.results')}/#`, { qos: 1 });
  return { client, results };
}

export async function until(cond: () => boolean | Promise<boolean>, what: string, ms = 30_000): Promise<void> {
  const end = Date.now() + Math.max(ms, 30_000);
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A loopback port that was free a moment ago (and refuses connections until someone binds it). */
export async function freePort(): Promise<number> {
  const srv = createServer().listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;
  await new Promise((r) => srv.close(r));
  return port;
}

export function hasCommand(cmd: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
