// Tasks: a page of tasks, newest first, with filters; a task's detail
// (timeline of transitions and attempts, proplet, results, output, error) with
// start, stop and delete; and the form that creates one.

import { useEffect, useState } from 'preact/hooks';
import { api, ApiError, postJson, type Task } from '../api.ts';
import { useSignal } from '../signal.ts';
import { ago, resyncs, taskEvents } from '../state.ts';
import { CreateTask } from './create-task.tsx';

const PAGE = 25;
const STATES = ['Pending', 'Scheduled', 'Running', 'Completed', 'Failed', 'Stopped'];

interface Filters {
  state: string;
  label: string;
  proplet: string;
}

interface TaskPage {
  tasks: Task[];
  total?: number;
  /** The token of the next (older) page, when there is one. */
  next?: string;
}

/**
 * One page, newest first. The API pages newest first with a `continue` token;
 * an older control plane lists oldest first with offset and total, and is
 * paged from the end.
 */
async function fetchPage(f: Filters, token: string | undefined, pageNo: number): Promise<TaskPage> {
  const qs = new URLSearchParams();
  if (f.state) qs.set('state', f.state);
  if (f.label) qs.append('label', f.label);
  if (f.proplet) qs.set('proplet', f.proplet);
  if (token) qs.set('continue', token);
  const r = await api<{ total?: number; offset?: number; tasks: Task[]; continue?: string }>(`/tasks?${qs}&limit=${PAGE}`);
  if (r.offset === undefined || r.continue !== undefined || r.total === undefined) {
    return { tasks: r.tasks, ...(r.total !== undefined ? { total: r.total } : {}), ...(r.continue ? { next: r.continue } : {}) };
  }
  // oldest first with offset: the newest page is the last one
  const end = Math.max(0, r.total - pageNo * PAGE);
  const start = Math.max(0, end - PAGE);
  const old = await api<{ total: number; tasks: Task[] }>(`/tasks?${new URLSearchParams([...qs].filter(([k]) => k !== 'continue'))}&offset=${start}&limit=${end - start}`);
  return { tasks: old.tasks.reverse(), total: old.total, ...(start > 0 ? { next: String(pageNo + 1) } : {}) };
}

