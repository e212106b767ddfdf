import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import wabtInit from 'wabt';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { until } from './helpers/stack.ts';
import {
  compileModule,
  limitMemory,
  parseFunctionSignatures,
  parseModule,
  WasmParseError,
  WasmRunner,
  type RunRequest,
} from '../wasm-runtime/index.ts';

const wasm: Record<string, Uint8Array> = {};
let runner: WasmRunner;
let seq = 0;

test.before(async () => {
  const built = await buildExamples();
  for (const b of built) wasm[b.name] = new Uint8Array(readFileSync(join(EXAMPLES_BUILD_DIR, `${b.name}.wasm`)));
  runner = new WasmRunner({ poolSize: 4 });
  await runner.ready();
});

test.after.always(async () => {
  await runner?.close();
});

function req(example: string, extra: Partial<RunRequest> = {}): RunRequest {
  const module = wasm[example];
  if (!module) throw new Error(`example ${example} was not built`);
  return {
    taskId: `t${++seq}`,
    module,
    name: example,
    args: [],
    env: {},
    inputs: [],
    timeoutMs: 2000,
    maxMemoryBytes: 16 << 20,
    ...extra,
  };
}

test('hello prints the greeting, its arguments and GREETING', async (t) => {
  const r = await runner.run(req('hello', { args: ['hello', 'one', 'two words'], env: { GREETING: 'Hi there', OTHER: 'x' } }));
  t.true(r.ok, r.error);
  t.is(r.exitCode, 0);
  t.is(r.stdout, 'Hello from WebAssembly!\none\ntwo words\nHi there\n');
  t.is(r.stderr, '');
  t.is(r.error, undefined);
});

test('hello without arguments or GREETING prints only the greeting', async (t) => {
  const r = await runner.run(req('hello'));
  t.true(r.ok);
  t.is(r.stdout, 'Hello from WebAssembly!\n');
});

test('add(2, 3) = 5', async (t) => {
  const r = await runner.run(req('add', { name: 'add', inputs: [2, 3] }));
  t.true(r.ok, r.error);
  t.is(r.exitCode, 0);
  t.is(r.returnValue, 5);
});

test('add accepts numeric strings and wraps like i32', async (t) => {
  const r = await runner.run(req('add', { name: 'add', inputs: ['2147483647', '1'] }));
  t.true(r.ok, r.error);
  t.is(r.returnValue, -2147483648);
});

test('fib takes an i64 and returns beyond 2^53 as a string', async (t) => {
  const big = await runner.run(req('add', { name: 'fib', inputs: [90] }));
  t.true(big.ok, big.error);
  t.is(big.returnValue, '2880067194370816120');
  const small = await runner.run(req('add', { name: 'fib', inputs: ['10'] }));
  t.is(small.returnValue, 55);
  const bigint = await runner.run(req('add', { name: 'fib', inputs: [50n] }));
  t.is(bigint.returnValue, 12586269025);
});

test('mul multiplies f64', async (t) => {
  const r = await runner.run(req('add', { name: 'mul', inputs: [1.5, '4'] }));
  t.true(r.ok, r.error);
  t.is(r.returnValue, 6);
});

test('a missing export lists the exports; missing or bad inputs are named', async (t) => {
  const missing = await runner.run(req('add', { name: 'sub', inputs: [1, 2] }));
  t.false(missing.ok);
  t.is(missing.error, 'export "sub" not found; exports: add, fib, mul');
  const few = await runner.run(req('add', { name: 'add', inputs: [1] }));
  t.is(few.error, 'missing input: add expects 2 arguments, got 1');
  const bad = await runner.run(req('add', { name: 'add', inputs: [1, 'abc'] }));
  t.false(bad.ok);
  t.regex(bad.error ?? '', /invalid input 1 for add/);
});

test('a trap gives ok=false and the trap message', async (t) => {
  const r = await runner.run(req('trap'));
  t.false(r.ok);
  t.is(r.error, 'trap: unreachable');
  t.is(r.exitCode, null);
});

test('an infinite loop is killed at the time limit and the runner keeps working', async (t) => {
  // the loop never ends by itself: that the run ends at all is the kill; no upper time bound (a busy machine)
  const r = await runner.run(req('loop', { timeoutMs: 200 }));
  t.false(r.ok);
  t.is(r.error, 'time limit of 200 ms exceeded');
  t.true(r.durationMs >= 190, `durationMs ${r.durationMs}`);
  const again = await runner.run(req('hello'));
  t.true(again.ok, again.error);
  t.is(again.stdout, 'Hello from WebAssembly!\n');
});

