// Federated learning: jobs, a job's rounds (participants, updates accepted and
// refused and why, duration), loss and accuracy per round plotted with uPlot,
// and checkpoints with their digest and a download link.

import { useEffect, useRef, useState } from 'preact/hooks';
import uPlot from 'uplot';
import type { FlCheckpoint, FlRound } from '../api.ts';
import { useSignal } from '../signal.ts';
import { flCheckpoints, flJobs, flRounds, flVersion } from '../state.ts';

function roundsOf(job: string): FlRound[] {
  return [...flRounds.values()].filter((r) => r.spec.federatedJobRef?.name === job).sort((a, b) => (a.spec.round ?? 0) - (b.spec.round ?? 0) || a.metadata.creationTimestamp.localeCompare(b.metadata.creationTimestamp));
}

function duration(r: FlRound): string {
  if (!r.status.startTime) return '—';
  const end = r.status.endTime ? Date.parse(r.status.endTime) : Date.now();
  return `${((end - Date.parse(r.status.startTime)) / 1000).toFixed(1)} s`;
}

const fmt = (x: number | undefined) => (x === undefined ? '—' : x.toFixed(4));

export function FederatedLearning({ selected }: { selected?: string }) {
  useSignal(flVersion);
  const jobs = [...flJobs.values()].sort((a, b) => b.metadata.creationTimestamp.localeCompare(a.metadata.creationTimestamp));
  const job = selected ?? jobs[0]?.metadata.name;
  const j = job ? flJobs.get(job) : undefined;
  return (
    <section aria-labelledby="fl-h" class="split">
      <div class="pane narrow">
        <h2 id="fl-h">Federated learning</h2>
        {jobs.length === 0 && (
          <p class="muted">
            No jobs yet. Run one with <code>npx propeller fl run examples/fl-logreg/job.yaml</code>.
          </p>
        )}
        <ul class="jobs" id="fl-jobs">
          {jobs.map((x) => (
            <li key={x.metadata.name} data-job={x.metadata.name}>
              <a href={`#/fl/${encodeURIComponent(x.metadata.name)}`} aria-current={x.metadata.name === job ? 'true' : undefined}>
                {x.metadata.name}
              </a>{' '}
              <span class={`ts ts-${x.status.phase}`}>{x.status.phase}</span>
              <div class="muted">
                round {x.status.completedRounds}/{x.spec.rounds?.total ?? '?'} · {x.spec.aggregator?.algorithm ?? 'fedavg'}
              </div>
            </li>
          ))}
        </ul>
      </div>
      <div class="pane">{j && <JobDetail name={j.metadata.name} />}</div>
    </section>
  );
}

function JobDetail({ name }: { name: string }) {
  const j = flJobs.get(name)!;
  const rounds = roundsOf(name);
  const completed = rounds.filter((r) => r.status.phase === 'Completed' && r.status.metrics);
  const cps = [...flCheckpoints.values()].filter((c) => c.spec.federatedJobRef?.name === name).sort((a, b) => a.spec.metadata.round - b.spec.metadata.round);
  const [open, setOpen] = useState<string | undefined>();
  return (
    <article aria-labelledby="job-h" id="fl-job" data-job={name} data-phase={j.status.phase}>
      <h3 id="job-h">
        {name} <span class={`ts ts-${j.status.phase}`}>{j.status.phase}</span>
      </h3>
      {j.status.message && <p class="muted">{j.status.message}</p>}
      <Chart rounds={completed} />
      <h4>Rounds</h4>
      <table id="fl-rounds">
        <thead>
          <tr>
            <th scope="col">round</th>
            <th scope="col">phase</th>
            <th scope="col">participants</th>
            <th scope="col">updates</th>
            <th scope="col">refused</th>
            <th scope="col">loss</th>
            <th scope="col">accuracy</th>
            <th scope="col">duration</th>
          </tr>
        </thead>
        <tbody>
          {rounds.map((r) => {
            const ref = r.status.refused;
            const refused = ref.late + ref.notParticipant + ref.stale + ref.invalid;
            const isOpen = open === r.metadata.name;
            return (
              <>
                <tr key={r.metadata.name} data-round={r.spec.round} data-phase={r.status.phase}>
                  <td>
                    <button type="button" class="link" aria-expanded={isOpen} onClick={() => setOpen(isOpen ? undefined : r.metadata.name)}>
                      {r.spec.round ?? r.metadata.name}
                    </button>
                  </td>
                  <td>
                    <span class={`ts ts-${r.status.phase}`}>{r.status.phase}</span>
                  </td>
                  <td>{r.status.participants.length}</td>
                  <td>
                    {r.status.updatesReceived}/{r.status.updatesRequired} accepted
                  </td>
                  <td title={`late ${ref.late}, not a participant ${ref.notParticipant}, stale ${ref.stale}, invalid ${ref.invalid}`}>
                    {refused ? `${refused} (${Object.entries(ref).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(', ')})` : '0'}
                  </td>
                  <td>{fmt(r.status.metrics?.loss)}</td>
                  <td>{fmt(r.status.metrics?.accuracy)}</td>
                  <td>{duration(r)}</td>
                </tr>
                {isOpen && (
                  <tr key={`${r.metadata.name}-p`} class="sub">
                    <td colSpan={8}>
                      <ul>
                        {r.status.participants.map((p) => (
                          <li key={p.propletId}>
                            <span class="mono">{p.propletId}</span> <span class={`ts ts-${p.phase}`}>{p.phase}</span>
                            {p.numSamples !== undefined && ` · ${p.numSamples} samples`}
                            {p.metrics && ` · ${Object.entries(p.metrics).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(', ')}`}
                            {p.reason && <span class="muted"> — {p.reason}</span>}
                          </li>
                        ))}
                      </ul>
                      {r.status.message && <p class="muted">{r.status.message}</p>}
                    </td>
                  </tr>
                )}
              </>
            );
          })}
        </tbody>
      </table>
      <h4>Checkpoints</h4>
      <table id="fl-checkpoints">
        <thead>
          <tr>
            <th scope="col">round</th>
            <th scope="col">phase</th>
            <th scope="col">digest</th>
            <th scope="col">size</th>
            <th scope="col">model</th>
          </tr>
        </thead>
        <tbody>
          {cps.map((c) => (
            <CheckpointRow key={c.metadata.name} c={c} />
          ))}
        </tbody>
      </table>
    </article>
  );
}

