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
//
// Aedes is given the promise-based store itself, not the library's callback
// wrapper around it (Aedes 1.2 only calls the promise methods): one call
// layer less on every CONNECT and delivery.

import { createRequire, syncBuiltinESMExports } from 'node:module';
import stream from 'node:stream';

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

/**
 * What outgoingStream() hands Aedes for a client with nothing queued (almost
 * every CONNECT): Aedes pipes it through a Transform with `stream.pipeline`,
 * which takes any iterable; an empty array spares a Readable and its async
 * iterator per CONNECT. Shared and frozen: nothing can be added to it.
 */
export const NO_OUTGOING: readonly Outgoing[] = Object.freeze([]);

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

  /**
   * What an earlier persistent session of this client id left queued, which
   * a clean session never gets (Aedes' own CONNECT walks the queue and drops
   * each packet): fast-connect.ts. Its presence also tells that this store's
   * methods do their work when called, before their promise settles.
   */
  dropOutgoing(clientId: string): void {
    this.outgoing.delete(clientId);
  }

  outgoingStream(client: { id: string }): Iterable<Outgoing> {
    const q = this.outgoing.get(client.id);
    // a copy: the queue changes while Aedes walks it
    return q ? [...q] : NO_OUTGOING;
  }
}

export interface LeanPersistence extends Persistence {
  /** Client ids with QoS 1/2 packets not yet acknowledged. */
  readonly outgoingQueues: number;
}

export function leanMemoryPersistence(): LeanPersistence {
  const p = new LeanMemoryPersistence({});
  return Object.defineProperty(p, 'outgoingQueues', { get: () => p.outgoing.size }) as unknown as LeanPersistence;
}

let shortCircuited = false;

/**
 * Aedes pipes every client's outgoing queue through a Transform with
 * `stream.pipeline` on every CONNECT, queue or not. For an empty queue that
 * costs a Transform pass, two end-of-stream watchers and, when the pipeline
 * finishes, `AbortController.abort()`, which builds a `DOMException` with a
 * stack trace: some 20 µs of a CONNECT that has nothing to deliver. This
 * wraps Node's `stream.pipeline` (and, through syncBuiltinESMExports, the
 * binding Aedes imported) so that a pipeline whose source is NO_OUTGOING
 * (only this store hands that out) just calls back on the next tick; every
 * other pipeline in the process goes to Node's own, untouched. Once per process.
 */
export function shortCircuitEmptyQueues(): void {
  if (shortCircuited) return;
  shortCircuited = true;
  const inner = stream.pipeline;
  const pipeline = function (this: unknown, ...args: unknown[]): unknown {
    const cb = args[2];
    if (args[0] === NO_OUTGOING && args.length === 3 && typeof cb === 'function') {
      process.nextTick(cb as () => void);
      return args[1];
    }
    return (inner as (...a: unknown[]) => unknown).apply(this, args);
  };
  // util.promisify.custom and anything else Node hangs on it
  for (const key of Reflect.ownKeys(inner)) if (typeof key === 'symbol') Object.defineProperty(pipeline, key, Object.getOwnPropertyDescriptor(inner, key)!);
  stream.pipeline = pipeline as typeof stream.pipeline;
  syncBuiltinESMExports();
}
