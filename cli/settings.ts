// Settings every command shares, from flags first, then env, then defaults.

import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ControlPlaneClient } from '../control-plane/client.ts';
import { scope, TopicError, type Scope } from '../topics/index.ts';
import { UsageError, str, type Options } from './args.ts';

export const scopeOptions: Options = {
  domain: { type: 'string' },
  channel: { type: 'string' },
};
export const scopeHelp = `  --domain ID            topic domain (env PROPELLER_DOMAIN_ID, default propeller)
  --channel ID           topic channel (env PROPELLER_CHANNEL_ID, default control)`;

export function scopeFrom(values: Record<string, unknown>, env = process.env): Scope {
  try {
    return scope(str(values.domain) ?? env.PROPELLER_DOMAIN_ID ?? 'propeller', str(values.channel) ?? env.PROPELLER_CHANNEL_ID ?? 'control');
  } catch (e) {
    if (e instanceof TopicError) throw new UsageError(e.message);
    throw e;
  }
}

export const apiOptions: Options = {
  api: { type: 'string' },
  token: { type: 'string' },
  'api-token': { type: 'string' },
  'data-dir': { type: 'string' },
};
export const apiHelp = `  --api URL              control plane HTTP API (env PROPELLER_API, default http://127.0.0.1:7070)
  --token TOKEN          API token (also --api-token; env PROPELLER_API_TOKEN; default: the one
                         'propeller serve' wrote to DATA_DIR/api.token)
  --data-dir DIR         where to find api.token (env PROPELLER_DATA_DIR, default .propeller)`;

export function apiFrom(values: Record<string, unknown>, env = process.env): { url: string; token?: string } {
  const url = str(values.api) ?? env.PROPELLER_API ?? 'http://127.0.0.1:7070';
  if (!/^https?:\/\//.test(url)) throw new UsageError(`--api must be an http(s) URL, got ${JSON.stringify(url)}`);
  const token = str(values.token) ?? str(values['api-token']) ?? env.PROPELLER_API_TOKEN ?? readApiToken(dataDirFrom(values, env));
  return token ? { url, token } : { url };
}

/** The file `serve` keeps its API token in, inside its data dir. */
export function apiTokenFile(dataDir: string): string {
  return join(dataDir, 'api.token');
}

/** The token `serve` wrote to DATA_DIR/api.token, if there is one. */
export function readApiToken(dataDir: string): string | undefined {
  try {
    return readFileSync(apiTokenFile(dataDir), 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * The API token of a data dir, created on first use (32 random bytes, only
 * the owner may read the file). A file others can read is narrowed to 0600.
 */
export function ensureApiToken(dataDir: string): { token: string; file: string; created: boolean } {
  const file = apiTokenFile(dataDir);
  const token = readApiToken(dataDir);
  if (token) {
    if ((statSync(file).mode & 0o077) !== 0) chmodSync(file, 0o600);
    return { token, file, created: false };
  }
  const fresh = randomBytes(32).toString('base64url');
  writeFileSync(file, fresh + '\n', { mode: 0o600 });
  chmodSync(file, 0o600); // the mode above applies only to a file that did not exist
  return { token: fresh, file, created: true };
}

export function apiClient(values: Record<string, unknown>): ControlPlaneClient {
  const { url, token } = apiFrom(values);
  return new ControlPlaneClient(url, token);
}

export function dataDirFrom(values: Record<string, unknown>, env = process.env): string {
  return str(values['data-dir']) || env.PROPELLER_DATA_DIR || '.propeller';
}

export function brokerUrl(v: string): string {
  const url = /^[a-z]+:\/\//.test(v) ? v : `mqtt://${v}`;
  if (!/^(mqtt|mqtts|tcp|ssl|ws|wss):\/\/[^/]+/.test(url)) throw new UsageError(`broker URL must look like mqtt://host:port, got ${JSON.stringify(v)}`);
  return url;
}
