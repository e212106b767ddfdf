// @ts-check
// Worker thread of the WasmRunner pool (plain JS: worker threads cannot load .ts on Node 20).
//
// Each 'run' message instantiates its WebAssembly.Module afresh (new WASI,
// new instance, nothing kept between runs) and answers with one 'done' message.
// The compiled Module itself is kept (by the runner's id) for the next run of
// the same module: posting it again on every run cost more than running it.
// Output written to fd 1/2 is posted to the parent as it is written ('out'
// messages), so it survives even when the parent terminates this worker.
//
// WASI fds: node:wasi gets /dev/null fds (opened once by the parent and shared)
// for stdin/stdout/stderr; fd_write on 1/2, reads of a given stdin and a
// read-only in-memory /data directory are served here in JS. No per-run host
// file or fd is ever created, so nothing can leak when a worker is killed.

import { parentPort, workerData } from 'node:worker_threads';
import { checkMemory, convertInputs, describeError, toResult } from './call.js';

// node:wasi prints an ExperimentalWarning once per thread; the runner is the only user here.
{
  const original = process.emitWarning;
  /** @type {any} */ (process).emitWarning = function (/** @type {any} */ warning, /** @type {any[]} */ ...rest) {
    const text = typeof warning === 'string' ? warning : warning?.message;
    if (typeof text === 'string' && text.startsWith('WASI is an experimental feature')) return;
    return /** @type {any} */ (original).call(process, warning, ...rest);
  };
}
const { WASI } = await import('node:wasi');

/**
 * @typedef {'i32'|'i64'|'f32'|'f64'|'v128'|'funcref'|'externref'|'ref'} ValType
 * @typedef {{ params: ValType[], results: ValType[] }} Signature
 * @typedef {{ module: string, name: string, initial: number, maximum: number | undefined, shared: boolean }} MemoryImport
 * @typedef {{
 *   module: WebAssembly.Module,
 *   command: boolean,
 *   exportNames: string[],
 *   signatures: Map<string, Signature> | null,
 *   needsWasi: boolean,
 *   memoryImport: MemoryImport | null,
 *   capped: boolean,
 * }} ModuleFacts
 * @typedef {{
 *   t: 'run',
 *   id: number,
 *   mid: number,
 *   load?: ModuleFacts,
 *   drop?: number[],
 *   name: string,
 *   args: string[],
 *   env: Record<string, string>,
 *   inputs: (number | bigint | string)[],
 *   stdin: Uint8Array | null,
 *   files: Record<string, Uint8Array> | null,
 *   limitBytes: number,
 *   stream: boolean,
 *   outCap: number,
 * }} RunMessage
 * @typedef {Omit<ModuleFacts, 'signatures'> & Omit<RunMessage, 'load' | 'drop'> & { signature: Signature | null }} Job
 * @typedef {{ ok: boolean, exitCode: number | null, returnValue?: unknown, error?: string }} Outcome
 */

if (!parentPort) throw new Error('wasm-worker.js must run in a worker thread');
const port = parentPort;
/** @type {{ nullIn: number, nullOut: number }} */
const fds = workerData;

// WASI errno values (preview1)
const E = {
  SUCCESS: 0, BADF: 8, EXIST: 20, FAULT: 21, INVAL: 28, ISDIR: 31, MFILE: 33, NOENT: 44,
  NOTDIR: 54, NOTSUP: 58, ROFS: 69, SPIPE: 70, NOTCAPABLE: 76,
};
const FILETYPE_DIRECTORY = 3;
const FILETYPE_REGULAR_FILE = 4;
const O_CREAT = 1, O_DIRECTORY = 2, O_TRUNC = 8;
const RIGHT = {
  FD_DATASYNC: 1n << 0n, FD_READ: 1n << 1n, FD_SEEK: 1n << 2n, FD_FDSTAT_SET_FLAGS: 1n << 3n,
  FD_SYNC: 1n << 4n, FD_TELL: 1n << 5n, FD_WRITE: 1n << 6n, FD_ADVISE: 1n << 7n,
  FD_ALLOCATE: 1n << 8n, PATH_OPEN: 1n << 13n, FD_READDIR: 1n << 14n, PATH_READLINK: 1n << 15n,
  PATH_FILESTAT_GET: 1n << 18n, FD_FILESTAT_GET: 1n << 21n, FD_FILESTAT_SET_SIZE: 1n << 22n,
  POLL_FD_READWRITE: 1n << 27n,
};
const FILE_RIGHTS = RIGHT.FD_READ | RIGHT.FD_SEEK | RIGHT.FD_TELL | RIGHT.FD_ADVISE | RIGHT.FD_FILESTAT_GET
  | RIGHT.FD_FDSTAT_SET_FLAGS | RIGHT.FD_SYNC | RIGHT.FD_DATASYNC | RIGHT.POLL_FD_READWRITE;
