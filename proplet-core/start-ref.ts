// The task id, attempt and addressee of a start this proplet cannot decode
// (too large for its buffer, a module over the protocol's limit, a field out of
// range), so that it is refused with the reason instead of silently lost.

import { decodeRaw, isId, StartFields } from '../protocol/index.ts';

// A start that is too large for the receive buffer. A firmware sees
// only the first bytes of such a message (esp-mqtt hands it over in pieces);
// the task id and attempt come first in the compact form (keys 1 and 4, after
// `v`, `name` and `proplet_id`), so they can be read from that prefix without
// decoding the rest, and the task refused instead of silently lost.

export interface StartRef {
  id: string;
  attempt?: number;
  proplet_id?: string;
}

interface Head {
  major: number;
  value: number;
  len: number;
}

function head(b: Uint8Array, i: number): Head | undefined {
  if (i >= b.length) return undefined;
  const ib = b[i]!;
  const major = ib >> 5;
  const info = ib & 31;
  if (info < 24) return { major, value: info, len: 1 };
  const n = info === 24 ? 1 : info === 25 ? 2 : info === 26 ? 4 : 0;
  if (n === 0 || i + 1 + n > b.length) return undefined; // 64-bit or indefinite: not needed here
  let value = 0;
  for (let k = 1; k <= n; k++) value = value * 256 + b[i + k]!;
  return { major, value, len: 1 + n };
}

function uuidText(b: Uint8Array): string {
  const h = Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * The task id (key 1), proplet id (key 3) and attempt (key 4) of a compact
 * start, read from its first bytes only; undefined when they are not there.
 */
export function peekStart(prefix: Uint8Array): StartRef | undefined {
  const m = head(prefix, 0);
  if (!m || m.major !== 5) return undefined;
  let i = m.len;
  const out: Partial<StartRef> = {};
  for (let n = 0; n < Math.min(m.value, 8); n++) {
    const k = head(prefix, i);
    if (!k || k.major !== 0 || k.value > 4) break; // keys come in ascending order: past 4, nothing more to read
    i += k.len;
    const v = head(prefix, i);
    if (!v) break;
    if (v.major === 0 || v.major === 1 || v.major === 7) {
      if (k.value === 4 && v.major === 0) out.attempt = v.value;
      i += v.len;
    } else if (v.major === 2 || v.major === 3) {
      const end = i + v.len + v.value;
      if (end > prefix.length) break;
      const raw = prefix.subarray(i + v.len, end);
      if (k.value === 1 || k.value === 3) {
        const s = v.major === 2 ? (raw.length === 16 ? uuidText(raw) : undefined) : Buffer.from(raw).toString('utf8');
        if (s !== undefined && isId(s)) {
          if (k.value === 1) out.id = s;
          else out.proplet_id = s;
        }
      }
      i = end;
    } else break;
  }
  return out.id ? (out as StartRef) : undefined;
}

/**
 * The task id, addressee and attempt of a start that failed to decode, read
 * leniently from the whole payload; `prefixOnly` reads only the compact form's
 * first bytes (a device that could not hold the payload).
 */
export function readStartRef(payload: Uint8Array, prefixOnly?: number): StartRef | undefined {
  if (prefixOnly !== undefined) return peekStart(payload.subarray(0, prefixOnly));
  let value: unknown;
  try {
    value = decodeRaw(payload).value;
  } catch {
    return peekStart(payload.subarray(0, 4096)); // a CBOR map cut short still has its first keys
  }
  const get = (name: 'id' | 'attempt' | 'proplet_id'): unknown => {
    if (value instanceof Map) return value.has(name) ? value.get(name) : value.get(StartFields[name]!.key);
    if (value !== null && typeof value === 'object') return (value as Record<string, unknown>)[name];
    return undefined;
  };
  const text = (v: unknown) => (v instanceof Uint8Array && v.length === 16 ? uuidText(v) : typeof v === 'string' && isId(v) ? v : undefined);
  const id = text(get('id'));
  if (!id) return undefined;
  const out: StartRef = { id };
  const pid = text(get('proplet_id'));
  if (pid) out.proplet_id = pid;
  const a = get('attempt');
  if (typeof a === 'number' && Number.isSafeInteger(a) && a >= 0) out.attempt = a;
  return out;
}
