// `npm run bench -- NAME [options]`: benchmarks that print figures and ratios
// against a baseline measured in the same run. Results go in docs/performance.md.

const BENCHES: Record<string, { summary: string; load: () => Promise<{ run(args: string[]): Promise<void> }> }> = {
  dispatch: { summary: 'tasks through the HTTP API to local proplets: latency and throughput', load: () => import('./dispatch.ts') },
  placement: { summary: 'scheduler decisions per CPU-second per algorithm at 1k, 10k, 100k proplets, 100,000 pending tasks', load: () => import('./placement.ts') },
  fleet: { summary: 'simulated MCU fleet: connect, heartbeats, task storm', load: () => import('./fleet.ts') },
  fedavg: { summary: 'streaming federated averaging of large updates: time and memory', load: () => import('./fedavg.ts') },
  'decode-worst': { summary: 'worst-case decode time of one proplet message at the protocol limits, and refusal of over-limit ones', load: () => import('./decode-worst.ts') },
  console: { summary: 'the web console at 10,000 proplets in chromium: first render, heartbeat storm, search, scroll', load: () => import('./console.ts') },
  store: { summary: 'task transitions/s and CPU per transition: old whole-document SQLite vs the SQLite and PostgreSQL stores', load: () => import('./store.ts') },
  retention: { summary: 'a per-second schedule over simulated hours: tasks held, heap, request cost, retention on vs off', load: () => import('./retention.ts') },
  'fl-records': { summary: 'FL jobs/rounds/checkpoints on a metrics scrape and an adapter poll: indexed vs parsing the table', load: () => import('./fl-records.ts') },
  broker: { summary: 'embedded broker vs Mosquitto: QoS 0/1 msg/s, fan-out, 10,000 connects, memory per connection', load: () => import('./broker.ts') },
  heartbeat: { summary: 'control-plane CPU and garbage per decoded heartbeat (Registry.alive) over 10,000 proplets', load: () => import('./heartbeat.ts') },
  startup: { summary: 'propeller --help, serve to /health, proplet RSS: compiled vs tsx', load: () => import('./startup.ts') },
  scale: { summary: 'embedded vs 1-3 replicas on Mosquitto + PostgreSQL: tasks/s, CPU-s per 1,000 tasks per process, projection per core; --fleet N: 20,000+ MCUs', load: () => import('./scale.ts') },
  'fl-round': { summary: 'FL rounds across 1,000 simulated MCU proplets with a tiny model: round latency', load: () => import('./fl-round.ts') },
};

const [name, ...args] = process.argv.slice(2);
if (!name || name === '--help' || name === '-h' || !BENCHES[name]) {
  process.stdout.write(`Usage: npm run bench -- NAME [options]\n\nBenchmarks:\n${Object.entries(BENCHES)
    .map(([k, b]) => `  ${k.padEnd(10)} ${b.summary}`)
    .join('\n')}\n`);
  process.exitCode = name && name !== '--help' && name !== '-h' ? 2 : 0;
} else {
  const b = await BENCHES[name]!.load();
  try {
    await b.run(args);
  } catch (e) {
    // a wrong option is the caller's slip: one line, not a stack trace
    if (!String((e as { code?: string }).code).startsWith('ERR_PARSE_ARGS')) throw e;
    process.stderr.write(`bench ${name}: ${(e as Error).message} (the options are in the header of bench/${name}.ts)\n`);
    process.exitCode = 2;
  }
}
