// How a start message becomes a run, and a run's end a result, the same for
// every proplet kind: argv, time limit (none for a daemon), and the outcome's
// status and fields. The proplet adds only its own limits (memory cap, output
// cap) and transport.

import type { Start } from '../protocol/index.ts';
import type { RunResult } from '../wasm-runtime/index.ts';
import type { Outcome } from './core.ts';

export interface TaskRun {
  name: string;
  /** argv: the task name, then the cli_args. */
  args: string[];
  env: Record<string, string>;
  inputs: (number | bigint | string)[];
  /** 0: no limit (a daemon runs until stopped). */
  timeoutMs: number;
}

export function taskRun(msg: Start, defaultTimeoutMs: number): TaskRun {
  return {
    name: msg.name ?? '',
    args: [msg.name ?? 'main', ...(msg.cli_args ?? [])],
    env: msg.env ?? {},
    inputs: (msg.inputs ?? []) as (number | bigint | string)[],
    timeoutMs: msg.daemon ? 0 : (msg.timeout_ms ?? defaultTimeoutMs),
  };
}

/** The result fields of a finished run: `stopped` when it was killed, `results` from the export's value or an FL round's outcome. */
export function outcomeOf(res: RunResult, flResults?: Record<string, unknown>): Outcome {
  const status = res.error === 'stopped' ? 'stopped' : res.ok ? 'completed' : 'failed';
  const outcome: Outcome = { status, stdout: res.stdout, stderr: res.stderr, duration_ms: res.durationMs };
  if (res.returnValue !== undefined) outcome.results = res.returnValue;
  if (flResults) outcome.results = flResults;
  if (res.exitCode !== null) outcome.exit_code = res.exitCode;
  if (res.error) outcome.error = res.error;
  return outcome;
}
