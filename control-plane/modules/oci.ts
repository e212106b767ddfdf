// WebAssembly modules in OCI registries (the distribution API, v2): parse an
// oci:// reference, pull a module with every byte verified, push one as a
// one-layer OCI image manifest. Node built-ins and fetch only.
//
// A reference is `oci://HOST[:PORT]/REPO[/MORE]:TAG` or `oci://HOST[:PORT]/REPO@sha256:HEX`
// (`REPO:TAG@sha256:HEX` is accepted too and then pulls by digest). Without a tag
// or a digest the tag is `latest`, as docker does.

import { createHash } from 'node:crypto';
import { sha256Digest } from '../../protocol/index.ts';
import type { FetchPolicy } from './policy.ts';

export class OciError extends Error {
  override name = 'OciError';
}

// ---------------------------------------------------------------- media types

export const MEDIA = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  /** The config blob we push: the OCI 1.1 empty descriptor, content `{}`. */
  emptyConfig: 'application/vnd.oci.empty.v1+json',
  /** The layer media type we push. */
  wasm: 'application/wasm',
} as const;

/** Layer media types taken as "the module" when pulling, in this order of preference. */
export const WASM_LAYER_TYPES: readonly string[] = [
  'application/wasm',
  'application/vnd.wasm.content.layer.v1+wasm',
  'application/vnd.module.wasm.content.layer.v1+wasm',
];

const MANIFEST_ACCEPT = [MEDIA.ociManifest, MEDIA.ociIndex, MEDIA.dockerManifest, MEDIA.dockerList].join(', ');
const EMPTY_CONFIG = new TextEncoder().encode('{}');
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const MAX_SMALL_BYTES = 1024 * 1024;
export const DEFAULT_MAX_BYTES = 64 * 1024 * 1024;
export const DEFAULT_TIMEOUT_MS = 60_000;

// ---------------------------------------------------------------- references

export interface OciRef {
  /** host[:port], as written (an IPv6 address in brackets). */
  registry: string;
  /** e.g. `mods/add` */
  repository: string;
  /** The tag or the digest a manifest is fetched or pushed by. */
  reference: string;
  /** Set when the reference pins a digest (`@sha256:...`). */
  digest?: string;
  /** Set when a tag was written or defaulted (`latest`). */
  tag?: string;
}

const REPO_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(\d{1,5}))?$/;
export const SHA256 = /^sha256:[a-f0-9]{64}$/;

const SHAPE = 'oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST]';

/** Parses an oci:// reference; throws OciError saying what is wrong. A missing tag means `latest`. */
export function parseOciRef(ref: string): OciRef {
  const bad = (why: string): never => {
    throw new OciError(`bad OCI reference ${JSON.stringify(ref)}: ${why} (expected ${SHAPE})`);
  };
  if (typeof ref !== 'string') bad('not a string');
  if (!ref.startsWith('oci://')) bad('must start with oci://');
  const rest = ref.slice('oci://'.length);
  const slash = rest.indexOf('/');
  if (slash < 0 || slash === rest.length - 1) bad('no repository after the registry host');
  const registry = rest.slice(0, slash);
  if (!registry) bad('no registry host');
  const host = HOST.exec(registry);
  if (!host) bad(`registry ${JSON.stringify(registry)} is not a host[:port]`);
  if (host![1] !== undefined && (Number(host![1]) < 1 || Number(host![1]) > 65535)) bad(`port ${host![1]} is out of range`);
  let name = rest.slice(slash + 1);
  let digest: string | undefined;
  let tag: string | undefined;
  const at = name.indexOf('@');
  if (at >= 0) {
    digest = name.slice(at + 1);
    name = name.slice(0, at);
    if (!digest.startsWith('sha256:')) bad(`digest ${JSON.stringify(digest)} is not sha256:<64 hex> (only sha256 is supported)`);
    if (!SHA256.test(digest)) bad(`digest ${JSON.stringify(digest)} is not sha256:<64 lowercase hex digits>`);
  }
  const colon = name.lastIndexOf(':');
  if (colon >= 0) {
    tag = name.slice(colon + 1);
    name = name.slice(0, colon);
    if (!TAG.test(tag)) bad(`tag ${JSON.stringify(tag)} is not valid (letters, digits, _ . -, at most 128, not starting with . or -)`);
  }
  if (!name) bad('empty repository');
  for (const part of name.split('/')) {
    if (!REPO_COMPONENT.test(part)) bad(`repository ${JSON.stringify(name)} is not valid (lowercase letters, digits and . _ - separators, parts joined by /)`);
  }
  if (name.length > 255) bad('repository is longer than 255 characters');
  if (!digest && !tag) tag = 'latest';
  return { registry, repository: name, reference: digest ?? tag!, ...(digest ? { digest } : {}), ...(tag ? { tag } : {}) };
}

