// Live wire: every message the control plane sends and receives, decoded (CBOR
// too), as `propeller watch` shows it; filtered by proplet and topic.

import { useMemo, useState } from 'preact/hooks';
import { useSignal } from '../signal.ts';
import { wire, wireDropped, wireVersion } from '../state.ts';

const SHOW = 300;

export function Wire() {
  const version = useSignal(wireVersion);
  const dropped = useSignal(wireDropped);
  const [proplet, setProplet] = useState('');
  const [topic, setTopic] = useState('');
  const [paused, setPaused] = useState<number | undefined>();
  const lines = useMemo(() => {
    const src = paused === undefined ? wire : wire.slice(0, paused);
    const p = proplet.trim();
    const t = topic.trim();
    const out = [];
    for (let i = src.length - 1; i >= 0 && out.length < SHOW; i--) {
      const l = src[i]!;
      if (p && !(l.proplet_id ?? '').includes(p)) continue;
      if (t && !l.topic.includes(t) && !(l.kind ?? '').includes(t)) continue;
      out.push(l);
    }
    return out;
  }, [version, proplet, topic, paused]);
  return (
    <section aria-labelledby="wire-h">
      <h2 id="wire-h">Live wire</h2>
      <form class="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <label>
          Proplet
          <input id="wire-proplet" type="search" value={proplet} onInput={(e) => setProplet((e.target as HTMLInputElement).value)} />
        </label>
        <label>
          Topic or kind
          <input id="wire-topic" type="search" value={topic} placeholder="alive, results, fl/…" onInput={(e) => setTopic((e.target as HTMLInputElement).value)} />
        </label>
        <button type="button" aria-pressed={paused !== undefined} onClick={() => setPaused(paused === undefined ? wire.length : undefined)}>
          {paused === undefined ? 'Pause' : 'Resume'}
        </button>
        <span class="muted" aria-live="polite">
          {lines.length} shown of the last {wire.length}
          {dropped ? `; ${dropped} not sent (too many at once)` : ''}
        </span>
      </form>
      <ol class="wire" id="wire-lines" aria-label="Messages, newest first">
        {lines.map((l, i) => (
          <li key={`${l.t}-${i}`} data-kind={l.kind ?? ''} data-proplet={l.proplet_id ?? ''}>
            <div class="wire-head">
              <time dateTime={l.t}>{l.t.slice(11, 23)}</time>
              <span class={`dir dir-${l.dir}`}>{l.dir === 'in' ? '→ cp' : 'cp →'}</span>
              <span class="kind">{l.kind ?? '?'}</span>
              <span class="mono">{l.proplet_id ?? ''}</span>
              <span class="muted">
                {l.encoding}, {l.bytes} B
              </span>
              <span class="mono muted ellipsis">{l.topic}</span>
            </div>
            <pre class="mono payload">{JSON.stringify(l.payload)}</pre>
          </li>
        ))}
      </ol>
    </section>
  );
}
