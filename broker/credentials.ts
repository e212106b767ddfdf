// Broker accounts: who may connect, with which role, proven by which secret.
//
// Two hash formats are accepted (both strings, no ':' so they fit a line of
// the credentials file):
//
//   sha256$<salt>$<mac>           mac = HMAC-SHA256(key = salt, secret); salt 16 bytes, mac 32 bytes
//   scrypt$<N>$<r>$<p>$<salt>$<key>  key = scrypt(secret, salt, len(key), {N, r, p})
//
// <salt>, <mac> and <key> are base64url without padding (standard base64 is
// also read). Secrets the control plane issues are 256-bit random tokens: no
// dictionary or brute-force search can reach them, so one salted HMAC is
// adequate and keeps CONNECT cheap. Human-chosen passwords (the credentials
// file) deserve a slow hash: write them as scrypt (hashPassword() makes one).

import * as crypto from 'node:crypto';
import { createHmac, randomBytes, scrypt, scryptSync, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isId } from '../protocol/index.ts';

export type Role = 'proplet' | 'manager' | 'debug';
export const ROLES: readonly Role[] = ['proplet', 'manager', 'debug'];

/**
 * One account. id = MQTT username = proplet id for proplets. A proplet id
 * ending in `-*` is a group account (`PREFIX-*`): its secret admits any
 * username `PREFIX-<rest>` that has no account of its own, as that proplet
 * (the pods of one Kubernetes Deployment, named after it).
 */
export interface CredentialRecord {
  id: string;
  role: Role;
  hash: string;
}

export interface CredentialLookup {
  get(id: string): CredentialRecord | undefined;
  /**
   * Optional: a number that changes whenever any record is added, replaced or
   * deleted. When present, the broker re-reads a connection's account only
   * after it changed, instead of on every publish, subscribe and delivery.
   */
  readonly generation?: number;
}

export type CredentialChange = CredentialRecord | { id: string; deleted: true };

/** `PREFIX-*`: a group account for every proplet id `PREFIX-<rest>`. */
export function isGroupId(id: string): boolean {
  return id.length > 2 && id.endsWith('-*') && !id.slice(0, -1).includes('*');
}

/**
 * The account a username authenticates against: its own, else the group
 * account with the longest prefix it falls under.
 */
export function accountFor(lookup: CredentialLookup, username: string): CredentialRecord | undefined {
  const own = lookup.get(username);
  if (own || username.includes('*')) return own;
  for (let i = username.lastIndexOf('-'); i > 0; i = username.lastIndexOf('-', i - 1)) {
    if (i === username.length - 1) continue; // PREFIX- with nothing after it
    const group = lookup.get(`${username.slice(0, i)}-*`);
    if (group?.role === 'proplet') return group;
  }
  return undefined;
}

export function isRole(s: unknown): s is Role {
  return s === 'proplet' || s === 'manager' || s === 'debug';
}

const b64 = (b: Buffer): string => b.toString('base64url');

/** 32 random bytes, base64url (43 characters). */
export function generateSecret(): string {
  // A leading '-' would read as an option on command lines (`--secret -x...`).
  for (;;) {
    const s = b64(randomBytes(32));
    if (s[0] !== '-') return s;
  }
}

/** Fast salted hash for issued (high-entropy) secrets: 'sha256$<salt>$<mac>'. */
export function hashSecret(secret: string): string {
  if (typeof secret !== 'string' || secret.length === 0) throw new TypeError('secret must be a non-empty string');
  const salt = randomBytes(16);
  return `sha256$${b64(salt)}$${b64(hmac(salt, secret))}`;
}

// scrypt cost for hashPassword: 16 MiB of memory, some 50 ms on one core.
const SCRYPT_N = 1 << 14;
const SCRYPT_R = 8;
const SCRYPT_P = 1;

