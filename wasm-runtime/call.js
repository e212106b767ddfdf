// @ts-check
// Calling a core module's export and reading its outcome, the same in a worker
// (wasm-worker.js) and on the runner's own thread (a metered module, see
// meter.ts): task inputs converted by the export's signature, the return value
// made cloneable, errors and the memory limit reported alike. Plain JS because
// Node 20 workers cannot load .ts.

/**
 * @typedef {'i32'|'i64'|'f32'|'f64'|'v128'|'funcref'|'externref'|'ref'} ValType
 * @typedef {{ params: ValType[], results: ValType[] }} Signature
 * @typedef {{ ok: boolean, exitCode: number | null, returnValue?: unknown, error?: string }} Outcome
 */

const PAGE = 65536;

/**
 * A trap while memory sits at the runner's cap is reported as the memory
 * limit (a refused memory.grow often ends in one); a module that exits with a
 * code of its own chose to, and keeps its reason. A module that somehow got
 * past the limit fails after the fact.
 * @param {{ limitBytes: number, capped: boolean }} job @param {WebAssembly.Memory | null} memory @param {Outcome} outcome
 * @returns {Outcome}
 */
export function checkMemory(job, memory, outcome) {
  if (!memory || job.limitBytes <= 0) return outcome;
  const size = memory.buffer.byteLength;
  const limit = `memory limit of ${job.limitBytes} bytes exceeded`;
  if (size > job.limitBytes) {
    return { ...outcome, ok: false, error: `${limit} (memory grew to ${size} bytes)` };
  }
  if (!outcome.ok && outcome.exitCode == null && job.capped && size + PAGE > job.limitBytes) {
    return { ...outcome, error: `${limit} (${outcome.error})` };
  }
  return outcome;
}

/** @param {unknown} err */
export function describeError(err) {
  if (err instanceof WebAssembly.RuntimeError) return `trap: ${err.message}`;
  if (err instanceof WebAssembly.LinkError) return `link error: ${err.message.replace(/^WebAssembly\.Instance\(\): /, '')}`;
  if (err instanceof WebAssembly.CompileError) return `compile error: ${err.message}`;
  if (err instanceof RangeError && /call stack/i.test(err.message)) return 'trap: call stack exhausted';
  if (err instanceof Error) return `${err.name === 'Error' ? 'error' : err.name}: ${err.message}`;
  return `error: ${String(err)}`;
}

/**
 * Converts task inputs to the export's parameter types.
 * @param {string} name @param {(number | bigint | string)[]} inputs
 * @param {Signature | null} sig @param {number} arity
 * @returns {unknown[] | string} arguments, or an error message
 */
export function convertInputs(name, inputs, sig, arity) {
  const want = sig ? sig.params.length : arity;
  if (inputs.length < want) return `missing input: ${name} expects ${want} argument${want === 1 ? '' : 's'}, got ${inputs.length}`;
  if (inputs.length > want) return `too many inputs: ${name} expects ${want} argument${want === 1 ? '' : 's'}, got ${inputs.length}`;
  /** @type {unknown[]} */
  const out = [];
  for (let i = 0; i < inputs.length; i++) {
    const v = inputs[i];
    const type = sig ? sig.params[i] : guessType(v);
    const bad = () => `invalid input ${i} for ${name}: ${typeof v === 'string' ? JSON.stringify(v) : String(v)} is not a valid ${type}`;
    switch (type) {
      case 'i32': {
        const n = toInteger(v);
        if (n === null || n < -(2n ** 31n) || n >= 2n ** 32n) return bad();
        out.push(Number(BigInt.asIntN(32, n)));
        break;
      }
      case 'i64': {
        const n = toInteger(v);
        if (n === null || n < -(2n ** 63n) || n >= 2n ** 64n) return bad();
        out.push(BigInt.asIntN(64, n));
        break;
      }
      case 'f32':
      case 'f64': {
        const n = typeof v === 'bigint' ? Number(v) : typeof v === 'number' ? v : parseFloatStrict(v);
        if (n === null) return bad();
        out.push(n);
        break;
      }
      default:
        return `input ${i} for ${name}: parameters of type ${type} cannot be passed from a task`;
    }
  }
  return out;
}

/** Without a signature: integers are i32 unless they only fit in i64; other numbers f64. @param {unknown} v @returns {ValType} */
function guessType(v) {
  const n = toInteger(v);
  if (n !== null) return n >= -(2n ** 31n) && n < 2n ** 31n && typeof v !== 'bigint' ? 'i32' : 'i64';
  return 'f64';
}

/** @param {unknown} v @returns {bigint | null} */
function toInteger(v) {
  if (typeof v === 'bigint') return v;
  if (typeof v === 'number') return Number.isSafeInteger(v) ? BigInt(v) : null;
  if (typeof v === 'string') {
    const s = v.trim();
    if (!/^[+-]?(\d+|0x[0-9a-f]+)$/i.test(s)) return null;
    try {
      return s.startsWith('-') ? -BigInt(s.slice(1)) : BigInt(s.replace(/^\+/, ''));
    } catch {
      return null;
    }
  }
  return null;
}

/** @param {unknown} v @returns {number | null} */
function parseFloatStrict(v) {
  if (typeof v !== 'string') return null;
  const s = v.trim();
  if (/^[+-]?nan$/i.test(s)) return NaN;
  if (/^[+-]?inf(inity)?$/i.test(s)) return s.startsWith('-') ? -Infinity : Infinity;
  if (s === '' || !/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(s)) return null;
  return Number(s);
}

/** @param {unknown} v @returns {unknown} */
export function toResult(v) {
  if (typeof v === 'bigint') return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString();
  if (Array.isArray(v)) return v.map(toResult);
  if (typeof v === 'number' || v === undefined || v === null) return v;
  return String(v); // references (externref/funcref) cannot leave the worker
}
