// The HTTP API is authenticated by default; reserved broker accounts cannot be
// touched through it; an existing proplet's secret is replaced only on request.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { ControlPlane } from '../control-plane/index.ts';
import { scope, startStack, until, type Stack } from './helpers/stack.ts';

const TOKEN = 'test-token-0123456789abcdef';
let s: Stack;

test.before(async () => {
  await buildExamples();
  s = await startStack({ token: TOKEN, proplets: 1 });
});
test.after.always(async () => {
  await s?.close();
});

async function call(path: string, init: RequestInit = {}) {
  const res = await fetch(`${s.apiUrl}${path}`, { redirect: 'manual', ...init });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {}
  return { status: res.status, headers: res.headers, body: body as Record<string, unknown> & string };
}
const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

test('the control plane library refuses to serve its API without a token or an explicit noAuth', (t) => {
  t.throws(
    () => new ControlPlane({ scope, mqtt: { url: 'mqtt://127.0.0.1:1' }, http: { port: 0 }, health: { checkIntervalMs: 100, offlineThresholdMs: 1000, failureThresholdMs: 2000 } }),
    { message: /token, or noAuth: true/ },
  );
});

test('requests without the token, or with a wrong one, get 401 with a JSON reason', async (t) => {
  for (const [path, init] of [
    ['/tasks', {}],
    ['/proplets', {}],
    ['/metrics', {}],
    ['/tasks', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"name":"x"}' }],
    ['/proplets', { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"proplet_id":"evil"}' }],
    ['/tasks', { headers: bearer('wrong') }],
    ['/tasks', { headers: { authorization: TOKEN } }],
    ['/tasks', { headers: { cookie: 'propeller_session=wrong' } }],
  ] as [string, RequestInit][]) {
    const r = await call(path, init);
    t.is(r.status, 401, `${init.method ?? 'GET'} ${path}`);
    t.regex(String(r.body.error), /missing or wrong API token: send Authorization: Bearer TOKEN/);
  }
  t.is(s.creds.get('evil'), undefined);
  t.true((await s.api.listTasks()).total! >= 0);
});

test('the bearer token opens every route; /health and models stay open and /health names no ids', async (t) => {
  t.is((await call('/tasks', { headers: bearer(TOKEN) })).status, 200);
  t.regex((await call('/metrics', { headers: bearer(TOKEN) })).body, /propeller_tasks_total/);
  const h = await call('/health');
  t.is(h.status, 200);
  t.deepEqual(Object.keys(h.body).sort(), ['down', 'mqtt', 'proplets', 'ready', 'status', 'store', 'tasks']);
  t.false(JSON.stringify(h.body).includes('p1'));
  // content-addressed: unknown is a 404, not a 401
  t.is((await call(`/models/sha256:${'0'.repeat(64)}`)).status, 404);
});

test('GET /login checks the token, sets an HttpOnly SameSite=Strict cookie and redirects to a local path only', async (t) => {
  const wrong = await call('/login?token=nope');
  t.is(wrong.status, 401);
  t.regex(wrong.headers.get('content-type')!, /text\/html/);
  t.regex(wrong.body, /login\?token=/);
  t.is(wrong.headers.get('set-cookie'), null);

  const ok = await call(`/login?token=${TOKEN}&next=/tasks?state=Pending`);
  t.is(ok.status, 303);
  t.is(ok.headers.get('location'), '/tasks?state=Pending');
  const cookie = ok.headers.get('set-cookie')!;
  t.regex(cookie, /HttpOnly/);
  t.regex(cookie, /SameSite=Strict/);
  const session = cookie.split(';')[0]!;
  t.is((await call('/tasks', { headers: { cookie: session } })).status, 200);

  for (const next of ['//evil.example/x', '/\\evil.example', 'https://evil.example/', '/a\r\nX-Injected: 1']) {
    const r = await call(`/login?token=${TOKEN}&next=${encodeURIComponent(next)}`);
    t.is(r.status, 303);
    t.is(r.headers.get('location'), '/', next);
  }
});

test('reserved accounts cannot be created, replaced or deleted: 409, and the control plane stays on its broker', async (t) => {
  const post = (body: object) => call('/proplets', { method: 'POST', headers: { ...bearer(TOKEN), 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const managerHash = s.creds.get('propeller-manager')!.hash;
  for (const id of ['propeller-manager', 'propeller-manager-2', 'debug', 'sensors-*']) {
    const r = await post({ proplet_id: id, rotate: true });
    t.is(r.status, 409, id);
    t.regex(String(r.body.error), /is reserved/);
    const d = await call(`/proplets/${encodeURIComponent(id)}`, { method: 'DELETE', headers: bearer(TOKEN) });
    t.is(d.status, 409, `DELETE ${id}`);
  }
  t.is(s.creds.get('propeller-manager')!.hash, managerHash);
  t.true(s.cp.gateway.connected);
  t.is((await call('/health')).body.mqtt, 'connected');
  // and it still runs work
  const hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm'));
  const task = await s.api.createTask({ name: 'hello', file: hello.toString('base64') }, { start: true, waitMs: 60_000 });
  await until(async () => (await s.api.getTask(task.id)).state === 'Completed', 'the task completes', 60_000);
});

test('adding an existing proplet does not replace its secret unless asked to rotate', async (t) => {
  const first = await s.api.addProplet('dev-rot');
  const hash = s.creds.get('dev-rot')!.hash;
  await t.throwsAsync(s.api.addProplet('dev-rot'), { message: /already has credentials.*rotate/ });
  t.is(s.creds.get('dev-rot')!.hash, hash);
  const again = await s.api.addProplet('dev-rot', { rotate: true });
  t.not(again.secret, first.secret);
  t.not(s.creds.get('dev-rot')!.hash, hash);
  // and the existing node proplet's account is just as safe
  await t.throwsAsync(s.api.addProplet('p1'), { message: /already has credentials/ });
});

test('group accounts have their own route: created, rotated only on request, revoked; never through /proplets', async (t) => {
  const g = await s.api.addGroupAccount('workers');
  t.is(g.account, 'workers-*');
  t.is(s.creds.get('workers-*')!.role, 'proplet');
  await t.throwsAsync(s.api.addGroupAccount('workers'), { message: /group account workers-\* already has credentials/ });
  const again = await s.api.addGroupAccount('workers', { rotate: true });
  t.not(again.secret, g.secret);
  await t.throwsAsync(s.api.addProplet('workers-*', { rotate: true }), { message: /is reserved: a group account/ });
  await t.throwsAsync(s.api.removeProplet('workers-*'), { message: /is reserved/ });
  t.truthy(s.creds.get('workers-*'));
  await t.throwsAsync(s.api.addGroupAccount('propeller-manager'), { message: /is reserved/ });
  await t.throwsAsync(s.api.addGroupAccount('a*b'), { message: /prefix: must be/ });
  t.deepEqual(await s.api.removeGroupAccount('workers'), { deleted: 'workers-*' });
  t.is(s.creds.get('workers-*'), undefined);
  await t.throwsAsync(s.api.removeGroupAccount('workers'), { message: /not found/ });
});