/** The reference as a user writes it. */
export function formatOciRef(r: OciRef): string {
  return `oci://${r.registry}/${r.repository}${r.tag ? `:${r.tag}` : ''}${r.digest ? `@${r.digest}` : ''}`;
}

/** Loopback registries are spoken to in plain http; everything else over https unless `insecure`. */
export function isLoopback(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** `http(s)://HOST[:PORT]` of the registry. */
export function registryOrigin(r: OciRef, insecure = false): string {
  return `${insecure || isLoopback(r.registry) ? 'http' : 'https'}://${r.registry}`;
}

// ---------------------------------------------------------------- wasm and digests

/** Null when `bytes` is a core WebAssembly module (`\0asm` version 1), else why not. */
export function notWasm(bytes: Uint8Array): string | null {
  const hex = (n: number) => Array.from(bytes.subarray(0, n), (b) => b.toString(16).padStart(2, '0')).join(' ');
  if (bytes.length < 8) return `not a WebAssembly module: only ${bytes.length} bytes`;
  // the bytes themselves are not echoed: a fetched answer may be anyone's
  if (bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) return 'not a WebAssembly module: it does not start with 00 61 73 6d ("\\0asm")';
  if (bytes[4] === 1 && bytes[5] === 0 && bytes[6] === 0 && bytes[7] === 0) return null;
  if (bytes[6] === 1 && bytes[7] === 0) return 'a WebAssembly component, not a core module (proplets run core modules)';
  return `unsupported WebAssembly version ${hex(8).slice(12)} (expected 01 00 00 00)`;
}

// ---------------------------------------------------------------- options and results

export type OciAuth = { username: string; password: string } | { token: string };

export interface OciOptions {
  auth?: OciAuth;
  /** Plain http even for a registry that is not on loopback. */
  insecure?: boolean;
  /** The whole operation's time limit (default 60 s). */
  timeoutMs?: number;
  /** Checked before every request (registry, token service, redirects); default: anything goes. */
  policy?: FetchPolicy;
}

export interface PullOptions extends OciOptions {
  /** Refuse a module larger than this (default 64 MiB). */
  maxBytes?: number;
}

export interface PushOptions extends OciOptions {
  /** Goes in the layer's `org.opencontainers.image.title` annotation (default: last part of the repository + `.wasm`). */
  fileName?: string;
  /** Refuse a module larger than this (default 64 MiB). */
  maxBytes?: number;
}

export interface PulledModule {
  bytes: Uint8Array;
  /** sha256 of the module (the layer's digest), verified. */
  digest: string;
  /** The layer's media type. */
  mediaType: string;
  /** sha256 of the image manifest the module came from. */
  manifestDigest: string;
}

export interface PushedModule {
  digest: string;
  manifestDigest: string;
  size: number;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os?: string; architecture?: string };
}

// ---------------------------------------------------------------- HTTP with auth

interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses `WWW-Authenticate: Bearer realm="...",service="...",scope="..."` (first challenge only). */
export function parseChallenge(header: string | null): Challenge | undefined {
  if (!header) return undefined;
  const m = /^\s*([A-Za-z][\w-]*)\s*(.*)$/s.exec(header);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  const re = /([A-Za-z][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?\s*/gy;
  const rest = m[2]!;
  let p: RegExpExecArray | null;
  while ((p = re.exec(rest))) {
    if (p[0] === '') break;
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : p[3]!;
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

/** One operation against one registry: keeps what auth it learned and a deadline. */
class Session {
  private readonly origin: string;
  private authorization: string | undefined;
  private readonly tokens = new Map<string, string>();
  private readonly signal: AbortSignal;
  private readonly started = Date.now();

  constructor(
    readonly ref: OciRef,
    private readonly opts: OciOptions,
  ) {
    this.origin = registryOrigin(ref, opts.insecure);
    this.signal = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    if (opts.auth && 'token' in opts.auth) this.authorization = `Bearer ${opts.auth.token}`;
  }

  fail(what: string): never {
    throw new OciError(`${formatOciRef(this.ref)}: ${what}`);
  }

  url(path: string): URL {
    return new URL(path, this.origin);
  }

  private basic(): string | undefined {
    const a = this.opts.auth;
    return a && 'username' in a ? `Basic ${Buffer.from(`${a.username}:${a.password}`).toString('base64')}` : undefined;
  }

  /** fetch with the deadline, readable network errors, and no redirect followed blindly. */
  async raw(url: URL, init: RequestInit & { headers?: Record<string, string> }, what: string): Promise<Response> {
    try {
      await this.opts.policy?.check(url);
    } catch (e) {
      this.fail((e as Error).message);
    }
    try {
      return await fetch(url, { ...init, redirect: 'manual', signal: this.signal });
    } catch (e) {
      this.netError(e, url, what);
    }
  }

  netError(e: unknown, url: URL, what: string): never {
    const err = e as Error & { cause?: { code?: string; message?: string } };
    if (err.name === 'TimeoutError' || (err.name === 'AbortError' && this.signal.aborted)) {
      this.fail(`timed out after ${Date.now() - this.started} ms during ${what} (limit ${this.opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms)`);
    }
    const code = err.cause?.code ?? err.cause?.message ?? err.message;
    const tlsHint = url.protocol === 'https:' && /SSL|EPROTO|TLS|wrong version/i.test(String(code)) ? '; if it speaks plain http, use insecure' : '';
    this.fail(`cannot reach ${url.origin} (${what}): ${code}${tlsHint}`);
  }

  /**
   * A request to the registry with auth: anonymous first (or with the given token),
   * then, on 401, Basic or a Bearer token from the challenge's realm, and again.
   * Redirects are followed (up to 5), sending credentials only to the registry's origin.
   */
  async request(method: string, path: string | URL, what: string, init: { headers?: Record<string, string>; body?: Uint8Array } = {}): Promise<Response> {
    let url = typeof path === 'string' ? this.url(path) : path;
    const tried = new Set<string>();
    let body = init.body;
    for (let hops = 0, rounds = 0; ; ) {
      const headers: Record<string, string> = { ...init.headers };
      const sameOrigin = url.origin === this.origin;
      if (this.authorization && sameOrigin) headers.authorization = this.authorization;
      const res = await this.raw(url, { method, headers, ...(body ? { body: body as Uint8Array<ArrayBuffer> } : {}) }, what);
      if ([301, 302, 303, 307, 308].includes(res.status)) {
        await res.body?.cancel();
        const loc = res.headers.get('location');
        if (!loc || ++hops > 5) this.fail(`${what}: too many redirects or a redirect without Location (HTTP ${res.status})`);
        url = new URL(loc, url);
        if (res.status === 303) [method, body] = ['GET', undefined];
        continue;
      }
      if (res.status !== 401 || !sameOrigin) return res;
      const challenge = parseChallenge(res.headers.get('www-authenticate'));
      await res.body?.cancel();
      const next = ++rounds > 4 ? undefined : await this.authorize(challenge, tried, what);
      if (!next) return this.fail(this.unauthorized(what, challenge));
      this.authorization = next;
    }
  }

  private unauthorized(what: string, c: Challenge | undefined): string {
    const a = this.opts.auth;
    const why = c?.params.error ? `: ${c.params.error}` : '';
    if (!a) return `${what}: the registry requires authentication (HTTP 401${why}) and no credentials were given`;
    if ('token' in a) return `${what}: the registry refused the token (HTTP 401${why})`;
    return `${what}: the registry refused the credentials of user ${JSON.stringify(a.username)} (HTTP 401${why})`;
  }

  /** The next Authorization to try after a 401, or undefined when there is nothing new to try. */
  private async authorize(c: Challenge | undefined, tried: Set<string>, what: string): Promise<string | undefined> {
    const a = this.opts.auth;
    if (a && 'token' in a) {
      // A pre-issued token: sent from the start; nothing else to try.
      return undefined;
    }
    if (c?.scheme === 'basic' || !c) {
      const b = this.basic();
      if (!b || tried.has('basic')) return undefined;
      tried.add('basic');
      return b;
    }
    if (c.scheme !== 'bearer') this.fail(`${what}: the registry asks for ${c.scheme} authentication, which is not supported (only Basic and Bearer)`);
    const realm = c.params.realm;
    if (!realm) this.fail(`${what}: the registry's Bearer challenge has no realm`);
    const key = `bearer ${realm} ${c.params.service ?? ''} ${c.params.scope ?? ''}`;
    if (tried.has(key)) return undefined;
    tried.add(key);
    const cached = this.tokens.get(key);
    if (cached) return `Bearer ${cached}`;
    const token = await this.fetchToken(realm, c.params.service, c.params.scope, what);
    this.tokens.set(key, token);
    return `Bearer ${token}`;
  }

  private async fetchToken(realm: string, service: string | undefined, scope: string | undefined, what: string): Promise<string> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      this.fail(`${what}: the registry's token realm ${JSON.stringify(realm)} is not a URL`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') this.fail(`${what}: the token realm ${realm} is not http(s)`);
    if (url.protocol === 'http:' && !this.opts.insecure && !isLoopback(url.host) && this.basic()) {
      this.fail(`${what}: the token realm ${realm} is plain http; refusing to send credentials there (use insecure to allow it)`);
    }
    if (service) url.searchParams.set('service', service);
    for (const s of (scope ?? '').split(' ').filter(Boolean)) url.searchParams.append('scope', s);
    const headers: Record<string, string> = { accept: 'application/json' };
    const b = this.basic();
    if (b) headers.authorization = b;
    const res = await this.raw(url, { method: 'GET', headers }, `${what}: token request`);
    const body = await this.readSmall(res, `${what}: token request`);
    if (res.status === 401 || res.status === 403) {
      this.fail(b ? `${what}: the token service ${url.origin} refused the credentials (HTTP ${res.status})` : `${what}: the registry requires authentication (HTTP 401) and no credentials were given`);
    }
    if (!res.ok) this.fail(`${what}: the token service ${url.origin} answered HTTP ${res.status}${errorDetail(body)}`);
    let json: { token?: unknown; access_token?: unknown };
    try {
      json = JSON.parse(new TextDecoder().decode(body));
    } catch {
      this.fail(`${what}: the token service ${url.origin} answered with a body that is not JSON`);
    }
    const token = typeof json.token === 'string' && json.token ? json.token : typeof json.access_token === 'string' && json.access_token ? json.access_token : undefined;
    if (!token) this.fail(`${what}: the token service ${url.origin} answered without a token`);
    return token;
  }

  /** A whole small body (manifests, errors, tokens) with a size cap. */
  async readSmall(res: Response, what: string, cap = MAX_SMALL_BYTES): Promise<Uint8Array> {
    return (await this.readCapped(res, what, cap)).bytes;
  }

  /** Reads a body, hashing as it goes, refusing more than `cap` bytes. */
  async readCapped(res: Response, what: string, cap: number, limit = `the limit of ${cap} bytes`): Promise<{ bytes: Uint8Array; digest: string }> {
    const len = Number(res.headers.get('content-length') ?? NaN);
    if (Number.isFinite(len) && len > cap) {
      await res.body?.cancel();
      this.fail(`${what}: ${len} bytes is more than ${limit}`);
    }
    const hash = createHash('sha256');
    const chunks: Uint8Array[] = [];
    let total = 0;
    if (res.body) {
      const reader = res.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          total += value.byteLength;
          if (total > cap) {
            await reader.cancel();
            this.fail(`${what}: more than ${limit}`);
          }
          hash.update(value);
          chunks.push(value);
        }
      } catch (e) {
        if (e instanceof OciError) throw e;
        this.netError(e, new URL(res.url || this.origin), what);
      }
    }
    const bytes = new Uint8Array(total);
    let off = 0;
    for (const c of chunks) {
      bytes.set(c, off);
      off += c.byteLength;
    }
    return { bytes, digest: `sha256:${hash.digest('hex')}` };
  }

  /** Turns a non-2xx answer into an OciError naming what failed. */
  async refuse(res: Response, what: string): Promise<never> {
    let body: Uint8Array = new Uint8Array();
    try {
      body = await this.readSmall(res, what, 64 * 1024);
    } catch {
      /* the status says enough */
    }
    const reason = res.status === 404 ? 'not found' : res.status === 403 ? 'access denied' : res.status === 405 ? 'not allowed by this registry' : 'failed';
    return this.fail(`${what} ${reason} (HTTP ${res.status}${errorDetail(body)})`);
  }
}

/** ` CODE: message` from a distribution error body, if it has one. */
function errorDetail(body: Uint8Array): string {
  try {
    const j = JSON.parse(new TextDecoder().decode(body)) as { errors?: { code?: string; message?: string }[] };
    const e = j.errors?.[0];
    if (!e) return '';
    // the registry's error code only (an enum such as MANIFEST_UNKNOWN): free text from the answer is not echoed
    return e.code && /^[A-Z_]{1,64}$/.test(e.code) ? ` ${e.code}` : '';
  } catch {
    return '';
  }
}

// ---------------------------------------------------------------- pull

function descriptor(s: Session, d: unknown, where: string): Descriptor {
  const o = d as Partial<Descriptor> | null;
  if (!o || typeof o !== 'object') s.fail(`${where} is not a descriptor`);
  if (typeof o.digest !== 'string' || !SHA256.test(o.digest)) s.fail(`${where} has digest ${JSON.stringify(o.digest)}, not sha256:<64 hex> (only sha256 is supported)`);
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 0) s.fail(`${where} has no valid size`);
  return { ...o, mediaType: typeof o.mediaType === 'string' ? o.mediaType : '' } as Descriptor;
}

async function getManifest(s: Session, reference: string, expectDigest: string | undefined): Promise<{ json: Record<string, unknown>; mediaType: string; digest: string }> {
  const what = expectDigest && reference !== s.ref.reference ? `manifest ${reference}` : 'manifest';
  const res = await s.request('GET', `/v2/${s.ref.repository}/manifests/${reference}`, what, { headers: { accept: MANIFEST_ACCEPT } });
  if (!res.ok) await s.refuse(res, what);
  const { bytes, digest } = await s.readCapped(res, what, MAX_MANIFEST_BYTES);
  if (expectDigest && digest !== expectDigest) s.fail(`${what} digest mismatch: expected ${expectDigest}, got ${digest}`);
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    s.fail(`${what} is not JSON`);
  }
  if (!json || typeof json !== 'object' || Array.isArray(json)) s.fail(`${what} is not a JSON object`);
  const header = (res.headers.get('content-type') ?? '').split(';')[0]!.trim();
  const mediaType = typeof json.mediaType === 'string' ? json.mediaType : header;
  return { json, mediaType, digest };
}

