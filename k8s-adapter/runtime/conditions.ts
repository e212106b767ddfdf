// Kubernetes conditions, set the same way for every kind: one per type, and
// lastTransitionTime moves only when the status (True/False/Unknown) does.

import type { Condition } from '../types.ts';
import { kubeTime } from './kube.ts';

export type ConditionInput = Pick<Condition, 'type' | 'status' | 'reason' | 'message'>;

/** The list with `c` set: reason and message follow, lastTransitionTime only on a status change. */
export function setCondition(list: Condition[] | undefined, c: ConditionInput, generation?: number, now: Date = new Date()): Condition[] {
  const out = [...(list ?? [])];
  const i = out.findIndex((x) => x.type === c.type);
  const prev = i >= 0 ? out[i] : undefined;
  const next: Condition = {
    ...c,
    message: c.message.slice(0, 32_768),
    lastTransitionTime: prev && prev.status === c.status ? prev.lastTransitionTime : kubeTime(now),
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
  };
  if (i >= 0) out[i] = next;
  else out.push(next);
  return out;
}

export function getCondition(list: Condition[] | undefined, type: string): Condition | undefined {
  return list?.find((c) => c.type === type);
}
