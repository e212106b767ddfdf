// Validation of task definitions coming from users (HTTP API, CLI). Errors
// name the field so a 400 tells exactly what to fix.

import cron from 'node-cron';
import { isId } from '../protocol/index.ts';
import { notWasm } from './modules/oci.ts';
import { ConfigError, parseBytes, parseCpu, parseDuration } from './config.ts';
import type { PreferredType, PropletSelector, ResourceRequests } from './model.ts';

export class InputError extends Error {
  override name = 'InputError';
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
  }
}

export interface TaskInput {
  name: string;
  image_url?: string;
  file?: Uint8Array;
  cli_args: string[];
  inputs: unknown[];
  env: Record<string, string>;
  daemon: boolean;
  proplet_id?: string;
  resources: ResourceRequests;
  labels: Record<string, string>;
  timeout_ms?: number;
  schedule?: string;
  timezone?: string;
  concurrency_policy?: 'Allow' | 'Forbid' | 'Replace';
  preferred_proplet_type?: PreferredType;
  proplet_selector?: PropletSelector;
  proplet_group?: string;
  ttl_seconds_after_finished?: number;
  successful_runs_history_limit?: number;
  failed_runs_history_limit?: number;
}

// Fields of a task as the API returns it: a client that sends a task back
// (read-modify-write) must not be refused for them.
const READ_ONLY = new Set([
  'id', 'state', 'results', 'error', 'start_time', 'finish_time', 'created_at', 'updated_at', 'started_at', 'finished_at',
  'history', 'attempt', 'attempts', 'result', 'pending_reason', 'module_digest', 'module_size', 'start_requested', 'excluded_proplets',
  'pinned_proplet_id', 'suspended', 'cron', 'scheduled_by', 'module_from_url',
]);
const KNOWN = new Set([
  'name', 'image_url', 'file', 'cli_args', 'inputs', 'env', 'daemon', 'proplet_id', 'resources', 'labels', 'timeout_ms', 'timeout',
  'schedule', 'timezone', 'concurrency_policy', 'preferred_proplet_type', 'proplet_selector', 'proplet_group',
  'ttl_seconds_after_finished', 'successful_runs_history_limit', 'failed_runs_history_limit',
]);

/** A core WebAssembly module: magic and version 1 (the one check every module source shares). */
export function isWasm(b: Uint8Array): boolean {
  return notWasm(b) === null;
}

function obj(v: unknown, field: string): Record<string, unknown> {
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new InputError(field, 'must be an object');
  return v as Record<string, unknown>;
}

function strMap(v: unknown, field: string, max: number): Record<string, string> {
  const o = obj(v, field);
  const out: Record<string, string> = {};
  const entries = Object.entries(o);
  if (entries.length > max) throw new InputError(field, `more than ${max} entries`);
  for (const [k, x] of entries) {
    if (k === '__proto__' || k === 'constructor' || k === 'prototype') throw new InputError(`${field}.${k}`, 'reserved key');
    if (typeof x !== 'string') throw new InputError(`${field}.${k}`, 'must be a string');
    out[k] = x;
  }
  return out;
}

