// Durations, env health settings and the propeller-config YAML file.

import test from 'ava';
import { ConfigError, healthFromEnv, parseBytes, parseCpu, parseDuration } from '../control-plane/config.ts';
import { parseConfig } from '../control-plane/config-file.ts';

test('durations accept seconds, units and combinations', (t) => {
  t.is(parseDuration('x', '10s'), 10_000);
  t.is(parseDuration('x', '500ms'), 500);
  t.is(parseDuration('x', '1m30s'), 90_000);
  t.is(parseDuration('x', '2h'), 7_200_000);
  t.is(parseDuration('x', '15'), 15_000);
  t.is(parseDuration('x', 1.5), 1500);
  for (const bad of ['', 'soon', '10 s', '-1s', '1d', 's']) t.throws(() => parseDuration('x', bad), { instanceOf: ConfigError }, bad);
});

test('sizes and cpu quantities', (t) => {
  t.is(parseBytes('m', '64Mi'), 64 * 1024 * 1024);
  t.is(parseBytes('m', '1G'), 1e9);
  t.is(parseBytes('m', '4096'), 4096);
  t.is(parseCpu('c', '100m'), 100);
  t.is(parseCpu('c', '2'), 2000);
  t.is(parseCpu('c', '0.5'), 500);
  t.throws(() => parseBytes('m', 'lots'), { instanceOf: ConfigError });
  t.throws(() => parseCpu('c', '1 core'), { instanceOf: ConfigError });
});

test('health settings from env, checked against each other', (t) => {
  t.deepEqual(healthFromEnv({ HEALTH_CHECK_INTERVAL: '30s', OFFLINE_THRESHOLD: '2m', FAILURE_THRESHOLD: '10m' }), {
    checkIntervalMs: 30_000,
    offlineThresholdMs: 120_000,
    failureThresholdMs: 600_000,
  });
  t.deepEqual(healthFromEnv({}), { checkIntervalMs: 60_000, offlineThresholdMs: 300_000, failureThresholdMs: 900_000 });
  t.throws(() => healthFromEnv({ OFFLINE_THRESHOLD: '5m', FAILURE_THRESHOLD: '1m' }), { message: /must not be shorter/ });
  t.throws(() => healthFromEnv({ OFFLINE_THRESHOLD: 'soon' }), { message: /OFFLINE_THRESHOLD/ });
});

const SEED_CONFIGMAP = `apiVersion: v1
kind: ConfigMap
metadata:
  name: propeller-config
  namespace: propeller-system
data:
  config.yaml: |
    scheduler:
      type: "hybrid"
      hybrid:
        preferK8sForCompute: true
        preferExternalForEdge: true
        computeKeywords: ["ml", "ai", "compute", "batch"]
        edgeKeywords: ["sensor", "iot", "edge", "device"]
        loadBalancingRatio: 0.5
    healthMonitor:
      checkInterval: "1m"
      offlineThreshold: "5m"
      failureThreshold: "15m"
      autoEvacuateTasks: true
`;

test("the seed's propeller-config ConfigMap parses as is", (t) => {
  const c = parseConfig(SEED_CONFIGMAP);
  t.is(c.scheduler?.type, 'hybrid');
  t.deepEqual(c.scheduler?.hybrid, {
    preferK8sForCompute: true,
    preferExternalForEdge: true,
    computeKeywords: ['ml', 'ai', 'compute', 'batch'],
    edgeKeywords: ['sensor', 'iot', 'edge', 'device'],
    loadBalancingRatio: 0.5,
  });
  t.deepEqual(c.health, { checkIntervalMs: 60_000, offlineThresholdMs: 300_000, failureThresholdMs: 900_000 });
  t.true(c.autoEvacuateTasks);
  // its config.yaml alone is the same
  const inner = SEED_CONFIGMAP.split('config.yaml: |\n')[1]!.replace(/^ {4}/gm, '');
  t.deepEqual(parseConfig(inner), c);
});

test('bad config files are one clear error naming the setting', (t) => {
  const cases: [string, RegExp][] = [
    ['scheduler: [1]', /scheduler must be a mapping/],
    ['scheduler:\n  typo: x', /scheduler.typo: unknown setting/],
    ['scheduler:\n  hybrid:\n    loadBalancingRatio: 2', /loadBalancingRatio must be a number from 0 to 1/],
    ['healthMonitor:\n  offlineThreshold: soon', /healthMonitor.offlineThreshold/],
    ['healthMonitor:\n  autoEvacuateTasks: maybe', /autoEvacuateTasks must be true or false/],
    ['kind: ConfigMap\ndata: {}', /needs data."config.yaml"/],
    ['a: [', /not valid YAML/],
  ];
  for (const [text, re] of cases) t.throws(() => parseConfig(text, 'cfg.yaml'), { instanceOf: ConfigError, message: re }, text);
});
