// The console's shell: navigation between the four views (hash routes, so the
// server serves one page), the live-updates banner, and the sign-in prompt
// that replaces everything when the API answers 401.

import { render } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { onUnauthorized } from './api.ts';
import { useSignal } from './signal.ts';
import { resync, stream } from './state.ts';
import { streamState } from './stream.ts';
import { Fleet } from './views/fleet.tsx';
import { FederatedLearning } from './views/fl.tsx';
import { SignIn } from './views/signin.tsx';
import { Tasks } from './views/tasks.tsx';
import { Wire } from './views/wire.tsx';

const VIEWS = [
  { id: 'fleet', label: 'Fleet', key: '1' },
  { id: 'tasks', label: 'Tasks', key: '2' },
  { id: 'fl', label: 'Federated learning', key: '3' },
  { id: 'wire', label: 'Live wire', key: '4' },
] as const;
type ViewId = (typeof VIEWS)[number]['id'];

function route(): { view: ViewId; arg?: string } {
  const [view, ...rest] = location.hash.replace(/^#\/?/, '').split('/');
  const v = VIEWS.find((x) => x.id === view)?.id ?? 'fleet';
  return { view: v, ...(rest.length ? { arg: decodeURIComponent(rest.join('/')) } : {}) };
}

export function navigate(hash: string): void {
  location.hash = hash;
}

function LiveBanner() {
  const s = useSignal(streamState);
  const [shown, setShown] = useState(false);
  useEffect(() => {
    if (s.status !== 'live' || !s.recovered) return;
    setShown(true);
    const t = setTimeout(() => setShown(false), 4000);
    return () => clearTimeout(t);
  }, [s]);
  let text = '';
  let cls = 'live-ok';
  if (s.status === 'reconnecting') {
    text = `Live updates lost — reconnecting (attempt ${s.attempts})…`;
    cls = 'live-lost';
  } else if (s.status === 'live' && shown) text = 'Live updates reconnected; the view was refreshed.';
  else if (s.status === 'connecting') text = 'Connecting to live updates…';
  return (
    <div id="live-status" class={`live ${cls}`} role="status" aria-live="polite" data-status={s.status}>
      {text}
    </div>
  );
}

function App() {
  const [r, setR] = useState(route());
  const [signIn, setSignIn] = useState(false);
  useEffect(() => {
    const onHash = () => setR(route());
    addEventListener('hashchange', onHash);
    const off = onUnauthorized(() => setSignIn(true));
    const onKey = (e: KeyboardEvent) => {
      // Alt+1..4 switch views from anywhere (plain digits would steal typing in fields)
      if (!e.altKey || e.ctrlKey || e.metaKey) return;
      const v = VIEWS.find((x) => x.key === e.key);
      if (v) {
        e.preventDefault();
        navigate(`#/${v.id}`);
      }
    };
    addEventListener('keydown', onKey);
    resync();
    return () => {
      removeEventListener('hashchange', onHash);
      removeEventListener('keydown', onKey);
      off();
    };
  }, []);
  useEffect(() => {
    if (!signIn) stream.open(r.view === 'wire');
    else stream.close();
  }, [r.view, signIn]);
  if (signIn) return <SignIn />;
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header>
        <h1>Propeller</h1>
        <nav aria-label="Views">
          <ul>
            {VIEWS.map((v) => (
              <li key={v.id}>
                <a href={`#/${v.id}`} aria-current={r.view === v.id ? 'page' : undefined} title={`Alt+${v.key}`}>
                  {v.label}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <LiveBanner />
      </header>
      <main id="main" tabIndex={-1}>
        {r.view === 'fleet' && <Fleet />}
        {r.view === 'tasks' && <Tasks selected={r.arg} />}
        {r.view === 'fl' && <FederatedLearning selected={r.arg} />}
        {r.view === 'wire' && <Wire />}
      </main>
    </>
  );
}

render(<App />, document.getElementById('app')!);
