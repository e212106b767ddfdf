// The store on PostgreSQL (driver `pg`): the state of a control plane that
// runs beside others on one database. One connection, group commit per tick
// (mirror-store.ts); each commit is a handful of set-based statements
// (unnest of arrays), whatever the number of rows in it.

import pg from 'pg';
import { checkFence, type Fence } from './lease.ts';
import { MirrorStore, type MirrorOptions } from './mirror-store.ts';
import { StoreError, transition, type ChangedRow, type DocKind, type Engine, type LoadedDoc, type LoadedTask, type Op, type RowKey, type TaskRow } from './store-rows.ts';

/** Schema versions, applied in order at open; propeller_schema records the last one applied. */
const MIGRATIONS: string[] = [
  // 1: one JSON document per record
  `CREATE TABLE records (kind text NOT NULL, id text NOT NULL, doc json NOT NULL, PRIMARY KEY (kind, id));
   CREATE TABLE modules (digest text PRIMARY KEY, bytes bytea NOT NULL);`,
  // 2: tasks as rows and columns, history as appended rows, a version on every row
  `CREATE TABLE tasks (
     seq bigint GENERATED ALWAYS AS IDENTITY, id text PRIMARY KEY, version integer NOT NULL, name text NOT NULL,
     state text NOT NULL, attempt integer NOT NULL, proplet_id text, labels jsonb,
     created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL, started_at timestamptz, finished_at timestamptz,
     spec json NOT NULL, status json NOT NULL);
   CREATE INDEX tasks_state ON tasks (state);
   CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
   CREATE TABLE task_history (
     task_id text NOT NULL, seq integer NOT NULL, state text NOT NULL, at timestamptz NOT NULL,
     reason text, proplet_id text, attempt integer, PRIMARY KEY (task_id, seq));
   ALTER TABLE records ADD COLUMN version integer NOT NULL DEFAULT 1, ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;`,
  // 3: no index beyond the keys: every read is a whole load at start (the store is a mirror), and
  // each secondary index cost index writes per transition
  `DROP INDEX IF EXISTS tasks_state; DROP INDEX IF EXISTS tasks_finished_at;`,
];
export const PG_SCHEMA_VERSION = MIGRATIONS.length;

const iso = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const TASK_SELECT = `SELECT id, version, name, state, attempt, proplet_id, labels::text AS labels, ${iso('created_at')} AS created_at, ${iso('updated_at')} AS updated_at,
  ${iso('started_at')} AS started_at, ${iso('finished_at')} AS finished_at, spec::text AS spec, status::text AS status FROM tasks`;
const HISTORY_SELECT = `SELECT task_id, seq, state, ${iso('at')} AS at, reason, proplet_id, attempt FROM task_history`;
const DOC_SELECT = 'SELECT kind, id, version, doc::text AS doc FROM records';

const TASK_RECORD =
  'id text, name text, state text, attempt int, proplet_id text, labels jsonb, updated_at timestamptz, started_at timestamptz, finished_at timestamptz, status json, spec json';

/** One task row as a JSON object; `spec` only when it is to be written. */
function taskJson(r: TaskRow, extra: string, spec = true): string {
  return (
    `{"id":${JSON.stringify(r.id)},"name":${JSON.stringify(r.name)},"state":${JSON.stringify(r.state)},"attempt":${r.attempt},` +
    `"proplet_id":${r.proplet_id === null ? 'null' : JSON.stringify(r.proplet_id)},"labels":${r.labels ?? 'null'},` +
    `"updated_at":${JSON.stringify(r.updated_at)},"started_at":${r.started_at === null ? 'null' : JSON.stringify(r.started_at)},` +
    `"finished_at":${r.finished_at === null ? 'null' : JSON.stringify(r.finished_at)},"status":${r.status},"spec":${spec ? r.spec : 'null'},${extra}}`
  );
}

function jsonArray<T>(xs: T[], f: (x: T) => string): string {
  return `[${xs.map(f).join(',')}]`;
}

type HistoryRow = { task_id: string; seq: number; state: string; at: string; reason: string | null; proplet_id: string | null; attempt: number | null };

