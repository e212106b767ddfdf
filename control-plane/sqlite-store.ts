// The durable store: one SQLite file in the data directory (better-sqlite3,
// WAL). Each record is one row of JSON, so a transition is one atomic write
// and a kill -9 at any moment leaves the last committed state.

import Database from 'better-sqlite3';
import { LRUCache } from 'lru-cache';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import type { FederatedJob, ModelCheckpoint, TrainingRound } from './fl/resources.ts';
import type { Proplet, PropletGroup, Task } from './model.ts';
import type { Collection, Store, StoredCredential } from './store.ts';

const SCHEMA_VERSION = 1;

class SqliteCollection<T> implements Collection<T> {
  private sGet: Database.Statement<[string, string], { doc: string }>;
  private sPut: Database.Statement<[string, string, string]>;
  private sDel: Database.Statement<[string, string]>;
  private sList: Database.Statement<[string], { doc: string }>;

  constructor(
    db: Database.Database,
    private kind: string,
  ) {
    this.sGet = db.prepare('SELECT doc FROM records WHERE kind = ? AND id = ?');
    this.sPut = db.prepare('INSERT INTO records (kind, id, doc) VALUES (?, ?, ?) ON CONFLICT (kind, id) DO UPDATE SET doc = excluded.doc');
    this.sDel = db.prepare('DELETE FROM records WHERE kind = ? AND id = ?');
    this.sList = db.prepare('SELECT doc FROM records WHERE kind = ? ORDER BY rowid');
  }
  get(id: string): T | undefined {
    const row = this.sGet.get(this.kind, id);
    return row ? (JSON.parse(row.doc) as T) : undefined;
  }
  put(id: string, v: T): void {
    this.sPut.run(this.kind, id, JSON.stringify(v));
  }
  delete(id: string): boolean {
    return this.sDel.run(this.kind, id).changes > 0;
  }
  list(): T[] {
    return this.sList.all(this.kind).map((r) => JSON.parse(r.doc) as T);
  }
}

export class SqliteStore implements Store {
  private db: Database.Database;
  readonly tasks: Collection<Task>;
  readonly proplets: Collection<Proplet>;
  readonly groups: Collection<PropletGroup>;
  readonly credentials: Collection<StoredCredential>;
  readonly flJobs: Collection<FederatedJob>;
  readonly flRounds: Collection<TrainingRound>;
  readonly flCheckpoints: Collection<ModelCheckpoint>;
  private sPutModule: Database.Statement<[string, Buffer]>;
  private sGetModule: Database.Statement<[string], { bytes: Buffer }>;
  /** Hot modules: every dispatch and chunk request reads one. */
  private hot = new LRUCache<string, Uint8Array>({ maxSize: 128 * 1024 * 1024, sizeCalculation: (b) => Math.max(1, b.length) });

  constructor(readonly path: string) {
    mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    // WAL: readers never block the writer, and a commit is one append.
    // synchronous=NORMAL survives a crash of this process (kill -9); only a
    // power loss may take back the last commits, never corrupt the file.
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = NORMAL');
    this.db.pragma('busy_timeout = 5000');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new Error(`${path} was written by a newer propeller-edge (schema ${version}; this one knows ${SCHEMA_VERSION})`);
    }
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (kind, id));
      CREATE TABLE IF NOT EXISTS modules (digest TEXT PRIMARY KEY, bytes BLOB NOT NULL);
    `);
    this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    this.tasks = new SqliteCollection(this.db, 'task');
    this.proplets = new SqliteCollection(this.db, 'proplet');
    this.groups = new SqliteCollection(this.db, 'group');
    this.credentials = new SqliteCollection(this.db, 'credential');
    this.flJobs = new SqliteCollection(this.db, 'fl-job');
    this.flRounds = new SqliteCollection(this.db, 'fl-round');
    this.flCheckpoints = new SqliteCollection(this.db, 'fl-checkpoint');
    this.sPutModule = this.db.prepare('INSERT OR IGNORE INTO modules (digest, bytes) VALUES (?, ?)');
    this.sGetModule = this.db.prepare('SELECT bytes FROM modules WHERE digest = ?');
  }

  putModule(digest: string, bytes: Uint8Array): void {
    if (this.hot.has(digest)) return;
    this.sPutModule.run(digest, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    this.hot.set(digest, bytes);
  }
  getModule(digest: string): Uint8Array | undefined {
    let b = this.hot.get(digest);
    if (!b) {
      b = this.sGetModule.get(digest)?.bytes;
      if (b) this.hot.set(digest, b);
    }
    return b;
  }
  atomically<R>(fn: () => R): R {
    return this.db.transaction(fn)();
  }
  close(): void {
    if (this.db.open) this.db.close();
  }
}
