// Broker: the embedded broker as the control plane runs it (authentication,
// topic ACL, packet guard, on Aedes) against Debian's Mosquitto with a
// password file and an ACL file, side by side in one run, on free loopback
// ports. Each broker runs in a process of its own (the embedded one forked
// from this file with --serve, Mosquitto spawned with a temporary config), so
// its CPU time and memory are its own; the clients (minimal MQTT on raw
// sockets, see Raw) run here, the same for both.
//
// - QoS 0 and QoS 1, 1 publisher → 1 subscriber: messages/s end to end, with
//   at most --window messages sent but not yet received, and the broker's CPU
//   µs per message;
// - fan-out, 1 publisher → --subs subscribers: deliveries/s;
// - --connects connections (raw MQTT 3.1.1 CONNECT, --connect-window at a
//   time), each into an account of its own as a fleet's are: time until
//   every CONNACK, and the broker's memory growth per connection while they
//   are all open. Before the storm, V8's young generation is grown to its
//   full size (a fixed room for new objects, 32 MiB with Node 20's defaults,
//   that any broker busy for a while has grown into; a fresh process would
//   grow into it during the storm: up to 1.8 KiB per connection of 10,000),
//   and whatever it still gains or loses in RSS is taken out (its own row);
//   the figure is never less than the V8 heap's growth (perConnection()).
//   Each reading follows a full collection and 0.3 s for V8 to give freed
//   pages back (the bench's collection is not in the CPU figures).
// --only connects,qos0,qos1,fanout picks scenarios; --plain-aedes adds Aedes
// without the wrapper (no auth, ACL or guard) as a third column;
// --broker-node-flags '--max-semi-space-size=1 ...' starts the embedded
// broker's process with those Node flags; --heap-snapshot DIR writes heap
// snapshots of the Node brokers before the first storm and with its
// connections open, and prints what the connections added by constructor.
// Goals (issue 16): QoS 0 ≥ 0.8× Mosquitto's rate, QoS 1 ≥ 1.0×, fan-out
// ≥ 0.7×, connects ≤ 1.2× Mosquitto's time and ≤ 4 KiB per connection.
//
// --keepalive S: the clients' MQTT keepalive (default 60 s, as devices use).
// --settle S: also reads each broker's RSS after S s idle with the first
// round's connections open (a long-lived fleet's figure), beside the goal's.
//
// --built runs the embedded broker bundled as bin/build.js bundles the
// command (dist/: Aedes inside the bundle), instead of from its sources.
//
// --profile DIR writes a CPU profile of the embedded broker's process (and of
// plain Aedes with --plain-aedes) there, covering the message scenarios (or,
// with --only connects, the first storm's CONNECTs, not their closing), not
// the start or the warm-up.

