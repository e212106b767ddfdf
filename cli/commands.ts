// The command table: each command's name, the line `propeller --help` shows,
// and how to load it.

import type { Command } from './args.ts';

/**
 * Every command, with the one line the overview shows, loaded only when it
 * runs: `propeller --help` must not pay for the control plane, the wasm
 * runtime or the Kubernetes client. cli.test.ts checks that each summary is
 * its command's own.
 */
export interface Entry {
  summary: string;
  load: () => Promise<Command>;
  /** Another name of that command: it runs, but the overview does not list it twice. */
  aliasOf?: string;
}

export const COMMANDS: Record<string, Entry> = {
  serve: { summary: 'run the broker, the control plane and its HTTP API (and local proplets)', load: async () => (await import('./serve.ts')).serve },
  proplet: { summary: 'run a node proplet that executes wasm tasks', load: async () => (await import('./proplet.ts')).proplet },
  'proplet list': { summary: 'list proplets', load: async () => (await import('./task.ts')).propletList },
  'proplet add': { summary: 'create MQTT credentials for a proplet (prints its secret once)', load: async () => (await import('./task.ts')).propletAdd },
  'proplet rm': { summary: 'remove a proplet: its record and its MQTT credentials', load: async () => (await import('./proplet-rm.ts')).propletRm },
  'proplet delete': { summary: 'remove a proplet: its record and its MQTT credentials', load: async () => (await import('./proplet-rm.ts')).propletRm, aliasOf: 'proplet rm' },
  'task run': { summary: 'create a task from a module, start it, wait, and print its output', load: async () => (await import('./task.ts')).taskRun },
  'task create': { summary: 'create a task (it stays Pending until started)', load: async () => (await import('./task.ts')).taskCreate },
  'task start': { summary: 'start a task', load: async () => (await import('./task.ts')).taskStart },
  'task stop': { summary: 'stop a task', load: async () => (await import('./task.ts')).taskStop },
  'task get': { summary: 'show a task', load: async () => (await import('./task.ts')).taskGet },
  'task list': { summary: 'list tasks, newest first', load: async () => (await import('./task.ts')).taskList },
  'task logs': { summary: "print a finished task's stdout and stderr", load: async () => (await import('./task.ts')).taskLogs },
  'task delete': { summary: 'delete a task (stopping it first)', load: async () => (await import('./task.ts')).taskDelete },
  'module push': { summary: 'push a WebAssembly module to an OCI registry', load: async () => (await import('./module.ts')).modulePush },
  'module pull': { summary: 'pull a WebAssembly module from an OCI registry, verified', load: async () => (await import('./module.ts')).modulePull },
  'fl run': { summary: 'start a FederatedJob from its YAML (the same file kubectl apply takes)', load: async () => (await import('./fl.ts')).flRun },
  'fl watch': { summary: 'follow a FederatedJob: a progress bar per round, time left, metrics', load: async () => (await import('./fl.ts')).flWatch },
  'fl get': { summary: 'show a FederatedJob as JSON, or list them all', load: async () => (await import('./fl.ts')).flGet },
  'fl delete': { summary: 'delete a FederatedJob (its running round is stopped)', load: async () => (await import('./fl.ts')).flDelete },
  'fl checkpoints': { summary: 'list model checkpoints (one per completed round)', load: async () => (await import('./fl.ts')).flCheckpoints },
  'fl model pull': { summary: "download a model: by sha256 ref, by checkpoint name, or a job's latest aggregate", load: async () => (await import('./fl.ts')).flModelPull },
  'k8s manifests': { summary: 'print the Kubernetes CRDs, RBAC and adapter Deployment as YAML', load: async () => (await import('./k8s.ts')).k8sManifests },
  'k8s adapter': { summary: "run the Kubernetes adapter: the seeds' custom resources onto a control plane", load: async () => (await import('./k8s.ts')).k8sAdapter },
  sim: { summary: 'simulate a fleet of MCU proplets (compact CBOR, chunked modules, RAM budget)', load: async () => (await import('./sim.ts')).sim },
  watch: { summary: 'print every message on the topic tree as JSON lines', load: async () => (await import('./watch.ts')).watch },
};
