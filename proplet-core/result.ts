// A result that fits the protocol: every text field within its schema limit and
// the whole message within the payload limit of its kind, whatever the task
// printed (JSON escapes can make output several times longer on the wire). A
// result that does not fit would be dropped by the control plane as invalid,
// and the task run again for nothing.

import { encode, MAX_PAYLOAD, ResultFields, type Encoding, type Result } from '../protocol/index.ts';
import { clipText, TRUNCATED_MARKER } from '../wasm-runtime/output.ts';

const MARKER_BYTES = Buffer.byteLength(TRUNCATED_MARKER);

function maxChars(field: 'stdout' | 'stderr' | 'error'): number {
  const t = ResultFields[field]!.type;
  return t.t === 'str' ? t.max : 4096;
}

/** The encoded result, its output cut as needed to fit `maxBytes` (the protocol's limit by default). */
export function encodeResult(r: Result, encoding: Encoding, maxBytes = MAX_PAYLOAD['proplet.results']): Buffer {
  // clipText counts UTF-8 bytes, never fewer than the characters the schema counts
  let out = clipped(r, maxChars('stdout'), maxChars('stderr'));
  let bytes = encode('proplet.results', out, encoding);
  for (let i = 0; bytes.length > maxBytes && i < 40; i++) {
    const so = Buffer.byteLength(out.stdout ?? '');
    const se = Buffer.byteLength(out.stderr ?? '');
    const over = bytes.length - maxBytes;
    // cut the longer stream by what is over (at least by a tenth, for escapes that weigh more than a byte)
    const cut = (n: number) => Math.max(MARKER_BYTES, Math.min(n - over, Math.floor(n * 0.9)));
    out = so >= se ? clipped(out, cut(so), se) : clipped(out, so, cut(se));
    bytes = encode('proplet.results', out, encoding);
  }
  return bytes;
}

function clipped(r: Result, stdout: number, stderr: number): Result {
  const o = { ...r };
  if (o.stdout !== undefined) o.stdout = clipText(o.stdout, stdout);
  if (o.stderr !== undefined) o.stderr = clipText(o.stderr, stderr);
  if (o.error !== undefined) o.error = clipText(o.error, maxChars('error'));
  return o;
}
