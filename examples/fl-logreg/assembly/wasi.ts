// The few WASI preview1 calls the module needs, declared by hand (AssemblyScript
// has no WASI layer of its own), and small byte-level helpers on top of them:
// buffered output, the environment, stdin, exit, and the abort handler
// (asc --use abort=assembly/wasi/abort), so that no `env` import is left.
//
// Everything works on bytes in static buffers: the module allocates almost
// nothing, so it runs in its initial memory (the MCU profile caps linear
// memory at the module's initial size).

@external("wasi_snapshot_preview1", "fd_write")
declare function fd_write(fd: u32, iovs: usize, iovsLen: usize, nwritten: usize): u16;

@external("wasi_snapshot_preview1", "fd_read")
declare function fd_read(fd: u32, iovs: usize, iovsLen: usize, nread: usize): u16;

@external("wasi_snapshot_preview1", "environ_sizes_get")
declare function environ_sizes_get(count: usize, bufSize: usize): u16;

@external("wasi_snapshot_preview1", "environ_get")
declare function environ_get(environ: usize, buf: usize): u16;

@external("wasi_snapshot_preview1", "proc_exit")
declare function proc_exit(code: u32): void;

export const STDIN: u32 = 0;
export const STDOUT: u32 = 1;
export const STDERR: u32 = 2;

/** Exit codes: bad input (stdin, env, hyperparameters), and everything else. */
export const EXIT_USAGE: u32 = 2;
export const EXIT_FAILURE: u32 = 1;

const IOV = memory.data(8, 4); // one iovec: {ptr, len}
const COUNT = memory.data(4, 4); // nwritten / nread / sizes

/** Writes all `len` bytes at `ptr` to `fd`; gives up quietly on an error. */
export function writeAll(fd: u32, ptr: usize, len: usize): void {
  while (len > 0) {
    store<u32>(IOV, <u32>ptr);
    store<u32>(IOV, <u32>len, 4);
    if (fd_write(fd, IOV, 1, COUNT) != 0) return;
    const n = <usize>load<u32>(COUNT);
    if (n == 0) return;
    ptr += n;
    len -= n;
  }
}

const LINE_BYTES: usize = 512;

/** A line writer: bytes collect in a static buffer and go out by line() or when it is full. */
export class Out {
  private len: usize = 0;

  /** `buf`: LINE_BYTES of static memory of its own. */
  constructor(private fd: u32, private buf: usize) {}

  byte(b: u32): Out {
    if (this.len == LINE_BYTES) this.flush();
    store<u8>(this.buf + this.len, <u8>b);
    this.len++;
    return this;
  }

  bytes(ptr: usize, len: usize): Out {
    for (let i: usize = 0; i < len; i++) this.byte(load<u8>(ptr + i));
    return this;
  }

  /** ASCII text (a character past 0x7f is written as '?'). */
  str(s: string): Out {
    for (let i = 0; i < s.length; i++) {
      const c = <u32>s.charCodeAt(i);
      this.byte(c < 0x80 ? c : 0x3f);
    }
    return this;
  }

  int(v: i64): Out {
    if (v < 0) {
      this.byte(0x2d);
      v = -v;
    }
    const digits = memory.data(20);
    let n = 0;
    do {
      store<u8>(digits + n++, <u8>(0x30 + <u32>(v % 10)));
      v /= 10;
    } while (v > 0);
    while (n > 0) this.byte(load<u8>(digits + --n));
    return this;
  }

  /** The shortest decimal that reads back as `v` (an integer without ".0"), valid JSON for a finite `v`. */
  num(v: f64): Out {
    if (v == Math.floor(v) && Math.abs(v) < 9007199254740992) return this.int(<i64>v);
    return this.str(v.toString());
  }

  flush(): void {
    writeAll(this.fd, this.buf, this.len);
    this.len = 0;
  }

  /** Ends the line and writes it out. */
  line(): void {
    this.byte(0x0a);
    this.flush();
  }
}

export const stdout = new Out(STDOUT, memory.data(<i32>LINE_BYTES));
export const stderr = new Out(STDERR, memory.data(<i32>LINE_BYTES));

export function exit(code: u32): void {
  stdout.flush();
  stderr.flush();
  proc_exit(code);
}

/** Writes "fl-logreg: <message>" to stderr and exits with `code`. */
export function fail(code: u32, message: string): void {
  stderr.str("fl-logreg: ").str(message).line();
  exit(code);
}

// --- the environment ----------------------------------------------------------------

const ENV_BYTES: usize = 8192;
const ENV_MAX_VARS: usize = 256;
const envBuf = memory.data(<i32>ENV_BYTES);
const envPtrs = memory.data(<i32>(ENV_MAX_VARS * 4), 4);
let envCount: usize = 0;

