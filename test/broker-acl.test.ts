// The broker's ACL as a table, Mosquitto style: who, what, which topic,
// which payload, and the expected decision.
import test from 'ava';
import { authorize, type Action, type DenyReason, type Role } from '../broker/index.ts';
import { propletPayload, propletPublishPlan } from '../broker/acl.ts';
import { encode } from '../protocol/index.ts';
import { allFilter, base, flUpdateTopic, managerFilters, propletSubscriptions, scope, stampSender, topic } from '../topics/index.ts';

const S = scope('propeller', 'control');
const B = base(S);
const OTHER = scope('other', 'control');

const json = (kind: 'proplet.alive' | 'proplet.results' | 'proplet.metrics' | 'proplet.create' | 'registry.proplet', id: string): Buffer => {
  switch (kind) {
    case 'proplet.results':
      return encode(kind, { proplet_id: id, task_id: 't1' }, 'json');
    default:
      return encode(kind as 'proplet.alive', { proplet_id: id }, 'json');
  }
};
const flUpdate = (id: string): Buffer => encode('fl.update', { proplet_id: id, round_id: 'r1', task_id: 't1', num_samples: 1, error: 'x' }, 'cbor');
const cbor = (id: string): Buffer => encode('proplet.alive', { proplet_id: id }, 'cbor');
const cborNoSender = encode('proplet.alive', { proplet_id: 'x' }, 'cbor', { omitSender: true });

type Case = [string, Role, string, Action, string, Uint8Array | string | undefined, true | DenyReason];

