// The web console in a real browser (Debian's chromium, headless) against a
// real control plane with a local node proplet and 200 simulated MCU devices:
// the fleet and its counts, a task created from the page, a daemon stopped, an
// FL job plotted round by round, a killed device going offline live, the
// event stream reconnecting, and the sign-in prompt on a wrong token. Every
// wait is on the page's own state (selectors), none on the clock.

import test from 'ava';
import { request } from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { tap } from '../control-plane/events.ts';
import { CONTENT_SECURITY_POLICY } from '../control-plane/static.ts';
import { CHROMIUM, ensureConsoleBuilt, examplePath, exampleWasm, haveChromium, launchBrowser, startConsoleStack, type ConsoleStack } from './helpers/console.ts';
import { startStack, until } from './helpers/stack.ts';

const DEVICES = 200;
const EXAMPLE = new URL('../examples/fl-logreg/', import.meta.url).pathname;
const skip = !haveChromium();
if (skip) console.log(`console tests skipped: ${CHROMIUM} is missing (Debian package chromium; .ci/run installs it)`);
const t = skip ? test.skip : test.serial;

let cs: ConsoleStack;
let browser: Browser;
const cleanup: (() => Promise<unknown> | unknown)[] = [];

test.before(async () => {
  if (skip) return;
  cs = await startConsoleStack({ devices: DEVICES });
  cleanup.push(() => cs.close());
  browser = await launchBrowser();
  cleanup.push(() => browser.close());
});
test.after.always(async () => {
  for (const f of cleanup.reverse()) await f();
});

async function open(tt: { teardown(f: () => unknown): void }, hash: string): Promise<Page> {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  // a bound for what never happens, not a time budget: a busy machine gets a minute
  page.setDefaultTimeout(60_000);
  tt.teardown(() => page.close());
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(`${cs.url}/${hash}`);
  (page as Page & { errors?: string[] }).errors = errors;
  await page.waitForSelector('#live-status[data-status="live"]');
  return page;
}

const errorsOf = (page: Page): string[] => (page as Page & { errors?: string[] }).errors ?? [];
const count = (page: Page, kind: string, what: string) => page.locator(`#fleet-counts [data-kind="${kind}"] [data-count="${what}"]`);

t('the page is served with caching headers and a strict CSP; the fleet lists every proplet with counts by kind and state', async (tt) => {
  const index = await fetch(`${cs.url}/`);
  tt.is(index.status, 200);
  tt.is(index.headers.get('cache-control'), 'no-cache');
  tt.is(index.headers.get('content-security-policy'), CONTENT_SECURITY_POLICY);
  const js = /src="(\/ui\/console-[A-Z0-9]{8}\.js)"/.exec(await index.text())?.[1];
  tt.truthy(js);
  const asset = await fetch(`${cs.url}${js}`);
  tt.is(asset.headers.get('cache-control'), 'public, max-age=31536000, immutable');
  tt.regex(asset.headers.get('content-type') ?? '', /javascript/);
  tt.is((await fetch(`${cs.url}/ui/..%2Fconsole.ts`)).status, 404);

  const page = await open(tt, '#/fleet');
  await count(page, 'all', 'all').filter({ hasText: String(DEVICES + 1) }).waitFor();
  tt.is(await count(page, 'mcu', 'alive').textContent(), `${DEVICES} alive`);
  tt.is(await count(page, 'node', 'alive').textContent(), '1 alive');
  // the list is virtualised: far fewer rows in the DOM than proplets
  const rows = await page.locator('#fleet-list [role="row"]').count();
  tt.true(rows > 5 && rows < 100, `${rows} rows rendered`);
  await page.fill('#fleet-search', 'mcu-042');
  await page.locator('#fleet-list [data-proplet="mcu-042"]').waitFor();
  tt.is(await page.locator('#fleet-list [role="row"]').count(), 1);
  // keyboard: focus the list, Enter opens the detail
  await page.focus('#fleet-list');
  await page.keyboard.press('Enter');
  await page.locator('#proplet-detail').filter({ hasText: 'esp32' }).waitFor();
  tt.deepEqual(errorsOf(page), [], 'no script errors and no CSP refusals');
});

