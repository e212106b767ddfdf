// Proplet (propeller.absmach.fr): pods or a device, as the control plane's
// registry sees them.
//
// - type k8s → a Deployment NAME of node-proplet pods (proplet-objects.ts).
//   The pods share the MQTT group account NAME-*, issued once (POST /proplets
//   {proplet_id: "NAME-*"}) while the Secret NAME-mqtt does not exist, since
//   issuing again cuts off the old secret. `kubectl scale proplet` changes
//   spec.k8s.replicas, which the Deployment follows. The records of pods that
//   are gone (and not alive) are deleted from the registry. Deleting the
//   Proplet revokes NAME-* (its pods are disconnected) and forgets its pods'
//   records; garbage collection removes the Deployment and the Secret.
// - type external → the device pre-registered (POST /proplets, once) with its
//   credentials Secret NAME-mqtt; deleting the Proplet revokes it.
// - discovery: every few seconds, devices in the registry (type external)
//   that no Proplet claims become Proplets in one namespace, labelled
//   discovered; the adapter issues them nothing and deleting one changes
//   nothing in the control plane (the device, still registered, comes back).
//
// Status is polled from the registry (proplets come and go without
// Kubernetes seeing it): every pollMs while a Proplet is not Ready,
// groupPollMs once it is.

import { AppsV1Api, type V1Deployment } from '@kubernetes/client-node';
import { ApiError } from '../../control-plane/client.ts';
import type { AdapterContext, ControllerFactory } from '../adapter.ts';
import {
  credentialsSecretName,
  discoveredProplet,
  externalCredentialsSecret,
  groupAccount,
  groupCredentialsSecret,
  idConflict,
  isDiscovered,
  isPodId,
  leftoverProplets,
  podSelector,
  propletDeployment,
  propletIdOf,
  propletProblem,
  propletStatus,
  shouldDiscover,
  supersededBy,
  TEMPLATE_HASH_ANNOTATION,
  type ControlPlaneProplet,
  type PropletDefaults,
} from '../proplet-objects.ts';
import { setCondition } from '../runtime/conditions.ts';
import type { Controller, ReconcileResult } from '../runtime/controller.ts';
import { apiMessage, isConflict, isNotFound, MERGE_PATCH } from '../runtime/kube.ts';
import { writeStatus } from '../runtime/status.ts';
import { PROPLET, type Proplet } from '../types.ts';

export interface PropletControllerOptions {
  /** Where discovered devices appear; default $POD_NAMESPACE (the adapter's), else `default`. */
  discoveryNamespace?: string;
  /** How often the registry is searched for new devices; default 3000 ms, 0 turns discovery off. */
  discoveryMs?: number;
  /** The proplet container's command and more env for every pod (PropletDefaults). */
  pods?: Pick<PropletDefaults, 'command' | 'env'>;
}

const cpStatus = (e: unknown, ...codes: number[]) => e instanceof ApiError && codes.includes(e.status);
/** 404: gone already; 501: an external broker manages the accounts. */
const ignoreGone = (e: unknown) => {
  if (!cpStatus(e, 404, 501)) throw e;
};

/** The Proplet controller with its options (tests turn discovery faster, pods' heartbeats shorter). */
export const propletControllerWith =
  (o: PropletControllerOptions = {}): ControllerFactory =>
  (ctx) =>
    propletControllerOf(ctx, o);

export const propletController: ControllerFactory = propletControllerWith();

