// The `propeller` command: dispatch, help, and one-line errors.

import { ApiError } from '../control-plane/client.ts';
import { parse, UsageError, type Command } from './args.ts';
import { flCheckpoints, flGet, flModelPull, flRun, flWatch } from './fl.ts';
import { k8sAdapter, k8sManifests } from './k8s.ts';
import { modulePull, modulePush } from './module.ts';
import { proplet } from './proplet.ts';
import { serve } from './serve.ts';
import { sim } from './sim.ts';
import { propletAdd, propletList, taskCreate, taskDelete, taskGet, taskList, taskLogs, taskRun, taskStart, taskStop } from './task.ts';
import { watch } from './watch.ts';

const COMMANDS: Record<string, Command> = {
  serve,
  proplet,
  'proplet list': propletList,
  'proplet add': propletAdd,
  'task run': taskRun,
  'task create': taskCreate,
  'task start': taskStart,
  'task stop': taskStop,
  'task get': taskGet,
  'task list': taskList,
  'task logs': taskLogs,
  'task delete': taskDelete,
  'module push': modulePush,
  'module pull': modulePull,
  'fl run': flRun,
  'fl watch': flWatch,
  'fl get': flGet,
  'fl checkpoints': flCheckpoints,
  'fl model pull': flModelPull,
  'k8s manifests': k8sManifests,
  'k8s adapter': k8sAdapter,
  sim,
  watch,
};

function overview(): string {
  const w = Math.max(...Object.keys(COMMANDS).map((k) => k.length));
  return `propeller: WebAssembly orchestration over MQTT, from microcontrollers to Kubernetes pods

Usage: propeller COMMAND [options]

Commands:
${Object.entries(COMMANDS)
  .map(([k, c]) => `  ${k.padEnd(w)}  ${c.summary}`)
  .join('\n')}

Run 'propeller COMMAND --help' for a command's options.
`;
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
  const cmd = COMMANDS[argv.slice(0, words).join(' ')];
  const rest = argv.slice(words);
  if (!cmd) {
    const group = Object.keys(COMMANDS).filter((k) => k.startsWith(`${argv[0]} `));
    const hint = group.length ? `; try one of: ${group.join(', ')}` : "; run 'propeller --help' for the list";
    throw new UsageError(`unknown command ${JSON.stringify(argv.slice(0, group.length ? 2 : 1).join(' '))}${hint}`);
  }
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
  } else if (e instanceof ApiError) {
    process.stderr.write(`propeller: ${e.message}\n`);
    process.exitCode = 1;
  } else {
    const err = e as NodeJS.ErrnoException;
    process.stderr.write(`propeller: ${err.code === 'EADDRINUSE' ? `address in use: ${err.message.replace(/^.*EADDRINUSE: address already in use /, '')}` : err.message}\n`);
    if (process.env.PROPELLER_DEBUG) process.stderr.write(`${err.stack}\n`);
    process.exitCode = 1;
  }
}
