// The embedded durable store: one SQLite file in the data directory
// (better-sqlite3, WAL), the default. Writes are group-committed, a
// millisecond's worth in one transaction (mirror-store.ts); a kill -9 at any
// moment leaves the last committed state.

import Database from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Task } from './model.ts';
import { MirrorStore, type MirrorOptions } from './mirror-store.ts';
import { StoreError, taskToRow, transition, type DocKind, type Engine, type LoadedDoc, type LoadedTask, type Op, type RowKey, type TaskRow } from './store-rows.ts';

/** Schema versions, applied in order at open; user_version records the last one applied. */
const MIGRATIONS: ((db: Database.Database) => void)[] = [
  // 1: one JSON document per record
  (db) =>
    db.exec(`
      CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id));
      CREATE TABLE IF NOT EXISTS modules (digest TEXT PRIMARY KEY, bytes BLOB NOT NULL);
    `),
  // 2: tasks as rows and columns, history as appended rows, a version on every row
  (db) => {
    db.exec(`
      CREATE TABLE tasks (
        id TEXT PRIMARY KEY, version INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL,
        proplet_id TEXT, labels TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, started_at TEXT, finished_at TEXT,
        spec TEXT NOT NULL, status TEXT NOT NULL);
      CREATE INDEX tasks_state ON tasks (state);
      CREATE INDEX tasks_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
      CREATE TABLE task_history (
        task_id TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL, at TEXT NOT NULL, reason TEXT, proplet_id TEXT, attempt INTEGER,
        PRIMARY KEY (task_id, seq)) WITHOUT ROWID;
      ALTER TABLE records ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    `);
    const s = statements(db);
    for (const { doc } of db.prepare<[], { doc: string }>(`SELECT doc FROM records WHERE kind = 'task' ORDER BY rowid`).all()) {
      const t = JSON.parse(doc) as Task;
      s.insertTask.run({ ...taskToRow(t), version: 1 });
      t.history?.forEach((h, seq) => s.insertHistory.run(historyParams(t.id, seq, h)));
    }
    db.exec(`DELETE FROM records WHERE kind = 'task'`);
  },
  // 3: no index beyond the keys: every read is a whole load at open (the store is a mirror), and
  // each secondary index cost a page write per transition (10-20 µs a task in group commits)
  (db) => db.exec('DROP INDEX IF EXISTS tasks_state; DROP INDEX IF EXISTS tasks_finished_at;'),
];
export const SQLITE_SCHEMA_VERSION = MIGRATIONS.length;

const TASK_COLUMNS = 'id, version, name, state, attempt, proplet_id, labels, created_at, updated_at, started_at, finished_at, spec, status';

function statements(db: Database.Database) {
  return {
    insertTask: db.prepare<[TaskRow & { version: number }]>(
      `INSERT INTO tasks (${TASK_COLUMNS}) VALUES (@id, @version, @name, @state, @attempt, @proplet_id, @labels, @created_at, @updated_at, @started_at, @finished_at, @spec, @status) ON CONFLICT (id) DO NOTHING`,
    ),
    insertHistory: db.prepare<[HistoryParams]>(`INSERT OR REPLACE INTO task_history VALUES (@task_id, @seq, @state, @at, @reason, @proplet_id, @attempt)`),
  };
}

type HistoryParams = { task_id: string; seq: number; state: string; at: string; reason: string | null; proplet_id: string | null; attempt: number | null };
function historyParams(task_id: string, seq: number, h: { state: string; at: string; reason?: string; proplet_id?: string; attempt?: number }): HistoryParams {
  return { task_id, seq, state: h.state, at: h.at, reason: h.reason ?? null, proplet_id: h.proplet_id ?? null, attempt: h.attempt ?? null };
}

class SqliteEngine implements Engine {
  readonly name = 'sqlite';
  private s;
  /** Hot modules: every dispatch and chunk request reads one. */
  private hot = new LRUCache<string, Uint8Array>({ maxSize: 128 * 1024 * 1024, sizeCalculation: (b) => Math.max(1, b.length) });
  private pendingModules = new Map<string, Uint8Array>();
  /** One transaction function, made once: building a better-sqlite3 transaction is not free. */
  private apply: (ops: Op[], conflicts: RowKey[]) => void;

