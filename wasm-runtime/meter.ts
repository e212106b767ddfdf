// Fuel metering for runs on the proplet's own thread. A module that imports
// nothing is a pure function of its inputs: the runner may call it in process
// instead of a worker (a worker round trip cost about as much as the rest of a
// small task), but only if a runaway call cannot hold the event loop (and with
// it the MQTT keepalive). Nothing can interrupt wasm on the calling thread, so
// the module is rewritten to stop itself: a mutable global holds fuel, every
// function entry and every loop header pays for the code it may run before the
// next check (its length in bytes, a bound on its instructions) and traps once
// the fuel is gone. Backward jumps exist only through loops and repeated code
// only through calls, so the fuel bounds the instructions run. A call that runs
// out is run again in a worker (no imports: nothing was observed), with the
// task's real time limit.
//
// Only a conservative opcode set is understood (MVP, sign extension,
// saturating truncation, reference types, multi-value); anything else (bulk
// memory, SIMD, threads, exceptions, tail calls, GC) makes the module
// ineligible and it runs in a worker as before.

import { Reader } from './wasm-parse.ts';

/** Name of the exported fuel global in a metered module. */
export const FUEL_EXPORT = '__propeller_fuel';

/**
 * Fuel of one call on the runner's thread: 0.07 ms (warm) to 0.5 ms (first call) of a tight loop
 * here, far below the MQTT keepalive and far above what a small function needs (add: 10). Kept
 * small on purpose: a call that needs more is better off in a worker, where several run at once on
 * several cores and a round trip (~50 us) is small beside the call.
 */
export const INLINE_FUEL = 1_000_000;

/** Largest module metered: a check pays at most a function body, so small bodies keep the bound tight. */
export const MAX_METERED_BYTES = 64 * 1024;

class Ineligible extends Error {}

const SIMPLE_VALTYPES = new Set([0x7f, 0x7e, 0x7d, 0x7c, 0x70, 0x6f]);

function uleb(n: number): number[] {
  const out: number[] = [];
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    out.push(byte);
  } while (n > 0);
  return out;
}

/** signed LEB128 of a non-negative i32 */
function sleb(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const byte = n & 0x7f;
    n >>>= 7;
    if (n === 0 && (byte & 0x40) === 0) return [...out, byte];
    out.push(byte | 0x80);
  }
}

/** `fuel -= weight; if (fuel < 0) unreachable` */
function check(global: number, weight: number): number[] {
  const g = uleb(global);
  return [0x23, ...g, 0x41, ...sleb(weight), 0x6b, 0x24, ...g, 0x23, ...g, 0x41, 0x00, 0x48, 0x04, 0x40, 0x00, 0x0b];
}

function blockType(c: Reader): void {
  const b = c.bytes[c.pos];
  if (b === 0x40 || (b !== undefined && SIMPLE_VALTYPES.has(b))) c.pos++;
  else c.leb(5); // a type index (s33)
}

/** Where one body gets its checks: [offset in the body, weight] */
function bodyChecks(c: Reader): [number, number][] {
  const start = c.pos;
  const groups = c.u32();
  for (let i = 0; i < groups; i++) {
    c.u32();
    if (!SIMPLE_VALTYPES.has(c.u8())) throw new Ineligible('local type');
  }
  const code = c.pos;
  const checks: [number, number][] = [[code - start, Math.max(1, c.end - code)]];
  /** open blocks: for a loop, the index of its check (its weight is known at its end) and where it began */
  const open: ({ check: number; at: number } | null)[] = [null];
  while (c.pos < c.end) {
    const at = c.pos;
    const op = c.u8();
    switch (op) {
      case 0x02:
      case 0x04:
        blockType(c);
        open.push(null);
        break;
      case 0x03:
        blockType(c);
        checks.push([c.pos - start, 0]);
        open.push({ check: checks.length - 1, at });
        break;
      case 0x0b: {
        const b = open.pop();
        if (b === undefined) throw new Ineligible('unbalanced end');
        if (b) checks[b.check]![1] = Math.max(1, c.pos - b.at);
        break;
      }
      case 0x0c: case 0x0d: case 0x10: case 0x20: case 0x21: case 0x22: case 0x23: case 0x24: case 0x25: case 0x26: case 0xd2:
        c.u32();
        break;
      case 0x0e: {
        const n = c.u32();
        for (let i = 0; i <= n; i++) c.u32();
        break;
      }
      case 0x11:
        c.u32();
        c.u32();
        break;
      case 0x1c: {
        const n = c.u32();
        for (let i = 0; i < n; i++) if (!SIMPLE_VALTYPES.has(c.u8())) throw new Ineligible('select type');
        break;
      }
      case 0x3f:
      case 0x40:
        c.u32();
        break;
      case 0x41:
        c.leb(5);
        break;
      case 0x42:
        c.leb(10);
        break;
      case 0x43:
        c.skip(4);
        break;
      case 0x44:
        c.skip(8);
        break;
      case 0xd0:
        if (!SIMPLE_VALTYPES.has(c.u8())) throw new Ineligible('heap type');
        break;
      case 0xfc: {
        const sub = c.u32();
        if (sub > 7) throw new Ineligible(`0xfc ${sub}`); // bulk memory and table ops: one instruction, unbounded work
        break;
      }
      default:
        if (op >= 0x28 && op <= 0x3e) {
          if (c.u32() >= 64) throw new Ineligible('multi-memory'); // align (bit 6: a memory index follows)
          c.leb(10); // offset
        } else if (!(op <= 0x01 || op === 0x05 || op === 0x0f || op === 0x1a || op === 0x1b || (op >= 0x45 && op <= 0xc4) || op === 0xd1)) {
          throw new Ineligible(`opcode 0x${op.toString(16)}`);
        }
    }
  }
  if (open.length !== 0) throw new Ineligible('body does not end');
  return checks;
}

