// Compiles every examples/*.wat into examples/build/NAME.wasm with the npm `wabt`
// package (wabt.js), and every AssemblyScript example, examples/DIR/assembly/index.ts,
// into examples/build/DIR.wasm with the npm `assemblyscript` compiler, so no
// binary of unknown origin is ever committed.
//
//   node --import tsx examples/build.ts        (npm run build:examples)
//
// Outputs that are newer than their sources are skipped (for AssemblyScript:
// every file under DIR/assembly/ and DIR/asconfig.json). A source that fails to
// compile aborts the build with a one-line error and exit code 1.
//
// AssemblyScript options: DIR/asconfig.json when there is one (asc --config),
// else ASC_DEFAULT_FLAGS.
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';
import wabtInit from 'wabt';

export const EXAMPLES_DIR = fileURLToPath(new URL('.', import.meta.url));
export const EXAMPLES_BUILD_DIR = join(EXAMPLES_DIR, 'build');

export interface BuiltExample {
  name: string;    // e.g. "hello", or "fl-logreg" for examples/fl-logreg/assembly/index.ts
  source: string;  // absolute path of the .wat, or of the AssemblyScript entry file
  output: string;  // absolute path of the .wasm
  built: boolean;  // false when the output was already up to date
}

export interface BuildOptions {
  srcDir?: string;            // default: this folder
  outDir?: string;            // default: <srcDir>/build
  force?: boolean;            // rebuild even when up to date
  log?: (line: string) => void; // called once per built file
}

function mtimeMs(path: string): number | undefined {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return undefined;
  }
}

function firstLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  const lines = text.split('\n').map((l) => l.trim()).filter((l) => l.length > 0);
  // wabt.js puts "parseWat failed:" first and the useful "FILE:LINE:COL: error: ..." after it
  const line = lines.find((l) => /\berror:/.test(l)) ?? lines.find((l) => !l.endsWith(':')) ?? lines[0];
  return line ?? 'unknown error';
}

/**
 * Options for an AssemblyScript example without an asconfig.json: a WASI
 * command (top-level statements as _start) on the stub runtime, whose aborts
 * trap (no `env.abort` import, which no runner provides).
 */
export const ASC_DEFAULT_FLAGS: readonly string[] = ['-O3', '--runtime', 'stub', '--exportStart', '_start', '--use', 'abort='];

const ASC_ENTRY = join('assembly', 'index.ts');
const ASC_CONFIG = 'asconfig.json';

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)],
  );
}

interface AscOutcome {
  binary: Uint8Array | null;
  /** what asc wrote to its stdout and stderr */
  report: string;
  error: string | null;
}

