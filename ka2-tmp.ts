import net from 'node:net';
import { execFileSync } from 'node:child_process';
import mqttPacket from 'mqtt-packet';
import { CredentialStore, EmbeddedBroker } from './broker/index.ts';
import { scope } from './topics/index.ts';
const creds = new CredentialStore();
const a = creds.issue('p1', 'proplet'); const b2 = creds.issue('p2', 'proplet');
const broker = await EmbeddedBroker.start({ scope: scope('propeller','control'), credentials: creds, port: 0 });
for (const [u, s, k] of [['p1', a, 0], ['p2', b2, 60]] as const) {
  const so = net.connect(broker.port, '127.0.0.1'); so.resume();
  so.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: 'raw', clean: true, keepalive: k, username: u, password: Buffer.from(s) }));
}
await new Promise((r) => setTimeout(r, 300));
console.log(execFileSync('ss', ['-tnoH', 'state', 'established', 'src', `127.0.0.1:${broker.port}`], { encoding: 'utf8' }));
process.exit(0);