/** Reads the environment once; exits with EXIT_USAGE when it does not fit the static buffers. */
export function loadEnv(): void {
  const sizes = memory.data(8, 4);
  if (environ_sizes_get(sizes, sizes + 4) != 0) fail(EXIT_FAILURE, "environ_sizes_get failed");
  const count = <usize>load<u32>(sizes);
  const bytes = <usize>load<u32>(sizes, 4);
  if (count > ENV_MAX_VARS || bytes > ENV_BYTES) {
    stderr.str("fl-logreg: the environment has ").int(count).str(" variables in ").int(bytes)
      .str(" bytes; this module reads at most ").int(ENV_MAX_VARS).str(" in ").int(ENV_BYTES).line();
    exit(EXIT_USAGE);
  }
  // node:wasi answers EINVAL to environ_get for an empty environment
  if (count > 0 && environ_get(envPtrs, envBuf) != 0) fail(EXIT_FAILURE, "environ_get failed");
  envCount = count;
}

/** A byte string in linear memory. */
export class Slice {
  constructor(public ptr: usize, public len: usize) {}

  at(i: usize): u32 {
    return <u32>load<u8>(this.ptr + i);
  }
}

/** The value of the environment variable `name` (ASCII), or null when it is not set. */
export function getEnv(name: string): Slice | null {
  const n = <usize>name.length;
  for (let v: usize = 0; v < envCount; v++) {
    const entry = <usize>load<u32>(envPtrs + v * 4);
    let i: usize = 0;
    while (i < n && <u32>load<u8>(entry + i) == <u32>name.charCodeAt(<i32>i)) i++;
    if (i < n || load<u8>(entry + n) != 0x3d) continue; // not NAME=
    const value = entry + n + 1;
    let len: usize = 0;
    while (load<u8>(value + len) != 0) len++;
    return new Slice(value, len);
  }
  return null;
}

// --- stdin ------------------------------------------------------------------------------

/**
 * Reads stdin to its end: its first `cap` bytes go to `dst`, the rest is only
 * counted. Returns the total length; exits with EXIT_USAGE when it cannot read.
 */
export function readStdin(dst: usize, cap: usize): u64 {
  const scratch = memory.data(256);
  let total: u64 = 0;
  while (true) {
    store<u32>(IOV, <u32>scratch);
    store<u32>(IOV, 256, 4);
    const errno = fd_read(STDIN, IOV, 1, COUNT);
    if (errno != 0) {
      stderr.str("fl-logreg: cannot read stdin (WASI errno ").int(errno).str(")").line();
      exit(EXIT_USAGE);
    }
    const n = <usize>load<u32>(COUNT);
    if (n == 0) return total;
    for (let i: usize = 0; i < n; i++) {
      if (total + <u64>i < <u64>cap) store<u8>(dst + <usize>total + i, load<u8>(scratch + i));
    }
    total += <u64>n;
  }
}

// --- abort ------------------------------------------------------------------------------
// Written without Out and without globals (the compiler may need abort before
// they are declared): a 64-byte buffer of its own, passed along.

function writeAscii(fd: u32, buf: usize, s: string): void {
  let n: usize = 0;
  for (let i = 0; i < s.length; i++) {
    if (n == 64) {
      writeAll(fd, buf, n);
      n = 0;
    }
    const c = <u32>s.charCodeAt(i);
    store<u8>(buf + n++, <u8>(c < 0x80 ? c : 0x3f));
  }
  writeAll(fd, buf, n);
}

function writeDecimal(fd: u32, buf: usize, v: u32): void {
  let n: usize = 20;
  do {
    store<u8>(buf + --n, <u8>(0x30 + v % 10));
    v /= 10;
  } while (v > 0);
  writeAll(fd, buf + n, 20 - n);
}

/** asc's abort (assertions, bounds checks, out of memory): one line on stderr, exit 1. */
export function abort(message: string | null, fileName: string | null, line: u32, column: u32): void {
  const buf = memory.data(64);
  writeAscii(STDERR, buf, "fl-logreg: abort: ");
  writeAscii(STDERR, buf, message !== null ? message : "(no message)");
  if (fileName !== null) {
    writeAscii(STDERR, buf, " at ");
    writeAscii(STDERR, buf, fileName);
    writeAscii(STDERR, buf, ":");
    writeDecimal(STDERR, buf, line);
    writeAscii(STDERR, buf, ":");
    writeDecimal(STDERR, buf, column);
  }
  writeAscii(STDERR, buf, "\n");
  proc_exit(EXIT_FAILURE);
}
