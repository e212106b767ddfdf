// The broker remembers which subscribers a topic reaches (broker/match-cache.ts)
// and must forget it whenever the subscriptions change: a new subscriber gets
// the next message on a topic that was published before it came, and one that
// left gets nothing more.

import test from 'ava';
import { createRequire } from 'node:module';
import { cacheMatches, type Matcher } from '../broker/match-cache.ts';
import { topic } from '../topics/index.ts';
import { scope as S, startStack, until } from './helpers/stack.ts';

const require = createRequire(createRequire(import.meta.url).resolve('mqemitter'));
const { Qlobber } = require('qlobber') as { Qlobber: new (o: object) => Matcher };

function counted(): { q: Matcher; calls: () => number } {
  const q = new Qlobber({ separator: '/', wildcard_one: '+', wildcard_some: '#', match_empty_levels: true });
  const inner = q.match;
  let n = 0;
  q.match = function (this: Matcher, ...a: [string]) {
    n++;
    return inner.apply(this, a);
  };
  return { q, calls: () => n };
}

test('a topic is matched once while the subscriptions stay; every add, remove and clear starts over', (t) => {
  const { q, calls } = counted();
  const cache = cacheMatches(q);
  const f = (): void => {};
  const g = (): void => {};
  q.add('a/+', f);
  t.deepEqual(q.match('a/b'), [f]);
  t.deepEqual(q.match('a/b'), [f]);
  t.is(calls(), 1);
  t.true(Object.isFrozen(q.match('a/b')));
  q.add('a/b', g);
  const both = q.match('a/b');
  t.true(both.length === 2 && both.includes(f) && both.includes(g));
  t.is(calls(), 2);
  q.remove('a/+', f);
  t.deepEqual(q.match('a/b'), [g]);
  q.clear();
  t.deepEqual(q.match('a/b'), []);
  t.is(calls(), 4);
  t.is(cache.size, 1);
});

test('bounded: beyond its size the cache starts over', (t) => {
  const { q } = counted();
  const cache = cacheMatches(q, 3);
  for (const x of ['a', 'b', 'c', 'd']) q.match(x);
  t.is(cache.size, 1);
});

test('through the broker: a subscriber that comes after a topic was published gets its next message; one that left gets none', async (t) => {
  const s = await startStack();
  t.teardown(() => s.close());
  const id = 'cache-p1';
  const proplet = await s.client(id, 'proplet');
  t.teardown(() => proplet.endAsync());
  const at = `${topic(S, 'proplet.metrics')}/${id}`; // where the broker delivers a proplet's metrics
  const send = (n: number): Promise<unknown> => proplet.publishAsync(topic(S, 'proplet.metrics'), JSON.stringify({ proplet_id: id, cpu_percent: n }), { qos: 1 });
  const first: number[] = [];
  const a = await s.client('cache-watch-a', 'debug');
  t.teardown(() => a.endAsync());
  a.on('message', (_t, p) => first.push(JSON.parse(p.toString()).cpu_percent));
  await a.subscribeAsync(at);
  await send(1);
  await send(2); // the topic's subscribers are now remembered
  await until(() => first.length === 2, 'a has both');
  const second: number[] = [];
  const b = await s.client('cache-watch-b', 'debug');
  t.teardown(() => b.endAsync());
  b.on('message', (_t, p) => second.push(JSON.parse(p.toString()).cpu_percent));
  await b.subscribeAsync(`${topic(S, 'proplet.metrics')}/+`);
  await send(3);
  await until(() => second.length === 1 && first.length === 3, 'the new subscriber has the next message');
  await a.unsubscribeAsync(at);
  await send(4);
  await until(() => second.length === 2, 'b has the fourth');
  await send(5);
  await until(() => second.length === 3, 'b has the fifth');
  t.deepEqual(first, [1, 2, 3]);
  t.deepEqual(second, [3, 4, 5]);
});