import { execFileSync, fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { availableParallelism, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getHeapSpaceStatistics, setFlagsFromString, writeHeapSnapshot } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { bundleLikeDist } from './bundle-broker.ts';
import { Session } from 'node:inspector';
import { Aedes } from 'aedes';
import { CredentialStore, EmbeddedBroker } from '../broker/index.ts';
import { scope as mkScope, topic as topicOf } from '../topics/index.ts';
import { freePort, until } from '../test/helpers/stack.ts';
import { printTable } from './stats.ts';

const SCOPE = mkScope('propeller', 'control');
const TOPIC = topicOf(SCOPE, 'manager.start');
const MANAGER = 'bench-manager';
/** The connect storm's accounts: `bench-dev-<i>`, one per connection, as a fleet of proplets has. */
const connUser = (i: number): string => `bench-dev-${i}`;
const MOSQUITTO = '/usr/sbin/mosquitto';

interface Accounts {
  manager: string;
  /** Secrets of connUser(0..n-1). */
  conn: string[];
  subs: Record<string, string>;
}

interface Usage {
  /** CPU µs, user + system. */
  cpu: number;
  /** Of which system (kernel) µs. */
  sys: number;
  rss: number;
  /** The embedded broker's V8 heap + external memory after a collection (Mosquitto: its RSS). */
  heap: number;
  /** The pages of V8's young generation in memory (Mosquitto: 0): where new objects are made, a fixed room however many connections there are. */
  young: number;
}

/** A broker under test, in a process of its own. */
interface Target {
  name: string;
  port: number;
  /** `beforeStorm`: first grow V8's young generation to its full size (touchYoungGeneration()). */
  usage(beforeStorm?: boolean): Promise<Usage>;
  stop(): Promise<void>;
  /** Starts or stops (and writes) the CPU profile, when --profile is given. */
  profile?(on: boolean): Promise<void>;
  /** Writes a V8 heap snapshot of the broker's process to `file` (Node brokers only). */
  snapshot?(file: string): Promise<void>;
}

// ---- the embedded broker's process ----

async function serve(subs: number, conns: number, plain: boolean, profileDir: string | undefined, floor = false, built?: string): Promise<void> {
  const Broker = built ? ((await import(built)) as { EmbeddedBroker: typeof EmbeddedBroker }).EmbeddedBroker : EmbeddedBroker;
  const creds = new CredentialStore();
  const accounts: Accounts = { manager: creds.issue(MANAGER, 'manager'), conn: [], subs: {} };
  for (let i = 0; i < conns; i++) accounts.conn.push(creds.issue(connUser(i), 'proplet'));
  for (let i = 0; i < subs; i++) accounts.subs[`bench-sub-${i}`] = creds.issue(`bench-sub-${i}`, 'proplet');
  const broker = floor ? await bareFloor() : plain ? await plainAedes() : await Broker.start({ scope: SCOPE, credentials: creds, port: 0, log: () => {} });
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  if (profileDir) mkdirSync(profileDir, { recursive: true });
  const profiler = profileDir ? new Session() : undefined;
  profiler?.connect();
  const post = (method: string, params?: object): Promise<unknown> =>
    new Promise((resolve, reject) => profiler!.post(method, params, (err, res) => (err ? reject(err) : resolve(res))));
  process.on('message', (m: string | { snapshot: string }) => {
    if (typeof m === 'object') {
      gc();
      process.send!({ snapshotted: writeHeapSnapshot(m.snapshot) });
    } else if (m === 'profile-start' && profiler) {
      // 100 µs: a connect costs some 150 µs, and the default 1 ms gave a storm only a thousand samples
      void post('Profiler.enable')
        .then(() => post('Profiler.setSamplingInterval', { interval: 100 }))
        .then(() => post('Profiler.start'))
        .then(() => process.send!({ profiling: true }));
    } else if (m === 'profile-stop' && profiler) {
      void post('Profiler.stop').then((r) => {
        writeFileSync(join(profileDir!, `${floor ? 'floor' : plain ? 'aedes' : 'embedded'}-${process.pid}.cpuprofile`), JSON.stringify((r as { profile: unknown }).profile));
        process.send!({ profiled: true });
      });
    } else if (m === 'usage' || m === 'usage-before-storm') {
      // CPU first: the collection below is the bench's work, not the broker's
      const c0 = m === 'usage' ? process.cpuUsage() : undefined;
      if (m === 'usage-before-storm') touchYoungGeneration();
      // garbage is not memory the connections hold (Mosquitto has none to collect)
      gc();
      // V8 gives the pages it freed back in the background, shortly after a collection
      setTimeout(() => {
        const c = c0 ?? process.cpuUsage();
        const mem = process.memoryUsage();
        process.send!({ usage: { cpu: c.user + c.system, sys: c.system, rss: mem.rss, heap: mem.heapUsed + mem.external, young: newSpace().physical_space_size } });
      }, 300);
    } else if (m === 'exit') void broker.close().finally(() => process.exit(0));
  });
  process.send!({ ready: { port: broker.port, accounts } });
}

function newSpace(): { space_size: number; physical_space_size: number } {
  return getHeapSpaceStatistics().find((sp) => sp.space_name === 'new_space')!;
}

/**
 * Grows V8's young generation to its full size with every page in memory, as
 * in any broker that has been busy for a while: a fresh process has grown
 * into only part of that fixed room (32 MiB with Node 20's defaults), and a
 * first storm would count the rest as the connections' memory. Objects that
 * live through a scavenge are what make V8 grow it; done once its size has
 * stayed the same, all in memory, for 8 rounds (at most 200 rounds of
 * 100,000 small objects, some 0.1 s).
 */
function touchYoungGeneration(): void {
  const ring: unknown[] = new Array(50_000);
  let stable = 0;
  for (let round = 0; round < 200 && stable < 8; round++) {
    const before = newSpace().space_size;
    for (let i = 0; i < 100_000; i++) ring[i % ring.length] = { i };
    const after = newSpace();
    stable = after.space_size === before && after.physical_space_size >= after.space_size ? stable + 1 : 0;
  }
}

/**
 * Aedes 1.2 alone, as the embedded broker configures it (concurrency 0), with
 * no hooks: every CONNECT accepted unchecked, no ACL, no packet guard. What
 * the wrapper adds is the difference to it.
 */
async function plainAedes(): Promise<{ port: number; close(): Promise<void> }> {
  const aedes = await Aedes.createBroker({ concurrency: 0 });
  const server = createServer({ noDelay: true }, aedes.handle);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((r) => aedes.close(() => server.close(() => r()))),
  };
}

/**
 * The floor of a connection in Node: a net server with the embedded broker's
 * socket options that reads each connection's CONNECT (its fixed header's
 * length, nothing parsed) and answers a fixed CONNACK (accepted). No MQTT
 * library, no authentication, no timers, no per-connection object of its own.
 */