test('growing memory past the limit fails with a memory-limit error', async (t) => {
  const r = await runner.run(req('grow', { maxMemoryBytes: 2 * 1024 * 1024 }));
  t.false(r.ok);
  t.regex(r.error ?? '', /^memory limit of 2097152 bytes exceeded/);
});

test('an imported memory gets the limit as its maximum', async (t) => {
  const wabt = await wabtInit();
  const mod = wabt.parseWat('import-grow.wat', `(module
    (import "env" "memory" (memory 1))
    (func (export "pages") (result i32) (memory.size))
    (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))`);
  const bytes = mod.toBinary({}).buffer;
  mod.destroy();
  const grown = await runner.run(req('add', { module: bytes, name: 'grow', inputs: [31], maxMemoryBytes: 2 << 20 }));
  t.true(grown.ok, grown.error);
  t.is(grown.returnValue, 1); // old size in pages: 1 + 31 = 32 pages = 2 MiB is allowed
  const refused = await runner.run(req('add', { module: bytes, name: 'grow', inputs: [32], maxMemoryBytes: 2 << 20 }));
  t.true(refused.ok, refused.error);
  t.is(refused.returnValue, -1); // 33 pages would pass the limit
});

test('a module whose initial memory exceeds the limit is refused', async (t) => {
  const r = await runner.run(req('hello', { maxMemoryBytes: 1000 }));
  t.false(r.ok);
  t.regex(r.error ?? '', /^memory limit of 0 bytes exceeded: the module needs at least 65536 bytes/);
});

test('proc_exit(3) gives exit code 3', async (t) => {
  const r = await runner.run(req('exit'));
  t.false(r.ok);
  t.is(r.exitCode, 3);
  t.is(r.error, 'exit code 3');
});

test('cancel() stops a daemon after it printed a tick', async (t) => {
  const chunks: string[] = [];
  let resolveTick: () => void = () => {};
  const ticked = new Promise<void>((resolve) => (resolveTick = resolve));
  const request = req('daemon', {
    timeoutMs: 0,
    onStdout: (chunk) => {
      chunks.push(chunk);
      if (chunk.includes('tick 1')) resolveTick();
    },
  });
  const running = runner.run(request);
  await ticked;
  t.true(runner.cancel(request.taskId));
  const r = await running;
  t.false(r.ok);
  t.is(r.error, 'stopped');
  t.true(r.stdout.startsWith('tick 1\n'));
  t.is(chunks.join(''), r.stdout);
  t.false(runner.cancel(request.taskId));
  t.false(runner.cancel('no-such-task'));
});

test('20 concurrent runs on a pool of 4 all succeed', async (t) => {
  const pool = new WasmRunner({ poolSize: 4 });
  try {
    let peak = 0;
    const module = await compileModule(wasm.add!, { maxMemoryBytes: 16 << 20 });
    const runs = Array.from({ length: 20 }, (_, i) =>
      pool.run(req('add', { module, name: 'add', inputs: [i, 1000] })).then((r) => {
        peak = Math.max(peak, pool.running);
        return r;
      }),
    );
    await new Promise((resolve) => setImmediate(resolve));
    peak = Math.max(peak, pool.running);
    t.true(pool.queued > 0, 'runs beyond maxConcurrent wait in the queue');
    const results = await Promise.all(runs);
    t.true(peak <= 4);
    results.forEach((r, i) => {
      t.true(r.ok, r.error);
      t.is(r.returnValue, i + 1000);
    });
    t.is(pool.running, 0);
  } finally {
    await pool.close();
  }
});

test('workers started beyond the pool stay for the next burst, and retire after idleRetireMs', async (t) => {
  const pool = new WasmRunner({ poolSize: 1, maxConcurrent: 4, idleRetireMs: 300 });
  try {
    const module = await compileModule(wasm.add!, { maxMemoryBytes: 16 << 20 });
    const burst = () => Promise.all(Array.from({ length: 4 }, (_, i) => pool.run(req('add', { module, name: 'add', inputs: [i, 1] }))));
    for (const r of await burst()) t.true(r.ok, r.error);
    const started = pool.workers;
    t.true(started > 1, 'the burst started extra workers');
    // finished runs leave their workers idle and warm, not terminated at once (a cold one costs ~40 ms)
    t.is(pool.workers, started);
    for (const r of await burst()) t.true(r.ok, r.error);
    t.true(pool.workers <= 4);
    await until(() => pool.workers === 1, 'extra workers retired');
    t.is(pool.workers, 1);
  } finally {
    await pool.close();
  }
});

