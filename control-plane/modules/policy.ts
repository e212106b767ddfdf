// Where the control plane may fetch from. A task's image_url is chosen by
// whoever may create tasks; without a policy it could make the control plane
// reach its own loopback services, the cloud metadata address or the private
// network behind it. Loopback, link-local and private ranges are denied unless
// allowed by address range or host name; the check is on every address the
// name resolves to, and again on every redirect.

import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import { ModuleFetchError } from './fetch-util.ts';

const DENIED_BY_DEFAULT: [string, number, 'ipv4' | 'ipv6'][] = [
  ['0.0.0.0', 8, 'ipv4'],
  ['10.0.0.0', 8, 'ipv4'],
  ['100.64.0.0', 10, 'ipv4'],
  ['127.0.0.0', 8, 'ipv4'],
  ['169.254.0.0', 16, 'ipv4'],
  ['172.16.0.0', 12, 'ipv4'],
  ['192.168.0.0', 16, 'ipv4'],
  ['::', 128, 'ipv6'],
  ['::1', 128, 'ipv6'],
  ['fc00::', 7, 'ipv6'],
  ['fe80::', 10, 'ipv6'],
];

export interface FetchPolicy {
  /** Throws ModuleFetchError when the URL's host, or any address it resolves to, is not allowed. */
  check(url: URL): Promise<void>;
}

/**
 * `allow`: CIDRs (`127.0.0.0/8`, `::1/128`), single addresses, or host names
 * (exact, case-insensitive) let through despite the default denials. `deny`:
 * more CIDRs, addresses or names refused even when public.
 */
export function fetchPolicy(o: { allow?: readonly string[]; deny?: readonly string[] } = {}): FetchPolicy {
  const defaults = new BlockList();
  for (const [a, p, t] of DENIED_BY_DEFAULT) defaults.addSubnet(a, p, t);
  const allow = ranges(o.allow ?? []);
  const deny = ranges(o.deny ?? []);
  const family = (a: string) => (isIP(a) === 6 ? 'ipv6' : 'ipv4');
  return {
    async check(url) {
      const host = url.hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
      if (deny.names.has(host)) throw new ModuleFetchError(`fetching from ${host} is denied by the fetch policy`);
      if (allow.names.has(host)) return;
      let addrs: string[];
      try {
        addrs = isIP(host) ? [host] : (await lookup(host, { all: true, verbatim: true })).map((a) => a.address);
      } catch (e) {
        throw new ModuleFetchError(`cannot resolve ${host}: ${(e as NodeJS.ErrnoException).code ?? 'lookup failed'}`);
      }
      for (const raw of addrs) {
        // ::ffff:127.0.0.1 is 127.0.0.1
        const a = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(raw)?.[1] ?? raw;
        const t = family(a);
        if (deny.list.check(a, t)) throw new ModuleFetchError(`fetching from ${host} (${a}) is denied by the fetch policy`);
        if (defaults.check(a, t) && !allow.list.check(a, t)) {
          throw new ModuleFetchError(`fetching from ${host} (${a}) is denied: loopback, link-local and private addresses need --fetch-allow`);
        }
      }
    },
  };
}

/** Parses a comma-separated --fetch-allow/--fetch-deny value; throws on an entry that is neither a CIDR, an address nor a host name. */
export function parseFetchList(what: string, v: string | undefined): string[] {
  const out = (v ?? '').split(',').map((x) => x.trim()).filter(Boolean);
  for (const x of out) ranges([x]);
  return out.map((x) => {
    if (!/^[A-Za-z0-9.:\-[\]/]+$/.test(x)) throw new Error(`${what}: ${JSON.stringify(x)} is not a CIDR, address or host name`);
    return x;
  });
}

function ranges(entries: readonly string[]): { list: BlockList; names: Set<string> } {
  const list = new BlockList();
  const names = new Set<string>();
  for (const e of entries) {
    const [addr, bits] = e.split('/') as [string, string | undefined];
    const bare = addr.replace(/^\[(.*)\]$/, '$1');
    const v = isIP(bare);
    if (v === 0) {
      if (bits !== undefined) throw new Error(`${JSON.stringify(e)}: a CIDR needs an address before the /`);
      names.add(bare.toLowerCase());
      continue;
    }
    const type = v === 6 ? 'ipv6' : 'ipv4';
    const prefix = bits === undefined ? (v === 6 ? 128 : 32) : Number(bits);
    if (!Number.isInteger(prefix) || prefix < 0 || prefix > (v === 6 ? 128 : 32)) throw new Error(`${JSON.stringify(e)}: bad prefix length`);
    list.addSubnet(bare, prefix, type);
  }
  return { list, names };
}

/** Lets everything through: for callers that fetch what an operator typed (the CLI's module pull). */
export const OPEN_POLICY: FetchPolicy = { check: async () => {} };