const DIR_RIGHTS = RIGHT.PATH_OPEN | RIGHT.FD_READDIR | RIGHT.PATH_READLINK | RIGHT.PATH_FILESTAT_GET
  | RIGHT.FD_FILESTAT_GET;
const WRITE_RIGHTS = RIGHT.FD_WRITE | RIGHT.FD_ALLOCATE | RIGHT.FD_FILESTAT_SET_SIZE;
const MAX_OPEN_FILES = 1024;
const PRELOAD_DIR = '/data';
const dataDirName = new TextEncoder().encode(PRELOAD_DIR);

/** Thrown by our proc_exit to unwind the wasm stack. */
class ProcExit {
  /** @param {number} code */
  constructor(code) { this.code = code; }
}

// ---------------------------------------------------------------------------
// In-memory read-only file system for `files` (mounted at /data)

/**
 * @typedef {{ kind: 'dir', ino: number, entries: Map<string, FsNode> }} DirNode
 * @typedef {{ kind: 'file', ino: number, data: Uint8Array }} FileNode
 * @typedef {DirNode | FileNode} FsNode
 * @typedef {{ node: FsNode, pos: number, preopen: boolean }} Handle
 */

/**
 * @param {Record<string, Uint8Array>} files
 * @returns {DirNode}
 */
function buildTree(files) {
  let ino = 1;
  /** @type {DirNode} */
  const root = { kind: 'dir', ino: ino++, entries: new Map() };
  for (const [rawPath, data] of Object.entries(files)) {
    const parts = rawPath.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.length === 0 || parts.includes('..')) throw new Error(`invalid file name ${JSON.stringify(rawPath)}`);
    let dir = root;
    for (let i = 0; i < parts.length - 1; i++) {
      const part = /** @type {string} */ (parts[i]);
      let next = dir.entries.get(part);
      if (!next) {
        next = { kind: 'dir', ino: ino++, entries: new Map() };
        dir.entries.set(part, next);
      }
      if (next.kind !== 'dir') throw new Error(`file name ${JSON.stringify(rawPath)} conflicts with a file`);
      dir = next;
    }
    const leaf = /** @type {string} */ (parts[parts.length - 1]);
    if (dir.entries.has(leaf)) throw new Error(`file name ${JSON.stringify(rawPath)} is given twice`);
    dir.entries.set(leaf, { kind: 'file', ino: ino++, data: data instanceof Uint8Array ? data : new Uint8Array(0) });
  }
  return root;
}

// ---------------------------------------------------------------------------
// One run

/**
 * @param {Job} job
 * @returns {Outcome}
 */
