// Propeller's CLI and Go SDK against our HTTP API: the Go manager's routes and
// fields under /manager, requested the way pkg/sdk does (Content-Type
// application/json on every request, Basic auth from the manager URL's user
// info, expected status codes), answered in the shapes its structs decode
// (numeric state, string inputs, RFC 3339 times, pages of {offset, limit, total}).

import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startStack, until, type Stack } from './helpers/stack.ts';

const TOKEN = 'test-token-1';
let s: Stack;
let add: string;

test.before(async () => {
  await buildExamples();
  add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')).toString('base64');
  s = await startStack({ proplets: 1, token: TOKEN });
});
test.after.always(async () => {
  await s?.close();
});

/** sdk.processRequest: always Content-Type application/json; Go's client adds Basic auth from http://user:TOKEN@host/... */
async function sdk(method: string, path: string, body?: unknown, token: string | null = TOKEN): Promise<{ status: number; json: any; text: string }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token !== null) headers.authorization = `Basic ${Buffer.from(`propeller:${token}`).toString('base64')}`;
  const res = await fetch(`${s.apiUrl}/manager${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, text, json: text ? JSON.parse(text) : undefined };
}

const ZERO = '0001-01-01T00:00:00Z';
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/;

/** What Go's encoding/json needs to decode into sdk.Task without an error. */
function decodesAsGoTask(t: any): void {
  if (!Number.isInteger(t.state) || t.state < 0 || t.state > 255) throw new Error(`state ${JSON.stringify(t.state)} is not a uint8`);
  for (const k of ['start_time', 'finish_time', 'created_at', 'updated_at']) if (t[k] !== undefined && !RFC3339.test(t[k])) throw new Error(`${k} ${t[k]} is not RFC 3339`);
  if (t.inputs !== undefined && !(Array.isArray(t.inputs) && t.inputs.every((x: unknown) => typeof x === 'string'))) throw new Error('inputs is not []string');
  if (t.cli_args !== undefined && t.cli_args !== null && !(Array.isArray(t.cli_args) && t.cli_args.every((x: unknown) => typeof x === 'string'))) throw new Error('cli_args is not []string');
  for (const k of ['id', 'name', 'image_url', 'proplet_id', 'file']) if (t[k] !== undefined && typeof t[k] !== 'string') throw new Error(`${k} is not a string`);
  if (typeof t.daemon !== 'boolean') throw new Error('daemon is not a bool');
}

test.serial('create, start, get and list tasks as the Go SDK does', async (t) => {
  // sdk.Task as the CLI marshals it: zero times always present, omitempty elsewhere, inputs as strings
  const created = await sdk('POST', '/tasks', { name: 'add', file: add, inputs: ['2', '3'], start_time: ZERO, finish_time: ZERO, created_at: ZERO, updated_at: ZERO });
  t.is(created.status, 201, created.text);
  t.notThrows(() => decodesAsGoTask(created.json));
  t.is(created.json.state, 0); // Pending
  t.deepEqual(created.json.inputs, ['2', '3']);
  const id = created.json.id as string;

  const started = await sdk('POST', `/tasks/${id}/start`);
  t.is(started.status, 200, started.text);

  await until(async () => (await sdk('GET', `/tasks/${id}`)).json.state === 3, 'Completed (3)');
  const got = await sdk('GET', `/tasks/${id}`);
  t.is(got.status, 200);
  t.notThrows(() => decodesAsGoTask(got.json));
  t.is(got.json.results, 5);
  t.is(got.json.proplet_id, 'p1');
  t.not(got.json.start_time, ZERO);
  t.not(got.json.finish_time, ZERO);

  const results = await sdk('GET', `/tasks/${id}/results`);
  t.deepEqual(results.json, { task_id: id, results: 5 });

  const list = await sdk('GET', '/tasks?offset=0&limit=10');
  t.is(list.status, 200);
  t.deepEqual(Object.keys(list.json).sort(), ['limit', 'offset', 'tasks', 'total']);
  t.is(list.json.total, 1);
  t.is(list.json.limit, 10);
  for (const x of list.json.tasks) t.notThrows(() => decodesAsGoTask(x));

  const proplets = await sdk('GET', '/proplets');
  t.is(proplets.json.total, 1);
  t.like(proplets.json.proplets[0], { id: 'p1', alive: true, task_count: 0 });
});

test.serial('stop is Interrupted (6); delete answers 204 with no body', async (t) => {
  const created = await sdk('POST', '/tasks', { name: 'add', file: add, inputs: ['1', '1'], daemon: true, start_time: ZERO, finish_time: ZERO, created_at: ZERO, updated_at: ZERO });
  const id = created.json.id as string;
  t.is((await sdk('POST', `/tasks/${id}/start`)).status, 200);
  await until(async () => [1, 2].includes((await sdk('GET', `/tasks/${id}`)).json.state), 'placed');
  t.is((await sdk('POST', `/tasks/${id}/stop`)).status, 200);
  t.is((await sdk('GET', `/tasks/${id}`)).json.state, 6);
  const del = await sdk('DELETE', `/tasks/${id}`);
  t.is(del.status, 204);
  t.is(del.text, '');
  t.is((await sdk('GET', `/tasks/${id}`)).status, 404);
});

test.serial('the API token is required, as Basic auth from the manager URL; what it cannot do is refused, not ignored', async (t) => {
  t.is((await sdk('GET', '/tasks', undefined, null)).status, 401);
  t.is((await sdk('GET', '/tasks', undefined, 'wrong')).status, 401);
  const enc = await sdk('POST', '/tasks', { name: 'x', image_url: 'oci://r/x:1', encrypted: true, start_time: ZERO, finish_time: ZERO, created_at: ZERO, updated_at: ZERO });
  t.is(enc.status, 400);
  t.regex(enc.json.error, /encrypted: not supported/);
  t.is((await sdk('POST', '/tasks/nope/invoke')).status, 501);
  t.is((await sdk('GET', '/health')).json.status, 'pass');
});