/** Parses a full task definition (create) or a partial one (update, `partial`). */
export function parseTaskInput(body: unknown, partial = false): Partial<TaskInput> {
  const o = obj(body, 'body');
  for (const k of Object.keys(o)) {
    if (!KNOWN.has(k) && !READ_ONLY.has(k)) throw new InputError(k, 'unknown field');
  }
  const out: Partial<TaskInput> = {};
  if (o.name !== undefined) {
    if (typeof o.name !== 'string' || o.name.length === 0 || o.name.length > 256) throw new InputError('name', 'must be a string of 1-256 characters');
    out.name = o.name;
  } else if (!partial) throw new InputError('name', 'is required');
  if (o.image_url !== undefined && o.image_url !== '') {
    if (typeof o.image_url !== 'string' || !/^(https?|oci):\/\/\S+$/.test(o.image_url)) {
      throw new InputError('image_url', 'must be an http(s):// or oci:// URL');
    }
    out.image_url = o.image_url;
  }
  if (o.file !== undefined && o.file !== '' && o.file !== null) {
    if (typeof o.file !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(o.file)) throw new InputError('file', 'must be base64');
    const bytes = Buffer.from(o.file, 'base64');
    if (!isWasm(bytes)) throw new InputError('file', 'is not a WebAssembly module (missing \\0asm magic and version)');
    out.file = bytes;
  }
  if (o.cli_args !== undefined) {
    if (!Array.isArray(o.cli_args) || !o.cli_args.every((a) => typeof a === 'string')) throw new InputError('cli_args', 'must be an array of strings');
    if (o.cli_args.length > 256) throw new InputError('cli_args', 'more than 256 arguments');
    out.cli_args = o.cli_args;
  }
  if (o.inputs !== undefined) {
    if (!Array.isArray(o.inputs) || o.inputs.length > 64) throw new InputError('inputs', 'must be an array of at most 64 numbers');
    o.inputs.forEach((x, i) => {
      const okNum = typeof x === 'number' && Number.isFinite(x);
      const okBig = typeof x === 'string' && /^-?\d+$/.test(x);
      if (!okNum && !okBig) throw new InputError(`inputs[${i}]`, 'must be a number (or a decimal string for 64-bit integers)');
    });
    out.inputs = o.inputs;
  }
  if (o.env !== undefined) out.env = strMap(o.env, 'env', 256);
  if (o.labels !== undefined) out.labels = strMap(o.labels, 'labels', 64);
  if (o.daemon !== undefined) {
    if (typeof o.daemon !== 'boolean') throw new InputError('daemon', 'must be true or false');
    out.daemon = o.daemon;
  }
  if (o.proplet_id !== undefined && o.proplet_id !== '') {
    if (!isId(o.proplet_id)) throw new InputError('proplet_id', "must be a proplet id (no '+', '#', '/')");
    out.proplet_id = o.proplet_id;
  }
  if (o.resources !== undefined) out.resources = parseResources(o.resources);
  const timeout = o.timeout_ms ?? o.timeout;
  if (timeout !== undefined) {
    const field = o.timeout_ms !== undefined ? 'timeout_ms' : 'timeout';
    let ms: number;
    try {
      ms = typeof timeout === 'number' && field === 'timeout_ms' ? timeout : parseDuration(field, timeout as string);
    } catch (e) {
      throw new InputError(field, (e as Error).message.replace(/^[^:]*: /, ''));
    }
    if (!Number.isInteger(ms) || ms <= 0 || ms > 7 * 24 * 3600 * 1000) throw new InputError(field, 'must be a positive duration of at most 7 days');
    out.timeout_ms = ms;
  }
  if (o.schedule !== undefined && o.schedule !== '') {
    if (typeof o.schedule !== 'string' || !cron.validate(o.schedule)) {
      throw new InputError('schedule', 'must be a cron expression: [second] minute hour day-of-month month day-of-week, e.g. "*/5 * * * * *"');
    }
    out.schedule = o.schedule;
  }
  if (o.timezone !== undefined) {
    if (typeof o.timezone !== 'string' || !isTimeZone(o.timezone)) throw new InputError('timezone', 'must be an IANA time zone such as Europe/Paris or UTC');
    out.timezone = o.timezone;
  }
  if (o.concurrency_policy !== undefined) {
    if (o.concurrency_policy !== 'Allow' && o.concurrency_policy !== 'Forbid' && o.concurrency_policy !== 'Replace') {
      throw new InputError('concurrency_policy', 'must be Allow, Forbid or Replace');
    }
    out.concurrency_policy = o.concurrency_policy;
  }
  for (const k of ['ttl_seconds_after_finished', 'successful_runs_history_limit', 'failed_runs_history_limit'] as const) {
    const n = o[k];
    if (n === undefined) continue;
    if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw new InputError(k, 'must be a non-negative integer');
    out[k] = n;
  }
  if (o.preferred_proplet_type !== undefined) {
    if (o.preferred_proplet_type !== 'k8s' && o.preferred_proplet_type !== 'external' && o.preferred_proplet_type !== 'any') {
      throw new InputError('preferred_proplet_type', 'must be k8s, external or any');
    }
    out.preferred_proplet_type = o.preferred_proplet_type;
  }
  if (o.proplet_selector !== undefined) out.proplet_selector = parseSelector(o.proplet_selector);
  if (o.proplet_group !== undefined && o.proplet_group !== '') {
    if (!isId(o.proplet_group)) throw new InputError('proplet_group', 'must be a group name');
    out.proplet_group = o.proplet_group;
  }
  if (!partial) {
    out.cli_args ??= [];
    out.inputs ??= [];
    out.env ??= {};
    out.labels ??= {};
    out.daemon ??= false;
    out.resources ??= {};
  }
  return out;
}

/** Resources as Kubernetes writes them ({cpu: '100m', memory: '64Mi'}, or requests/limits) or in plain numbers. */
const strings = (v: unknown, field: string): string[] => {
  if (!Array.isArray(v) || v.length > 64 || !v.every((x) => typeof x === 'string')) throw new InputError(field, 'must be an array of at most 64 strings');
  return v;
};

/** A selector as the seed writes it (matchDeviceTypes, ...) or in snake_case. */
export function parseSelector(v: unknown): PropletSelector {
  const o = obj(v, 'proplet_selector');
  const out: PropletSelector = {};
  const types = o.match_device_types ?? o.matchDeviceTypes;
  if (types !== undefined) out.match_device_types = strings(types, 'proplet_selector.match_device_types');
  const caps = o.match_capabilities ?? o.matchCapabilities;
  if (caps !== undefined) out.match_capabilities = strings(caps, 'proplet_selector.match_capabilities');
  const labels = o.match_labels ?? o.matchLabels;
  if (labels !== undefined) out.match_labels = strMap(labels, 'proplet_selector.match_labels', 64);
  return out;
}

function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

export function parseResources(v: unknown): ResourceRequests {
  let o = obj(v, 'resources');
  if (o.requests !== undefined) o = obj(o.requests, 'resources.requests');
  const out: ResourceRequests = {};
  try {
    const cpu = o.cpu ?? o.cpu_millis;
    if (cpu !== undefined) out.cpu_millis = o.cpu_millis !== undefined ? Number(o.cpu_millis) : parseCpu('resources.cpu', cpu as string | number);
    const mem = o.memory ?? o.memory_bytes;
    if (mem !== undefined) out.memory_bytes = parseBytes('resources.memory', mem as string | number);
  } catch (e) {
    if (e instanceof ConfigError) throw new InputError('resources', e.message);
    throw e;
  }
  for (const [k, x] of Object.entries(out)) {
    if (!Number.isFinite(x) || x < 0) throw new InputError(`resources.${k}`, 'must be a non-negative number');
  }
  return out;
}
