// `propeller fl ...`: federated learning from a terminal. `fl run` takes the
// same FederatedJob YAML that `kubectl apply` takes; a modelRef or
// taskWasmImage that names a local file is uploaded first and replaced by its
// digest, so an experiment runs from a laptop without a registry.

import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ApiError, type ControlPlaneClient } from '../control-plane/client.ts';
import type { FederatedJob, TrainingRound } from '../control-plane/fl/resources.ts';
import { sha256Digest } from '../protocol/index.ts';
import { decodeModel, modelToJson } from '../protocol/model-format.ts';
import { UsageError, str, type Command } from './args.ts';
import { table } from './output.ts';
import { apiClient, apiHelp, apiOptions } from './settings.ts';

const client = apiClient;

const REMOTE = /^(sha256:[0-9a-f]{64}|https?:\/\/|oci:\/\/)/;

function readFile(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** Uploads local files named by the job and puts their digests in their place. */
async function uploadLocal(api: ControlPlaneClient, spec: Record<string, unknown>, base: string): Promise<string[]> {
  const notes: string[] = [];
  if (typeof spec.modelRef === 'string' && !REMOTE.test(spec.modelRef)) {
    const path = resolve(base, spec.modelRef);
    const bytes = readFile(path);
    let body: Uint8Array | object = bytes;
    if (path.endsWith('.json')) {
      try {
        body = JSON.parse(bytes.toString('utf8')) as object;
      } catch (e) {
        throw new UsageError(`${path}: not JSON: ${(e as Error).message}`);
      }
    }
    const { ref } = await api.pushModel(body);
    notes.push(`model ${spec.modelRef} → ${ref}`);
    spec.modelRef = ref;
  }
  if (typeof spec.taskWasmImage === 'string' && !REMOTE.test(spec.taskWasmImage)) {
    const { digest } = await api.pushModule(readFile(resolve(base, spec.taskWasmImage)));
    notes.push(`module ${spec.taskWasmImage} → ${digest}`);
    spec.taskWasmImage = digest;
  }
  return notes;
}

const fmt = (x: number | undefined, digits = 3) => (x === undefined ? '-' : x.toFixed(digits));

function bar(done: number, of: number, width = 20): string {
  const n = of > 0 ? Math.min(width, Math.round((done / of) * width)) : 0;
  return `[${'#'.repeat(n)}${'-'.repeat(width - n)}]`;
}

/** One line per round: progress toward k, time left, and the round's metrics. */
export function renderJob(job: FederatedJob, rounds: TrainingRound[], now = Date.now()): string {
  const s = job.status;
  const lines = [`${job.metadata.name}  ${s.phase}  round ${s.currentRound}/${job.spec.rounds.total}  completed ${s.completedRounds}  k ${job.spec.kOfN}${s.message ? `  ${s.message}` : ''}`];
  for (const r of rounds) {
    const st = r.status;
    const left = st.phase === 'Running' && st.deadline ? `${Math.max(0, Math.ceil((Date.parse(st.deadline) - now) / 1000))}s left` : '';
    const refused = st.refused.late + st.refused.notParticipant + st.refused.stale + st.refused.invalid;
    lines.push(
      `  ${r.metadata.name.padEnd(24)} ${bar(st.updatesReceived, st.updatesRequired)} ${st.updatesReceived}/${st.updatesRequired} updates  ${st.phase.padEnd(11)} ${left.padEnd(9)} loss ${fmt(st.metrics?.loss)}  acc ${fmt(st.metrics?.accuracy)}${refused ? `  refused ${refused} (late ${st.refused.late})` : ''}`,
    );
  }
  return lines.join('\n') + '\n';
}

async function watchJob(api: ControlPlaneClient, name: string, intervalMs: number): Promise<number> {
  const tty = process.stdout.isTTY;
  let last = '';
  for (;;) {
    const job = await api.getFlJob(name);
    const rounds = (await api.flRounds(name)).rounds;
    const text = renderJob(job, rounds);
    if (tty) process.stdout.write(`\x1b[H\x1b[2J${text}`);
    else if (text.replace(/\d+s left/g, '') !== last.replace(/\d+s left/g, '')) process.stdout.write(text);
    last = text;
    if (job.status.phase === 'Completed') return 0;
    if (job.status.phase === 'Failed') return 1;
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export const flRun: Command = {
  usage: 'propeller fl run JOB.yaml [--watch] [options]',
  summary: 'start a FederatedJob from its YAML (the same file kubectl apply takes)',
  options: { ...apiOptions, watch: { type: 'boolean', short: 'w' }, replace: { type: 'boolean' } },
  help: `  -w, --watch            then follow it as 'fl watch' does; exit 0 when it completes, 1 when it fails
  --replace              delete a job of the same name first, with its rounds (as 'fl delete'
                         does), so an experiment can be run again as it is
${apiHelp}
  A spec.modelRef or spec.taskWasmImage that is a local path (relative to the
  YAML file) is uploaded first: a model as CBOR, or JSON when it ends in .json;
  a module as wasm. Its sha256 digest replaces the path.`,
  async run(v, pos) {
    if (pos.length !== 1) throw new UsageError('expected exactly one YAML or JSON file');
    const file = pos[0]!;
    let doc: unknown;
    try {
      doc = parseYaml(readFile(file).toString('utf8'));
    } catch (e) {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`${file}: not YAML: ${(e as Error).message.split('\n')[0]}`);
    }
    if (doc === null || typeof doc !== 'object' || typeof (doc as { spec?: unknown }).spec !== 'object') throw new UsageError(`${file}: expected a FederatedJob with metadata.name and spec`);
    const api = client(v);
    for (const n of await uploadLocal(api, (doc as { spec: Record<string, unknown> }).spec, dirname(resolve(file)))) process.stderr.write(`uploaded ${n}\n`);
    const name = (doc as { metadata?: { name?: unknown } }).metadata?.name;
    if (v.replace && typeof name === 'string') await deleteJob(api, name, true);
    const job = await api.createFlJob(doc).catch((e: unknown) => {
      if (e instanceof ApiError && e.status === 409) throw new ApiError(409, `${e.message}; run it again with --replace, or delete it first: propeller fl delete ${String(name)}`);
      throw e;
    });
    process.stdout.write(`federatedjob ${job.metadata.name} created: ${job.spec.rounds.total} rounds, k ${job.spec.kOfN}\n`);
    if (!v.watch) {
      process.stdout.write(`follow it with: propeller fl watch ${job.metadata.name}\n`);
      return 0;
    }
    return watchJob(api, job.metadata.name, 500);
  },
};

export const flWatch: Command = {
  usage: 'propeller fl watch JOB [options]',
  summary: 'follow a FederatedJob: a progress bar per round, time left, metrics',
  options: { ...apiOptions, interval: { type: 'string' } },
  help: `  --interval MS          poll period (default 500)
${apiHelp}
  Exits 0 when the job completes, 1 when it fails.`,
  async run(v, pos) {
    if (pos.length !== 1) throw new UsageError('expected exactly one job name');
    const ms = str(v.interval) === undefined ? 500 : Number(v.interval);
    if (!Number.isInteger(ms) || ms < 50) throw new UsageError('--interval must be an integer of at least 50 (ms)');
    return watchJob(client(v), pos[0]!, ms);
  },
};

export const flGet: Command = {
  usage: 'propeller fl get [JOB] [options]',
  summary: 'show a FederatedJob as JSON, or list them all',
  options: { ...apiOptions },
  help: apiHelp,
  async run(v, pos) {
    const api = client(v);
    if (pos.length > 1) throw new UsageError('expected at most one job name');
    if (pos.length === 1) {
      process.stdout.write(JSON.stringify(await api.getFlJob(pos[0]!), null, 2) + '\n');
      return;
    }
    const { jobs } = await api.listFlJobs();
    const rows = jobs.map((j) => [j.metadata.name, j.status.phase, `${j.status.completedRounds}/${j.spec.rounds.total}`, String(j.spec.kOfN), j.status.aggregatedModelRef ?? '-']);
    table(['NAME', 'PHASE', 'ROUNDS', 'K', 'MODEL'], rows);
  },
};

export const flDelete: Command = {
  usage: 'propeller fl delete JOB [options]',
  summary: 'delete a FederatedJob (its running round is stopped)',
  options: { ...apiOptions },
  help: `${apiHelp}
  Its rounds go too, so that the name can be used again; its checkpoints (the models) stay.`,
  async run(v, pos) {
    if (pos.length !== 1) throw new UsageError('expected exactly one job name');
    const rounds = await deleteJob(client(v), pos[0]!, false);
    process.stdout.write(`federatedjob ${pos[0]} deleted${rounds ? ` with its ${rounds} round${rounds === 1 ? '' : 's'}` : ''}\n`);
  },
};

/**
 * Deletes a job and then its rounds: the coordinator keeps a deleted job's
 * rounds as history, and a new job of the same name would take them for its
 * own (round-N-JOB) and finish at once without training. Returns how many
 * rounds went; a job that is not there is an error unless `missingOk`.
 */
async function deleteJob(api: ControlPlaneClient, name: string, missingOk: boolean): Promise<number> {
  const absent = (e: unknown) => {
    if (!(missingOk && e instanceof ApiError && e.status === 404)) throw e;
  };
  const rounds = (await api.flRounds(name).catch(absent))?.rounds ?? [];
  await api.deleteFlJob(name).catch(absent);
  for (const r of rounds) {
    await api.deleteFlRound(r.metadata.name).catch((e: unknown) => {
      if (!(e instanceof ApiError && e.status === 404)) throw e;
    });
  }
  return rounds.length;
}

export const flCheckpoints: Command = {
  usage: 'propeller fl checkpoints [JOB] [options]',
  summary: 'list model checkpoints (one per completed round)',
  options: { ...apiOptions },
  help: apiHelp,
  async run(v, pos) {
    if (pos.length > 1) throw new UsageError('expected at most one job name');
    const { checkpoints } = await client(v).flCheckpoints(pos[0]);
    const rows = checkpoints.map((c) => [
      c.metadata.name,
      String(c.spec.metadata.round ?? '-'),
      c.status.phase,
      c.spec.modelRef,
      String(c.status.sizeBytes ?? '-'),
      String(c.spec.metadata.totalSamples),
      fmt(c.spec.metadata.metrics.loss),
      fmt(c.spec.metadata.metrics.accuracy),
    ]);
    table(['NAME', 'ROUND', 'PHASE', 'MODEL', 'BYTES', 'SAMPLES', 'LOSS', 'ACC'], rows);
  },
};

export const flModelPull: Command = {
  usage: 'propeller fl model pull REF|CHECKPOINT|JOB [-o FILE] [--json] [options]',
  summary: 'download a model: by sha256 ref, by checkpoint name, or a job\'s latest aggregate',
  options: { ...apiOptions, output: { type: 'string', short: 'o' }, json: { type: 'boolean' } },
  help: `  -o, --output FILE      where to write it (default NAME.cbor, or .json; - for stdout)
  --json                 the JSON form instead of compact CBOR
${apiHelp}
  The bytes are checked against the sha256 ref before anything is written.`,
  async run(v, pos) {
    if (pos.length !== 1) throw new UsageError('expected exactly one model ref, checkpoint name or job name');
    const api = client(v);
    const what = pos[0]!;
    let ref = what;
    if (!/^sha256:[0-9a-f]{64}$/.test(what)) {
      // 404 means "not that kind of name"; anything else (unreachable, 401) is the answer
      const absent = (e: unknown) => {
        if (e instanceof ApiError && e.status === 404) return undefined;
        throw e;
      };
      const cp = await api.getFlCheckpoint(what).catch(absent);
      const found = cp?.spec.modelRef ?? (await api.getFlJob(what).catch(absent))?.status.aggregatedModelRef;
      if (!found) throw new UsageError(`${what}: no checkpoint of that name, and no job with an aggregated model`);
      ref = found;
    }
    const bytes = await api.pullModel(ref);
    const got = sha256Digest(bytes);
    if (got !== ref) throw new Error(`the control plane sent bytes whose digest is ${got}, not ${ref}; nothing written`);
    const out = v.json ? Buffer.from(JSON.stringify(modelToJson(decodeModel(bytes))) + '\n') : bytes;
    const file = str(v.output) ?? `${/^sha256:/.test(what) ? what.slice(7, 19) : what}.${v.json ? 'json' : 'cbor'}`;
    if (file === '-') {
      process.stdout.write(out);
      return;
    }
    const tmp = `${file}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, out);
      renameSync(tmp, file);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw new Error(`cannot write ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    process.stderr.write(`wrote ${file} (${out.length} bytes, model ${ref})\n`);
  },
};
