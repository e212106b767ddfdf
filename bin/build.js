#!/usr/bin/env node
// `npm run build`: compiles the sources to JavaScript in dist/ with the
// project's TypeScript compiler (tsconfig.build.json: the runtime folders,
// `.ts` imports rewritten to `.js`; plain .js files such as the wasm worker
// are copied beside their modules), then runs `npm run build:console` when
// package.json has it. `--if-stale` does nothing when dist/ is fresh (npm
// start uses it, so a fresh clone builds once).

import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIST, ROOT, STAMP, distState } from './dist-state.js';

if (process.argv.includes('--if-stale') && distState() === 'fresh') process.exit(0);

const tsc = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');
const started = new Date();
rmSync(DIST, { recursive: true, force: true });
/** @type {(cmd: string, args: string[]) => void} */
const run = (cmd, args) => {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) {
    process.stderr.write(`build: ${[cmd, ...args].join(' ')} failed${r.error ? `: ${r.error.message}` : ''}\n`);
    process.exit(r.status || 1);
  }
};
run(process.execPath, [tsc, '-p', join(ROOT, 'tsconfig.build.json')]);
const scripts = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).scripts ?? {};
if (scripts['build:console']) run(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', '--silent', 'build:console']);
// the stamp carries the start time, so a source saved during the build makes dist/ stale
writeFileSync(STAMP, `${started.toISOString()}\n`);
utimesSync(STAMP, started, started);