  constructor(private db: Database.Database) {
    this.apply = db.transaction((ops: Op[], conflicts: RowKey[]) => this.applyOps(ops, conflicts));
    const base = statements(db);
    this.s = {
      ...base,
      // positional parameters: binding by name costs a property lookup per column
      updateTask: db.prepare<unknown[]>(
        `UPDATE tasks SET version = ?, name = ?, state = ?, attempt = ?, proplet_id = ?, labels = ?,
         updated_at = ?, started_at = ?, finished_at = ?, status = ? WHERE id = ? AND version = ?`,
      ),
      updateTaskSpec: db.prepare<unknown[]>(
        `UPDATE tasks SET version = ?, name = ?, state = ?, attempt = ?, proplet_id = ?, labels = ?,
         updated_at = ?, started_at = ?, finished_at = ?, status = ?, spec = ? WHERE id = ? AND version = ?`,
      ),
      appendHistory: db.prepare<unknown[]>('INSERT OR REPLACE INTO task_history VALUES (?, ?, ?, ?, ?, ?, ?)'),
      deleteTask: db.prepare<[string, number]>('DELETE FROM tasks WHERE id = ? AND version = ?'),
      existsTask: db.prepare<[string], { n: number }>('SELECT 1 AS n FROM tasks WHERE id = ?'),
      deleteHistory: db.prepare<[string]>('DELETE FROM task_history WHERE task_id = ?'),
      insertDoc: db.prepare<[string, string, number, string]>('INSERT INTO records (kind, id, version, doc) VALUES (?, ?, ?, ?) ON CONFLICT (kind, id) DO NOTHING'),
      updateDoc: db.prepare<[number, string, string, string, number]>('UPDATE records SET version = ?, doc = ? WHERE kind = ? AND id = ? AND version = ?'),
      deleteDoc: db.prepare<[string, string, number]>('DELETE FROM records WHERE kind = ? AND id = ? AND version = ?'),
      existsDoc: db.prepare<[string, string], { n: number }>('SELECT 1 AS n FROM records WHERE kind = ? AND id = ?'),
      getDoc: db.prepare<[string, string], { version: number; doc: string }>('SELECT version, doc FROM records WHERE kind = ? AND id = ?'),
      getTask: db.prepare<[string], TaskRow & { version: number }>(`SELECT ${TASK_COLUMNS} FROM tasks WHERE id = ?`),
      getHistory: db.prepare<[string], HistoryParams>('SELECT * FROM task_history WHERE task_id = ? ORDER BY seq'),
      putModule: db.prepare<[string, Buffer]>('INSERT OR IGNORE INTO modules (digest, bytes) VALUES (?, ?)'),
      getModule: db.prepare<[string], { bytes: Buffer }>('SELECT bytes FROM modules WHERE digest = ?'),
    };
  }

  async load() {
    const history = new Map<string, ReturnType<typeof transition>[]>();
    for (const h of this.db.prepare<[], HistoryParams>('SELECT * FROM task_history ORDER BY task_id, seq').iterate()) {
      let l = history.get(h.task_id);
      if (!l) history.set(h.task_id, (l = []));
      l.push(transition(h.state, h.at, h.reason, h.proplet_id, h.attempt));
    }
    const tasks: LoadedTask[] = this.db
      .prepare<[], TaskRow & { version: number }>(`SELECT ${TASK_COLUMNS} FROM tasks ORDER BY rowid`)
      .all()
      .map(({ version, ...row }) => ({ row, version, history: history.get(row.id) ?? [] }));
    const docs = this.db.prepare<[], LoadedDoc>('SELECT kind, id, version, doc FROM records ORDER BY rowid').all();
    return { tasks, docs };
  }

  async commit(ops: Op[]): Promise<RowKey[]> {
    const conflicts: RowKey[] = [];
    try {
      this.apply(ops, conflicts);
    } catch (e) {
      if (e !== ROLLBACK) throw e;
    }
    if (!conflicts.length) for (const op of ops) if (op.t === 'module') this.pendingModules.delete(op.digest);
    return conflicts;
  }

