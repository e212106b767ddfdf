// The YAML examples of the seed documents (000, 001, 003, 004), copied
// unchanged into examples/seed/ so that the tests apply every one of them to a
// real apiserver without the repository depending on where the seeds live.
// Each copy starts with one comment line naming its seed and line; the rest is
// the example byte for byte: a ```yaml block, or a `kubectl apply -f - <<EOF`
// heredoc in a ```bash block.
//
//   node --import tsx k8s-adapter/examples/extract.ts SEED_DIR   (re)writes examples/seed/

import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';

export const SEED_EXAMPLES_DIR = new URL('./seed/', import.meta.url).pathname;
/** The seeds that describe our kinds (002 is another project's operator). */
export const SEEDS = /^(000|001|003|004)_.*\.txt$/;

export interface Example {
  /** File name in examples/seed/. */
  file: string;
  /** The first line of the copy: where it came from. */
  header: string;
  /** The example, unchanged. */
  body: string;
}

function slug(body: string): string {
  const doc = parseAllDocuments(body)[0]?.toJS() as { kind?: unknown; metadata?: { name?: unknown } } | null | undefined;
  if (doc && typeof doc.kind === 'string' && typeof doc.metadata?.name === 'string') return `${doc.kind.toLowerCase()}-${doc.metadata.name}`;
  return `fragment-${Object.keys(doc ?? {})[0] ?? 'empty'}`;
}

/** The YAML examples of one seed document, in order. */
export function extractExamples(seedFile: string, text: string): Example[] {
  const lines = text.split('\n');
  const seed = seedFile.slice(0, 3);
  const out: Example[] = [];
  let fence: string | undefined;
  let start = 0;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (fence === undefined) {
      const m = line.match(/^```(\w*)\s*$/);
      if (m) [fence, start] = [m[1]!, i + 1];
      continue;
    }
    if (line.trim() === '```') {
      const block = lines.slice(start, i);
      if (fence === 'yaml') out.push(example(seedFile, seed, out.length + 1, start + 1, 'yaml block', block));
      if (fence === 'bash') {
        for (let j = 0; j < block.length; j++) {
          if (!/kubectl apply -f - <<EOF\s*$/.test(block[j]!)) continue;
          const end = block.indexOf('EOF', j + 1);
          if (end > j) out.push(example(seedFile, seed, out.length + 1, start + j + 2, 'kubectl apply heredoc', block.slice(j + 1, end)));
        }
      }
      fence = undefined;
    }
  }
  return out;
}

function example(seedFile: string, seed: string, n: number, line: number, what: string, block: string[]): Example {
  const body = block.join('\n') + '\n';
  return { file: `${seed}-${String(n).padStart(2, '0')}-${slug(body)}.yaml`, header: `# From seed ${seedFile}, line ${line} (${what}); unchanged below this line.`, body };
}

/** An example copy as written on disk. */
export function fileText(e: Example): string {
  return `${e.header}\n${e.body}`;
}

/** Every example of the seeds in a directory. */
export function examplesIn(seedDir: string): Example[] {
  return readdirSync(seedDir)
    .filter((f) => SEEDS.test(f))
    .sort()
    .flatMap((f) => extractExamples(f, readFileSync(join(seedDir, f), 'utf8')));
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('usage: node --import tsx k8s-adapter/examples/extract.ts SEED_DIR\n');
    process.exit(2);
  }
  rmSync(SEED_EXAMPLES_DIR, { recursive: true, force: true });
  mkdirSync(SEED_EXAMPLES_DIR, { recursive: true });
  const all = examplesIn(dir);
  for (const e of all) writeFileSync(join(SEED_EXAMPLES_DIR, e.file), fileText(e));
  process.stdout.write(`${all.length} examples written to ${SEED_EXAMPLES_DIR}\n`);
}
