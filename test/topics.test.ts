import test from 'ava';
import { allFilter, base, flUpdateTopic, isValidLevel, LAYOUTS, managerFilters, parseTopic, propletSubscriptions, scope, sharedSubscriptions, stampSender, topic, TopicError } from '../topics/index.ts';

const s = scope('propeller', 'control');
const b = 'm/propeller/c/control/messages';

test('builds Propeller topic strings', (t) => {
  t.is(topic(s, 'proplet.create'), `${b}/control/proplet/create`);
  t.is(topic(s, 'proplet.alive'), `${b}/control/proplet/alive`);
  t.is(topic(s, 'proplet.results'), `${b}/control/proplet/results`);
  t.is(topic(s, 'proplet.metrics'), `${b}/control/proplet/metrics`);
  t.is(topic(s, 'manager.start'), `${b}/control/manager/start`);
  t.is(topic(s, 'manager.stop'), `${b}/control/manager/stop`);
  t.is(topic(s, 'registry.proplet'), `${b}/registry/proplet`);
  t.is(topic(s, 'registry.server'), `${b}/registry/server`);
  t.is(topic(s, 'manager.start', 'p1'), `${b}/control/manager/start/p1`);
  t.is(flUpdateTopic(s, 'round-1', 'p1'), `${b}/fl/rounds/round-1/updates/p1`);
  t.is(allFilter(s), `${b}/#`);
});

const roundTrips: [string, Parameters<typeof topic>[1], string | undefined][] = [
  ['create', 'proplet.create', undefined],
  ['alive per proplet', 'proplet.alive', 'esp32-01'],
  ['results', 'proplet.results', undefined],
  ['metrics per proplet', 'proplet.metrics', 'x'],
  ['start', 'manager.start', undefined],
  ['start per proplet', 'manager.start', '8b1c9e9e-3f0e-4c4a-9e1d-0f5d2b7c1a11'],
  ['stop per proplet', 'manager.stop', 'p'],
  ['registry request', 'registry.proplet', undefined],
  ['registry chunks per proplet', 'registry.server', 'dev-7'],
];
for (const layout of LAYOUTS) {
  for (const [name, kind, id] of roundTrips) {
    test(`round trip (${layout}): ${name}`, (t) => {
      const parsed = parseTopic(topic(s, kind, id, layout));
      t.deepEqual(parsed, { domain: 'propeller', channel: 'control', layout, kind, ...(id === undefined ? {} : { propletId: id }) });
    });
  }
  test(`round trip (${layout}): fl update`, (t) => {
    t.deepEqual(parseTopic(flUpdateTopic(s, 'r1', 'p1', layout)), { domain: 'propeller', channel: 'control', layout, kind: 'fl.update', roundId: 'r1', propletId: 'p1' });
  });
}

test("Propeller's current proplets: the same paths without the messages level", (t) => {
  // what the Rust proplet's build_topic and embed-proplet's templates produce
  const bare = 'm/propeller/c/control';
  t.is(base(s, 'bare'), bare);
  t.is(topic(s, 'proplet.create', undefined, 'bare'), `${bare}/control/proplet/create`);
  t.is(topic(s, 'manager.start', undefined, 'bare'), `${bare}/control/manager/start`);
  t.is(topic(s, 'registry.server', undefined, 'bare'), `${bare}/registry/server`);
  t.deepEqual(sharedSubscriptions(s, 'bare'), [
    `${bare}/control/manager/start`,
    `${bare}/control/manager/stop`,
    `${bare}/control/manager/invoke`,
    `${bare}/registry/server`,
  ]);
  t.is(parseTopic(`${bare}/control/proplet/invoke_results`)?.kind, 'proplet.invoke_results');
  t.is(parseTopic(`${bare}/control/proplet/task_metrics`)?.kind, 'proplet.task_metrics');
  t.is(parseTopic(`${bare}/control/proplet/results`)?.layout, 'bare');
  t.is(parseTopic(`${b}/control/proplet/results`)?.layout, 'messages');
});