async function bareFloor(): Promise<{ port: number; close(): Promise<void> }> {
  const CONNACK = Buffer.from([0x20, 2, 0, 0]);
  const sockets = new Set<Socket>();
  const server = createServer({ noDelay: true, keepAlive: true, keepAliveInitialDelay: 60_000 }, (s) => {
    sockets.add(s);
    let seen = 0;
    let need = -1;
    s.on('data', (d: Buffer) => {
      if (need === -2) return; // answered: later bytes are ignored
      if (need === -1 && seen === 0 && d.length >= 2) {
        // remaining length: a variable byte integer after the first byte
        let len = 0;
        let mult = 1;
        for (let i = 1; i < Math.min(d.length, 5); i++) {
          len += (d[i]! & 0x7f) * mult;
          mult *= 128;
          if ((d[i]! & 0x80) === 0) {
            need = 1 + i + len;
            break;
          }
        }
      }
      seen += d.length;
      if (need >= 0 && seen >= need) {
        need = -2;
        s.write(CONNACK);
      }
    });
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
}

async function startEmbedded(subs: number, conns: number, profileDir: string | undefined, plain = false, nodeFlags: string[] = [], floor = false, built?: string): Promise<{ target: Target; accounts: Accounts }> {
  const runTs = join(fileURLToPath(new URL('.', import.meta.url)), 'run.ts');
  const args = ['broker', '--serve', '--subs', String(subs), '--connects', String(conns), ...(plain ? ['--plain-aedes'] : []), ...(floor ? ['--floor'] : []), ...(profileDir ? ['--profile', profileDir] : []), ...(built ? ['--built-module', built] : [])];
  const child = fork(runTs, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [...process.execArgv, ...nodeFlags] });
  /** The child's next message that has `key`, or an error if the child exits first (rather than a run that waits for ever). */
  const reply = <T>(key: string, send?: string | object): Promise<T> =>
    new Promise((resolve, reject) => {
      const onMessage = (m: Record<string, unknown>): void => {
        if (m && typeof m === 'object' && key in m) {
          off();
          resolve(m[key] as T);
        }
      };
      const onExit = (code: number | null): void => {
        off();
        reject(new Error(`the embedded broker's process exited (code ${code}) while the bench waited for '${key}'`));
      };
      const off = (): void => {
        child.off('message', onMessage);
        child.off('exit', onExit);
      };
      child.on('message', onMessage);
      child.on('exit', onExit);
      if (send !== undefined) child.send(send);
    });
  const ready = await reply<{ port: number; accounts: Accounts }>('ready');
  return {
    accounts: ready.accounts,
    target: {
      name: floor ? 'floor' : plain ? 'aedes' : 'embedded',
      port: ready.port,
      usage: (beforeStorm = false) => reply<Usage>('usage', beforeStorm ? 'usage-before-storm' : 'usage'),
      async profile(on) {
        if (!profileDir) return;
        await reply(on ? 'profiling' : 'profiled', on ? 'profile-start' : 'profile-stop');
      },
      async snapshot(file) {
        await reply('snapshotted', { snapshot: file });
      },
      async stop() {
        child.send('exit');
        await once(child, 'exit');
      },
    },
  };
}

// ---- Mosquitto ----

async function startMosquitto(accounts: Accounts): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-mosquitto-'));
  const port = await freePort();
  const users: [string, string][] = [[MANAGER, accounts.manager], ...Object.entries(accounts.subs), ...accounts.conn.map((p, i): [string, string] => [connUser(i), p])];
  const pw = join(dir, 'passwd');
  writeFileSync(pw, users.map(([u, p]) => `${u}:${p}`).join('\n') + '\n');
  execFileSync('mosquitto_passwd', ['-U', pw]); // hashes every line in place (sha512-pbkdf2)
  // The same rights as the embedded broker's ACL gives for what the bench does.
  const acl = [`user ${MANAGER}`, 'topic readwrite m/#', ...Object.keys(accounts.subs).flatMap((u) => [`user ${u}`, `topic read ${TOPIC}`])];
  writeFileSync(join(dir, 'acl'), acl.join('\n') + '\n');
  const conf = join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [`listener ${port} 127.0.0.1`, 'persistence false', 'allow_anonymous false', `password_file ${pw}`, `acl_file ${join(dir, 'acl')}`, 'max_queued_messages 100000', 'log_type error', ''].join('\n'),
  );
  // started as root, mosquitto drops to its own user, which must read these
  chmodSync(dir, 0o755);
  for (const f of ['passwd', 'acl', 'mosquitto.conf']) chmodSync(join(dir, f), 0o644);
  const proc: ChildProcess = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d) => (stderr += d));
  await until(
    () =>
      new Promise<boolean>((resolve, reject) => {
        if (proc.exitCode !== null) return reject(new Error(`mosquitto exited ${proc.exitCode}: ${stderr}`));
        const c = connect(port, '127.0.0.1', () => {
          c.destroy();
          resolve(true);
        });
        c.on('error', () => resolve(false));
      }),
    `mosquitto on ${port}`,
  );
  const tick = 1e6 / Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
  return {
    name: 'mosquitto',
    port,
    async usage() {
      const stat = readFileSync(`/proc/${proc.pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const rss = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${proc.pid}/status`, 'utf8'))![1]) * 1024;
      return { cpu: (Number(f[11]) + Number(f[12])) * tick, sys: Number(f[12]) * tick, rss, heap: rss, young: 0 };
    },
    async stop() {
      if (proc.exitCode === null) {
        proc.kill('SIGTERM');
        await once(proc, 'exit');
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---- scenarios ----

/**
 * A minimal MQTT 3.1.1 client on a raw socket, so that the clients cost far
 * less than either broker (mqtt.js at 100k messages/s would be the
 * bottleneck): CONNECT, SUBSCRIBE, pre-encoded PUBLISH, PUBACK for QoS 1,
 * and a count of the PUBLISH packets received.
 */
class Raw {
  received = 0;
  onPublish: (() => void) | undefined;
  private rest: Buffer = Buffer.alloc(0);
  private waiting: { type: number; resolve: (body: Buffer) => void }[] = [];

  private constructor(readonly sock: Socket) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', () => {});
  }

  static async open(port: number, clientId: string, username: string, password: string): Promise<Raw> {
    const sock = connect(port, '127.0.0.1');
    await once(sock, 'connect');
    const r = new Raw(sock);
    const ack = r.next(2);
    sock.write(connectPacket(clientId, username, password));
    const body = await ack;
    if (body[1] !== 0) throw new Error(`CONNECT refused: return code ${body[1]}`);
    return r;
  }

  private next(type: number): Promise<Buffer> {
    return new Promise((resolve) => this.waiting.push({ type, resolve }));
  }

  async subscribe(topic: string, qos: 0 | 1): Promise<void> {
    const ack = this.next(9);
    const t = Buffer.from(topic);
    const body = Buffer.concat([Buffer.from([0, 1, t.length >> 8, t.length & 255]), t, Buffer.from([qos])]);
    this.sock.write(Buffer.concat([Buffer.from([0x82, ...varint(body.length)]), body]));
    const b = await ack;
    if (b[2] === 0x80) throw new Error(`SUBSCRIBE ${topic} refused`);
  }

  private onData(d: Buffer): void {
    let b = this.rest.length > 0 ? Buffer.concat([this.rest, d]) : d;
    let i = 0;
    let acks: number[] | undefined;
    while (i < b.length) {
      let len = 0;
      let mult = 1;
      let j = i + 1;
      for (;;) {
        if (j >= b.length) {
          this.rest = b.subarray(i);
          if (acks) this.sock.write(Buffer.from(acks));
          return;
        }
        const x = b[j++]!;
        len += (x & 0x7f) * mult;
        mult *= 128;
        if ((x & 0x80) === 0) break;
      }
      if (j + len > b.length) break;
      const type = b[i]! >> 4;
      if (type === 3) {
        if ((b[i]! & 0x06) !== 0) {
          // QoS 1: PUBACK with the packet id after the topic
          const tl = b.readUInt16BE(j);
          (acks ??= []).push(0x40, 2, b[j + 2 + tl]!, b[j + 3 + tl]!);
        }
        this.received++;
        this.onPublish?.();
      } else {
        const w = this.waiting.findIndex((x) => x.type === type);
        if (w >= 0) this.waiting.splice(w, 1)[0]!.resolve(b.subarray(j, j + len));
      }
      i = j + len;
    }
    this.rest = i < b.length ? Buffer.from(b.subarray(i)) : Buffer.alloc(0);
    if (acks) this.sock.write(Buffer.from(acks));
  }

  close(): void {
    this.sock.destroy();
  }
}

function varint(x: number): number[] {
  const out: number[] = [];
  do {
    let b = x % 128;
    x = Math.floor(x / 128);
    if (x > 0) b |= 0x80;
    out.push(b);
  } while (x > 0);
  return out;
}

/** PUBLISH packets of `payload` to `topic`; QoS 1 ones carry packet id `id`. */
function publishPacket(topic: string, payload: Buffer, qos: 0 | 1, id = 1): Buffer {
  const t = Buffer.from(topic);
  const head = Buffer.from([t.length >> 8, t.length & 255]);
  const parts = qos === 1 ? [head, t, Buffer.from([id >> 8, id & 255]), payload] : [head, t, payload];
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([qos === 1 ? 0x32 : 0x30, ...varint(body.length)]), body]);
}

