// The built command (dist/, bin/build.js) bundles Aedes with the broker: the
// lean clients of broker/slim-client.ts must apply there too, i.e. its imports
// of Aedes' internals must be bundled as the very modules Aedes uses. Bundled
// here with bin/build.js's esbuild options into a temporary directory (dist/
// itself is left alone: other tests may be running it).

import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bundleLikeDist } from '../bench/bundle-broker.ts';

const ROOT = new URL('..', import.meta.url).pathname;

test('bundled as bin/build.js bundles the command, the broker still builds lean clients, and they work', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'broker-bundle-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const entry = join(dir, 'entry.ts');
  writeFileSync(
    entry,
    `import net from 'node:net';
import mqttPacket from 'mqtt-packet';
import { CredentialStore, EmbeddedBroker } from ${JSON.stringify(join(ROOT, 'broker/index.ts'))};
const creds = new CredentialStore();
const secret = creds.issue('p1', 'proplet');
const logs: { msg: string; fields?: Record<string, unknown> }[] = [];
const b = await EmbeddedBroker.start({ scope: { domain: 'propeller', channel: 'control' }, credentials: creds, port: 0, log: (_l, msg, fields) => logs.push({ msg, fields }) });
const sock = net.connect(b.port, '127.0.0.1');
sock.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'c', clean: true, keepalive: 30, username: 'p1', password: Buffer.from(secret) }));
const connack = await new Promise<number[]>((r) => sock.once('data', (d: Buffer) => r([...d])));
const client = (b as unknown as { aedes: { clients: Record<string, Record<string, unknown>> } }).aedes.clients['p1/c']!;
console.log(JSON.stringify({ clients: logs.find((l) => l.msg === 'mqtt clients')?.fields, connack, keepaliveTimer: client._keepaliveTimer ?? null, connected: b.connectedClients, parserList: (client._parser as { _list: object })._list.constructor.name }));
sock.destroy();
await b.close();
`,
  );
  const bundle = await bundleLikeDist(entry, 'entry', dir);
  const out = JSON.parse(execFileSync('node', [bundle], { encoding: 'utf8' }).trim()) as Record<string, unknown>;
  // the parser's plain BufferList (slimParsers in broker.ts), not bl's Duplex BufferListStream
  t.deepEqual(out, { clients: { lean: true }, connack: [0x20, 2, 0, 0], keepaliveTimer: null, connected: 1, parserList: 'BufferList' });
});