// asc.main runs in a worker thread started without tsx's loader hooks: under
// tsx, importing the compiler transforms binaryen's 13 MB of JavaScript again
// on every build (~25 s instead of ~1.5 s).
const ASC_WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const done = (binary, report, error) => parentPort.postMessage({ binary, report, error });
import(workerData.asc).then(async ({ default: asc }) => {
  let report = '';
  let binary = null;
  const stream = asc.createMemoryStream((chunk) => {
    report += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
  });
  const { error } = await asc.main(workerData.args, {
    stdout: stream,
    stderr: stream,
    writeFile: (file, contents) => {
      if (file.endsWith('.wasm') && typeof contents !== 'string') binary = contents;
    },
  });
  done(binary, report, error ? error.message : null);
}).catch((e) => done(null, '', String(e && e.message || e)));
`;

/** Runs the AssemblyScript compiler (asc.main of 'assemblyscript/asc') on `args`, keeping the .wasm in memory. */
function runAsc(args: string[]): Promise<AscOutcome> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(ASC_WORKER, {
      eval: true,
      execArgv: [],
      workerData: { asc: import.meta.resolve('assemblyscript/asc'), args },
    });
    let outcome: AscOutcome | undefined;
    worker.once('message', (m: AscOutcome) => {
      outcome = m;
      void worker.terminate();
    });
    worker.once('error', reject);
    worker.once('exit', () => (outcome ? resolve(outcome) : reject(new Error('the AssemblyScript compiler exited without an answer'))));
  });
}

/** The first error of asc's report, as "FILE(LINE,COL): ERROR ASnnn: message". */
function ascError(report: string, err: string | null, dir: string): string {
  const lines = report.split('\n').map((l) => l.trim());
  const at = lines.findIndex((l) => /^ERROR\b/.test(l));
  if (at < 0) {
    const crash = lines.find((l) => /Error\b/.test(l)) ?? err ?? 'unknown error';
    return `${dir}: ${crash.replace(/^▌\s*/, '')}`;
  }
  const where = lines.slice(at + 1).find((l) => /\bin \S+\(\d+,\d+\)/.test(l))?.match(/\bin (\S+\(\d+,\d+\))/)?.[1];
  return where ? `${join(dir, where)}: ${lines[at]}` : `${dir}: ${lines[at]}`;
}

/** Writes then renames, so a concurrent reader (parallel test files) never sees half a file. */
function writeOutput(output: string, bytes: Uint8Array): void {
  const tmp = `${output}.${process.pid}.${Date.now()}.tmp`;
  writeFileSync(tmp, bytes);
  renameSync(tmp, output);
}

async function buildAssemblyScript(srcDir: string, outDir: string, opts: BuildOptions): Promise<BuiltExample[]> {
  const dirs = readdirSync(srcDir, { withFileTypes: true })
    .filter((e) => e.isDirectory() && existsSync(join(srcDir, e.name, ASC_ENTRY)))
    .map((e) => e.name)
    .sort();
  const results: BuiltExample[] = [];
  for (const name of dirs) {
    const dir = join(srcDir, name);
    const source = join(dir, ASC_ENTRY);
    const output = join(outDir, `${name}.wasm`);
    const config = join(dir, ASC_CONFIG);
    const hasConfig = existsSync(config);
    const inputs = [...filesUnder(join(dir, 'assembly')), ...(hasConfig ? [config] : [])];
    const srcTime = Math.max(...inputs.map((f) => mtimeMs(f) ?? Infinity));
    const outTime = mtimeMs(output);
    if (!opts.force && outTime !== undefined && outTime > srcTime) {
      results.push({ name, source, output, built: false });
      continue;
    }

    const args = [ASC_ENTRY, '--baseDir', dir, '--outFile', `${name}.wasm`, '--noColors'];
    const { binary, report, error } = await runAsc([...args, ...(hasConfig ? ['--config', ASC_CONFIG] : ASC_DEFAULT_FLAGS)]);
    const shown = relative(process.cwd(), dir) || name;
    if (error !== null || binary === null) throw new Error(ascError(report, error, shown));

    mkdirSync(outDir, { recursive: true });
    writeOutput(output, binary);
    results.push({ name, source, output, built: true });
    opts.log?.(`built ${relative(process.cwd(), output) || output} (${binary.length} bytes)`);
  }
  return results;
}

/** Builds all examples; throws an Error with a one-line message on the first one that does not compile. */
export async function buildExamples(opts: BuildOptions = {}): Promise<BuiltExample[]> {
  const srcDir = opts.srcDir ?? EXAMPLES_DIR;
  const outDir = opts.outDir ?? join(srcDir, 'build');
  const sources = readdirSync(srcDir).filter((f) => f.endsWith('.wat')).sort();
  const results: BuiltExample[] = [];
  let wabt: Awaited<ReturnType<typeof wabtInit>> | undefined;

  for (const file of sources) {
    const name = basename(file, '.wat');
    const source = join(srcDir, file);
    const output = join(outDir, `${name}.wasm`);
    const srcTime = mtimeMs(source) ?? Infinity;
    const outTime = mtimeMs(output);
    if (!opts.force && outTime !== undefined && outTime > srcTime) {
      results.push({ name, source, output, built: false });
      continue;
    }

    wabt ??= await wabtInit();
    const text = readFileSync(source, 'utf8');
    const shown = relative(process.cwd(), source) || file;
    let buffer: Uint8Array;
    let mod: ReturnType<typeof wabt.parseWat> | undefined;
    try {
      mod = wabt.parseWat(shown, text);
      mod.resolveNames();
      mod.validate();
      buffer = mod.toBinary({}).buffer;
    } catch (err) {
      const line = firstLine(err);
      throw new Error(line.startsWith(shown) ? line : `${shown}: ${line}`);
    } finally {
      mod?.destroy();
    }

    mkdirSync(outDir, { recursive: true });
    writeOutput(output, buffer);
    results.push({ name, source, output, built: true });
    opts.log?.(`built ${relative(process.cwd(), output) || output} (${buffer.length} bytes)`);
  }
  results.push(...(await buildAssemblyScript(srcDir, outDir, opts)));
  return results;
}

const invokedDirectly =
  process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href;

if (invokedDirectly) {
  try {
    const results = await buildExamples({ log: (line) => console.log(line) });
    const fresh = results.filter((r) => !r.built).length;
    if (fresh > 0) console.log(`${fresh} example(s) up to date`);
  } catch (err) {
    console.error(`build:examples failed: ${firstLine(err)}`);
    process.exitCode = 1;
  }
}
