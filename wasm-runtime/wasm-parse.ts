// A small, bounded reader for the parts of a core WebAssembly binary the runner
// needs: function signatures of exports (so task inputs become the right JS
// types, BigInt for i64) and memory limits (so the runner can cap them).
//
// Every read is bounds-checked, every LEB128 has a maximum length and every
// vector count is checked against the bytes left, so bad input throws a
// WasmParseError quickly and never loops or allocates without bound.

export type NumType = 'i32' | 'i64' | 'f32' | 'f64';
export type ValType = NumType | 'v128' | 'funcref' | 'externref' | 'ref';

export interface FuncSignature {
  params: ValType[];
  results: ValType[];
}

export interface MemoryLimits {
  /** minimum size in 64 KiB pages */
  min: number;
  /** maximum size in pages, if declared */
  max?: number;
  shared: boolean;
  memory64: boolean;
}

export type ExternKind = 'function' | 'table' | 'memory' | 'global' | 'tag';

export interface ImportEntry {
  module: string;
  name: string;
  kind: ExternKind;
  /** for functions: the type index */
  typeIndex?: number;
  /** for memories */
  memory?: MemoryLimits;
}

export interface ExportEntry {
  name: string;
  kind: ExternKind;
  index: number;
}

/** Where a memory's limits are encoded, for rewriting. Offsets are absolute. */
interface LimitsSpan {
  section: number; // index into sections
  start: number;
  end: number;
  limits: MemoryLimits;
  imported: boolean;
}

interface SectionSpan {
  id: number;
  /** offset of the section id byte */
  start: number;
  /** first byte of the content */
  contentStart: number;
  /** one past the last content byte */
  end: number;
}

export interface ModuleInfo {
  /** function types by type index (null for non-function types) */
  types: (FuncSignature | null)[];
  imports: ImportEntry[];
  /** type index of every function, imported functions first */
  functionTypes: number[];
  /** memories defined by the module itself (imported ones are in imports) */
  memories: MemoryLimits[];
  exports: ExportEntry[];
  /** signatures of the exported functions, by export name */
  signatures: Map<string, FuncSignature>;
  /** @internal */
  sections: SectionSpan[];
  /** @internal */
  memoryLimitSpans: LimitsSpan[];
}

export class WasmParseError extends Error {
  constructor(message: string, readonly offset: number) {
    super(`invalid wasm binary: ${message} at byte ${offset}`);
    this.name = 'WasmParseError';
  }
}

const MAX_NAME_BYTES = 100_000;
const PAGE = 65536;
const textDecoder = new TextDecoder('utf-8', { fatal: true });

/** Bounds-checked reading of a wasm binary from `start` to `end`; every failure is a WasmParseError. */
export class Reader {
  pos: number;
  constructor(readonly bytes: Uint8Array, start: number, readonly end: number) {
    this.pos = start;
  }

