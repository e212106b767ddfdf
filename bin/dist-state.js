// Whether dist/ (the bundled command, `npm run build`) matches the TypeScript
// sources beside it. bin/propeller.js runs dist/ only when it does, so an
// edited source is never shadowed by old compiled code.

import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const DIST = join(ROOT, 'dist');
/** Written last by bin/build.js, with the time the build started. */
export const STAMP = join(DIST, '.build-stamp');
/** Our source files in the bundle, relative to ROOT (written by bin/build.js). */
export const INPUTS = join(DIST, 'inputs.json');

/** @param {string} path */
function mtime(path) {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return undefined;
  }
}

/**
 * 'missing' without a finished build; 'stale' when a source file the bundle
 * was made from changed or went away since; else 'fresh'. An installation
 * without sources (the container image) is fresh by definition.
 * @returns {'missing' | 'stale' | 'fresh'}
 */
export function distState() {
  const built = mtime(STAMP);
  if (built === undefined) return 'missing';
  /** @type {string[]} */
  let inputs;
  try {
    inputs = JSON.parse(readFileSync(INPUTS, 'utf8'));
  } catch {
    return 'missing';
  }
  if (mtime(join(ROOT, 'cli')) === undefined) return 'fresh';
  for (const f of inputs) {
    const t = mtime(join(ROOT, f));
    if (t === undefined || t > built) return 'stale';
  }
  return 'fresh';
}
