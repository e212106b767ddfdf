// One control plane = one store + one domain/channel. Two mistakes would
// otherwise mix two planes silently: a replica started with another
// --domain/--channel on a database that already serves one (claimStore refuses
// it), and two planes of one domain/channel on one broker with different stores
// (PlanePresence: each announces its store id on the broker; another id there
// refuses the start, or makes a running plane not ready). The store id is
// generated once into the database; it names neither its URL nor a password.

import { randomUUID } from 'node:crypto';
import mqtt, { type MqttClient } from 'mqtt';
import pg from 'pg';
import { planeFilter, planeTopic, type Scope } from '../topics/index.ts';
import type { Dependency, Outage } from './health.ts';
import type { Logger } from './log.ts';
import { redact } from './pg-store.ts';
import { StoreError } from './store-rows.ts';

const PLANE_TABLE_SQL = `CREATE TABLE IF NOT EXISTS propeller_plane (
  store_id text NOT NULL, domain text NOT NULL, channel text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`;

/**
 * The database's store id; on first use it records this domain/channel, after
 * that a plane of another domain/channel is refused with one line.
 */
export async function claimStore(url: string, s: Scope): Promise<string> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  c.on('error', () => {}); // a lost connection shows as the query's error
  try {
    await c.connect();
    await c.query('BEGIN');
    // replicas starting together: one inserts, the others read it
    await c.query(`SELECT pg_advisory_xact_lock(hashtext('propeller_plane'))`);
    await c.query(PLANE_TABLE_SQL);
    const r = await c.query<{ store_id: string; domain: string; channel: string }>('SELECT store_id, domain, channel FROM propeller_plane LIMIT 1');
    const row = r.rows[0];
    if (!row) {
      const id = randomUUID();
      await c.query('INSERT INTO propeller_plane (store_id, domain, channel) VALUES ($1, $2, $3)', [id, s.domain, s.channel]);
      await c.query('COMMIT');
      return id;
    }
    await c.query('COMMIT');
    if (row.domain !== s.domain || row.channel !== s.channel) {
      throw new StoreError(
        `the PostgreSQL database ${redact(url)} holds the control plane of domain ${JSON.stringify(row.domain)}, channel ${JSON.stringify(row.channel)} (store id ${row.store_id}); this one was started for domain ${JSON.stringify(s.domain)}, channel ${JSON.stringify(s.channel)}: give it a database of its own, or the same --domain and --channel`,
      );
    }
    return row.store_id;
  } catch (e) {
    if (e instanceof StoreError) throw e;
    throw new StoreError(`cannot use the PostgreSQL store ${redact(url)}: ${(e as Error).message}`);
  } finally {
    await c.end().catch(() => {});
  }
}

export class PlaneConflictError extends Error {
  override name = 'PlaneConflictError';
}

export interface PresenceOptions {
  url: string;
  username?: string;
  password?: string;
  scope: Scope;
  storeId: string;
  log: Logger;
}

interface Announcement {
  v: 1;
  store_id: string;
}

/**
 * This plane's announcement on the broker (retained on a topic of its own,
 * cleared by its last will and on a clean stop) and what it hears of others'.
 */
export class PlanePresence {
  /** Other instances' store ids, by instance. */
  private seen = new Map<string, string>();
  private conflictSince?: number;
  /** Started: a conflict found later is logged (at start it is the start's error). */
  private live = false;
  private readonly topic: string;

  private constructor(
    private o: PresenceOptions,
    private client: MqttClient,
    private readonly instance: string,
  ) {
    this.topic = planeTopic(o.scope, instance);
  }

  /** Connects and announces; throws PlaneConflictError when another store already serves this domain/channel there. */
  static async start(o: PresenceOptions): Promise<PlanePresence> {
    const instance = randomUUID();
    const client = await mqtt.connectAsync(o.url, {
      protocolVersion: 4,
      username: o.username,
      password: o.password,
      clientId: `propeller-plane-${instance}`,
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
      // a dead replica's announcement goes with it
      will: { topic: planeTopic(o.scope, instance), payload: Buffer.alloc(0), qos: 1, retain: true },
    });
    const p = new PlanePresence(o, client, instance);
    client.on('message', (t, payload) => p.heard(t, payload));
    client.on('error', () => {}); // the gateway's connection reports the broker's state
    await p.join();
    // after a reconnect (the broker may have restarted and lost what was retained): what is
    // announced now is heard again from scratch, and this plane announces itself again
    client.on('connect', () => {
      p.seen.clear();
      p.conflictSince = undefined;
      void p.join().catch(() => {});
    });
    const other = p.conflict();
    if (other) {
      await p.close();
      throw new PlaneConflictError(other);
    }
    p.live = true;
    return p;
  }

  /** Subscribes, waits for what is retained (our own empty probe comes back after it), then announces. */
  private async join(): Promise<void> {
    await this.client.subscribeAsync(planeFilter(this.o.scope), { qos: 1 });
    const echo = new Promise<void>((resolve) => {
      const f = (t: string, payload: Buffer) => {
        if (t === this.topic && payload.length === 0) {
          this.client.off('message', f);
          resolve();
        }
      };
      this.client.on('message', f);
    });
    await this.client.publishAsync(this.topic, Buffer.alloc(0), { qos: 1 });
    await echo;
    if (this.conflict()) return;
    const me: Announcement = { v: 1, store_id: this.o.storeId };
    await this.client.publishAsync(this.topic, JSON.stringify(me), { qos: 1, retain: true });
  }

  private heard(t: string, payload: Buffer): void {
    const instance = t.slice(t.lastIndexOf('/') + 1);
    if (instance === this.instance) return;
    if (payload.length === 0) {
      this.seen.delete(instance);
    } else {
      try {
        const a = JSON.parse(payload.toString('utf8')) as Partial<Announcement>;
        if (typeof a.store_id !== 'string') return;
        this.seen.set(instance, a.store_id);
      } catch {
        return; // not an announcement
      }
    }
    const other = this.conflict();
    if (other && this.conflictSince === undefined) {
      this.conflictSince = Date.now();
      if (this.live) this.o.log('error', `not ready: ${other}`);
    } else if (!other && this.conflictSince !== undefined) {
      this.conflictSince = undefined;
      this.o.log('info', 'the other control plane left the broker: ready again');
    }
  }

  /** Another store serving this domain/channel on the broker, in one sentence; undefined when there is none. */
  conflict(): string | undefined {
    for (const id of this.seen.values()) {
      if (id !== this.o.storeId) {
        return `another control plane (store id ${id}) serves domain ${JSON.stringify(this.o.scope.domain)}, channel ${JSON.stringify(this.o.scope.channel)} on the broker ${this.o.url}, and this one's store is ${this.o.storeId}: refusing to mix two planes; give one of them another --domain/--channel, or the same store`;
      }
    }
    return undefined;
  }

  /** What readiness looks at: not ready while another plane's store is announced here. */
  get dependency(): Dependency {
    return {
      name: 'plane',
      what: "this plane's domain/channel on the broker",
      outage: (): Outage | undefined => {
        const why = this.conflict();
        return why ? { since: this.conflictSince ?? Date.now(), error: why } : undefined;
      },
    };
  }

  /** Clears the announcement (a clean stop) and disconnects. */
  async close(): Promise<void> {
    if (this.client.connected) await this.client.publishAsync(this.topic, Buffer.alloc(0), { qos: 1, retain: true }).catch(() => {});
    await this.client.endAsync(!this.client.connected);
  }
}
