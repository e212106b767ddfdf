// Every message the constrained profile sends, built in one place so the
// device, docs/mcu.md and the independent-decoder test use the same bytes.
// All of them go out as compact CBOR (integer keys, enum indices, a lowercase
// UUID id as 16 bytes) on the shared proplet-to-manager topics, with the
// sender id in the payload.

import { encode, isId, type Alive, type ChunkRequest, type Register, type Result, type TaskRef } from '../protocol/index.ts';

export interface DeviceProfile {
  id: string;
  name: string;
  deviceType: string;
  capabilities: string[];
  labels: Record<string, string>;
  wasmRuntime: string;
  ramBudgetBytes: number;
  maxTasks: number;
  maxModuleBytes: number;
  rxBufferBytes: number;
}

export function registerMsg(p: DeviceProfile, running: TaskRef[]): Register {
  return {
    v: 1,
    proplet_id: p.id,
    name: p.name,
    device_type: p.deviceType,
    capabilities: p.capabilities,
    labels: p.labels,
    capacity: { memory_bytes: p.ramBudgetBytes, max_tasks: p.maxTasks, max_module_bytes: p.maxModuleBytes, max_packet_bytes: p.rxBufferBytes },
    wasm_runtime: p.wasmRuntime,
    encoding: 'cbor',
    addressing: 'direct',
    running,
    proplet_type: 'external',
  };
}

/** The heartbeat: no `v` (absent means 1), the load, and what runs (an empty list costs 2 bytes). */
export function aliveMsg(id: string, running: TaskRef[], memoryUsed: number): Alive {
  return { proplet_id: id, status: 'alive', running_tasks: running.length, memory_used: memoryUsed, running };
}

/** The last will, set at CONNECT and published by the broker when the connection dies. */
export function willMsg(id: string): Alive {
  return { proplet_id: id, status: 'offline' };
}

export function chunkRequestMsg(id: string, digest: string, chunkSize: number, ask: { next: number; window: number } | { missing: number[] }): ChunkRequest {
  return { proplet_id: id, digest, chunk_size: chunkSize, ...ask };
}

export function resultBase(id: string, taskId: string, attempt: number | undefined): Pick<Result, 'proplet_id' | 'task_id' | 'attempt'> {
  return { proplet_id: id, task_id: taskId, ...(attempt !== undefined ? { attempt } : {}) };
}

/**
 * Bytes of the largest chunk message for `chunkSize` data bytes: what the
 * receive buffer must hold. The digest is a full `sha256:<64 hex>` and every
 * integer takes its widest form.
 */
export function chunkMessageBytes(chunkSize: number): number {
  return encode('registry.server', { v: 1, digest: 'sha256:' + 'f'.repeat(64), idx: 9_999_999, total: 9_999_999, data: new Uint8Array(chunkSize), crc32: 0xffffffff, size: 0xffffffff }, 'cbor').length;
}

// ---------------------------------------------------------------------------
// Reading a start that is too large for the receive buffer. A firmware sees
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