function CheckpointRow({ c }: { c: FlCheckpoint }) {
  const ref = c.spec.modelRef;
  return (
    <tr data-checkpoint={c.metadata.name}>
      <td>{c.spec.metadata.round}</td>
      <td>
        <span class={`ts ts-${c.status.phase}`}>{c.status.phase}</span>
      </td>
      <td class="mono" title={ref}>
        {ref.slice(0, 19)}…
      </td>
      <td>{c.status.sizeBytes !== undefined ? `${c.status.sizeBytes} B` : '—'}</td>
      <td>
        {c.status.phase === 'Ready' ? (
          <>
            <a href={`/models/${ref}`} download={`${c.metadata.name}.cbor`}>
              CBOR
            </a>{' '}
            ·{' '}
            <a href={`/models/${ref}?format=json`} download={`${c.metadata.name}.json`}>
              JSON
            </a>
          </>
        ) : (
          '—'
        )}
      </td>
    </tr>
  );
}

/** Loss and accuracy by round (two scales), with the same numbers as a table for screen readers. */
function Chart({ rounds }: { rounds: FlRound[] }) {
  const el = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot>();
  const xs = rounds.map((r) => r.spec.round ?? 0);
  const loss = rounds.map((r) => r.status.metrics?.loss ?? null);
  const acc = rounds.map((r) => r.status.metrics?.accuracy ?? null);
  useEffect(() => {
    const width = Math.max(320, (el.current?.clientWidth ?? 640) - 8);
    const data: uPlot.AlignedData = [xs, loss, acc];
    if (!plot.current) {
      plot.current = new uPlot(
        {
          width,
          height: 260,
          scales: { x: { time: false }, loss: { auto: true }, acc: { range: [0, 1] } },
          axes: [
            { label: 'round', stroke: '#333', incrs: [1, 2, 5, 10, 20, 50, 100] },
            { scale: 'loss', label: 'loss', stroke: '#b3261e' },
            { scale: 'acc', label: 'accuracy', side: 1, stroke: '#1a5fb4', grid: { show: false } },
          ],
          series: [
            { label: 'round' },
            { label: 'loss', scale: 'loss', stroke: '#b3261e', width: 2, points: { show: true, size: 7 } },
            { label: 'accuracy', scale: 'acc', stroke: '#1a5fb4', width: 2, points: { show: true, size: 7 } },
          ],
        },
        data,
        el.current!,
      );
    } else plot.current.setData(data);
  }, [JSON.stringify(xs), JSON.stringify(loss), JSON.stringify(acc)]);
  useEffect(() => {
    const box = el.current!;
    const ro = new ResizeObserver(() => plot.current?.setSize({ width: Math.max(320, box.clientWidth - 8), height: 260 }));
    ro.observe(box);
    return () => {
      ro.disconnect();
      plot.current?.destroy();
    };
  }, []);
  return (
    <figure class="chart" id="fl-chart" data-points={xs.length}>
      <div ref={el} />
      <figcaption>Loss and accuracy of the aggregated model, per round</figcaption>
      <table class="sr-only" id="fl-chart-data">
        <caption>Loss and accuracy per round</caption>
        <thead>
          <tr>
            <th scope="col">round</th>
            <th scope="col">loss</th>
            <th scope="col">accuracy</th>
          </tr>
        </thead>
        <tbody>
          {rounds.map((r, i) => (
            <tr key={r.metadata.name}>
              <td>{xs[i]}</td>
              <td>{fmt(loss[i] ?? undefined)}</td>
              <td>{fmt(acc[i] ?? undefined)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </figure>
  );
}