  fail(message: string, at = this.pos): never {
    throw new WasmParseError(message, at);
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  u8(): number {
    if (this.pos >= this.end) this.fail('unexpected end');
    return this.bytes[this.pos++]!;
  }

  /** unsigned LEB128, at most 5 bytes, value <= 2^32-1 */
  u32(): number {
    const start = this.pos;
    let result = 0;
    let shift = 0;
    for (let i = 0; i < 5; i++) {
      const byte = this.u8();
      if (i === 4 && byte > 0x0f) this.fail('u32 LEB128 out of range', start);
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7;
    }
    return this.fail('u32 LEB128 too long', start);
  }

  /** unsigned LEB128, at most 10 bytes, as a number (may lose precision above 2^53) */
  u64(): number {
    const start = this.pos;
    let result = 0;
    let shift = 0;
    for (let i = 0; i < 10; i++) {
      const byte = this.u8();
      if (i === 9 && byte > 0x01) this.fail('u64 LEB128 out of range', start);
      result += (byte & 0x7f) * 2 ** shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7;
    }
    return this.fail('u64 LEB128 too long', start);
  }

  /** skips a LEB128 of at most `max` bytes */
  leb(max: number): void {
    const start = this.pos;
    for (let i = 0; i < max; i++) if ((this.u8() & 0x80) === 0) return;
    this.fail('LEB128 too long', start);
  }

  skip(n: number): void {
    if (n > this.remaining) this.fail('unexpected end');
    this.pos += n;
  }

  /** signed LEB128 up to 33 bits (heap types); only its length matters here */
  s33(): number {
    const start = this.pos;
    let result = 0;
    let shift = 0;
    for (let i = 0; i < 5; i++) {
      const byte = this.u8();
      result += (byte & 0x7f) * 2 ** shift;
      shift += 7;
      if ((byte & 0x80) === 0) {
        if (byte & 0x40) result -= 2 ** shift;
        return result;
      }
    }
    return this.fail('s33 LEB128 too long', start);
  }

  /** a vector length; every element takes at least minElementBytes */
  count(what: string, minElementBytes = 1): number {
    const start = this.pos;
    const n = this.u32();
    if (n * minElementBytes > this.remaining) this.fail(`${what} count ${n} exceeds the section size`, start);
    return n;
  }

  name(): string {
    const start = this.pos;
    const len = this.u32();
    if (len > this.remaining) this.fail('name runs past the end of its section', start);
    if (len > MAX_NAME_BYTES) this.fail(`name of ${len} bytes is too long`, start);
    const slice = this.bytes.subarray(this.pos, this.pos + len);
    this.pos += len;
    try {
      return textDecoder.decode(slice);
    } catch {
      return this.fail('name is not valid UTF-8', start);
    }
  }

  valType(): ValType {
    const at = this.pos;
    const b = this.u8();
    switch (b) {
      case 0x7f: return 'i32';
      case 0x7e: return 'i64';
      case 0x7d: return 'f32';
      case 0x7c: return 'f64';
      case 0x7b: return 'v128';
      case 0x70: return 'funcref';
      case 0x6f: return 'externref';
      case 0x63: // (ref null ht)
      case 0x64: // (ref ht)
        this.s33();
        return 'ref';
      default:
        // GC / exception-handling abstract heap type shorthands (anyref, eqref, exnref, ...)
        if (b >= 0x65 && b <= 0x74) return 'ref';
        return this.fail(`unknown value type 0x${b.toString(16)}`, at);
    }
  }

  limits(memory: boolean): MemoryLimits {
    const at = this.pos;
    const flags = this.u8();
    const maxFlags = memory ? 0x07 : 0x05;
    if (flags > maxFlags || (!memory && (flags & 0x02))) {
      this.fail(`unsupported ${memory ? 'memory' : 'table'} limits flags 0x${flags.toString(16)}`, at);
    }
    const is64 = (flags & 0x04) !== 0;
    const min = is64 ? this.u64() : this.u32();
    const max = flags & 0x01 ? (is64 ? this.u64() : this.u32()) : undefined;
    const shared = (flags & 0x02) !== 0;
    if (shared && max === undefined) this.fail('shared memory without a maximum', at);
    return max === undefined ? { min, shared, memory64: is64 } : { min, max, shared, memory64: is64 };
  }
}

function kindOf(byte: number, r: Reader, at: number): ExternKind {
  switch (byte) {
    case 0x00: return 'function';
    case 0x01: return 'table';
    case 0x02: return 'memory';
    case 0x03: return 'global';
    case 0x04: return 'tag';
    default: return r.fail(`unknown external kind 0x${byte.toString(16)}`, at);
  }
}

function parseTypeSection(r: Reader, types: (FuncSignature | null)[]): void {
  const n = r.count('type');
  for (let i = 0; i < n; i++) {
    const at = r.pos;
    const form = r.u8();
    if (form !== 0x60) {
      // rec groups / struct / array types (GC proposal) are not supported here
      r.fail(`unsupported type form 0x${form.toString(16)}`, at);
    }
    const np = r.count('parameter');
    const params: ValType[] = [];
    for (let j = 0; j < np; j++) params.push(r.valType());
    const nr = r.count('result');
    const results: ValType[] = [];
    for (let j = 0; j < nr; j++) results.push(r.valType());
    types.push({ params, results });
  }
}

/** Parses the sections of a core module that matter to the runner. Throws WasmParseError. */
export function parseModule(bytes: Uint8Array): ModuleInfo {
  if (!(bytes instanceof Uint8Array)) throw new TypeError('parseModule expects a Uint8Array');
  const r = new Reader(bytes, 0, bytes.length);
  if (bytes.length < 8) r.fail('too short for a wasm header', 0);
  if (bytes[0] !== 0x00 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) {
    r.fail('bad magic number (not a wasm module)', 0);
  }
  if (bytes[4] !== 0x01 || bytes[5] !== 0x00 || bytes[6] !== 0x00 || bytes[7] !== 0x00) {
    r.fail(`unsupported version ${bytes[4]}.${bytes[5]}.${bytes[6]}.${bytes[7]} (only core modules version 1)`, 4);
  }
  r.pos = 8;

  const info: ModuleInfo = {
    types: [],
    imports: [],
    functionTypes: [],
    memories: [],
    exports: [],
    signatures: new Map(),
    sections: [],
    memoryLimitSpans: [],
  };

  while (r.pos < r.end) {
    const start = r.pos;
    const id = r.u8();
    const sizeAt = r.pos;
    const size = r.u32();
    if (size > r.remaining) r.fail(`section ${id} of ${size} bytes runs past the end of the module`, sizeAt);
    const contentStart = r.pos;
    const end = contentStart + size;
    const sectionIndex = info.sections.length;
    info.sections.push({ id, start, contentStart, end });
    const s = new Reader(bytes, contentStart, end);

    switch (id) {
      case 1:
        parseTypeSection(s, info.types);
        break;
      case 2: {
        const n = s.count('import', 3);
        for (let i = 0; i < n; i++) {
          const module = s.name();
          const name = s.name();
          const kindAt = s.pos;
          const kind = kindOf(s.u8(), s, kindAt);
          const entry: ImportEntry = { module, name, kind };
          if (kind === 'function') {
            entry.typeIndex = s.u32();
            info.functionTypes.push(entry.typeIndex);
          } else if (kind === 'table') {
            s.valType();
            s.limits(false);
          } else if (kind === 'memory') {
            const limitsStart = s.pos;
            entry.memory = s.limits(true);
            info.memoryLimitSpans.push({
              section: sectionIndex,
              start: limitsStart,
              end: s.pos,
              limits: entry.memory,
              imported: true,
            });
          } else if (kind === 'global') {
            s.valType();
            s.u8(); // mutability
          } else {
            s.u8(); // tag attribute
            s.u32(); // type index
          }
          info.imports.push(entry);
        }
        break;
      }
      case 3: {
        const n = s.count('function');
        for (let i = 0; i < n; i++) info.functionTypes.push(s.u32());
        break;
      }
      case 5: {
        const n = s.count('memory');
        for (let i = 0; i < n; i++) {
          const limitsStart = s.pos;
          const limits = s.limits(true);
          info.memories.push(limits);
          info.memoryLimitSpans.push({ section: sectionIndex, start: limitsStart, end: s.pos, limits, imported: false });
        }
        break;
      }
      case 7: {
        const n = s.count('export', 3);
        for (let i = 0; i < n; i++) {
          const name = s.name();
          const kindAt = s.pos;
          const kind = kindOf(s.u8(), s, kindAt);
          const index = s.u32();
          info.exports.push({ name, kind, index });
        }
        break;
      }
      default:
        // custom, table, global, start, element, code, data, datacount, tag: not needed
        break;
    }
    r.pos = end;
  }

  for (const e of info.exports) {
    if (e.kind !== 'function') continue;
    const typeIndex = info.functionTypes[e.index];
    if (typeIndex === undefined) throw new WasmParseError(`export "${e.name}" refers to unknown function ${e.index}`, 0);
    const sig = info.types[typeIndex];
    if (sig === undefined) throw new WasmParseError(`function ${e.index} has unknown type ${typeIndex}`, 0);
    if (sig !== null) info.signatures.set(e.name, { params: [...sig.params], results: [...sig.results] });
  }
  return info;
}

/** Signatures of the exported functions of a core module, by export name. */
export function parseFunctionSignatures(bytes: Uint8Array): Map<string, FuncSignature> {
  return parseModule(bytes).signatures;
}

// ---------------------------------------------------------------------------
// Memory limit rewriting

export class MemoryLimitError extends Error {
  constructor(readonly limitBytes: number, readonly neededBytes: number) {
    super(`memory limit of ${limitBytes} bytes exceeded: the module needs at least ${neededBytes} bytes of memory`);
    this.name = 'MemoryLimitError';
  }
}

function uleb(value: number | bigint): number[] {
  let v = BigInt(value);
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return out;
}

function encodeLimits(l: MemoryLimits): number[] {
  const flags = (l.max !== undefined ? 0x01 : 0) | (l.shared ? 0x02 : 0) | (l.memory64 ? 0x04 : 0);
  return [flags, ...uleb(l.min), ...(l.max !== undefined ? uleb(l.max) : [])];
}

export interface LimitedModule {
  bytes: Uint8Array;
  /** true when at least one memory's maximum was lowered or added */
  changed: boolean;
  /** limits of memory 0 after rewriting (imported or defined), if the module has a memory */
  memory?: MemoryLimits & { imported: boolean; capped: boolean };
}

/**
 * Rewrites every memory's limits (imported or defined) so that its maximum is at
 * most maxPages. Throws MemoryLimitError if a memory's minimum already exceeds it.
 * Returns the original bytes when nothing needs to change.
 */
export function limitMemory(bytes: Uint8Array, maxPages: number, info: ModuleInfo = parseModule(bytes)): LimitedModule {
  if (!Number.isInteger(maxPages) || maxPages < 0) throw new RangeError(`bad page limit ${maxPages}`);
  const edits: { span: LimitsSpan; encoded: number[]; limits: MemoryLimits }[] = [];
  let first: LimitedModule['memory'];
  // imports come before defined memories in the memory index space, and imports are parsed first
  const spans = [...info.memoryLimitSpans].sort((a, b) => Number(b.imported) - Number(a.imported) || a.start - b.start);
  for (const span of spans) {
    const l = span.limits;
    if (l.min > maxPages) throw new MemoryLimitError(maxPages * PAGE, l.min * PAGE);
    const capped = l.max === undefined || l.max > maxPages;
    const limits: MemoryLimits = capped ? { ...l, max: maxPages } : { ...l };
    first ??= { ...limits, imported: span.imported, capped };
    if (capped) edits.push({ span, encoded: encodeLimits(limits), limits });
  }
  if (edits.length === 0) return first ? { bytes, changed: false, memory: first } : { bytes, changed: false };

  // Rebuild from chunks: unchanged sections are copied as they are, sections that
  // hold edited limits are re-encoded with their new size.
  const chunks: Uint8Array[] = [bytes.subarray(0, 8)];
  info.sections.forEach((sec, index) => {
    const mine = edits.filter((e) => e.span.section === index).sort((a, b) => a.span.start - b.span.start);
    if (mine.length === 0) {
      chunks.push(bytes.subarray(sec.start, sec.end));
      return;
    }
    const parts: Uint8Array[] = [];
    let pos = sec.contentStart;
    for (const e of mine) {
      parts.push(bytes.subarray(pos, e.span.start), Uint8Array.from(e.encoded));
      pos = e.span.end;
    }
    parts.push(bytes.subarray(pos, sec.end));
    const size = parts.reduce((n, p) => n + p.length, 0);
    chunks.push(Uint8Array.from([sec.id, ...uleb(size)]), ...parts);
  });
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.length;
  }
  return first ? { bytes: out, changed: true, memory: first } : { bytes: out, changed: true };
}
