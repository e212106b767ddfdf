// Which subscribers a topic reaches, remembered while the subscriptions stay
// as they are. Aedes hands every publish to mqemitter, which asks its Qlobber
// trie for the topic's subscribers: the topic split into levels and the trie
// walked, per message. A fleet publishes on the same few topics per device
// over and over (a heartbeat's topic is the same every time), and between
// subscribes and unsubscribes the answer cannot change. So the answers are
// kept by topic, and all of them forgotten at any add, remove or clear of the
// trie (mqemitter's subscribe, unsubscribe and removeAllListeners go through
// these). Bounded: beyond MAX_TOPICS topics the cache starts over.

/** The part of Qlobber that mqemitter uses. */
export interface Matcher {
  add(topic: string, val: unknown): unknown;
  remove(topic: string, val?: unknown): unknown;
  match(topic: string, ctx?: unknown): unknown[];
  clear(): unknown;
}

const MAX_TOPICS = 65_536;

/**
 * Wraps `matcher` (Aedes' `mq._matcher`) in place. The arrays it returns are
 * frozen copies: mqemitter and fastparallel only read them, and a cached
 * answer must not be changed by whoever gets it.
 */
export function cacheMatches(matcher: Matcher, maxTopics = MAX_TOPICS): { readonly size: number } {
  const cache = new Map<string, unknown[]>();
  const { add, remove, match, clear } = matcher;
  matcher.add = function (this: Matcher, ...args: [string, unknown]) {
    cache.clear();
    return add.apply(this, args);
  };
  matcher.remove = function (this: Matcher, ...args: [string, unknown?]) {
    cache.clear();
    return remove.apply(this, args);
  };
  matcher.clear = function (this: Matcher) {
    cache.clear();
    return clear.call(this);
  };
  matcher.match = function (this: Matcher, topic: string, ctx?: unknown) {
    if (ctx !== undefined) return match.call(this, topic, ctx);
    let found = cache.get(topic);
    if (found === undefined) {
      // a copy: Qlobber may answer with a trie node's own array, which it changes later
      found = Object.freeze([...match.call(this, topic)]) as unknown[];
      if (cache.size >= maxTopics) cache.clear();
      cache.set(topic, found);
    }
    return found;
  };
  return {
    get size() {
      return cache.size;
    },
  };
}
