// Kubernetes Events (core/v1) about the adapter's objects, as `kubectl
// describe` shows them. A repeat of the same event (same object, type,
// reason and message) bumps the count and lastTimestamp of the first one
// instead of creating another. Recording never throws: an event that cannot
// be written is logged and dropped.

import { randomBytes } from 'node:crypto';
import type { CoreV1Event } from '@kubernetes/client-node';
import { apiMessage, isNotFound, MERGE_PATCH, type Kube, type KubeObject, type Log } from './kube.ts';

export type EventType = 'Normal' | 'Warning';

export interface EventSink {
  record(obj: KubeObject, type: EventType, reason: string, message: string): Promise<void>;
}

/** Events remembered for de-duplication; the oldest are forgotten first. */
const REMEMBERED = 4096;

export class EventRecorder implements EventSink {
  private seen = new Map<string, { name: string; namespace: string; count: number }>();

  constructor(
    private kube: Kube,
    /** source.component and reportingController, e.g. propeller-k8s-adapter. */
    private component: string,
    /** source.host and reportingInstance: which adapter replica wrote it. */
    private instance: string,
    private log: Log,
  ) {}

  async record(obj: KubeObject, type: EventType, reason: string, message: string): Promise<void> {
    const namespace = obj.metadata.namespace ?? 'default';
    const id = `${obj.metadata.uid}\n${type}\n${reason}\n${message}`;
    const now = new Date();
    try {
      const prev = this.seen.get(id);
      if (prev) {
        this.seen.delete(id);
        try {
          await this.kube.core.patchNamespacedEvent({ name: prev.name, namespace, body: { count: prev.count + 1, lastTimestamp: now } }, MERGE_PATCH);
          this.remember(id, { ...prev, count: prev.count + 1 });
          return;
        } catch (e) {
          if (!isNotFound(e)) throw e;
          // it expired (the apiserver keeps events an hour): write a new one
        }
      }
      const name = `${obj.metadata.name}.${randomBytes(8).toString('hex')}`;
      const body: CoreV1Event = {
        metadata: { name, namespace },
        involvedObject: {
          apiVersion: obj.apiVersion,
          kind: obj.kind,
          name: obj.metadata.name,
          namespace: obj.metadata.namespace,
          uid: obj.metadata.uid,
          resourceVersion: obj.metadata.resourceVersion,
        },
        type,
        reason,
        message: message.slice(0, 1024),
        count: 1,
        firstTimestamp: now,
        lastTimestamp: now,
        source: { component: this.component, host: this.instance },
        reportingComponent: this.component,
        reportingInstance: this.instance,
      };
      await this.kube.core.createNamespacedEvent({ namespace, body });
      this.remember(id, { name, namespace, count: 1 });
    } catch (e) {
      this.log('warn', 'cannot record event', { object: `${namespace}/${obj.metadata.name}`, reason, error: apiMessage(e) });
    }
  }

  private remember(id: string, v: { name: string; namespace: string; count: number }): void {
    this.seen.set(id, v);
    if (this.seen.size > REMEMBERED) this.seen.delete(this.seen.keys().next().value!);
  }
}