const cases: Case[] = [
  // --- manager: anything under the base, nothing outside ---
  ['manager publishes a shared start', 'manager', 'manager', 'publish', topic(S, 'manager.start'), '{}', true],
  ['manager publishes a per-proplet start', 'manager', 'manager', 'publish', topic(S, 'manager.start', 'p1'), '{}', true],
  ['manager publishes an alive (tools, tests)', 'manager', 'manager', 'publish', topic(S, 'proplet.alive'), 'anything', true],
  ['manager publishes an unknown topic under the base', 'manager', 'manager', 'publish', `${B}/something/else`, '', true],
  ['manager publishes in another domain', 'manager', 'manager', 'publish', topic(OTHER, 'manager.start'), '{}', 'outside_scope'],
  ['manager publishes on $SYS', 'manager', 'manager', 'publish', '$SYS/x/heartbeat', '', 'outside_scope'],
  ['manager publishes the base itself', 'manager', 'manager', 'publish', B, '', 'outside_scope'],
  ['manager publishes with an empty level', 'manager', 'manager', 'publish', `${B}/control//start`, '', 'empty_level'],
  ['manager publishes with a trailing slash', 'manager', 'manager', 'publish', `${B}/control/`, '', 'empty_level'],
  ['manager publishes with a wildcard', 'manager', 'manager', 'publish', `${B}/control/+`, '', 'wildcard'],
  ['manager publishes with a NUL', 'manager', 'manager', 'publish', `${B}/control/a\u0000b`, '', 'invalid_topic'],
  ['manager subscribes to its filters', 'manager', 'manager', 'subscribe', managerFilters(S)[0]!, undefined, true],
  ['manager subscribes to everything of the scope', 'manager', 'manager', 'subscribe', allFilter(S), undefined, true],
  ['manager subscribes with + in the middle', 'manager', 'manager', 'subscribe', `${B}/fl/rounds/+/updates/+`, undefined, true],
  ['manager subscribes to #', 'manager', 'manager', 'subscribe', '#', undefined, 'outside_scope'],
  ['manager subscribes across domains', 'manager', 'manager', 'subscribe', 'm/+/c/control/messages/#', undefined, 'outside_scope'],
  ['manager subscribes to another domain', 'manager', 'manager', 'subscribe', allFilter(OTHER), undefined, 'outside_scope'],
  ['manager subscribes with # not last', 'manager', 'manager', 'subscribe', `${B}/#/alive`, undefined, 'invalid_topic'],
  ['manager subscribes with a partial-level wildcard', 'manager', 'manager', 'subscribe', `${B}/control/pro+`, undefined, 'invalid_topic'],
  ['manager subscribes with an empty level', 'manager', 'manager', 'subscribe', `${B}//#`, undefined, 'empty_level'],

  // --- debug: read anything under the base, write nothing ---
  ['debug subscribes to everything of the scope', 'debug', 'debug', 'subscribe', allFilter(S), undefined, true],
  ['debug subscribes to one proplet', 'debug', 'debug', 'subscribe', `${B}/control/+/+/p1`, undefined, true],
  ['debug subscribes to #', 'debug', 'debug', 'subscribe', '#', undefined, 'outside_scope'],
  ['debug subscribes to $SYS', 'debug', 'debug', 'subscribe', '$SYS/#', undefined, 'outside_scope'],
  ['debug subscribes to another domain', 'debug', 'debug', 'subscribe', allFilter(OTHER), undefined, 'outside_scope'],
  ['debug publishes an alive', 'debug', 'debug', 'publish', topic(S, 'proplet.alive'), json('proplet.alive', 'debug'), 'read_only'],
  ['debug publishes a start', 'debug', 'debug', 'publish', topic(S, 'manager.start', 'p1'), '{}', 'read_only'],

  // --- proplet p1: publish ---
  ['p1 alive, shared topic, JSON naming p1', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), json('proplet.alive', 'p1'), true],
  ['p1 alive, shared topic, CBOR naming p1', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), cbor('p1'), true],
  ['p1 alive, own topic, CBOR without sender', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), cborNoSender, true],
  ['p1 alive, own topic, JSON naming p1', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), json('proplet.alive', 'p1'), true],
  ['p1 create', 'proplet', 'p1', 'publish', topic(S, 'proplet.create'), json('proplet.create', 'p1'), true],
  ['p1 results', 'proplet', 'p1', 'publish', topic(S, 'proplet.results'), json('proplet.results', 'p1'), true],
  ['p1 metrics, own topic', 'proplet', 'p1', 'publish', topic(S, 'proplet.metrics', 'p1'), json('proplet.metrics', 'p1'), true],
  ['p1 chunk request', 'proplet', 'p1', 'publish', topic(S, 'registry.proplet'), json('registry.proplet', 'p1'), true],
  ['p1 chunk request, own topic', 'proplet', 'p1', 'publish', topic(S, 'registry.proplet', 'p1'), json('registry.proplet', 'p1'), true],
  ['p1 alive naming p2', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), json('proplet.alive', 'p2'), 'sender_mismatch'],
  ['p1 alive, CBOR naming p2', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), cbor('p2'), 'sender_mismatch'],
  ['p1 alive on its own topic naming p2', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), json('proplet.alive', 'p2'), 'sender_mismatch'],
  ["p1 on p2's per-proplet alive topic", 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p2'), cborNoSender, 'topic_id_mismatch'],
  ["p1 on p2's per-proplet results topic, naming p1", 'proplet', 'p1', 'publish', topic(S, 'proplet.results', 'p2'), json('proplet.results', 'p1'), 'topic_id_mismatch'],
  // no sender in the payload: the broker stamps the publisher's id into the topic (stampSender)
  ['p1 alive with no sender anywhere', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), cborNoSender, true],
  ['p1 alive, JSON without proplet_id', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), '{"status":"alive"}', true],
  ['p1 alive, CBOR naming the sender twice', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), Buffer.from('a2' + '6a70726f706c65745f6964' + '627031' + '01' + '627032', 'hex'), 'duplicate_field'],
  ['p1 alive, JSON naming the sender twice', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), '{"proplet_id":"p1","proplet_id":"p2"}', 'duplicate_field'],
  ['p1 alive, proplet_id of the wrong type', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive'), '{"proplet_id":7}', 'malformed_payload'],
  ['p1 alive, not JSON nor CBOR', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), 'hello', 'malformed_payload'],
  ['p1 alive, empty payload', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), '', 'malformed_payload'],
  ['p1 alive, no payload given', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), undefined, 'malformed_payload'],
  ['p1 alive, over the protocol limit', 'proplet', 'p1', 'publish', topic(S, 'proplet.alive', 'p1'), `{"proplet_id":"p1","x":"${'a'.repeat(70 * 1024)}"}`, 'payload_too_large'],
  ['p1 shared start', 'proplet', 'p1', 'publish', topic(S, 'manager.start'), '{"id":"t"}', 'kind_not_allowed'],
  ['p1 start to itself', 'proplet', 'p1', 'publish', topic(S, 'manager.start', 'p1'), '{"id":"t"}', 'kind_not_allowed'],
  ['p1 stop', 'proplet', 'p1', 'publish', topic(S, 'manager.stop'), '{"id":"t"}', 'kind_not_allowed'],
  ['p1 registry chunks', 'proplet', 'p1', 'publish', topic(S, 'registry.server', 'p1'), '{}', 'kind_not_allowed'],
  ['p1 FL update of its own', 'proplet', 'p1', 'publish', flUpdateTopic(S, 'r1', 'p1'), flUpdate('p1'), true],
  ['p1 FL update on its topic claiming p2 in the payload', 'proplet', 'p1', 'publish', flUpdateTopic(S, 'r1', 'p1'), flUpdate('p2'), 'sender_mismatch'],
  ['p1 FL update that is not a message', 'proplet', 'p1', 'publish', flUpdateTopic(S, 'r1', 'p1'), 'opaque bytes', 'malformed_payload'],
  ['p1 FL update for p2', 'proplet', 'p1', 'publish', flUpdateTopic(S, 'r1', 'p2'), flUpdate('p1'), 'topic_id_mismatch'],
  ['p1 FL update with a missing round level', 'proplet', 'p1', 'publish', `${B}/fl/rounds/updates/p1`, '', 'unknown_topic'],
  ['p1 FL update with an empty round', 'proplet', 'p1', 'publish', `${B}/fl/rounds//updates/p1`, '', 'empty_level'],
  ['p1 on an unknown topic under the base', 'proplet', 'p1', 'publish', `${B}/control/proplet/alive/p1/extra`, json('proplet.alive', 'p1'), 'unknown_topic'],
  ['p1 alive in another domain', 'proplet', 'p1', 'publish', topic(OTHER, 'proplet.alive', 'p1'), json('proplet.alive', 'p1'), 'outside_scope'],
  ['p1 alive in another channel', 'proplet', 'p1', 'publish', topic(scope('propeller', 'other'), 'proplet.alive'), json('proplet.alive', 'p1'), 'outside_scope'],
  ['p1 on an empty level', 'proplet', 'p1', 'publish', `${B}/control//alive`, '', 'empty_level'],
  ['p1 on a wildcard topic', 'proplet', 'p1', 'publish', `${B}/control/proplet/+`, '', 'wildcard'],
  ['p1 outside the tree', 'proplet', 'p1', 'publish', 'devices/p1/alive', '', 'outside_scope'],

  // --- proplet p1: subscribe ---
  ...propletSubscriptions(S, 'p1').map((f): Case => [`p1 subscribes to its own ${f.split('/').slice(-2).join('/')}`, 'proplet', 'p1', 'subscribe', f, undefined, true]),
  ['p1 subscribes to the shared start', 'proplet', 'p1', 'subscribe', topic(S, 'manager.start'), undefined, true],
  ['p1 subscribes to the shared stop', 'proplet', 'p1', 'subscribe', topic(S, 'manager.stop'), undefined, true],
  ['p1 subscribes to the shared registry chunks', 'proplet', 'p1', 'subscribe', topic(S, 'registry.server'), undefined, true],
  ["p1 subscribes to p2's start", 'proplet', 'p1', 'subscribe', topic(S, 'manager.start', 'p2'), undefined, 'not_own_topic'],
  ["p1 subscribes to p2's chunks", 'proplet', 'p1', 'subscribe', topic(S, 'registry.server', 'p2'), undefined, 'not_own_topic'],
  ['p1 subscribes to all starts', 'proplet', 'p1', 'subscribe', `${topic(S, 'manager.start')}/+`, undefined, 'wildcard'],
  ['p1 subscribes to everything', 'proplet', 'p1', 'subscribe', allFilter(S), undefined, 'wildcard'],
  ['p1 subscribes to #', 'proplet', 'p1', 'subscribe', '#', undefined, 'outside_scope'],
  ['p1 subscribes to alives', 'proplet', 'p1', 'subscribe', topic(S, 'proplet.alive'), undefined, 'not_own_topic'],
  ["p1 subscribes to its start in another domain", 'proplet', 'p1', 'subscribe', topic(OTHER, 'manager.start', 'p1'), undefined, 'outside_scope'],
  ['p1 subscribes with an empty level', 'proplet', 'p1', 'subscribe', `${B}/control/manager/start/`, undefined, 'empty_level'],

  // --- identities that cannot hold ---
  ['a proplet id with a slash', 'proplet', 'p/1', 'publish', topic(S, 'proplet.alive'), json('proplet.alive', 'p1'), 'bad_identity'],
  ['an unknown role', 'admin' as Role, 'x', 'subscribe', allFilter(S), undefined, 'bad_identity'],
];