/** A URL without its password, for messages. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url.replace(/:[^:@/]*@/, ':***@');
  }
}

const RECHECK = Symbol('recheck');

const FEED = 'propeller_store';

class PgEngine implements Engine {
  readonly name = 'postgres';
  private client?: pg.Client;
  private listener?: pg.Client;
  private closing = false;
  /** Since when the change feed's connection is down: the database is unreachable. */
  private feedDown?: { since: number; error: string };
  private modules = new Map<string, Uint8Array>();

  constructor(private url: string) {}

  /** The connection, opened again after it was lost. */
  async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    const c = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 10_000 });
    // a lost connection surfaces as the next query's error; never as an unhandled event
    c.on('error', () => {
      if (this.client === c) this.client = undefined;
    });
    c.on('end', () => {
      if (this.client === c) this.client = undefined;
    });
    try {
      await c.connect();
    } catch (e) {
      await c.end().catch(() => {});
      throw e;
    }
    this.client = c;
    return c;
  }

  async migrate(): Promise<void> {
    const c = await this.connection();
    await c.query('BEGIN');
    try {
      // replicas starting together migrate one at a time
      await c.query(`SELECT pg_advisory_xact_lock(hashtext('propeller-edge schema'))`);
      await c.query('CREATE TABLE IF NOT EXISTS propeller_schema (version integer NOT NULL)');
      const r = await c.query<{ version: number }>('SELECT version FROM propeller_schema');
      const version = r.rows[0]?.version ?? 0;
      if (version > PG_SCHEMA_VERSION) {
        throw new StoreError(`the PostgreSQL database ${redact(this.url)} has schema version ${version}, newer than this propeller-edge knows (${PG_SCHEMA_VERSION}): run a newer propeller-edge`);
      }
      for (let v = version; v < PG_SCHEMA_VERSION; v++) await c.query(MIGRATIONS[v]!);
      if (!r.rows.length) await c.query('INSERT INTO propeller_schema (version) VALUES ($1)', [PG_SCHEMA_VERSION]);
      else if (version < PG_SCHEMA_VERSION) await c.query('UPDATE propeller_schema SET version = $1', [PG_SCHEMA_VERSION]);
      await c.query('COMMIT');
    } catch (e) {
      await c.query('ROLLBACK').catch(() => {});
      throw e;
    }
  }

  async load() {
    const c = await this.connection();
    const history = new Map<string, ReturnType<typeof transition>[]>();
    for (const h of (await c.query<HistoryRow>(`${HISTORY_SELECT} ORDER BY task_id, seq`)).rows) {
      let l = history.get(h.task_id);
      if (!l) history.set(h.task_id, (l = []));
      l.push(transition(h.state, h.at, h.reason, h.proplet_id, h.attempt));
    }
    const tasks: LoadedTask[] = (await c.query<TaskRow & { version: number }>(`${TASK_SELECT} ORDER BY seq`)).rows.map(({ version, ...row }) => ({
      row,
      version,
      history: history.get(row.id) ?? [],
    }));
    const docs = (await c.query<LoadedDoc>(`${DOC_SELECT} ORDER BY seq`)).rows;
    // modules are read synchronously: all of them stay in memory (see docs/scaling.md)
    for (const m of (await c.query<{ digest: string; bytes: Buffer }>('SELECT digest, bytes FROM modules')).rows) this.modules.set(m.digest, m.bytes);
    return { tasks, docs };
  }

  outage() {
    return this.feedDown;
  }

  async commit(ops: Op[], fence?: Fence): Promise<RowKey[]> {
    const c = await this.connection();
    for (const precise of [false, true]) {
      await c.query('BEGIN');
      try {
        const conflicts = await this.apply(c, ops, precise);
        // last, so that a holder paused anywhere in this transaction is judged when it commits
        if (!conflicts.length && fence) await checkFence(c, fence);
        if (!conflicts.length) await this.notify(c, ops);
        await c.query(conflicts.length ? 'ROLLBACK' : 'COMMIT');
        return conflicts;
      } catch (e) {
        await c.query('ROLLBACK').catch(() => {});
        if (e !== RECHECK) throw e;
      }
    }
    throw new Error('unreachable');
  }

  private async apply(c: pg.Client, ops: Op[], precise: boolean): Promise<RowKey[]> {
    const conflicts: RowKey[] = [];
    const inserts: Extract<Op, { t: 'task' }>[] = [];
    const updates: Extract<Op, { t: 'task' }>[] = [];
    const deletes: Extract<Op, { t: 'task' }>[] = [];
    const docs: Record<'ins' | 'upd' | 'del', Extract<Op, { t: 'doc' }>[]> = { ins: [], upd: [], del: [] };
    const history: HistoryRow[] = [];
    const clearHistory: string[] = [];
    for (const op of ops) {
      if (op.t === 'module') {
        await c.query('INSERT INTO modules (digest, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING', [op.digest, Buffer.from(op.bytes.buffer, op.bytes.byteOffset, op.bytes.byteLength)]);
      } else if (op.t === 'doc') {
        docs[op.doc === null ? 'del' : op.expected === 0 ? 'ins' : 'upd'].push(op);
      } else if (op.row === null) {
        deletes.push(op);
        clearHistory.push(op.id);
      } else {
        (op.expected === 0 ? inserts : updates).push(op);
        if (op.hist?.replace && op.expected !== 0) clearHistory.push(op.id);
        op.hist?.entries.forEach((h, i) =>
          history.push({ task_id: op.id, seq: op.hist!.from + i, state: h.state, at: h.at, reason: h.reason ?? null, proplet_id: h.proplet_id ?? null, attempt: h.attempt ?? null }),
        );
      }
    }
    const missing = (want: { id: string }[], got: { id: string }[]) => {
      const ok = new Set(got.map((r) => r.id));
      return want.filter((o) => !ok.has(o.id)).map((o) => o.id);
    };
    const col = <T>(rows: T[], f: (r: T) => unknown) => rows.map(f);
    // rows travel as one JSON array per statement: JSON.stringify is native, and the
    // spec/status/labels columns are JSON text already, spliced in without re-encoding
    if (inserts.length) {
      const r = await c.query<{ id: string }>(
        `INSERT INTO tasks (id, version, name, state, attempt, proplet_id, labels, created_at, updated_at, started_at, finished_at, spec, status)
         SELECT id, version, name, state, attempt, proplet_id, labels, created_at, updated_at, started_at, finished_at, spec, status
         FROM json_to_recordset($1::json) AS u(${TASK_RECORD}, created_at timestamptz, version int)
         ON CONFLICT (id) DO NOTHING RETURNING id`,
        [jsonArray(inserts, (o) => taskJson(o.row!, `"version":${o.next},"created_at":${JSON.stringify(o.row!.created_at)}`))],
      );
      for (const id of missing(inserts, r.rows)) conflicts.push({ kind: 'task', id });
    }
    if (updates.length) {
      // the common case costs one count, not one returned row per update
      const json = jsonArray(updates, (o) => taskJson(o.row!, `"expected":${o.expected},"next":${o.next}`, o.spec));
      if (precise) {
        // rows still at the expected version, looked up before anything is written
        const ok = await c.query<{ id: string }>(`SELECT u.id FROM json_to_recordset($1::json) AS u(id text, expected int) JOIN tasks t ON t.id = u.id AND t.version = u.expected FOR UPDATE OF t`, [json]);
        for (const id of missing(updates, ok.rows)) conflicts.push({ kind: 'task', id });
        if (conflicts.length) return conflicts;
      }
      const r = await c.query<{ n: number }>(
        `WITH done AS (UPDATE tasks t SET version = u.next, name = u.name, state = u.state, attempt = u.attempt, proplet_id = u.proplet_id, labels = u.labels,
           updated_at = u.updated_at, started_at = u.started_at, finished_at = u.finished_at, status = u.status, spec = coalesce(u.spec, t.spec)
         FROM json_to_recordset($1::json) AS u(${TASK_RECORD}, expected int, next int)
         WHERE t.id = u.id AND t.version = u.expected RETURNING 1) SELECT count(*)::int AS n FROM done`,
        [json],
      );
      // some row lost: roll back and ask which ones, before writing, in a fresh transaction
      if (r.rows[0]!.n < updates.length) throw RECHECK;
    }
    if (deletes.length) {
      const r = await c.query<{ id: string }>(`DELETE FROM tasks t USING unnest($1::text[], $2::int[]) AS u(id, expected) WHERE t.id = u.id AND t.version = u.expected RETURNING t.id`, [
        col(deletes, (o) => o.id),
        col(deletes, (o) => o.expected),
      ]);
      const gone = missing(deletes, r.rows);
      // a row deleted by someone else is not a conflict; one changed by someone else is
      if (gone.length) for (const row of (await c.query<{ id: string }>('SELECT id FROM tasks WHERE id = ANY($1)', [gone])).rows) conflicts.push({ kind: 'task', id: row.id });
    }
    if (conflicts.length) return conflicts;
    if (clearHistory.length) await c.query('DELETE FROM task_history WHERE task_id = ANY($1)', [clearHistory]);
    if (history.length) {
      await c.query(
        `INSERT INTO task_history (task_id, seq, state, at, reason, proplet_id, attempt)
         SELECT * FROM json_to_recordset($1::json) AS h(task_id text, seq int, state text, at timestamptz, reason text, proplet_id text, attempt int)
         ON CONFLICT (task_id, seq) DO UPDATE SET state = excluded.state, at = excluded.at, reason = excluded.reason, proplet_id = excluded.proplet_id, attempt = excluded.attempt`,
        [JSON.stringify(history)],
      );
    }
    const key = (r: { kind: string; id: string }) => `${r.kind}\u0000${r.id}`;
    const docMissing = (want: Extract<Op, { t: 'doc' }>[], got: { kind: string; id: string }[]) => {
      const ok = new Set(got.map(key));
      return want.filter((o) => !ok.has(key(o))).map((o) => ({ kind: o.kind, id: o.id }));
    };
    if (docs.ins.length) {
      const r = await c.query<{ kind: string; id: string }>(
        `INSERT INTO records (kind, id, version, doc) SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::json[]) ON CONFLICT (kind, id) DO NOTHING RETURNING kind, id`,
        [col(docs.ins, (o) => o.kind), col(docs.ins, (o) => o.id), col(docs.ins, (o) => o.next), col(docs.ins, (o) => o.doc)],
      );
      conflicts.push(...docMissing(docs.ins, r.rows));
    }
    if (docs.upd.length) {
      const r = await c.query<{ kind: string; id: string }>(
        `UPDATE records r SET version = u.next, doc = u.doc FROM unnest($1::text[], $2::text[], $3::int[], $4::int[], $5::json[]) AS u(kind, id, expected, next, doc)
         WHERE r.kind = u.kind AND r.id = u.id AND r.version = u.expected RETURNING r.kind, r.id`,
        [col(docs.upd, (o) => o.kind), col(docs.upd, (o) => o.id), col(docs.upd, (o) => o.expected), col(docs.upd, (o) => o.next), col(docs.upd, (o) => o.doc)],
      );
      conflicts.push(...docMissing(docs.upd, r.rows));
    }
    if (docs.del.length) {
      const r = await c.query<{ kind: string; id: string }>(
        `DELETE FROM records r USING unnest($1::text[], $2::text[], $3::int[]) AS u(kind, id, expected) WHERE r.kind = u.kind AND r.id = u.id AND r.version = u.expected RETURNING r.kind, r.id`,
        [col(docs.del, (o) => o.kind), col(docs.del, (o) => o.id), col(docs.del, (o) => o.expected)],
      );
      const gone = docMissing(docs.del, r.rows);
      if (gone.length) {
        const still = await c.query<{ kind: string; id: string }>('SELECT kind, id FROM records WHERE (kind, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))', [gone.map((g) => g.kind), gone.map((g) => g.id)]);
        conflicts.push(...still.rows.map((r) => ({ kind: r.kind as DocKind, id: r.id })));
      }
    }
    return conflicts;
  }

  async reload(keys: RowKey[]) {
    const c = await this.connection();
    const taskIds = keys.filter((k) => k.kind === 'task').map((k) => k.id);
    const docKeys = keys.filter((k) => k.kind !== 'task');
    const tasks = new Map<string, LoadedTask>();
    const docs = new Map<string, LoadedDoc>();
    if (taskIds.length) {
      const history = new Map<string, ReturnType<typeof transition>[]>();
      for (const h of (await c.query<HistoryRow>(`${HISTORY_SELECT} WHERE task_id = ANY($1) ORDER BY task_id, seq`, [taskIds])).rows) {
        let l = history.get(h.task_id);
        if (!l) history.set(h.task_id, (l = []));
        l.push(transition(h.state, h.at, h.reason, h.proplet_id, h.attempt));
      }
      for (const { version, ...row } of (await c.query<TaskRow & { version: number }>(`${TASK_SELECT} WHERE id = ANY($1)`, [taskIds])).rows) {
        tasks.set(row.id, { row, version, history: history.get(row.id) ?? [] });
      }
    }
    if (docKeys.length) {
      const r = await c.query<LoadedDoc>(`${DOC_SELECT} WHERE (kind, id) IN (SELECT * FROM unnest($1::text[], $2::text[]))`, [docKeys.map((k) => k.kind), docKeys.map((k) => k.id)]);
      for (const d of r.rows) docs.set(`${d.kind}\u0000${d.id}`, d);
    }
    return keys.map((k) => (k.kind === 'task' ? tasks.get(k.id) : docs.get(`${k.kind}\u0000${k.id}`)));
  }

  /**
   * The change feed: every commit NOTIFYs the rows it wrote (delivered to
   * listeners when, and only if, it commits); other writers' rows come back here.
   * After a lost listening connection, every row's version is sent (`full`), so
   * nothing missed meanwhile stays stale.
   */
  async watch(onChange: (rows: ChangedRow[], full: boolean) => void): Promise<void> {
    let first = true;
    const listen = async (): Promise<void> => {
      if (this.closing) return;
      const l = new pg.Client({ connectionString: this.url, connectionTimeoutMillis: 10_000 });
      this.listener = l;
      const again = (e?: Error) => {
        if (this.listener !== l) return;
        this.listener = undefined;
        // since the first failure; the latest reason
        if (!this.closing) this.feedDown = { since: this.feedDown?.since ?? Date.now(), error: e ? describePgError(e) : 'connection to PostgreSQL lost' };
        void l.end().catch(() => {});
        if (!this.closing) setTimeout(() => void listen().catch(() => {}), 1000).unref();
      };
      l.on('error', again);
      l.on('end', () => again());
      l.on('notification', (n) => {
        if (n.channel !== FEED || !n.payload || n.processId === (this.client as { processID?: number } | undefined)?.processID) return;
        try {
          onChange((JSON.parse(n.payload) as [RowKey['kind'], string, number][]).map(([kind, id, version]) => ({ kind, id, version })), false);
        } catch {
          /* not ours */
        }
      });
      try {
        await l.connect();
        await l.query(`LISTEN ${FEED}`);
      } catch (e) {
        again(e as Error);
        if (first) throw e;
        return;
      }
      this.feedDown = undefined;
      if (!first) {
        const rows = (await l.query<ChangedRow>(`SELECT 'task' AS kind, id, version FROM tasks UNION ALL SELECT kind, id, version FROM records`)).rows;
        onChange(rows, true);
      }
      first = false;
    };
    await listen();
  }

  /** NOTIFY payloads stay under PostgreSQL's 8,000-byte limit. */
  private async notify(c: pg.Client, ops: Op[]): Promise<void> {
    let batch: string[] = [];
    let size = 2;
    const send = async () => {
      if (batch.length) await c.query('SELECT pg_notify($1, $2)', [FEED, `[${batch.join(',')}]`]);
      batch = [];
      size = 2;
    };
    for (const op of ops) {
      if (op.t === 'module') continue;
      const item = JSON.stringify([op.t === 'task' ? 'task' : op.kind, op.id, op.next]);
      if (size + item.length + 1 > 7_900) await send();
      batch.push(item);
      size += item.length + 1;
    }
    await send();
  }

  cacheModule(digest: string, bytes: Uint8Array): void {
    this.modules.set(digest, bytes);
  }
  getModule(digest: string): Uint8Array | undefined {
    return this.modules.get(digest);
  }
  isDataError(e: unknown): boolean {
    // SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation)
    const code = (e as { code?: unknown }).code;
    return typeof code === 'string' && /^(22|23)/.test(code);
  }
  async close() {
    this.closing = true;
    const l = this.listener;
    this.listener = undefined;
    await l?.end().catch(() => {});
    const c = this.client;
    this.client = undefined;
    await c?.end().catch(() => {});
  }
}

export class PgStore extends MirrorStore {
  private constructor(engine: PgEngine, o: MirrorOptions) {
    super(engine, o);
  }

  /** Connects, migrates and loads; an unreachable server or a newer schema is one clear StoreError. */
  static async open(url: string, o: MirrorOptions = {}): Promise<PgStore> {
    const engine = new PgEngine(url);
    try {
      await engine.migrate();
      const store = new PgStore(engine, o);
      await store.load();
      await store.watch();
      return store;
    } catch (e) {
      await engine.close();
      if (e instanceof StoreError) throw e;
      throw new StoreError(`cannot use the PostgreSQL store ${redact(url)}: ${describePgError(e)}`);
    }
  }
}

function describePgError(e: unknown): string {
  const err = e as NodeJS.ErrnoException & { errors?: Error[] };
  if (err.code === 'ECONNREFUSED') return 'connection refused (is PostgreSQL running there?)';
  if (err.code === 'ENOTFOUND' || err.code === 'EAI_AGAIN') return `host not found (${err.message})`;
  if (err.errors?.length) return err.errors.map((x) => x.message).join('; ');
  return (err.message || String(e)).split('\n')[0]!;
}