t('a task created from the page (uploaded .wasm with inputs) reaches Completed with its output; bad input is refused next to its field', async (tt) => {
  const page = await open(tt, '#/tasks');
  await page.click('#new-task');
  // checked before sending
  await page.click('#create-submit');
  await page.locator('#err-name').waitFor();
  tt.regex((await page.locator('#err-name').textContent()) ?? '', /required/);
  // the API's own refusal, next to the field: a file that is not wasm
  const dir = mkdtempSync(join(tmpdir(), 'console-'));
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'notes.wasm'), 'not a module');
  await page.fill('#f-name', 'add');
  await page.setInputFiles('#f-source', join(dir, 'notes.wasm'));
  await page.click('#create-submit');
  await page.locator('#err-source').filter({ hasText: 'not a WebAssembly module' }).waitFor();
  await page.setInputFiles('#f-source', examplePath('add'));
  await page.fill('#f-inputs', '2, 3');
  // a selector the API refuses (more device types than it takes): its message under that field
  await page.fill('#f-device_types', Array.from({ length: 65 }, (_, i) => `type-${i}`).join(','));
  await page.click('#create-submit');
  await page.locator('#err-device_types').filter({ hasText: 'at most 64 strings' }).waitFor();
  tt.is(await page.locator('#f-device_types').getAttribute('aria-invalid'), 'true');
  await page.fill('#f-device_types', '');
  // a pin to a proplet that is not registered: refused by the API, not left waiting
  await page.fill('#f-proplet_id', 'no-such-proplet');
  await page.click('#create-submit');
  await page.locator('#err-proplet_id').filter({ hasText: 'no proplet "no-such-proplet" is registered' }).waitFor();
  tt.is((await cs.stack.api.listTasks({ proplet: 'no-such-proplet' })).tasks.length, 0, 'the refused forms created nothing');

  await page.fill('#f-proplet_id', 'node-1');
  await page.click('#create-submit');
  await page.locator('#task-detail[data-state="Completed"]').waitFor();
  tt.is((await page.locator('#task-results').textContent())?.trim(), '5');
  tt.true((await page.locator('#task-timeline li').count()) >= 3, 'timeline shows the transitions');
  await page.locator('#task-list [data-state="Completed"]').filter({ hasText: 'add' }).waitFor();
  // the refused create answered 400: the one console error expected here
  tt.deepEqual(errorsOf(page).filter((e) => !/status of 400/.test(e)), []);
});

t('a running daemon is stopped from the page', async (tt) => {
  const task = await cs.stack.api.createTask({ name: 'ticker', file: Buffer.from(exampleWasm('daemon')).toString('base64'), daemon: true, proplet_id: 'node-1' });
  await cs.stack.api.startTask(task.id);
  const page = await open(tt, `#/tasks/${task.id}`);
  await page.locator('#task-detail[data-state="Running"]').waitFor();
  await page.click('#task-stop');
  await page.locator('#task-detail[data-state="Stopped"]').waitFor();
  tt.is((await cs.stack.api.getTask(task.id)).state, 'Stopped');
});