interface Flow {
  secs: number;
  /** Broker CPU µs over the run. */
  cpu: number;
  deliveries: number;
}

/**
 * The publisher sends `n` messages, keeping at most `window` deliveries
 * outstanding (sent × subscribers − received), written in batches of up to
 * 64 packets per write; the run ends when every subscriber has every message.
 */
async function flow(t: Target, acc: Accounts, subs: number, n: number, qos: 0 | 1, window: number, payload: Buffer): Promise<Flow> {
  const tag = Math.random().toString(36).slice(2);
  const pub = await Raw.open(t.port, `pub-${tag}`, MANAGER, acc.manager);
  const names = Object.keys(acc.subs).slice(0, subs);
  const subscribers = await Promise.all(names.map((u) => Raw.open(t.port, `${u}-${tag}`, u, acc.subs[u]!)));
  for (const s of subscribers) await s.subscribe(TOPIC, qos);
  const want = n * subs;
  let received = 0;
  let sent = 0;
  let wake: (() => void) | undefined;
  const onPublish = (): void => {
    received++;
    if (wake && (received === want || sent * subs - received <= window / 2)) {
      const w = wake;
      wake = undefined;
      w();
    }
  };
  for (const s of subscribers) s.onPublish = onPublish;
  const q0 = publishPacket(TOPIC, payload, 0);
  const u0 = await t.usage();
  const t0 = performance.now();
  let id = 0;
  while (sent < n) {
    while (sent < n && sent * subs - received < window) {
      const k = Math.min(64, n - sent, Math.max(1, Math.floor((window - (sent * subs - received)) / subs)));
      const batch: Buffer[] = [];
      for (let x = 0; x < k; x++) batch.push(qos === 0 ? q0 : publishPacket(TOPIC, payload, 1, (id = (id % 65535) + 1)));
      pub.sock.write(k === 1 ? batch[0]! : Buffer.concat(batch));
      sent += k;
    }
    await new Promise<void>((r) => (wake = r));
  }
  while (received < want) await new Promise<void>((r) => (wake = r));
  const secs = (performance.now() - t0) / 1000;
  const u1 = await t.usage();
  for (const c of [pub, ...subscribers]) c.close();
  return { secs, cpu: u1.cpu - u0.cpu, deliveries: want };
}

