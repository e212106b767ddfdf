// Settings every command shares, from flags first, then env, then defaults.

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
};
export const apiHelp = `  --api URL              control plane HTTP API (env PROPELLER_API, default http://127.0.0.1:7070)
  --token TOKEN          API bearer token (env PROPELLER_API_TOKEN)`;

export function apiFrom(values: Record<string, unknown>, env = process.env): { url: string; token?: string } {
  const url = str(values.api) ?? env.PROPELLER_API ?? 'http://127.0.0.1:7070';
  if (!/^https?:\/\//.test(url)) throw new UsageError(`--api must be an http(s) URL, got ${JSON.stringify(url)}`);
  const token = str(values.token) ?? env.PROPELLER_API_TOKEN;
  return token ? { url, token } : { url };
}

export function apiClient(values: Record<string, unknown>): ControlPlaneClient {
  const { url, token } = apiFrom(values);
  return new ControlPlaneClient(url, token);
}

export function dataDirFrom(values: Record<string, unknown>, env = process.env): string {
  return str(values['data-dir']) ?? env.PROPELLER_DATA_DIR ?? '.propeller';
}

export function brokerUrl(v: string): string {
  const url = /^[a-z]+:\/\//.test(v) ? v : `mqtt://${v}`;
  if (!/^(mqtt|mqtts|tcp|ssl|ws|wss):\/\/[^/]+/.test(url)) throw new UsageError(`broker URL must look like mqtt://host:port, got ${JSON.stringify(v)}`);
  return url;
}