t('the task list pages newest first and filters by state and by proplet (the API filters)', async (tt) => {
  const file = Buffer.from(exampleWasm('hello')).toString('base64');
  for (let i = 1; i <= 30; i++) await cs.stack.api.createTask({ name: `batch-${String(i).padStart(2, '0')}`, file, labels: { batch: 'paging' } });
  const page = await open(tt, '#/tasks');
  await page.fill('#task-filter-label', 'batch=paging');
  await page.click('#tasks-h ~ form button[type="submit"]');
  const names = page.locator('#task-list tbody tr td:first-child');
  await names.first().filter({ hasText: 'batch-30' }).waitFor();
  tt.is(await names.count(), 25);
  await page.click('button:text("Older")');
  await names.first().filter({ hasText: 'batch-05' }).waitFor();
  tt.deepEqual(await names.allTextContents(), ['batch-05', 'batch-04', 'batch-03', 'batch-02', 'batch-01']);
  await page.selectOption('#task-filter-state', 'Completed');
  await page.click('#tasks-h ~ form button[type="submit"]');
  await page.locator('#task-list + p.muted', { hasText: 'No tasks match' }).waitFor();

  // by proplet: the API filters (the page asks for it), so the answer holds however long the history
  await page.selectOption('#task-filter-state', '');
  await page.fill('#task-filter-label', '');
  await page.fill('#task-filter-proplet', 'node-1');
  const asked = page.waitForRequest((r) => new URL(r.url()).searchParams.get('proplet') === 'node-1');
  await page.click('#tasks-h ~ form button[type="submit"]');
  await asked;
  await names.first().filter({ hasText: 'ticker' }).waitFor();
  tt.deepEqual(await names.allTextContents(), ['ticker', 'add'], 'the tasks pinned to and run on node-1, none of the batch');
  // a value the API refuses: its own message on the page
  await page.fill('#task-filter-proplet', 'a/b');
  await page.click('#tasks-h ~ form button[type="submit"]');
  await page.locator('#task-list-error', { hasText: 'proplet: must be a proplet id' }).waitFor();
  tt.deepEqual(errorsOf(page).filter((e) => !/status of 400/.test(e)), []);
});

t('the FL example: rounds, one plotted point per round, checkpoints with digest and download link', async (tt) => {
  const page = await open(tt, '#/fl/console-fl');
  const api = cs.stack.api;
  const { ref } = await api.pushModel(JSON.parse(readFileSync(join(EXAMPLE, 'initial-model.json'), 'utf8')) as object);
  const { digest } = await api.pushModule(exampleWasm('fl-logreg'));
  const rounds = 3;
  await api.createFlJob({
    apiVersion: 'propeller.absmach.io/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name: 'console-fl' },
    spec: { experimentId: 'console-fl', modelRef: ref, taskWasmImage: digest, participants: [{ propletId: 'node-1' }, { propletId: 'mcu-001' }], kOfN: 1, timeoutSeconds: 30, rounds: { total: rounds, strategy: 'sequential' }, aggregator: { algorithm: 'fedavg' }, hyperparams: { learningRate: 0.5, epochs: 1 } },
  });
  await page.locator('#fl-job[data-phase="Completed"]').waitFor();
  await page.locator(`#fl-chart[data-points="${rounds}"]`).waitFor();
  tt.is(await page.locator('#fl-chart canvas').count(), 1, 'uPlot drew the chart');
  tt.is(await page.locator('#fl-chart-data tbody tr').count(), rounds);
  tt.is(await page.locator('#fl-rounds tbody tr[data-phase="Completed"]').count(), rounds);
  await page.locator('#fl-checkpoints tbody tr').nth(rounds - 1).waitFor();
  const href = await page.locator('#fl-checkpoints a', { hasText: 'JSON' }).first().getAttribute('href');
  tt.regex(href ?? '', /^\/models\/sha256:[0-9a-f]{64}\?format=json$/);
  tt.is((await fetch(`${cs.url}${href}`)).status, 200);
  tt.deepEqual(errorsOf(page), [], 'no script errors and no CSP refusals');
  // a deleted job leaves the page without a reload
  await api.deleteFlJob('console-fl');
  await page.locator('#fl-jobs [data-job="console-fl"]').waitFor({ state: 'detached' });
});

t('a killed device turns offline on the page without a reload, and the live wire shows decoded messages', async (tt) => {
  const page = await open(tt, '#/fleet');
  await page.fill('#fleet-search', 'mcu-007');
  await page.locator('#fleet-list [data-proplet="mcu-007"][data-state="alive"]').waitFor();
  const d = cs.fleet.devices.find((x) => x.profile.id === 'mcu-007')!;
  d.dropConnection();
  await d.close();
  await page.locator('#fleet-list [data-proplet="mcu-007"][data-state="offline"]').waitFor();
  await count(page, 'mcu', 'offline').filter({ hasText: '1 offline' }).waitFor();

  await page.click('a[href="#/wire"]');
  await page.fill('#wire-topic', 'alive');
  await page.locator('#wire-lines li[data-kind="proplet.alive"]').first().waitFor();
  const text = await page.locator('#wire-lines li[data-kind="proplet.alive"] .payload').first().textContent();
  tt.regex(text ?? '', /"proplet_id":"(mcu-\d+|node-1)"/, 'CBOR heartbeats are shown decoded');
});

