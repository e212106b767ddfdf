// The FL part of the HTTP API: /fl/jobs, /fl/rounds, /fl/checkpoints and the
// model store (/models). Jobs and rounds are posted as the seed's manifests,
// YAML or JSON; models travel as compact CBOR, or as JSON for people.

import type { IncomingMessage } from 'node:http';
import { decodeModel, encodeModel, modelFromJson, modelToJson } from '../../protocol/model-format.ts';
import { HttpError, RawBody, type HttpApi } from '../http-api.ts';
import { InputError } from '../task-input.ts';
import type { FlCoordinator } from './coordinator.ts';
import { parseDocument, parseFederatedJob, parseTrainingRound } from './resources.ts';

const MAX_MANIFEST = 1024 * 1024;
const MAX_MODEL = 16 * 1024 * 1024;
const REF = /^sha256:[0-9a-f]{64}$/;

async function manifest(api: HttpApi, req: IncomingMessage): Promise<unknown> {
  const type = req.headers['content-type'] ?? 'application/json';
  if (!/^application\/(json|yaml|x-yaml)|^text\/(yaml|x-yaml)/.test(type)) throw new HttpError(415, `expected application/json or application/yaml, got ${type}`);
  const raw = await api.read(req, MAX_MANIFEST);
  return parseDocument(raw.toString('utf8'), type);
}

export function addFlRoutes(api: HttpApi, fl: FlCoordinator): void {
  const list = <T>(key: string, items: T[]) => ({ total: items.length, [key]: items });
  const byCreation = <T extends { metadata: { creationTimestamp: string; name: string } }>(a: T, b: T) =>
    a.metadata.creationTimestamp.localeCompare(b.metadata.creationTimestamp) || a.metadata.name.localeCompare(b.metadata.name);

  api.route('POST', '/fl/jobs', async (req) => {
    const { name, spec } = parseFederatedJob(await manifest(api, req));
    return fl.createJob(name, spec);
  }, 201);
  api.route('GET', '/fl/jobs', () => list('jobs', fl.jobs().sort(byCreation)));
  api.route('GET', '/fl/jobs/{name}', (_req, _url, [name]) => fl.job(name!));
  api.route('DELETE', '/fl/jobs/{name}', (_req, _url, [name]) => {
    fl.deleteJob(name!);
    return { deleted: name };
  });
  api.route('GET', '/fl/jobs/{name}/rounds', (_req, _url, [name]) => {
    fl.job(name!);
    return list('rounds', fl.rounds(name).sort(byCreation));
  });
  api.route('GET', '/fl/jobs/{name}/checkpoints', (_req, _url, [name]) => {
    fl.job(name!);
    return list('checkpoints', fl.checkpoints(name).sort(byCreation));
  });

  api.route('POST', '/fl/rounds', async (req) => {
    const { name, spec } = parseTrainingRound(await manifest(api, req));
    return fl.createRound(name, spec);
  }, 201);
  api.route('GET', '/fl/rounds', (_req, url) => list('rounds', fl.rounds(url.searchParams.get('job') ?? undefined).sort(byCreation)));
  api.route('GET', '/fl/rounds/{name}', (_req, _url, [name]) => fl.round(name!));
  api.route('DELETE', '/fl/rounds/{name}', (_req, _url, [name]) => {
    fl.deleteRound(name!);
    return { deleted: name };
  });

  api.route('GET', '/fl/checkpoints', (_req, url) => list('checkpoints', fl.checkpoints(url.searchParams.get('job') ?? undefined).sort(byCreation)));
  api.route('GET', '/fl/checkpoints/{name}', (_req, _url, [name]) => fl.checkpoint(name!));

  // A model: compact CBOR (application/cbor or octet-stream) or the JSON form.
  api.route('POST', '/models', async (req) => {
    const type = req.headers['content-type'] ?? 'application/cbor';
    const raw = await api.read(req, MAX_MODEL);
    let bytes: Uint8Array;
    if (type.startsWith('application/json')) {
      let json: unknown;
      try {
        json = JSON.parse(raw.toString('utf8'));
      } catch (e) {
        throw new InputError('body', `is not valid JSON: ${(e as Error).message}`);
      }
      try {
        bytes = encodeModel(modelFromJson(json));
      } catch (e) {
        throw new InputError('model', (e as Error).message);
      }
    } else if (type.startsWith('application/cbor') || type.startsWith('application/octet-stream')) {
      bytes = new Uint8Array(raw);
    } else throw new HttpError(415, `expected application/cbor or application/json, got ${type}`);
    const ref = fl.putModel(bytes);
    return { ref, size: bytes.length };
  }, 201);
  api.route('GET', '/models/{ref}', (_req, url, [ref]) => {
    if (!REF.test(ref!)) throw new HttpError(400, 'ref: must be sha256:<64 lowercase hex>', 'ref');
    const bytes = fl.model(ref!);
    if (!bytes) throw new HttpError(404, `model ${ref} not found`);
    const format = url.searchParams.get('format') ?? 'cbor';
    if (format === 'json') return modelToJson(decodeModel(bytes));
    if (format !== 'cbor') throw new HttpError(400, 'format: must be cbor or json', 'format');
    return new RawBody('application/cbor', bytes, { etag: `"${ref}"`, 'cache-control': 'public, max-age=31536000, immutable' });
  });
}
