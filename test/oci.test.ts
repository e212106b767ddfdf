// WebAssembly modules in a real OCI registry (Debian's docker-registry 2.8):
// push, pull by tag and by digest, tampered blobs, auth (htpasswd and the Docker
// token flow), and `propeller module push|pull` as a user runs them.

import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { MEDIA, moduleManifest, notWasm, OciError, parseChallenge, parseOciRef, pickLayer, registryOrigin, pullModule, pushModule } from '../control-plane/modules/oci.ts';
import { sha256Digest } from '../protocol/index.ts';
import { registryMissing, startRegistry, type OciRegistry } from './helpers/oci-registry.ts';
import { freePort } from './helpers/stack.ts';
import { parse, UsageError, type Command } from '../cli/args.ts';
import { authFrom, modulePull, modulePush } from '../cli/module.ts';

const missing = registryMissing();
const skip = missing !== undefined && process.env.PROPELLER_SKIP_OCI === '1';
if (skip) console.log('docker-registry not on PATH (Debian package docker-registry): OCI registry tests skipped (PROPELLER_SKIP_OCI=1)');
const rtest = skip ? test.skip : test;

const BIN = new URL('../bin/propeller.js', import.meta.url).pathname;
const USER = { username: 'alice', password: 'pa:ss w0rd' };

let reg: OciRegistry | undefined;
let add: Uint8Array;
let hello: Uint8Array;
let tmp: string;

test.before(async () => {
  await buildExamples();
  add = readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm'));
  hello = readFileSync(join(EXAMPLES_BUILD_DIR, 'hello.wasm'));
  tmp = mkdtempSync(join(tmpdir(), 'propeller-oci-test-'));
  if (!missing) reg = await startRegistry();
});