test('stdin is readable by the module', async (t) => {
  const r = await runner.run(req('cat', { stdin: new TextEncoder().encode('from stdin\n') }));
  t.true(r.ok, r.error);
  t.is(r.stdout, 'from stdin\n');
});

test('files are readable under /data, read-only', async (t) => {
  const files = {
    'model.bin': new TextEncoder().encode('weights '),
    'sub/notes.txt': new TextEncoder().encode('notes\n'),
  };
  const r = await runner.run(req('cat', { files, args: ['cat', 'model.bin', 'sub/notes.txt'] }));
  t.true(r.ok, r.error);
  t.is(r.stdout, 'weights notes\n');
  const missing = await runner.run(req('cat', { files, args: ['cat', 'nope.txt', '../etc/passwd'] }));
  t.false(missing.ok);
  t.is(missing.exitCode, 1);
  t.is(missing.stderr, 'cat: cannot open nope.txt\ncat: cannot open ../etc/passwd\n');
});

test('no state leaks between runs on the same worker', async (t) => {
  const one = new WasmRunner({ poolSize: 1 });
  try {
    const a = await one.run(req('hello', { args: ['hello', 'first'], env: { GREETING: 'a' } }));
    const b = await one.run(req('hello', { args: ['hello', 'second'] }));
    t.is(a.stdout, 'Hello from WebAssembly!\nfirst\na\n');
    t.is(b.stdout, 'Hello from WebAssembly!\nsecond\n');
  } finally {
    await one.close();
  }
});

test('captured output is capped with a marker, the marker within the cap', async (t) => {
  // 24 bytes: 10 of output and the 14-byte marker (a cap the protocol sets must hold for the marked text too)
  const small = new WasmRunner({ poolSize: 1, outputLimitBytes: 24 });
  try {
    const r = await small.run(req('hello', { args: ['hello', 'more', 'text'] }));
    t.true(r.ok);
    t.is(r.stdout, 'Hello from…[truncated]');
    t.is(Buffer.byteLength(r.stdout), 24);
  } finally {
    await small.close();
  }
});

test('a module compiled elsewhere still runs', async (t) => {
  const module = new WebAssembly.Module(wasm.add! as Uint8Array<ArrayBuffer>);
  const r = await runner.run(req('add', { module, name: 'fib', inputs: [90n] }));
  t.true(r.ok, r.error);
  t.is(r.returnValue, '2880067194370816120');
  const add = await runner.run(req('add', { module, name: 'add', inputs: [2, 3] }));
  t.is(add.returnValue, 5);
});

test('broken bytes and bad requests come back as results, not rejections', async (t) => {
  const garbage = await runner.run(req('add', { module: new Uint8Array([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 0xff]) }));
  t.false(garbage.ok);
  t.regex(garbage.error ?? '', /compile error/);
  const dup = req('daemon', { timeoutMs: 0 });
  const first = runner.run(dup);
  const second = await runner.run({ ...dup });
  t.regex(second.error ?? '', /already running/);
  runner.cancel(dup.taskId);
  t.is((await first).error, 'stopped');
  const badTimeout = await runner.run(req('add', { timeoutMs: -1 }));
  t.regex(badTimeout.error ?? '', /invalid timeoutMs/);
});

test('close() resolves pending runs and refuses new ones', async (t) => {
  const r2 = new WasmRunner({ poolSize: 1 });
  const running = r2.run(req('loop', { timeoutMs: 0 }));
  const queued = r2.run(req('hello'));
  await new Promise((resolve) => setTimeout(resolve, 50));
  await r2.close();
  t.is((await running).error, 'runner closed');
  t.is((await queued).error, 'runner closed');
  t.is((await r2.run(req('hello'))).error, 'runner closed');
});

test('parseFunctionSignatures reads add.wasm', (t) => {
  const sigs = parseFunctionSignatures(wasm.add!);
  t.deepEqual([...sigs.keys()], ['add', 'fib', 'mul']);
  t.deepEqual(sigs.get('add'), { params: ['i32', 'i32'], results: ['i32'] });
  t.deepEqual(sigs.get('fib'), { params: ['i64'], results: ['i64'] });
  t.deepEqual(sigs.get('mul'), { params: ['f64', 'f64'], results: ['f64'] });
  t.deepEqual(parseFunctionSignatures(wasm.hello!).get('_start'), { params: [], results: [] });
});

