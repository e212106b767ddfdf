// The one place where topic strings are built and parsed. Nothing else in the
// project writes a topic by hand.
//
// Two layouts, both Propeller's: 'messages' (the seed design's, ours) puts a
// `messages` level after the channel; 'bare' (Propeller's current Rust proplet
// and its Zephyr embed-proplet) does not:
//   m/<domain>/c/<channel>/messages/control/...   (layout 'messages')
//   m/<domain>/c/<channel>/control/...            (layout 'bare')
// Everything after that level is the same in both:
//   m/<domain>/c/<channel>/messages/control/proplet/{create,alive,results,metrics,invoke_results,task_metrics}[/<proplet_id>]
//   m/<domain>/c/<channel>/messages/control/manager/{start,stop}[/<proplet_id>]
//   m/<domain>/c/<channel>/messages/registry/proplet
//   m/<domain>/c/<channel>/messages/registry/server[/<proplet_id>]
//   m/<domain>/c/<channel>/messages/fl/rounds/<round_id>/updates/<proplet_id>
//
// The optional trailing <proplet_id> is per-proplet addressing: a start or stop
// published there reaches only its target, instead of every device on the
// broker. The bare form stays as the shared (broadcast) topic that Propeller's
// own proplets listen on.

export interface Scope {
  domain: string;
  channel: string;
}

export type PropletToManagerKind =
  | 'proplet.create'
  | 'proplet.alive'
  | 'proplet.results'
  | 'proplet.metrics'
  | 'proplet.invoke_results'
  | 'proplet.task_metrics';

/** 'messages': m/<d>/c/<ch>/messages/... (ours); 'bare': m/<d>/c/<ch>/... (Propeller's current proplets). */
export type Layout = 'messages' | 'bare';
export const LAYOUTS: readonly Layout[] = ['messages', 'bare'];
export type TopicKind =
  | PropletToManagerKind
  | 'manager.start'
  | 'manager.stop'
  | 'manager.invoke'
  | 'registry.proplet'
  | 'registry.server'
  | 'fl.update';

export interface ParsedTopic extends Scope {
  kind: TopicKind;
  layout: Layout;
  /** Present on per-proplet topics and FL updates. */
  propletId?: string;
  /** Present on FL update topics. */
  roundId?: string;
}

const MAX_LEVEL = 128;

export class TopicError extends Error {
  override name = 'TopicError';
}

/** True when `s` can stand as one topic level: non-empty, no wildcard, no separator, no NUL. */
export function isValidLevel(s: unknown): s is string {
  if (typeof s !== 'string' || s.length === 0 || s.length > MAX_LEVEL) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // '+' 0x2b, '#' 0x23, '/' 0x2f, NUL, and other control characters
    if (c === 0x2b || c === 0x23 || c === 0x2f || c < 0x20 || c === 0x7f) return false;
  }
  return true;
}

export function assertLevel(what: string, s: unknown): asserts s is string {
  if (!isValidLevel(s)) {
    throw new TopicError(`invalid ${what} ${JSON.stringify(s)}: must be 1-${MAX_LEVEL} characters without '+', '#', '/' or control characters`);
  }
}

export function scope(domain: string, channel: string): Scope {
  assertLevel('domain', domain);
  assertLevel('channel', channel);
  return { domain, channel };
}

/** The prefix every topic of the scope starts with, in a layout (default ours). */
export function base(s: Scope, layout: Layout = 'messages'): string {
  return layout === 'messages' ? `m/${s.domain}/c/${s.channel}/messages` : `m/${s.domain}/c/${s.channel}`;
}

const SUFFIX: Record<Exclude<TopicKind, 'fl.update'>, string> = {
  'proplet.create': 'control/proplet/create',
  'proplet.alive': 'control/proplet/alive',
  'proplet.results': 'control/proplet/results',
  'proplet.metrics': 'control/proplet/metrics',
  'proplet.invoke_results': 'control/proplet/invoke_results',
  'proplet.task_metrics': 'control/proplet/task_metrics',
  'manager.start': 'control/manager/start',
  'manager.stop': 'control/manager/stop',
  'manager.invoke': 'control/manager/invoke',
  'registry.proplet': 'registry/proplet',
  'registry.server': 'registry/server',
};