test.after.always(async () => {
  await reg?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** The registry, or a failed test naming the Debian package. */
function need(t: ExecutionContext): OciRegistry | undefined {
  if (missing) {
    t.fail(missing);
    return undefined;
  }
  return reg!;
}

/** The same module with a custom section added, so its blob is its own (blobs are shared by digest). */
function variant(bytes: Uint8Array, label: string): Uint8Array {
  const name = Buffer.from(label);
  const payload = Buffer.concat([Buffer.from([name.length]), name]);
  return Buffer.concat([bytes, Buffer.from([0, payload.length]), payload]);
}

async function upload(r: OciRegistry, repo: string, bytes: Uint8Array): Promise<string> {
  const digest = sha256Digest(bytes);
  const start = await fetch(`${r.url}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  const url = new URL(start.headers.get('location')!, r.url);
  url.searchParams.set('digest', digest);
  const put = await fetch(url, { method: 'PUT', body: bytes as Uint8Array<ArrayBuffer>, headers: { 'content-type': 'application/octet-stream' } });
  if (put.status !== 201) throw new Error(`upload ${put.status}: ${await put.text()}`);
  return digest;
}

async function putManifest(r: OciRegistry, repo: string, ref: string, mediaType: string, body: unknown): Promise<string> {
  const bytes = Buffer.from(JSON.stringify(body));
  const res = await fetch(`${r.url}/v2/${repo}/manifests/${ref}`, { method: 'PUT', body: bytes, headers: { 'content-type': mediaType } });
  if (res.status !== 201) throw new Error(`manifest ${res.status}: ${await res.text()}`);
  return sha256Digest(bytes);
}

// ---------------------------------------------------------------- no registry needed

test('parseOciRef: tags, digests, ports, the latest default, and clear refusals', (t) => {
  const d = `sha256:${'ab'.repeat(32)}`;
  t.deepEqual(parseOciRef('oci://127.0.0.1:5000/mods/add:v1'), { registry: '127.0.0.1:5000', repository: 'mods/add', reference: 'v1', tag: 'v1' });
  t.deepEqual(parseOciRef(`oci://ghcr.io/org/team/add@${d}`), { registry: 'ghcr.io', repository: 'org/team/add', reference: d, digest: d });
  t.deepEqual(parseOciRef(`oci://[::1]:5000/add:v2@${d}`), { registry: '[::1]:5000', repository: 'add', reference: d, digest: d, tag: 'v2' });
  t.deepEqual(parseOciRef('oci://localhost/a.b_c-d'), { registry: 'localhost', repository: 'a.b_c-d', reference: 'latest', tag: 'latest' });
  for (const [ref, why] of [
    ['http://x/y:1', /must start with oci:\/\//],
    ['oci://host', /no repository/],
    ['oci://host/', /no repository/],
    ['oci://host/Add:v1', /repository "Add" is not valid/],
    ['oci://host/a//b', /repository "a\/\/b" is not valid/],
    ['oci://host/a:', /tag "" is not valid/],
    ['oci://host/a:-x', /tag "-x" is not valid/],
    ['oci://host/a@sha512:abcd', /only sha256/],
    ['oci://host/a@sha256:1234', /64 lowercase hex/],
    ['oci://host:99999/a', /port 99999 is out of range/],
    ['oci://ho st/a', /is not a host\[:port\]/],
  ] as const) {
    const e = t.throws(() => parseOciRef(ref), { instanceOf: OciError }, ref);
    t.regex(e!.message, why, ref);
    t.false(e!.message.includes('\n'));
  }
});

test('wasm checks, layer choice and challenges', (t) => {
  t.is(notWasm(new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0])), null);
  t.regex(notWasm(Buffer.from('#!/bin/sh\necho hi\n'))!, /not a WebAssembly module: it does not start with 00 61 73 6d/);
  t.regex(notWasm(new Uint8Array([0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0]))!, /component/);
  const l = (mediaType: string, size: number) => ({ mediaType, size });
  t.deepEqual(pickLayer([l('application/octet-stream', 900), l('application/vnd.wasm.content.layer.v1+wasm', 10), l('application/wasm', 5)]), l('application/wasm', 5));
  t.deepEqual(pickLayer([l('application/octet-stream', 900), l('application/vnd.wasm.content.layer.v1+wasm', 10)]), l('application/vnd.wasm.content.layer.v1+wasm', 10));
  t.deepEqual(pickLayer([l('a', 1), l('b', 30), l('c', 2)]), l('b', 30));
  t.deepEqual(parseChallenge('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'), {
    scheme: 'bearer',
    params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push' },
  });
  t.deepEqual(parseChallenge('Basic realm="x"'), { scheme: 'basic', params: { realm: 'x' } });
  t.is(registryOrigin(parseOciRef('oci://ghcr.io/a/b:1')), 'https://ghcr.io');
  t.is(registryOrigin(parseOciRef('oci://registry.lan:5000/a'), true), 'http://registry.lan:5000');
  t.is(registryOrigin(parseOciRef('oci://[::1]:5000/a')), 'http://[::1]:5000');
  t.is(registryOrigin(parseOciRef('oci://localhost:5000/a')), 'http://localhost:5000');
});

test('a registry that never answers: refused within the time limit', async (t) => {
  const silent: Server = createServer(() => {}).listen(0, '127.0.0.1');
  t.teardown(() => void silent.close());
  await new Promise((r) => silent.once('listening', r));
  const port = (silent.address() as { port: number }).port;
  const t0 = Date.now();
  const e = await t.throwsAsync(pullModule(`oci://127.0.0.1:${port}/mods/add:v1`, { timeoutMs: 300 }), { instanceOf: OciError });
  t.regex(e!.message, /^oci:\/\/127\.0\.0\.1:\d+\/mods\/add:v1: timed out after \d+ ms during manifest \(limit 300 ms\)$/);
  t.true(Date.now() - t0 < 15_000, "bounded by the time limit, not by a hang");
  const closed = await freePort();
  const e2 = await t.throwsAsync(pullModule(`oci://127.0.0.1:${closed}/mods/add:v1`), { instanceOf: OciError });
  t.is(e2!.message, `oci://127.0.0.1:${closed}/mods/add:v1: cannot reach http://127.0.0.1:${closed} (manifest): ECONNREFUSED`);
});

test('a lying registry: manifest digest mismatch for a ref by digest; a blob redirect gets no credentials', async (t) => {
  // A hand-made registry that serves the same manifest for any reference and
  // redirects blobs to another origin, which records what it was sent.
  const bytes = Buffer.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]);
  const manifest = moduleManifest(bytes, 'tiny.wasm');
  const seen: { path: string; auth: string | undefined }[] = [];
  const storage = createHttpServer((req, res) => {
    seen.push({ path: `storage ${req.url}`, auth: req.headers.authorization });
    res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(bytes);
  }).listen(0, '127.0.0.1');
  const fake = createHttpServer((req, res) => {
    seen.push({ path: req.url!, auth: req.headers.authorization });
    if (req.url!.includes('/manifests/')) res.writeHead(200, { 'content-type': MEDIA.ociManifest }).end(manifest);
    else res.writeHead(307, { location: `http://localhost:${(storage.address() as { port: number }).port}/blob?sig=1` }).end();
  }).listen(0, '127.0.0.1');
  t.teardown(() => void fake.close());
  t.teardown(() => void storage.close());
  await Promise.all([once(fake, 'listening'), once(storage, 'listening')]);
  const host = `127.0.0.1:${(fake.address() as { port: number }).port}`;

  const got = await pullModule(`oci://${host}/x/tiny:v1`, { auth: { token: 'T0K' } });
  t.deepEqual(Buffer.from(got.bytes), bytes);
  t.is(got.manifestDigest, sha256Digest(manifest));
  t.deepEqual(seen.map((x) => [x.path.replace(/sha256:\w+/, 'D'), x.auth]), [
    ['/v2/x/tiny/manifests/v1', 'Bearer T0K'],
    ['/v2/x/tiny/blobs/D', 'Bearer T0K'],
    ['storage /blob?sig=1', undefined],
  ]);

  const wrong = `sha256:${'1'.repeat(64)}`;
  const e = await t.throwsAsync(pullModule(`oci://${host}/x/tiny@${wrong}`), { instanceOf: OciError });
  t.is(e!.message, `oci://${host}/x/tiny@${wrong}: manifest digest mismatch: expected ${wrong}, got ${sha256Digest(manifest)}`);
});