function propletControllerOf(ctx: AdapterContext, o: PropletControllerOptions): Controller<Proplet> {
  const { cp, events, kube, log } = ctx;
  const apps = kube.config.makeApiClient(AppsV1Api);
  const defaults: PropletDefaults = { broker: ctx.job.broker, domain: ctx.job.domain, channel: ctx.job.channel, ...o.pods };

  const listProplets = async () => ((await kube.custom.listClusterCustomObject({ group: PROPLET.group, version: PROPLET.version, plural: PROPLET.plural })) as { items: Proplet[] }).items;

  /** A Proplet that builds nothing: its status says why (an event the first time). */
  async function refuse(p: Proplet, reason: 'InvalidSpec' | 'IdConflict' | 'DeploymentConflict', message: string): Promise<ReconcileResult> {
    const conditions = setCondition(p.status?.conditions, { type: 'Ready', status: 'False', reason, message }, p.metadata.generation);
    if (await writeStatus(kube, PROPLET, p, { phase: 'Failed', propletIds: [], message, conditions })) await events.record(p, 'Warning', reason, message);
    // a conflict ends when the other object goes
    return reason === 'InvalidSpec' ? {} : { requeueAfterMs: ctx.groupPollMs };
  }

  /** Whether the credentials Secret exists. */
  async function secretExists(p: Proplet): Promise<boolean> {
    try {
      await kube.core.readNamespacedSecret({ name: credentialsSecretName(p), namespace: p.metadata.namespace! });
      return true;
    } catch (e) {
      if (isNotFound(e)) return false;
      throw e;
    }
  }

  /**
   * The credentials Secret, issuing the account only while the Secret does
   * not exist. A Secret someone created meanwhile holds a secret the account
   * no longer has: it is overwritten with the one just issued. False when
   * the control plane issues no secrets (an external broker).
   */
  async function ensureSecret(p: Proplet, account: string, build: (secret: string) => ReturnType<typeof groupCredentialsSecret>): Promise<boolean> {
    if (await secretExists(p)) return true;
    let secret: string;
    try {
      secret = (await cp.addProplet(account, { rotate: true })).secret; // the Secret is absent: a new secret is the intent
    } catch (e) {
      if (cpStatus(e, 501)) return false;
      throw e;
    }
    const body = build(secret);
    const namespace = p.metadata.namespace!;
    try {
      await kube.core.createNamespacedSecret({ namespace, body });
    } catch (e) {
      if (!isConflict(e)) throw e;
      await kube.core.patchNamespacedSecret({ name: body.metadata!.name!, namespace, body: { stringData: body.stringData } }, MERGE_PATCH);
    }
    await events.record(p, 'Normal', 'CredentialsIssued', `MQTT account ${account} issued; its secret is in Secret ${body.metadata!.name}`);
    return true;
  }

  async function readDeployment(p: Proplet): Promise<V1Deployment | undefined> {
    try {
      return await apps.readNamespacedDeployment({ name: p.metadata.name!, namespace: p.metadata.namespace! });
    } catch (e) {
      if (isNotFound(e)) return undefined;
      throw e;
    }
  }

  /** The Deployment as the Proplet wants it: created, its spec rewritten when the template changed, its replicas followed. */
  async function applyDeployment(p: Proplet, have: V1Deployment | undefined): Promise<V1Deployment> {
    const want = propletDeployment(p, defaults);
    const name = want.metadata!.name!;
    const namespace = p.metadata.namespace!;
    if (!have) {
      const made = await apps.createNamespacedDeployment({ namespace, body: want });
      await events.record(p, 'Normal', 'DeploymentCreated', `Deployment ${name} created with ${want.spec!.replicas} replicas`);
      return made;
    }
    const hash = want.metadata!.annotations![TEMPLATE_HASH_ANNOTATION]!;
    if (have.metadata?.annotations?.[TEMPLATE_HASH_ANNOTATION] !== hash) {
      const metadata = { ...have.metadata, labels: { ...have.metadata?.labels, ...want.metadata!.labels }, annotations: { ...have.metadata?.annotations, [TEMPLATE_HASH_ANNOTATION]: hash } };
      // with the resourceVersion of the read: a concurrent change is a 409 and a retry
      const made = await apps.replaceNamespacedDeployment({ name, namespace, body: { ...want, metadata } });
      await events.record(p, 'Normal', 'DeploymentUpdated', `Deployment ${name}: pod template changed (${hash})`);
      return made;
    }
    if (have.spec?.replicas === want.spec!.replicas) return have;
    const made = await apps.patchNamespacedDeployment({ name, namespace, body: { spec: { replicas: want.spec!.replicas } } }, MERGE_PATCH);
    await events.record(p, 'Normal', 'Scaled', `Deployment ${name} scaled from ${have.spec?.replicas} to ${want.spec!.replicas} replicas`);
    return made;
  }

  async function reconcileK8s(p: Proplet): Promise<ReconcileResult> {
    const have = await readDeployment(p);
    if (have && have.metadata?.ownerReferences?.find((r) => r.controller)?.uid !== p.metadata.uid) {
      return refuse(p, 'DeploymentConflict', `Deployment ${p.metadata.namespace}/${p.metadata.name} exists and is not this Proplet's`);
    }
    // the secret before the pods, which read it when they start
    const hasSecret = await ensureSecret(p, groupAccount(p), (secret) => groupCredentialsSecret(p, secret));
    const dep = await applyDeployment(p, have);
    // the registry before the pods: a pod created in between is listed, so its record is not taken for a leftover
    const registered = (await cp.listProplets()).proplets;
    const pods = (await kube.core.listNamespacedPod({ namespace: p.metadata.namespace!, labelSelector: podSelector(p) })).items;
    const leftovers = leftoverProplets(p, registered, pods);
    for (const id of leftovers) await cp.removeProplet(id).catch(ignoreGone);
    if (leftovers.length) await events.record(p, 'Normal', 'PropletsRemoved', `removed from the control plane, their pods gone: ${leftovers.join(', ')}`);
    const s = propletStatus(p, { proplets: registered.filter((x) => !leftovers.includes(x.id)), pods, deployment: dep.status, hasSecret });
    await writeStatus(kube, PROPLET, p, s);
    return { requeueAfterMs: s.phase === 'Ready' ? ctx.groupPollMs : ctx.pollMs };
  }

  async function reconcileExternal(p: Proplet): Promise<ReconcileResult> {
    const id = propletIdOf(p);
    const hasSecret = isDiscovered(p) ? false : await ensureSecret(p, id, (secret) => externalCredentialsSecret(p, { propletId: id, secret }, defaults));
    let registered: ControlPlaneProplet[] = [];
    try {
      registered = [await cp.getProplet(id)];
    } catch (e) {
      if (!cpStatus(e, 404)) throw e;
    }
    const s = propletStatus(p, { proplets: registered, hasSecret });
    await writeStatus(kube, PROPLET, p, s);
    return { requeueAfterMs: s.phase === 'Ready' ? ctx.groupPollMs : ctx.pollMs };
  }

  const discovery = startDiscovery(ctx, o, listProplets);

  return {
    kind: PROPLET,
    stop: () => discovery.stop(),
    async reconcile(p) {
      const problem = propletProblem(p);
      if (problem) return refuse(p, 'InvalidSpec', problem);
      const all = await listProplets();
      const owner = supersededBy(p, all);
      if (owner) {
        // a user's Proplet for the device replaces the discovered one
        await kube.custom.deleteNamespacedCustomObject({ group: PROPLET.group, version: PROPLET.version, plural: PROPLET.plural, namespace: p.metadata.namespace!, name: p.metadata.name! }).catch((e) => {
          if (!isNotFound(e)) throw e;
        });
        log('info', 'discovered proplet superseded', { proplet: `${p.metadata.namespace}/${p.metadata.name}`, by: `${owner.metadata.namespace}/${owner.metadata.name}` });
        return {};
      }
      const conflict = idConflict(p, all);
      if (conflict) return refuse(p, 'IdConflict', conflict);
      return p.spec.type === 'k8s' ? reconcileK8s(p) : reconcileExternal(p);
    },

    async finalize(p) {
      // undo only what was done: nothing for a refused Proplet or a discovered device
      if (propletProblem(p) || isDiscovered(p) || idConflict(p, await listProplets())) return {};
      if (p.spec.type === 'external') {
        await cp.removeProplet(propletIdOf(p)).catch(ignoreGone);
        return {};
      }
      // revoking the group disconnects its pods; then their records go
      await cp.removeProplet(groupAccount(p)).catch(ignoreGone);
      const registered = (await cp.listProplets()).proplets;
      for (const x of registered) if (x.proplet_type === 'k8s' && isPodId(p, x.id)) await cp.removeProplet(x.id).catch(ignoreGone);
      log('info', 'proplet group revoked', { proplet: `${p.metadata.namespace}/${p.metadata.name}`, account: groupAccount(p) });
      return {};
    },
  };
}

