// A throwaway real Kubernetes control plane (etcd, kube-apiserver,
// kube-controller-manager 1.20.2) for one test file, from scripts/k8s/. It is
// started once per file and stopped after it; PROPELLER_K8S_OWNER_PID makes it
// stop also when the test process dies.
//
// Without the binaries (scripts/k8s/build-binaries.sh builds them once into
// /var/cache/propeller-k8s, or $PROPELLER_K8S_CACHE) the file's tests are
// skipped with one line saying what is missing and how to build it.
//
//   const k8s = k8sCluster(test);      // registers before / after.always
//   k8s.test('...', async (t) => { await k8s.kubectl(['get', 'ns']); });   // serial, in order

import type { ExecutionContext, TestFn } from 'ava';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { accessSync, constants, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { crds } from '../../k8s-adapter/crds.ts';
import { toYaml } from '../../k8s-adapter/manifests.ts';

const execFileP = promisify(execFile);
const SCRIPTS = new URL('../../scripts/k8s/', import.meta.url).pathname;
export const K8S_CACHE = process.env.PROPELLER_K8S_CACHE ?? '/var/cache/propeller-k8s';
const BINARIES = ['kube-apiserver', 'kube-controller-manager', 'kubectl'];

/** What is missing to run a cluster, as one line, or undefined when nothing is. */
export function k8sMissing(): string | undefined {
  const missing = BINARIES.filter((b) => {
    try {
      accessSync(join(K8S_CACHE, 'bin', b), constants.X_OK);
      return false;
    } catch {
      return true;
    }
  });
  let usable = missing.length === 0;
  if (usable) {
    try {
      execFileSync(join(SCRIPTS, 'build-binaries.sh'), ['--check'], { stdio: 'ignore', env: { ...process.env, PROPELLER_K8S_CACHE: K8S_CACHE } });
    } catch {
      usable = false;
    }
  }
  const what = missing.length ? `${missing.join(', ')} in ${K8S_CACHE}/bin` : usable ? '' : `working binaries in ${K8S_CACHE}/bin (build-binaries.sh --check failed)`;
  let etcd = true;
  try {
    execFileSync('sh', ['-c', 'command -v etcd'], { stdio: 'ignore' });
  } catch {
    etcd = false;
  }
  const all = [what, etcd ? '' : 'etcd (Debian etcd-server)'].filter(Boolean);
  if (!all.length) return undefined;
  return `missing ${all.join(' and ')}; build them with: npm run test:k8s (as root), or sudo scripts/k8s/build-binaries.sh`;
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Cluster {
  dir: string;
  /** DIR/env: KUBECONFIG, APISERVER, KUBECTL (the 1.20.2 build, not /usr/bin/kubectl), K8S_TOKEN, ... */
  env: Record<string, string>;
  /** Runs $KUBECTL against the cluster; never throws on a non-zero exit. */
  kubectl(args: string[], input?: string): Promise<Run>;
}

export interface K8sTests {
  /** False when the binaries are missing (the file's tests are skipped): hooks of its own can check it. */
  available: boolean;
  /** `test.serial` (one cluster, tests in order), or `test.serial.skip` when the binaries are missing. */
  test(title: string, impl: (t: ExecutionContext) => Promise<void> | void): void;
  cluster(): Cluster;
  /** The cluster once its before hook has started it (ava runs before hooks concurrently). */
  started(): Promise<Cluster>;
  kubectl(args: string[], input?: string): Promise<Run>;
}

/** Runs a command with optional stdin; resolves with its exit code and output. */
export function run(cmd: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    p.on('error', reject);
    p.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    p.stdin.end(opts.input ?? '');
  });
}

function readEnv(file: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) env[line.slice(0, i)] = line.slice(i + 1);
  }
  return env;
}

export async function startCluster(): Promise<Cluster & { stop(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'propeller-k8s-'));
  const script = join(SCRIPTS, 'cluster.sh');
  try {
    await execFileP(script, ['start', dir], { env: { ...process.env, PROPELLER_K8S_CACHE: K8S_CACHE, PROPELLER_K8S_OWNER_PID: String(process.pid) } });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const err = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`cluster.sh start failed: ${(err.stderr || err.stdout || err.message).trim()}`);
  }
  const env = readEnv(join(dir, 'env'));
  const kubeEnv = { ...process.env, KUBECONFIG: env.KUBECONFIG! };
  return {
    dir,
    env,
    kubectl: (args, input) => run(env.KUBECTL!, args, { input, env: kubeEnv }),
    async stop() {
      await execFileP(script, ['stop', dir]).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One cluster for the test file, started before its tests and stopped after them. */
export function k8sCluster(test: TestFn): K8sTests {
  const missing = k8sMissing();
  if (missing) {
    process.stdout.write(`Kubernetes tests skipped: ${missing}\n`);
    return {
      available: false,
      test: (title, impl) => test.serial.skip(title, impl),
      cluster: () => {
        throw new Error('no cluster');
      },
      started: () => Promise.reject(new Error('no cluster')),
      kubectl: () => Promise.reject(new Error('no cluster')),
    };
  }
  let c: Awaited<ReturnType<typeof startCluster>> | undefined;
  let settle!: { resolve(c: Cluster): void; reject(e: unknown): void };
  const started = new Promise<Cluster>((resolve, reject) => (settle = { resolve, reject }));
  started.catch(() => {});
  test.before(async () => {
    try {
      c = await startCluster();
      settle.resolve(c);
    } catch (e) {
      settle.reject(e);
      throw e;
    }
  });
  test.after.always(async () => {
    await c?.stop();
  });
  const cluster = () => {
    if (!c) throw new Error('the cluster did not start');
    return c;
  };
  return { available: true, test: (title, impl) => test.serial(title, impl), cluster, started: () => started, kubectl: (args, input) => cluster().kubectl(args, input) };
}

/** Runs kubectl and returns its stdout; throws with its stderr when it fails. */
export async function kubectlOk(c: Cluster, args: string[], input?: string): Promise<string> {
  const r = await c.kubectl(args, input);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${r.stderr.trim()}`);
  return r.stdout;
}

/** `kubectl apply` of objects given as data. */
export function applyObjects(c: Cluster, ...objects: object[]): Promise<string> {
  return kubectlOk(c, ['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: objects }));
}

/** `kubectl get ... -o json`, parsed; undefined when the object does not exist. */
export async function getJson<T = Record<string, unknown>>(c: Cluster, args: string[]): Promise<T | undefined> {
  const r = await c.kubectl(['get', ...args, '-o', 'json']);
  if (r.code !== 0) {
    if (/NotFound|not found/.test(r.stderr)) return undefined;
    throw new Error(`kubectl get ${args.join(' ')} failed: ${r.stderr.trim()}`);
  }
  return JSON.parse(r.stdout) as T;
}

/** The CRDs of k8s-adapter (what `propeller k8s manifests --only crds` prints), applied and Established. */
export async function installCrds(c: Cluster): Promise<void> {
  await kubectlOk(c, ['apply', '-f', '-'], toYaml(crds()));
  await kubectlOk(c, ['wait', '--for', 'condition=established', '--timeout', '30s', 'crd', '--all']);
}

/** Polls `get` until `ok` holds of its value; returns that value, or fails naming `what` and the last value. */
export async function eventually<T>(what: string, get: () => Promise<T>, ok: (v: T) => boolean, ms = 20_000, everyMs = 150): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (ok(v)) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(v)?.slice(0, 2000)}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
