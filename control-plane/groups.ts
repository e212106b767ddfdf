// PropletGroups (seed 000): a named label selector with its own scheduling
// algorithm and task limit. Tasks name a group; placement applies it.

import { isId } from '../protocol/index.ts';
import type { Algorithm, Proplet, PropletGroup } from './model.ts';
import type { Registry } from './registry.ts';
import type { Store } from './store.ts';
import { InputError } from './task-input.ts';
import { TaskError } from './tasks.ts';

export const ALGORITHMS: readonly Algorithm[] = ['round-robin', 'least-loaded', 'random', 'resource-aware', 'hybrid'];

export interface GroupStatus {
  proplets: { id: string; state: Proplet['state']; assigned_tasks: number }[];
  total_proplets: number;
  available_proplets: number;
}

export function matchesGroup(g: PropletGroup, p: Proplet): boolean {
  for (const [k, v] of Object.entries(g.selector.match_labels ?? {})) if (p.labels[k] !== v) return false;
  return true;
}

/** Accepts the seed's camelCase shape (`selector.matchLabels`, `scheduling.maxTasksPerProplet`) or snake_case. */
export function parseGroupInput(body: unknown, name?: string): Omit<PropletGroup, 'created_at'> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new InputError('body', 'must be an object');
  const o = body as Record<string, unknown>;
  const n = name ?? o.name;
  if (!isId(n)) throw new InputError('name', "must be 1-128 characters without '+', '#', '/'");
  const sel = (o.selector ?? {}) as Record<string, unknown>;
  if (typeof sel !== 'object' || Array.isArray(sel)) throw new InputError('selector', 'must be an object');
  const labels = sel.match_labels ?? sel.matchLabels ?? {};
  if (typeof labels !== 'object' || labels === null || Array.isArray(labels)) throw new InputError('selector.matchLabels', 'must be an object');
  for (const [k, v] of Object.entries(labels)) if (typeof v !== 'string') throw new InputError(`selector.matchLabels.${k}`, 'must be a string');
  const sch = (o.scheduling ?? {}) as Record<string, unknown>;
  if (typeof sch !== 'object' || Array.isArray(sch)) throw new InputError('scheduling', 'must be an object');
  const algorithm = sch.algorithm ?? 'round-robin';
  if (!ALGORITHMS.includes(algorithm as Algorithm)) throw new InputError('scheduling.algorithm', `must be one of ${ALGORITHMS.join(', ')}`);
  const max = sch.max_tasks_per_proplet ?? sch.maxTasksPerProplet;
  if (max !== undefined && (typeof max !== 'number' || !Number.isInteger(max) || max < 1)) {
    throw new InputError('scheduling.maxTasksPerProplet', 'must be a positive integer');
  }
  return {
    name: n,
    selector: { match_labels: labels as Record<string, string> },
    scheduling: { algorithm: algorithm as Algorithm, ...(max !== undefined ? { max_tasks_per_proplet: max as number } : {}) },
  };
}

export class GroupService {
  private groups = new Map<string, PropletGroup>();

  constructor(
    private store: Store,
    private registry: Registry,
    private assigned: (propletId: string) => number,
  ) {
    for (const g of store.groups.list()) this.groups.set(g.name, g);
  }

  get(name: string): PropletGroup | undefined {
    return this.groups.get(name);
  }
  list(): PropletGroup[] {
    return [...this.groups.values()];
  }

  require(name: string): PropletGroup {
    const g = this.groups.get(name);
    if (!g) throw new TaskError('not_found', `proplet group ${name} not found`);
    return g;
  }

  create(input: Omit<PropletGroup, 'created_at'>): PropletGroup {
    if (this.groups.has(input.name)) throw new TaskError('conflict', `proplet group ${input.name} already exists`);
    return this.put({ ...input, created_at: new Date().toISOString() });
  }

  replace(input: Omit<PropletGroup, 'created_at'>): PropletGroup {
    const prev = this.require(input.name);
    return this.put({ ...input, created_at: prev.created_at });
  }

  delete(name: string): void {
    this.require(name);
    this.groups.delete(name);
    this.store.groups.delete(name);
  }

  status(g: PropletGroup): GroupStatus {
    const members = this.registry.list().filter((p) => matchesGroup(g, p));
    const max = g.scheduling.max_tasks_per_proplet;
    const available = members.filter((p) => {
      if (p.state !== 'alive') return false;
      const limit = Math.min(max ?? Infinity, p.capacity.max_tasks ?? Infinity);
      return this.assigned(p.id) < limit;
    });
    return {
      proplets: members.map((p) => ({ id: p.id, state: p.state, assigned_tasks: this.assigned(p.id) })),
      total_proplets: members.length,
      available_proplets: available.length,
    };
  }

  private put(g: PropletGroup): PropletGroup {
    this.groups.set(g.name, g);
    this.store.groups.put(g.name, g);
    return g;
  }
}
