// fl-logreg: a federated-learning client (FL module contract v1, see
// ../README.md). Reads the global model's 9 parameters (w [8], b []) as
// little-endian float32 from stdin, trains logistic regression with
// mini-batch SGD on its own partition of the synthetic data set (data.ts),
// and prints its update as the last line of stdout:
//
//   {"num_samples":N,"loss":L,"accuracy":A,"weights":"<base64 float32 LE>"}
//
// Built by examples/build.ts with --runtime stub --exportStart _start
// --use abort=assembly/wasi/abort: the top-level statements below are _start.
import { FEATURES, PARAMS, Partition, X } from "./data";
import { Params, jsonError } from "./json";
import {
  EXIT_FAILURE,
  EXIT_USAGE,
  Slice,
  exit,
  fail,
  getEnv,
  loadEnv,
  readStdin,
  stderr,
  stdout,
} from "./wasi";

const DEFAULT_LEARNING_RATE: f64 = 0.5;
const DEFAULT_EPOCHS: f64 = 1;
const DEFAULT_BATCH_SIZE: f64 = 16;
const MAX_EPOCHS: f64 = 1000;
const MAX_BATCH_SIZE: f64 = 1048576;
const MAX_PARTITIONS: f64 = 1073741824;

const PARAM_BYTES = PARAMS * 4;
const input = memory.data(PARAM_BYTES, 4); // the global model, float32
const weights = memory.data(PARAMS * 8, 8); // training state, float64: w then b
const rounded = memory.data(PARAMS * 8, 8); // the float32 result, widened
const grad = memory.data(PARAMS * 8, 8);

@inline function w(j: i32): f64 {
  return load<f64>(weights + (<usize>j << 3));
}

/** A decimal integer in [0, 2^31), or -1. */
function decimal(s: Slice): i64 {
  if (s.len == 0 || s.len > 10) return -1;
  let v: i64 = 0;
  for (let i: usize = 0; i < s.len; i++) {
    const c = s.at(i);
    if (c < 0x30 || c > 0x39) return -1;
    v = v * 10 + <i64>(c - 0x30);
  }
  return v <= 0x7fffffff ? v : -1;
}

/** A count from FL_INDEX/FL_REPLICAS, else the hyperparameter, else `fallback`. */
function count(envName: string, hyper: f64, hyperName: string, fallback: f64): f64 {
  const s = getEnv(envName);
  if (s !== null) {
    const v = decimal(s);
    if (v < 0) {
      stderr.str("fl-logreg: ").str(envName).str(" must be a decimal integer, got '").bytes(s.ptr, s.len).str("'").line();
      exit(EXIT_USAGE);
    }
    return <f64>v;
  }
  if (isNaN(hyper)) return fallback;
  if (hyper != Math.floor(hyper) || hyper < 0 || hyper >= MAX_PARTITIONS) {
    stderr.str("fl-logreg: HYPERPARAMS ").str(hyperName).str(" must be an integer, got ").num(hyper).line();
    exit(EXIT_USAGE);
  }
  return hyper;
}

/** The hyperparameter `value` (NaN: not given), checked to lie in [min, max] (and be an integer). */
function setting(name: string, value: f64, fallback: f64, min: f64, max: f64, integer: bool): f64 {
  if (isNaN(value)) return fallback;
  if (!(value >= min && value <= max) || (integer && value != Math.floor(value))) {
    stderr.str("fl-logreg: HYPERPARAMS ").str(name).str(" must be ").str(integer ? "an integer" : "a number")
      .str(" in [").num(min).str(", ").num(max).str("], got ").num(value).line();
    exit(EXIT_USAGE);
  }
  return value;
}

/** The first of two spellings that is given (camelCase, as in a FederatedJob, or snake_case). */
function either(p: Params, a: i32, b: i32): f64 {
  return isNaN(p.get(a)) ? p.get(b) : p.get(a);
}

function sigmoid(z: f64): f64 {
  if (z >= 0) return 1 / (1 + Math.exp(-z));
  const e = Math.exp(z);
  return e / (1 + e);
}

/** z = b + Σ w_j·x_j for the sample in X, in this order (as dataset.ts computes it). */
function logit(params: usize): f64 {
  let z = load<f64>(params + (<usize>FEATURES << 3));
  for (let j = 0; j < FEATURES; j++) z += load<f64>(params + (<usize>j << 3)) * load<f64>(X + (<usize>j << 3));
  return z;
}

let measuredLoss: f64 = 0;
let measuredAccuracy: f64 = 0;

/** Mean binary cross-entropy and accuracy of `params` (PARAMS f64) on the partition. */
function measure(data: Partition, params: usize): void {
  data.rewind();
  let loss: f64 = 0;
  let correct: u32 = 0;
  for (let i: u32 = 0; i < data.size; i++) {
    const y = data.next();
    const z = logit(params);
    if ((z > 0 ? 1.0 : 0.0) == y) correct++;
    loss += Math.max(z, 0) - z * y + Math.log1p(Math.exp(-Math.abs(z)));
  }
  measuredLoss = loss / <f64>data.size;
  measuredAccuracy = <f64>correct / <f64>data.size;
}