// ---------------------------------------------------------------- against the registry

rtest('push add and hello, pull each by tag and by digest: same bytes, digests verified', async (t) => {
  const r = need(t);
  if (!r) return;
  for (const [name, bytes] of [['add', add], ['hello', hello]] as const) {
    const ref = `oci://${r.host}/mods/${name}:v1`;
    const pushed = await pushModule(bytes, ref, { fileName: `${name}.wasm` });
    t.is(pushed.digest, sha256Digest(bytes));
    t.is(pushed.size, bytes.length);
    t.is(pushed.manifestDigest, sha256Digest(moduleManifest(bytes, `${name}.wasm`)));
    // A re-push is idempotent: blobs already there are not uploaded again, the manifest digest is the same.
    t.deepEqual(await pushModule(bytes, ref, { fileName: `${name}.wasm` }), pushed);

    const byTag = await pullModule(ref);
    t.deepEqual(Buffer.from(byTag.bytes), Buffer.from(bytes));
    t.is(byTag.digest, pushed.digest);
    t.is(byTag.manifestDigest, pushed.manifestDigest);
    t.is(byTag.mediaType, 'application/wasm');
    const byDigest = await pullModule(`oci://${r.host}/mods/${name}@${pushed.manifestDigest}`);
    t.deepEqual(Buffer.from(byDigest.bytes), Buffer.from(bytes));
    t.is(byDigest.manifestDigest, pushed.manifestDigest);
    // What the registry stores is the OCI manifest we documented.
    const m = await (await fetch(`${r.url}/v2/mods/${name}/manifests/v1`, { headers: { accept: MEDIA.ociManifest } })).json();
    t.like(m, { schemaVersion: 2, mediaType: MEDIA.ociManifest, config: { mediaType: MEDIA.emptyConfig, size: 2 } });
    t.like(m.layers[0], { mediaType: 'application/wasm', digest: pushed.digest, size: bytes.length, annotations: { 'org.opencontainers.image.title': `${name}.wasm` } });
  }
  // Pushing by digest works when the digest is the manifest's own.
  const own = sha256Digest(moduleManifest(add, 'bydigest.wasm'));
  t.is((await pushModule(add, `oci://${r.host}/mods/bydigest@${own}`)).manifestDigest, own);
});

