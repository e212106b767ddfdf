// `propeller watch`: every message on the tree, decoded (CBOR too), one JSON
// line each with its topic — the human view of the wire.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { decode, detectEncoding, FIELDS, toDisplay, type DecodeContext, type MessageKind } from '../protocol/index.ts';
import { allFilter, parseTopic } from '../topics/index.ts';
import { UsageError, int, str, type Command } from './args.ts';
import { brokerUrl, dataDirFrom, scopeFrom, scopeHelp, scopeOptions } from './settings.ts';

export const watch: Command = {
  usage: 'propeller watch [options]',
  summary: 'print every message on the topic tree as JSON lines',
  options: {
    ...scopeOptions,
    broker: { type: 'string' },
    username: { type: 'string' },
    password: { type: 'string' },
    'data-dir': { type: 'string' },
    count: { type: 'string' },
  },
  help: `  --broker URL           broker to watch (env MQTT_BROKER, default mqtt://127.0.0.1:1883)
  --username U           account (default debug: start serve with --debug-account)
  --password P           its password (env PROPELLER_DEBUG_PASSWORD, else read from DATA_DIR/debug.secret)
  --data-dir DIR         where serve wrote debug.secret (default .propeller)
  --count N              exit after N messages
${scopeHelp}`,
  async run(v) {
    const sc = scopeFrom(v);
    const url = brokerUrl(str(v.broker) ?? process.env.MQTT_BROKER ?? 'mqtt://127.0.0.1:1883');
    const username = str(v.username) ?? 'debug';
    let password = str(v.password) ?? process.env.PROPELLER_DEBUG_PASSWORD;
    if (password === undefined && username === 'debug') {
      const file = join(dataDirFrom(v), 'debug.secret');
      try {
        password = readFileSync(file, 'utf8').trim();
      } catch {
        throw new UsageError(`no password: pass --password, or start serve with --debug-account so that ${file} exists`);
      }
    }
    const max = int('count', v.count, 0);
    const filter = allFilter(sc);
    // mqtt.js reconnects every second after a loss; the first connection must work, though
    const client = mqtt.connect(url, { protocolVersion: 4, username, password, clean: true, reconnectPeriod: 1000, connectTimeout: 10_000 });
    const say = (line: string) => process.stderr.write(`propeller watch: ${line}\n`);
    let seen = 0;
    let connected = false;
    let lost = false;
    let lastError: string | undefined;
    return await new Promise<number>((resolve, reject) => {
      const fail = (e: UsageError, code: number) => {
        if (connected) {
          say(e.message);
          resolve(code);
        } else reject(e);
        client.end(true);
      };
      client.on('error', (e: Error & { code?: unknown }) => {
        lastError = e.message;
        // refused credentials do not get better by retrying (the debug password changes only when its file is deleted)
        if (!connected || e.code === 4 || e.code === 5) fail(new UsageError(`cannot watch ${url} as ${username}: ${e.message}`), 1);
      });
      client.on('connect', () => {
        if (lost) say(`reconnected to ${url}`);
        connected = true;
        lost = false;
        lastError = undefined;
        client.subscribe(filter, { qos: 0 }, (err, granted) => {
          if (err || granted?.[0]?.qos === 128) fail(new UsageError(`the broker refused ${username} a subscription to ${filter}`), 1);
        });
      });
      client.on('close', () => {
        if (client.disconnecting || (max && seen >= max)) return resolve(0);
        if (!connected) return fail(new UsageError(`cannot watch ${url} as ${username}: ${lastError ?? 'the connection closed before the broker accepted it'}`), 1);
        if (connected && !lost) {
          lost = true;
          say(`lost the broker at ${url}${lastError ? ` (${lastError})` : ''}; reconnecting every second (Ctrl-C to stop)`);
        }
      });
      client.on('message', (t, payload) => {
        const line = { t: new Date().toISOString(), ...describe(t, payload) };
        process.stdout.write(JSON.stringify(line) + '\n');
        if (max && ++seen >= max) client.end();
      });
    });
  },
};

/** What watch prints of one message: its topic and kind, and the payload decoded, nothing hidden. */
export function describe(topic: string, payload: Uint8Array) {
  const parsed = parseTopic(topic);
  const kind = parsed && parsed.kind in FIELDS ? (parsed.kind as MessageKind) : undefined;
  const ctx = parsed?.propletId !== undefined ? { propletId: parsed.propletId } : {};
  const extra = unknownFields(payload, kind, ctx);
  return {
    topic,
    kind: parsed?.kind ?? null,
    encoding: detectEncoding(payload) ?? 'unknown',
    bytes: payload.length,
    payload: toDisplay(payload, kind, ctx),
    ...(extra ? { unknown_fields: extra } : {}),
  };
}

/**
 * Top-level fields of a message that decoded as its kind but that the protocol
 * does not name (another implementation's extras, such as the metadata of a
 * Propeller proplet): the decoder drops them, watch shows them.
 */
export function unknownFields(payload: Uint8Array, kind: MessageKind | undefined, ctx: DecodeContext): Record<string, unknown> | undefined {
  if (!kind) return undefined;
  try {
    decode(kind, payload, ctx);
  } catch {
    return undefined; // shown raw, every field included
  }
  const raw = toDisplay(payload);
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return undefined;
  const known = new Set<string>();
  for (const [name, f] of Object.entries(FIELDS[kind])) known.add(name).add(String(f.key));
  const extra = Object.entries(raw).filter(([k]) => !known.has(k));
  return extra.length ? Object.fromEntries(extra) : undefined;
}