/** Mini-batch SGD on the mean binary cross-entropy, in sample order. */
function train(data: Partition, learningRate: f64, epochs: i32, batchSize: u32): void {
  for (let e = 0; e < epochs; e++) {
    data.rewind();
    for (let start: u32 = 0; start < data.size; start += batchSize) {
      const m = min(batchSize, data.size - start);
      memory.fill(grad, 0, PARAMS * 8);
      for (let i: u32 = 0; i < m; i++) {
        const y = data.next();
        const err = sigmoid(logit(weights)) - y;
        for (let j = 0; j < FEATURES; j++) {
          const g = grad + (<usize>j << 3);
          store<f64>(g, load<f64>(g) + err * load<f64>(X + (<usize>j << 3)));
        }
        const gb = grad + (<usize>FEATURES << 3);
        store<f64>(gb, load<f64>(gb) + err);
      }
      const step = learningRate / <f64>m;
      for (let j = 0; j < PARAMS; j++) {
        const p = weights + (<usize>j << 3);
        store<f64>(p, load<f64>(p) - step * load<f64>(grad + (<usize>j << 3)));
      }
    }
  }
}

const BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/** Standard base64 with padding of `len` bytes at `ptr`, onto stdout. */
function base64(ptr: usize, len: usize): void {
  for (let i: usize = 0; i < len; i += 3) {
    const b0 = <u32>load<u8>(ptr + i);
    const b1 = i + 1 < len ? <u32>load<u8>(ptr + i + 1) : 0;
    const b2 = i + 2 < len ? <u32>load<u8>(ptr + i + 2) : 0;
    const v = (b0 << 16) | (b1 << 8) | b2;
    stdout.byte(BASE64.charCodeAt((v >>> 18) & 63));
    stdout.byte(BASE64.charCodeAt((v >>> 12) & 63));
    stdout.byte(i + 1 < len ? BASE64.charCodeAt((v >>> 6) & 63) : 0x3d);
    stdout.byte(i + 2 < len ? BASE64.charCodeAt(v & 63) : 0x3d);
  }
}

function main(): void {
  loadEnv();

  // the global model
  const got = readStdin(input, PARAM_BYTES);
  if (got != <u64>PARAM_BYTES) {
    stderr.str("fl-logreg: stdin must be the model's ").int(PARAMS).str(" parameters (w [").int(FEATURES)
      .str("], b []) as little-endian float32: ").int(PARAM_BYTES).str(" bytes, got ").int(<i64>got).line();
    exit(EXIT_USAGE);
  }
  for (let j = 0; j < PARAMS; j++) {
    const v = <f64>load<f32>(input + (<usize>j << 2));
    if (!isFinite(v)) {
      stderr.str("fl-logreg: stdin parameter ").int(j).str(" is not a finite number").line();
      exit(EXIT_USAGE);
    }
    store<f64>(weights + (<usize>j << 3), v);
  }

  // hyperparameters
  const p = new Params();
  const lrCamel = p.want("learningRate");
  const lrSnake = p.want("learning_rate");
  const epochsKey = p.want("epochs");
  const bsCamel = p.want("batchSize");
  const bsSnake = p.want("batch_size");
  const partKey = p.want("partition");
  const partsKey = p.want("partitions");
  const hyper = getEnv("HYPERPARAMS");
  if (hyper !== null && !p.parse(hyper)) {
    stderr.str("fl-logreg: HYPERPARAMS: ").str(jsonError).str(": ").bytes(hyper.ptr, min<usize>(hyper.len, 200)).line();
    exit(EXIT_USAGE);
  }
  const learningRate = setting("learningRate", either(p, lrCamel, lrSnake), DEFAULT_LEARNING_RATE, 0, 1e6, false);
  const epochs = setting("epochs", p.get(epochsKey), DEFAULT_EPOCHS, 0, MAX_EPOCHS, true);
  const batchSize = setting("batchSize", either(p, bsCamel, bsSnake), DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE, true);

  // the partition
  const index = count("FL_INDEX", p.get(partKey), "partition", 0);
  const replicas = count("FL_REPLICAS", p.get(partsKey), "partitions", 1);
  if (replicas < 1 || index >= replicas) {
    stderr.str("fl-logreg: partition index ").int(<i64>index).str(" of ").int(<i64>replicas)
      .str(": need 0 <= FL_INDEX < FL_REPLICAS").line();
    exit(EXIT_USAGE);
  }
  const data = new Partition(<u32>index, <u32>replicas);

  const round = getEnv("ROUND_ID");
  stdout.str("fl-logreg: round ");
  if (round !== null) stdout.bytes(round.ptr, min<usize>(round.len, 200));
  else stdout.str("(none)");
  stdout.str(", partition ").int(<i64>index).str(" of ").int(<i64>replicas).str(", ").int(data.size)
    .str(" samples, learningRate ").num(learningRate).str(", epochs ").int(<i64>epochs)
    .str(", batchSize ").int(<i64>batchSize).line();
  measure(data, weights);
  stdout.str("fl-logreg: before: loss ").num(measuredLoss).str(", accuracy ").num(measuredAccuracy).line();

  train(data, learningRate, <i32>epochs, <u32>batchSize);

  // the update: float32, measured as sent
  for (let j = 0; j < PARAMS; j++) {
    const v = <f32>w(j);
    if (!isFinite(v)) fail(EXIT_FAILURE, "training diverged (a weight is not finite): lower learningRate");
    store<f32>(input + (<usize>j << 2), v);
    store<f64>(rounded + (<usize>j << 3), <f64>v);
  }
  measure(data, rounded);
  stdout.str("{\"num_samples\":").int(data.size)
    .str(",\"loss\":").num(measuredLoss)
    .str(",\"accuracy\":").num(measuredAccuracy)
    .str(",\"weights\":\"");
  base64(input, PARAM_BYTES);
  stdout.str("\"}").line();
}

main();
