// Propeller's FL updates as ours, pure. Propeller's proplets send an update in
// two envelopes (absmach/propeller):
// - the Rust proplet, for a task with ROUND_ID, puts in its result
//   `{task_id, round_id, proplet_id, num_samples, update_b64, format, metrics}`,
//   update_b64 being the task's output text and format FL_FORMAT (default
//   "f32-delta", which Propeller itself never defines or reads);
// - embed-proplet publishes on fl/rounds/<round>/updates/<proplet> the task's
//   output parsed as JSON with round_id, proplet_id and base_model_uri added, or
//   `{round_id, proplet_id, base_model_uri, num_samples:0, metrics:{}, update:{},
//   error?}` (the Rust proplet's fallback is the output JSON as it is).
// We aggregate what is a model in our format (protocol/model-format.ts): its
// JSON form (`"format":"propeller-model/v1"`) as the output text, as `update`,
// or as the message itself, or its CBOR bytes in update_b64. Anything else is
// refused with a reason the round shows.

import type { FlUpdate } from '../protocol/index.ts';
import { decodeModel, encodeModel, MODEL_FORMAT, modelFromJson, ModelError } from '../protocol/model-format.ts';

export type Translated = { ok: true; update: FlUpdate } | { ok: false; reason: string; message: string };

const MAX_METRICS = 16;

const refuse = (reason: string, message: string): Translated => ({ ok: false, reason, message });
const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** True for the Rust proplet's FL envelope inside a result. */
export function isRustFlEnvelope(results: unknown): results is Record<string, unknown> {
  return isObject(results) && typeof results.round_id === 'string' && 'update_b64' in results;
}

function metricsOf(v: unknown): Record<string, number> | undefined {
  if (!isObject(v)) return undefined;
  const out: Record<string, number> = {};
  let n = 0;
  for (const [k, x] of Object.entries(v)) {
    if (typeof x !== 'number' || !Number.isFinite(x) || k.length > 64) continue;
    out[k] = x;
    if (++n === MAX_METRICS) break;
  }
  return n ? out : undefined;
}

/** Our model's CBOR bytes from what Propeller's envelope holds, or why not. */
function modelBytes(raw: Record<string, unknown>): Uint8Array | { reason: string; message: string } {
  try {
    if (typeof raw.update_b64 === 'string') {
      const bytes = Buffer.from(raw.update_b64, 'base64');
      if (bytes.length === 0) return { reason: 'empty', message: 'update_b64 is empty and no error is given' };
      if (bytes[0] === 0x7b) return encodeModel(modelFromJson(bytes.toString('utf8')));
      if (raw.format === MODEL_FORMAT) {
        decodeModel(bytes); // validates
        return bytes;
      }
      return { reason: 'format', message: `update format ${JSON.stringify(raw.format ?? '')} cannot be aggregated: have the task print a ${MODEL_FORMAT} model (JSON) and set FL_FORMAT=${MODEL_FORMAT}` };
    }
    if (isObject(raw.update) && raw.update.format === MODEL_FORMAT) return encodeModel(modelFromJson(raw.update));
    if (raw.format === MODEL_FORMAT && Array.isArray(raw.tensors)) return encodeModel(modelFromJson(raw));
    const keys = isObject(raw.update) ? Object.keys(raw.update).slice(0, 8).join(', ') : '';
    return { reason: 'format', message: `the update is not a ${MODEL_FORMAT} model${keys ? ` (update has ${keys})` : isObject(raw.update) ? ' (update is empty)' : ''}` };
  } catch (e) {
    if (e instanceof ModelError) return { reason: e.reason === 'non_finite' ? 'non_finite' : 'invalid', message: e.message };
    throw e;
  }
}

/**
 * One of Propeller's FL envelopes as our fl.update, for the round and task it
 * belongs to. `sender` is the authenticated proplet: an envelope naming another
 * proplet or round is refused.
 */
export function fromPropellerUpdate(raw: unknown, ids: { round: string; sender: string; taskId: string }, error?: unknown): Translated {
  if (!isObject(raw)) return refuse('malformed', `an FL update must be a JSON object, not ${JSON.stringify(raw)?.slice(0, 40) ?? typeof raw}`);
  if (raw.proplet_id !== undefined && raw.proplet_id !== ids.sender) return refuse('sender_mismatch', `proplet_id ${JSON.stringify(raw.proplet_id)} from ${ids.sender}`);
  if (raw.round_id !== undefined && raw.round_id !== ids.round) return refuse('round_mismatch', `round_id ${JSON.stringify(raw.round_id)} for round ${ids.round}`);
  const head = { v: 1, proplet_id: ids.sender, round_id: ids.round, task_id: ids.taskId };
  const err = typeof error === 'string' && error ? error : typeof raw.error === 'string' && raw.error ? raw.error : undefined;
  if (err !== undefined) return { ok: true, update: { ...head, error: err.slice(0, 4096) } };
  const n = raw.num_samples;
  const numSamples = n === undefined ? 1 : typeof n === 'number' && Number.isSafeInteger(n) && n >= 0 ? n : NaN;
  if (Number.isNaN(numSamples)) return refuse('samples', `num_samples ${JSON.stringify(n)} is not a whole number`);
  const model = modelBytes(raw);
  if (!(model instanceof Uint8Array)) return refuse(model.reason, model.message);
  const metrics = metricsOf(raw.metrics);
  return { ok: true, update: { ...head, num_samples: numSamples, model, ...(metrics ? { metrics } : {}) } };
}
