// The YAML configuration file, shaped like the seed's `propeller-config`
// ConfigMap: either its `config.yaml` document itself, or the whole ConfigMap.

import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { ConfigError, parseDuration, type HealthConfig } from './config.ts';
import type { HybridConfig } from './model.ts';

export interface FileConfig {
  scheduler?: { type?: string; maxTasksPerProplet?: number; hybrid?: Partial<HybridConfig> };
  health?: Partial<HealthConfig>;
  autoEvacuateTasks?: boolean;
  maxAttempts?: number;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

function section(o: Obj, key: string, file: string): Obj | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (!isObj(v)) throw new ConfigError(`${file}: ${key} must be a mapping`);
  return v;
}

function only(o: Obj, keys: string[], where: string): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new ConfigError(`${where}.${k}: unknown setting (known: ${keys.join(', ')})`);
}

export function parseConfig(text: string, file = 'config'): FileConfig {
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`${file}: not valid YAML: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) return {};
  if (!isObj(doc)) throw new ConfigError(`${file}: must be a mapping`);
  // the whole ConfigMap: take its config.yaml
  if (doc.kind === 'ConfigMap') {
    const inner = isObj(doc.data) ? doc.data['config.yaml'] : undefined;
    if (typeof inner !== 'string') throw new ConfigError(`${file}: a ConfigMap needs data."config.yaml"`);
    return parseConfig(inner, `${file} (data."config.yaml")`);
  }
  only(doc, ['scheduler', 'healthMonitor'], file);
  const out: FileConfig = {};
  const sch = section(doc, 'scheduler', file);
  if (sch) {
    only(sch, ['type', 'maxTasksPerProplet', 'hybrid'], `${file}: scheduler`);
    out.scheduler = {};
    if (sch.type !== undefined) {
      if (typeof sch.type !== 'string') throw new ConfigError(`${file}: scheduler.type must be a string`);
      out.scheduler.type = sch.type;
    }
    if (sch.maxTasksPerProplet !== undefined) {
      if (!Number.isInteger(sch.maxTasksPerProplet) || (sch.maxTasksPerProplet as number) < 1) throw new ConfigError(`${file}: scheduler.maxTasksPerProplet must be a positive integer`);
      out.scheduler.maxTasksPerProplet = sch.maxTasksPerProplet as number;
    }
    const h = section(sch, 'hybrid', `${file}: scheduler`);
    if (h) {
      only(h, ['preferK8sForCompute', 'preferExternalForEdge', 'computeKeywords', 'edgeKeywords', 'loadBalancingRatio'], `${file}: scheduler.hybrid`);
      const hy: Partial<HybridConfig> = {};
      for (const k of ['preferK8sForCompute', 'preferExternalForEdge'] as const) {
        if (h[k] === undefined) continue;
        if (typeof h[k] !== 'boolean') throw new ConfigError(`${file}: scheduler.hybrid.${k} must be true or false`);
        hy[k] = h[k] as boolean;
      }
      for (const k of ['computeKeywords', 'edgeKeywords'] as const) {
        if (h[k] === undefined) continue;
        if (!Array.isArray(h[k]) || !(h[k] as unknown[]).every((x) => typeof x === 'string')) throw new ConfigError(`${file}: scheduler.hybrid.${k} must be a list of strings`);
        hy[k] = h[k] as string[];
      }
      if (h.loadBalancingRatio !== undefined) {
        const r = h.loadBalancingRatio;
        if (typeof r !== 'number' || r < 0 || r > 1) throw new ConfigError(`${file}: scheduler.hybrid.loadBalancingRatio must be a number from 0 to 1`);
        hy.loadBalancingRatio = r;
      }
      out.scheduler.hybrid = hy;
    }
  }
  const hm = section(doc, 'healthMonitor', file);
  if (hm) {
    only(hm, ['checkInterval', 'offlineThreshold', 'failureThreshold', 'autoEvacuateTasks', 'maxAttempts'], `${file}: healthMonitor`);
    const d = (k: string) => {
      const v = hm[k];
      if (v === undefined) return undefined;
      if (typeof v !== 'string' && typeof v !== 'number') throw new ConfigError(`${file}: healthMonitor.${k} must be a duration such as 30s`);
      return parseDuration(`${file}: healthMonitor.${k}`, v);
    };
    out.health = {};
    const ci = d('checkInterval');
    const ot = d('offlineThreshold');
    const ft = d('failureThreshold');
    if (ci !== undefined) out.health.checkIntervalMs = ci;
    if (ot !== undefined) out.health.offlineThresholdMs = ot;
    if (ft !== undefined) out.health.failureThresholdMs = ft;
    if (hm.autoEvacuateTasks !== undefined) {
      if (typeof hm.autoEvacuateTasks !== 'boolean') throw new ConfigError(`${file}: healthMonitor.autoEvacuateTasks must be true or false`);
      out.autoEvacuateTasks = hm.autoEvacuateTasks;
    }
    if (hm.maxAttempts !== undefined) {
      if (!Number.isInteger(hm.maxAttempts) || (hm.maxAttempts as number) < 1) throw new ConfigError(`${file}: healthMonitor.maxAttempts must be a positive integer`);
      out.maxAttempts = hm.maxAttempts as number;
    }
  }
  return out;
}

export function loadConfigFile(path: string): FileConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  return parseConfig(text, path);
}

