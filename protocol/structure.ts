// A pass over the raw bytes of a payload, before any decoder builds objects
// from it. It enforces what a decoder cannot tell afterwards and what must not
// cost anything before it is refused:
//
//   - no map names one key twice: JSON.parse and cbor-x both keep the last
//     value silently, so two readers of one payload (the broker's sender check
//     and the control plane) could otherwise see two different senders;
//   - at most `maxItems` data items (keys, values, array elements) and
//     `maxDepth` nested containers, so that no single message of a valid size
//     (a 4 MiB result with a 350,000-entry map) stalls the event loop;
//   - CBOR: only integer and text-string map keys, only the tags of plain RFC
//     8949 (dates, bignums, self-describe), no trailing bytes.
//
// Aliases (a field's text name and its compact integer key in one map) need
// the schema and are refused by checkStruct.

import { ProtocolError } from './schema.ts';

export interface StructureLimits {
  /** Data items in the whole message: every key, value and array element counts one. */
  maxItems: number;
  /** Containers (maps, arrays, tags) nested inside each other, the message map included. */
  maxDepth: number;
}

const tooComplex = (msg: string): never => {
  throw new ProtocolError('too_complex', msg);
};
const malformed = (msg: string): never => {
  throw new ProtocolError('malformed', msg);
};
const bad = (msg: string): never => malformed(`CBOR does not parse: ${msg}`);
const duplicate = (key: string): never => {
  throw new ProtocolError('duplicate_field', `the key ${JSON.stringify(key)} appears twice in one map`, key);
};

// ---- CBOR ----

/** Tags cbor-x decodes into plain values: date/time (0, 1), bignums (2, 3), self-described CBOR. */
const CBOR_TAGS = new Set([0, 1, 2, 3, 55799]);

// The walk keeps its state in module variables and reads heads into them, so
// that checking a message allocates nothing but each map's set of keys: the
// broker and the control plane both run it on every heartbeat. It never
// re-enters (no callbacks), and lets go of the payload when it ends.
const NO_BYTES = new Uint8Array(0);
let b: Uint8Array = NO_BYTES;
let pos = 0;
let items = 0;
let lim: StructureLimits = { maxItems: 0, maxDepth: 0 };
// the head last read by head()
let hMajor = 0;
let hAi = 0;
let hVal = 0;
let hBig: bigint | undefined;

export function checkCborStructure(bytes: Uint8Array, limits: StructureLimits): void {
  b = bytes;
  pos = 0;
  items = 0;
  lim = limits;
  top = 0;
  try {
    item(0);
    if (pos !== b.length) bad(`${b.length - pos} bytes after the CBOR item`);
  } finally {
    b = NO_BYTES;
    keys.length = 0;
  }
}

// the argument of the head at `pos` into hMajor/hAi/hVal/hBig; advances pos past the head
function head(): void {
  if (pos >= b.length) bad('CBOR ends in the middle of an item');
  const ib = b[pos++]!;
  hMajor = ib >> 5;
  hAi = ib & 31;
  hBig = undefined;
  if (hAi < 24) {
    hVal = hAi;
    return;
  }
  const n = hAi === 24 ? 1 : hAi === 25 ? 2 : hAi === 26 ? 4 : hAi === 27 ? 8 : 0;
  if (n === 0) {
    if (hAi === 31) {
      hVal = -1;
      return;
    }
    bad(`reserved CBOR additional information ${hAi}`);
  }
  if (pos + n > b.length) bad('CBOR ends in the middle of an item');
  if (n === 1) hVal = b[pos]!;
  else if (n === 2) hVal = b[pos]! * 0x100 + b[pos + 1]!;
  else if (n === 4) hVal = b[pos]! * 0x1000000 + b[pos + 1]! * 0x10000 + b[pos + 2]! * 0x100 + b[pos + 3]!;
  else {
    hBig = new DataView(b.buffer, b.byteOffset, b.byteLength).getBigUint64(pos);
    hVal = Number(hBig);
  }
  pos += n;
}

function count(): void {
  if (++items > lim.maxItems) tooComplex(`more than ${lim.maxItems} items in one message`);
}

function skipBytes(len: number): void {
  if (len > b.length - pos) bad('CBOR ends in the middle of a string');
  pos += len;
}

// true, and past it, when the next byte is the break that ends an indefinite-length item
function atBreak(what: string): boolean {
  if (pos >= b.length) bad(`CBOR ends in the middle of a ${what}`);
  if (b[pos] !== 0xff) return false;
  pos++;
  return true;
}

// one string (major 2 or 3) whose head was just read, definite or indefinite
function string(major: number, ai: number, val: number): void {
  if (ai !== 31) {
    skipBytes(val);
    return;
  }
  while (!atBreak('string')) {
    head();
    if (hMajor !== major || hAi === 31) bad('an indefinite-length string holds a chunk of another type');
    skipBytes(hVal);
  }
}

// a map key's identity: the value a decoder would produce, so 1 and 0x18 0x01 are one key
function key(): string {
  head();
  count();
  if (hMajor === 0) return `#${hBig ?? hVal}`;
  if (hMajor === 1) return `#${hBig !== undefined ? -1n - hBig : -1 - hVal}`;
  if (hMajor === 3 && hAi !== 31) {
    const s = pos;
    skipBytes(hVal);
    return Buffer.from(b.buffer, b.byteOffset + s, pos - s).toString('utf8');
  }
  return bad('CBOR map keys must be integers or definite-length text strings');
}