/**
 * The clients' MQTT keepalive, in s (--keepalive): 60 by default, mqtt.js's default and what device
 * stacks use (the MCU proplet: 30). Until 2026-12-07 10:20 UTC the bench used 600 s, which since
 * round 7 also has the embedded broker set TCP keepalive on each socket (broker/README.md).
 */
let keepaliveSec = 60;

/** A minimal MQTT 3.1.1 CONNECT (clean session, keepalive --keepalive, username and password). */
function connectPacket(clientId: string, username: string, password: string): Buffer {
  const str = (s: string): Buffer => {
    const b = Buffer.from(s, 'utf8');
    const out = Buffer.alloc(2 + b.length);
    out.writeUInt16BE(b.length, 0);
    b.copy(out, 2);
    return out;
  };
  const body = Buffer.concat([str('MQTT'), Buffer.from([4, 0xc2, keepaliveSec >> 8, keepaliveSec & 0xff]), str(clientId), str(username), str(password)]);
  return Buffer.concat([Buffer.from([0x10, ...varint(body.length)]), body]);
}

interface Storm {
  secs: number;
  perConn: number;
  heapPerConn: number;
  /** The young generation's growth in RSS, per connection: room V8 gave itself to make objects in, not what the connections hold (taken out of perConn). */
  youngPerConn: number;
  cpu: number;
  sys: number;
  failed: number;
  /** RSS growth per connection after --settle seconds idle with every connection open (first round only). */
  settledPerConn?: number;
}

/**
 * `profile`, when given, covers the storm's CONNECTs (from the first to the
 * last CONNACK), not the closing; `snapshot`, when given, is called before
 * the storm and with every connection open.
 */
async function connects(t: Target, acc: Accounts, n: number, window: number, profile?: (on: boolean) => Promise<void>, snapshot?: (when: 'before' | 'open') => Promise<void>, settleSec = 0): Promise<Storm> {
  const sockets: Socket[] = [];
  // One connection first: what the first CONNACK allocates once (mqtt-packet's
  // cache of encoded numbers, 65,536 Buffers, some 6 MiB) is no connection's own.
  (await Raw.open(t.port, 'storm-warm-up', connUser(0), acc.conn[0]!)).close();
  await new Promise((r) => setTimeout(r, 200));
  await snapshot?.('before');
  const u0 = await t.usage(true);
  await profile?.(true);
  const t0 = performance.now();
  let next = 0;
  let done = 0;
  let failed = 0;
  await new Promise<void>((resolve) => {
    const one = (): void => {
      const i = next++;
      const s = connect(t.port, '127.0.0.1');
      s.setNoDelay(true);
      sockets.push(s);
      let got = Buffer.alloc(0);
      const finish = (ok: boolean): void => {
        if (!ok) failed++;
        done++;
        if (next < n) one();
        else if (done === n) resolve();
      };
      s.on('connect', () => s.write(connectPacket(`storm-${i}`, connUser(i % acc.conn.length), acc.conn[i % acc.conn.length]!)));
      s.on('data', (d: Buffer) => {
        if (got.length >= 4) return;
        got = Buffer.concat([got, d]);
        if (got.length >= 4) finish(got[0] === 0x20 && got[3] === 0);
      });
      s.on('error', () => {
        if (got.length < 4) {
          got = Buffer.alloc(4);
          finish(false);
        }
      });
    };
    for (let k = 0; k < Math.min(window, n); k++) one();
  });
  const secs = (performance.now() - t0) / 1000;
  await profile?.(false);
  await new Promise((r) => setTimeout(r, 500)); // let the broker settle what it allocated
  const u1 = await t.usage();
  await snapshot?.('open');
  // a long-lived fleet's figure: V8's young generation, grown during the storm, is given back when idle
  let settledPerConn: number | undefined;
  if (settleSec > 0) {
    await new Promise((r) => setTimeout(r, settleSec * 1000));
    const us = await t.usage();
    settledPerConn = perConnection(u0, us, n);
  }
  for (const s of sockets) s.destroy();
  await new Promise((r) => setTimeout(r, 1000));
  return { secs, perConn: perConnection(u0, u1, n), heapPerConn: (u1.heap - u0.heap) / n, youngPerConn: (u1.young - u0.young) / n, cpu: u1.cpu - u0.cpu, sys: u1.sys - u0.sys, failed, ...(settledPerConn === undefined ? {} : { settledPerConn }) };
}

