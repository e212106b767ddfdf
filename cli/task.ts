// `propeller task ...` and `propeller proplet list|add`: the HTTP API from a terminal.

import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { ApiError, ControlPlaneClient, type TaskSpec } from '../control-plane/client.ts';
import type { Task } from '../control-plane/model.ts';
import { UsageError, int, pairs, str, type Command } from './args.ts';
import { print, table } from './output.ts';
import { apiClient, apiHelp, apiOptions } from './settings.ts';

const client = apiClient;

const specOptions = {
  name: { type: 'string' },
  'image-url': { type: 'string' },
  input: { type: 'string', multiple: true },
  env: { type: 'string', multiple: true },
  label: { type: 'string', multiple: true },
  proplet: { type: 'string' },
  timeout: { type: 'string' },
  memory: { type: 'string' },
  cpu: { type: 'string' },
  daemon: { type: 'boolean' },
} as const;
const specHelp = `  --name NAME            task name; for a module without _start, the export to call
  --input V              an argument for that export: a number, else a string (repeat for more)
  --env KEY=VALUE        environment for the module (repeat)
  --label KEY=VALUE      task label (repeat)
  --proplet ID           run on this proplet only
  --timeout DURATION     wall-time limit, e.g. 500ms, 10s (default 60s)
  --memory SIZE          memory request and linear-memory limit, e.g. 16Mi
  --cpu CPU              cpu request, e.g. 100m
  --daemon               keep running until stopped`;

function spec(v: Record<string, unknown>, name: string, rest: string[]): TaskSpec {
  const s: TaskSpec = { name, cli_args: rest };
  const inputs = (v.input as string[] | undefined) ?? [];
  if (inputs.length) {
    s.inputs = inputs.map((x) => {
      // anything but a plain number is sent as the string it is (Propeller's proplets take strings); 64-bit integers stay decimal strings so no precision is lost
      if (!/^-?\d+(\.\d+)?$/.test(x)) return x;
      return Number.isSafeInteger(Number(x)) || x.includes('.') ? Number(x) : x;
    });
  }
  const env = pairs('env', v.env);
  if (Object.keys(env).length) s.env = env;
  const labels = pairs('label', v.label);
  if (Object.keys(labels).length) s.labels = labels;
  if (str(v.proplet)) s.proplet_id = str(v.proplet);
  if (str(v['image-url'])) s.image_url = str(v['image-url']);
  if (v.daemon) s.daemon = true;
  if (str(v.timeout)) (s as TaskSpec & { timeout: string }).timeout = str(v.timeout)!;
  if (str(v.memory) || str(v.cpu)) s.resources = { ...(str(v.memory) ? { memory: str(v.memory) } : {}), ...(str(v.cpu) ? { cpu: str(v.cpu) } : {}) };
  return s;
}

