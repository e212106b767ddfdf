// Pure modules (no imports) run on the runner's own thread, metered by fuel
// (wasm-runtime/meter.ts): the same results and errors as in a worker, and a
// module that runs away is stopped by its fuel within a few ms, then run again
// in a worker where its real time limit kills it. Real wasm, built with wabt.

import test from 'ava';
import wabtInit from 'wabt';
import { FUEL_EXPORT, INLINE_FUEL, meterModule } from '../wasm-runtime/meter.ts';
import { WasmRunner, type RunRequest } from '../wasm-runtime/index.ts';

let wabt: Awaited<ReturnType<typeof wabtInit>>;
let seq = 0;

test.before(async () => {
  wabt = await wabtInit();
});

function wat(text: string, features: Record<string, boolean> = {}): Uint8Array {
  const m = wabt.parseWat(`m${++seq}.wat`, text, features);
  const bytes = new Uint8Array(m.toBinary({}).buffer);
  m.destroy();
  return bytes;
}

const PURE = `(module
  (memory (export "memory") 1)
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "big") (param i64) (result i64) (i64.mul (local.get 0) (i64.const 1000000000)))
  (func (export "boom") unreachable)
  (func (export "spin") (loop (br 0)))
  (func $fib (export "fib") (param i32) (result i32)
    (if (result i32) (i32.lt_u (local.get 0) (i32.const 2))
      (then (local.get 0))
      (else (i32.add (call $fib (i32.sub (local.get 0) (i32.const 1))) (call $fib (i32.sub (local.get 0) (i32.const 2)))))))
  (func (export "grow") (loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable))`;

function req(module: Uint8Array, name: string, inputs: (number | string)[] = [], extra: Partial<RunRequest> = {}): RunRequest {
  return { taskId: `r${++seq}`, module, name, args: [], env: {}, inputs, timeoutMs: 2000, maxMemoryBytes: 1 << 20, ...extra };
}

async function both<T>(f: (r: WasmRunner) => Promise<T>): Promise<{ inline: T; worker: T; runner: WasmRunner }> {
  const inline = new WasmRunner({ poolSize: 1 });
  const worker = new WasmRunner({ poolSize: 1, inline: false });
  try {
    return { inline: await f(inline), worker: await f(worker), runner: inline };
  } finally {
    await Promise.all([inline.close(), worker.close()]);
  }
}

const same = (r: { ok: boolean; returnValue?: unknown; error?: string; exitCode: number | null }) => ({ ok: r.ok, returnValue: r.returnValue, error: r.error, exitCode: r.exitCode });

test('a pure module runs on the runner thread, with the results and errors a worker gives', async (t) => {
  const pure = wat(PURE);
  const cases: [string, (number | string)[]][] = [
    ['add', [2, 3]],
    ['add', ['0x7fffffff', 1]],
    ['big', [9_007_199_254]],
    ['boom', []],
    ['fib', [20]],
    ['grow', []],
    ['add', [1]],
    ['nope', []],
  ];
  const { inline, worker, runner } = await both(async (r) => {
    const out = [];
    for (const [name, inputs] of cases) out.push(same(await r.run(req(pure, name, inputs))));
    return out;
  });
  t.deepEqual(inline, worker);
  t.deepEqual(inline[0], { ok: true, returnValue: 5, error: undefined, exitCode: 0 });
  t.is(inline[2]!.returnValue, '9007199254000000000');
  t.is(inline[3]!.error, 'trap: unreachable');
  t.regex(inline[5]!.error!, /^memory limit of 1048576 bytes exceeded/);
  // calls a worker explains in full (a missing export, bad inputs) are left to it
  t.is(runner.inlineRuns, 6);
});

