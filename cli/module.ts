// `propeller module push|pull`: WebAssembly modules to and from an OCI registry,
// with no other tool needed.

import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { formatOciRef, OciError, parseOciRef, pullModule, pushModule, type OciAuth, type OciOptions, type OciRef } from '../control-plane/modules/oci.ts';
import { UsageError, int, str, type Command, type Options } from './args.ts';

const registryOptions: Options = {
  username: { type: 'string', short: 'u' },
  password: { type: 'string', short: 'p' },
  token: { type: 'string' },
  insecure: { type: 'boolean' },
  timeout: { type: 'string' },
};
const registryHelp = `  -u, --username USER    registry user (env PROPELLER_OCI_USERNAME); needs --password
  -p, --password PASS    registry password (env PROPELLER_OCI_PASSWORD)
  --token TOKEN          a registry bearer token instead (env PROPELLER_OCI_TOKEN)
  --insecure             plain http even for a registry not on loopback
  --timeout SECONDS      give up after this long (default 60)`;
const authNote = `  Anonymous when no credentials are given; a registry that answers with a
  Bearer challenge gets its token fetched from its realm (with USER:PASS if given).
  127.0.0.1, localhost and ::1 are spoken to in plain http, others over https.`;

/** Credentials from flags, else from the environment; never half of a pair, never both kinds. */
export function authFrom(v: Record<string, unknown>, env = process.env): OciAuth | undefined {
  const flagged = str(v.username) !== undefined || str(v.password) !== undefined || str(v.token) !== undefined;
  const username = flagged ? str(v.username) : env.PROPELLER_OCI_USERNAME || undefined;
  const password = flagged ? str(v.password) : env.PROPELLER_OCI_PASSWORD || undefined;
  const token = flagged ? str(v.token) : env.PROPELLER_OCI_TOKEN || undefined;
  const src = flagged ? { u: '--username', p: '--password', t: '--token' } : { u: 'PROPELLER_OCI_USERNAME', p: 'PROPELLER_OCI_PASSWORD', t: 'PROPELLER_OCI_TOKEN' };
  if (token !== undefined && (username !== undefined || password !== undefined)) throw new UsageError(`give either ${src.u}/${src.p} or ${src.t}, not both`);
  if (token !== undefined) return { token };
  if (username !== undefined && password === undefined) throw new UsageError(`${src.u} needs ${src.p}`);
  if (password !== undefined && username === undefined) throw new UsageError(`${src.p} needs ${src.u}`);
  return username !== undefined ? { username, password: password! } : undefined;
}

function optionsFrom(v: Record<string, unknown>): OciOptions {
  const auth = authFrom(v);
  if (v.timeout === '0') throw new UsageError('--timeout must be at least 1 second');
  return { ...(auth ? { auth } : {}), ...(v.insecure ? { insecure: true } : {}), timeoutMs: int('timeout', v.timeout, 60) * 1000 };
}

function refFrom(s: string | undefined): OciRef {
  if (!s) throw new UsageError('expected an oci://HOST[:PORT]/REPOSITORY[:TAG] reference');
  try {
    return parseOciRef(s);
  } catch (e) {
    if (e instanceof OciError) throw new UsageError(e.message);
    throw e;
  }
}

export const modulePush: Command = {
  usage: 'propeller module push FILE.wasm oci://HOST[:PORT]/REPOSITORY[:TAG] [--username U --password P | --token T] [--insecure]',
  summary: 'push a WebAssembly module to an OCI registry',
  options: { ...registryOptions, json: { type: 'boolean' } },
  help: `${registryHelp}
  --json                 print {ref, manifest_digest, digest, size} as JSON
${authNote}
  Without a tag the tag is "latest". The module becomes a one-layer OCI image
  manifest (layer application/wasm). Prints the pushed reference pinned to its
  manifest digest, then the module's size and digest.`,
  async run(v, pos) {
    if (pos.length !== 2) throw new UsageError('expected FILE.wasm and an oci:// reference');
    const [file, refText] = pos as [string, string];
    const ref = refFrom(refText);
    const opts = optionsFrom(v);
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (e) {
      throw new UsageError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const r = await pushModule(bytes, ref, { ...opts, fileName: basename(file) });
    const pinned = formatOciRef({ ...ref, digest: r.manifestDigest });
    if (v.json) {
      process.stdout.write(JSON.stringify({ ref: pinned, manifest_digest: r.manifestDigest, digest: r.digest, size: r.size }, null, 2) + '\n');
    } else {
      process.stdout.write(`pushed ${pinned} (${r.size} bytes, module ${r.digest})\n`);
    }
  },
};

export const modulePull: Command = {
  usage: 'propeller module pull oci://HOST[:PORT]/REPOSITORY[:TAG|@sha256:DIGEST] [-o FILE] [--username U --password P | --token T] [--insecure]',
  summary: 'pull a WebAssembly module from an OCI registry, verified',
  options: { ...registryOptions, output: { type: 'string', short: 'o' }, 'max-size': { type: 'string' } },
  help: `  -o, --output FILE      where to write the module (default REPOSITORY's last part + .wasm; - for stdout)
  --max-size BYTES       refuse a larger module (default 67108864, 64 MiB)
${registryHelp}
${authNote}
  The module's sha256 must match its layer digest (and, for a reference by
  digest, the manifest's too), and it must be a core WebAssembly module;
  otherwise nothing is written.`,
  async run(v, pos) {
    if (pos.length !== 1) throw new UsageError('expected exactly one oci:// reference');
    const ref = refFrom(pos[0]);
    const opts = optionsFrom(v);
    const out = str(v.output) ?? `${ref.repository.split('/').pop()}.wasm`;
    const m = await pullModule(ref, { ...opts, maxBytes: int('max-size', v['max-size'], 64 * 1024 * 1024) });
    const line = `pulled ${formatOciRef({ ...ref, digest: m.manifestDigest })} (${m.bytes.length} bytes, module ${m.digest})`;
    if (out === '-') {
      process.stdout.write(m.bytes);
      process.stderr.write(`${line}\n`);
      return;
    }
    // Write then rename, so the file is either the whole verified module or untouched.
    const tmp = `${out}.${process.pid}.tmp`;
    try {
      writeFileSync(tmp, m.bytes);
      renameSync(tmp, out);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw new Error(`cannot write ${out}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    process.stdout.write(`${line} -> ${out}\n`);
  },
};
