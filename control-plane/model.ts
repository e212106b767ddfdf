// The control plane's records. Field names are snake_case because these are
// also the HTTP API's shapes, and Propeller's users know them that way.

import type { Capacity, Encoding } from '../protocol/index.ts';

export type PropletState = 'alive' | 'offline' | 'failed';

/** What a proplet offers, as it registered it. */
export type PropletCapacity = Capacity;

export interface Proplet {
  id: string;
  name: string;
  device_type: string;
  proplet_type: 'external' | 'k8s';
  capabilities: string[];
  labels: Record<string, string>;
  capacity: PropletCapacity;
  wasm_runtime?: string;
  encoding: Encoding;
  /** 'direct' proplets take starts on their own topic; 'shared' ones (Propeller's) on the broadcast topic. */
  addressing: 'shared' | 'direct';
  state: PropletState;
  state_since: string;
  registered_at: string;
  last_seen: string;
  /** Load as the proplet last reported it. */
  running_tasks: number;
  memory_used?: number;
  /** Recent heartbeat times, newest last. */
  alive_history: string[];
}

export type TaskState = 'Pending' | 'Scheduled' | 'Running' | 'Completed' | 'Failed' | 'Stopped';
export const TERMINAL: ReadonlySet<TaskState> = new Set(['Completed', 'Failed', 'Stopped']);

export interface Transition {
  state: TaskState;
  at: string;
  reason?: string;
  proplet_id?: string;
  attempt?: number;
}

export interface TaskResult {
  proplet_id: string;
  attempt: number;
  results?: unknown;
  stdout?: string;
  stderr?: string;
  exit_code?: number;
  error?: string;
  duration_ms?: number;
  fl?: boolean;
  at: string;
}

export interface AttemptRecord {
  attempt: number;
  proplet_id: string;
  started_at: string;
  ended_at?: string;
  outcome?: 'completed' | 'failed' | 'refused' | 'stopped' | 'evacuated';
  error?: string;
}

export interface ResourceRequests {
  cpu_millis?: number;
  memory_bytes?: number;
}

export interface PropletSelector {
  match_device_types?: string[];
  match_capabilities?: string[];
  match_labels?: Record<string, string>;
}

export type PreferredType = 'k8s' | 'external' | 'any';

export interface Task {
  id: string;
  name: string;
  image_url?: string;
  /** sha256 digest of an inline or uploaded module kept in the module store. */
  module_digest?: string;
  module_size?: number;
  /** The module was fetched from image_url (and is fetched again at each start); else it came inline or by upload. */
  module_from_url?: boolean;
  cli_args: string[];
  inputs: unknown[];
  env: Record<string, string>;
  daemon: boolean;
  /** Pin: run only on this proplet. */
  pinned_proplet_id?: string;
  resources: ResourceRequests;
  labels: Record<string, string>;
  timeout_ms?: number;
  /** Hybrid scheduling hint (seed 003). */
  preferred_proplet_type?: PreferredType;
  proplet_selector?: PropletSelector;
  /** Name of a PropletGroup: its selector and scheduling apply. */
  proplet_group?: string;
  /**
   * Cron expression (with optional seconds field): the task is a template and
   * each firing starts a run, a task of its own with `scheduled_by` set.
   */
  schedule?: string;
  timezone?: string;
  /** What a firing does while an earlier run is still active (Kubernetes CronJob semantics). */
  concurrency_policy?: 'Allow' | 'Forbid' | 'Replace';
  /** A scheduled task that does not fire (stop suspends, start resumes). */
  suspended?: boolean;
  cron?: { runs_started: number; runs_skipped: number; last_run_id?: string; last_fired_at?: string; next_run_at?: string };
  /** On a run: the scheduled task that started it. */
  scheduled_by?: string;
  /** Seconds a finished task is kept before it is deleted (Kubernetes' ttlSecondsAfterFinished); default from the control plane. */
  ttl_seconds_after_finished?: number;
  /** On a scheduled task: finished runs kept, by outcome (CronJob's successful/failedJobsHistoryLimit; default 3 and 1). */
  successful_runs_history_limit?: number;
  failed_runs_history_limit?: number;
  state: TaskState;
  /** Set by start, cleared by stop: the task wants to run and waits for placement while Pending. */
  start_requested: boolean;
  pending_reason?: string;
  proplet_id?: string;
  /** Proplets that refused this task (did not fit): placement skips them. */
  excluded_proplets?: string[];
  attempt: number;
  /** Every placement, with how it ended. */
  attempts: AttemptRecord[];
  error?: string;
  result?: TaskResult;
  history: Transition[];
  created_at: string;
  updated_at: string;
  started_at?: string;
  finished_at?: string;
}

export type Algorithm = 'round-robin' | 'least-loaded' | 'random' | 'resource-aware' | 'hybrid';

export interface HybridConfig {
  preferK8sForCompute: boolean;
  preferExternalForEdge: boolean;
  computeKeywords: string[];
  edgeKeywords: string[];
  /** Target share of tasks on k8s proplets when a task has no preference (0..1). */
  loadBalancingRatio: number;
}

export interface PropletGroup {
  name: string;
  selector: { match_labels?: Record<string, string> };
  scheduling: { algorithm: Algorithm; max_tasks_per_proplet?: number };
  created_at: string;
}
