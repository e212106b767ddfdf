// The console's fleet view at 10,000 proplets in headless chromium: first
// render (page load, paged fetch, counts and list), a heartbeat storm pushed
// over /events (main-thread long-task time), search and scroll. Baseline, in
// the same browser and run: the same proplets as a plain, non-virtualised
// table built at once (what the list would cost without virtualisation).
//
//   npm run bench -- console [--proplets 10000] [--storm 5] [--rate 10000]

import { parseArgs } from 'node:util';
import { ensureConsoleBuilt, haveChromium, launchBrowser } from '../test/helpers/console.ts';
import { startStack } from '../test/helpers/stack.ts';
import { printTable } from './stats.ts';

declare const window: { __lt: number; PerformanceObserver: new (f: (l: { getEntries(): { duration: number }[] }) => void) => { observe(o: object): void } };
declare const document: { body: { innerHTML: string } };

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { proplets: { type: 'string', default: '10000' }, storm: { type: 'string', default: '5' }, rate: { type: 'string', default: '10000' } } });
  const N = Number(values.proplets);
  const seconds = Number(values.storm);
  const rate = Number(values.rate);
  if (!haveChromium()) throw new Error('bench console: /usr/bin/chromium is missing (apt-get install chromium)');
  const s = await startStack({ health: { checkIntervalMs: 1000, offlineThresholdMs: 600_000, failureThresholdMs: 1_200_000 }, cp: { http: { port: 0, staticDir: await ensureConsoleBuilt() } } });
  const id = (i: number) => `dev-${String(i).padStart(6, '0')}`;
  for (let i = 0; i < N; i++) s.cp.registry.register({ proplet_id: id(i), device_type: 'esp32', encoding: 'cbor', labels: { zone: `z${i % 7}` } } as never, 'cbor');
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage({ viewport: { width: 1360, height: 820 } });
    // baseline: every row in the DOM at once, from the same JSON
    await page.goto(`${s.apiUrl}/health`);
    const json = JSON.stringify(s.cp.registry.list());
    const baseline = await page.evaluate((text) => {
      const t0 = performance.now();
      const rows = (JSON.parse(text) as { id: string; device_type: string; state: string; last_seen: string; running_tasks: number }[])
        .map((p) => `<tr><td>${p.id}</td><td>${p.device_type}</td><td>${p.state}</td><td>${p.last_seen}</td><td>${p.running_tasks}</td></tr>`)
        .join('');
      document.body.innerHTML = `<table>${rows}</table>`;
      (document.body as unknown as { offsetHeight: number }).offsetHeight; // force layout
      return performance.now() - t0;
    }, json);

    let t0 = performance.now();
    await page.goto(`${s.apiUrl}/#/fleet`);
    await page.locator('#fleet-counts [data-kind="all"] [data-count="all"]', { hasText: String(N) }).waitFor({ timeout: 120_000 });
    const first = performance.now() - t0;
    await page.waitForSelector('#live-status[data-status="live"]');
    await page.evaluate(() => {
      window.__lt = 0;
      new window.PerformanceObserver((l) => {
        for (const e of l.getEntries()) window.__lt += e.duration;
      }).observe({ type: 'longtask' });
    });
    const perTick = Math.max(1, Math.round(rate / 10));
    t0 = performance.now();
    for (let tick = 0, next = 0; tick < seconds * 10; tick++) {
      for (let k = 0; k < perTick; k++, next = (next + 1) % N) s.cp.registry.alive({ proplet_id: id(next), status: 'alive', running_tasks: tick % 3 } as never);
      await new Promise((r) => setTimeout(r, 100));
    }
    s.cp.registry.alive({ proplet_id: id(0), status: 'alive', running_tasks: 7 } as never);
    await page.locator(`#fleet-list [data-proplet="${id(0)}"] [role=gridcell]:nth-child(5)`, { hasText: '7' }).waitFor({ timeout: 120_000 });
    const storm = performance.now() - t0;
    const longTasks = await page.evaluate(() => window.__lt);
    t0 = performance.now();
    await page.fill('#fleet-search', id(4242));
    await page.locator(`#fleet-list [data-proplet="${id(4242)}"]`).waitFor();
    const search = performance.now() - t0;
    await page.fill('#fleet-search', '');
    t0 = performance.now();
    await page.locator('#fleet-list').evaluate((el, y) => (el.scrollTop = y), Math.floor(N * 0.6) * 34);
    await page.locator(`#fleet-list [data-proplet="${id(Math.floor(N * 0.6))}"]`).waitFor();
    const scroll = performance.now() - t0;
    const rows = await page.locator('#fleet-list [role=row]').count();
    console.log(`console fleet view, ${N} proplets, heartbeats ${rate}/s for ${seconds} s (load ${(await import('node:os')).loadavg().map((x) => x.toFixed(1)).join(' ')})`);
    printTable(
      ['figure', 'console', 'baseline (plain table, all rows)', 'goal'],
      [
        ['first render, ms', first, baseline, '< 3000'],
        ['main-thread long tasks during the storm, % of wall time', (100 * longTasks) / storm, '—', '< 50'],
        ['search to result, ms', search, '—', '< 300'],
        ['scroll to row 60%, ms', scroll, '—', '< 300'],
        ['rows in the DOM', rows, N, `< 100`],
      ],
    );
  } finally {
    await browser.close();
    await s.close();
  }
}
