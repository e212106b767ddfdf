// The adapter: the controllers of CONTROLLERS, each an informer and a work
// queue over one kind, run while this replica holds the leader-election Lease
// (or at once without leader election). They talk to the control plane only
// through its HTTP API (ControlPlaneClient).

import { hostname } from 'node:os';
import type { KubeConfig } from '@kubernetes/client-node';
import type { ControlPlaneClient } from '../control-plane/client.ts';
import { federatedJobController, modelCheckpointController, trainingRoundController } from './controllers/fl.ts';
import { propletController } from './controllers/proplet.ts';
import { propletGroupController } from './controllers/proplet-group.ts';
import { hybridTaskController, wasmTaskController, type JobModeConfig } from './controllers/task.ts';
import { DEFAULT_IMAGE, NAME } from './manifests.ts';
import { runController, type Controller, type RunningController } from './runtime/controller.ts';
import { EventRecorder, type EventSink } from './runtime/events.ts';
import { kubeClients, loadKubeConfig, type Kube, type Log } from './runtime/kube.ts';
import { LeaderElector, type LeaderElectionConfig } from './runtime/leader-election.ts';

/** What every controller gets. */
export interface AdapterContext {
  kube: Kube;
  cp: ControlPlaneClient;
  events: EventSink;
  log: Log;
  /** How often a resource whose control-plane object is still changing (a running task) is looked at again. */
  pollMs: number;
  /** How often a PropletGroup's members are looked at again. */
  groupPollMs: number;
  /** WasmTask `execution: job`. */
  job: JobModeConfig;
}

/** Each controller has its own resource type. */
export type ControllerFactory = (ctx: AdapterContext) => Controller<any>;

/**
 * The controllers the adapter runs, one per kind. To add one (Proplet,
 * FederatedJob, ...): write k8s-adapter/controllers/KIND.ts exporting a
 * ControllerFactory (see controllers/proplet-group.ts for the smallest) and
 * list it here.
 */
export const CONTROLLERS: ControllerFactory[] = [
  wasmTaskController,
  hybridTaskController,
  propletGroupController,
  propletController,
  federatedJobController,
  trainingRoundController,
  modelCheckpointController,
];

export interface AdapterOptions {
  /** A kubeconfig file or a loaded KubeConfig; default $KUBECONFIG, ~/.kube/config, then in-cluster. */
  kubeconfig?: string | KubeConfig;
  controlPlane: ControlPlaneClient;
  /** Watch only this namespace; default all. */
  namespace?: string;
  /** Act only while holding this Lease; without it the adapter acts at once (one replica only!). */
  leaderElection?: LeaderElectionConfig;
  log: Log;
  /** Who writes Events (source.host); default the leader-election identity, else HOST-PID. */
  identity?: string;
  /** For `execution: job` WasmTasks; the broker defaults to mqtt://CONTROL-PLANE-HOST:1883. */
  job?: Partial<JobModeConfig>;
  /** Default 1000. */
  pollMs?: number;
  /** Default 5000. */
  groupPollMs?: number;
  /** Every resource is reconciled again this often; default 30 s. */
  resyncMs?: number;
  /** Default CONTROLLERS. */
  controllers?: ControllerFactory[];
}

export interface Adapter {
  readonly identity: string;
  /** True while this replica runs its controllers. */
  readonly acting: boolean;
  /**
   * Stops the controllers and leader election. `releaseLease: false` leaves
   * the Lease to expire, as a crash would (tests use it to simulate death).
   */
  close(o?: { releaseLease?: boolean }): Promise<void>;
}

export async function startAdapter(o: AdapterOptions): Promise<Adapter> {
  const config = typeof o.kubeconfig === 'object' ? o.kubeconfig : loadKubeConfig(o.kubeconfig);
  const kube = kubeClients(config);
  const log: Log = (level, msg, fields) => o.log(level, msg, { c: 'k8s-adapter', ...fields });
  const identity = o.identity ?? o.leaderElection?.identity ?? `${hostname()}-${process.pid}`;
  const cpHost = new URL(o.controlPlane.baseUrl).hostname;
  const ctx: AdapterContext = {
    kube,
    cp: o.controlPlane,
    events: new EventRecorder(kube, NAME, identity, log),
    log,
    pollMs: o.pollMs ?? 1000,
    groupPollMs: o.groupPollMs ?? 5000,
    job: { image: DEFAULT_IMAGE, broker: `mqtt://${cpHost}:1883`, domain: 'propeller', channel: 'control', ...o.job },
  };
  const factories = o.controllers ?? CONTROLLERS;
  let running: RunningController[] = [];
  let acting = false;

  const startControllers = () => {
    acting = true;
    running = factories.map((f) => runController(kube, f(ctx), log, { namespace: o.namespace, resyncMs: o.resyncMs }));
    log('info', 'controllers started', { identity, kinds: running.map((r) => r.kind), namespace: o.namespace ?? '(all)' });
  };
  const stopControllers = async () => {
    if (!acting) return;
    acting = false;
    const stopping = running;
    running = [];
    await Promise.all(stopping.map((r) => r.stop()));
    log('info', 'controllers stopped', { identity });
  };

  let elector: LeaderElector | undefined;
  if (o.leaderElection) {
    elector = new LeaderElector(kube, o.leaderElection, { onStartedLeading: startControllers, onStoppedLeading: stopControllers }, log);
    elector.start();
  } else {
    startControllers();
  }
  return {
    identity,
    get acting() {
      return acting;
    },
    async close(c = {}) {
      await elector?.stop({ release: c.releaseLease ?? true });
      await stopControllers();
    },
  };
}
