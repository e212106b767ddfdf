// The store on PostgreSQL (driver `pg`): the state of a control plane that
// runs beside others on one database. One connection, group commit per tick
// (mirror-store.ts); each commit is a handful of set-based statements
// (unnest of arrays), whatever the number of rows in it.

import pg from 'pg';
import { MirrorStore, type MirrorOptions } from './mirror-store.ts';
import { StoreError, transition, type DocKind, type Engine, type LoadedDoc, type LoadedTask, type Op, type RowKey, type TaskRow } from './store-rows.ts';

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
];
export const PG_SCHEMA_VERSION = MIGRATIONS.length;

const iso = (col: string) => `to_char(${col} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;
const TASK_SELECT = `SELECT id, version, name, state, attempt, proplet_id, labels::text AS labels, ${iso('created_at')} AS created_at, ${iso('updated_at')} AS updated_at,
  ${iso('started_at')} AS started_at, ${iso('finished_at')} AS finished_at, spec::text AS spec, status::text AS status FROM tasks`;
const HISTORY_SELECT = `SELECT task_id, seq, state, ${iso('at')} AS at, reason, proplet_id, attempt FROM task_history`;
const DOC_SELECT = 'SELECT kind, id, version, doc::text AS doc FROM records';

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

class PgEngine implements Engine {
  readonly name = 'postgres';
  private client?: pg.Client;
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

  async commit(ops: Op[]): Promise<RowKey[]> {
    const c = await this.connection();
    await c.query('BEGIN');
    try {
      const conflicts = await this.apply(c, ops);
      await c.query(conflicts.length ? 'ROLLBACK' : 'COMMIT');
      return conflicts;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => {});
      throw e;
    }
  }

  private async apply(c: pg.Client, ops: Op[]): Promise<RowKey[]> {
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
    if (inserts.length) {
      const rows = inserts.map((o) => ({ ...o.row!, version: o.next }));
      const r = await c.query<{ id: string }>(
        `INSERT INTO tasks (id, version, name, state, attempt, proplet_id, labels, created_at, updated_at, started_at, finished_at, spec, status)
         SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[], $7::jsonb[], $8::timestamptz[], $9::timestamptz[],
           $10::timestamptz[], $11::timestamptz[], $12::json[], $13::json[])
         ON CONFLICT (id) DO NOTHING RETURNING id`,
        [col(rows, (r) => r.id), col(rows, (r) => r.version), col(rows, (r) => r.name), col(rows, (r) => r.state), col(rows, (r) => r.attempt), col(rows, (r) => r.proplet_id), col(rows, (r) => r.labels), col(rows, (r) => r.created_at), col(rows, (r) => r.updated_at), col(rows, (r) => r.started_at), col(rows, (r) => r.finished_at), col(rows, (r) => r.spec), col(rows, (r) => r.status)],
      );
      for (const id of missing(inserts, r.rows)) conflicts.push({ kind: 'task', id });
    }
    if (updates.length) {
      const r = await c.query<{ id: string }>(
        `UPDATE tasks t SET version = u.next, name = u.name, state = u.state, attempt = u.attempt, proplet_id = u.proplet_id, labels = u.labels,
           updated_at = u.updated_at, started_at = u.started_at, finished_at = u.finished_at, status = u.status, spec = coalesce(u.spec, t.spec)
         FROM unnest($1::text[], $2::int[], $3::int[], $4::text[], $5::text[], $6::int[], $7::text[], $8::jsonb[], $9::timestamptz[], $10::timestamptz[],
           $11::timestamptz[], $12::json[], $13::json[])
           AS u(id, expected, next, name, state, attempt, proplet_id, labels, updated_at, started_at, finished_at, status, spec)
         WHERE t.id = u.id AND t.version = u.expected RETURNING t.id`,
        [col(updates, (o) => o.id), col(updates, (o) => o.expected), col(updates, (o) => o.next), col(updates, (o) => o.row!.name), col(updates, (o) => o.row!.state), col(updates, (o) => o.row!.attempt), col(updates, (o) => o.row!.proplet_id), col(updates, (o) => o.row!.labels), col(updates, (o) => o.row!.updated_at), col(updates, (o) => o.row!.started_at), col(updates, (o) => o.row!.finished_at), col(updates, (o) => o.row!.status), col(updates, (o) => (o.spec ? o.row!.spec : null))],
      );
      for (const id of missing(updates, r.rows)) conflicts.push({ kind: 'task', id });
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
         SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::timestamptz[], $5::text[], $6::text[], $7::int[])
         ON CONFLICT (task_id, seq) DO UPDATE SET state = excluded.state, at = excluded.at, reason = excluded.reason, proplet_id = excluded.proplet_id, attempt = excluded.attempt`,
        [col(history, (h) => h.task_id), col(history, (h) => h.seq), col(history, (h) => h.state), col(history, (h) => h.at), col(history, (h) => h.reason), col(history, (h) => h.proplet_id), col(history, (h) => h.attempt)],
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
    const out: (LoadedTask | LoadedDoc | undefined)[] = [];
    for (const k of keys) {
      if (k.kind !== 'task') {
        out.push((await c.query<LoadedDoc>(`${DOC_SELECT} WHERE kind = $1 AND id = $2`, [k.kind, k.id])).rows[0]);
        continue;
      }
      const r = (await c.query<TaskRow & { version: number }>(`${TASK_SELECT} WHERE id = $1`, [k.id])).rows[0];
      if (!r) {
        out.push(undefined);
        continue;
      }
      const { version, ...row } = r;
      const h = (await c.query<HistoryRow>(`${HISTORY_SELECT} WHERE task_id = $1 ORDER BY seq`, [k.id])).rows;
      out.push({ row, version, history: h.map((x) => transition(x.state, x.at, x.reason, x.proplet_id, x.attempt)) });
    }
    return out;
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
