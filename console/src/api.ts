// The control plane's public HTTP API, as the page uses it: relative URLs,
// the session cookie (never a token in script), JSON errors kept whole so a
// form can show the API's own message next to the field it names.

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

type AuthListener = () => void;
const authListeners = new Set<AuthListener>();
/** Called when any request comes back 401: the page shows the sign-in prompt. */
export function onUnauthorized(f: AuthListener): () => void {
  authListeners.add(f);
  return () => authListeners.delete(f);
}

export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  let res: Response;
  try {
    res = await fetch(path, { credentials: 'same-origin', ...init, headers: { accept: 'application/json', ...(init.headers ?? {}) } });
  } catch (e) {
    throw new ApiError(0, `the control plane is unreachable (${(e as Error).message})`);
  }
  const text = await res.text();
  let body: unknown;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  if (res.status === 401) authListeners.forEach((f) => f());
  if (!res.ok) {
    const b = (body ?? {}) as { error?: string; field?: string };
    throw new ApiError(res.status, b.error ?? `${res.status} ${res.statusText}`, b.field);
  }
  return body as T;
}

export const postJson = <T>(path: string, body: unknown) =>
  api<T>(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

/** Checks a token without keeping it: true when the API takes it. */
export async function tokenWorks(token: string): Promise<boolean> {
  const res = await fetch('/tasks?limit=0', { headers: { authorization: `Bearer ${token}` }, credentials: 'omit' });
  return res.status !== 401;
}

// --- shapes, as the API answers ---------------------------------------------

export interface Proplet {
  id: string;
  name: string;
  device_type: string;
  proplet_type: 'external' | 'k8s';
  capabilities: string[];
  labels: Record<string, string>;
  capacity: Record<string, unknown>;
  encoding: string;
  addressing: string;
  state: 'alive' | 'offline' | 'failed';
  state_since: string;
  last_seen: string;
  running_tasks: number;
  memory_used?: number;
  assigned_tasks?: string[] | number;
}

export interface Transition {
  state: string;
  at: string;
  reason?: string;
  proplet_id?: string;
  attempt?: number;
}

export interface Task {
  id: string;
  name: string;
  image_url?: string;
  module_digest?: string;
  cli_args: string[];
  inputs: unknown[];
  env: Record<string, string>;
  daemon: boolean;
  labels: Record<string, string>;
  state: string;
  pending_reason?: string;
  proplet_id?: string;
  pinned_proplet_id?: string;
  attempt: number;
  attempts: { attempt: number; proplet_id: string; started_at: string; ended_at?: string; outcome?: string; error?: string }[];
  error?: string;
  result?: { results?: unknown; stdout?: string; stderr?: string; exit_code?: number; error?: string; duration_ms?: number; proplet_id: string; attempt: number };
  history: Transition[];
  created_at: string;
  updated_at: string;
  has_result?: boolean;
}

export interface Meta {
  name: string;
  creationTimestamp: string;
}
export interface FlJob {
  metadata: Meta;
  spec: { rounds?: { total?: number }; kOfN?: number; aggregator?: { algorithm?: string } };
  status: { phase: string; currentRound: number; completedRounds: number; message?: string; startTime?: string; completionTime?: string };
}
export interface FlParticipant {
  propletId: string;
  taskId?: string;
  phase: string;
  numSamples?: number;
  metrics?: Record<string, number>;
  reason?: string;
}
export interface FlRound {
  metadata: Meta;
  spec: { round?: number; federatedJobRef?: { name: string }; kOfN: number; participants: string[] };
  status: {
    phase: string;
    startTime?: string;
    endTime?: string;
    participants: FlParticipant[];
    updatesReceived: number;
    updatesRequired: number;
    metrics?: { totalSamples: number; loss?: number; accuracy?: number };
    refused: { late: number; notParticipant: number; stale: number; invalid: number };
    message?: string;
    checkpoint?: string;
  };
}
export interface FlCheckpoint {
  metadata: Meta;
  spec: { federatedJobRef?: { name: string }; modelRef: string; algorithm?: string; metadata: { round: number; totalSamples?: number; numParticipants?: number; metrics?: { loss?: number; accuracy?: number } } };
  status: { phase: string; sha256?: string; sizeBytes?: number; uploadTime?: string; message?: string };
}

export interface WireLine {
  t: string;
  dir: 'in' | 'out';
  topic: string;
  kind: string | null;
  proplet_id?: string;
  encoding: string;
  bytes: number;
  payload: unknown;
}

/** Every proplet, a page at a time (the API pages at 1,000 by default). */
export async function allProplets(): Promise<Proplet[]> {
  const out: Proplet[] = [];
  for (let offset = 0; ; ) {
    const page = await api<{ total: number; proplets: Proplet[] }>(`/proplets?offset=${offset}&limit=1000`);
    out.push(...page.proplets);
    offset += page.proplets.length;
    if (page.proplets.length === 0 || offset >= page.total) return out;
  }
}
