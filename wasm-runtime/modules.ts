// Turns wasm bytes into a WebAssembly.Module plus the facts a run needs
// (command or core module, export signatures, memory import, memory cap), with
// the module's memory maximum rewritten to the run's memory limit. Results are
// cached by (sha256 of the bytes, page limit).
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import {
  limitMemory,
  MemoryLimitError,
  parseModule,
  WasmParseError,
  type FuncSignature,
  type ModuleInfo,
} from './wasm-parse.ts';
import { INLINE_FUEL, meterModule } from './meter.ts';

export const PAGE_BYTES = 65536;
/** wasm32 memories cannot exceed 4 GiB */
const MAX_PAGES = 65536;

export interface MemoryImportInfo {
  module: string;
  name: string;
  initial: number;
  maximum: number | undefined;
  shared: boolean;
}

export interface ModuleMeta {
  /** has a `_start` export: run as a WASI command */
  command: boolean;
  /** names of the exported functions */
  exportNames: string[];
  /** export signatures, when the bytes were parsed */
  signatures: Map<string, FuncSignature> | null;
  /** imports anything from wasi_snapshot_preview1 (or is a command) */
  needsWasi: boolean;
  memoryImport: MemoryImportInfo | null;
  /** page limit this module was compiled for (null: no limit applied) */
  capPages: number | null;
  /** memory 0's maximum was lowered/added to capPages by the runner */
  capped: boolean;
  /** the original bytes, to recompile for another limit */
  bytes: Uint8Array | null;
  digest: string | null;
}

export interface PreparedModule {
  module: WebAssembly.Module;
  meta: ModuleMeta;
  /** The same code metering itself (meter.ts), when the module may run on the runner's own thread: it imports nothing. */
  metered?: WebAssembly.Module;
}

/** Thrown for modules that cannot be prepared; the message is the run's error. */
export class PrepareError extends Error {}

const registry = new WeakMap<WebAssembly.Module, ModuleMeta>();
const foreignCache = new WeakMap<WebAssembly.Module, ModuleMeta>();
const cache = new LRUCache<string, Promise<PreparedModule>>({ max: 128 });

export function capPagesFor(maxMemoryBytes: number): number | null {
  if (!(maxMemoryBytes > 0) || !Number.isFinite(maxMemoryBytes)) return null;
  return Math.min(Math.floor(maxMemoryBytes / PAGE_BYTES), MAX_PAGES);
}

/** The DOM typings only take ArrayBuffer-backed views; the engine takes any view. */
function source(bytes: Uint8Array): BufferSource {
  return bytes as Uint8Array<ArrayBuffer>;
}

