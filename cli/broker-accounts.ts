// Proplet accounts on an external Mosquitto (`serve --broker-accounts dynsec`):
// the API's credentials routes provision them through the dynamic security
// plugin, and answer only once Mosquitto has confirmed. The store keeps the
// hash of each secret, written after the broker said yes, so no replica ever
// holds a credential the broker does not; the broker is the authority on what
// exists (two replicas adding one id: the second is refused by Mosquitto).

import { generateSecret, hashSecret } from '../broker/credentials.ts';
import { DynsecConflict, DynsecError, MosquittoDynsec } from '../broker/mosquitto-dynsec.ts';
import type { ControlPlaneOptions, Store } from '../control-plane/index.ts';
import { HttpError } from '../control-plane/http-api.ts';
import type { Logger } from '../control-plane/log.ts';
import type { Scope } from '../topics/index.ts';
import { UsageError, str } from './args.ts';

export const accountsHelp = `  --broker-accounts MODE with --broker: who makes proplet accounts. 'external' (default): the broker's operator, and
                         POST /proplets answers 501; 'dynsec': the control plane, through Mosquitto's dynamic
                         security plugin, so 'propeller proplet add/rm' work (env PROPELLER_BROKER_ACCOUNTS)
  --broker-admin-username U
                         with dynsec: the plugin's admin account ('mosquitto_ctrl dynsec init FILE U') (env MQTT_ADMIN_USERNAME)
  --broker-admin-password P
                         its password (env MQTT_ADMIN_PASSWORD); serve creates the --mqtt-username account with
                         the --mqtt-password it is given, when the broker does not have it yet`;

export const accountsOptions = {
  'broker-accounts': { type: 'string' },
  'broker-admin-username': { type: 'string' },
  'broker-admin-password': { type: 'string' },
} as const;

export interface DynsecSettings {
  admin: { username: string; password: string };
}

/** The accounts mode from flags over env; the admin account when it is dynsec. A misfit is a usage error. */
export function accountsFrom(v: Record<string, unknown>, external: string | undefined, env = process.env): DynsecSettings | undefined {
  const mode = str(v['broker-accounts']) ?? env.PROPELLER_BROKER_ACCOUNTS ?? 'external';
  if (mode !== 'external' && mode !== 'dynsec') throw new UsageError(`--broker-accounts must be external or dynsec, got ${JSON.stringify(mode)}`);
  const username = str(v['broker-admin-username']) ?? env.MQTT_ADMIN_USERNAME;
  const password = str(v['broker-admin-password']) ?? env.MQTT_ADMIN_PASSWORD;
  if (mode === 'external') {
    if (str(v['broker-admin-username']) ?? str(v['broker-admin-password'])) throw new UsageError('--broker-admin-username/--broker-admin-password are used with --broker-accounts dynsec');
    return undefined;
  }
  if (!external) throw new UsageError('--broker-accounts dynsec needs --broker (the embedded broker makes its accounts itself)');
  if (!username || !password) throw new UsageError('--broker-accounts dynsec needs --broker-admin-username and --broker-admin-password (env MQTT_ADMIN_USERNAME, MQTT_ADMIN_PASSWORD)');
  return { admin: { username, password } };
}

export interface DynsecAccounts {
  credentials: NonNullable<ControlPlaneOptions['credentials']>;
  /** A local proplet's account (serve --local-proplets): its secret. */
  issueLocal(id: string): Promise<string>;
  close(): Promise<void>;
}

/**
 * Connects to the plugin as its admin, makes sure the control plane's own
 * account and role exist, and returns the credentials service the API uses.
 * A broker that refuses the admin or has no plugin is one line and a non-zero exit.
 */
export async function openDynsecAccounts(o: {
  url: string;
  scope: Scope;
  admin: { username: string; password: string };
  manager: { username?: string; password?: string };
  store: Store;
  log: Logger;
}): Promise<DynsecAccounts> {
  const { username: mgr, password: mgrPassword } = o.manager;
  if (!mgr || !mgrPassword) throw new UsageError('--broker-accounts dynsec needs --mqtt-username and --mqtt-password: the control plane’s own account, created when missing');
  let admin: MosquittoDynsec;
  try {
    admin = await MosquittoDynsec.connect({ url: o.url, ...o.admin });
    if (await admin.ensureManager(o.scope, mgr, mgrPassword)) o.log('info', 'broker account created for the control plane', { username: mgr, c: 'dynsec' });
  } catch (e) {
    throw new Error(`--broker-accounts dynsec: ${o.admin.username} at ${o.url}: ${(e as Error).message}`);
  }
  const reserved = new Set([mgr, o.admin.username]);
  const broker = async <T>(what: string, f: () => Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      if (e instanceof DynsecConflict) {
        throw new HttpError(409, e.kind === 'exists' ? `${e.message}: to replace its secret, ask again with rotate: true (CLI: --rotate)` : e.message, 'proplet_id');
      }
      if (e instanceof DynsecError) {
        o.log('warn', 'broker did not make the change', { c: 'dynsec', what, error: e.message });
        throw new HttpError(e.unavailable ? 503 : 502, `${what}: ${e.message}; nothing was changed`);
      }
      throw e;
    }
  };
  const issue = async (id: string, rotate: boolean): Promise<string> => {
    if (id.endsWith('-*')) {
      throw new HttpError(501, "group accounts (PREFIX-*) need wildcard user names, which Mosquitto's dynamic security plugin does not have: add each proplet (POST /proplets)");
    }
    if (reserved.has(id)) throw new HttpError(409, `${id} is reserved: the control plane's own or the broker's admin account`, 'proplet_id');
    // a lone surrogate has no UTF-8 form: Mosquitto drops such a command without an answer
    if (/\p{Cs}/u.test(id)) throw new HttpError(400, 'proplet_id: not valid Unicode (a lone surrogate): it cannot be an MQTT user name', 'proplet_id');
    const secret = generateSecret();
    await broker(`${rotate ? 'rotating' : 'creating'} the broker account of ${id}`, () => (rotate ? admin.rotateProplet(o.scope, id, secret) : admin.addProplet(o.scope, id, secret)));
    // only now: the store never holds an account the broker has not made
    o.store.credentials.put(id, { id, role: 'proplet', hash: hashSecret(secret) });
    return secret;
  };
  return {
    credentials: {
      issue,
      async revoke(id) {
        if (reserved.has(id)) throw new HttpError(409, `${id} is reserved: the control plane's own or the broker's admin account`, 'proplet_id');
        await broker(`deleting the broker account of ${id}`, () => admin.removeProplet(id));
        o.store.credentials.delete(id);
      },
      role: (id) => (reserved.has(id) ? 'manager' : o.store.credentials.get(id)?.role),
    },
    issueLocal: (id) => issue(id, true),
    close: () => admin.close(),
  };
}