// The keys of the maps being walked, innermost last: a map of up to SMALL_MAP
// entries is checked for a repeated key by a scan of its own slice, a larger
// one with a Set.
const SMALL_MAP = 16;
const keys: string[] = [];
let top = 0;

function entry(seen: Set<string> | undefined, from: number, depth: number): void {
  const k = key();
  if (seen) {
    if (seen.has(k)) duplicate(k.startsWith('#') ? k.slice(1) : k);
    seen.add(k);
  } else {
    for (let i = from; i < top; i++) if (keys[i] === k) duplicate(k.startsWith('#') ? k.slice(1) : k);
    keys[top++] = k;
  }
  item(depth + 1);
}

function item(depth: number): void {
  head();
  count();
  const major = hMajor;
  const ai = hAi;
  const val = hVal;
  switch (major) {
    case 0:
    case 1:
      if (ai === 31) bad('an integer cannot have indefinite length');
      return;
    case 2:
    case 3:
      string(major, ai, val);
      return;
    case 4:
    case 5: {
      if (depth + 1 > lim.maxDepth) tooComplex(`nested deeper than ${lim.maxDepth}`);
      if (major === 4) {
        if (ai === 31) {
          while (!atBreak('container')) item(depth + 1);
          return;
        }
        // each element takes at least one byte: a bigger count cannot be honest
        if (val > b.length - pos) bad('CBOR container longer than the payload');
        for (let i = 0; i < val; i++) item(depth + 1);
        return;
      }
      // a map: each entry takes at least two bytes
      if (ai !== 31 && val > (b.length - pos) / 2) bad('CBOR container longer than the payload');
      const seen = ai === 31 || val > SMALL_MAP ? new Set<string>() : undefined;
      const from = top;
      try {
        if (ai !== 31) for (let i = 0; i < val; i++) entry(seen, from, depth);
        else while (!atBreak('container')) entry(seen, from, depth);
      } finally {
        top = from;
      }
      return;
    }
    case 6:
      if (ai === 31 || !CBOR_TAGS.has(val)) bad(`unsupported CBOR tag ${hBig ?? val}`);
      if (depth + 1 > lim.maxDepth) tooComplex(`nested deeper than ${lim.maxDepth}`);
      item(depth + 1);
      return;
    default:
      // simple values and floats; a lone break code is not an item
      if (ai === 31) bad('unexpected CBOR break');
      return;
  }
}

// ---- JSON ----

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

/** Checks JSON text; syntax errors other than structure are left to JSON.parse. */
export function checkJsonStructure(s: string, lim: StructureLimits): void {
  let pos = 0;
  let items = 0;
  const n = s.length;

  const ws = (): void => {
    while (pos < n && WS.has(s.charCodeAt(pos))) pos++;
  };
  const count = (): void => {
    if (++items > lim.maxItems) tooComplex(`more than ${lim.maxItems} items in one message`);
  };
  // a string starting at pos (a '"'); returns its value only when asked (keys)
  const string = (want: boolean): string => {
    const start = pos;
    let i = pos + 1;
    for (;;) {
      const q = s.indexOf('"', i);
      if (q < 0) return malformed('JSON does not parse: unterminated string');
      let bs = 0;
      for (let j = q - 1; j > start && s.charCodeAt(j) === 0x5c; j--) bs++;
      i = q + 1;
      if (bs % 2 === 0) break;
    }
    pos = i;
    if (!want) return '';
    const raw = s.slice(start + 1, i - 1);
    if (!raw.includes('\\')) return raw;
    try {
      return JSON.parse(s.slice(start, i)) as string;
    } catch {
      return malformed('JSON does not parse: bad string escape');
    }
  };

  const value = (depth: number): void => {
    ws();
    if (pos >= n) malformed('JSON does not parse: unexpected end');
    count();
    const c = s.charCodeAt(pos);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (depth + 1 > lim.maxDepth) tooComplex(`nested deeper than ${lim.maxDepth}`);
      const isObj = c === 0x7b;
      const close = isObj ? 0x7d : 0x5d;
      const seen = isObj ? new Set<string>() : undefined;
      pos++;
      ws();
      if (s.charCodeAt(pos) === close) {
        pos++;
        return;
      }
      for (;;) {
        if (seen) {
          ws();
          if (s.charCodeAt(pos) !== 0x22) malformed('JSON does not parse: expected a key');
          count();
          const k = string(true);
          if (seen.has(k)) duplicate(k);
          seen.add(k);
          ws();
          if (s.charCodeAt(pos) !== 0x3a) malformed("JSON does not parse: expected ':'");
          pos++;
        }
        value(depth + 1);
        ws();
        const d = s.charCodeAt(pos++);
        if (d === close) return;
        if (d !== 0x2c) malformed(`JSON does not parse: expected ',' or '${String.fromCharCode(close)}'`);
      }
    }
    if (c === 0x22) {
      string(false);
      return;
    }
    // number, true, false, null: JSON.parse checks the spelling
    const start = pos;
    while (pos < n) {
      const d = s.charCodeAt(pos);
      if (d === 0x2c || d === 0x7d || d === 0x5d || WS.has(d)) break;
      pos++;
    }
    if (pos === start) malformed('JSON does not parse: unexpected character');
  };

  value(0);
  ws();
  if (pos !== n) malformed('JSON does not parse: data after the value');
}
