// The signature of one exported function of a core wasm module, read from its
// type, import, function and export sections: enough for the control plane to
// tell whether a device that calls only `main(i32...)` can run a module,
// before it sends one that device would fail on silently.

export type ValType = 'i32' | 'i64' | 'f32' | 'f64' | 'other';
export interface Signature {
  params: ValType[];
  results: ValType[];
}

const VAL: Record<number, ValType> = { 0x7f: 'i32', 0x7e: 'i64', 0x7d: 'f32', 0x7c: 'f64' };

class Reader {
  pos = 0;
  constructor(readonly b: Uint8Array) {}
  byte(): number {
    if (this.pos >= this.b.length) throw new Error('truncated module');
    return this.b[this.pos++]!;
  }
  u32(): number {
    let result = 0;
    for (let shift = 0; shift < 35; shift += 7) {
      const x = this.byte();
      result += (x & 0x7f) * 2 ** shift;
      if (!(x & 0x80)) return result;
    }
    throw new Error('bad LEB128');
  }
  name(): string {
    const n = this.u32();
    if (this.pos + n > this.b.length) throw new Error('truncated name');
    const s = Buffer.from(this.b.subarray(this.pos, this.pos + n)).toString('utf8');
    this.pos += n;
    return s;
  }
  skipLimits(): void {
    const flags = this.byte();
    this.u32();
    if (flags & 1) this.u32();
  }
}

/** The signature of export `name`, or why there is none (not wasm, no such export, not a function). */
export function functionExport(bytes: Uint8Array, name: string): Signature | string {
  try {
    if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) return 'not a WebAssembly module';
    const r = new Reader(bytes);
    r.pos = 8;
    const types: Signature[] = [];
    const funcTypes: number[] = []; // imported functions first, then defined ones
    let found: number | undefined;
    while (r.pos < bytes.length) {
      const id = r.byte();
      const size = r.u32();
      const end = r.pos + size;
      if (id === 1) {
        for (let n = r.u32(); n > 0; n--) {
          if (r.byte() !== 0x60) return 'unsupported type section';
          const params = Array.from({ length: r.u32() }, () => VAL[r.byte()] ?? 'other');
          const results = Array.from({ length: r.u32() }, () => VAL[r.byte()] ?? 'other');
          types.push({ params, results });
        }
      } else if (id === 2) {
        for (let n = r.u32(); n > 0; n--) {
          r.name();
          r.name();
          const kind = r.byte();
          if (kind === 0) funcTypes.push(r.u32());
          else if (kind === 1) (r.byte(), r.skipLimits());
          else if (kind === 2) r.skipLimits();
          else if (kind === 3) (r.byte(), r.byte());
          else r.u32();
        }
      } else if (id === 3) {
        for (let n = r.u32(); n > 0; n--) funcTypes.push(r.u32());
      } else if (id === 7) {
        for (let n = r.u32(); n > 0; n--) {
          const exportName = r.name();
          const kind = r.byte();
          const index = r.u32();
          if (exportName === name) {
            if (kind !== 0) return `export ${name} is not a function`;
            found = index;
          }
        }
      }
      r.pos = end;
    }
    if (found === undefined) return `the module has no export ${name}`;
    const sig = types[funcTypes[found] ?? -1];
    return sig ?? 'malformed module: export names an unknown function';
  } catch (e) {
    return `malformed module: ${(e as Error).message}`;
  }
}
