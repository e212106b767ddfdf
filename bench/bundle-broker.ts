// The broker bundled as bin/build.js bundles the command (dist/: Aedes and its
// dependencies inside the bundle), into a directory of its own: for
// `bench broker --built` and test/broker-bundle.test.ts, which must not touch
// dist/ (other runs may be using it). The esbuild options are bin/build.js's (bin/bundle-options.js).

import { symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { BUNDLE_OPTIONS } from '../bin/bundle-options.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Bundles `entry` (a path, or relative to the checkout) into DIR/out/NAME.js; returns that file. */
export async function bundleLikeDist(entry: string, name: string, dir: string): Promise<string> {
  // the bundle reads Aedes' files at start (slim-client.ts), as dist/ does from the checkout
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  await build({
    absWorkingDir: ROOT,
    entryPoints: { [name]: entry },
    outdir: join(dir, 'out'),
    ...BUNDLE_OPTIONS,
  });
  return join(dir, 'out', `${name}.js`);
}