function digestOf(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function metaFromInfo(info: ModuleInfo, capPages: number | null, capped: boolean, bytes: Uint8Array, digest: string): ModuleMeta {
  const fnExports = info.exports.filter((e) => e.kind === 'function').map((e) => e.name);
  const command = fnExports.includes('_start');
  const memImport = info.imports.find((i) => i.kind === 'memory');
  let memoryImport: MemoryImportInfo | null = null;
  if (memImport?.memory) {
    const m = memImport.memory;
    if (m.memory64) throw new PrepareError('64-bit memories are not supported');
    const maximum = capPages === null ? m.max : Math.min(m.max ?? capPages, capPages);
    memoryImport = { module: memImport.module, name: memImport.name, initial: m.min, maximum, shared: m.shared };
  }
  return {
    command,
    exportNames: fnExports,
    signatures: info.signatures,
    needsWasi: command || info.imports.some((i) => i.module === 'wasi_snapshot_preview1'),
    memoryImport,
    capPages,
    capped,
    bytes,
    digest,
  };
}

async function compileFresh(bytes: Uint8Array, capPages: number | null, digest: string): Promise<PreparedModule> {
  let info: ModuleInfo;
  try {
    info = parseModule(bytes);
  } catch (err) {
    if (!(err instanceof WasmParseError)) throw err;
    // Let the engine explain a broken module; our parser only refuses what it does not support.
    if (!WebAssembly.validate(source(bytes))) await WebAssembly.compile(source(bytes));
    throw new PrepareError(`unsupported module: ${err.message}`);
  }
  let code = bytes;
  let capped = false;
  if (capPages !== null) {
    try {
      const limited = limitMemory(bytes, capPages, info);
      code = limited.bytes;
      capped = limited.memory?.capped ?? false;
    } catch (err) {
      if (err instanceof MemoryLimitError) throw new PrepareError(err.message);
      throw err;
    }
  }
  const command = info.exports.some((e) => e.kind === 'function' && e.name === '_start');
  const meteredBytes = info.imports.length === 0 && !command ? meterModule(code, INLINE_FUEL) : null;
  // both at once (the engine compiles off this thread): the first run waits for one compile, not two
  const [module, metered] = await Promise.all([
    WebAssembly.compile(source(code)),
    // a rewrite the engine refuses leaves the module to workers
    meteredBytes ? WebAssembly.compile(source(meteredBytes)).catch(() => undefined) : undefined,
  ]);
  const meta = metaFromInfo(info, capPages, capped, bytes, digest);
  registry.set(module, meta);
  return metered ? { module, meta, metered } : { module, meta };
}

/** Compiles (or takes from the cache) bytes for the given memory limit. */
export function prepareBytes(bytes: Uint8Array, maxMemoryBytes: number, digest = digestOf(bytes)): Promise<PreparedModule> {
  const capPages = capPagesFor(maxMemoryBytes);
  const key = `${digest}:${capPages ?? 'none'}`;
  let p = cache.get(key);
  if (!p) {
    p = compileFresh(bytes, capPages, digest);
    cache.set(key, p);
    p.catch(() => cache.delete(key));
  }
  return p;
}

/**
 * Compiles wasm bytes with their memory capped at maxMemoryBytes. A Module made
 * here carries its metadata, so WasmRunner.run() can use it (and recompile it
 * from the same bytes if a run asks for another memory limit).
 */
export async function compileModule(bytes: Uint8Array, opts: { maxMemoryBytes?: number } = {}): Promise<WebAssembly.Module> {
  return (await prepareBytes(bytes, opts.maxMemoryBytes ?? 0)).module;
}

/** Metadata for a Module the runner did not compile: only what the JS API reveals. */
function foreignMeta(module: WebAssembly.Module): ModuleMeta {
  const exports = WebAssembly.Module.exports(module);
  const imports = WebAssembly.Module.imports(module);
  const fnExports = exports.filter((e) => e.kind === 'function').map((e) => e.name);
  const memImport = imports.find((i) => i.kind === 'memory');
  if (memImport) {
    throw new PrepareError(
      `module imports its memory (${memImport.module}.${memImport.name}); pass the wasm bytes so its limits can be read`,
    );
  }
  return {
    command: fnExports.includes('_start'),
    exportNames: fnExports,
    signatures: null,
    needsWasi: fnExports.includes('_start') || imports.some((i) => i.module === 'wasi_snapshot_preview1'),
    memoryImport: null,
    capPages: null,
    capped: false,
    bytes: null,
    digest: null,
  };
}

/** Module or bytes -> a module compiled for this memory limit, with its metadata. */
export async function prepare(input: WebAssembly.Module | Uint8Array, maxMemoryBytes: number, digest?: string): Promise<PreparedModule> {
  if (input instanceof Uint8Array) return prepareBytes(input, maxMemoryBytes, digest?.replace(/^sha256:/, ''));
  if (!(input instanceof WebAssembly.Module)) throw new PrepareError('module must be a WebAssembly.Module or the wasm bytes');
  const meta = registry.get(input);
  if (meta) {
    if (meta.capPages === capPagesFor(maxMemoryBytes)) return { module: input, meta };
    if (meta.bytes) return prepareBytes(meta.bytes, maxMemoryBytes, meta.digest ?? undefined);
  }
  // A module compiled elsewhere: its memory cannot be capped; the worker checks the size afterwards.
  let foreign = foreignCache.get(input);
  if (!foreign) {
    foreign = foreignMeta(input);
    foreignCache.set(input, foreign);
  }
  return { module: input, meta: foreign };
}
