// The one place where topic strings are built and parsed. Nothing else in the
// project writes a topic by hand.
//
// Layout (Propeller's, so Propeller clients find their way):
//   m/<domain>/c/<channel>/messages/control/proplet/{create,alive,results,metrics}[/<proplet_id>]
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

export type PropletToManagerKind = 'proplet.create' | 'proplet.alive' | 'proplet.results' | 'proplet.metrics';
export type TopicKind =
  | PropletToManagerKind
  | 'manager.start'
  | 'manager.stop'
  | 'registry.proplet'
  | 'registry.server'
  | 'fl.update';

export interface ParsedTopic extends Scope {
  kind: TopicKind;
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

export function base(s: Scope): string {
  return `m/${s.domain}/c/${s.channel}/messages`;
}

const SUFFIX: Record<Exclude<TopicKind, 'fl.update'>, string> = {
  'proplet.create': 'control/proplet/create',
  'proplet.alive': 'control/proplet/alive',
  'proplet.results': 'control/proplet/results',
  'proplet.metrics': 'control/proplet/metrics',
  'manager.start': 'control/manager/start',
  'manager.stop': 'control/manager/stop',
  'registry.proplet': 'registry/proplet',
  'registry.server': 'registry/server',
};

/** Kinds that may carry a trailing proplet id. */
const ADDRESSABLE = new Set<TopicKind>([
  'proplet.create',
  'proplet.alive',
  'proplet.results',
  'proplet.metrics',
  'manager.start',
  'manager.stop',
  'registry.proplet',
  'registry.server',
]);

/** Builds the shared topic of a kind, or its per-proplet form when `propletId` is given. */
export function topic(s: Scope, kind: Exclude<TopicKind, 'fl.update'>, propletId?: string): string {
  const t = `${base(s)}/${SUFFIX[kind]}`;
  if (propletId === undefined) return t;
  assertLevel('proplet id', propletId);
  return `${t}/${propletId}`;
}

export function flUpdateTopic(s: Scope, roundId: string, propletId: string): string {
  assertLevel('round id', roundId);
  assertLevel('proplet id', propletId);
  return `${base(s)}/fl/rounds/${roundId}/updates/${propletId}`;
}

/** The filter of one proplet's FL updates in any round (the external broker's ACL for that proplet). */
export function flUpdateFilter(s: Scope, propletId: string): string {
  assertLevel('proplet id', propletId);
  return `${base(s)}/fl/rounds/+/updates/${propletId}`;
}

/** A filter matching every message of the scope: what `propeller watch` and the debug account read. */
export function allFilter(s: Scope): string {
  return `${base(s)}/#`;
}

/** Filters the control plane subscribes to: every proplet-to-manager kind, shared and per-proplet. */
export function managerFilters(s: Scope): string[] {
  const b = base(s);
  return [
    `${b}/control/proplet/#`,
    `${b}/registry/proplet`,
    `${b}/registry/proplet/+`,
    `${b}/fl/rounds/+/updates/+`,
  ];
}

/** The exact topics a per-proplet-addressed proplet subscribes to. */
export function propletSubscriptions(s: Scope, propletId: string): string[] {
  return [topic(s, 'manager.start', propletId), topic(s, 'manager.stop', propletId), topic(s, 'registry.server', propletId)];
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
  if (p.length < 7 || p[0] !== 'm' || p[2] !== 'c' || p[4] !== 'messages') return undefined;
  const domain = p[1]!;
  const channel = p[3]!;
  if (!isValidLevel(domain) || !isValidLevel(channel)) return undefined;
  for (let i = 5; i < p.length; i++) if (!isValidLevel(p[i])) return undefined;
  const rest = p.slice(5);
  if (rest[0] === 'fl') {
    if (rest.length === 5 && rest[1] === 'rounds' && rest[3] === 'updates') {
      return { domain, channel, kind: 'fl.update', roundId: rest[2]!, propletId: rest[4]! };
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
    return { domain, channel, kind, propletId: rest[headLen]! };
  }
  return { domain, channel, kind };
}

/** True when the topic filter contains an MQTT wildcard. */
export function hasWildcard(filter: string): boolean {
  return filter.includes('+') || filter.includes('#');
}
