#!/usr/bin/env node
// Runs the compiled command (dist/, `npm run build`) when it matches the
// sources; otherwise the TypeScript sources through tsx, so an edit or a clone
// without a build still runs (only slower to start).
import { distState } from './dist-state.js';

// a specifier in a variable, so that type-checking the sources does not walk into dist/
const compiled = '../dist/main.js';
if (distState() === 'fresh') {
  await import(compiled);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  await import('../cli/main.ts');
}
