// Fleet: counts by kind and state, filter and search, and a virtualised list
// (only the rows in view are in the DOM), so 10,000 proplets scroll and update
// as fast as ten.

import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import type { Proplet } from '../api.ts';
import { useSignal } from '../signal.ts';
import { ago, fleetLoaded, fleetVersion, propletIds, proplets } from '../state.ts';

const ROW = 34;
const STATES = ['alive', 'offline', 'failed'] as const;
const KIND_TITLES: Record<string, string> = { all: 'All proplets', node: 'Node', mcu: 'MCU', k8s: 'Kubernetes', external: 'External' };

/** A proplet's kind as an operator says it: k8s pod, MCU, node, or external device. */
export function kindOf(p: Proplet): string {
  if (p.proplet_type === 'k8s') return 'k8s';
  const d = p.device_type.toLowerCase();
  if (d === 'node' || d.startsWith('node')) return 'node';
  if (p.encoding === 'cbor' || /mcu|esp|stm|nrf|rp2040|micro/.test(d)) return 'mcu';
  return 'external';
}

function useNow(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

export function Fleet() {
  const version = useSignal(fleetVersion);
  const loaded = useSignal(fleetLoaded);
  const [q, setQ] = useState('');
  const [state, setState] = useState('');
  const [kind, setKind] = useState('');
  const [scrollTop, setScrollTop] = useState(0);
  const [height, setHeight] = useState(600);
  const [cursor, setCursor] = useState(0);
  const [open, setOpen] = useState<string | undefined>();
  const box = useRef<HTMLDivElement>(null);
  const now = useNow(5000);

  const { counts, rows } = useMemo(() => {
    const counts: Record<string, Record<string, number>> = {};
    const total: Record<string, number> = { all: 0, alive: 0, offline: 0, failed: 0 };
    const needle = q.trim().toLowerCase();
    const rows: Proplet[] = [];
    for (const id of propletIds()) {
      const p = proplets.get(id)!;
      const k = kindOf(p);
      const c = (counts[k] ??= { all: 0, alive: 0, offline: 0, failed: 0 });
      c.all!++;
      c[p.state] = (c[p.state] ?? 0) + 1;
      total.all!++;
      total[p.state] = (total[p.state] ?? 0) + 1;
      if (state && p.state !== state) continue;
      if (kind && k !== kind) continue;
      if (needle && !matches(p, needle)) continue;
      rows.push(p);
    }
    counts.all = total;
    return { counts, rows };
  }, [version, q, state, kind]);

  useEffect(() => {
    const el = box.current;
    if (!el) return;
    const ro = new ResizeObserver(() => setHeight(el.clientHeight));
    ro.observe(el);
    return () => ro.disconnect();
  }, []);

  const first = Math.max(0, Math.floor(scrollTop / ROW) - 5);
  const last = Math.min(rows.length, Math.ceil((scrollTop + height) / ROW) + 5);
  const cur = Math.min(cursor, Math.max(0, rows.length - 1));

  const onKey = (e: KeyboardEvent) => {
    const page = Math.max(1, Math.floor(height / ROW) - 1);
    let next = cur;
    if (e.key === 'ArrowDown') next = cur + 1;
    else if (e.key === 'ArrowUp') next = cur - 1;
    else if (e.key === 'PageDown') next = cur + page;
    else if (e.key === 'PageUp') next = cur - page;
    else if (e.key === 'Home') next = 0;
    else if (e.key === 'End') next = rows.length - 1;
    else if (e.key === 'Enter' && rows[cur]) return setOpen(open === rows[cur]!.id ? undefined : rows[cur]!.id);
    else if (e.key === 'Escape') return setOpen(undefined);
    else return;
    e.preventDefault();
    next = Math.max(0, Math.min(rows.length - 1, next));
    setCursor(next);
    const el = box.current!;
    if (next * ROW < el.scrollTop) el.scrollTop = next * ROW;
    else if ((next + 1) * ROW > el.scrollTop + el.clientHeight) el.scrollTop = (next + 1) * ROW - el.clientHeight;
  };

  const kinds = Object.keys(counts).filter((k) => k !== 'all').sort();
  const detail = open ? proplets.get(open) : undefined;
  return (
    <section aria-labelledby="fleet-h">
      <h2 id="fleet-h">Fleet</h2>
      <div class="counts" id="fleet-counts">
        {['all', ...kinds].map((k) => (
          <div class="count" key={k} data-kind={k}>
            <div class="count-title">{KIND_TITLES[k] ?? k}</div>
            <div class="count-total" data-count="all">{counts[k]?.all ?? 0}</div>
            <div class="count-states">
              {STATES.map((s) => (
                <span key={s} class={`st st-${s}`} data-count={s}>
                  {counts[k]?.[s] ?? 0} {s}
                </span>
              ))}
            </div>
          </div>
        ))}
      </div>
      <form class="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Search
          <input id="fleet-search" type="search" value={q} placeholder="id, name, label, capability" onInput={(e) => setQ((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          State
          <select id="fleet-state" value={state} onChange={(e) => setState((e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {STATES.map((s) => (
              <option key={s}>{s}</option>
            ))}
          </select>
        </label>
        <label>
          Kind
          <select id="fleet-kind" value={kind} onChange={(e) => setKind((e.target as HTMLSelectElement).value)}>
            <option value="">any</option>
            {['node', 'mcu', 'k8s', 'external'].map((k) => (
              <option key={k}>{k}</option>
            ))}
          </select>
        </label>
        <span class="muted" id="fleet-shown" aria-live="polite">
          {loaded ? `${rows.length} shown` : 'loading…'}
        </span>
      </form>
      <div class="grid-head" aria-hidden="true">
        <span>id</span>
        <span>kind</span>
        <span>state</span>
        <span>last heartbeat</span>
        <span>running</span>
        <span>capacity</span>
        <span>labels</span>
      </div>
      <div
        ref={box}
        id="fleet-list"
        class="vlist"
        role="grid"
        aria-label={`Proplets, ${rows.length} rows; arrow keys move, Enter shows details`}
        aria-rowcount={rows.length}
        aria-activedescendant={rows[cur] ? `row-${cur}` : undefined}
        tabIndex={0}
        onScroll={(e) => setScrollTop((e.target as HTMLDivElement).scrollTop)}
        onKeyDown={onKey}
      >
        <div style={{ height: `${rows.length * ROW}px`, position: 'relative' }}>
          {rows.slice(first, last).map((p, i) => {
            const idx = first + i;
            return (
              <div
                key={p.id}
                id={`row-${idx}`}
                role="row"
                aria-rowindex={idx + 1}
                aria-selected={idx === cur}
                class={`vrow${idx === cur ? ' cursor' : ''}`}
                data-proplet={p.id}
                data-state={p.state}
                style={{ top: `${idx * ROW}px`, height: `${ROW}px` }}
                onClick={() => {
                  setCursor(idx);
                  setOpen(open === p.id ? undefined : p.id);
                }}
              >
                <span role="gridcell" class="mono ellipsis" title={p.name !== p.id ? `${p.id} (${p.name})` : p.id}>
                  {p.id}
                </span>
                <span role="gridcell">{kindOf(p)}</span>
                <span role="gridcell">
                  <span class={`st st-${p.state}`}>{p.state}</span>
                </span>
                <span role="gridcell">{ago(p.last_seen, now)}</span>
                <span role="gridcell">{p.running_tasks}</span>
                <span role="gridcell" class="ellipsis">
                  {capacityText(p)}
                </span>
                <span role="gridcell" class="ellipsis mono">
                  {Object.entries(p.labels)
                    .map(([k, v]) => `${k}=${v}`)
                    .join(' ')}
                </span>
              </div>
            );
          })}
        </div>
      </div>
      {detail && <PropletDetail p={detail} now={now} onClose={() => setOpen(undefined)} />}
    </section>
  );
}

function matches(p: Proplet, needle: string): boolean {
  if (p.id.toLowerCase().includes(needle) || p.name.toLowerCase().includes(needle) || p.device_type.toLowerCase().includes(needle)) return true;
  for (const [k, v] of Object.entries(p.labels)) if (`${k}=${v}`.toLowerCase().includes(needle)) return true;
  return p.capabilities.some((c) => c.toLowerCase().includes(needle));
}

function capacityText(p: Proplet): string {
  const c = p.capacity as Record<string, unknown>;
  const parts: string[] = [];
  if (c.max_tasks !== undefined) parts.push(`${String(c.max_tasks)} tasks`);
  if (typeof c.memory_bytes === 'number') parts.push(`${Math.round(c.memory_bytes / 1024)} KiB`);
  if (typeof p.memory_used === 'number') parts.push(`${Math.round(p.memory_used / 1024)} KiB used`);
  return parts.join(', ') || '—';
}

function PropletDetail({ p, now, onClose }: { p: Proplet; now: number; onClose: () => void }) {
  return (
    <aside class="detail" aria-labelledby="proplet-h" id="proplet-detail">
      <h3 id="proplet-h">
        Proplet <span class="mono">{p.id}</span>
      </h3>
      <button type="button" class="close" onClick={onClose} aria-label="Close details">
        ×
      </button>
      <dl>
        <dt>name</dt>
        <dd>{p.name}</dd>
        <dt>kind</dt>
        <dd>
          {kindOf(p)} ({p.device_type}, {p.proplet_type}, {p.encoding}, {p.addressing})
        </dd>
        <dt>state</dt>
        <dd>
          <span class={`st st-${p.state}`}>{p.state}</span> since {ago(p.state_since, now)}
        </dd>
        <dt>last heartbeat</dt>
        <dd>{ago(p.last_seen, now)}</dd>
        <dt>running tasks</dt>
        <dd>
          {p.running_tasks}
          {Array.isArray(p.assigned_tasks) && p.assigned_tasks.length > 0 && (
            <>
              {' '}
              ({p.assigned_tasks.map((id) => (
                <a key={id} href={`#/tasks/${encodeURIComponent(id)}`} class="mono">
                  {id.slice(0, 8)}{' '}
                </a>
              ))}
              )
            </>
          )}
        </dd>
        <dt>capacity</dt>
        <dd class="mono">{JSON.stringify(p.capacity)}</dd>
        <dt>capabilities</dt>
        <dd>{p.capabilities.join(', ') || '—'}</dd>
        <dt>labels</dt>
        <dd class="mono">{Object.entries(p.labels).map(([k, v]) => `${k}=${v}`).join(' ') || '—'}</dd>
      </dl>
    </aside>
  );
}