  private applyOps(ops: Op[], conflicts: RowKey[]): void {
    const s = this.s;
    for (const op of ops) {
      if (op.t === 'module') {
        s.putModule.run(op.digest, Buffer.from(op.bytes.buffer, op.bytes.byteOffset, op.bytes.byteLength));
      } else if (op.t === 'doc') {
        const ok =
          op.doc === null
            ? s.deleteDoc.run(op.kind, op.id, op.expected).changes > 0 || !s.existsDoc.get(op.kind, op.id)
            : (op.expected === 0 ? s.insertDoc.run(op.kind, op.id, op.next, op.doc) : s.updateDoc.run(op.next, op.doc, op.kind, op.id, op.expected)).changes > 0;
        if (!ok) conflicts.push({ kind: op.kind, id: op.id });
      } else if (op.row === null) {
        if (s.deleteTask.run(op.id, op.expected).changes > 0) s.deleteHistory.run(op.id);
        else if (s.existsTask.get(op.id)) conflicts.push({ kind: 'task', id: op.id });
      } else {
        const r = op.row;
        const changed =
          op.expected === 0
            ? s.insertTask.run({ ...r, version: op.next }).changes > 0
            : op.spec
              ? s.updateTaskSpec.run(op.next, r.name, r.state, r.attempt, r.proplet_id, r.labels, r.updated_at, r.started_at, r.finished_at, r.status, r.spec, r.id, op.expected).changes > 0
              : s.updateTask.run(op.next, r.name, r.state, r.attempt, r.proplet_id, r.labels, r.updated_at, r.started_at, r.finished_at, r.status, r.id, op.expected).changes > 0;
        if (!changed) conflicts.push({ kind: 'task', id: op.id });
        else if (op.hist) {
          if (op.hist.replace) s.deleteHistory.run(op.id);
          let seq = op.hist.from;
          for (const h of op.hist.entries) s.appendHistory.run(op.id, seq++, h.state, h.at, h.reason ?? null, h.proplet_id ?? null, h.attempt ?? null);
        }
      }
    }
    if (conflicts.length) throw ROLLBACK;
  }

  async reload(keys: RowKey[]) {
    return keys.map((k): LoadedTask | LoadedDoc | undefined => {
      if (k.kind !== 'task') {
        const d = this.s.getDoc.get(k.kind, k.id);
        return d && { kind: k.kind as DocKind, id: k.id, ...d };
      }
      const r = this.s.getTask.get(k.id);
      if (!r) return undefined;
      const { version, ...row } = r;
      return { row, version, history: this.s.getHistory.all(k.id).map((h) => transition(h.state, h.at, h.reason, h.proplet_id, h.attempt)) };
    });
  }

  cacheModule(digest: string, bytes: Uint8Array): void {
    this.pendingModules.set(digest, bytes);
    this.hot.set(digest, bytes);
  }
  getModule(digest: string): Uint8Array | undefined {
    let b = this.pendingModules.get(digest) ?? this.hot.get(digest);
    if (!b) {
      b = this.s.getModule.get(digest)?.bytes;
      if (b) this.hot.set(digest, b);
    }
    return b;
  }
  isDataError(e: unknown): boolean {
    const code = (e as { code?: string }).code ?? '';
    return /^SQLITE_(CONSTRAINT|MISMATCH|TOOBIG|RANGE)/.test(code);
  }
  async close() {
    if (this.db.open) this.db.close();
  }
}

const ROLLBACK = Symbol('rollback');

export class SqliteStore extends MirrorStore {
  private constructor(
    readonly path: string,
    engine: SqliteEngine,
    o: MirrorOptions,
  ) {
    super(engine, o);
  }

  /** Opens (creating or migrating) the file and loads it; a file from a newer version is refused. */
  static async open(path: string, o: MirrorOptions = {}): Promise<SqliteStore> {
    let db: Database.Database;
    try {
      mkdirSync(dirname(path), { recursive: true });
      db = new Database(path);
      // WAL: readers never block the writer, and a commit is one append.
      // synchronous=NORMAL survives a crash of this process (kill -9); only a
      // power loss may take back the last commits, never corrupt the file.
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('busy_timeout = 5000');
    } catch (e) {
      throw new StoreError(`cannot open the SQLite store ${path}: ${(e as Error).message}`);
    }
    try {
      migrate(db, path);
    } catch (e) {
      db.close();
      throw e;
    }
    const store = new SqliteStore(path, new SqliteEngine(db), o);
    await store.load();
    return store;
  }
}

function migrate(db: Database.Database, path: string): void {
  let version: number;
  try {
    version = db.pragma('user_version', { simple: true }) as number;
  } catch (e) {
    throw new StoreError(`${path} is not a propeller-edge SQLite store: ${(e as Error).message}`);
  }
  if (version > SQLITE_SCHEMA_VERSION) {
    throw new StoreError(`${path} has schema version ${version}, newer than this propeller-edge knows (${SQLITE_SCHEMA_VERSION}): run a newer propeller-edge`);
  }
  db.transaction(() => {
    for (let v = version; v < SQLITE_SCHEMA_VERSION; v++) MIGRATIONS[v]!(db);
    db.pragma(`user_version = ${SQLITE_SCHEMA_VERSION}`);
  })();
}
