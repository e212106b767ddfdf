// Task ids: UUIDs of version 7 (RFC 9562), the millisecond of creation first,
// then a counter within that millisecond, then 62 random bits. Time-ordered,
// so the store's B-trees keyed by task id (the tasks' primary key, the
// history rows) grow at their end: random (version 4) ids put every new task
// on a random page of each, and a commit of a few tasks wrote dozens of pages
// to the WAL (about 50 µs of CPU per task at 60,000 tasks, growing with them).
// Still UUIDs as Propeller's clients expect, and still not guessable in practice.

import { randomFillSync } from 'node:crypto';

const pool = Buffer.alloc(16 * 256);
let used = pool.length;
let lastMs = 0;
let counter = 0;

/** A new task id, greater than every id this process made before. */
export function taskId(now = Date.now()): string {
  // the same or an earlier millisecond (a clock stepped back): count on, moving to the next millisecond when full
  if (now > lastMs) {
    lastMs = now;
    counter = 0;
  } else if (++counter > 0xfff) {
    lastMs++;
    counter = 0;
  }
  if (used === pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  const b = pool.subarray(used, used + 16);
  used += 16;
  b.writeUIntBE(lastMs, 0, 6);
  b[6] = 0x70 | (counter >> 8);
  b[7] = counter & 0xff;
  b[8] = (b[8]! & 0x3f) | 0x80; // the RFC 4122 variant
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
