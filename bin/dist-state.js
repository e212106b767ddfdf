// Whether dist/ (the compiled JavaScript, `npm run build`) matches the
// TypeScript sources beside it. bin/propeller.js runs dist/ only when it does,
// so an edited source is never shadowed by old compiled code.

import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const DIST = join(ROOT, 'dist');
/** Written by bin/build.js with the time the build started. */
export const STAMP = join(DIST, '.build-stamp');
const SOURCE = /\.(ts|js|mts|mjs|json)$/;
const CONFIG = ['tsconfig.json', 'tsconfig.build.json'];

/**
 * The newest modification time of a source file under dir, or 0.
 * @param {string} dir
 * @returns {number}
 */
function newest(dir) {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name.startsWith('.')) continue;
    const p = join(dir, e.name);
    if (e.isDirectory()) t = Math.max(t, newest(p));
    else if (SOURCE.test(e.name)) t = Math.max(t, statSync(p).mtimeMs);
  }
  return t;
}

/**
 * 'missing' without a finished build; 'stale' when a source folder that
 * dist/ was compiled from (or a tsconfig) changed since; else 'fresh'. An
 * installation without sources (the container image) is fresh by definition.
 * @returns {'missing' | 'stale' | 'fresh'}
 */
export function distState() {
  let built;
  try {
    built = statSync(STAMP).mtimeMs;
  } catch {
    return 'missing';
  }
  for (const c of CONFIG) {
    const p = join(ROOT, c);
    if (existsSync(p) && statSync(p).mtimeMs > built) return 'stale';
  }
  for (const e of readdirSync(DIST, { withFileTypes: true })) {
    const src = join(ROOT, e.name);
    if (e.isDirectory() && existsSync(src) && newest(src) > built) return 'stale';
  }
  return 'fresh';
}