/** Kinds that may carry a trailing proplet id. */
const ADDRESSABLE = new Set<TopicKind>([
  'proplet.create',
  'proplet.alive',
  'proplet.results',
  'proplet.metrics',
  'proplet.invoke_results',
  'proplet.task_metrics',
  'manager.start',
  'manager.stop',
  'manager.invoke',
  'registry.proplet',
  'registry.server',
]);

/** Why a proplet sends an alive: its period, a task that ended, or its last will (set in CONNECT). */
export type AliveOccasion = 'periodic' | 'after_task' | 'will';

/**
 * The QoS a kind is published with. A periodic heartbeat is QoS 0: the next
 * one replaces a lost one (liveness waits several periods), and a queued one
 * would only arrive stale: to a control plane back from a restart, as proof
 * of life of a device that may have gone since. Everything else is QoS 1, and
 * so are the will (the one heartbeat that must not be lost) and the heartbeat
 * a proplet sends because a task ended (at QoS 0 it could overtake the result
 * before it and report the task gone unfinished).
 */
export function publishQos(kind: TopicKind, occasion: AliveOccasion = 'periodic'): 0 | 1 {
  return kind === 'proplet.alive' && occasion === 'periodic' ? 0 : 1;
}

/** Builds the shared topic of a kind, or its per-proplet form when `propletId` is given, in a layout (default ours). */
export function topic(s: Scope, kind: Exclude<TopicKind, 'fl.update'>, propletId?: string, layout: Layout = 'messages'): string {
  const t = `${base(s, layout)}/${SUFFIX[kind]}`;
  if (propletId === undefined) return t;
  assertLevel('proplet id', propletId);
  return `${t}/${propletId}`;
}

export function flUpdateTopic(s: Scope, roundId: string, propletId: string, layout: Layout = 'messages'): string {
  assertLevel('round id', roundId);
  assertLevel('proplet id', propletId);
  return `${base(s, layout)}/fl/rounds/${roundId}/updates/${propletId}`;
}

/**
 * The per-proplet form of a shared proplet-to-manager topic, in the same layout:
 * what a broker publishes instead when it stamps the authenticated sender into
 * a message that names none (embed-proplet's results). Undefined for a topic
 * that is not a shared proplet-to-manager topic.
 */
export function stampSender(t: string, propletId: string): string | undefined {
  const p = parseTopic(t);
  if (!p || p.propletId !== undefined || p.kind === 'fl.update' || !isValidLevel(propletId)) return undefined;
  if (!p.kind.startsWith('proplet.') && p.kind !== 'registry.proplet') return undefined;
  return `${t}/${propletId}`;
}

/**
 * Propeller's proplets publish FL updates at the root of the broker, outside
 * any domain: `fl/rounds/<round_id>/updates/<proplet_id>` (embed-proplet always,
 * the Rust proplet when its coordinator URL fails). The proplet id level names
 * the sender; the broker checks it against the authenticated id.
 */
export const ROOT_FL_FILTER = 'fl/rounds/+/updates/+';

/** The round and proplet of a root FL update topic, or undefined for any other topic. */
export function parseRootFlTopic(t: string): { roundId: string; propletId: string } | undefined {
  if (typeof t !== 'string' || t.length > 1024) return undefined;
  const p = t.split('/');
  if (p.length !== 5 || p[0] !== 'fl' || p[1] !== 'rounds' || p[3] !== 'updates' || !isValidLevel(p[2]) || !isValidLevel(p[4])) return undefined;
  return { roundId: p[2], propletId: p[4] };
}

/** The filter of one proplet's FL updates in any round, in a layout (the external broker's ACL for that proplet). */
export function flUpdateFilter(s: Scope, propletId: string, layout: Layout = 'messages'): string {
  assertLevel('proplet id', propletId);
  return `${base(s, layout)}/fl/rounds/+/updates/${propletId}`;
}

/** The filter of one proplet's root FL updates (ROOT_FL_FILTER with its own id as the last level). */
export function rootFlUpdateFilter(propletId: string): string {
  assertLevel('proplet id', propletId);
  return `fl/rounds/+/updates/${propletId}`;
}

/**
 * Where a control-plane replica announces which store it serves the scope from
 * (retained, cleared by its last will): two planes of one scope on one broker
 * with different stores see each other here. Not a proplet topic.
 */