function runJob(job) {
  /** @type {WebAssembly.Memory | null} */
  let memory = null;
  const mem = () => {
    if (!memory) throw new RangeError('module has no memory');
    return memory;
  };

  // --- output, posted as written ---------------------------------------------------
  const sent = [0, 0, 0];
  /** @param {1 | 2} fd @param {Uint8Array[]} parts @param {number} total */
  const emit = (fd, parts, total) => {
    let budget = job.stream && fd === 1 ? total : Math.max(0, job.outCap + 1 - /** @type {number} */ (sent[fd]));
    if (budget <= 0) return;
    const data = new Uint8Array(Math.min(budget, total));
    let off = 0;
    for (const p of parts) {
      if (off >= data.length) break;
      const n = Math.min(p.length, data.length - off);
      data.set(p.subarray(0, n), off);
      off += n;
    }
    sent[fd] = /** @type {number} */ (sent[fd]) + data.length;
    port.postMessage({ t: 'out', id: job.id, fd, data }, [data.buffer]);
  };

  // --- fd table for the virtual files -------------------------------------------------
  /** @type {Map<number, Handle>} */
  const handles = new Map();
  let nextFd = 3;
  if (job.stdin) handles.set(0, { node: { kind: 'file', ino: 0, data: job.stdin }, pos: 0, preopen: false });
  if (job.files) handles.set(nextFd++, { node: buildTree(job.files), pos: 0, preopen: true });

  const wasi = job.needsWasi
    ? new WASI({
        version: 'preview1',
        args: job.args,
        env: job.env,
        stdin: fds.nullIn,
        stdout: fds.nullOut,
        stderr: fds.nullOut,
        returnOnExit: true,
      })
    : null;

  /** @type {Record<string, any>} */
  const base = wasi ? wasi.wasiImport : {};
  /** @type {Int32Array | undefined} */
  let sleeper;
  /** @type {Record<string, any>} */
  const imp = Object.assign(Object.create(null), base);

  const u = (/** @type {number} */ x) => x >>> 0;
  const view = () => new DataView(mem().buffer);
  /** Reads an iovec array; throws RangeError when out of bounds. */
  const iovecs = (/** @type {number} */ ptr, /** @type {number} */ count) => {
    const dv = view();
    ptr = u(ptr); count = u(count);
    if (ptr + count * 8 > dv.byteLength) throw new RangeError('iovec array out of bounds');
    /** @type {Uint8Array[]} */
    const list = [];
    let total = 0;
    for (let i = 0; i < count; i++) {
      const p = dv.getUint32(ptr + i * 8, true);
      const len = dv.getUint32(ptr + i * 8 + 4, true);
      if (p + len > dv.byteLength) throw new RangeError('iovec out of bounds');
      list.push(new Uint8Array(dv.buffer, p, len));
      total += len;
    }
    return { list, total };
  };
  const readPath = (/** @type {number} */ ptr, /** @type {number} */ len) => {
    ptr = u(ptr); len = u(len);
    const buf = mem().buffer;
    if (ptr + len > buf.byteLength) throw new RangeError('path out of bounds');
    return new TextDecoder().decode(new Uint8Array(buf, ptr, len));
  };
  /** @returns {FsNode | number} the node or an errno */
  const resolve = (/** @type {DirNode} */ dir, /** @type {string} */ path) => {
    if (path.startsWith('/')) return E.NOTCAPABLE;
    /** @type {DirNode[]} */
    const stack = [dir];
    /** @type {FsNode} */
    let node = dir;
    for (const part of path.split('/')) {
      if (part === '' || part === '.') continue;
      if (node.kind !== 'dir') return E.NOTDIR;
      if (part === '..') {
        if (stack.length <= 1) return E.NOTCAPABLE;
        stack.pop();
        node = /** @type {DirNode} */ (stack[stack.length - 1]);
        continue;
      }
      const next = node.entries.get(part);
      if (!next) return E.NOENT;
      node = next;
      if (next.kind === 'dir') stack.push(next);
    }
    return node;
  };
  const writeFilestat = (/** @type {number} */ ptr, /** @type {FsNode} */ node) => {
    const dv = view();
    ptr = u(ptr);
    dv.setBigUint64(ptr, 0n, true); // dev
    dv.setBigUint64(ptr + 8, BigInt(node.ino), true);
    dv.setUint8(ptr + 16, node.kind === 'dir' ? FILETYPE_DIRECTORY : FILETYPE_REGULAR_FILE);
    for (let i = 17; i < 24; i++) dv.setUint8(ptr + i, 0);
    dv.setBigUint64(ptr + 24, 1n, true); // nlink
    dv.setBigUint64(ptr + 32, BigInt(node.kind === 'file' ? node.data.length : 0), true);
    dv.setBigUint64(ptr + 40, 0n, true);
    dv.setBigUint64(ptr + 48, 0n, true);
    dv.setBigUint64(ptr + 56, 0n, true);
  };
  const readInto = (/** @type {FileNode} */ file, /** @type {number} */ pos, /** @type {Uint8Array[]} */ list) => {
    let n = 0;
    for (const dst of list) {
      if (pos >= file.data.length) break;
      const chunk = file.data.subarray(pos, Math.min(file.data.length, pos + dst.length));
      dst.set(chunk);
      pos += chunk.length;
      n += chunk.length;
      if (chunk.length < dst.length) break;
    }
    return n;
  };

  /**
   * Wraps an override so that bad pointers give EFAULT instead of an exception,
   * and calls for fds we do not own fall through to node:wasi.
   * @param {string} fname
   * @param {(...a: any[]) => number | undefined} fn  returns undefined to pass through
   */
  const override = (fname, fn) => {
    const fallback = base[fname];
    imp[fname] = (/** @type {any[]} */ ...a) => {
      let r;
      try {
        r = fn(...a);
      } catch (err) {
        if (err instanceof RangeError) return E.FAULT;
        throw err;
      }
      if (r !== undefined) return r;
      return fallback ? fallback(...a) : E.NOTSUP;
    };
  };
  const fileHandle = (/** @type {number} */ fd) => handles.get(fd);

  if (wasi) {
    imp.proc_exit = (/** @type {number} */ code) => {
      throw new ProcExit(u(code));
    };
    // node:wasi sleeps inside poll_oneoff in one blocking call that
    // worker.terminate() cannot interrupt: a task sleeping 30 s would outlive
    // its stop by 30 s. Clock-only polls sleep here in short slices instead
    // (terminate takes effect between them), then let node's poll_oneoff
    // report the events with nothing left to wait for.
    const nodePoll = base.poll_oneoff;
    if (nodePoll) {
      imp.poll_oneoff = (/** @type {number} */ inPtr, /** @type {number} */ outPtr, /** @type {number} */ n, /** @type {number} */ neventsPtr) => {
        const dv = view();
        inPtr = u(inPtr);
        n = u(n);
        if (n === 0 || inPtr + n * 48 > dv.byteLength) return nodePoll(inPtr, outPtr, n, neventsPtr);
        let waitNs = -1n;
        for (let i = 0; i < n; i++) {
          const sub = inPtr + i * 48;
          if (dv.getUint8(sub + 8) !== 0) return nodePoll(inPtr, outPtr, n, neventsPtr); // not a clock: node handles it
          let ns = dv.getBigUint64(sub + 24, true);
          if (dv.getUint16(sub + 40, true) & 1) {
            // absolute deadline on the realtime (0) or monotonic (1) clock
            const nowNs = dv.getUint32(sub + 16, true) === 0 ? BigInt(Date.now()) * 1_000_000n : process.hrtime.bigint();
            ns = ns > nowNs ? ns - nowNs : 0n;
          }
          if (waitNs < 0n || ns < waitNs) waitNs = ns;
        }
        const end = performance.now() + Number(waitNs / 1_000_000n);
        for (let left = end - performance.now(); left > 0; left = end - performance.now()) Atomics.wait((sleeper ??= new Int32Array(new SharedArrayBuffer(4))), 0, 0, Math.min(left, 50));
        // the wait is over: ask node with zero timeouts so it fills in the events,
        // then put the guest's subscriptions back as they were
        const saved = [];
        for (let i = 0; i < n; i++) {
          const sub = inPtr + i * 48;
          saved.push([dv.getBigUint64(sub + 24, true), dv.getUint16(sub + 40, true)]);
          dv.setBigUint64(sub + 24, 0n, true);
          dv.setUint16(sub + 40, 0, true);
        }
        const r = nodePoll(inPtr, outPtr, n, neventsPtr);
        const dv2 = view();
        for (let i = 0; i < n; i++) {
          const sub = inPtr + i * 48;
          const [t, f] = /** @type {[bigint, number]} */ (saved[i]);
          dv2.setBigUint64(sub + 24, t, true);
          dv2.setUint16(sub + 40, f, true);
        }
        return r;
      };
    }
    override('fd_write', (fd, iovs, n, nwritten) => {
      if (fd === 1 || fd === 2) {
        const { list, total } = iovecs(iovs, n);
        emit(fd, list, total);
        view().setUint32(u(nwritten), total >>> 0, true);
        return E.SUCCESS;
      }
      if (handles.has(fd)) return E.NOTCAPABLE;
      return undefined;
    });
    override('fd_pwrite', (fd) => (fd === 1 || fd === 2 ? E.SPIPE : handles.has(fd) ? E.NOTCAPABLE : undefined));
    override('fd_read', (fd, iovs, n, nread) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (h.node.kind !== 'file') return E.ISDIR;
      const { list } = iovecs(iovs, n);
      const got = readInto(h.node, h.pos, list);
      h.pos += got;
      view().setUint32(u(nread), got, true);
      return E.SUCCESS;
    });
    override('fd_pread', (fd, iovs, n, offset, nread) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (h.node.kind !== 'file') return E.ISDIR;
      const { list } = iovecs(iovs, n);
      const off = BigInt.asUintN(64, BigInt(offset));
      const got = off >= BigInt(h.node.data.length) ? 0 : readInto(h.node, Number(off), list);
      view().setUint32(u(nread), got, true);
      return E.SUCCESS;
    });
    override('fd_seek', (fd, offset, whence, newOffset) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (h.node.kind !== 'file') return E.SPIPE;
      const baseOff = whence === 0 ? 0n : whence === 1 ? BigInt(h.pos) : whence === 2 ? BigInt(h.node.data.length) : -1n;
      if (baseOff < 0n) return E.INVAL;
      const next = baseOff + BigInt.asIntN(64, BigInt(offset));
      if (next < 0n || next > BigInt(Number.MAX_SAFE_INTEGER)) return E.INVAL;
      h.pos = Number(next);
      view().setBigUint64(u(newOffset), next, true);
      return E.SUCCESS;
    });
    override('fd_tell', (fd, ptr) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (h.node.kind !== 'file') return E.SPIPE;
      view().setBigUint64(u(ptr), BigInt(h.pos), true);
      return E.SUCCESS;
    });
    override('fd_close', (fd) => {
      if (handles.delete(fd)) return E.SUCCESS;
      // never let a guest close the shared /dev/null fds behind 0-2
      if (fd >= 0 && fd <= 2) return E.SUCCESS;
      return undefined;
    });
    override('fd_renumber', (from, to) => {
      if (from < 0 || from > 2) {
        const h = handles.get(from);
        if (!h) return undefined;
        if (to >= 0 && to <= 2 && !handles.has(to)) return E.NOTSUP;
        if (to < 0) return E.BADF;
        handles.delete(from);
        handles.set(to, h);
        return E.SUCCESS;
      }
      return E.NOTSUP;
    });
    override('fd_fdstat_get', (fd, ptr) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      const dv = view();
      ptr = u(ptr);
      dv.setUint8(ptr, h.node.kind === 'dir' ? FILETYPE_DIRECTORY : FILETYPE_REGULAR_FILE);
      dv.setUint8(ptr + 1, 0);
      dv.setUint16(ptr + 2, 0, true);
      dv.setUint32(ptr + 4, 0, true);
      dv.setBigUint64(ptr + 8, h.node.kind === 'dir' ? DIR_RIGHTS : FILE_RIGHTS, true);
      dv.setBigUint64(ptr + 16, h.node.kind === 'dir' ? DIR_RIGHTS | FILE_RIGHTS : 0n, true);
      return E.SUCCESS;
    });
    override('fd_fdstat_set_flags', (fd) => (handles.has(fd) ? E.SUCCESS : undefined));
    override('fd_fdstat_set_rights', (fd) => (handles.has(fd) ? E.SUCCESS : undefined));
    override('fd_filestat_get', (fd, ptr) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      writeFilestat(ptr, h.node);
      return E.SUCCESS;
    });
    for (const name of ['fd_filestat_set_size', 'fd_filestat_set_times', 'fd_allocate']) {
      override(name, (fd) => (handles.has(fd) ? E.NOTCAPABLE : undefined));
    }
    for (const name of ['fd_advise', 'fd_sync', 'fd_datasync']) {
      override(name, (fd) => (handles.has(fd) ? E.SUCCESS : undefined));
    }
    override('fd_prestat_get', (fd, ptr) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (!h.preopen) return E.BADF;
      const dv = view();
      dv.setUint32(u(ptr), 0, true); // tag: dir (u8) + padding
      dv.setUint32(u(ptr) + 4, dataDirName.length, true);
      return E.SUCCESS;
    });
    override('fd_prestat_dir_name', (fd, ptr, len) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (!h.preopen) return E.BADF;
      const n = Math.min(u(len), dataDirName.length);
      const buf = mem().buffer;
      if (u(ptr) + n > buf.byteLength) return E.FAULT;
      new Uint8Array(buf, u(ptr), n).set(dataDirName.subarray(0, n));
      return E.SUCCESS;
    });
    override('fd_readdir', (fd, buf, bufLen, cookie, bufUsed) => {
      const h = fileHandle(fd);
      if (!h) return undefined;
      if (h.node.kind !== 'dir') return E.NOTDIR;
      const dir = h.node;
      const names = ['.', '..', ...[...dir.entries.keys()].sort()];
      const enc = new TextEncoder();
      /** @type {number[]} */
      const bytes = [];
      const start = BigInt.asUintN(64, BigInt(cookie));
      const cap = u(bufLen);
      for (let i = Number(start < BigInt(names.length) ? start : BigInt(names.length)); i < names.length && bytes.length < cap; i++) {
        const name = /** @type {string} */ (names[i]);
        const node = name === '.' || name === '..' ? dir : /** @type {FsNode} */ (dir.entries.get(name));
        const nameBytes = enc.encode(name);
        const head = new DataView(new ArrayBuffer(24));
        head.setBigUint64(0, BigInt(i + 1), true);
        head.setBigUint64(8, BigInt(node.ino), true);
        head.setUint32(16, nameBytes.length, true);
        head.setUint8(20, node.kind === 'dir' ? FILETYPE_DIRECTORY : FILETYPE_REGULAR_FILE);
        bytes.push(...new Uint8Array(head.buffer), ...nameBytes);
      }
      const n = Math.min(cap, bytes.length);
      const memBuf = mem().buffer;
      if (u(buf) + n > memBuf.byteLength) return E.FAULT;
      new Uint8Array(memBuf, u(buf), n).set(bytes.slice(0, n));
      view().setUint32(u(bufUsed), n, true);
      return E.SUCCESS;
    });
    override('path_open', (dirfd, _dirflags, pathPtr, pathLen, oflags, rightsBase, _rightsInh, _fdflags, fdOut) => {
      const h = fileHandle(dirfd);
      if (!h) return undefined;
      if (h.node.kind !== 'dir') return E.NOTDIR;
      const found = resolve(h.node, readPath(pathPtr, pathLen));
      if (oflags & (O_CREAT | O_TRUNC)) return typeof found === 'number' && found !== E.NOENT ? found : E.ROFS;
      if (typeof found === 'number') return found;
      if (found.kind === 'file' && (BigInt.asUintN(64, BigInt(rightsBase)) & WRITE_RIGHTS) !== 0n) return E.ROFS;
      if ((oflags & O_DIRECTORY) && found.kind !== 'dir') return E.NOTDIR;
      if (handles.size >= MAX_OPEN_FILES) return E.MFILE;
      while (handles.has(nextFd) || nextFd <= 2) nextFd++;
      const fd = nextFd++;
      handles.set(fd, { node: found, pos: 0, preopen: false });
      view().setUint32(u(fdOut), fd, true);
      return E.SUCCESS;
    });
    override('path_filestat_get', (dirfd, _flags, pathPtr, pathLen, ptr) => {
      const h = fileHandle(dirfd);
      if (!h) return undefined;
      if (h.node.kind !== 'dir') return E.NOTDIR;
      const found = resolve(h.node, readPath(pathPtr, pathLen));
      if (typeof found === 'number') return found;
      writeFilestat(ptr, found);
      return E.SUCCESS;
    });
    override('path_readlink', (dirfd, pathPtr, pathLen) => {
      const h = fileHandle(dirfd);
      if (!h) return undefined;
      if (h.node.kind !== 'dir') return E.NOTDIR;
      const found = resolve(h.node, readPath(pathPtr, pathLen));
      return typeof found === 'number' ? found : E.INVAL;
    });
    for (const name of ['path_create_directory', 'path_remove_directory', 'path_unlink_file', 'path_symlink',
      'path_filestat_set_times']) {
      // path_symlink(old_path, old_len, fd, new_path, new_len) has its fd third
      const fdArg = name === 'path_symlink' ? 2 : 0;
      override(name, (...a) => (handles.has(a[fdArg]) ? E.ROFS : undefined));
    }
    override('path_link', (oldFd, _f, _p, _l, newFd) => (handles.has(oldFd) || handles.has(newFd) ? E.ROFS : undefined));
    override('path_rename', (oldFd, _p, _l, newFd) => (handles.has(oldFd) || handles.has(newFd) ? E.ROFS : undefined));
  }

  /** @type {WebAssembly.Imports} */
  const importObject = { wasi_snapshot_preview1: imp };
  if (job.memoryImport) {
    const mi = job.memoryImport;
    /** @type {WebAssembly.MemoryDescriptor & { shared?: boolean }} */
    const desc = { initial: mi.initial };
    if (mi.maximum !== undefined) desc.maximum = mi.maximum;
    if (mi.shared) desc.shared = true;
    memory = new WebAssembly.Memory(desc);
    const ns = /** @type {Record<string, WebAssembly.ImportValue>} */ (importObject[mi.module] ??= {});
    ns[mi.name] = memory;
  }

  /** @type {Outcome} */
  let outcome;
  try {
    const instance = new WebAssembly.Instance(job.module, importObject);
    const exports = instance.exports;
    if (!memory && exports.memory instanceof WebAssembly.Memory) memory = exports.memory;
    const shim = { exports: { ...exports, ...(memory ? { memory } : {}) } };

    if (job.command) {
      if (!wasi) throw new Error('internal: command without WASI');
      if (!memory) return { ok: false, exitCode: null, error: 'a WASI command must export its memory' };
      let code = 0;
      try {
        const r = wasi.start(shim);
        code = typeof r === 'number' ? r : 0;
      } catch (err) {
        if (!(err instanceof ProcExit)) throw err;
        code = err.code;
      }
      outcome = code === 0 ? { ok: true, exitCode: 0 } : { ok: false, exitCode: code, error: `exit code ${code}` };
    } else {
      const fn = exports[job.name];
      if (typeof fn !== 'function') {
        const names = job.exportNames.length ? job.exportNames.join(', ') : '(none)';
        return {
          ok: false,
          exitCode: null,
          error: exports[job.name] === undefined
            ? `export "${job.name}" not found; exports: ${names}`
            : `export "${job.name}" is not a function; exports: ${names}`,
        };
      }
      const args = convertInputs(job.name, job.inputs, job.signature, fn.length);
      if (typeof args === 'string') return { ok: false, exitCode: null, error: args };
      try {
        if (wasi && memory) wasi.initialize(shim); // also runs _initialize if exported
        else if (typeof exports._initialize === 'function') /** @type {Function} */ (exports._initialize)();
        const value = /** @type {Function} */ (fn)(...args);
        outcome = { ok: true, exitCode: 0, returnValue: toResult(value) };
      } catch (err) {
        if (!(err instanceof ProcExit)) throw err;
        outcome = err.code === 0 ? { ok: true, exitCode: 0 } : { ok: false, exitCode: err.code, error: `exit code ${err.code}` };
      }
    }
  } catch (err) {
    outcome = { ok: false, exitCode: null, error: describeError(err) };
  }
  return checkMemory(job, memory, outcome);
}


