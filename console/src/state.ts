// What the page knows, kept current by the event stream: every proplet (a Map
// and a version number, so 10,000 rows are not copied on each change), and the
// FL objects by name. Views re-render once per animation frame at most.

import { allProplets, api, type FlCheckpoint, type FlJob, type FlRound, type Proplet, type Task, type WireLine } from './api.ts';
import { signal, type Signal } from './signal.ts';
import { EventStream } from './stream.ts';

export const proplets = new Map<string, Proplet>();
export const fleetVersion = signal(0);
/** Proplet ids in id order, sorted again only when proplets come or go (not on every heartbeat). */
let sortedIds: string[] = [];
let membershipChanged = true;
export function propletIds(): string[] {
  if (membershipChanged) {
    sortedIds = [...proplets.keys()].sort();
    membershipChanged = false;
  }
  return sortedIds;
}
export const fleetLoaded = signal(false);

export const flJobs = new Map<string, FlJob>();
export const flRounds = new Map<string, FlRound>();
export const flCheckpoints = new Map<string, FlCheckpoint>();
export const flVersion = signal(0);

/** Task changes pushed by the stream; the Tasks view merges them into its page. */
export const taskEvents = signal<{ changed: Task[]; deleted: string[] }>({ changed: [], deleted: [] });
/** Bumped when the page must fetch again (a reconnection or a gap). */
export const resyncs = signal(0);

const WIRE_KEEP = 2000;
export const wire: WireLine[] = [];
export const wireVersion = signal(0);
export const wireDropped = signal(0);

const pending = new Set<Signal<number>>();
let frame = 0;
function bump(s: Signal<number>): void {
  pending.add(s);
  frame ||= requestAnimationFrame(() => {
    frame = 0;
    const all = [...pending];
    pending.clear();
    for (const x of all) x.set(x.get() + 1);
  });
}

export async function loadFleet(): Promise<void> {
  const all = await allProplets();
  proplets.clear();
  for (const p of all) proplets.set(p.id, p);
  membershipChanged = true;
  fleetLoaded.set(true);
  bump(fleetVersion);
}

export async function loadFl(): Promise<void> {
  const [jobs, rounds, cps] = await Promise.all([
    api<{ jobs: FlJob[] }>('/fl/jobs'),
    api<{ rounds: FlRound[] }>('/fl/rounds'),
    api<{ checkpoints: FlCheckpoint[] }>('/fl/checkpoints'),
  ]);
  flJobs.clear();
  flRounds.clear();
  flCheckpoints.clear();
  for (const j of jobs.jobs) flJobs.set(j.metadata.name, j);
  for (const r of rounds.rounds) flRounds.set(r.metadata.name, r);
  for (const c of cps.checkpoints) flCheckpoints.set(c.metadata.name, c);
  bump(flVersion);
}

export function resync(): void {
  void loadFleet().catch(() => {});
  void loadFl().catch(() => {});
  resyncs.set(resyncs.get() + 1);
}

export const stream = new EventStream(resync, () => void api('/tasks?limit=0').catch(() => {}));
stream.on('proplets', (d) => {
  const { changed, removed } = d as { changed: Proplet[]; removed: string[] };
  for (const p of changed) {
    if (!proplets.has(p.id)) membershipChanged = true;
    proplets.set(p.id, p);
  }
  for (const id of removed) membershipChanged = proplets.delete(id) || membershipChanged;
  bump(fleetVersion);
});
stream.on('tasks', (d) => taskEvents.set(d as { changed: Task[]; deleted: string[] }));
stream.on('fl', (d) => {
  const { jobs, rounds, checkpoints, removed } = d as { jobs: FlJob[]; rounds: FlRound[]; checkpoints: FlCheckpoint[]; removed?: { jobs: string[]; rounds: string[] } };
  for (const j of jobs) flJobs.set(j.metadata.name, j);
  for (const r of rounds) flRounds.set(r.metadata.name, r);
  for (const c of checkpoints) flCheckpoints.set(c.metadata.name, c);
  for (const name of removed?.jobs ?? []) flJobs.delete(name);
  for (const name of removed?.rounds ?? []) flRounds.delete(name);
  bump(flVersion);
});
stream.on('wire', (d) => {
  const { lines, dropped } = d as { lines: WireLine[]; dropped: number };
  wire.push(...lines);
  if (wire.length > WIRE_KEEP) wire.splice(0, wire.length - WIRE_KEEP);
  if (dropped) wireDropped.set(wireDropped.get() + dropped);
  bump(wireVersion);
});

export function ago(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '—';
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}
