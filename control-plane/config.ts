// Durations and settings from env or flags, with the seed's names and defaults.

export class ConfigError extends Error {
  override name = 'ConfigError';
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses '10s', '1m30s', '500ms', '2h' or a bare number of seconds into milliseconds. */
export function parseDuration(what: string, v: string | number): number {
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) throw new ConfigError(`${what}: ${v} is not a duration`);
    return v * 1000;
  }
  const s = v.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s) * 1000;
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h)/gy;
  let total = 0;
  let m: RegExpExecArray | null;
  let end = 0;
  while ((m = re.exec(s))) {
    total += Number(m[1]) * UNITS[m[2]!]!;
    end = re.lastIndex;
  }
  if (end !== s.length || s.length === 0) {
    throw new ConfigError(`${what}: ${JSON.stringify(v)} is not a duration (use e.g. 500ms, 10s, 5m, 1h)`);
  }
  return total;
}

export interface HealthConfig {
  checkIntervalMs: number;
  offlineThresholdMs: number;
  failureThresholdMs: number;
}

/** Health settings from HEALTH_CHECK_INTERVAL, OFFLINE_THRESHOLD, FAILURE_THRESHOLD (seed defaults: 1m, 5m, 15m). */
export function healthFromEnv(env: NodeJS.ProcessEnv = process.env, defaults: Partial<HealthConfig> = {}): HealthConfig {
  const h: HealthConfig = {
    checkIntervalMs: env.HEALTH_CHECK_INTERVAL ? parseDuration('HEALTH_CHECK_INTERVAL', env.HEALTH_CHECK_INTERVAL) : defaults.checkIntervalMs ?? 60_000,
    offlineThresholdMs: env.OFFLINE_THRESHOLD ? parseDuration('OFFLINE_THRESHOLD', env.OFFLINE_THRESHOLD) : defaults.offlineThresholdMs ?? 300_000,
    failureThresholdMs: env.FAILURE_THRESHOLD ? parseDuration('FAILURE_THRESHOLD', env.FAILURE_THRESHOLD) : defaults.failureThresholdMs ?? 900_000,
  };
  validateHealth(h);
  return h;
}

export function validateHealth(h: HealthConfig): void {
  if (h.checkIntervalMs <= 0) throw new ConfigError('health check interval must be positive');
  if (h.offlineThresholdMs <= 0) throw new ConfigError('offline threshold must be positive');
  if (h.failureThresholdMs < h.offlineThresholdMs) {
    throw new ConfigError(`failure threshold (${h.failureThresholdMs} ms) must not be shorter than the offline threshold (${h.offlineThresholdMs} ms)`);
  }
}

/** Parses a size like '64Mi', '512M', '1Gi', '100m' of cpu is separate: see parseCpu. */
export function parseBytes(what: string, v: string | number): number {
  if (typeof v === 'number') return v;
  const m = /^(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|K|k|M|G|T|B)?$/.exec(v.trim());
  if (!m) throw new ConfigError(`${what}: ${JSON.stringify(v)} is not a size (use e.g. 65536, 64Ki, 128Mi, 1Gi)`);
  const mult: Record<string, number> = { B: 1, K: 1e3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 };
  return Math.round(Number(m[1]) * (m[2] ? mult[m[2]]! : 1));
}

/** Parses Kubernetes cpu quantities: '500m' = 500 millicores, '2' = 2000. */
export function parseCpu(what: string, v: string | number): number {
  if (typeof v === 'number') return Math.round(v * 1000);
  const m = /^(\d+(?:\.\d+)?)(m)?$/.exec(v.trim());
  if (!m) throw new ConfigError(`${what}: ${JSON.stringify(v)} is not a cpu quantity (use e.g. 100m, 0.5, 2)`);
  return m[2] ? Math.round(Number(m[1])) : Math.round(Number(m[1]) * 1000);
}
