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

export function checkCborStructure(b: Uint8Array, lim: StructureLimits): void {
  let pos = 0;
  let items = 0;
  const view = new DataView(b.buffer, b.byteOffset, b.byteLength);

  // the argument of the head at `pos`; advances pos past the head
  const head = (): { major: number; ai: number; val: number; big?: bigint } => {
    if (pos >= b.length) bad('CBOR ends in the middle of an item');
    const ib = b[pos++]!;
    const major = ib >> 5;
    const ai = ib & 31;
    if (ai < 24) return { major, ai, val: ai };
    const n = ai === 24 ? 1 : ai === 25 ? 2 : ai === 26 ? 4 : ai === 27 ? 8 : 0;
    if (n === 0) {
      if (ai === 31) return { major, ai, val: -1 };
      return bad(`reserved CBOR additional information ${ai}`);
    }
    if (pos + n > b.length) bad('CBOR ends in the middle of an item');
    let val: number;
    let big: bigint | undefined;
    if (n === 1) val = b[pos]!;
    else if (n === 2) val = view.getUint16(pos);
    else if (n === 4) val = view.getUint32(pos);
    else {
      big = view.getBigUint64(pos);
      val = Number(big);
    }
    pos += n;
    return { major, ai, val, big };
  };

  const count = (): void => {
    if (++items > lim.maxItems) tooComplex(`more than ${lim.maxItems} items in one message`);
  };

  const skipBytes = (len: number): void => {
    if (len > b.length - pos) bad('CBOR ends in the middle of a string');
    pos += len;
  };

  // one string (major 2 or 3), definite or indefinite; returns its bytes' range when definite
  const string = (h: { major: number; ai: number; val: number }): [number, number] | undefined => {
    if (h.ai !== 31) {
      const start = pos;
      skipBytes(h.val);
      return [start, pos];
    }
    for (;;) {
      if (pos >= b.length) bad('CBOR ends in the middle of a string');
      if (b[pos] === 0xff) {
        pos++;
        return undefined;
      }
      const c = head();
      if (c.major !== h.major || c.ai === 31) bad('an indefinite-length string holds a chunk of another type');
      skipBytes(c.val);
    }
  };

  // a map key's identity: the value a decoder would produce, so 1 and 0x18 0x01 are one key
  const key = (): string => {
    const h = head();
    count();
    if (h.major === 0) return `#${h.big ?? h.val}`;
    if (h.major === 1) return `#${h.big !== undefined ? -1n - h.big : -1 - h.val}`;
    if (h.major === 3 && h.ai !== 31) {
      const [s, e] = string(h)!;
      return Buffer.from(b.buffer, b.byteOffset + s, e - s).toString('utf8');
    }
    return bad('CBOR map keys must be integers or definite-length text strings');
  };

  const item = (depth: number): void => {
    const h = head();
    count();
    switch (h.major) {
      case 0:
      case 1:
        if (h.ai === 31) bad('an integer cannot have indefinite length');
        return;
      case 2:
      case 3:
        string(h);
        return;
      case 4:
      case 5: {
        if (depth + 1 > lim.maxDepth) tooComplex(`nested deeper than ${lim.maxDepth}`);
        const isMap = h.major === 5;
        const seen = isMap ? new Set<string>() : undefined;
        const entry = (): void => {
          if (seen) {
            const k = key();
            if (seen.has(k)) duplicate(k.startsWith('#') ? k.slice(1) : k);
            seen.add(k);
          }
          item(depth + 1);
        };
        if (h.ai === 31) {
          for (;;) {
            if (pos >= b.length) bad('CBOR ends in the middle of a container');
            if (b[pos] === 0xff) {
              pos++;
              return;
            }
            entry();
          }
        }
        // each entry takes at least one byte (two for a map): a bigger count cannot be honest
        if (h.val > (b.length - pos) / (isMap ? 2 : 1)) bad('CBOR container longer than the payload');
        for (let i = 0; i < h.val; i++) entry();
        return;
      }
      case 6:
        if (h.ai === 31 || !CBOR_TAGS.has(h.val)) bad(`unsupported CBOR tag ${h.big ?? h.val}`);
        if (depth + 1 > lim.maxDepth) tooComplex(`nested deeper than ${lim.maxDepth}`);
        item(depth + 1);
        return;
      default:
        // simple values and floats; a lone break code is not an item
        if (h.ai === 31) bad('unexpected CBOR break');
        return;
    }
  };

  item(0);
  if (pos !== b.length) bad(`${b.length - pos} bytes after the CBOR item`);
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
