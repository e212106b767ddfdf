// The `propeller` command: dispatch, help, and one-line errors.

import { parse, UsageError, type Command } from './args.ts';
import { COMMANDS } from './commands.ts';

function overview(): string {
  const listed = Object.entries(COMMANDS).filter(([, c]) => !c.aliasOf);
  const w = Math.max(...listed.map(([k]) => k.length));
  return `propeller: WebAssembly orchestration over MQTT, from microcontrollers to Kubernetes pods

Usage: propeller COMMAND [options]

Commands:
${listed
  .map(([k, c]) => `  ${k.padEnd(w)}  ${c.summary}${aliases(k)}`)
  .join('\n')}

Run 'propeller COMMAND --help' for a command's options.
`;
}

function aliases(name: string): string {
  const other = Object.keys(COMMANDS).filter((k) => COMMANDS[k]!.aliasOf === name);
  return other.length ? ` (also: ${other.join(', ')})` : '';
}

function helpOf(c: Command): string {
  return `Usage: ${c.usage}\n\n${c.summary[0]!.toUpperCase()}${c.summary.slice(1)}.\n\nOptions:\n${c.help}\n  -h, --help             show this help\n`;
}

export async function main(argv: string[]): Promise<number> {
  if (argv.length === 0 || argv[0] === '--help' || argv[0] === '-h' || argv[0] === 'help') {
    process.stdout.write(overview());
    return argv.length === 0 ? 2 : 0;
  }
  // the longest command name the arguments start with: 'fl model pull', 'task run', 'serve'
  const words = [3, 2, 1].find((n) => COMMANDS[argv.slice(0, n).join(' ')]) ?? 1;
  const entry = COMMANDS[argv.slice(0, words).join(' ')];
  const rest = argv.slice(words);
  if (!entry) {
    const group = Object.keys(COMMANDS).filter((k) => k.startsWith(`${argv[0]} `));
    const hint = group.length ? `; try one of: ${group.join(', ')}` : "; run 'propeller --help' for the list";
    throw new UsageError(`unknown command ${JSON.stringify(argv.slice(0, group.length ? 2 : 1).join(' '))}${hint}`);
  }
  const cmd = await entry.load();
  const { values, positionals, rest: passthrough } = parse(cmd, rest);
  if (values.help) {
    process.stdout.write(helpOf(cmd));
    return 0;
  }
  return (await cmd.run(values, positionals, passthrough)) ?? 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof UsageError) {
    process.stderr.write(`propeller: ${e.message}\n`);
    process.exitCode = 2;
  } else if ((e as Error).name === 'ApiError') {
    // by name, so that reporting an API error does not load the API client up front
    process.stderr.write(`propeller: ${(e as Error).message}\n`);
    process.exitCode = 1;
  } else {
    const err = e as NodeJS.ErrnoException;
    process.stderr.write(`propeller: ${err.code === 'EADDRINUSE' ? `address in use: ${err.message.replace(/^.*EADDRINUSE: address already in use /, '')}` : err.message}\n`);
    if (process.env.PROPELLER_DEBUG) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  }
}
