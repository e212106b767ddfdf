// Compiles every examples/*.wat into examples/build/NAME.wasm with the npm `wabt`
// package (wabt.js), so no binary of unknown origin is ever committed.
//
//   node --import tsx examples/build.ts        (npm run build:examples)
//
// Outputs that are newer than their source are skipped. A .wat that fails to
// parse or validate aborts the build with a one-line error and exit code 1.
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import wabtInit from 'wabt';

export const EXAMPLES_DIR = fileURLToPath(new URL('.', import.meta.url));
export const EXAMPLES_BUILD_DIR = join(EXAMPLES_DIR, 'build');

export interface BuiltExample {
  name: string;    // e.g. "hello"
  source: string;  // absolute path of the .wat
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

/** Builds all examples; throws an Error with a one-line message on the first bad .wat. */
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
    // Write then rename, so a concurrent reader (parallel test files) never sees half a file.
    const tmp = `${output}.${process.pid}.${Date.now()}.tmp`;
    writeFileSync(tmp, buffer);
    renameSync(tmp, output);
    results.push({ name, source, output, built: true });
    opts.log?.(`built ${relative(process.cwd(), output) || output} (${buffer.length} bytes)`);
  }
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