/** Slow salted hash for human-chosen passwords: 'scrypt$N$r$p$<salt>$<key>'. */
export function hashPassword(password: string): string {
  if (typeof password !== 'string' || password.length === 0) throw new TypeError('password must be a non-empty string');
  const salt = randomBytes(16);
  const key = scryptSync(password, salt, 32, { N: SCRYPT_N, r: SCRYPT_R, p: SCRYPT_P, maxmem: scryptMaxmem(SCRYPT_N, SCRYPT_R) });
  return `scrypt$${SCRYPT_N}$${SCRYPT_R}$${SCRYPT_P}$${b64(salt)}$${b64(key)}`;
}

type ParsedHash =
  | { kind: 'sha256'; salt: Buffer; mac: Buffer }
  | { kind: 'scrypt'; N: number; r: number; p: number; salt: Buffer; key: Buffer };

const B64_RE = /^[A-Za-z0-9+/_-]+={0,2}$/;

/** The length `s` decodes to when it is base64 (or base64url) of min to max bytes; -1 otherwise. */
function b64Length(s: string | undefined, min: number, max: number): number {
  if (s === undefined || !B64_RE.test(s)) return -1;
  const n = Buffer.byteLength(s, 'base64');
  return n >= min && n <= max ? n : -1;
}

function b64field(s: string | undefined, min: number, max: number): Buffer | undefined {
  return b64Length(s, min, max) < 0 ? undefined : Buffer.from(s!, 'base64');
}

function smallInt(s: string | undefined, min: number, max: number): number | undefined {
  if (s === undefined || !/^[0-9]{1,8}$/.test(s)) return undefined;
  const n = Number(s);
  return n >= min && n <= max ? n : undefined;
}

// Bounds keep a crafted hash in a credentials file from costing gigabytes or
// minutes per CONNECT.
function parseHash(hash: string): ParsedHash | undefined {
  if (typeof hash !== 'string' || hash.length > 512) return undefined;
  const f = hash.split('$');
  if (f[0] === 'sha256' && f.length === 3) {
    const salt = b64field(f[1], 8, 64);
    const mac = b64field(f[2], 32, 32);
    return salt && mac ? { kind: 'sha256', salt, mac } : undefined;
  }
  if (f[0] === 'scrypt' && f.length === 6) {
    const N = smallInt(f[1], 2, 1 << 20);
    const r = smallInt(f[2], 1, 32);
    const p = smallInt(f[3], 1, 16);
    const salt = b64field(f[4], 8, 64);
    const key = b64field(f[5], 16, 64);
    if (N === undefined || r === undefined || p === undefined || !salt || !key) return undefined;
    if ((N & (N - 1)) !== 0 || N * r > 1 << 21) return undefined; // N a power of two; at most 256 MiB
    return { kind: 'scrypt', N, r, p, salt, key };
  }
  return undefined;
}

/** True when `hash` is in one of the accepted formats. */
export function isHash(hash: string): boolean {
  return parseHash(hash) !== undefined;
}

/** SHA-256's block size: an HMAC key up to this long is used as it is (salts are 8 to 64 bytes). */
const BLOCK = 64;
/** Node ≥ 20.12's one-shot digest; @types/node does not declare it yet. */
const oneShot = (crypto as { hash?: (alg: string, data: Buffer, enc: 'buffer') => Buffer }).hash;
/** hmac()'s working buffer: the key block, then the secret or the inner digest; wiped after each use. */
const scratch = Buffer.alloc(BLOCK + 128);

/**
 * HMAC-SHA256 (RFC 2104) as two one-shot digests. createHmac() sets up an
 * OpenSSL context per call: in a connect storm's profile that set-up was half
 * of the broker's authentication, three times the hashing itself.
 */