/** The index entry to follow: a wasi/wasm platform if one is listed, else the first. */
function pickFromIndex(s: Session, json: Record<string, unknown>): Descriptor {
  const list = json.manifests;
  if (!Array.isArray(list) || list.length === 0) s.fail('the image index lists no manifests');
  const ds = list.map((d, i) => descriptor(s, d, `index entry ${i}`));
  const wasm = ds.find((d) => /^wasi/.test(d.platform?.os ?? '') || /^wasm/.test(d.platform?.architecture ?? ''));
  return wasm ?? ds[0]!;
}

/** The layer holding the module: the first with a wasm media type, else the largest. */
export function pickLayer<T extends { mediaType: string; size: number }>(layers: T[]): T | undefined {
  for (const t of WASM_LAYER_TYPES) {
    const hit = layers.find((l) => l.mediaType === t);
    if (hit) return hit;
  }
  return layers.reduce<T | undefined>((a, l) => (!a || l.size > a.size ? l : a), undefined);
}

/**
 * Pulls a module: manifest (following an index), layer choice, blob; the blob's
 * sha256 must match the layer digest, and for a ref by digest the manifest's
 * sha256 must match that digest. The bytes must be a core wasm module.
 */
export async function pullModule(ref: string | OciRef, opts: PullOptions = {}): Promise<PulledModule> {
  const r = typeof ref === 'string' ? parseOciRef(ref) : ref;
  const s = new Session(r, opts);
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  let m = await getManifest(s, r.reference, r.digest);
  if (m.mediaType === MEDIA.ociIndex || m.mediaType === MEDIA.dockerList || (!m.mediaType && Array.isArray(m.json.manifests))) {
    const d = pickFromIndex(s, m.json);
    m = await getManifest(s, d.digest, d.digest);
  }
  if (m.json.schemaVersion !== 2) s.fail(`manifest has schemaVersion ${JSON.stringify(m.json.schemaVersion)}; only schemaVersion 2 (OCI or Docker v2) is supported`);
  if (m.mediaType && m.mediaType !== MEDIA.ociManifest && m.mediaType !== MEDIA.dockerManifest) s.fail(`manifest media type ${m.mediaType} is not an image manifest`);
  if (!Array.isArray(m.json.layers) || m.json.layers.length === 0) s.fail('the manifest has no layers');
  const layers = (m.json.layers as unknown[]).map((d, i) => descriptor(s, d, `layer ${i}`));
  const layer = pickLayer(layers)!;
  if (layer.size > maxBytes) s.fail(`the module layer is ${layer.size} bytes, more than the limit of ${maxBytes}`);

  const what = `blob ${layer.digest}`;
  const res = await s.request('GET', `/v2/${r.repository}/blobs/${layer.digest}`, what);
  if (!res.ok) await s.refuse(res, what);
  const { bytes, digest } = await s.readCapped(res, what, layer.size, `the ${layer.size} bytes the manifest declares`);
  if (digest !== layer.digest) s.fail(`blob digest mismatch: the manifest says ${layer.digest}, the registry sent ${digest}`);
  if (bytes.length !== layer.size) s.fail(`blob size mismatch: the manifest says ${layer.size} bytes, the registry sent ${bytes.length}`);
  const why = notWasm(bytes);
  if (why) s.fail(`layer ${layer.digest} (${layer.mediaType || 'no media type'}) is ${why}`);
  return { bytes, digest, mediaType: layer.mediaType, manifestDigest: m.digest };
}

