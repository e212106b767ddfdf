// PropletGroup → a control-plane group of the same name (group names are one
// namespace in the control plane, as FederatedJob's participantSelector
// names them). Status lists the proplets whose labels match, polled every
// few seconds since proplets come and go without Kubernetes seeing it.
// Deleting the resource deletes the group (finalizer).

import { ApiError, type ControlPlaneClient, type GroupInput } from '../../control-plane/client.ts';
import type { AdapterContext } from '../adapter.ts';
import { setCondition } from '../runtime/conditions.ts';
import type { Controller } from '../runtime/controller.ts';
import { jsonEqual, writeStatus } from '../runtime/status.ts';
import { PROPLET_GROUP, type PropletGroup, type PropletGroupStatus, type PropletPhase } from '../types.ts';

type ControlPlaneGroup = Awaited<ReturnType<ControlPlaneClient['getGroup']>>;

const PHASES: Record<string, PropletPhase> = { alive: 'Ready', offline: 'Offline', failed: 'Failed' };

export function controlPlaneGroup(obj: PropletGroup): Omit<GroupInput, 'name'> {
  const max = obj.spec.scheduling.maxTasksPerProplet;
  return {
    selector: { match_labels: obj.spec.selector?.matchLabels ?? {} },
    scheduling: { algorithm: obj.spec.scheduling.algorithm, ...(max !== undefined ? { max_tasks_per_proplet: max } : {}) },
  };
}

function statusOf(obj: PropletGroup, g: ControlPlaneGroup): PropletGroupStatus {
  const s = g.status;
  return {
    proplets: s.proplets.map((p) => ({ id: p.id, phase: PHASES[p.state] ?? 'Pending', assignedTasks: p.assigned_tasks })),
    totalProplets: s.total_proplets,
    availableProplets: s.available_proplets,
    conditions: setCondition(
      obj.status?.conditions,
      { type: 'Ready', status: 'True', reason: 'GroupSynced', message: `${s.available_proplets} of ${s.total_proplets} proplets available` },
      obj.metadata.generation,
    ),
  };
}

export const propletGroupController = (ctx: AdapterContext): Controller<PropletGroup> => {
  const { cp, events, kube } = ctx;
  const notFound = (e: unknown) => e instanceof ApiError && e.status === 404;
  return {
    kind: PROPLET_GROUP,
    async reconcile(obj) {
      const name = obj.metadata.name!;
      const want = controlPlaneGroup(obj);
      let g: ControlPlaneGroup | undefined;
      try {
        g = await cp.getGroup(name);
      } catch (e) {
        if (!notFound(e)) throw e;
      }
      try {
        if (!g) {
          g = await cp.createGroup({ name, ...want });
          await events.record(obj, 'Normal', 'GroupCreated', `control-plane group ${name} created (${want.scheduling!.algorithm})`);
        } else if (!jsonEqual({ selector: g.selector, scheduling: g.scheduling }, want)) {
          g = await cp.replaceGroup(name, want);
          await events.record(obj, 'Normal', 'GroupUpdated', `control-plane group ${name} updated`);
        }
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 400)) throw e;
        const message = `the control plane refused the group: ${e.message}`;
        const conditions = setCondition(obj.status?.conditions, { type: 'Ready', status: 'False', reason: 'InvalidSpec', message }, obj.metadata.generation);
        if (await writeStatus(kube, PROPLET_GROUP, obj, { ...obj.status, conditions })) await events.record(obj, 'Warning', 'InvalidSpec', message);
        return {};
      }
      await writeStatus(kube, PROPLET_GROUP, obj, statusOf(obj, g));
      return { requeueAfterMs: ctx.groupPollMs };
    },
    async finalize(obj) {
      await cp.deleteGroup(obj.metadata.name!).catch((e) => {
        if (!notFound(e)) throw e;
      });
      return {};
    },
  };
};
