// The registry side of chunked delivery, driven by a hand-written device:
// by digest or by URL of the device's own task, windows, re-requests of missing chunks, refusals.

import test from 'ava';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { crc32, decode, encode, type Chunk } from '../protocol/index.ts';
import { propletSubscriptions, topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let s: Stack;
let hello: Buffer;
test.before(async () => {
  await buildExamples();
  hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm'));
  s = await startStack();
});
test.after.always(async () => {
  await s?.close();
});

async function device(id: string) {
  const c = await s.client(id);
  const chunks: Chunk[] = [];
  c.on('message', (t, p) => {
    if (t.includes('/registry/server/')) chunks.push(decode('registry.server', p).msg);
  });
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', encoding: 'cbor' }, 'cbor'), { qos: 1 });
  await until(() => s.cp.registry.get(id)?.state === 'alive', 'registered');
  const ask = (req: Record<string, unknown>) =>
    c.publishAsync(topic(scope, 'registry.proplet', id), encode('registry.proplet', { proplet_id: id, ...req }, 'cbor', { omitSender: true }), { qos: 1 });
  return { chunks, ask };
}

test("a device gets its own task's module by URL in windows of chunks; crc32 and sha256 check out; missing ones are sent again", async (t) => {
  const srv = createServer((_req, res) => res.end(hello)).listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}/hello.wasm`;
  try {
    const d = await device('chunky');
    const task = await s.api.createTask({ name: 'hello', image_url: url, proplet_id: 'chunky' }, { start: true });
    await until(() => s.cp.tasks.get(task.id)?.state === 'Scheduled', 'placed on the device');
    await d.ask({ name: url, chunk_size: 64, next: 0, window: 4 });
    await until(() => d.chunks.length >= 4, 'first window');
    const first = d.chunks[0]!;
    t.is(first.error, undefined);
    t.is(first.size, hello.length);
    t.is(first.total, Math.ceil(hello.length / 64));
    t.deepEqual(d.chunks.map((c) => c.idx), [0, 1, 2, 3]);
    // the rest by digest, window by window, then chunk 1 again as if it had been corrupt
    for (let next = 4; next < first.total; next += 8) await d.ask({ digest: first.digest, chunk_size: 64, next, window: 8 });
    await d.ask({ digest: first.digest, chunk_size: 64, missing: [1] });
    await until(() => d.chunks.length >= first.total + 1, 'all chunks');
    const byIdx = new Map(d.chunks.map((c) => [c.idx, c]));
    t.is(byIdx.size, first.total);
    for (const c of byIdx.values()) t.is(crc32(c.data), c.crc32);
    const whole = Buffer.concat([...byIdx.keys()].sort((a, b) => a - b).map((i) => byIdx.get(i)!.data));
    t.is('sha256:' + createHash('sha256').update(whole).digest('hex'), first.digest);
    t.deepEqual(whole, hello);
  } finally {
    srv.close();
  }
});

test("unknown digests, other tasks' modules and URLs a device names are refused with the error; nothing is fetched", async (t) => {
  let hits = 0;
  const srv = createServer((_req, res) => {
    hits++;
    res.end(hello);
  }).listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const url = `http://127.0.0.1:${(srv.address() as AddressInfo).port}/any.wasm`;
  try {
    // a module the control plane holds, but for another proplet's task
    const other = await s.api.createTask({ name: 'hello', file: hello.toString('base64'), proplet_id: 'ghost' });
    const d = await device('asker');
    await d.ask({ digest: 'sha256:' + '0'.repeat(64), chunk_size: 128 });
    await d.ask({ digest: other.module_digest!, chunk_size: 128 });
    await d.ask({ name: url, chunk_size: 128 });
    await d.ask({ name: 'oci://127.0.0.1:1/none:1', chunk_size: 128 });
    await until(() => d.chunks.length >= 4, 'four refusals');
    t.regex(d.chunks.find((c) => c.digest.startsWith('sha256:0'))!.error!, /unknown module/);
    t.regex(d.chunks.find((c) => c.digest === other.module_digest)!.error!, /unknown module/);
    t.is(d.chunks.find((c) => c.digest === other.module_digest)!.data.length, 0);
    t.regex(d.chunks.find((c) => c.digest === url)!.error!, /not the module of a task of yours/);
    t.regex(d.chunks.find((c) => c.digest.startsWith('oci://'))!.error!, /not the module of a task of yours/);
    t.is(hits, 0);
  } finally {
    srv.close();
  }
});

test("an FL task's model (MODEL_DIGEST) comes in chunks to the device the task is placed on, to no other", async (t) => {
  const model = new Uint8Array(300).map((_, i) => i % 251);
  const digest = 'sha256:' + createHash('sha256').update(model).digest('hex');
  s.cp.store.putModule(digest, model);
  const d = await device('learner');
  const other = await device('bystander');
  const task = await s.api.createTask({ name: 'hello', file: hello.toString('base64'), proplet_id: 'learner', env: { MODEL_DIGEST: digest } }, { start: true });
  await until(() => s.cp.tasks.get(task.id)?.state === 'Scheduled', 'placed on the learner');
  await d.ask({ digest, chunk_size: 512 });
  await other.ask({ digest, chunk_size: 512 });
  await until(() => d.chunks.length >= 1 && other.chunks.length >= 1, 'both answered');
  t.deepEqual(Buffer.from(d.chunks[0]!.data), Buffer.from(model));
  t.regex(other.chunks[0]!.error!, /unknown module/);
});