// ---------------------------------------------------------------- push

/** The manifest pushModule writes for `bytes`: deterministic, so a re-push gives the same digest. */
export function moduleManifest(bytes: Uint8Array, fileName: string): Uint8Array {
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA.ociManifest,
    artifactType: MEDIA.wasm,
    config: { mediaType: MEDIA.emptyConfig, digest: sha256Digest(EMPTY_CONFIG), size: EMPTY_CONFIG.length, data: 'e30=' },
    layers: [{ mediaType: MEDIA.wasm, digest: sha256Digest(bytes), size: bytes.length, annotations: { 'org.opencontainers.image.title': fileName } }],
  };
  return new TextEncoder().encode(JSON.stringify(manifest));
}

async function uploadBlob(s: Session, bytes: Uint8Array, digest: string, what: string): Promise<void> {
  const repo = s.ref.repository;
  const head = await s.request('HEAD', `/v2/${repo}/blobs/${digest}`, `${what} check`);
  if (head.ok) return; // already there
  if (head.status !== 404) await s.refuse(head, `${what} check`);
  const start = await s.request('POST', `/v2/${repo}/blobs/uploads/`, `${what} upload start`, { headers: { 'content-length': '0' } });
  if (start.status !== 202) await s.refuse(start, `${what} upload start`);
  await start.body?.cancel();
  const loc = start.headers.get('location');
  if (!loc) s.fail(`${what} upload start: the registry answered without a Location`);
  const url = new URL(loc, s.url(`/v2/${repo}/blobs/uploads/`));
  url.searchParams.set('digest', digest);
  const put = await s.request('PUT', url, `${what} upload`, { headers: { 'content-type': 'application/octet-stream' }, body: bytes });
  if (put.status !== 201 && put.status !== 204) await s.refuse(put, `${what} upload`);
  await put.body?.cancel();
  const got = put.headers.get('docker-content-digest');
  if (got && got !== digest) s.fail(`${what} upload: digest mismatch: sent ${digest}, the registry stored ${got}`);
}

