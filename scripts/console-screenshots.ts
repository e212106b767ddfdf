// Regenerates docs/console-*.png, one screenshot per console view, from a live
// stack: the embedded broker, a control plane, a node proplet and 200
// simulated MCU devices, a few tasks and the FL example's job.
//   npm run screenshots

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Page } from 'playwright-core';
import { exampleWasm, haveChromium, CHROMIUM, launchBrowser, startConsoleStack } from '../test/helpers/console.ts';

const DOCS = fileURLToPath(new URL('../docs/', import.meta.url));
const EXAMPLE = fileURLToPath(new URL('../examples/fl-logreg/', import.meta.url));

if (!haveChromium()) {
  console.error(`screenshots: ${CHROMIUM} is missing (apt-get install chromium)`);
  process.exit(1);
}
const cs = await startConsoleStack({ devices: 200 });
const browser = await launchBrowser();
try {
  const api = cs.stack.api;
  const b64 = (name: string) => Buffer.from(exampleWasm(name)).toString('base64');
  await api.createTask({ name: 'add', file: b64('add'), inputs: [2, 3] }, { start: true, waitMs: 10_000 });
  await api.createTask({ name: 'hello', file: b64('hello'), cli_args: ['world'], proplet_id: 'node-1' }, { start: true, waitMs: 10_000 });
  await api.createTask({ name: 'fib', file: b64('add'), inputs: [20] }, { start: true, waitMs: 10_000 });
  await api.createTask({ name: 'add-bad-input', file: b64('add'), inputs: ['two', 3] }, { start: true, waitMs: 10_000 });
  await api.createTask({ name: 'north-only', file: b64('hello'), proplet_selector: { match_labels: { zone: 'north' } } }, { start: true });
  const daemon = await api.createTask({ name: 'ticker', file: b64('daemon'), daemon: true, proplet_id: 'node-1' });
  await api.startTask(daemon.id);
  // a few devices lost, as a fleet at the edge has
  for (const d of cs.fleet.devices.slice(190, 194)) {
    d.dropConnection();
    await d.close();
  }
  const page: Page = await browser.newPage({ viewport: { width: 1360, height: 820 }, deviceScaleFactor: 1 });
  const shot = async (hash: string, ready: string, file: string) => {
    await page.goto(`${cs.url}/${hash}`);
    await page.waitForSelector('#live-status[data-status="live"]');
    await page.waitForSelector(ready);
    await page.screenshot({ path: join(DOCS, file) });
    console.log(`docs/${file}`);
  };
  await shot('#/fleet', '#fleet-counts [data-kind="mcu"] [data-count="offline"]:text("4 offline")', 'console-fleet.png');
  const tasks = await api.listTasks({ limit: 100 });
  const done = tasks.tasks.find((t) => t.name === 'hello')!;
  await shot(`#/tasks/${done.id}`, '#task-detail[data-state="Completed"]', 'console-tasks.png');
  // the FL job after the tasks view, whose list would otherwise be all its rounds' tasks
  const { ref } = await api.pushModel(JSON.parse(readFileSync(join(EXAMPLE, 'initial-model.json'), 'utf8')) as object);
  const { digest } = await api.pushModule(exampleWasm('fl-logreg'));
  await api.createFlJob({
    apiVersion: 'propeller.absmach.io/v1alpha1',
    kind: 'FederatedJob',
    metadata: { name: 'fl-logreg' },
    spec: { experimentId: 'fl-logreg-001', modelRef: ref, taskWasmImage: digest, participants: ['node-1', 'mcu-001', 'mcu-002'].map((propletId) => ({ propletId })), kOfN: 1, timeoutSeconds: 30, rounds: { total: 8, strategy: 'sequential' }, aggregator: { algorithm: 'fedavg' }, hyperparams: { learningRate: 0.5, epochs: 1 } },
  });
  await shot('#/fl/fl-logreg', '#fl-chart[data-points="8"]', 'console-fl.png');
  await shot('#/wire', '#wire-lines li[data-kind="proplet.alive"]', 'console-wire.png');
} finally {
  await browser.close();
  await cs.close();
}
