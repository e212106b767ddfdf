// The esbuild options of the shipped bundle (dist/), shared by bin/build.js and
// bench/bundle-broker.ts (which bundles the broker alone the same way), so a
// benchmark or test of "the built broker" cannot drift from what ships.

/** Left outside the bundle: native code (better-sqlite3, cbor-extract), the Kubernetes client and pg (large, loaded by few commands), tsx. */
export const BUNDLE_OPTIONS = Object.freeze({
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['better-sqlite3', 'cbor-extract', '@kubernetes/client-node', 'pg', 'tsx'],
  // bundled CommonJS packages call require() for Node's own modules
  banner: { js: "import { createRequire as __propellerRequire } from 'node:module'; const require = __propellerRequire(import.meta.url);" },
  logLevel: 'warning',
});
