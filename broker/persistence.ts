// Aedes' memory persistence, with outgoing queues that go when they are empty.
//
// aedes-persistence 11 keeps a QoS 1/2 outgoing queue per client id in a
// private Map, makes one whenever a client acknowledges a packet (even on a
// clean session, whose packets are never queued) and never deletes one: every
// client that acknowledged a QoS 1 delivery leaves an empty queue behind when
// it goes. Devices that connect with a fresh client id each time (Propeller's
// proplets do) make that a leak that grows with every reconnect. Here the
// outgoing queues live in a Map of our own, made only to hold a packet and
// deleted with its last one; an empty queue and no queue mean the same to
// every caller, so sessions (clean or persistent) see no difference.
// Everything else is the library's.

import { createRequire } from 'node:module';
import { Readable } from 'node:stream';

const require = createRequire(import.meta.url);

interface Outgoing {
  messageId?: number;
  brokerId?: string;
  brokerCounter?: number;
}
type Persistence = { setup(broker: unknown): Promise<void> };
interface MemoryPersistenceClass {
  new (opts: object): object;
  Packet: new (p: object) => Outgoing;
}

const MemoryPersistence = require('aedes-persistence/asyncPersistence.js') as MemoryPersistenceClass;
const { CallBackPersistence } = require('aedes-persistence/callBackPersistence.js') as {
  CallBackPersistence: new (factory: (opts: object) => object, opts?: object) => Persistence & { asyncPersistence: LeanMemoryPersistence };
};

class LeanMemoryPersistence extends MemoryPersistence {
  readonly outgoing = new Map<string, Outgoing[]>();

  private enqueue(clientId: string, packet: object): void {
    let q = this.outgoing.get(clientId);
    if (!q) this.outgoing.set(clientId, (q = []));
    q.push(new MemoryPersistence.Packet(packet));
  }

  async outgoingEnqueue(sub: { clientId: string }, packet: object): Promise<void> {
    this.enqueue(sub.clientId, packet);
  }

  async outgoingEnqueueCombi(subs: { clientId: string }[], packet: object): Promise<void> {
    for (const sub of subs) this.enqueue(sub.clientId, packet);
  }

  /** The message id a packet was given on its way out (brokerId + brokerCounter name the packet). */
  async outgoingUpdate(client: { id: string }, packet: Outgoing): Promise<void> {
    const q = this.outgoing.get(client.id) ?? [];
    for (let i = 0; i < q.length; i++) {
      const held = q[i]!;
      if (held.brokerId === packet.brokerId) {
        // message ids wrap at 65,535: only the counter tells two packets of one broker apart
        if (held.brokerCounter === packet.brokerCounter) {
          held.messageId = packet.messageId;
          return;
        }
      } else if (held.messageId === packet.messageId) {
        q[i] = packet;
        return;
      }
    }
    throw new Error('no such packet');
  }

  async outgoingClearMessageId(client: { id: string }, packet: Outgoing): Promise<Outgoing | undefined> {
    const q = this.outgoing.get(client.id);
    if (!q) return undefined;
    const i = q.findIndex((held) => held.messageId === packet.messageId);
    if (i < 0) return undefined;
    const [held] = q.splice(i, 1);
    if (!q.length) this.outgoing.delete(client.id);
    return held;
  }

  outgoingStream(client: { id: string }): Readable {
    // a copy: the queue changes while the stream is read
    return Readable.from([...(this.outgoing.get(client.id) ?? [])]);
  }
}

export interface LeanPersistence extends Persistence {
  /** Client ids with QoS 1/2 packets not yet acknowledged. */
  readonly outgoingQueues: number;
}

export function leanMemoryPersistence(): LeanPersistence {
  const p = new CallBackPersistence((opts) => new LeanMemoryPersistence(opts));
  return Object.defineProperty(p, 'outgoingQueues', { get: () => p.asyncPersistence.outgoing.size }) as unknown as LeanPersistence;
}
