#!/usr/bin/env node
// `npm run build`: the command as JavaScript in dist/, for a fast start.
//
// esbuild bundles cli/main.ts with code splitting: each command, loaded by a
// dynamic import in cli/commands.ts, is a chunk of its own, and the npm
// packages it uses are inside it. Measured (bench/startup.ts): importing
// `serve` from one-file-per-module output (tsc 7 emits that fine with
// rewriteRelativeImportExtensions) took 350-1,000 ms on a loaded 2-core
// machine, from the bundle 180-240 ms: most of the time was Node resolving and
// reading the hundreds of small CommonJS files of aedes, mqtt, prom-client and
// ws. Type checking stays with tsc (`npm run typecheck`, `npm test`).
//
// Left outside the bundle: packages with native code (better-sqlite3,
// cbor-extract), the Kubernetes client and pg (large, loaded only by the
// commands that need them), tsx. The wasm worker is an entry of its own,
// dist/wasm-worker.js, where wasm-runtime/index.ts looks for it beside the
// chunk that loads it.
//
// Then `npm run build:console` when package.json has it. `--if-stale` does
// nothing when dist/ is fresh (npm start uses it, so a fresh clone builds once).

import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { BUNDLE_OPTIONS } from './bundle-options.js';
import { DIST, INPUTS, ROOT, STAMP, distState } from './dist-state.js';

if (process.argv.includes('--if-stale') && distState() === 'fresh') process.exit(0);

/** @type {typeof import('esbuild')} */
let esbuild;
try {
  esbuild = await import('esbuild');
} catch {
  // an install without dev dependencies: bin/propeller.js runs the sources through tsx instead
  process.stderr.write('build: esbuild is not installed (npm install --omit=dev?); the command will run its TypeScript sources through tsx\n');
  process.exit(process.argv.includes('--if-stale') ? 0 : 1);
}
const started = new Date();
rmSync(DIST, { recursive: true, force: true });
const result = await esbuild.build({
  absWorkingDir: ROOT,
  entryPoints: { main: 'cli/main.ts', 'wasm-worker': 'wasm-runtime/wasm-worker.js' },
  outdir: DIST,
  ...BUNDLE_OPTIONS,
  metafile: true,
}).catch(() => process.exit(1));
// our sources in the bundle, for dist-state.js to compare against
const inputs = Object.keys(result.metafile.inputs).filter((f) => !f.includes('node_modules/')).sort();
writeFileSync(INPUTS, JSON.stringify(inputs.map((f) => relative(ROOT, join(ROOT, f))), null, 1) + '\n');

const scripts = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts ?? {};
if (scripts['build:console']) {
  const r = spawnSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', '--silent', 'build:console'], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write('build: npm run build:console failed\n');
    process.exit(r.status || 1);
  }
}
// the stamp carries the start time, so a source saved during the build makes dist/ stale
writeFileSync(STAMP, `${started.toISOString()}\n`);
utimesSync(STAMP, started, started);
