// Every YAML example of the seeds, applied unchanged with kubectl while the
// adapter runs against a real control plane: each resource is reconciled —
// it gets a status (a phase, or a Ready condition that says why it cannot
// go on, e.g. an oci://registry.example.com module that cannot be fetched).

import test from 'ava';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { startAdapter, type Adapter } from '../k8s-adapter/adapter.ts';
import { eventually, getJson, installCrds, k8sCluster, kubectlOk } from './helpers/k8s.ts';
import { startStack, until, type Stack } from './helpers/stack.ts';

const k8s = k8sCluster(test);
const SEEDS = new URL('../k8s-adapter/examples/seed/', import.meta.url).pathname;
const OURS = new Set(['WasmTask', 'PropletGroup', 'FederatedJob', 'TrainingRound', 'ModelCheckpoint', 'Proplet', 'Task']);

let stack: Stack;
let adapter: Adapter | undefined;

if (k8s.available) {
  test.before(async () => {
    await installCrds(await k8s.started());
    stack = await startStack();
    await stack.addProplet('proplet-1', { propletType: 'k8s' });
    adapter = await startAdapter({
      kubeconfig: k8s.cluster().env.KUBECONFIG!,
      controlPlane: stack.api,
      leaderElection: { namespace: 'default', name: 'seeds-test', identity: 'seeds', leaseDurationSeconds: 4, renewIntervalMs: 500, retryIntervalMs: 500 },
      log: () => {},
      pollMs: 300,
      job: { image: 'registry.example/propeller/propeller-edge:test', broker: stack.broker.url },
    });
    await until(() => adapter!.acting, 'adapter leading', 10_000);
  });
  test.after.always(async () => {
    await adapter?.close().catch(() => {});
    await stack?.close();
  });
}

interface Doc {
  kind: string;
  metadata: { name: string; namespace?: string };
  status?: { phase?: string; conditions?: { type: string; status: string; reason?: string; message?: string }[] };
}

k8s.test('every seed example applies unchanged and is reconciled: a phase, or a Ready condition saying why not', async (t) => {
  const c = k8s.cluster();
  // the seed's ConfigMap lives where the seed installs the operator
  await kubectlOk(c, ['create', 'namespace', 'propeller-system']);
  const docs: Doc[] = [];
  for (const f of readdirSync(SEEDS).filter((x) => x.endsWith('.yaml') && !x.includes('-fragment-')).sort()) {
    const text = readFileSync(join(SEEDS, f), 'utf8');
    for (const d of parseAllDocuments(text)) {
      const o = d.toJS() as Doc | null;
      if (o?.kind && OURS.has(o.kind)) docs.push(o);
    }
    await kubectlOk(c, ['apply', '-f', join(SEEDS, f)]);
  }
  t.true(docs.length >= 20, `${docs.length} seed resources`);
  const unique = [...new Map(docs.map((d) => [`${d.kind}/${d.metadata.namespace ?? 'default'}/${d.metadata.name}`, d])).values()];
  // all at once: the slowest (a job whose model registry does not exist) bounds the wait
  const got = await Promise.all(
    unique.map((d) =>
      eventually(
        `${d.kind} ${d.metadata.name} reconciled`,
        () => getJson<Doc>(c, [d.kind.toLowerCase(), d.metadata.name, '-n', d.metadata.namespace ?? 'default']),
        (o) => !!o && (!!o.status?.phase || !!o.status?.conditions?.some((x) => x.type === 'Ready')),
        30_000,
      ).catch(() => undefined),
    ),
  );
  const seen: string[] = [];
  unique.forEach((d, i) => {
    const o = got[i];
    const ready = o?.status?.conditions?.find((x) => x.type === 'Ready');
    seen.push(`${d.kind} ${d.metadata.name}: ${o?.status?.phase ?? '-'}${ready ? ` (Ready=${ready.status} ${ready.reason}: ${ready.message})` : ''}`);
    t.truthy(o?.status?.phase || ready, `${d.kind} ${d.metadata.namespace ?? 'default'}/${d.metadata.name} has a status`);
    if (ready?.status === 'False') t.truthy(ready.message, `${d.kind} ${d.metadata.name}: a Ready=False says why`);
  });
  t.log(seen.join('\n'));
});