function section(id: number, content: number[] | Uint8Array): Uint8Array {
  return Uint8Array.from([id, ...uleb(content.length), ...content]);
}

/**
 * The module rewritten to meter itself with `fuel` units (bytes of code), exported as FUEL_EXPORT;
 * or null when it is not eligible to run in process (it imports something, is too large, or
 * uses an instruction outside the understood set).
 */
export function meterModule(bytes: Uint8Array, fuel: number): Uint8Array | null {
  try {
    return meter(bytes, fuel);
  } catch {
    return null; // Ineligible, or bytes the engine will explain when the worker compiles them
  }
}

// section ids in the order they must appear (custom sections aside); 13 (tags) sits between memory and global
const ORDER = [1, 2, 3, 4, 5, 13, 6, 7, 8, 9, 12, 10, 11];
const rank = (id: number) => ORDER.indexOf(id);

function meter(bytes: Uint8Array, fuel: number): Uint8Array {
  if (bytes.length > MAX_METERED_BYTES || bytes.length < 8) throw new Ineligible('size');
  const c = new Reader(bytes, 8, bytes.length);
  const sections: { id: number; start: number; content: number; end: number }[] = [];
  while (c.pos < c.end) {
    const start = c.pos;
    const id = c.u8();
    const size = c.u32();
    const content = c.pos;
    c.skip(size);
    if (id === 2 || id === 13) throw new Ineligible('imports or tags');
    if (id !== 0 && rank(id) < 0) throw new Ineligible(`section ${id}`);
    sections.push({ id, start, content, end: c.pos });
  }
  const find = (id: number) => sections.find((s) => s.id === id);
  const code = find(10);
  if (!code) throw new Ineligible('no code');

  const globals = find(6);
  const globalCount = globals ? new Reader(bytes, globals.content, globals.end).u32() : 0;
  const newGlobal = [0x7f, 0x01, 0x41, ...sleb(fuel), 0x0b];
  const globalSection = globals
    ? (() => {
        const g = new Reader(bytes, globals.content, globals.end);
        g.u32();
        return section(6, [...uleb(globalCount + 1), ...bytes.subarray(g.pos, globals.end), ...newGlobal]);
      })()
    : section(6, [1, ...newGlobal]);

  const name = new TextEncoder().encode(FUEL_EXPORT);
  const newExport = [...uleb(name.length), ...name, 0x03, ...uleb(globalCount)];
  const exports = find(7);
  let exportSection: Uint8Array;
  if (exports) {
    const e = new Reader(bytes, exports.content, exports.end);
    const n = e.u32();
    const listed = e.pos;
    for (let i = 0; i < n; i++) {
      const len = e.u32();
      const at = e.pos;
      e.skip(len);
      if (len === name.length && name.every((b, k) => bytes[at + k] === b)) throw new Ineligible('fuel export taken');
      e.u8();
      e.u32();
    }
    exportSection = section(7, [...uleb(n + 1), ...bytes.subarray(listed, exports.end), ...newExport]);
  } else exportSection = section(7, [1, ...newExport]);

  const k = new Reader(bytes, code.content, code.end);
  const bodies = k.u32();
  const out: number[] = [...uleb(bodies)];
  for (let i = 0; i < bodies; i++) {
    const size = k.u32();
    const start = k.pos;
    const body = new Reader(bytes, start, start + size);
    const checks = bodyChecks(body);
    k.skip(size);
    const parts: number[] = [];
    let from = 0;
    for (const [offset, weight] of checks) {
      for (let j = from; j < offset; j++) parts.push(bytes[start + j]!);
      parts.push(...check(globalCount, weight));
      from = offset;
    }
    for (let j = from; j < size; j++) parts.push(bytes[start + j]!);
    out.push(...uleb(parts.length), ...parts);
  }
  const codeSection = section(10, out);

  const chunks: Uint8Array[] = [bytes.subarray(0, 8)];
  let placedGlobal = false;
  let placedExport = false;
  for (const s of sections) {
    if (!placedGlobal && s.id !== 0 && rank(s.id) > rank(6)) {
      chunks.push(globalSection);
      placedGlobal = true;
    }
    if (!placedExport && s.id !== 0 && rank(s.id) > rank(7)) {
      chunks.push(exportSection);
      placedExport = true;
    }
    if (s.id === 6) {
      chunks.push(globalSection);
      placedGlobal = true;
    } else if (s.id === 7) {
      chunks.push(exportSection);
      placedExport = true;
    } else if (s.id === 10) chunks.push(codeSection);
    else chunks.push(bytes.subarray(s.start, s.end));
  }
  return Buffer.concat(chunks);
}