/**
 * Memory per connection: the RSS growth outside V8's young generation, but
 * never less than the growth of V8's heap and external memory, which the
 * connections' objects hold for sure. RSS alone can read lower: pages and
 * malloc memory freed before the storm (the accounts' set-up) and reused by
 * it, or released by V8 during it, offset what the connections take.
 */
function perConnection(u0: Usage, u1: Usage, n: number): number {
  return Math.max(u1.rss - u0.rss - (u1.young - u0.young), u1.heap - u0.heap) / n;
}

/**
 * Self size per constructor that the open connections added, per
 * connection: V8's node types other than objects and closures are grouped
 * by type ("(array)": property and element stores, dictionaries).
 */
function heapByConstructor(before: string, open: string, n: number): (string | number)[][] {
  const agg = (file: string): Map<string, [number, number]> => {
    const snap = JSON.parse(readFileSync(file, 'utf8')) as { snapshot: { meta: { node_fields: string[]; node_types: [string[]] } }; nodes: number[]; strings: string[] };
    const f = snap.snapshot.meta.node_fields;
    const types = snap.snapshot.meta.node_types[0];
    const [it, iname, isz] = [f.indexOf('type'), f.indexOf('name'), f.indexOf('self_size')];
    const out = new Map<string, [number, number]>();
    for (let i = 0; i < snap.nodes.length; i += f.length) {
      const type = types[snap.nodes[i + it]!]!;
      const name = type === 'object' || type === 'native' ? snap.strings[snap.nodes[i + iname]!]!.slice(0, 50) : type === 'closure' ? `closure ${snap.strings[snap.nodes[i + iname]!]!.slice(0, 40)}` : `(${type})`;
      const e = out.get(name) ?? [0, 0];
      e[0]++;
      e[1] += snap.nodes[i + isz]!;
      out.set(name, e);
    }
    return out;
  };
  const a = agg(before);
  const rows: [string, number, number][] = [];
  for (const [name, [count, size]] of agg(open)) {
    const [c0, s0] = a.get(name) ?? [0, 0];
    if ((size - s0) / n >= 16) rows.push([name, (count - c0) / n, (size - s0) / n]);
  }
  rows.sort((x, y) => y[2] - x[2]);
  const total = rows.reduce((sum, r) => sum + r[2], 0);
  return [...rows.slice(0, 30).map(([name, c, b]) => [name, c.toFixed(2), Math.round(b)]), ['total of the rows above 16 B', '', Math.round(total)]];
}

