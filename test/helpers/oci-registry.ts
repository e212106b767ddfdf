// Debian's OCI distribution registry (package docker-registry, 2.8) on a free
// loopback port with its storage in a temp dir: a real registry to push to and
// pull from. Optional auth: htpasswd (basic) or token (a Bearer token service
// run in this process, signing JWTs with a key made by openssl).

import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createSign, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './stack.ts';

/** The registry program; PROPELLER_REGISTRY_BIN may name another build of distribution's registry. */
export const REGISTRY_BIN = process.env.PROPELLER_REGISTRY_BIN || 'docker-registry';
export const REGISTRY_PACKAGE = 'docker-registry';

export function hasRegistry(): boolean {
  return spawnSync(REGISTRY_BIN, ['--version'], { stdio: 'ignore' }).error === undefined;
}

/** Why the registry tests cannot run here, naming the Debian package; undefined when they can. */
export function registryMissing(): string | undefined {
  if (hasRegistry()) return undefined;
  return `${REGISTRY_BIN} not on PATH: install Debian's registry (apt-get install -y ${REGISTRY_PACKAGE}) or set PROPELLER_SKIP_OCI=1 to skip the OCI registry tests`;
}

/**
 * A bcrypt htpasswd line for user:password, from `htpasswd` (apache2-utils) or
 * python3's crypt (bcrypt through libxcrypt); undefined when neither can.
 */
export function htpasswdLine(user: string, password: string): string | undefined {
  const h = spawnSync('htpasswd', ['-nbB', '-C', '4', user, password], { encoding: 'utf8' });
  if (h.status === 0 && /^[^:]+:\$2[aby]\$/.test(h.stdout)) return h.stdout.trim();
  for (const py of ['/usr/bin/python3', 'python3']) {
    const p = spawnSync(py, ['-W', 'ignore', '-c', 'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))', password], { encoding: 'utf8' });
    if (p.status === 0 && /^\$2[aby]\$/.test(p.stdout)) return `${user}:${p.stdout.trim()}`;
  }
  return undefined;
}

export function hasOpenssl(): boolean {
  return spawnSync('openssl', ['version'], { stdio: 'ignore' }).status === 0;
}

export interface RegistryUser {
  username: string;
  password: string;
}

export interface OciRegistry {
  /** 127.0.0.1:PORT */
  host: string;
  port: number;
  /** http://127.0.0.1:PORT */
  url: string;
  /** The storage root (storage.filesystem.rootdirectory). */
  root: string;
  /** Where the registry keeps a blob's bytes. */
  blobPath(digest: string): string;
  /** Everything the registry printed, for a failing test's log. */
  output(): string;
  stop(): Promise<void>;
}

export interface RegistryOptions {
  /** htpasswd basic auth for this user. */
  basic?: RegistryUser;
  /** Docker token auth: a token service here issues pull/push tokens to this user (and anonymous tokens that grant nothing). */
  token?: RegistryUser;
}

export async function startRegistry(o: RegistryOptions = {}): Promise<OciRegistry> {
  const missing = registryMissing();
  if (missing) throw new Error(missing);
  const dir = mkdtempSync(join(tmpdir(), 'propeller-oci-'));
  const root = join(dir, 'storage');
  const port = await freePort();
  let tokenServer: Server | undefined;
  let auth = '';
  if (o.basic) {
    const line = htpasswdLine(o.basic.username, o.basic.password);
    if (!line) throw new Error('cannot make a bcrypt htpasswd entry: install apache2-utils (htpasswd) or a python3 with crypt');
    writeFileSync(join(dir, 'htpasswd'), `${line}\n`);
    auth = `auth:\n  htpasswd:\n    realm: propeller-test\n    path: ${join(dir, 'htpasswd')}\n`;
  } else if (o.token) {
    const t = await startTokenService(dir, o.token);
    tokenServer = t.server;
    auth = `auth:\n  token:\n    realm: ${t.realm}\n    service: propeller-test-registry\n    issuer: propeller-test-issuer\n    rootcertbundle: ${t.certPath}\n`;
  }
  const config = join(dir, 'config.yml');
  writeFileSync(
    config,
    `version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: ${root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:${port}
  secret: ${randomBytes(16).toString('hex')}
${auth}`,
  );
  const proc: ChildProcess = spawn(REGISTRY_BIN, ['serve', config], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const url = `http://127.0.0.1:${port}`;
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      const exited = once(proc, 'exit');
      const t = setTimeout(() => proc.kill('SIGKILL'), 2000);
      await exited;
      clearTimeout(t);
    }
    if (tokenServer) await new Promise((r) => tokenServer!.close(r));
    rmSync(dir, { recursive: true, force: true });
  };
  // Ready when /v2/ answers (200 without auth, 401 with).
  const end = Date.now() + 10_000;
  for (;;) {
    if (proc.exitCode !== null) {
      await stop();
      throw new Error(`docker-registry exited with ${proc.exitCode}: ${out.trim().split('\n').slice(-3).join(' | ')}`);
    }
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.body?.cancel();
      if (res.status === 200 || res.status === 401) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) {
      await stop();
      throw new Error(`docker-registry did not answer on ${url}/v2/ within 10 s: ${out.trim().split('\n').slice(-3).join(' | ')}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    host: `127.0.0.1:${port}`,
    port,
    url,
    root,
    blobPath: (digest) => {
      const hex = digest.replace(/^sha256:/, '');
      return join(root, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
    },
    output: () => out,
    stop,
  };
}

/**
 * A minimal Docker token service: GET /token?service=&scope=repository:NAME:ACTIONS
 * with Basic credentials gets a JWT (RS256, x5c = a self-signed cert made by
 * openssl) granting the asked actions; without valid credentials it grants none.
 */
async function startTokenService(dir: string, user: RegistryUser): Promise<{ server: Server; realm: string; certPath: string }> {
  if (!hasOpenssl()) throw new Error('token auth needs openssl (apt-get install -y openssl)');
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', '2', '-subj', '/CN=propeller-test-token'], { stdio: 'ignore' });
  const key = readFileSync(keyPath, 'utf8');
  const certDer = Buffer.from(
    readFileSync(certPath, 'utf8')
      .replace(/-----(BEGIN|END) CERTIFICATE-----/g, '')
      .replace(/\s+/g, ''),
    'base64',
  );
  const b64u = (x: Buffer | string) => Buffer.from(x).toString('base64url');
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const hdr = req.headers.authorization ?? '';
    const [name, pass] = hdr.startsWith('Basic ') ? Buffer.from(hdr.slice(6), 'base64').toString().split(/:(.*)/s) : [];
    if (hdr && (name !== user.username || pass !== user.password)) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"bad credentials"}');
      return;
    }
    const granted = hdr
      ? u.searchParams.getAll('scope').flatMap((s) => {
          const m = /^repository:([^:]+):(.+)$/.exec(s);
          return m ? [{ type: 'repository', name: m[1], actions: m[2]!.split(',') }] : [];
        })
      : [];
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', x5c: [certDer.toString('base64')] };
    const claims = { iss: 'propeller-test-issuer', sub: name ?? '', aud: u.searchParams.get('service') ?? '', exp: now + 300, nbf: now - 10, iat: now, jti: randomBytes(8).toString('hex'), access: granted };
    const signing = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(claims))}`;
    const sig = createSign('RSA-SHA256').update(signing).sign(key);
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: `${signing}.${b64u(sig)}`, expires_in: 300 }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return { server, realm: `http://127.0.0.1:${port}/token`, certPath };
}