test('metered control flow, tables, globals, data and a start function give the results a worker gives', async (t) => {
  const rich = wat(`(module
    (type $un (func (param i32) (result i32)))
    (memory (export "memory") 1)
    (data (i32.const 16) "\\01\\02\\03\\04")
    (global $g (mut i32) (i32.const 7))
    (table 3 funcref)
    (elem (i32.const 0) $dbl $neg $sq)
    (func $dbl (type $un) (i32.mul (local.get 0) (i32.const 2)))
    (func $neg (type $un) (i32.sub (i32.const 0) (local.get 0)))
    (func $sq (type $un) (i32.mul (local.get 0) (local.get 0)))
    (func $init (global.set $g (i32.add (global.get $g) (i32.load8_u (i32.const 18)))))
    (start $init)
    (func (export "pick") (param i32 i32) (result i32) (call_indirect (type $un) (local.get 1) (local.get 0)))
    (func (export "sw") (param i32) (result i32)
      (block $c (block $b (block $a (br_table $a $b $c (local.get 0))) (return (i32.const 10))) (return (i32.const 20)))
      (i32.const 30))
    (func (export "sum") (param i32) (result i64) (local $acc i64)
      (block $done (loop $next
        (br_if $done (i32.eqz (local.get 0)))
        (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (local.get 0))))
        (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
        (br $next)))
      (local.get $acc))
    (func (export "g") (result i32) (global.get $g))
    (func (export "sel") (param i32) (result f64)
      (select (f64.const 1.5) (f64.const -2.25) (local.get 0)))
    (func (export "mv") (param i32) (result i32 i32) (local.get 0) (i32.add (local.get 0) (i32.const 1)))
    (func (export "ifelse") (param i32) (result i32)
      (if (result i32) (local.get 0) (then (i32.const 1)) (else (i32.const 2)))))`);
  const cases: [string, (number | string)[]][] = [
    ['pick', [0, 21]], ['pick', [1, 5]], ['pick', [2, 9]], ['pick', [3, 1]],
    ['sw', [0]], ['sw', [1]], ['sw', [2]], ['sw', [9]],
    ['sum', [10000]], ['g', []], ['sel', [0]], ['sel', [1]], ['mv', [4]], ['ifelse', [0]], ['ifelse', [3]],
  ];
  const { inline, worker, runner } = await both(async (r) => {
    const out = [];
    for (const [name, inputs] of cases) out.push(same(await r.run(req(rich, name, inputs))));
    return out;
  });
  t.deepEqual(inline, worker);
  t.deepEqual(inline.map((x) => x.returnValue ?? x.error), [42, -5, 81, 'trap: table index is out of bounds', 10, 20, 30, 30, 50005000, 10, -2.25, 1.5, [4, 5], 2, 1]);
  t.is(runner.inlineRuns, cases.length);
});

test('a pure module that loops forever runs out of fuel at once, then its time limit kills it in a worker', async (t) => {
  const pure = wat(PURE);
  const r = new WasmRunner({ poolSize: 1 });
  try {
    let ticked = false;
    setTimeout(() => (ticked = true), 1);
    const res = await r.run(req(pure, 'spin', [], { timeoutMs: 300 }));
    t.false(res.ok);
    t.is(res.error, 'time limit of 300 ms exceeded');
    t.true(ticked, 'the event loop ran while the module looped');
    t.is(r.inlineFallbacks, 1);
    // known to run long: the next run goes to a worker directly
    const again = await r.run(req(pure, 'spin', [], { timeoutMs: 50 }));
    t.is(again.error, 'time limit of 50 ms exceeded');
    t.is(r.inlineFallbacks, 1);
    t.is(r.inlineRuns, 0);
  } finally {
    await r.close();
  }
});

test('recursion without loops is metered too: an exponential call tree finishes in a worker', async (t) => {
  const pure = wat(PURE);
  const r = new WasmRunner({ poolSize: 1 });
  try {
    const res = await r.run(req(pure, 'fib', [30], { timeoutMs: 30_000 }));
    t.true(res.ok, res.error);
    t.is(res.returnValue, 832040);
    t.is(r.inlineFallbacks, 1);
  } finally {
    await r.close();
  }
});

test('modules with imports, WASI runs and streamed output stay in workers', async (t) => {
  const imports = wat(`(module (import "env" "f" (func)) (func (export "g") (call 0)))`);
  t.is(meterModule(imports, INLINE_FUEL), null);
  const r = new WasmRunner({ poolSize: 1 });
  try {
    const res = await r.run(req(imports, 'g'));
    t.false(res.ok);
    t.regex(res.error!, /env/);
    const pure = wat(PURE);
    t.true((await r.run(req(pure, 'add', [1, 2], { onStdout: () => {} }))).ok);
    t.true((await r.run(req(pure, 'add', [1, 2], { stdin: new Uint8Array(1) }))).ok);
    t.true((await r.run(req(pure, 'add', [1, 2], { timeoutMs: 0 }))).ok);
    t.is(r.inlineRuns, 0);
  } finally {
    await r.close();
  }
});

test('metering: instructions outside the understood set leave a module to workers; the fuel global is exported', (t) => {
  const simd = wat(`(module (func (export "v") (result i32) (i32x4.extract_lane 0 (v128.const i32x4 1 2 3 4))))`, { simd: true });
  t.is(meterModule(simd, 100), null);
  const bulk = wat(`(module (memory 1) (func (export "f") (memory.fill (i32.const 0) (i32.const 0) (i32.const 10))))`, { bulk_memory: true });
  t.is(meterModule(bulk, 100), null);
  const taken = wat(`(module (global (export "${FUEL_EXPORT}") i32 (i32.const 0)) (func (export "f")))`);
  t.is(meterModule(taken, 100), null);
  const pure = meterModule(wat(PURE), 1000)!;
  const inst = new WebAssembly.Instance(new WebAssembly.Module(pure as Uint8Array<ArrayBuffer>), {});
  t.is((inst.exports.add as (a: number, b: number) => number)(2, 3), 5);
  const fuel = inst.exports[FUEL_EXPORT] as WebAssembly.Global;
  t.true(fuel.value < 1000 && fuel.value > 900);
  t.throws(() => (inst.exports.spin as () => void)(), { instanceOf: WebAssembly.RuntimeError });
  t.true(fuel.value < 0);
});
