// The HTTP API's answers to bad input: 400 naming the field, 404, 405, 409, 413.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startStack, type Stack } from './helpers/stack.ts';

let s: Stack;
let hello: Buffer;

test.before(async () => {
  await buildExamples();
  hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm'));
  s = await startStack({ cp: { http: { port: 0, maxBodyBytes: 64 * 1024, maxUploadBytes: 32 * 1024 } } });
});
test.after.always(async () => {
  await s?.close();
});

async function call(method: string, path: string, body?: string | Uint8Array, type = 'application/json') {
  const res = await fetch(`${s.apiUrl}${path}`, { method, body: body as BodyInit, headers: body === undefined ? {} : { 'content-type': type } });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

const bad: [string, unknown, string, RegExp][] = [
  ['missing name', {}, 'name', /name: is required/],
  ['unknown field', { name: 'x', colour: 'red' }, 'colour', /unknown field/],
  ['cli_args not strings', { name: 'x', cli_args: [1] }, 'cli_args', /array of strings/],
  ['inputs neither numbers nor strings', { name: 'x', inputs: [{}] }, 'inputs[0]', /must be a number or a string/],
  ['env not strings', { name: 'x', env: { A: 1 } }, 'env.A', /must be a string/],
  ['bad image url', { name: 'x', image_url: 'ftp://x' }, 'image_url', /http\(s\):\/\/ or oci:\/\//],
  ['file not wasm', { name: 'x', file: Buffer.from('hello world!').toString('base64') }, 'file', /not a WebAssembly module/],
  ['proplet id with slash', { name: 'x', proplet_id: 'a/b' }, 'proplet_id', /proplet id/],
  ['bad memory', { name: 'x', resources: { memory: 'lots' } }, 'resources', /not a size/],
  ['bad timeout', { name: 'x', timeout: 'soon' }, 'timeout', /not a duration/],
  ['daemon not bool', { name: 'x', daemon: 'yes' }, 'daemon', /true or false/],
  ['a selector of the wrong shape', { name: 'x', proplet_selector: { match_device_types: 'esp32' } }, 'proplet_selector.match_device_types', /array of at most 64 strings/],
];
for (const [name, body, field, re] of bad) {
  test(`POST /tasks refuses ${name} with 400 naming ${field}`, async (t) => {
    const r = await call('POST', '/tasks', JSON.stringify(body));
    t.is(r.status, 400);
    t.is(r.body.field, field);
    t.regex(r.body.error, re);
  });
}

test('malformed JSON is a 400, a wrong content type 415', async (t) => {
  const r = await call('POST', '/tasks', '{"name":');
  t.is(r.status, 400);
  t.regex(r.body.error, /not valid JSON/);
  t.is((await call('POST', '/tasks', 'name=x', 'application/x-www-form-urlencoded')).status, 415);
});

test('a body over the limit is a 413', async (t) => {
  const r = await call('POST', '/tasks', JSON.stringify({ name: 'x', env: { A: 'x'.repeat(70 * 1024) } }));
  t.is(r.status, 413);
  t.regex(r.body.error, /exceeds the limit of 65536/);
});

test('unknown ids are 404, wrong methods 405, unknown paths 404', async (t) => {
  for (const [m, p] of [['GET', '/tasks/nope'], ['POST', '/tasks/nope/start'], ['DELETE', '/tasks/nope'], ['GET', '/proplets/nope'], ['GET', '/nothing']] as const) {
    const r = await call(m, p);
    t.is(r.status, 404, `${m} ${p}`);
    t.truthy(r.body.error);
  }
  t.is((await call('PATCH', '/tasks')).status, 405);
});

test('upload: raw wasm and multipart are accepted, anything else is refused at upload', async (t) => {
  const task = (await call('POST', '/tasks', JSON.stringify({ name: 'hello' }))).body;
  t.is(task.state, 'Pending');
  t.regex(task.pending_reason, /no module yet/);
  const start0 = await call('POST', `/tasks/${task.id}/start`);
  t.is(start0.status, 400);
  t.regex(start0.body.error, /has no module/);
  // created and started in one request: refused the same way, and the task stays created, not started
  const both = await call('POST', '/tasks?start=true', JSON.stringify({ name: 'hello', labels: { case: 'start-without-module' } }));
  t.is(both.status, 400);
  t.regex(both.body.error, /has no module/);
  const kept = (await call('GET', '/tasks?label=case=start-without-module')).body.tasks;
  t.is(kept.length, 1);
  t.is(kept[0].state, 'Pending');
  t.false(kept[0].start_requested);

  const notWasm = await call('PUT', `/tasks/${task.id}/upload`, Buffer.from('#!/bin/sh\necho hi\n'), 'application/octet-stream');
  t.is(notWasm.status, 400);
  t.is(notWasm.body.field, 'file');
  t.regex(notWasm.body.error, /not a WebAssembly module/);

  const raw = await call('PUT', `/tasks/${task.id}/upload`, hello, 'application/wasm');
  t.is(raw.status, 200);
  t.regex(raw.body.module_digest, /^sha256:[0-9a-f]{64}$/);
  t.is(raw.body.module_size, hello.length);

  const form = new FormData();
  form.set('file', new Blob([new Uint8Array(hello)]), 'hello.wasm');
  const res = await fetch(`${s.apiUrl}/tasks/${task.id}/upload`, { method: 'PUT', body: form });
  t.is(res.status, 200);

  const big = Buffer.alloc(40 * 1024);
  hello.copy(big);
  const tooBig = await call('PUT', `/tasks/${task.id}/upload`, big, 'application/wasm');
  t.is(tooBig.status, 413);
});

test('a task with no proplet stays Pending with the reason, and stop works before placement', async (t) => {
  const task = (await call('POST', '/tasks', JSON.stringify({ name: 'hello', file: hello.toString('base64'), proplet_id: 'ghost' }))).body;
  const started = await call('POST', `/tasks/${task.id}/start`);
  t.is(started.status, 200);
  await new Promise((r) => setTimeout(r, 50));
  const got = (await call('GET', `/tasks/${task.id}`)).body;
  t.is(got.state, 'Pending');
  t.regex(got.pending_reason, /pinned proplet ghost is not registered/);
  t.is((await call('PUT', `/tasks/${task.id}`, JSON.stringify({ name: 'renamed' }))).body.name, 'renamed');
  const stopped = await call('POST', `/tasks/${task.id}/stop`);
  t.is(stopped.body.state, 'Stopped');
  const del = await call('DELETE', `/tasks/${task.id}`);
  t.is(del.status, 200);
  t.is((await call('GET', `/tasks/${task.id}`)).status, 404);
});

test('list with filters and pagination; bad query values are 400', async (t) => {
  for (let i = 0; i < 3; i++) await call('POST', '/tasks', JSON.stringify({ name: `l${i}`, file: hello.toString('base64') }));
  const r = await call('GET', '/tasks?state=pending&limit=2');
  t.is(r.status, 200);
  t.true(r.body.total >= 3);
  t.is(r.body.tasks.length, 2);
  t.is((await call('GET', '/tasks?limit=-1')).status, 400);
  t.is((await call('GET', '/tasks/x?wait=forever')).status, 404);
  await call('POST', '/tasks', JSON.stringify({ name: 'lab', file: hello.toString('base64'), labels: { app: 'x', tier: 'edge' } }));
  await call('POST', '/tasks', JSON.stringify({ name: 'lab2', file: hello.toString('base64'), labels: { app: 'x' } }));
  const both = await call('GET', '/tasks?label=app=x&label=tier=edge');
  t.deepEqual(both.body.tasks.map((x: { name: string }) => x.name), ['lab']);
  t.is((await call('GET', '/tasks?label=app=x')).body.tasks.length, 2);
  t.is((await call('GET', '/tasks?label=app')).status, 400);
});

test('?require_proplet=true refuses a pin to a proplet never registered, naming proplet_id; without it the task waits', async (t) => {
  const file = hello.toString('base64');
  const refused = await call('POST', '/tasks?require_proplet=true', JSON.stringify({ name: 'pinned', file, proplet_id: 'nobody-here' }));
  t.is(refused.status, 400);
  t.is(refused.body.field, 'proplet_id');
  t.regex(refused.body.error, /no proplet "nobody-here" is registered/);
  t.is((await call('GET', '/tasks?proplet=nobody-here')).body.tasks.length, 0, 'nothing was created');
  t.is((await call('POST', '/tasks?require_proplet=yes', JSON.stringify({ name: 'x', file }))).body.field, 'require_proplet');
  t.is((await call('POST', '/tasks', JSON.stringify({ name: 'pinned', file, proplet_id: 'nobody-here' }))).status, 201);
});

test('GET /tasks?proplet= lists the tasks placed, run or pinned there, paged; a bad id is 400', async (t) => {
  const file = hello.toString('base64');
  await s.addProplet('runner-1');
  const ran = (await call('POST', '/tasks?start=true&wait=30s', JSON.stringify({ name: 'ran', file, cli_args: ['x'], proplet_id: 'runner-1' }))).body;
  t.is(ran.state, 'Completed');
  for (const name of ['pin-a', 'pin-b']) await call('POST', '/tasks', JSON.stringify({ name, file, proplet_id: 'runner-1' }));
  await call('POST', '/tasks', JSON.stringify({ name: 'elsewhere', file, proplet_id: 'runner-2' }));
  const names: string[] = [];
  let token = '';
  do {
    const r = await call('GET', `/tasks?proplet=runner-1&limit=2${token ? `&continue=${token}` : ''}`);
    t.is(r.status, 200);
    t.is(r.body.total, undefined, 'no total: it would need a walk of the history');
    names.push(...r.body.tasks.map((x: { name: string }) => x.name));
    token = r.body.continue ?? '';
  } while (token);
  t.deepEqual(names, ['pin-b', 'pin-a', 'ran']);
  t.deepEqual((await call('GET', '/tasks?proplet=runner-1&state=completed')).body.tasks.map((x: { name: string }) => x.name), ['ran']);
  const badId = await call('GET', '/tasks?proplet=a/b');
  t.is(badId.status, 400);
  t.is(badId.body.field, 'proplet');
});

test('POST /proplets issues credentials once; bad ids are 400', async (t) => {
  const r = await call('POST', '/proplets', JSON.stringify({ proplet_id: 'dev-1' }));
  t.is(r.status, 201);
  t.is(r.body.proplet_id, 'dev-1');
  t.true(r.body.secret.length >= 32);
  t.truthy(s.creds.get('dev-1'));
  t.not(s.creds.get('dev-1')!.hash, r.body.secret);
  const bad = await call('POST', '/proplets', JSON.stringify({ proplet_id: 'a/#' }));
  t.is(bad.status, 400);
  t.is(bad.body.field, 'proplet_id');
});

test('health answers', async (t) => {
  const r = await call('GET', '/health');
  t.is(r.status, 200);
  t.is(r.body.status, 'ok');
  t.is(r.body.mqtt, 'connected');
});
