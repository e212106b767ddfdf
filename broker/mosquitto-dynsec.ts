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
import { base, flUpdateFilter, LAYOUTS, propletSubscriptions, ROOT_FL_FILTER, rootFlUpdateFilter, sharedSubscriptions, topic, type Scope } from '../topics/index.ts';

const CONTROL = '$CONTROL/dynamic-security/v1';
const RESPONSE = `${CONTROL}/response`;

export type AclType = 'publishClientSend' | 'publishClientReceive' | 'subscribeLiteral' | 'subscribePattern' | 'unsubscribeLiteral' | 'unsubscribePattern';

export interface Acl {
  acltype: AclType;
  topic: string;
  allow: boolean;
  priority?: number;
}

/**
 * A command the plugin refused (`reason` is Mosquitto's own words), or one that
 * could not be asked: `unavailable` when the broker was not reachable or did not
 * answer in time (a caller may retry; a refusal will be refused again).
 */
export class DynsecError extends Error {
  override name = 'DynsecError';
  constructor(
    readonly command: string,
    readonly reason: string,
    readonly unavailable = false,
  ) {
    super(`mosquitto dynamic security: ${command}: ${reason}`);
  }
}

/**
 * An account the request may not make or change: `exists` (a proplet account
 * of that name is already there: rotate it instead) or `not_ours` (an account
 * of that name that is not a proplet's: the control plane's, the admin's, an
 * operator's; never touched).
 */