test('limitMemory caps the declared maximum and the result still compiles', (t) => {
  const limited = limitMemory(wasm.grow!, 8);
  t.true(limited.changed);
  t.deepEqual(parseModule(limited.bytes).memories, [{ min: 1, max: 8, shared: false, memory64: false }]);
  t.true(WebAssembly.validate(limited.bytes as Uint8Array<ArrayBuffer>));
  t.false(limitMemory(wasm.add!, 8).changed); // no memory at all
});

test('garbage bytes make the parser throw, never hang', (t) => {
  const header = [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
  const cases: Uint8Array[] = [
    new Uint8Array(0),
    new Uint8Array([1, 2, 3]),
    new TextEncoder().encode('this is not wasm at all'),
    new Uint8Array([...header, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f]), // section larger than the module
    new Uint8Array([...header, 0x01, 0x05, 0xff, 0xff, 0xff, 0xff, 0x0f]), // type count far beyond the bytes
    new Uint8Array([...header, 0x01, 0x06, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]), // LEB128 that never ends
    new Uint8Array([...header, 0x07, 0x05, 0x01, 0x7f, 0x61, 0x00, 0x00]), // name longer than the section
    wasm.add!.subarray(0, wasm.add!.length - 3), // truncated
  ];
  // plus random bytes behind a valid header
  let x = 12345;
  for (let i = 0; i < 200; i++) {
    const body = Array.from({ length: 64 }, () => ((x = (x * 1103515245 + 12345) >>> 0) >>> 16) & 0xff);
    cases.push(new Uint8Array([...header, ...body]));
  }
  const t0 = performance.now();
  let threw = 0;
  for (const bytes of cases) {
    try {
      parseFunctionSignatures(bytes);
    } catch (err) {
      t.true(err instanceof WasmParseError, String(err));
      threw++;
    }
  }
  t.true(threw >= 8);
  for (const bytes of cases.slice(0, 8)) t.throws(() => parseFunctionSignatures(bytes), { instanceOf: WasmParseError });
  t.true(performance.now() - t0 < 1000);
});

test('cancel interrupts a module sleeping in poll_oneoff at once, not when its sleep ends', async (t) => {
  const r = new WasmRunner({ poolSize: 1 });
  try {
    const sleep = readFileSync(join(EXAMPLES_BUILD_DIR, 'sleep.wasm'));
    const t0 = Date.now();
    const SLEEP_MS = 120_000;
    const run = r.run({ taskId: 'long-sleep', module: sleep, name: 'sleep', args: ['sleep'], env: {}, inputs: [SLEEP_MS], timeoutMs: 0, maxMemoryBytes: 0 });
    await new Promise((res) => setTimeout(res, 200));
    t.true(r.cancel('long-sleep'));
    const res = await run;
    t.is(res.error, 'stopped');
    // ended by the cancel, not by its sleep running out (the claim; not a time budget)
    t.true(Date.now() - t0 < SLEEP_MS, `took ${Date.now() - t0} ms`);
    // a short sleep still sleeps its time and returns its value
    const short = await r.run({ taskId: 'short', module: sleep, name: 'sleep', args: ['sleep'], env: {}, inputs: [120], timeoutMs: 5000, maxMemoryBytes: 0 });
    t.is(short.returnValue, 120);
    t.true(short.durationMs >= 110, `slept ${short.durationMs} ms`);
  } finally {
    await r.close();
  }
});

test('a worker keeps a bounded set of compiled modules: more modules than it keeps, in turn, each run gets its own', async (t) => {
  const wabt = await wabtInit();
  const one = new WasmRunner({ poolSize: 1, maxConcurrent: 1, inline: false });
  try {
    const mods = Array.from({ length: 20 }, (_, i) => {
      const m = wabt.parseWat(`k${i}.wat`, `(module (func (export "k") (result i32) (i32.const ${i})))`);
      const bytes = new Uint8Array(m.toBinary({}).buffer);
      m.destroy();
      return bytes;
    });
    // twice round: the second pass finds the first modules dropped from the worker and sends them again
    for (let pass = 0; pass < 2; pass++) {
      for (const [i, module] of mods.entries()) {
        const r = await one.run({ taskId: `k${pass}-${i}`, module, name: 'k', args: [], env: {}, inputs: [], timeoutMs: 5000, maxMemoryBytes: 0 });
        t.is(r.returnValue, i, r.error);
      }
    }
    t.is(one.workers, 1);
  } finally {
    await one.close();
  }
});
