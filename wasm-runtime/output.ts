// How a task's output is cut when it exceeds a limit: the marker is part of the
// limit, so cut output still fits wherever the limit came from (the protocol's
// result fields, a device's packet buffer), and the cut never splits a UTF-8
// sequence (a split one would decode to a longer U+FFFD).

export const TRUNCATED_MARKER = '…[truncated]';
const MARKER_BYTES = Buffer.byteLength(TRUNCATED_MARKER);

/** The longest prefix of `b` of at most `max` bytes that ends on a UTF-8 character boundary. */
export function utf8Prefix(b: Uint8Array, max: number): Uint8Array {
  if (b.length <= max) return b;
  let end = Math.max(0, max);
  while (end > 0 && (b[end]! & 0xc0) === 0x80) end--; // b[end] continues a sequence: cut before its start
  return b.subarray(0, end);
}

/** Output bytes as text of at most `limitBytes` UTF-8 bytes (so at most as many characters), marked when cut. */
export function clipBytes(b: Uint8Array, limitBytes: number, truncated = false): string {
  if (!truncated && b.length <= limitBytes) return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('utf8');
  if (limitBytes < MARKER_BYTES) return '';
  const head = utf8Prefix(b, limitBytes - MARKER_BYTES);
  let text = Buffer.from(head.buffer, head.byteOffset, head.byteLength).toString('utf8');
  // invalid UTF-8 in the output decodes to 3-byte U+FFFD: trim until it fits again
  while (Buffer.byteLength(text) + MARKER_BYTES > limitBytes) text = text.slice(0, Math.floor(text.length * 0.9));
  return text + TRUNCATED_MARKER;
}

/** `s` cut to at most `limitBytes` UTF-8 bytes, marker included. */
export function clipText(s: string, limitBytes: number): string {
  if (s.length <= limitBytes / 3 || Buffer.byteLength(s) <= limitBytes) return s;
  return clipBytes(Buffer.from(s), limitBytes, true);
}