test('stampSender: the per-proplet form of a shared proplet-to-manager topic, in its own layout', (t) => {
  t.is(stampSender('m/propeller/c/control/control/proplet/results', 'esp'), 'm/propeller/c/control/control/proplet/results/esp');
  t.is(stampSender(`${b}/control/proplet/results`, 'p1'), `${b}/control/proplet/results/p1`);
  t.is(stampSender(`${b}/control/proplet/results/p1`, 'p1'), undefined); // already names one
  t.is(stampSender(`${b}/control/manager/start`, 'p1'), undefined); // not proplet-sent
  t.is(stampSender(`${b}/control/proplet/results`, 'a/b'), undefined);
});

const rejected = [
  '',
  'm/propeller/c/control/messages',
  `${b}/control/proplet`,
  `${b}/control/proplet/unknown`,
  `${b}/control/proplet/alive/p1/extra`,
  `${b}/control/proplet/alive/`,
  `${b}/control/proplet/alive/+`,
  `${b}/control/proplet/#`,
  `${b}/control/manager/start/a/b`,
  `${b}/registry/other`,
  `${b}/fl/rounds/r1/updates`,
  `${b}/fl/rounds/r1/updates/p1/x`,
  `${b}/fl/rounds//updates/p1`,
  'x/propeller/c/control/messages/control/proplet/alive',
  'm/+/c/control/messages/control/proplet/alive',
  'm/propeller/c//messages/control/proplet/alive',
  'm/propeller/c/control/msgs/control/proplet/alive',
  `${b}/control/proplet/alive/a\u0000b`,
];
for (const t0 of rejected) {
  test(`rejects topic ${JSON.stringify(t0)}`, (t) => {
    t.is(parseTopic(t0), undefined);
  });
}

test('validates domain, channel and ids', (t) => {
  for (const bad of ['', 'a/b', 'a+', '#', 'x'.repeat(129), 'a\nb']) {
    t.false(isValidLevel(bad), bad);
    t.throws(() => scope(bad, 'c'), { instanceOf: TopicError });
    t.throws(() => scope('d', bad), { instanceOf: TopicError });
    t.throws(() => topic(s, 'manager.start', bad), { instanceOf: TopicError });
    t.throws(() => flUpdateTopic(s, bad, 'p'), { instanceOf: TopicError });
  }
  t.true(isValidLevel('esp32-01.floor_2'));
});

test('per-proplet subscriptions name only that proplet', (t) => {
  const subs = propletSubscriptions(s, 'p1');
  t.deepEqual(
    subs.map((x) => parseTopic(x)?.propletId),
    ['p1', 'p1', 'p1'],
  );
  t.deepEqual(
    subs.map((x) => parseTopic(x)?.kind),
    ['manager.start', 'manager.stop', 'registry.server'],
  );
});

test('manager filters cover every proplet-sent kind', (t) => {
  const f = managerFilters(s);
  const matches = (filter: string, topic0: string) => {
    const fl = filter.split('/');
    const tl = topic0.split('/');
    for (let i = 0; i < fl.length; i++) {
      if (fl[i] === '#') return true;
      if (fl[i] !== '+' && fl[i] !== tl[i]) return false;
    }
    return fl.length === tl.length;
  };
  for (const layout of LAYOUTS) {
    for (const t0 of [topic(s, 'proplet.alive', undefined, layout), topic(s, 'proplet.alive', 'p', layout), topic(s, 'registry.proplet', undefined, layout), flUpdateTopic(s, 'r', 'p', layout)]) {
      t.true(f.some((x) => matches(x, t0)), t0);
    }
    t.false(f.some((x) => matches(x, topic(s, 'manager.start', 'p', layout))));
  }
  // device channels: an embed-proplet on a channel named by its id
  const dev = scope('propeller', 'esp32-01');
  t.false(f.some((x) => matches(x, topic(dev, 'proplet.results', undefined, 'bare'))));
  t.true(managerFilters(s, true).some((x) => matches(x, topic(dev, 'proplet.results', undefined, 'bare'))));
});
