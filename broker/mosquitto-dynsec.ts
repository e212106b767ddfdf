// Per-proplet accounts on an external Mosquitto, through its dynamic security
// plugin (mosquitto_dynamic_security.so, Mosquitto ≥ 2.0): the same accounts and
// topic rules the embedded broker enforces, provisioned over MQTT on
// $CONTROL/dynamic-security/v1 while the broker runs.
//
// Mosquitto 2.0.11's plugin does not substitute %u or %c in ACL topics (checked
// against Debian's build: a role allowing 'a/%u/x' let 'bob' publish on neither
// a/bob/x nor a/eve/x), so every proplet gets a role of its own naming its own
// topics literally. A broker cannot read payloads, so on this path every
// proplet-to-plane message must carry the sender in the topic: the role allows
// only the per-proplet forms.

import { randomUUID } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import { base, flUpdateFilter, propletSubscriptions, topic, type Scope } from '../topics/index.ts';

const CONTROL = '$CONTROL/dynamic-security/v1';
const RESPONSE = `${CONTROL}/response`;

export type AclType = 'publishClientSend' | 'publishClientReceive' | 'subscribeLiteral' | 'subscribePattern' | 'unsubscribeLiteral' | 'unsubscribePattern';

export interface Acl {
  acltype: AclType;
  topic: string;
  allow: boolean;
  priority?: number;
}

export class DynsecError extends Error {
  override name = 'DynsecError';
  constructor(
    readonly command: string,
    readonly reason: string,
  ) {
    super(`mosquitto dynamic security: ${command}: ${reason}`);
  }
}

/** The role name of one proplet: its topics and nothing else. */
export function propletRole(id: string): string {
  return `propeller-proplet-${id}`;
}

/** The role of the control plane's own account: everything under the scope. */
export function managerRole(s: Scope): string {
  return `propeller-manager-${s.domain}-${s.channel}`;
}

/** What one proplet may do, literally: publish its own per-proplet topics, subscribe to its own. */
export function propletAcls(s: Scope, id: string): Acl[] {
  const send = (['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'registry.proplet'] as const).map((k) => topic(s, k, id));
  // the one wildcard level is the round, never the sender
  send.push(flUpdateFilter(s, id));
  return [
    ...send.map((t) => ({ acltype: 'publishClientSend' as const, topic: t, allow: true })),
    ...propletSubscriptions(s, id).map((t) => ({ acltype: 'subscribeLiteral' as const, topic: t, allow: true })),
    ...propletSubscriptions(s, id).map((t) => ({ acltype: 'unsubscribeLiteral' as const, topic: t, allow: true })),
  ];
}

export function managerAcls(s: Scope): Acl[] {
  // the whole domain: both topic layouts, and the device channels of Propeller's embed-proplets
  const all = `${base({ domain: s.domain, channel: '+' }, 'bare')}/#`;
  return [
    { acltype: 'publishClientSend', topic: all, allow: true },
    { acltype: 'subscribePattern', topic: all, allow: true },
    { acltype: 'unsubscribePattern', topic: all, allow: true },
  ];
}

interface Response {
  command: string;
  error?: string;
  correlationData?: string;
  data?: unknown;
}

export interface DynsecOptions {
  /** The broker, e.g. mqtt://127.0.0.1:1883. */
  url: string;
  /** An account with the plugin's admin role (`mosquitto_ctrl dynsec init FILE USER`). */
  username: string;
  password: string;
  /** How long one command may wait for the broker's answer. */
  timeoutMs?: number;
}

/** An admin connection to the plugin; one command list per call, answered in order. */
export class MosquittoDynsec {
  private pending = new Map<string, { resolve: (r: Response[]) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();

  private constructor(
    private client: MqttClient,
    private timeoutMs: number,
  ) {
    client.on('message', (_t, payload) => this.onResponse(payload));
    client.on('close', () => this.failAll(new Error('connection to the broker closed')));
  }

  static async connect(o: DynsecOptions): Promise<MosquittoDynsec> {
    const client = await mqtt.connectAsync(o.url, {
      protocolVersion: 4,
      username: o.username,
      password: o.password,
      clientId: `propeller-dynsec-${randomUUID()}`,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
    });
    const granted = await client.subscribeAsync(RESPONSE, { qos: 1 });
    if (granted.some((g) => g.qos === 128)) {
      await client.endAsync(true);
      throw new DynsecError('subscribe', `${o.username} may not read ${RESPONSE}: is it the plugin's admin account, and is the plugin loaded?`);
    }
    return new MosquittoDynsec(client, o.timeoutMs ?? 10_000);
  }

  /** Runs commands in one message; throws on the first that failed, naming it. */
  async call(commands: Record<string, unknown>[]): Promise<Response[]> {
    const id = randomUUID();
    const tagged = commands.map((c, i) => ({ ...c, correlationData: `${id}:${i}` }));
    const answer = new Promise<Response[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DynsecError(String(commands[0]?.command), `no answer within ${this.timeoutMs} ms: is the dynamic security plugin loaded?`));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
    });
    await this.client.publishAsync(CONTROL, JSON.stringify({ commands: tagged }), { qos: 1 });
    const responses = await answer;
    for (const r of responses) if (r.error) throw new DynsecError(r.command, r.error);
    return responses;
  }

  /** A proplet's account and its role; refused if the account exists (use setSecret to rotate). */
  async addProplet(s: Scope, id: string, secret: string): Promise<void> {
    const role = propletRole(id);
    try {
      await this.call([{ command: 'createRole', rolename: role, acls: propletAcls(s, id) }]);
    } catch (e) {
      // a role left by an earlier, half-finished add is reused: it holds only this id's topics
      if (!(e instanceof DynsecError && /already exists/i.test(e.reason))) throw e;
    }
    await this.call([{ command: 'createClient', username: id, password: secret, roles: [{ rolename: role }] }]);
  }

  async setSecret(id: string, secret: string): Promise<void> {
    await this.call([{ command: 'setClientPassword', username: id, password: secret }]);
  }

  /** Deletes the account (Mosquitto disconnects its clients) and its role. */
  async removeProplet(id: string): Promise<void> {
    await this.call([{ command: 'deleteClient', username: id }]);
    await this.call([{ command: 'deleteRole', rolename: propletRole(id) }]).catch(() => undefined);
  }

  /** The control plane's own account: everything under its domain. */
  async addManager(s: Scope, username: string, password: string): Promise<void> {
    const role = managerRole(s);
    await this.call([{ command: 'createRole', rolename: role, acls: managerAcls(s) }]).catch((e) => {
      if (!(e instanceof DynsecError && /already exists/i.test(e.reason))) throw e;
    });
    await this.call([{ command: 'createClient', username, password, roles: [{ rolename: role }] }]);
  }

  async close(): Promise<void> {
    this.failAll(new Error('closed'));
    await this.client.endAsync();
  }

  private onResponse(payload: Buffer): void {
    let responses: Response[];
    try {
      responses = (JSON.parse(payload.toString('utf8')) as { responses?: Response[] }).responses ?? [];
    } catch {
      return; // not ours to judge: another admin's garbage
    }
    const id = responses[0]?.correlationData?.split(':')[0];
    const p = id === undefined ? undefined : this.pending.get(id);
    if (!p) return;
    this.pending.delete(id!);
    clearTimeout(p.timer);
    p.resolve(responses);
  }

  private failAll(e: Error): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(id);
    }
  }
}