function readWasm(path: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function one(positionals: string[], what: string): string {
  if (positionals.length !== 1) throw new UsageError(`expected exactly one ${what}`);
  return positionals[0]!;
}

export const taskRun: Command = {
  usage: 'propeller task run FILE.wasm [options] [-- ARGS...]',
  summary: 'create a task from a module, start it, wait, and print its output',
  options: { ...apiOptions, ...specOptions, wait: { type: 'string' } },
  help: `${specHelp}
  --wait SECONDS         give up waiting after this long (default 60)
${apiHelp}
  The module's stdout and stderr are printed as they were; a returned value is printed on its own line.
  Exit status: the module's exit code, or 1 when the task failed.`,
  async run(v, pos, rest) {
    const file = one(pos, 'FILE.wasm');
    const bytes = readWasm(file);
    const c = client(v);
    const name = str(v.name) ?? basename(file).replace(/\.wasm$/, '');
    const deadline = Date.now() + int('wait', v.wait, 60) * 1000;
    const task = await c.createTask({ ...spec(v, name, rest), file: bytes.toString('base64') }, { start: true, waitMs: Math.min(deadline - Date.now(), 30_000) });
    let t: Task = task;
    while (!['Completed', 'Failed', 'Stopped'].includes(t.state)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new ApiError(0, `task ${task.id} is still ${t.state} after waiting${t.pending_reason ? ` (${t.pending_reason})` : ''}; follow it with: propeller task get ${task.id}`);
      t = await c.getTask(task.id, Math.min(left, 30_000));
    }
    const r = t.result;
    if (r?.stdout) process.stdout.write(r.stdout);
    if (r?.stderr) process.stderr.write(r.stderr);
    if (r?.results !== undefined) process.stdout.write(`${typeof r.results === 'string' ? r.results : JSON.stringify(r.results)}\n`);
    if (t.state !== 'Completed') {
      process.stderr.write(`propeller: task ${t.state.toLowerCase()}: ${t.error ?? 'no reason given'}\n`);
      return r?.exit_code && r.exit_code > 0 ? r.exit_code : 1;
    }
    return r?.exit_code ?? 0;
  },
};

export const taskCreate: Command = {
  usage: 'propeller task create --name NAME (--file FILE.wasm | --image-url URL) [options] [-- ARGS...]',
  summary: 'create a task (it stays Pending until started)',
  options: { ...apiOptions, ...specOptions, file: { type: 'string' } },
  help: `  --file FILE.wasm       the module, sent inline
  --image-url URL        or where proplets fetch it (http(s):// or oci://)
${specHelp}
${apiHelp}`,
  async run(v, _pos, rest) {
    const name = str(v.name);
    if (!name) throw new UsageError('--name is required');
    const s = spec(v, name, rest);
    const file = str(v.file);
    if (file) s.file = readWasm(file).toString('base64');
    if (!file && !s.image_url) throw new UsageError('one of --file or --image-url is required');
    print(await client(v).createTask(s));
  },
};

const byId = (summary: string, usage: string, fn: (c: ControlPlaneClient, id: string) => Promise<unknown>): Command => ({
  usage,
  summary,
  options: { ...apiOptions },
  help: apiHelp,
  async run(v, pos) {
    print(await fn(client(v), one(pos, 'task id')));
  },
});

export const taskStart = byId('start a task', 'propeller task start ID', (c, id) => c.startTask(id));
export const taskStop = byId('stop a task', 'propeller task stop ID', (c, id) => c.stopTask(id));
export const taskGet = byId('show a task', 'propeller task get ID', (c, id) => c.getTask(id));
export const taskDelete = byId('delete a task (stopping it first)', 'propeller task delete ID', (c, id) => c.deleteTask(id));

export const taskLogs: Command = {
  usage: 'propeller task logs ID',
  summary: "print a finished task's stdout and stderr",
  options: { ...apiOptions },
  help: apiHelp,
  async run(v, pos) {
    const r = await client(v).results(one(pos, 'task id'));
    if (r.stdout) process.stdout.write(r.stdout);
    if (r.stderr) process.stderr.write(r.stderr);
    if (!r.stdout && !r.stderr) process.stderr.write(`(no output; task is ${r.state})\n`);
  },
};

export const taskList: Command = {
  usage: 'propeller task list [--state STATE] [--limit N | --all] [--json]',
  summary: 'list tasks, newest first',
  options: { ...apiOptions, state: { type: 'string' }, json: { type: 'boolean' }, limit: { type: 'string' }, all: { type: 'boolean' } },
  help: `  --state STATE          only tasks in this state (Pending, Running, Completed, ...)
  --limit N              at most N tasks, the newest (default 100)
  --all                  every task, page by page
  --json                 print JSON instead of a table
${apiHelp}`,
  async run(v) {
    const state = str(v.state);
    const c = client(v);
    const all = v.all === true;
    if (all && v.limit !== undefined) throw new UsageError('--all and --limit contradict each other');
    const limit = int('limit', v.limit, 100);
    const first = await c.listTasks({ ...(state ? { state } : {}), limit: all ? 1000 : limit });
    const tasks = [...first.tasks];
    for (let page = first; all && page.continue; ) {
      page = await c.listTasks({ ...(state ? { state } : {}), limit: 1000, continue: page.continue });
      tasks.push(...page.tasks);
    }
    const cut = !all && first.continue !== undefined;
    if (v.json) return print(all ? { total: tasks.length, tasks } : first);
    table(['ID', 'NAME', 'STATE', 'PROPLET', 'ATTEMPT', 'UPDATED'], tasks.map((t) => [t.id, t.name, t.state, t.proplet_id ?? '-', String(t.attempt), t.updated_at]));
    if (cut) process.stderr.write(`showing the newest ${tasks.length} of ${first.total ?? 'more'} tasks; see them all with --all, or more with --limit N\n`);
  },
};

export const propletList: Command = {
  usage: 'propeller proplet list [--json]',
  summary: 'list proplets',
  options: { ...apiOptions, json: { type: 'boolean' } },
  help: `  --json                 print JSON instead of a table
${apiHelp}`,
  async run(v) {
    const res = await client(v).listProplets();
    if (v.json) return print(res);
    table(
      ['ID', 'TYPE', 'DEVICE', 'STATE', 'TASKS', 'LAST SEEN'],
      res.proplets.map((p) => [p.id, p.proplet_type, p.device_type, p.state, `${p.assigned_tasks}/${p.capacity.max_tasks ?? '-'}`, p.last_seen]),
    );
  },
};

export const propletAdd: Command = {
  usage: 'propeller proplet add ID [--rotate]',
  summary: 'create MQTT credentials for a proplet (prints its secret once)',
  options: { ...apiOptions, rotate: { type: 'boolean' } },
  help: `  --rotate               replace the secret of a proplet that already has one (the old one stops working)
${apiHelp}
  With an external Mosquitto (serve --broker-accounts dynsec) the account is made there before this answers.`,
  async run(v, pos) {
    print(await client(v).addProplet(one(pos, 'proplet id'), { rotate: v.rotate === true }));
  },
};
