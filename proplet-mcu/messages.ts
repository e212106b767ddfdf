// Every message the constrained profile sends, built in one place so the
// device, docs/mcu.md and the independent-decoder test use the same bytes.
// All of them go out as compact CBOR (integer keys, enum indices, a lowercase
// UUID id as 16 bytes) on the shared proplet-to-manager topics, with the
// sender id in the payload.

import { encode, type Alive, type ChunkRequest, type Register, type Result, type TaskRef } from '../protocol/index.ts';

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