export function Tasks({ selected }: { selected?: string }) {
  const [filters, setFilters] = useState<Filters>({ state: '', label: '', proplet: '' });
  // tokens of the pages seen so far: [first page, second, ...]; the last is the one shown
  const [trail, setTrail] = useState<(string | undefined)[]>([undefined]);
  const page = trail.length - 1;
  const [data, setData] = useState<TaskPage | undefined>();
  const [error, setError] = useState<ApiError | undefined>();
  const [reload, setReload] = useState(0);
  const [creating, setCreating] = useState(false);
  const events = useSignal(taskEvents);
  const resync = useSignal(resyncs);

  useEffect(() => {
    let gone = false;
    fetchPage(filters, trail[page], page).then(
      (d) => !gone && (setData(d), setError(undefined)),
      (e: ApiError) => !gone && setError(e),
    );
    return () => {
      gone = true;
    };
  }, [filters, trail, reload, resync]);

  // pushed changes: tasks on this page change in place; a new task refetches the first page
  useEffect(() => {
    if (!data || (events.changed.length === 0 && events.deleted.length === 0)) return;
    const byId = new Map(events.changed.map((t) => [t.id, t]));
    let unseen = false;
    for (const t of events.changed) if (!data.tasks.some((x) => x.id === t.id)) unseen = true;
    const tasks = data.tasks.filter((t) => !events.deleted.includes(t.id)).map((t) => byId.get(t.id) ?? t);
    setData({ ...data, tasks });
    if ((unseen && page === 0) || events.deleted.length) setReload((n) => n + 1);
  }, [events]);

  return (
    <section aria-labelledby="tasks-h" class="split">
      <div class="pane">
        <h2 id="tasks-h">Tasks</h2>
        <div class="toolbar">
          <button type="button" id="new-task" onClick={() => setCreating(true)}>
            New task
          </button>
        </div>
        <form
          class="filters"
          role="search"
          onSubmit={(e) => {
            e.preventDefault();
            const fd = new FormData(e.target as HTMLFormElement);
            setTrail([undefined]);
            setFilters({ state: String(fd.get('state') ?? ''), label: String(fd.get('label') ?? '').trim(), proplet: String(fd.get('proplet') ?? '').trim() });
          }}
        >
          <label>
            State
            <select name="state" id="task-filter-state">
              <option value="">any</option>
              {STATES.map((s) => (
                <option key={s}>{s}</option>
              ))}
            </select>
          </label>
          <label>
            Label
            <input name="label" id="task-filter-label" placeholder="KEY=VALUE" pattern="[^=]+=.*" title="KEY=VALUE" />
          </label>
          <label>
            Proplet
            <input name="proplet" id="task-filter-proplet" placeholder="proplet id" />
          </label>
          <button type="submit">Filter</button>
        </form>
        {error && (
          <p class="error" role="alert" id="task-list-error">
            {error.message}
          </p>
        )}
        <table class="tasks" id="task-list">
          <caption class="sr-only">Tasks, newest first</caption>
          <thead>
            <tr>
              <th scope="col">name</th>
              <th scope="col">state</th>
              <th scope="col">proplet</th>
              <th scope="col">created</th>
            </tr>
          </thead>
          <tbody>
            {data?.tasks.map((t) => (
              <tr key={t.id} data-task={t.id} data-state={t.state} class={t.id === selected ? 'selected' : ''}>
                <td>
                  <a href={`#/tasks/${encodeURIComponent(t.id)}`}>{t.name}</a>
                </td>
                <td>
                  <span class={`ts ts-${t.state}`}>{t.state}</span>
                </td>
                <td class="mono">{t.proplet_id ?? '—'}</td>
                <td title={t.created_at}>{ago(t.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {data && data.tasks.length === 0 && <p class="muted">No tasks{filters.state || filters.label || filters.proplet ? ' match these filters' : ' yet'}.</p>}
        <nav class="pager" aria-label="Pages">
          <button type="button" disabled={page === 0} onClick={() => setTrail(trail.slice(0, -1))}>
            Newer
          </button>
          <span>
            page {page + 1}
            {data?.total !== undefined ? ` of ${Math.max(1, Math.ceil(data.total / PAGE))} (${data.total} tasks)` : ''}
          </span>
          <button type="button" disabled={!data?.next} onClick={() => data?.next && setTrail([...trail, data.next])}>
            Older
          </button>
        </nav>
      </div>
      <div class="pane">
        {creating ? (
          <CreateTask
            onCancel={() => setCreating(false)}
            onCreated={(t) => {
              setCreating(false);
              setReload((n) => n + 1);
              location.hash = `#/tasks/${encodeURIComponent(t.id)}`;
            }}
          />
        ) : selected ? (
          <TaskDetail id={selected} />
        ) : (
          <p class="muted">Select a task to see its timeline, output and actions, or create one.</p>
        )}
      </div>
    </section>
  );
}

function TaskDetail({ id }: { id: string }) {
  const [t, setT] = useState<Task | undefined>();
  const [error, setError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  const events = useSignal(taskEvents);
  const resync = useSignal(resyncs);
  const load = () =>
    api<Task>(`/tasks/${encodeURIComponent(id)}`).then(
      (x) => (setT(x), setError(undefined)),
      (e: ApiError) => setError(e.message),
    );
  useEffect(() => {
    setT(undefined);
    void load();
  }, [id, resync]);
  useEffect(() => {
    if (events.changed.some((x) => x.id === id)) void load();
    if (events.deleted.includes(id)) setError(`task ${id} was deleted`);
  }, [events]);

  const act = async (what: 'start' | 'stop' | 'delete') => {
    if (what === 'delete' && !confirm(`Delete task ${t?.name ?? id}?`)) return;
    setBusy(true);
    try {
      if (what === 'delete') {
        await api(`/tasks/${encodeURIComponent(id)}`, { method: 'DELETE' });
        location.hash = '#/tasks';
      } else {
        setT(await postJson<Task>(`/tasks/${encodeURIComponent(id)}/${what}`, {}));
        setError(undefined);
      }
    } catch (e) {
      setError((e as Error).message);
    } finally {
      setBusy(false);
    }
  };

  if (!t) return error ? <p class="error" role="alert">{error}</p> : <p class="muted">loading…</p>;
  const running = ['Scheduled', 'Running'].includes(t.state);
  return (
    <article aria-labelledby="task-h" id="task-detail" data-state={t.state}>
      <h3 id="task-h">
        {t.name} <span class={`ts ts-${t.state}`} id="task-state">{t.state}</span>
      </h3>
      <div class="toolbar">
        <button type="button" id="task-start" disabled={busy || running} onClick={() => act('start')}>
          Start
        </button>
        <button type="button" id="task-stop" disabled={busy || !running} onClick={() => act('stop')}>
          Stop
        </button>
        <button type="button" id="task-delete" class="danger" disabled={busy} onClick={() => act('delete')}>
          Delete
        </button>
      </div>
      {error && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      <dl>
        <dt>id</dt>
        <dd class="mono">{t.id}</dd>
        <dt>module</dt>
        <dd class="mono">{t.image_url ?? t.module_digest ?? '—'}</dd>
        <dt>proplet</dt>
        <dd class="mono">{t.proplet_id ?? (t.pinned_proplet_id ? `${t.pinned_proplet_id} (pinned)` : '—')}</dd>
        {t.pending_reason && (
          <>
            <dt>pending because</dt>
            <dd>{t.pending_reason}</dd>
          </>
        )}
        <dt>inputs</dt>
        <dd class="mono">{JSON.stringify(t.inputs)}</dd>
        {t.cli_args.length > 0 && (
          <>
            <dt>arguments</dt>
            <dd class="mono">{t.cli_args.join(' ')}</dd>
          </>
        )}
        {Object.keys(t.env).length > 0 && (
          <>
            <dt>env</dt>
            <dd class="mono">{Object.entries(t.env).map(([k, v]) => `${k}=${v}`).join(' ')}</dd>
          </>
        )}
        {t.error && (
          <>
            <dt>error</dt>
            <dd class="error" id="task-error">
              {t.error}
            </dd>
          </>
        )}
      </dl>
      {t.result && (
        <section aria-label="Result">
          <h4>Result</h4>
          {t.result.results !== undefined && (
            <pre id="task-results" class="out">
              {JSON.stringify(t.result.results)}
            </pre>
          )}
          <p class="muted">
            exit code {t.result.exit_code ?? '—'}
            {t.result.duration_ms !== undefined ? `, ${Math.round(t.result.duration_ms)} ms` : ''} on {t.result.proplet_id} (attempt {t.result.attempt})
          </p>
          <h5>stdout</h5>
          <pre id="task-stdout" class="out">
            {t.result.stdout || '(empty)'}
          </pre>
          {t.result.stderr && (
            <>
              <h5>stderr</h5>
              <pre id="task-stderr" class="out err">
                {t.result.stderr}
              </pre>
            </>
          )}
        </section>
      )}
      <h4>Timeline</h4>
      <ol class="timeline" id="task-timeline">
        {t.history.map((h, i) => (
          <li key={i}>
            <time dateTime={h.at}>{new Date(h.at).toLocaleTimeString()}</time> <span class={`ts ts-${h.state}`}>{h.state}</span>
            {h.proplet_id && <span class="mono"> on {h.proplet_id}</span>}
            {h.attempt ? ` (attempt ${h.attempt})` : ''}
            {h.reason && <span class="muted"> — {h.reason}</span>}
          </li>
        ))}
      </ol>
      {t.attempts.length > 0 && (
        <>
          <h4>Attempts</h4>
          <table>
            <thead>
              <tr>
                <th scope="col">#</th>
                <th scope="col">proplet</th>
                <th scope="col">started</th>
                <th scope="col">ended</th>
                <th scope="col">outcome</th>
              </tr>
            </thead>
            <tbody>
              {t.attempts.map((a) => (
                <tr key={a.attempt}>
                  <td>{a.attempt}</td>
                  <td class="mono">{a.proplet_id}</td>
                  <td>{new Date(a.started_at).toLocaleTimeString()}</td>
                  <td>{a.ended_at ? new Date(a.ended_at).toLocaleTimeString() : '—'}</td>
                  <td>
                    {a.outcome ?? 'running'}
                    {a.error ? `: ${a.error}` : ''}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </>
      )}
    </article>
  );
}
