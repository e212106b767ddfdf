// What the control plane fetches and accepts: the fetch policy (loopback and
// private addresses denied unless allowed, checked on every redirect), errors
// that never echo an answer's body, the 16 MiB module limit at the API, and a
// proplet's refusal ending a pinned task at once with its reason.

import test from 'ava';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { createServer, type RequestListener } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { fetchPolicy } from '../control-plane/modules/policy.ts';
import { decode, encode, MAX_INLINE_MODULE } from '../protocol/index.ts';
import { propletSubscriptions, topic } from '../topics/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

let open: Stack; // loopback allowed, as the other tests run
let strict: Stack; // the default policy
let hello: Buffer;
const servers: ReturnType<typeof createServer>[] = [];

test.before(async () => {
  await buildExamples();
  hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm'));
  [open, strict] = await Promise.all([startStack({ proplets: 1 }), startStack({ proplets: 1, cp: { fetch: {} } })]);
});
test.after.always(async () => {
  for (const s of servers) s.close();
  await Promise.all([open?.close(), strict?.close()]);
});

async function serve(handler: RequestListener, host = '127.0.0.1'): Promise<{ url: string; hits: () => number }> {
  let n = 0;
  const srv = createServer((req, res) => {
    n++;
    handler(req, res);
  }).listen(0, host);
  servers.push(srv);
  await once(srv, 'listening');
  return { url: `http://${host}:${(srv.address() as AddressInfo).port}`, hits: () => n };
}

async function runFromUrl(s: Stack, url: string) {
  const t = await s.api.createTask({ name: 'hello', image_url: url }, { start: true, waitMs: 20_000 });
  return s.api.getTask(t.id, 20_000);
}

test('the default policy refuses loopback module URLs, by address and by name; nothing is fetched', async (t) => {
  const srv = await serve((_req, res) => res.end(hello));
  for (const url of [`${srv.url}/hello.wasm`, srv.url.replace('127.0.0.1', 'localhost') + '/hello.wasm']) {
    const task = await runFromUrl(strict, url);
    t.is(task.state, 'Failed');
    t.regex(task.error!, /denied: loopback, link-local and private addresses need --fetch-allow/);
  }
  t.is(srv.hits(), 0);
  // the same URL runs where loopback is allowed
  t.is((await runFromUrl(open, `${srv.url}/hello.wasm`)).state, 'Completed');
});

test('the policy denies private and link-local ranges, allows what it is told, and re-checks redirects', async (t) => {
  const p = fetchPolicy({ allow: ['127.0.0.1'] });
  for (const bad of ['http://10.1.2.3/', 'http://169.254.169.254/latest/meta-data', 'http://192.168.1.1/', 'http://[::1]/', 'http://[fe80::1]/', 'http://[::ffff:127.0.0.2]/', 'http://0.0.0.0/']) {
    await t.throwsAsync(p.check(new URL(bad)), { message: /denied/ }, bad);
  }
  await t.notThrowsAsync(p.check(new URL('http://127.0.0.1:9/')));
  await t.notThrowsAsync(p.check(new URL('http://8.8.8.8/')));
  await t.throwsAsync(fetchPolicy({ deny: ['8.8.8.0/24'] }).check(new URL('http://8.8.8.8/')), { message: /denied by the fetch policy/ });

  // an allowed server redirecting to a loopback address that is not allowed
  const target = await serve((_req, res) => res.end(hello), '127.0.0.2');
  const hop = await serve((_req, res) => res.writeHead(302, { location: `${target.url}/hello.wasm` }).end());
  const s = await startStack({ proplets: 1, cp: { fetch: { allow: ['127.0.0.1'] } } });
  t.teardown(() => s.close());
  const task = await runFromUrl(s, `${hop.url}/x.wasm`);
  t.is(task.state, 'Failed');
  t.regex(task.error!, /127\.0\.0\.2.*denied/);
  t.is(target.hits(), 0);
});

test("errors name the status, never the answer's body", async (t) => {
  const srv = await serve((req, res) => {
    if (req.url === '/500') res.writeHead(500).end('SECRET-INTERNAL-PAGE');
    else res.end('SECRET-NOT-WASM-BODY');
  });
  const e500 = await runFromUrl(open, `${srv.url}/500`);
  t.regex(e500.error!, /HTTP 500/);
  const text = await runFromUrl(open, `${srv.url}/text`);
  t.regex(text.error!, /not a WebAssembly module/);
  for (const e of [e500.error!, text.error!]) {
    t.false(e.includes('SECRET'));
    t.false(e.includes(Buffer.from('SECRET').toString('hex').slice(0, 6)));
    t.false(/53 45 43/.test(e));
  }
});

test('a module over 16 MiB is refused at the API with 413 naming the limit: inline, uploaded, or fetched', async (t) => {
  const big = Buffer.alloc(MAX_INLINE_MODULE + 1024 * 1024);
  hello.copy(big);
  const inline = await fetch(`${open.apiUrl}/tasks`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'big', file: big.toString('base64') }) });
  t.is(inline.status, 413);
  t.regex(((await inline.json()) as { error: string }).error, /exceeds 16777216 bytes \(16 MiB\), the most any proplet can take/);
  const task = await open.api.createTask({ name: 'big' });
  const up = await fetch(`${open.apiUrl}/tasks/${task.id}/upload`, { method: 'PUT', headers: { 'content-type': 'application/wasm' }, body: big });
  t.is(up.status, 413);
  t.regex(((await up.json()) as { error: string }).error, /16777216 bytes/);
  const srv = await serve((_req, res) => res.end(big));
  const fetched = await runFromUrl(open, `${srv.url}/big.wasm`);
  t.is(fetched.state, 'Failed');
  t.regex(fetched.error!, /over the limit of 16777216|exceeds the limit of 16777216/);
  t.is(fetched.attempts.length, 0);
});

test("a pinned task its proplet refuses fails at once with the proplet's reason", async (t) => {
  const id = 'refuser';
  const c = await open.client(id);
  await c.subscribeAsync(propletSubscriptions(scope, id), { qos: 1 });
  c.on('message', (tp, payload) => {
    if (!tp.includes('/manager/start/')) return;
    const m = decode('manager.start', payload).msg;
    void c.publishAsync(topic(scope, 'proplet.results'), encode('proplet.results', { proplet_id: id, task_id: m.id, attempt: m.attempt, status: 'refused', error: 'module of 17825792 bytes is larger than 16777216 bytes' }, 'json'), { qos: 1 });
  });
  await c.publishAsync(topic(scope, 'proplet.create'), encode('proplet.create', { proplet_id: id, addressing: 'direct', encoding: 'json' }, 'json'), { qos: 1 });
  await until(() => open.cp.registry.get(id)?.state === 'alive', 'registered');
  const task = await open.api.createTask({ name: 'hello', file: hello.toString('base64'), proplet_id: id }, { start: true, waitMs: 10_000 });
  const done = await open.api.getTask(task.id, 10_000);
  t.is(done.state, 'Failed');
  t.is(done.attempts.length, 1);
  t.regex(done.error!, /refused by refuser: module of 17825792 bytes is larger than 16777216 bytes; no other proplet can take it/);
});
