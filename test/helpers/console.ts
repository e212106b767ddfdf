// The web console against a real stack: the embedded broker, a control plane
// serving console/dist, a local node proplet and simulated MCU devices, and
// Debian's chromium driven headless by playwright-core. Used by
// test/console.test.ts and scripts/console-screenshots.ts.

import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser } from 'playwright-core';
import { buildConsole, DIST, stale } from '../../console/build.ts';
import type { HealthConfig } from '../../control-plane/config.ts';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../../examples/build.ts';
import { startFleet, type Fleet } from '../../proplet-mcu/index.ts';
import { scope, startStack, until, type Stack } from './stack.ts';

export const CHROMIUM = '/usr/bin/chromium';
// TOOLCHAIN.md: without the networking flags chromium tries to reach outside hosts and stalls
const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'];

export const haveChromium = (): boolean => existsSync(CHROMIUM);

/** Headless chromium with a fresh profile (playwright makes a temporary user-data-dir per launch). */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
}

export async function ensureConsoleBuilt(): Promise<string> {
  if (stale()) await buildConsole();
  return DIST;
}

export interface ConsoleStack {
  stack: Stack;
  fleet: Fleet;
  url: string;
  close(): Promise<void>;
}

/** A stack serving the console, with node proplet `node-1` and `devices` MCU devices `mcu-001`...; resolves when all are alive. */
export async function startConsoleStack(o: { devices: number; health?: Partial<HealthConfig>; token?: string }): Promise<ConsoleStack> {
  const staticDir = await ensureConsoleBuilt();
  await buildExamples();
  const stack = await startStack({
    health: { checkIntervalMs: 100, offlineThresholdMs: 3000, failureThresholdMs: 120_000, ...o.health },
    cp: { http: { port: 0, staticDir, ...(o.token ? { token: o.token } : {}) } },
  });
  await stack.addProplet('node-1');
  const fleet = await startFleet({
    devices: o.devices,
    url: stack.broker.url,
    scope,
    credentials: (id) => stack.creds.issue(id, 'proplet'),
    idStyle: 'name',
    idPrefix: 'mcu-',
    heartbeatMs: 1000,
    device: { deviceType: 'esp32' },
  });
  await fleet.waitOnline();
  await until(() => [...stack.cp.registry.values()].filter((p) => p.state === 'alive').length === o.devices + 1, `${o.devices + 1} proplets alive`, 60_000);
  return {
    stack,
    fleet,
    url: stack.apiUrl,
    async close() {
      await fleet.stop();
      await stack.close();
    },
  };
}

export const exampleWasm = (name: string): Uint8Array => readFileSync(join(EXAMPLES_BUILD_DIR, `${name}.wasm`));
export const examplePath = (name: string): string => join(EXAMPLES_BUILD_DIR, `${name}.wasm`);
