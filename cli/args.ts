// Argument parsing shared by every command: node:util parseArgs with a help
// text per command, and one-line errors.

import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  override name = 'UsageError';
}

export type Options = NonNullable<ParseArgsConfig['options']>;

export interface Command {
  usage: string;
  summary: string;
  options: Options;
  /** Help lines for options, in the order shown. */
  help: string;
  run(values: Record<string, string | boolean | string[] | undefined>, positionals: string[], rest: string[]): Promise<number | void>;
}

export function parse(cmd: Command, argv: string[]) {
  // Everything after `--` goes to the wasm module untouched.
  const dd = argv.indexOf('--');
  const own = dd >= 0 ? argv.slice(0, dd) : argv;
  const rest = dd >= 0 ? argv.slice(dd + 1) : [];
  try {
    const { values, positionals } = parseArgs({ args: own, options: { ...cmd.options, help: { type: 'boolean', short: 'h' } }, allowPositionals: true, strict: true });
    return { values: values as Record<string, string | boolean | string[] | undefined>, positionals, rest };
  } catch (e) {
    // node's messages run over several lines of advice: keep the first, which says what is wrong,
    // and for a value that starts with a dash (a token, a negative number) the way to write it
    const lines = (e as Error).message.split('\n');
    const dashed = lines.find((l) => l.startsWith('To specify an option argument starting with a dash'));
    const first = lines[0]!.replace(/\. To specify a positional argument.*$/s, '');
    throw new UsageError(dashed ? `${first.replace(/\.$/, '')}: a value that starts with a dash is written ${dashed.replace(/^.* use /, '').replace(/\.$/, '')}` : first);
  }
}

export function str(v: unknown): string | undefined {
  return typeof v === 'string' ? v : undefined;
}

export function int(name: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new UsageError(`--${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
  return Number(v);
}

/** KEY=VALUE pairs from a repeated option. */
export function pairs(name: string, v: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of (v as string[] | undefined) ?? []) {
    const i = item.indexOf('=');
    if (i <= 0) throw new UsageError(`--${name} takes KEY=VALUE, got ${JSON.stringify(item)}`);
    out[item.slice(0, i)] = item.slice(i + 1);
  }
  return out;
}