// ---- the run ----

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      serve: { type: 'boolean', default: false },
      messages: { type: 'string', default: '100000' },
      'qos1-messages': { type: 'string', default: '50000' },
      subs: { type: 'string', default: '100' },
      'fanout-messages': { type: 'string', default: '2000' },
      window: { type: 'string', default: '1000' },
      payload: { type: 'string', default: '100' },
      connects: { type: 'string', default: '10000' },
      'connect-window': { type: 'string', default: '100' },
      rounds: { type: 'string', default: '3' },
      profile: { type: 'string' },
      only: { type: 'string', default: 'connects,qos0,qos1,fanout' },
      'plain-aedes': { type: 'boolean', default: false },
      floor: { type: 'boolean', default: false },
      'broker-node-flags': { type: 'string', default: '' },
      'heap-snapshot': { type: 'string' },
      built: { type: 'boolean', default: false },
      'built-module': { type: 'string' },
      keepalive: { type: 'string', default: '60' },
      settle: { type: 'string', default: '0' },
    },
  });
  const settleSec = Number(values.settle);
  if (!(settleSec >= 0)) throw new Error(`--settle takes seconds >= 0, got ${values.settle}`);
  keepaliveSec = Number(values.keepalive);
  if (!Number.isInteger(keepaliveSec) || keepaliveSec < 0 || keepaliveSec > 65535) throw new Error(`--keepalive takes whole seconds 0-65535, got ${values.keepalive}`);
  const only = new Set(values.only!.split(','));
  for (const o of only) if (!['connects', 'qos0', 'qos1', 'fanout'].includes(o)) throw new Error(`--only takes connects, qos0, qos1, fanout; got ${o}`);
  const subs = Number(values.subs);
  if (values.serve) return serve(subs, Number(values.connects), values['plain-aedes']!, values.profile, values.floor, values['built-module']);
  const n0 = Number(values.messages);
  const n1 = Number(values['qos1-messages']);
  const nf = Number(values['fanout-messages']);
  const window = Number(values.window);
  const payload = Buffer.alloc(Number(values.payload), 'x');
  const nc = Number(values.connects);
  const rounds = Number(values.rounds);
  const load = (): string =>
    loadavg()
      .map((x) => x.toFixed(1))
      .join(' ');
  const load0 = load();

  const brokerFlags = values['broker-node-flags']!.split(' ').filter(Boolean);
  const builtDir = values.built ? mkdtempSync(join(tmpdir(), 'bench-broker-built-')) : undefined;
  const built = builtDir ? await bundleLikeDist('broker/index.ts', 'broker', builtDir) : undefined;
  const { target: emb, accounts } = await startEmbedded(subs, Number(values.connects), values.profile, false, brokerFlags, false, built);
  const mos = await startMosquitto(accounts);
  const targets = [mos, emb];
  // --plain-aedes: Aedes without the wrapper as a third column, to tell the wrapper's cost from Aedes' own
  if (values['plain-aedes']) targets.push((await startEmbedded(subs, 0, values.profile, true)).target);
  // --floor: a bare Node net server answering a fixed CONNACK, in the connect storms only
  const floor = values.floor && only.has('connects') ? (await startEmbedded(0, 0, values.profile, false, [], true)).target : undefined;
  try {
    // The connect storms first, on fresh brokers: later, memory freed by the
    // other scenarios is reused by the connections and hides their cost.
    // Memory per connection is from the first round.
    const storms: Record<string, Storm[]> = { mosquitto: [], embedded: [], aedes: [], floor: [] };
    const profiling = (on: boolean): Promise<unknown> => Promise.all(targets.map((t) => t.profile?.(on)));
    const stormsOnly = only.size === 1 && only.has('connects');
    // with --only connects, the profile covers the first round's CONNECTs
    const stormProfile = (t: Target, r: number): ((on: boolean) => Promise<void>) | undefined => (stormsOnly && r === 0 && t.profile ? (on) => t.profile!(on) : undefined);
    // --heap-snapshot DIR: the Node brokers' heaps before the first storm and with its connections open
    const snapDir = values['heap-snapshot'];
    if (snapDir) mkdirSync(snapDir, { recursive: true });
    const stormSnapshot = (t: Target, r: number): ((when: string) => Promise<void>) | undefined =>
      snapDir && r === 0 && t.snapshot ? (when) => t.snapshot!(join(snapDir, `${t.name}-${when}.heapsnapshot`)) : undefined;
    const stormTargets = floor ? [...targets, floor] : targets;
    if (only.has('connects')) for (let r = 0; r < Math.min(rounds, 2); r++) for (const t of stormTargets) storms[t.name]!.push(await connects(t, accounts, nc, Number(values['connect-window']), stormProfile(t, r), stormSnapshot(t, r), r === 0 ? settleSec : 0));
    // Warm-up: the JIT and both brokers' first allocations.
    if (!stormsOnly) for (const t of targets) await flow(t, accounts, 1, Math.min(n0, 20000), 0, window, payload);
    if (!stormsOnly) await profiling(true);

    // Each scenario alternates the brokers, `rounds` times; medians per broker.
    type Res = Record<string, Flow[]>;
    const scen = async (name: string, s: number, n: number, qos: 0 | 1, win: number): Promise<Res> => {
      const out: Res = { mosquitto: [], embedded: [], aedes: [] };
      if (only.has(name)) for (let r = 0; r < rounds; r++) for (const t of targets) out[t.name]!.push(await flow(t, accounts, s, n, qos, win, payload));
      return out;
    };
    const q0 = await scen('qos0', 1, n0, 0, window);
    const q1 = await scen('qos1', 1, n1, 1, window);
    const fan = await scen('fanout', subs, nf, 0, window * 10);
    if (!stormsOnly) await profiling(false);

    const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
    const rate = (fs: Flow[]): number => med(fs.map((f) => f.deliveries / f.secs));
    const cpuPer = (fs: Flow[]): number => med(fs.map((f) => f.cpu / f.deliveries));
    const rows: (string | number)[][] = [];
    const verdicts: string[] = [];
    const notes: string[] = [];
    const plain = values['plain-aedes'];
    const flowRow = (what: string, unit: string, r: Res, goal: number): void => {
      if (r.embedded!.length === 0) return;
      const e = rate(r.embedded!);
      const m = rate(r.mosquitto!);
      const ok = e >= goal * m;
      verdicts.push(`${what}: ${ok ? 'met' : 'NOT met'}`);
      const extra = plain ? [`${Math.round(rate(r.aedes!)).toLocaleString('en')} ${unit}`, cpuPer(r.aedes!).toFixed(1)] : [];
      rows.push([what, `${Math.round(e).toLocaleString('en')} ${unit}`, `${Math.round(m).toLocaleString('en')} ${unit}`, `${(e / m).toFixed(2)}x`, `≥ ${goal}x: ${ok ? 'met' : 'NOT met'}`, cpuPer(r.embedded!).toFixed(1), cpuPer(r.mosquitto!).toFixed(1), ...extra]);
    };
    flowRow('QoS 0, 1 pub → 1 sub', 'msg/s', q0, 0.8);
    flowRow('QoS 1, 1 pub → 1 sub', 'msg/s', q1, 1.0);
    flowRow(`fan-out 1 → ${subs} (QoS 0)`, 'deliveries/s', fan, 0.7);
    if (only.has('connects')) {
      const secs = (name: string): number => med(storms[name]!.map((s) => s.secs));
      const cpu = (name: string): string => (med(storms[name]!.map((s) => s.cpu)) / nc).toFixed(1);
      const se = secs('embedded');
      const sm = secs('mosquitto');
      const okT = se <= 1.2 * sm;
      const extra = (f: () => (string | number)[]): (string | number)[] => (plain ? f() : []);
      rows.push([`${nc.toLocaleString('en')} connects (${values['connect-window']} at a time)`, `${se.toFixed(2)} s`, `${sm.toFixed(2)} s`, `${(se / sm).toFixed(2)}x time`, `≤ 1.2x: ${okT ? 'met' : 'NOT met'}`, cpu('embedded'), cpu('mosquitto'), ...extra(() => [`${secs('aedes').toFixed(2)} s`, cpu('aedes')])]);
      const kib = (name: string): number => storms[name]![0]!.perConn / 1024;
      const me = kib('embedded');
      const mm = kib('mosquitto');
      rows.push(["memory per open connection (RSS growth outside V8's young generation, at least the heap's; first round)", `${me.toFixed(1)} KiB`, `${mm.toFixed(1)} KiB`, `${(me / mm).toFixed(1)}x`, `≤ 4 KiB: ${me <= 4 ? 'met' : 'NOT met'}`, '-', '-', ...extra(() => [`${kib('aedes').toFixed(1)} KiB`, '-'])]);
      if (settleSec > 0) {
        const settled = (name: string): string => `${(storms[name]![0]!.settledPerConn! / 1024).toFixed(1)} KiB`;
        rows.push([`  the same after ${settleSec} s idle (context; the goal is judged above)`, settled('embedded'), settled('mosquitto'), '-', '-', '-', '-', ...extra(() => [settled('aedes'), '-'])]);
      }
      rows.push(['  V8 heap + external growth per connection', `${(storms.embedded![0]!.heapPerConn / 1024).toFixed(1)} KiB`, '-', '-', '-', '-', '-', ...extra(() => [`${(storms.aedes![0]!.heapPerConn / 1024).toFixed(1)} KiB`, '-'])]);
      rows.push(["  not counted: V8 young generation's RSS growth / connections", `${(storms.embedded![0]!.youngPerConn / 1024).toFixed(1)} KiB`, '-', '-', '-', '-', '-', ...extra(() => [`${(storms.aedes![0]!.youngPerConn / 1024).toFixed(1)} KiB`, '-'])]);
      verdicts.push(`connects time: ${okT ? 'met' : 'NOT met'}`, `memory per connection: ${me <= 4 ? 'met' : 'NOT met'}`);
      const sys = (name: string): string => (med(storms[name]!.map((s) => s.sys)) / nc).toFixed(1);
      notes.push(`connect CPU µs of which system (kernel): ${stormTargets.map((t) => `${t.name} ${sys(t.name)} of ${cpu(t.name)}`).join(', ')}`);
      if (floor) {
        const fs = storms.floor!;
        notes.push(
          `floor, a bare Node net server reading each CONNECT and answering a fixed CONNACK (same socket options, its own process): ${secs('floor').toFixed(2)} s for ${nc.toLocaleString('en')} connects, ${cpu('floor')} µs CPU each; ` +
            `${(fs[0]!.perConn / 1024).toFixed(1)} KiB RSS and ${(fs[0]!.heapPerConn / 1024).toFixed(1)} KiB V8 heap + external per open connection (first round)`,
        );
      }
    }
    const failed = [...storms.embedded!, ...storms.mosquitto!, ...storms.aedes!, ...storms.floor!].reduce((a, s) => a + s.failed, 0);

    console.log(
      `\nbroker: embedded (Aedes + auth + ACL + packet guard, its own process${built ? ', bundled as dist/ is' : ''}) vs Mosquitto (${spawnSync(MOSQUITTO, ['-h']).stdout.toString().split('\n')[0]}; password file + ACL file), loopback; ` +
        `${payload.length}-byte payloads, window ${window} messages (fan-out: ${window * 10} deliveries), medians of ${rounds} alternating rounds; Node ${process.version}${brokerFlags.length ? ` (embedded broker: ${brokerFlags.join(' ')})` : ''}; ${availableParallelism()} CPUs; load average ${load0} → ${load()}\n`,
    );
    const head = ['measure', 'embedded', 'Mosquitto', 'embedded / Mosquitto', 'goal', 'embedded CPU µs per msg (or connect)', 'Mosquitto CPU µs per msg (or connect)'];
    printTable(values['plain-aedes'] ? [...head, 'plain Aedes (no auth, ACL, guard)', 'plain Aedes CPU µs'] : head, rows);
    console.log(`\n${verdicts.join('; ')}${failed > 0 ? `; ${failed} connects FAILED` : ''}`);
    for (const note of notes) console.log(`\n${note}`);
    if (snapDir) {
      // writing a snapshot grows the process: this run's memory figures are not comparable
      console.log(`\nheap snapshots in ${snapDir} (memory figures above are inflated by them); what the ${nc.toLocaleString('en')} open connections added, by constructor (self size):`);
      for (const t of targets) {
        if (!t.snapshot) continue;
        console.log(`\n${t.name}:`);
        printTable(['constructor / V8 type', 'objects per connection', 'bytes per connection'], heapByConstructor(join(snapDir, `${t.name}-before.heapsnapshot`), join(snapDir, `${t.name}-open.heapsnapshot`), nc));
      }
    }
  } finally {
    for (const t of targets) await t.stop();
    await floor?.stop();
    if (builtDir) rmSync(builtDir, { recursive: true, force: true });
  }
}