export class DynsecConflict extends Error {
  override name = 'DynsecConflict';
  constructor(
    readonly username: string,
    readonly kind: 'exists' | 'not_ours',
  ) {
    super(
      kind === 'exists'
        ? `the broker already has an account ${username}`
        : `the broker's account ${username} is not a proplet account made by propeller: it is not changed or deleted through the control plane`,
    );
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

/** What a proplet publishes besides FL updates (the embedded broker's PROPLET_PUBLISH_KINDS). */
const SENDS = ['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'registry.proplet'] as const;

/**
 * What one proplet may do, literally: publish its own per-proplet topics and
 * its FL updates in the three forms proplets use (ours, the bare layout of
 * Propeller's proplets, and the broker root where Propeller's embed-proplet
 * sends them), subscribe to its own start, stop and module topics; and the
 * same on its device channel.
 */
export function propletAcls(s: Scope, id: string): Acl[] {
  const send = SENDS.map((k) => topic(s, k, id));
  // the one wildcard level is the round, never the sender
  send.push(flUpdateFilter(s, id), flUpdateFilter(s, id, 'bare'), rootFlUpdateFilter(id));
  const read = propletSubscriptions(s, id);
  // Its device channel (m/DOMAIN/c/ID/…, where Propeller's embed-proplet lives): there the channel names the
  // sender, so its shared topics are its own. Not when the id is the scope's channel: that one is everyone's.
  if (id !== s.channel) {
    const own: Scope = { domain: s.domain, channel: id };
    for (const layout of LAYOUTS) {
      send.push(...SENDS.flatMap((k) => [topic(own, k, undefined, layout), topic(own, k, id, layout)]), flUpdateFilter(own, id, layout));
      read.push(...sharedSubscriptions(own, layout));
    }
  }
  return [
    ...send.map((t) => ({ acltype: 'publishClientSend' as const, topic: t, allow: true })),
    ...read.map((t) => ({ acltype: 'subscribeLiteral' as const, topic: t, allow: true })),
    ...read.map((t) => ({ acltype: 'unsubscribeLiteral' as const, topic: t, allow: true })),
  ];
}

export function managerAcls(s: Scope): Acl[] {
  // the whole domain: both topic layouts, and the device channels of Propeller's embed-proplets
  const all = `${base({ domain: s.domain, channel: '+' }, 'bare')}/#`;
  // Mosquitto 2.0.11 checks a shared subscription as the whole '$share/GROUP/filter' string
  const shared = `$share/+/${all}`;
  const filters = [all, shared, ROOT_FL_FILTER];
  return [
    { acltype: 'publishClientSend', topic: all, allow: true },
    ...filters.map((t) => ({ acltype: 'subscribePattern' as const, topic: t, allow: true })),
    ...filters.map((t) => ({ acltype: 'unsubscribePattern' as const, topic: t, allow: true })),
  ];
}

const alreadyExists = (e: unknown) => e instanceof DynsecError && /already exists/i.test(e.reason);
const notFound = (e: unknown) => e instanceof DynsecError && /not found/i.test(e.reason);

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
    client.on('close', () => this.failAll(new DynsecError('command', 'the connection to the broker closed before it answered', true)));
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

  /** True while the admin connection is up: commands fail at once (unavailable) otherwise. */
  get connected(): boolean {
    return this.client.connected;
  }

  /** Runs commands in one message; throws on the first that failed, naming it. */
  async call(commands: Record<string, unknown>[], tolerate: (e: DynsecError) => boolean = () => false): Promise<Response[]> {
    const name = String(commands[0]?.command);
    // mqtt.js would queue the command until it reconnects: a caller must not wait on a broker that is away
    if (!this.client.connected) throw new DynsecError(name, 'not connected to the broker', true);
    const id = randomUUID();
    const tagged = commands.map((c, i) => ({ ...c, correlationData: `${id}:${i}` }));
    const answer = new Promise<Response[]>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new DynsecError(name, `no answer within ${this.timeoutMs} ms: is the dynamic security plugin loaded?`, true));
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
    });
    await this.client.publishAsync(CONTROL, JSON.stringify({ commands: tagged }), { qos: 1 }).catch(() => undefined);
    const responses = await answer;
    for (const r of responses) {
      if (!r.error) continue;
      const e = new DynsecError(r.command, r.error);
      if (!tolerate(e)) throw e;
    }
    return responses;
  }

  /** The roles of an account, or undefined when there is no such account. */
  async clientRoles(username: string): Promise<string[] | undefined> {
    try {
      const [r] = await this.call([{ command: 'getClient', username }]);
      const roles = (r?.data as { client?: { roles?: { rolename?: unknown }[] } } | undefined)?.client?.roles ?? [];
      return roles.map((x) => String(x.rolename));
    } catch (e) {
      if (notFound(e)) return undefined;
      throw e;
    }
  }

  /**
   * A proplet's account and its role. DynsecConflict('exists') if the account
   * exists (use rotateProplet); a role this call made is removed again when the
   * account could not be made, so a failure leaves nothing behind.
   */
  async addProplet(s: Scope, id: string, secret: string): Promise<void> {
    const role = propletRole(id);
    // a role left by an earlier, half-finished add is reused: it holds only this id's topics
    const made = await this.ensureRole(role, propletAcls(s, id));
    try {
      await this.call([{ command: 'createClient', username: id, password: secret, roles: [{ rolename: role }] }]);
    } catch (e) {
      if (made) await this.call([{ command: 'deleteRole', rolename: role }]).catch(() => undefined);
      if (alreadyExists(e)) throw new DynsecConflict(id, (await this.clientRoles(id).catch(() => undefined))?.includes(role) === false ? 'not_ours' : 'exists');
      throw e;
    }
  }

  /** A new secret for a proplet's account (Mosquitto disconnects its clients), or a new account when there is none. */
  async rotateProplet(s: Scope, id: string, secret: string): Promise<void> {
    const roles = await this.clientRoles(id);
    if (roles === undefined) return this.addProplet(s, id, secret);
    if (!roles.includes(propletRole(id))) throw new DynsecConflict(id, 'not_ours');
    // a rotation also brings a role made by an older version up to date
    await this.ensureRole(propletRole(id), propletAcls(s, id));
    await this.setSecret(id, secret);
  }

  async setSecret(id: string, secret: string): Promise<void> {
    await this.call([{ command: 'setClientPassword', username: id, password: secret }]);
  }

  /**
   * Deletes a proplet's account (Mosquitto disconnects its clients) and its
   * role; false when there was no account. An account that is not a proplet's
   * is refused (DynsecConflict 'not_ours').
   */
  async removeProplet(id: string): Promise<boolean> {
    const roles = await this.clientRoles(id);
    if (roles !== undefined && !roles.includes(propletRole(id))) throw new DynsecConflict(id, 'not_ours');
    if (roles !== undefined) await this.call([{ command: 'deleteClient', username: id }]);
    await this.call([{ command: 'deleteRole', rolename: propletRole(id) }]).catch((e) => {
      if (!notFound(e)) throw e;
    });
    return roles !== undefined;
  }

  /** The control plane's own account: everything under its domain. Refused if the account exists (see ensureManager). */
  async addManager(s: Scope, username: string, password: string): Promise<void> {
    await this.ensureManagerRole(s);
    await this.call([{ command: 'createClient', username, password, roles: [{ rolename: managerRole(s) }] }]);
  }

  /**
   * What `serve` does at start: the manager role with every ACL it needs (one
   * added to an older role too), and the account `username` holding it,
   * created with `password` when missing. An existing account keeps its
   * password (the operator's). Returns whether the account was created.
   */
  async ensureManager(s: Scope, username: string, password: string): Promise<boolean> {
    await this.ensureManagerRole(s);
    const roles = await this.clientRoles(username);
    if (roles === undefined) {
      await this.call([{ command: 'createClient', username, password, roles: [{ rolename: managerRole(s) }] }]);
      return true;
    }
    if (!roles.includes(managerRole(s))) await this.call([{ command: 'addClientRole', username, rolename: managerRole(s) }]);
    return false;
  }

  private async ensureManagerRole(s: Scope): Promise<void> {
    await this.ensureRole(managerRole(s), managerAcls(s));
  }

  /**
   * Creates the role, or gives an existing one (made by an older version, or
   * left by a failed add) every ACL it lacks; returns whether it was created.
   */
  private async ensureRole(rolename: string, acls: Acl[]): Promise<boolean> {
    try {
      await this.call([{ command: 'createRole', rolename, acls }]);
      return true;
    } catch (e) {
      if (!alreadyExists(e)) throw e;
    }
    await this.call(acls.map((acl) => ({ command: 'addRoleACL', rolename, ...acl })), alreadyExists);
    return false;
  }

  async close(): Promise<void> {
    this.failAll(new DynsecError('command', 'closed', true));
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

  private failAll(e: DynsecError): void {
    for (const [id, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(e);
      this.pending.delete(id);
    }
  }
}
