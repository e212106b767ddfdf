// The broker's access rules as one pure function, so every decision can be
// tested from a table without a socket. The rules (README.md has the table):
//
//   manager  publish and subscribe anything under the scope's base
//   debug    subscribe anything under the base (wildcards included), publish nothing
//   proplet  publish only its own create/alive/results/metrics, chunk requests
//            and FL updates; subscribe only its own per-proplet topics and the
//            shared start/stop/chunk topics, without wildcards
//
// Both topic layouts (with and without the `messages` level) get the same
// rules. A proplet may also use a channel named by its own id (a device
// channel: embed-proplet runs every start on its channel, so each gets one).

import { LAYOUTS, parseRootFlTopic, parseTopic, ROOT_FL_FILTER, propletSubscriptions, sharedSubscriptions, stampSender, topic as topicOf, type Scope, type TopicKind } from '../topics/index.ts';
import { claimedSender, isId, SENDER_FIELD, type MessageKind } from '../protocol/index.ts';
import { propellerSender } from '../protocol/propeller.ts';
import type { Role } from './credentials.ts';

export type Action = 'publish' | 'subscribe';

export type DenyReason =
  /** Not under m/<domain>/c/<channel>/messages/ of this broker (other domain, '#', $SYS, ...). */
  | 'outside_scope'
  /** A topic level is empty ('a//b', trailing '/'). */
  | 'empty_level'
  /** A level holds a control character, is too long, or a wildcard is misplaced in a filter. */
  | 'invalid_topic'
  /** A wildcard where none is allowed (any publish; a proplet's subscribe). */
  | 'wildcard'
  /** The debug account publishes. */
  | 'read_only'
  /** Under the base but not a topic of the tree (proplet publish). */
  | 'unknown_topic'
  /** A kind this role may not publish (a proplet on manager.start/stop or registry.server). */
  | 'kind_not_allowed'
  /** The topic's proplet id is not the publisher's. */
  | 'topic_id_mismatch'
  /** The payload claims another proplet as its sender. */
  | 'sender_mismatch'
  /** The payload does not parse, so its sender cannot be checked. */
  | 'malformed_payload'
  /** The payload names a field twice (duplicate keys, or a field's text name beside its integer key). */
  | 'duplicate_field'
  /** The payload holds more items or deeper nesting than a message of its kind may. */
  | 'too_complex'
  /** The payload exceeds the protocol's limit for its kind. */
  | 'payload_too_large'
  /** A proplet subscribes to a topic that is not one of its own or a shared one. */
  | 'not_own_topic'
  /** The identity itself is unusable (unknown role, proplet id not a valid level). */
  | 'bad_identity';

/** `stampSender`: allowed, but the message names no sender: publish it on the per-proplet topic of the author (topics' stampSender). */
export type Denial = { ok: false; reason: DenyReason };
export type Decision = { ok: true } | Denial;

const OK: Decision = Object.freeze({ ok: true });
const deny = (reason: DenyReason): Denial => ({ ok: false, reason });

/** Kinds a proplet may publish. */
export const PROPLET_PUBLISH_KINDS: ReadonlySet<TopicKind> = new Set<TopicKind>([
  'proplet.create',
  'proplet.alive',
  'proplet.results',
  'proplet.metrics',
  'registry.proplet',
  'fl.update',
  'proplet.invoke_results',
  'proplet.task_metrics',
]);

/** Shared (broadcast) topics every proplet may read, for Propeller's proplets that filter by id themselves. */
export function sharedPropletSubscriptions(s: Scope): string[] {
  return [topicOf(s, 'manager.start'), topicOf(s, 'manager.stop'), topicOf(s, 'registry.server')];
}

const EMPTY = new Uint8Array(0);

const PAYLOAD_DENIAL: Partial<Record<string, DenyReason>> = {
  too_large: 'payload_too_large',
  duplicate_field: 'duplicate_field',
  too_complex: 'too_complex',
};

/**
 * Decides one publish or subscribe. `topic` is the PUBLISH topic or the
 * SUBSCRIBE filter; `payload` is checked for proplet publishes (the sender it
 * claims). Pure: no I/O, no state.
 */
export function authorize(scope: Scope, role: Role, id: string, action: Action, topic: string, payload?: Uint8Array | string): Decision {
  if (role === 'proplet' && action === 'publish') {
    const plan = propletPublishPlan(scope, id, topic);
    return plan.ok ? propletPayload(plan, id, payload) : plan;
  }
  if (typeof topic !== 'string') return deny('invalid_topic');
  if (topic.startsWith('fl/')) return rootFl(role, action, topic);
  const levels = levelsAfterBase(scope, role, id, topic);
  if (!levels) return deny('outside_scope');
  const shape = checkLevels(levels, action === 'subscribe' && role !== 'proplet');
  if (shape) return deny(shape);

  switch (role) {
    case 'manager':
      return OK;
    case 'debug':
      return action === 'subscribe' ? OK : deny('read_only');
    case 'proplet':
      if (!isId(id)) return deny('bad_identity');
      return propletSubscribe(scope, id, topic);
    default:
      return deny('bad_identity');
  }
}