// The broker decides a proplet's publish in two parts (the topic's part kept per
// connection, the payload's checked every time): together they must give every
// case of the table, deliver on the stamped topic, and judge each payload afresh.
test('acl: a proplet publish decided in two parts (topic plan, then payload) gives every case of the table', (t) => {
  let n = 0;
  for (const [name, role, id, action, tp, payload, want] of cases) {
    if (role !== 'proplet' || action !== 'publish') continue;
    n++;
    const plan = propletPublishPlan(S, id, tp);
    t.deepEqual(plan.ok ? propletPayload(plan, id, payload) : plan, want === true ? { ok: true } : { ok: false, reason: want }, name);
    if (!plan.ok) continue;
    t.is(plan.deliverAs, stampSender(tp, id) ?? tp, name);
    // the plan holds nothing of a payload: one naming another proplet on the same topic is refused
    t.deepEqual(propletPayload(plan, id, json('proplet.alive', `${id}x`)), { ok: false, reason: 'sender_mismatch' }, `${name}, then naming another`);
  }
  t.true(n > 20);
});

for (const [name, role, id, action, tp, payload, want] of cases) {
  test(`acl: ${name}`, (t) => {
    const d = authorize(S, role, id, action, tp, payload);
    if (want === true) t.deepEqual(d, { ok: true });
    else t.deepEqual(d, { ok: false, reason: want });
  });
}

test('acl: every proplet-sent kind with the sender omitted is allowed, and delivered on the publisher\'s own topic', (t) => {
  for (const kind of ['proplet.create', 'proplet.alive', 'proplet.results', 'proplet.metrics', 'registry.proplet'] as const) {
    const msg = kind === 'proplet.results' ? { proplet_id: 'p1', task_id: 't' } : { proplet_id: 'p1' };
    const payload = encode(kind, msg as never, 'cbor', { omitSender: true });
    t.deepEqual(authorize(S, 'proplet', 'p1', 'publish', topic(S, kind), payload), { ok: true }, kind);
    t.deepEqual(authorize(S, 'proplet', 'p1', 'publish', topic(S, kind, 'p1'), payload), { ok: true }, kind);
    t.is(stampSender(topic(S, kind), 'p1'), topic(S, kind, 'p1'), kind);
    t.is(stampSender(topic(S, kind, 'p1'), 'p1'), undefined, `${kind}: already names its sender`);
  }
});