/**
 * Modules this worker has been sent, by the runner's id: a run names its module and the
 * runner posts the module (and its facts) only to a worker that does not hold it yet, and
 * says which to forget (it keeps the same bounded list for each worker).
 * @type {Map<number, ModuleFacts>}
 */
const modules = new Map();

port.on('message', (/** @type {RunMessage} */ msg) => {
  if (!msg || msg.t !== 'run') return;
  if (msg.load) modules.set(msg.mid, msg.load);
  if (msg.drop) for (const id of msg.drop) modules.delete(id);
  const facts = modules.get(msg.mid);
  /** @type {Outcome} */
  let outcome;
  try {
    if (!facts) throw new Error(`internal: module ${msg.mid} was not sent to this worker`);
    outcome = runJob({
      t: 'run', id: msg.id, mid: msg.mid, module: facts.module, command: facts.command, name: msg.name,
      exportNames: facts.exportNames, signature: facts.signatures?.get(msg.name) ?? null, needsWasi: facts.needsWasi,
      args: msg.args, env: msg.env, inputs: msg.inputs, stdin: msg.stdin, files: msg.files, memoryImport: facts.memoryImport,
      limitBytes: msg.limitBytes, capped: facts.capped, stream: msg.stream, outCap: msg.outCap,
    });
  } catch (err) {
    outcome = { ok: false, exitCode: null, error: describeError(err) };
  }
  try {
    port.postMessage({ t: 'done', id: msg.id, outcome });
  } catch (err) {
    // e.g. a return value that cannot be cloned
    port.postMessage({ t: 'done', id: msg.id, outcome: { ok: false, exitCode: outcome.exitCode, error: describeError(err) } });
  }
});

// Load the WASI binding now so the first run does not pay for it.
new WASI({ version: 'preview1', stdin: fds.nullIn, stdout: fds.nullOut, stderr: fds.nullOut });
port.postMessage({ t: 'ready' });
