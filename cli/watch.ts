// `propeller watch`: every message on the tree, decoded (CBOR too), one JSON
// line each with its topic — the human view of the wire.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { detectEncoding, FIELDS, toDisplay, type MessageKind } from '../protocol/index.ts';
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
    const client = mqtt.connect(url, { protocolVersion: 4, username, password, clean: true, reconnectPeriod: 0, connectTimeout: 10_000 });
    let seen = 0;
    return await new Promise<number>((resolve, reject) => {
      client.on('error', (e) => {
        client.end(true);
        reject(new UsageError(`cannot watch ${url} as ${username}: ${e.message}`));
      });
      client.on('connect', () => {
        client.subscribe(allFilter(sc), { qos: 0 }, (err, granted) => {
          if (err || granted?.[0]?.qos === 128) {
            client.end(true);
            reject(new UsageError(`the broker refused ${username} a subscription to ${allFilter(sc)}`));
          }
        });
      });
      client.on('close', () => resolve(max && seen >= max ? 0 : 1));
      client.on('message', (t, payload) => {
        const parsed = parseTopic(t);
        const kind = parsed && parsed.kind in FIELDS ? (parsed.kind as MessageKind) : undefined;
        const ctx = parsed?.propletId !== undefined ? { propletId: parsed.propletId } : {};
        const line = {
          t: new Date().toISOString(),
          topic: t,
          kind: parsed?.kind ?? null,
          encoding: detectEncoding(payload) ?? 'unknown',
          bytes: payload.length,
          payload: toDisplay(payload, kind, ctx),
        };
        process.stdout.write(JSON.stringify(line) + '\n');
        if (max && ++seen >= max) client.end();
      });
    });
  },
};