rtest('a blob tampered with on disk is refused with a digest mismatch naming both digests', async (t) => {
  const r = need(t);
  if (!r) return;
  const bytes = variant(add, 'tamper');
  const pushed = await pushModule(bytes, `oci://${r.host}/mods/tamper:v1`);
  const file = r.blobPath(pushed.digest);
  t.deepEqual(readFileSync(file), Buffer.from(bytes));
  // Same size, one byte changed inside the custom section: still "wasm", wrong digest.
  const fd = openSync(file, 'r+');
  writeSync(fd, Buffer.from('X'), 0, 1, bytes.length - 1);
  closeSync(fd);
  const bad = sha256Digest(readFileSync(file));
  const e = await t.throwsAsync(pullModule(`oci://${r.host}/mods/tamper:v1`), { instanceOf: OciError });
  t.is(e!.message, `oci://${r.host}/mods/tamper:v1: blob digest mismatch: the manifest says ${pushed.digest}, the registry sent ${bad}`);
});

rtest('refusals: wrong digest, unknown tag, non-wasm push, non-wasm layer, size limit', async (t) => {
  const r = need(t);
  if (!r) return;
  const pushed = await pushModule(variant(add, 'refusals'), `oci://${r.host}/mods/refusals:v1`);
  const wrong = `sha256:${'0'.repeat(64)}`;
  const e1 = await t.throwsAsync(pullModule(`oci://${r.host}/mods/refusals@${wrong}`), { instanceOf: OciError });
  t.is(e1!.message, `oci://${r.host}/mods/refusals@${wrong}: manifest not found (HTTP 404 MANIFEST_UNKNOWN)`);
  const e2 = await t.throwsAsync(pullModule(`oci://${r.host}/mods/refusals:nope`), { instanceOf: OciError });
  t.regex(e2!.message, /^oci:\/\/127\.0\.0\.1:\d+\/mods\/refusals:nope: manifest not found \(HTTP 404/);

  // Non-wasm bytes are refused before anything is uploaded.
  const e3 = await t.throwsAsync(pushModule(Buffer.from('#!/bin/sh\necho not wasm\n'), `oci://${r.host}/mods/notwasm:v1`), { instanceOf: OciError });
  t.regex(e3!.message, /^oci:\/\/127\.0\.0\.1:\d+\/mods\/notwasm:v1: refusing to push: not a WebAssembly module: it does not start with 00 61 73 6d/);
  const catalog = (await (await fetch(`${r.url}/v2/_catalog`)).json()) as { repositories: string[] };
  t.false(catalog.repositories.includes('mods/notwasm'));
  // Pushing by a digest that is not the manifest's own is refused before uploading.
  const e4 = await t.throwsAsync(pushModule(add, `oci://${r.host}/mods/bydigest2@${wrong}`), { instanceOf: OciError });
  t.regex(e4!.message, /refusing to push: the manifest for this module has digest sha256:[0-9a-f]{64}, not sha256:0{64}; push by tag instead/);

  // A manifest whose layer is not wasm (pushed by hand): refused after the digest check.
  const text = Buffer.from('just some text, not a module');
  const layer = await upload(r, 'mods/text', text);
  const config = await upload(r, 'mods/text', Buffer.from('{}'));
  await putManifest(r, 'mods/text', 'v1', MEDIA.ociManifest, {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    config: { mediaType: MEDIA.emptyConfig, digest: config, size: 2 },
    layers: [{ mediaType: 'text/plain', digest: layer, size: text.length }],
  });
  const e5 = await t.throwsAsync(pullModule(`oci://${r.host}/mods/text:v1`), { instanceOf: OciError });
  t.regex(e5!.message, /layer sha256:[0-9a-f]{64} \(text\/plain\) is not a WebAssembly module: it does not start with 00 61 73 6d/);

  const e6 = await t.throwsAsync(pullModule(`oci://${r.host}/mods/refusals:v1`, { maxBytes: 64 }), { instanceOf: OciError });
  t.regex(e6!.message, /the module layer is \d+ bytes, more than the limit of 64$/);
  t.is((await pullModule(`oci://${r.host}/mods/refusals@${pushed.manifestDigest}`)).digest, pushed.digest);
});

rtest('an image index picks the wasi/wasm platform; a Docker v2 manifest picks the wasm layer over a larger one', async (t) => {
  const r = need(t);
  if (!r) return;
  const a = await pushModule(add, `oci://${r.host}/mods/multi:add`, { fileName: 'add.wasm' });
  const h = await pushModule(hello, `oci://${r.host}/mods/multi:hello`, { fileName: 'hello.wasm' });
  const entry = (digest: string, size: number, os: string, architecture: string) => ({ mediaType: MEDIA.ociManifest, digest, size, platform: { os, architecture } });
  const index = {
    schemaVersion: 2,
    mediaType: MEDIA.ociIndex,
    manifests: [entry(h.manifestDigest, moduleManifest(hello, 'hello.wasm').length, 'linux', 'amd64'), entry(a.manifestDigest, moduleManifest(add, 'add.wasm').length, 'wasip1', 'wasm')],
  };
  const indexDigest = await putManifest(r, 'mods/multi', 'index', MEDIA.ociIndex, index);
  const got = await pullModule(`oci://${r.host}/mods/multi:index`);
  t.is(got.digest, a.digest);
  t.is(got.manifestDigest, a.manifestDigest);
  t.is((await pullModule(`oci://${r.host}/mods/multi@${indexDigest}`)).digest, a.digest);
  // Without a wasm platform, the first entry.
  await putManifest(r, 'mods/multi', 'plain', MEDIA.ociIndex, {
    ...index,
    manifests: [entry(h.manifestDigest, moduleManifest(hello, 'hello.wasm').length, 'linux', 'arm64'), entry(a.manifestDigest, moduleManifest(add, 'add.wasm').length, 'linux', 'amd64')],
  });
  t.is((await pullModule(`oci://${r.host}/mods/multi:plain`)).digest, h.digest);

  // Docker schema 2, a big non-wasm layer first and the module as vnd.wasm.content.layer.
  const big = Buffer.alloc(4096, 7);
  const mod = variant(hello, 'docker');
  const [bigD, modD, cfgD] = [await upload(r, 'mods/docker', big), await upload(r, 'mods/docker', mod), await upload(r, 'mods/docker', Buffer.from('{}'))];
  await putManifest(r, 'mods/docker', 'v1', MEDIA.dockerManifest, {
    schemaVersion: 2,
    mediaType: MEDIA.dockerManifest,
    config: { mediaType: 'application/vnd.docker.container.image.v1+json', digest: cfgD, size: 2 },
    layers: [
      { mediaType: 'application/vnd.docker.image.rootfs.diff.tar.gzip', digest: bigD, size: big.length },
      { mediaType: 'application/vnd.wasm.content.layer.v1+wasm', digest: modD, size: mod.length },
    ],
  });
  const d = await pullModule(`oci://${r.host}/mods/docker:v1`);
  t.is(d.digest, modD);
  t.is(d.mediaType, 'application/vnd.wasm.content.layer.v1+wasm');
});

// ---------------------------------------------------------------- auth

rtest('htpasswd basic auth: refused without or with wrong credentials, works with them', async (t) => {
  if (!need(t)) return;
  const r = await startRegistry({ basic: USER });
  t.teardown(() => r.stop());
  const ref = `oci://${r.host}/private/add:v1`;
  const e1 = await t.throwsAsync(pushModule(add, ref), { instanceOf: OciError });
  t.is(e1!.message, `${ref}: config blob check: the registry requires authentication (HTTP 401) and no credentials were given`);
  const e2 = await t.throwsAsync(pushModule(add, ref, { auth: { username: USER.username, password: 'wrong' } }), { instanceOf: OciError });
  t.is(e2!.message, `${ref}: config blob check: the registry refused the credentials of user "alice" (HTTP 401)`);
  const pushed = await pushModule(add, ref, { auth: USER });
  const e3 = await t.throwsAsync(pullModule(ref), { instanceOf: OciError });
  t.is(e3!.message, `${ref}: manifest: the registry requires authentication (HTTP 401) and no credentials were given`);
  const pulled = await pullModule(ref, { auth: USER });
  t.is(pulled.digest, pushed.digest);
  t.deepEqual(Buffer.from(pulled.bytes), Buffer.from(add));
});

rtest('Docker token flow: a Bearer challenge, a token from the realm with basic credentials, and a pre-issued token', async (t) => {
  if (!need(t)) return;
  const r = await startRegistry({ token: USER });
  t.teardown(() => r.stop());
  const ref = `oci://${r.host}/private/hello:v1`;
  const e1 = await t.throwsAsync(pushModule(hello, ref), { instanceOf: OciError });
  t.is(e1!.message, `${ref}: config blob check: the registry requires authentication (HTTP 401: insufficient_scope) and no credentials were given`);
  const e2 = await t.throwsAsync(pushModule(hello, ref, { auth: { username: 'alice', password: 'nope' } }), { instanceOf: OciError });
  t.regex(e2!.message, /the token service http:\/\/127\.0\.0\.1:\d+ refused the credentials \(HTTP 401\)$/);
  const pushed = await pushModule(hello, ref, { auth: USER });
  const pulled = await pullModule(ref, { auth: USER });
  t.deepEqual(Buffer.from(pulled.bytes), Buffer.from(hello));
  // A token issued beforehand (as CI systems hand them out) is sent as is.
  const challenge = parseChallenge((await fetch(`${r.url}/v2/private/hello/manifests/v1`)).headers.get('www-authenticate'))!;
  const realm = new URL(challenge.params.realm!);
  realm.searchParams.set('service', challenge.params.service!);
  realm.searchParams.set('scope', 'repository:private/hello:pull');
  const { token } = (await (await fetch(realm, { headers: { authorization: `Basic ${Buffer.from(`${USER.username}:${USER.password}`).toString('base64')}` } })).json()) as { token: string };
  t.is((await pullModule(ref, { auth: { token } })).digest, pushed.digest);
  const e3 = await t.throwsAsync(pullModule(ref, { auth: { token: 'not-a-token' } }), { instanceOf: OciError });
  t.is(e3!.message, `${ref}: manifest: the registry refused the token (HTTP 401: invalid_token)`);
});

// ---------------------------------------------------------------- the CLI

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function exec(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(args[0]!, args.slice(1), { timeout: 60_000, env: { ...process.env, ...env } }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

const PREFIX = ['node', BIN];

function propeller(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return exec([...PREFIX, ...args], env);
}

/** A failing command in this process (no spawn): what it throws. */
async function refused(cmd: Command, argv: string[]): Promise<Error> {
  try {
    const { values, positionals, rest } = parse(cmd, argv);
    await cmd.run(values, positionals, rest);
  } catch (e) {
    return e as Error;
  }
  throw new Error(`${argv.join(' ')} did not fail`);
}

rtest('propeller module push and pull', async (t) => {
  const r = need(t);
  if (!r) return;
  const file = join(EXAMPLES_BUILD_DIR, 'add.wasm');
  const push = await propeller(['module', 'push', file, `oci://${r.host}/mods/add:v1`]);
  t.is(push.code, 0, push.stderr);
  const manifest = sha256Digest(moduleManifest(add, 'add.wasm'));
  t.is(push.stdout, `pushed oci://${r.host}/mods/add:v1@${manifest} (${add.length} bytes, module ${sha256Digest(add)})\n`);

  // Pull by digest first: docker-registry answers 500 now and then to a read of a manifest
  // that a concurrent push of the same content (add:v2 below) is rewriting.
  const out = join(tmp, 'pulled.wasm');
  const pull = await propeller(['module', 'pull', `oci://${r.host}/mods/add:v1@${manifest}`, '-o', out]);
  // In parallel: --json, and one-line errors: usage (exit 2), registry (exit 1).
  const [json, bad, none] = await Promise.all([
    propeller(['module', 'push', '--json', file, `oci://${r.host}/mods/add:v2`]),
    propeller(['module', 'push', file, 'oci://x/Bad:1']),
    propeller(['module', 'pull', `oci://${r.host}/mods/add:nope`, '-o', join(tmp, 'none.wasm')]),
  ]);
  t.is(pull.code, 0, pull.stderr);
  t.regex(pull.stdout, /^pulled .* -> .*pulled\.wasm\n$/);
  t.deepEqual(readFileSync(out), Buffer.from(add));
  t.like(JSON.parse(json.stdout), { ref: `oci://${r.host}/mods/add:v2@${manifest}`, manifest_digest: manifest, digest: sha256Digest(add), size: add.length });
  t.is(bad.code, 2);
  t.regex(bad.stderr, /^propeller: bad OCI reference "oci:\/\/x\/Bad:1": repository "Bad" is not valid[^\n]*\n$/);
  t.is(none.code, 1);
  t.regex(none.stderr, /^propeller: oci:\/\/127\.0\.0\.1:\d+\/mods\/add:nope: manifest not found \(HTTP 404[^\n]*\n$/);
  t.false(existsSync(join(tmp, 'none.wasm')), 'a failed pull writes nothing');
});

test('propeller module: refusals before any registry is asked', async (t) => {
  const ref = `oci://127.0.0.1:9/mods/cli:v1`;
  const text = join(tmp, 'not.wasm');
  writeFileSync(text, 'hello');
  const cases: [Command, string[], RegExp | string, 'usage' | 'oci'][] = [
    [modulePull, [ref, '--username', 'u'], '--username needs --password', 'usage'],
    [modulePull, [ref, '-u', 'u', '-p', 'p', '--token', 't'], 'give either --username/--password or --token, not both', 'usage'],
    [modulePull, [ref, '--timeout', 'soon'], '--timeout must be a non-negative integer, got "soon"', 'usage'],
    [modulePull, [], 'expected exactly one oci:// reference', 'usage'],
    [modulePush, [ref], 'expected FILE.wasm and an oci:// reference', 'usage'],
    [modulePush, [join(tmp, 'missing.wasm'), ref], `cannot read ${join(tmp, 'missing.wasm')}: ENOENT`, 'usage'],
    [modulePush, [text, ref], `${ref}: refusing to push: not a WebAssembly module: only 5 bytes`, 'oci'],
    [modulePush, [text, 'oci://h/a@sha256:12'], /^bad OCI reference "oci:\/\/h\/a@sha256:12": digest "sha256:12" is not sha256:<64 lowercase hex digits>/, 'usage'],
  ];
  for (const [cmd, argv, msg, kind] of cases) {
    const e = await refused(cmd, argv);
    t.true(kind === 'usage' ? e instanceof UsageError : e instanceof OciError, `${argv.join(' ')}: ${e.name}`);
    if (typeof msg === 'string') t.is(e.message, msg);
    else t.regex(e.message, msg);
  }
  // Credentials: flags first, else the environment; never half a pair.
  const env = { PROPELLER_OCI_USERNAME: 'eu', PROPELLER_OCI_PASSWORD: 'ep', PROPELLER_OCI_TOKEN: '' };
  t.deepEqual(authFrom({}, env), { username: 'eu', password: 'ep' });
  t.deepEqual(authFrom({ token: 'ft' }, env), { token: 'ft' });
  t.deepEqual(authFrom({}, { PROPELLER_OCI_TOKEN: 'et' }), { token: 'et' });
  t.is(authFrom({}, {}), undefined);
  t.throws(() => authFrom({}, { PROPELLER_OCI_PASSWORD: 'p' }), { instanceOf: UsageError, message: 'PROPELLER_OCI_PASSWORD needs PROPELLER_OCI_USERNAME' });
  t.throws(() => authFrom({}, { ...env, PROPELLER_OCI_TOKEN: 't' }), { instanceOf: UsageError, message: 'give either PROPELLER_OCI_USERNAME/PROPELLER_OCI_PASSWORD or PROPELLER_OCI_TOKEN, not both' });
});

rtest('propeller module push and pull with credentials from the environment and flags (htpasswd registry)', async (t) => {
  if (!need(t)) return;
  const r = await startRegistry({ basic: USER });
  t.teardown(() => r.stop());
  const file = join(EXAMPLES_BUILD_DIR, 'hello.wasm');
  const ref = `oci://${r.host}/private/hello:v1`;
  const anon = await refused(modulePush, [file, ref]);
  t.is(anon.message, `${ref}: config blob check: the registry requires authentication (HTTP 401) and no credentials were given`);
  const ok = await propeller(['module', 'push', file, ref], { PROPELLER_OCI_USERNAME: USER.username, PROPELLER_OCI_PASSWORD: USER.password });
  t.is(ok.code, 0, ok.stderr);
  const out = join(tmp, 'hello-env.wasm');
  const pull = await propeller(['module', 'pull', ref, '-o', out, '-u', USER.username, '-p', USER.password]);
  t.is(pull.code, 0, pull.stderr);
  t.deepEqual(readFileSync(out), Buffer.from(hello));
});

rtest('a task with image_url oci://… runs on both proplet kinds; a wrong digest is refused', async (t) => {
  const { startStack, scope, until } = await import('./helpers/stack.ts');
  const { McuProplet } = await import('../proplet-mcu/device.ts');
  const s = await startStack({ proplets: 1 });
  const mcu = new McuProplet({ id: 'mcu-oci', secret: s.creds.issue('mcu-oci', 'proplet'), url: s.broker.url, scope, rxBufferBytes: 1024, chunkSize: 512, heartbeatMs: 1000 });
  try {
    await mcu.start();
    await until(() => s.cp.registry.get('mcu-oci')?.state === 'alive', 'MCU registered');
    const ref = `oci://${reg!.host}/tasks/add:e2e`;
    const pushed = await pushModule(add, ref);
    for (const on of ['p1', 'mcu-oci']) {
      const task = await s.api.createTask({ name: 'add', image_url: ref, inputs: [20, 22], proplet_id: on }, { start: true, waitMs: 60_000 });
      t.is(task.state, 'Completed', `${on}: ${task.error}`);
      t.is(task.result?.results, 42);
      t.is(task.result?.proplet_id, on);
      t.is(task.module_digest, pushed.digest);
    }
    const wrong = `oci://${reg!.host}/tasks/add@sha256:${'0'.repeat(64)}`;
    const bad = await s.api.createTask({ name: 'add', image_url: wrong, inputs: [1, 2] }, { start: true, waitMs: 60_000 });
    t.is(bad.state, 'Failed');
    t.regex(bad.error!, /manifest|not found|digest/i);
  } finally {
    await mcu.close();
    await s.close();
  }
});
