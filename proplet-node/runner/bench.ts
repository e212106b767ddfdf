// Micro-benchmark of the runner's per-run overhead: add(1, 2) run n times, one
// after another, on a warm pool (not wired into anything; call it by hand:
//   node --import tsx -e "import('./proplet-node/runner/bench.ts').then(async m => console.log(await m.benchRunner(1000)))"
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../../examples/build.ts';
import { compileModule, WasmRunner } from './index.ts';

export interface BenchResult {
  n: number;
  p50Ms: number;
  p99Ms: number;
  perSec: number;
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

/**
 * Runs add(1, 2) n times sequentially on a warm pool of one worker and reports
 * the latency of run() (submit to result) and the throughput. `bytes: true`
 * passes the wasm bytes each time (sha256 + cache lookup included) instead of a
 * precompiled Module.
 */
export async function benchRunner(n: number, opts: { bytes?: boolean; warmup?: number } = {}): Promise<BenchResult> {
  await buildExamples();
  const wasm = new Uint8Array(readFileSync(join(EXAMPLES_BUILD_DIR, 'add.wasm')));
  const maxMemoryBytes = 16 << 20;
  const module = opts.bytes ? wasm : await compileModule(wasm, { maxMemoryBytes });
  const runner = new WasmRunner({ poolSize: 1 });
  try {
    await runner.ready();
    const once = async (i: number): Promise<number> => {
      const t0 = performance.now();
      const r = await runner.run({
        taskId: `bench-${i}`,
        module,
        name: 'add',
        args: [],
        env: {},
        inputs: [1, 2],
        timeoutMs: 1000,
        maxMemoryBytes,
      });
      const dt = performance.now() - t0;
      if (!r.ok || r.returnValue !== 3) throw new Error(`bench run failed: ${r.error ?? JSON.stringify(r.returnValue)}`);
      return dt;
    };
    const warmup = opts.warmup ?? Math.min(200, Math.max(10, Math.floor(n / 10)));
    for (let i = 0; i < warmup; i++) await once(-1 - i);
    const times: number[] = [];
    const start = performance.now();
    for (let i = 0; i < n; i++) times.push(await once(i));
    const total = performance.now() - start;
    times.sort((a, b) => a - b);
    const round = (x: number): number => Math.round(x * 1000) / 1000;
    return { n, p50Ms: round(percentile(times, 50)), p99Ms: round(percentile(times, 99)), perSec: Math.round((n / total) * 1000) };
  } finally {
    await runner.close();
  }
}
