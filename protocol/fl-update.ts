// A participant's trained model as fl.update messages that each fit the
// sender's largest packet: one whole message when the encoded model fits,
// else one part per tensor slice (the receiver folds parts in as they come).

import { encode } from './codec.ts';
import type { Encoding, FlUpdate } from './messages.ts';
import { encodeModel, float32ToLE, type Model } from './model-format.ts';

export interface UpdateHeader {
  proplet_id: string;
  round_id: string;
  task_id: string;
  num_samples: number;
  metrics?: Record<string, number>;
}

/** Bytes a JSON or CBOR message grows by per float32 value in `data` (base64 in JSON). */
const BYTES_PER_VALUE: Record<Encoding, number> = { cbor: 4, json: 16 / 3 };

/**
 * The messages of one update, each at most `maxPayload` bytes once encoded
 * in `encoding`. Throws when even one value per part does not fit.
 */
export function updateMessages(h: UpdateHeader, model: Model, maxPayload: number, encoding: Encoding): FlUpdate[] {
  const head: FlUpdate = { v: 1, ...h };
  const whole: FlUpdate = { ...head, model: encodeModel(model) };
  if (encode('fl.update', whole, encoding).length <= maxPayload) return [whole];
  // the largest part header: every index at its maximum width
  const probe: FlUpdate = { v: 1, proplet_id: h.proplet_id, round_id: h.round_id, task_id: h.task_id, num_samples: h.num_samples, parts: 1_000_000, part: 999_999, tensor: 65_535, offset: 2 ** 32 - 1, data: new Uint8Array(0), ...(h.metrics ? { metrics: h.metrics } : {}) };
  const overhead = encode('fl.update', probe, encoding).length + 8;
  const perPart = Math.floor((maxPayload - overhead) / BYTES_PER_VALUE[encoding]);
  if (perPart < 1) throw new RangeError(`a packet limit of ${maxPayload} bytes leaves no room for update values`);
  const slices: { tensor: number; offset: number; data: Float32Array }[] = [];
  model.tensors.forEach((t, tensor) => {
    for (let offset = 0; offset < t.data.length; offset += perPart) slices.push({ tensor, offset, data: t.data.subarray(offset, offset + perPart) });
  });
  return slices.map((s, part) => ({
    v: 1,
    proplet_id: h.proplet_id,
    round_id: h.round_id,
    task_id: h.task_id,
    num_samples: h.num_samples,
    ...(h.metrics ? { metrics: h.metrics } : {}),
    parts: slices.length,
    part,
    tensor: s.tensor,
    offset: s.offset,
    data: float32ToLE(s.data),
  }));
}