// The levels after m/<domain>/c/<channel>[/messages]/, or undefined when the
// topic is outside what the role may reach: the scope's channel, any channel of
// the domain for the manager and debug accounts (device channels), a proplet's
// own id as a channel for that proplet.
function levelsAfterBase(scope: Scope, role: Role, id: string, topic: string): string[] | undefined {
  const p = topic.split('/');
  if (p[0] !== 'm' || p[1] !== scope.domain || p[2] !== 'c' || p.length < 5) return undefined;
  const ch = p[3]!;
  const anyChannel = role === 'manager' || role === 'debug';
  if (ch !== scope.channel && !(anyChannel && ch.length > 0) && !(role === 'proplet' && ch === id)) return undefined;
  const rest = p[4] === 'messages' ? p.slice(5) : p.slice(4);
  return rest.length === 0 ? undefined : rest;
}

// Every level after the base: non-empty, no control characters, at most 128
// characters; wildcards only where allowed and only as whole levels, '#' last.
function checkLevels(levels: string[], wildcards: boolean): DenyReason | undefined {
  for (let i = 0; i < levels.length; i++) {
    const l = levels[i]!;
    if (l.length === 0) return 'empty_level';
    if (l === '+' || (l === '#' && i === levels.length - 1)) {
      if (!wildcards) return 'wildcard';
      continue;
    }
    if (l.length > 128) return 'invalid_topic';
    for (let j = 0; j < l.length; j++) {
      const c = l.charCodeAt(j);
      if (c === 0x2b || c === 0x23) return wildcards ? 'invalid_topic' : 'wildcard';
      if (c < 0x20 || c === 0x7f) return 'invalid_topic';
    }
  }
  return undefined;
}

function propletSubscribe(scope: Scope, id: string, filter: string): Decision {
  const own: Scope = { domain: scope.domain, channel: id };
  for (const layout of LAYOUTS) {
    if (propletSubscriptions(scope, id, layout).includes(filter)) return OK;
    if (sharedSubscriptions(scope, layout).includes(filter)) return OK;
    if (sharedSubscriptions(own, layout).includes(filter)) return OK;
  }
  return deny('not_own_topic');
}

// Propeller's root FL updates (topics' ROOT_FL_FILTER): a proplet publishes on
// the topic named by its own id (propletPublishPlan), the manager reads them all.
function rootFl(role: Role, action: Action, topic: string): Decision {
  if (action === 'subscribe') return (role === 'manager' || role === 'debug') && topic === ROOT_FL_FILTER ? OK : deny('outside_scope');
  return role === 'debug' ? deny('read_only') : deny('outside_scope');
}

/** How a proplet's payload names its sender: our protocol's field, Propeller's JSON, or Propeller's root FL update (only a sender it names is checked). */
type SenderRule = 'codec' | 'propeller' | 'root_fl';

/**
 * The part of a proplet's publish decision that the topic decides: the same
 * for every message a connection sends on that topic, so the broker keeps it
 * per connection. The payload's sender is still checked on every message
 * (propletPayload).
 */
export interface PublishPlan {
  readonly ok: true;
  /** The topic the message is delivered on: the publisher's own (stampSender), or the topic as sent. */
  readonly deliverAs: string;
  readonly rule: SenderRule;
  readonly kind: MessageKind | undefined;
}

/** The topic checks of `authorize` for a proplet's publish, in the same order, with the same reasons. */
export function propletPublishPlan(scope: Scope, id: string, topic: string): PublishPlan | Denial {
  if (typeof topic !== 'string') return deny('invalid_topic');
  if (topic.startsWith('fl/')) {
    if (!isId(id)) return deny('bad_identity');
    const p = parseRootFlTopic(topic);
    if (!p) return deny('outside_scope');
    if (p.propletId !== id) return deny('topic_id_mismatch');
    return { ok: true, deliverAs: topic, rule: 'root_fl', kind: undefined };
  }
  const levels = levelsAfterBase(scope, 'proplet', id, topic);
  if (!levels) return deny('outside_scope');
  const shape = checkLevels(levels, false);
  if (shape) return deny(shape);
  if (!isId(id)) return deny('bad_identity');
  const p = parseTopic(topic);
  if (!p) return deny('unknown_topic');
  if (p.domain !== scope.domain || (p.channel !== scope.channel && p.channel !== id)) return deny('outside_scope');
  if (!PROPLET_PUBLISH_KINDS.has(p.kind)) return deny('kind_not_allowed');
  if (p.propletId !== undefined && p.propletId !== id) return deny('topic_id_mismatch');
  const codec = p.kind in SENDER_FIELD;
  return { ok: true, deliverAs: stampSender(topic, id) ?? topic, rule: codec ? 'codec' : 'propeller', kind: codec ? (p.kind as MessageKind) : undefined };
}

/** The payload checks of a proplet's publish whose topic `plan` allowed: the sender it claims must be `id`. */
export function propletPayload(plan: PublishPlan, id: string, payload: Uint8Array | string | undefined): Decision {
  const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : (payload ?? EMPTY);
  if (plan.rule === 'root_fl') {
    // The payload is the coordinator's to judge (embed-proplet may send a bare number): an unusable update is refused there, without closing the device's connection.
    const claimed = propellerSender(bytes);
    return typeof claimed === 'string' && claimed !== id ? deny('sender_mismatch') : OK;
  }
  const claimed = plan.rule === 'codec' ? claimedSender(plan.kind!, bytes) : propellerSender(bytes);
  if (claimed instanceof Error) return deny(PAYLOAD_DENIAL[claimed.reason] ?? 'malformed_payload');
  if (claimed !== undefined && claimed !== id) return deny('sender_mismatch');
  // A payload that names no sender (ours in compact CBOR, Propeller's embed-proplet results, `{"app_name"}`) is the
  // publisher's: the broker delivers it on the publisher's own topic (stampSender).
  return OK;
}
