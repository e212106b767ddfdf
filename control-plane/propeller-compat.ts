// How the control plane tells Propeller's own proplets apart and keeps to what
// each can take: the wire a proplet uses (kind, topic layout, channel), the
// placement check that refuses a start a device would drop unseen, and the
// module-by-name answers on registry/server. The shaping itself is pure, in
// propeller-shapes.ts.
//
// One device channel per embed-proplet. embed-proplet runs every start on its
// channel whatever `proplet_id` says, and a start it cannot read (over 1023
// bytes) stops it for good. On a channel it shares, it would run the starts of
// every other proplet there, and their large starts would stall it. So an
// embed-proplet is configured with its own proplet id as its channel
// (PROPLET_CHANNEL_ID); the broker lets a proplet use the channel named by its
// id, and the control plane listens on every channel of its domain. An
// embed-proplet found on a shared channel with any other Propeller proplet is
// not placed on, and neither is that other proplet, with the reason shown.

import { parsePropellerJson, propletKindOf, ProtocolError, type PropletKind } from '../protocol/index.ts';
import type { Scope } from '../topics/index.ts';
import type { Logger } from './log.ts';
import type { Proplet, Task } from './model.ts';
import { propellerChunks, qosFor, shapeStart, type Qos, type ShapeOptions } from './propeller-shapes.ts';

/** How a proplet is reached: which program it is, which topic layout and channel it uses. */
export type Wire = NonNullable<Proplet['wire']>;

/** The wire of a proplet; proplets registered before kinds were known are ours or legacy, on the scope's channel. */
export function wireOf(p: Pick<Proplet, 'addressing' | 'wire'>, scope: Scope): Wire {
  return p.wire ?? { kind: p.addressing === 'direct' ? 'ours' : 'legacy', layout: 'messages', channel: scope.channel };
}

/** True for Propeller's Rust proplet and embed-proplet: they need messages shaped for them and never acknowledge a start. */
export function isPropellerProplet(kind: PropletKind): boolean {
  return kind === 'propeller-rust' || kind === 'embed';
}

/** The scope a proplet listens in: its own device channel or the shared one. */
export function scopeOf(w: Wire, scope: Scope): Scope {
  return w.channel === scope.channel ? scope : { domain: scope.domain, channel: w.channel };
}

/** The kind a registration comes from, from its JSON (Propeller's `metadata`) or our `addressing`. */
export function kindOfRegistration(payload: Uint8Array, addressing: string | undefined): PropletKind {
  const raw = payload[0] === 0x7b ? parsePropellerJson(payload) : undefined;
  return propletKindOf({ ...(raw && !(raw instanceof ProtocolError) ? raw : {}), addressing });
}

/**
 * Why `p` must not be given a task because of whom it shares its channel with,
 * or undefined. Starts on the bare layout's shared topic reach every proplet
 * on that channel, and embed-proplet runs them all.
 */
export function channelConflict(p: Proplet, fleet: Iterable<Proplet>, scope: Scope): string | undefined {
  const w = wireOf(p, scope);
  if (!isPropellerProplet(w.kind)) return undefined;
  for (const q of fleet) {
    if (q.id === p.id || q.state === 'failed') continue;
    const v = wireOf(q, scope);
    if (v.channel !== w.channel || v.layout !== w.layout || !isPropellerProplet(v.kind)) continue;
    if (w.kind === 'embed' || v.kind === 'embed') {
      const embed = w.kind === 'embed' ? p.id : q.id;
      return `embed-proplet ${embed} shares channel ${w.channel} with ${w.kind === 'embed' ? q.id : p.id} and would run every start there: give it its own channel (PROPLET_CHANNEL_ID=${embed})`;
    }
  }
  return undefined;
}

export interface CompatOptions {
  scope: Scope;
  shape?: ShapeOptions;
  log: Logger;
  /** A module's bytes by digest. */
  module(digest: string): Uint8Array | undefined;
  /** A task's module by the name a proplet asks for: the digest we sent, or the task's image_url. */
  tasks(): Iterable<Task>;
  /** Fetches a module by URL (http(s), oci). */
  fetch?(url: string): Promise<Uint8Array>;
  /** Publishes to a proplet on its wire. */
  send(p: Proplet, kind: 'registry.server', payload: Uint8Array, qos: Qos): void;
  /** A message refused: counted and logged by the gateway. */
  reject(kind: string, reason: string, detail: string): void;
}

export class PropellerCompat {
  constructor(private o: CompatOptions) {}

  /** The placement check: why this proplet cannot be sent this start, or undefined. */
  admit(t: Task, p: Proplet, start: () => Parameters<typeof shapeStart>[1], fleet: Iterable<Proplet>): string | undefined {
    const w = wireOf(p, this.o.scope);
    if (!isPropellerProplet(w.kind)) return undefined;
    const conflict = channelConflict(p, fleet, this.o.scope);
    if (conflict) return conflict;
    const module = t.module_digest ? this.o.module(t.module_digest) : undefined;
    const shaped = shapeStart(w.kind, start(), module, this.o.shape);
    return shaped && !shaped.ok ? shaped.reason : undefined;
  }

  /** registry/proplet `{"app_name": ...}`: the module in the pieces this kind takes, on registry/server. */
  async serveByName(p: Proplet, appName: string): Promise<void> {
    const kind = wireOf(p, this.o.scope).kind;
    let bytes: Uint8Array | undefined;
    try {
      bytes = await this.lookup(appName);
    } catch (e) {
      return this.o.reject('registry.proplet', 'fetch_failed', `module ${appName} for ${p.id}: ${(e as Error).message}`);
    }
    if (!bytes) return this.o.reject('registry.proplet', 'unknown_module', `no module named ${appName} for ${p.id}`);
    const chunks = propellerChunks(kind, appName, bytes, this.o.shape);
    if (typeof chunks === 'string') return this.o.reject('registry.proplet', 'too_large', chunks);
    const qos = qosFor(kind);
    for (const c of chunks) this.o.send(p, 'registry.server', Buffer.from(JSON.stringify(c)), qos);
    this.o.log('info', 'module sent by name', { proplet_id: p.id, app_name: appName, bytes: bytes.length, chunks: chunks.length });
  }

  private async lookup(name: string): Promise<Uint8Array | undefined> {
    if (/^sha256:[0-9a-f]{64}$/.test(name)) return this.o.module(name);
    for (const t of this.o.tasks()) {
      if (t.image_url === name && t.module_digest) {
        const b = this.o.module(t.module_digest);
        if (b) return b;
      }
    }
    return this.o.fetch ? await this.o.fetch(name) : undefined;
  }
}