function hmac(salt: Buffer, secret: string): Buffer {
  if (!oneShot || salt.length > BLOCK) return createHmac('sha256', salt).update(secret, 'utf8').digest();
  const len = Buffer.byteLength(secret, 'utf8');
  // an issued secret is 43 bytes; a longer one (up to a CONNECT's 64 KiB) gets a buffer of its own
  const b = BLOCK + len <= scratch.length ? scratch : Buffer.alloc(BLOCK + len);
  for (let i = 0; i < BLOCK; i++) b[i] = (i < salt.length ? salt[i]! : 0) ^ 0x36;
  b.write(secret, BLOCK, 'utf8');
  const inner = oneShot('sha256', b.subarray(0, BLOCK + len), 'buffer');
  for (let i = 0; i < BLOCK; i++) b[i] = (i < salt.length ? salt[i]! : 0) ^ 0x5c;
  inner.copy(b, BLOCK);
  const mac = oneShot('sha256', b.subarray(0, BLOCK + inner.length), 'buffer');
  b.fill(0, 0, BLOCK + Math.max(len, inner.length));
  return mac;
}

function scryptMaxmem(N: number, r: number): number {
  return 128 * N * r * 2 + 1024 * 1024;
}

function equal(a: Buffer, b: Buffer): boolean {
  // The length of a stored hash is no secret; the content is compared in constant time.
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Checks a secret against a stored hash (constant-time compare). Never throws: a malformed hash verifies nothing. */
export function verifySecret(secret: string, hash: string): boolean {
  if (typeof hash === 'string' && hash.startsWith('sha256$')) return typeof secret === 'string' && verifyIssued(secret, hash);
  const h = parseHash(hash);
  if (h?.kind !== 'scrypt' || typeof secret !== 'string') return false;
  try {
    const key = scryptSync(secret, h.salt, h.key.length, { N: h.N, r: h.r, p: h.p, maxmem: scryptMaxmem(h.N, h.r) });
    return equal(key, h.key);
  } catch {
    return false;
  }
}

/**
 * As verifySecret, but scrypt runs on libuv's thread pool instead of blocking
 * the event loop (what the broker uses on CONNECT).
 */
export function verifySecretAsync(secret: string, hash: string): Promise<boolean> {
  const v = verifySecretSoon(secret, hash);
  return typeof v === 'boolean' ? Promise.resolve(v) : v;
}

/**
 * As verifySecretAsync, but the answer is plain when it is known at once (a
 * fast hash, a malformed one): a CONNECT with an issued secret then costs no
 * promise. Only scrypt answers with a promise.
 */
export function verifySecretSoon(secret: string, hash: string): boolean | Promise<boolean> {
  if (typeof hash === 'string' && hash.startsWith('sha256$')) return typeof secret === 'string' && verifyIssued(secret, hash);
  const h = parseHash(hash);
  if (h?.kind !== 'scrypt' || typeof secret !== 'string') return false;
  return new Promise((resolve) => {
    scrypt(secret, h.salt, h.key.length, { N: h.N, r: h.r, p: h.p, maxmem: scryptMaxmem(h.N, h.r) }, (err, key) => {
      resolve(!err && equal(key, h.key));
    });
  });
}

/** verifyIssued()'s salt and mac, decoded in place (it runs to the end before another call). */
const saltScratch = Buffer.alloc(64);
const macScratch = Buffer.alloc(32);

/**
 * A 'sha256$<salt>$<mac>' hash checked with parseHash's rules, but read in
 * place: no array, strings or buffers per CONNECT but the digest.
 */
function verifyIssued(secret: string, hash: string): boolean {
  if (hash.length > 512) return false;
  const d = hash.indexOf('$', 7);
  if (d < 0 || hash.indexOf('$', d + 1) >= 0) return false;
  const salt = hash.slice(7, d);
  const mac = hash.slice(d + 1);
  const saltLen = b64Length(salt, 8, 64);
  if (saltLen < 0 || b64Length(mac, 32, 32) < 0) return false;
  saltScratch.write(salt, 'base64');
  macScratch.write(mac, 'base64');
  return timingSafeEqual(hmac(saltScratch.subarray(0, saltLen), secret), macScratch);
}

const DUMMY_HASH = hashSecret('propeller-dummy-secret');

/** Spends the time a real verification would, so unknown users are not told apart by timing. */
export function verifyDummy(secret: string): void {
  verifySecret(secret, DUMMY_HASH);
}

export class CredentialError extends Error {
  override name = 'CredentialError';
}

function checkRecord(rec: CredentialRecord): CredentialRecord {
  if (rec === null || typeof rec !== 'object') throw new CredentialError('credential record must be an object');
  if (!isId(rec.id)) {
    throw new CredentialError(`invalid credential id ${JSON.stringify(rec.id)}: must be 1-128 characters without '+', '#', '/' or control characters`);
  }
  if (!isRole(rec.role)) throw new CredentialError(`invalid role ${JSON.stringify(rec.role)} for ${JSON.stringify(rec.id)}: expected one of ${ROLES.join(', ')}`);
  if (rec.id.includes('*') && (rec.role !== 'proplet' || !isGroupId(rec.id))) {
    throw new CredentialError(`invalid credential id ${JSON.stringify(rec.id)}: '*' is only allowed at the end of a proplet group account, as PREFIX-*`);
  }
  if (!isHash(rec.hash)) throw new CredentialError(`invalid hash for ${JSON.stringify(rec.id)}: expected 'sha256$<salt>$<mac>' or 'scrypt$N$r$p$<salt>$<key>'`);
  return Object.freeze({ id: rec.id, role: rec.role, hash: rec.hash });
}

export interface SetOptions {
  /** Call onChange (default true). False when restoring records from the store that onChange feeds. */
  notify?: boolean;
}

/**
 * In-memory accounts. The control plane persists them through its own store
 * via onChange; records loaded from a credentials file do not call onChange
 * (the file stays their source of truth).
 */
export class CredentialStore implements CredentialLookup {
  private readonly recs = new Map<string, CredentialRecord>();
  private readonly onChange: ((rec: CredentialChange) => void) | undefined;
  private changes = 0;

  constructor(opts: { onChange?: (rec: CredentialChange) => void } = {}) {
    this.onChange = opts.onChange;
  }

  /** Creates or replaces the account `id` with a fresh secret; returns the plain secret (stored only as a hash). */
  issue(id: string, role: Role): string {
    const secret = generateSecret();
    this.set({ id, role, hash: hashSecret(secret) });
    return secret;
  }

  set(rec: CredentialRecord, opts: SetOptions = {}): void {
    const r = checkRecord(rec);
    this.recs.set(r.id, r);
    this.changes++;
    if (opts.notify !== false) this.onChange?.(r);
  }

  delete(id: string, opts: SetOptions = {}): boolean {
    const had = this.recs.delete(id);
    if (had) this.changes++;
    if (had && opts.notify !== false) this.onChange?.({ id, deleted: true });
    return had;
  }

  get(id: string): CredentialRecord | undefined {
    return this.recs.get(id);
  }

  /** Changes with every set, issue and delete (CredentialLookup.generation). */
  get generation(): number {
    return this.changes;
  }

  list(): CredentialRecord[] {
    return [...this.recs.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  get size(): number {
    return this.recs.size;
  }

  /**
   * Loads a credentials file (format in broker/README.md): a JSON array of
   * {id, role, secret | hash}, or lines `id:role:secret-or-hash`. Plain
   * secrets are hashed on load. The whole file is checked before any record
   * is applied; errors are one line naming the file and line (or entry) and
   * never echo a secret. Returns the number of records loaded.
   */
  loadFile(path: string): number {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (e) {
      throw new CredentialError(`credentials file ${path}: cannot read: ${(e as Error).message}`);
    }
    const recs = parseCredentials(text, path);
    for (const r of recs) this.set(r, { notify: false });
    return recs.length;
  }
}

/** Parses the text of a credentials file (see CredentialStore.loadFile). */
export function parseCredentials(text: string, name = 'credentials'): CredentialRecord[] {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const out: { rec: CredentialRecord; where: string }[] = [];
  if (/^\s*\[/.test(text)) {
    let arr: unknown;
    try {
      arr = JSON.parse(text);
    } catch (e) {
      throw new CredentialError(`${name}: not valid JSON: ${(e as Error).message}`);
    }
    if (!Array.isArray(arr)) throw new CredentialError(`${name}: expected a JSON array`);
    arr.forEach((entry, i) => {
      const where = `${name}: entry ${i + 1}`;
      out.push({ rec: fromJsonEntry(entry, where), where });
    });
  } else {
    const lines = text.split('\n');
    lines.forEach((raw, i) => {
      const line = raw.trim();
      if (line === '' || line.startsWith('#')) return;
      const where = `${name}:${i + 1}`;
      out.push({ rec: fromLine(line, where), where });
    });
  }
  const seen = new Map<string, string>();
  for (const { rec, where } of out) {
    const prev = seen.get(rec.id);
    if (prev !== undefined) throw new CredentialError(`${where}: duplicate id ${JSON.stringify(rec.id)} (first at ${prev})`);
    seen.set(rec.id, where);
  }
  return out.map((o) => o.rec);
}

function build(id: unknown, role: unknown, secretOrHash: { secret?: unknown; hash?: unknown }, where: string): CredentialRecord {
  if (!isId(id)) throw new CredentialError(`${where}: invalid id ${JSON.stringify(id)}: must be 1-128 characters without '+', '#', '/' or control characters`);
  if (!isRole(role)) throw new CredentialError(`${where}: invalid role ${JSON.stringify(role)} for ${JSON.stringify(id)}: expected one of ${ROLES.join(', ')}`);
  let hash: string;
  if (secretOrHash.hash !== undefined) {
    if (typeof secretOrHash.hash !== 'string' || !isHash(secretOrHash.hash)) {
      throw new CredentialError(`${where}: malformed hash for ${JSON.stringify(id)}: expected 'sha256$<salt>$<mac>' or 'scrypt$N$r$p$<salt>$<key>'`);
    }
    hash = secretOrHash.hash;
  } else {
    const s = secretOrHash.secret;
    if (typeof s !== 'string' || s.length === 0) throw new CredentialError(`${where}: empty or missing secret for ${JSON.stringify(id)}`);
    hash = hashSecret(s);
  }
  return { id, role, hash };
}

function looksHashed(s: string): boolean {
  return s.startsWith('sha256$') || s.startsWith('scrypt$');
}

function fromLine(line: string, where: string): CredentialRecord {
  // id and role cannot contain ':'; the secret may (it is everything after the second ':').
  const a = line.indexOf(':');
  const b = a < 0 ? -1 : line.indexOf(':', a + 1);
  if (a < 0 || b < 0) throw new CredentialError(`${where}: expected 'id:role:secret-or-hash'`);
  const id = line.slice(0, a);
  const role = line.slice(a + 1, b);
  const value = line.slice(b + 1);
  return build(id, role, looksHashed(value) ? { hash: value } : { secret: value }, where);
}

function fromJsonEntry(entry: unknown, where: string): CredentialRecord {
  if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) throw new CredentialError(`${where}: expected an object {id, role, secret | hash}`);
  const e = entry as Record<string, unknown>;
  for (const k of Object.keys(e)) {
    if (k !== 'id' && k !== 'role' && k !== 'secret' && k !== 'hash') throw new CredentialError(`${where}: unknown field ${JSON.stringify(k)} (expected id, role, secret or hash)`);
  }
  if ((e.secret === undefined) === (e.hash === undefined)) throw new CredentialError(`${where}: give exactly one of "secret" or "hash"`);
  return build(e.id, e.role, { secret: e.secret, hash: e.hash }, where);
}
