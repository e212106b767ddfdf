// A real PostgreSQL for tests: the cluster named by PROPELLER_TEST_PG_URL
// (.ci/run starts one), or a throw-away one started here (initdb into a temp
// dir, a free loopback port, the socket in that dir). Each caller gets a fresh
// database of its own.

import { execFileSync, spawnSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { freePort } from './stack.ts';

export interface Postgres {
  /** postgres://… of a new, empty database. */
  createDatabase(): Promise<string>;
  stop(): Promise<void>;
}

let shared: Promise<Postgres> | undefined;

/** A URL to a fresh, empty database on the test cluster, started once per process and stopped at its exit. */
export async function testPostgres(): Promise<string> {
  shared ??= startPostgres().then((p) => {
    process.once('exit', () => void p.stop());
    return p;
  });
  return (await shared).createDatabase();
}

/** Debian installs the server here; PATH may have only the client wrappers. */
export function pgBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (existsSync(root)) {
    const v = readdirSync(root)
      .filter((d) => existsSync(join(root, d, 'bin', 'initdb')))
      .sort((a, b) => Number(b) - Number(a))[0];
    if (v) return join(root, v, 'bin');
  }
  const which = spawnSync('sh', ['-c', 'command -v initdb'], { encoding: 'utf8' });
  return which.status === 0 ? join(which.stdout.trim(), '..') : undefined;
}

export const postgresMissing = (): string | undefined =>
  process.env.PROPELLER_TEST_PG_URL || pgBinDir() ? undefined : 'PostgreSQL is not installed: apt-get install -y postgresql (or set PROPELLER_TEST_PG_URL, or PROPELLER_SKIP_POSTGRES=1 to skip)';

let counter = 0;

/** A cluster of our own that a test can take away and bring back (same port, same data). */
export interface OwnPostgres extends Postgres {
  pid?: () => number;
  /** pg_ctl stop -m fast: connections are cut, the data stays. */
  halt?: () => void;
  /** pg_ctl start again on the same port. */
  resume?: () => void;
}

/**
 * `durable`: keep fsync on (benchmarks); tests only need a crash of the server process to be safe.
 * `own`: a cluster of our own even when PROPELLER_TEST_PG_URL names one (.ci/run does): a test
 * that stops and restarts PostgreSQL cannot do it to a cluster it did not start.
 */
export async function startPostgres(o: { durable?: boolean; own?: boolean } = {}): Promise<OwnPostgres> {
  const given = process.env.PROPELLER_TEST_PG_URL;
  if (given && !(o.own && pgBinDir())) return onCluster(given, async () => {});
  const bin = pgBinDir();
  if (!bin) throw new Error(postgresMissing());
  const dir = mkdtempSync(join(tmpdir(), 'propeller-pg-'));
  // initdb and postgres refuse to run as root: run them as the postgres user
  const asRoot = userInfo().uid === 0;
  const run = (cmd: string, args: string[]) =>
    asRoot ? execFileSync('runuser', ['-u', 'postgres', '--', join(bin, cmd), ...args], { stdio: 'pipe' }) : execFileSync(join(bin, cmd), args, { stdio: 'pipe' });
  if (asRoot) {
    const uid = Number(execFileSync('id', ['-u', 'postgres']).toString());
    const gid = Number(execFileSync('id', ['-g', 'postgres']).toString());
    chownSync(dir, uid, gid);
  }
  const data = join(dir, 'data');
  const user = asRoot ? 'postgres' : userInfo().username;
  run('initdb', ['-D', data, '-A', 'trust', '-U', user, '--no-sync', '-E', 'UTF8']);
  const port = await freePort();
  const fast = o.durable ? '' : ' -c fsync=off -c full_page_writes=off';
  const start = () => run('pg_ctl', ['-D', data, '-l', join(dir, 'log'), '-w', '-o', `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1${fast}`, 'start']);
  start();
  let stopped = false;
  const pid = () => Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
  // synchronous, so that it also works from a process 'exit' handler
  const cluster = onCluster(`postgres://${user}@127.0.0.1:${port}/postgres`, async () => {
    if (stopped) return;
    stopped = true;
    try {
      run('pg_ctl', ['-D', data, '-m', 'immediate', '-w', 'stop']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
  return { ...cluster, pid, halt: () => void run('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']), resume: start };
}

function onCluster(adminUrl: string, stop: () => Promise<void>): Postgres {
  return {
    async createDatabase() {
      const name = `propeller_test_${process.pid}_${Date.now()}_${++counter}`;
      const c = new pg.Client({ connectionString: adminUrl });
      await c.connect();
      try {
        await c.query(`CREATE DATABASE ${name}`);
      } finally {
        await c.end();
      }
      const u = new URL(adminUrl);
      u.pathname = `/${name}`;
      return u.toString();
    },
    stop,
  };
}
