// The FL module contract (v1), shared by both proplet kinds: what a module
// gets when its task carries ROUND_ID, and how its update is read back.
//
//   in:  stdin        the round's model parameters, float32 little-endian, tensors
//                     concatenated in model order
//        /data/model.cbor  the same model in the compact CBOR model format
//        env          ROUND_ID, MODEL_URI, MODEL_DIGEST, HYPERPARAMS (JSON),
//                     FL_INDEX, FL_REPLICAS, as the task gives them
//   out: stdout's last non-empty line, one JSON object:
//        {"num_samples": N, "weights": "<base64 of float32 LE, same layout as stdin>",
//         "loss": x, "accuracy": y, ...other numbers}
//
// Specified in docs/fl.md; examples/fl-logreg implements it.

import { updateMessages, type Encoding, type FlUpdate } from '../protocol/index.ts';
import { decodeModel, float32FromLE, float32ToLE, paramCount, type Model } from '../protocol/model-format.ts';

export class FlContractError extends Error {
  override name = 'FlContractError';
}

/** A task is an FL round task when it names its round and its model. */
export function isFlTask(env: Record<string, string> | undefined): boolean {
  return env?.ROUND_ID !== undefined && (env.MODEL_URI !== undefined || env.MODEL_DIGEST !== undefined);
}

export interface FlInput {
  model: Model;
  stdin: Uint8Array;
  files: Record<string, Uint8Array>;
}

/** What the module is given for a model in its compact CBOR form. */
export function flInput(modelBytes: Uint8Array): FlInput {
  let model: Model;
  try {
    model = decodeModel(modelBytes);
  } catch (e) {
    throw new FlContractError(`the round's model does not decode: ${(e as Error).message}`);
  }
  const stdin = new Uint8Array(paramCount(model) * 4);
  let at = 0;
  for (const t of model.tensors) {
    stdin.set(float32ToLE(t.data), at);
    at += t.data.length * 4;
  }
  return { model, stdin, files: { 'model.cbor': modelBytes } };
}

export interface FlOutput {
  numSamples: number;
  metrics: Record<string, number>;
  /** The trained model: the round's tensors with the module's values. */
  model: Model;
}

/** Reads the module's update from its stdout; throws FlContractError saying what is wrong. */
export function parseFlOutput(stdout: string, reference: Model): FlOutput {
  const line = stdout.trimEnd().split('\n').at(-1)?.trim() ?? '';
  if (!line.startsWith('{')) throw new FlContractError('the module printed no update: its last line of stdout must be a JSON object with num_samples and weights');
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(line) as Record<string, unknown>;
  } catch (e) {
    throw new FlContractError(`the update line is not JSON: ${(e as Error).message}`);
  }
  const n = o.num_samples;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) throw new FlContractError('num_samples must be a positive integer');
  if (typeof o.weights !== 'string') throw new FlContractError('weights must be a base64 string');
  const raw = Buffer.from(o.weights, 'base64');
  const want = paramCount(reference) * 4;
  if (raw.length !== want) throw new FlContractError(`weights hold ${raw.length} bytes; the model has ${want / 4} float32 values (${want} bytes)`);
  const metrics: Record<string, number> = {};
  for (const [k, v] of Object.entries(o)) {
    if (k === 'num_samples' || k === 'weights') continue;
    if (typeof v === 'number' && Number.isFinite(v) && Object.keys(metrics).length < 16) metrics[k] = v;
  }
  let at = 0;
  const tensors = reference.tensors.map((t) => {
    const data = new Float32Array(t.data.length);
    float32FromLE(raw.subarray(at, at + data.length * 4), data);
    at += data.length * 4;
    return { name: t.name, shape: t.shape, data };
  });
  return { numSamples: n, metrics, model: { format: reference.format, tensors } };
}

export interface FlOutcome {
  /** What to publish on the round's update topic, in order: the update, or one message saying why there is none. */
  updates: FlUpdate[];
  /** The task result's `results`: num_samples and the client metrics. */
  results?: Record<string, number>;
  /** The run succeeded but gave no valid update: the task fails with this. */
  error?: string;
}

/** The update messages of a finished round task, each at most `maxPayload` bytes. */
export function flOutcome(
  head: { proplet_id: string; round_id: string; task_id: string },
  run: { ok: boolean; stdout: string; error?: string },
  input: FlInput | undefined,
  maxPayload: number,
  encoding: Encoding,
): FlOutcome {
  try {
    if (!run.ok || !input) throw new FlContractError(run.error ?? 'the task had no model to train');
    const out = parseFlOutput(run.stdout, input.model);
    return {
      updates: updateMessages({ ...head, num_samples: out.numSamples, metrics: out.metrics }, out.model, maxPayload, encoding),
      results: { num_samples: out.numSamples, ...out.metrics },
    };
  } catch (e) {
    if (!(e instanceof FlContractError) && !(e instanceof RangeError)) throw e;
    return { updates: [{ v: 1, ...head, error: e.message }], ...(run.ok ? { error: e.message } : {}) };
  }
}