export function planeTopic(s: Scope, instance: string): string {
  assertLevel('instance', instance);
  return `${base(s)}/control/plane/${instance}`;
}

export function planeFilter(s: Scope): string {
  return `${base(s)}/control/plane/+`;
}

/** A filter matching every message of the scope: what `propeller watch` and the debug account read. */
export function allFilter(s: Scope): string {
  return `${base(s)}/#`;
}

/**
 * Filters the control plane subscribes to: every proplet-to-manager kind,
 * shared and per-proplet, in both layouts. With `deviceChannels`, on every
 * channel of the domain (the scope's included): a device given a channel of its
 * own (an embed-proplet, whose channel is its proplet id) is heard there.
 */
export function managerFilters(s: Scope, deviceChannels = false): string[] {
  const out: string[] = [];
  // One set or the other, never both: overlapping filters deliver a message twice (Aedes then sees a second PUBACK and drops the session).
  const sc = deviceChannels ? { domain: s.domain, channel: '+' } : s;
  for (const layout of LAYOUTS) {
    const b = base(sc, layout);
    out.push(`${b}/control/proplet/#`, `${b}/registry/proplet`, `${b}/registry/proplet/+`, `${b}/fl/rounds/+/updates/+`);
  }
  return out;
}

/** The exact topics a per-proplet-addressed proplet subscribes to. */
export function propletSubscriptions(s: Scope, propletId: string, layout: Layout = 'messages'): string[] {
  return [topic(s, 'manager.start', propletId, layout), topic(s, 'manager.stop', propletId, layout), topic(s, 'registry.server', propletId, layout)];
}

/** The shared (broadcast) topics Propeller's proplets listen on, in a layout: start, stop, invoke and registry chunks. */
export function sharedSubscriptions(s: Scope, layout: Layout = 'messages'): string[] {
  return [topic(s, 'manager.start', undefined, layout), topic(s, 'manager.stop', undefined, layout), topic(s, 'manager.invoke', undefined, layout), topic(s, 'registry.server', undefined, layout)];
}

const BY_SUFFIX = new Map<string, Exclude<TopicKind, 'fl.update'>>(
  Object.entries(SUFFIX).map(([k, v]) => [v, k as Exclude<TopicKind, 'fl.update'>]),
);

/**
 * Parses a concrete topic (no wildcards). Returns undefined for anything outside
 * the tree, so callers can drop and count it.
 */
export function parseTopic(t: string): ParsedTopic | undefined {
  if (typeof t !== 'string' || t.length > 1024) return undefined;
  const p = t.split('/');
  if (p.length < 6 || p[0] !== 'm' || p[2] !== 'c') return undefined;
  const layout: Layout = p[4] === 'messages' ? 'messages' : 'bare';
  const at = layout === 'messages' ? 5 : 4;
  if (p.length < at + 2) return undefined;
  const domain = p[1]!;
  const channel = p[3]!;
  if (!isValidLevel(domain) || !isValidLevel(channel)) return undefined;
  for (let i = at; i < p.length; i++) if (!isValidLevel(p[i])) return undefined;
  const rest = p.slice(at);
  if (rest[0] === 'fl') {
    if (rest.length === 5 && rest[1] === 'rounds' && rest[3] === 'updates') {
      return { domain, channel, layout, kind: 'fl.update', roundId: rest[2]!, propletId: rest[4]! };
    }
    return undefined;
  }
  // control/x/y or registry/x, optionally followed by one proplet id level
  const headLen = rest[0] === 'control' ? 3 : rest[0] === 'registry' ? 2 : -1;
  if (headLen < 0 || rest.length < headLen || rest.length > headLen + 1) return undefined;
  const kind = BY_SUFFIX.get(rest.slice(0, headLen).join('/'));
  if (!kind) return undefined;
  if (rest.length === headLen + 1) {
    if (!ADDRESSABLE.has(kind)) return undefined;
    return { domain, channel, layout, kind, propletId: rest[headLen]! };
  }
  return { domain, channel, layout, kind };
}

/** True when the topic filter contains an MQTT wildcard. */
export function hasWildcard(filter: string): boolean {
  return filter.includes('+') || filter.includes('#');
}