t('a lost event stream reconnects by itself and says so', async (tt) => {
  const page = await open(tt, '#/fleet');
  cs.stack.cp.events.close();
  await page.waitForSelector('#live-status[data-status="reconnecting"]');
  tt.regex((await page.locator('#live-status').textContent()) ?? '', /reconnecting/);
  await page.waitForSelector('#live-status[data-status="live"]');
  tt.regex((await page.locator('#live-status').textContent()) ?? '', /reconnected/);
});

t('a slow client never holds the control plane: its frames are dropped past the bound, then a gap event says to re-fetch', async (tt) => {
  const bus = cs.stack.cp.events;
  const { port } = new URL(cs.url);
  const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => request({ host: '127.0.0.1', port, path: '/events?wire=1' }, resolve).on('error', reject).end());
  tt.is(res.statusCode, 200);
  res.pause();
  await until(() => bus.clientCount === 1, 'the pages of earlier tests closed their streams');
  const dropped = async () => (await cs.stack.cp.metrics.registry.getSingleMetric('propeller_events_dropped_total')!.get()).values.find((v) => v.labels.reason === 'slow_client')?.value ?? 0;
  const before = await dropped();
  const payload = new Uint8Array(4096).fill(7);
  // flush by hand: a tick's worth of wire at a time, until the unread client overflows
  while (bus.lagging === 0) {
    for (let i = 0; i < 500; i++) tap(cs.stack.cp.gateway, 'wire', 'in', 'm/propeller/c/control/messages/control/proplet/alive', payload);
    bus.flush();
  }
  let seen = '';
  res.setEncoding('utf8');
  res.on('data', (c: string) => (seen = (seen + c).slice(-100_000)));
  res.resume();
  await until(() => seen.includes('event: gap'), 'gap event after the client caught up', 60_000);
  res.destroy();
  tt.true((await dropped()) > before, 'the drops are counted');
});

t('a wrong token leads to the sign-in prompt, and the token is checked before it is used', async (tt) => {
  const s = await startStack({ token: 'right-token', cp: { http: { port: 0, staticDir: await ensureConsoleBuilt() } } });
  cleanup.push(() => s.close());
  const page = await browser.newPage();
  page.setDefaultTimeout(60_000);
  cleanup.push(() => page.close());
  // the page itself is open (it must load to say 'sign in'); the API and the event stream are not
  tt.is((await fetch(`${s.apiUrl}/`)).status, 200);
  tt.is((await fetch(`${s.apiUrl}/events`)).status, 401);
  await page.goto(`${s.apiUrl}/#/tasks`);
  await page.locator('#signin').waitFor();
  await page.fill('#token', 'wrong-token');
  await page.click('#signin-submit');
  await page.locator('#token-error').filter({ hasText: 'refused' }).waitFor();
  tt.is(await page.locator('#signin').count(), 1);

  // the right token: GET /login sets the session cookie and the console opens
  await page.fill('#token', 'right-token');
  await page.click('#signin-submit');
  await page.locator('#live-status[data-status="live"]').waitFor();
  await page.locator('#task-list').waitFor();
  tt.is(new URL(page.url()).hash, '#/tasks');
  const cookie = (await page.context().cookies()).find((c) => c.httpOnly);
  tt.truthy(cookie, 'an HttpOnly session cookie');
  tt.is(cookie?.sameSite, 'Strict');
  // the session ends (cookie gone) while the page is open: the stream fails and the prompt comes back
  await page.context().clearCookies();
  s.cp.events.close();
  await page.locator('#signin').waitFor();
});
