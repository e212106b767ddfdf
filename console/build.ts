// Bundles the console (preact + uPlot, no CDN) into console/dist: index.html
// and ui/ with content-hashed names, which the control plane serves with
// long-lived caching. `--if-stale` skips the build when dist is newer than
// every source file (npm start and npm test use it).

import { build } from 'esbuild';
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('.', import.meta.url));
const SRC = join(ROOT, 'src');
export const DIST = join(ROOT, 'dist');

function newest(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newest(p) : statSync(p).mtimeMs);
  }
  return t;
}

export function stale(): boolean {
  const index = join(DIST, 'index.html');
  if (!existsSync(index)) return true;
  return Math.max(newest(SRC), statSync(fileURLToPath(import.meta.url)).mtimeMs) > statSync(index).mtimeMs;
}

export async function buildConsole(): Promise<{ js: string; css: string }> {
  const out = join(DIST, 'ui');
  rmSync(DIST, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  const r = await build({
    entryPoints: { console: join(SRC, 'main.tsx') },
    bundle: true,
    minify: true,
    sourcemap: 'linked',
    format: 'esm',
    target: ['chrome110', 'firefox110', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    outdir: out,
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    metafile: true,
    logLevel: 'warning',
    legalComments: 'linked',
  });
  const files = Object.keys(r.metafile.outputs).map((f) => basename(f));
  const js = files.find((f) => f.endsWith('.js'))!;
  const css = files.find((f) => f.endsWith('.css'))!;
  writeFileSync(
    join(DIST, 'index.html'),
    `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Propeller console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/ui/${css}">
<script type="module" src="/ui/${js}"></script>
</head>
<body>
<div id="app"><noscript>The Propeller console needs JavaScript; the HTTP API and the propeller command work without it.</noscript></div>
</body>
</html>
`,
  );
  return { js, css };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (process.argv.includes('--if-stale') && !stale()) process.exit(0);
  const { js, css } = await buildConsole();
  console.log(`console built: ${join(DIST, 'index.html')}, ui/${js}, ui/${css}`);
}