/**
 * Pushes a core wasm module as a one-layer OCI image manifest (layer
 * `application/wasm`, config the empty descriptor `{}`) to the ref's tag, or to
 * its digest, which must then be the manifest's own digest.
 */
export async function pushModule(bytes: Uint8Array, ref: string | OciRef, opts: PushOptions = {}): Promise<PushedModule> {
  const r = typeof ref === 'string' ? parseOciRef(ref) : ref;
  const fail = (why: string): never => {
    throw new OciError(`${formatOciRef(r)}: ${why}`);
  };
  const why = notWasm(bytes);
  if (why) fail(`refusing to push: ${why}`);
  const maxBytes = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  if (bytes.length > maxBytes) fail(`refusing to push: ${bytes.length} bytes is more than the limit of ${maxBytes}`);
  const fileName = opts.fileName ?? `${r.repository.split('/').pop()}.wasm`;
  const manifest = moduleManifest(bytes, fileName);
  const manifestDigest = sha256Digest(manifest);
  if (r.digest && r.digest !== manifestDigest) {
    fail(`refusing to push: the manifest for this module has digest ${manifestDigest}, not ${r.digest}; push by tag instead`);
  }
  const digest = sha256Digest(bytes);
  const s = new Session(r, opts);
  await uploadBlob(s, EMPTY_CONFIG, sha256Digest(EMPTY_CONFIG), 'config blob');
  await uploadBlob(s, bytes, digest, `blob ${digest}`);
  const res = await s.request('PUT', `/v2/${r.repository}/manifests/${r.tag ?? r.reference}`, 'manifest upload', {
    headers: { 'content-type': MEDIA.ociManifest },
    body: manifest,
  });
  if (res.status !== 201 && res.status !== 200) await s.refuse(res, 'manifest upload');
  await res.body?.cancel();
  const got = res.headers.get('docker-content-digest');
  if (got && got !== manifestDigest) s.fail(`manifest upload: digest mismatch: sent ${manifestDigest}, the registry stored ${got}`);
  return { digest, manifestDigest, size: bytes.length };
}
