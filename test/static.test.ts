// The static-directory option: index.html never cached, hashed assets cached
// for a year, a strict CSP on every answer, no way out of the directory, and
// served without the API token (the page must load to ask for it).

import test from 'ava';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONTENT_SECURITY_POLICY } from '../control-plane/static.ts';
import { startStack } from './helpers/stack.ts';

test('index, hashed and plain assets, HEAD, missing files and traversal; the API behind it still needs its token', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'static-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'ui'));
  writeFileSync(join(dir, 'index.html'), '<!doctype html><title>x</title>');
  writeFileSync(join(dir, 'ui', 'app-AB12CD34.js'), 'console.log(1)');
  writeFileSync(join(dir, 'ui', 'plain.css'), 'body{}');
  writeFileSync(join(dir, 'secret.txt'), 'not served');
  const s = await startStack({ token: 'tok', cp: { http: { port: 0, staticDir: dir } } });
  t.teardown(() => s.close());
  const get = (path: string, method = 'GET') => fetch(`${s.apiUrl}${path}`, { method });

  const index = await get('/');
  t.is(index.status, 200);
  t.is(index.headers.get('cache-control'), 'no-cache');
  t.is(index.headers.get('content-type'), 'text/html; charset=utf-8');
  t.is(index.headers.get('content-security-policy'), CONTENT_SECURITY_POLICY);
  t.is(index.headers.get('x-content-type-options'), 'nosniff');
  t.is(await index.text(), '<!doctype html><title>x</title>');
  const hashed = await get('/ui/app-AB12CD34.js');
  t.is(hashed.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  t.regex(hashed.headers.get('content-type') ?? '', /^text\/javascript/);
  t.is((await get('/ui/plain.css')).headers.get('cache-control'), 'no-cache');
  const head = await get('/ui/app-AB12CD34.js', 'HEAD');
  t.is(head.status, 200);
  t.is(head.headers.get('content-length'), '14');
  t.is(await head.text(), '');
  t.is((await get('/ui/missing-AB12CD34.js')).status, 404);
  for (const p of ['/ui/../secret.txt', '/ui/..%2Fsecret.txt', '/ui/%2e%2e/secret.txt', '/ui/.hidden', '/secret.txt']) {
    const r = await get(p);
    t.not(await r.text(), 'not served', p);
  }
  // POST to / is not a static request: it reaches the API, which wants the token
  t.is((await get('/', 'POST')).status, 401);
  t.is((await get('/tasks')).status, 401);
  t.is((await get('/events')).status, 401);
});