/**
 * Devices that registered on their own become Proplets in the discovery
 * namespace, polled every discoveryMs, while the controller runs (it stops
 * with the controller: adapter closed, leadership lost).
 */
function startDiscovery(ctx: AdapterContext, o: PropletControllerOptions, listProplets: () => Promise<Proplet[]>): { stop(): void } {
  const every = o.discoveryMs ?? 3000;
  if (every <= 0) return { stop() {} };
  const namespace = o.discoveryNamespace ?? (process.env.POD_NAMESPACE || 'default');
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;

  async function pass(): Promise<void> {
    const registered = (await ctx.cp.listProplets()).proplets;
    const proplets = await listProplets();
    for (const device of registered.filter((x) => shouldDiscover(x, proplets))) {
      const body = discoveredProplet(device, namespace);
      try {
        const made = (await ctx.kube.custom.createNamespacedCustomObject({ group: PROPLET.group, version: PROPLET.version, plural: PROPLET.plural, namespace, body })) as Proplet;
        ctx.log('info', 'device discovered', { proplet_id: device.id, proplet: `${namespace}/${made.metadata.name}` });
        await ctx.events.record(made, 'Normal', 'Discovered', `device ${device.id} (${device.device_type}) registered on its own`);
      } catch (e) {
        // the name is taken by a Proplet with another id: the device stays undiscovered, said once per pass
        if (!isConflict(e)) throw e;
        ctx.log('debug', 'discovered device: name taken', { proplet_id: device.id, name: body.metadata.name });
      }
    }
  }
  const loop = () => {
    timer = setTimeout(() => {
      void pass()
        .catch((e) => ctx.log('warn', 'discovery failed', { error: e instanceof ApiError ? e.message : apiMessage(e) }))
        .finally(() => {
          if (!stopped) loop();
        });
    }, every);
    timer.unref();
  };
  loop();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}
