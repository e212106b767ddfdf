// The packet guard on a real TCP socket (broker/guard.ts): when the reader is
// idle, a chunk goes from the socket's read callback straight to it, scanned
// as read() would scan it; when the reader is busy, chunks wait in the
// stream, in order; an oversized header is refused on either path.

import test from 'ava';
import { once } from 'node:events';
import net from 'node:net';
import { guard, GuardState, type GuardPolicy, type Violation } from '../broker/guard.ts';

async function pair(policy: GuardPolicy<GuardState>): Promise<{ server: net.Socket; client: net.Socket; state: GuardState; close(): void }> {
  const srv = net.createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const client = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
  const [server] = (await once(srv, 'connection')) as [net.Socket];
  const state = new GuardState(server, policy);
  guard(server, state);
  return { server, client, state, close: () => (client.destroy(), server.destroy(), srv.close()) };
}

const publish = (topic: string): Buffer => Buffer.concat([Buffer.from([0x30, 2 + topic.length, 0, topic.length]), Buffer.from(topic)]);
const CONNECT = Buffer.from([0x10, 0]);

test('an idle reader gets each chunk from the read callback, without a readable event', async (t) => {
  const got: Buffer[] = [];
  let readable = 0;
  const p = await pair({ limit: () => 1024, violation: () => t.fail(), idle: () => true, deliver: (_s, chunk) => got.push(chunk) });
  t.teardown(p.close);
  p.server.on('readable', () => readable++);
  p.client.write(Buffer.concat([CONNECT, publish('a')]));
  await new Promise<void>((r) => {
    const poll = (): void => void (got.length ? r() : setTimeout(poll, 5));
    poll();
  });
  t.deepEqual(Buffer.concat(got), Buffer.concat([CONNECT, publish('a')]));
  t.is(p.server.readableLength, 0);
  t.is(readable, 0);
});

test('a busy reader leaves chunks in the stream, read() returns them in order and scanned', async (t) => {
  const delivered: Buffer[] = [];
  let busy = true;
  const p = await pair({ limit: () => 1024, violation: () => t.fail(), idle: () => !busy, deliver: (_s, chunk) => delivered.push(chunk) });
  t.teardown(p.close);
  p.client.write(CONNECT);
  await once(p.server, 'readable');
  p.client.write(publish('b'));
  await new Promise((r) => setTimeout(r, 50));
  t.deepEqual(p.server.read(), Buffer.concat([CONNECT, publish('b')]));
  busy = false;
  p.client.write(publish('c'));
  await new Promise<void>((r) => {
    const poll = (): void => void (delivered.length ? r() : setTimeout(poll, 5));
    poll();
  });
  t.deepEqual(delivered, [publish('c')]);
});

test('an oversized header is refused on the direct path too: nothing delivered, violation reported, socket destroyed', async (t) => {
  const violations: Violation[] = [];
  const delivered: Buffer[] = [];
  const p = await pair({ limit: () => 64, violation: (_s, v) => violations.push(v), idle: () => true, deliver: (_s, chunk) => delivered.push(chunk) });
  t.teardown(p.close);
  p.client.write(Buffer.concat([CONNECT, Buffer.from([0x30, 0xc8, 0x01])])); // a PUBLISH announcing 200 bytes
  await once(p.server, 'close');
  t.deepEqual(violations, [{ reason: 'too_large', size: 203, limit: 64 }]);
  t.deepEqual(delivered, []);
});
