// The custom resources of the seeds, written once: each spec and status is a
// schema (schema.ts) from which both its TypeScript type and the CRD's OpenAPI
// schema come. The kinds' names, printer columns and subresources sit beside
// them, as Kubebuilder keeps its markers on the API types.
//
// propeller.absmach.io (seed 000): WasmTask, PropletGroup, FederatedJob,
// TrainingRound, ModelCheckpoint. propeller.absmach.fr (seeds 003/004): the
// hybrid orchestrator's Proplet and Task. The FL kinds' spec and status have
// the fields of the control plane's FL records, so the adapter copies them
// across without translation.

import {
  anyValue,
  array,
  boolean,
  enumOf,
  freeform,
  integer,
  intOrString,
  number,
  object,
  quantity,
  record,
  required,
  string,
  time,
  type OpenApi,
  type Schema,
  type TypeOf,
} from './schema.ts';

export const GROUP = 'propeller.absmach.io';
/** The hybrid orchestrator's group (seeds 003/004): Proplet and Task. */
export const HYBRID_GROUP = 'propeller.absmach.fr';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const HYBRID_API_VERSION = `${HYBRID_GROUP}/${VERSION}`;
/** `kubectl get propeller` lists every kind. */
export const CATEGORY = 'propeller';

// --- shared pieces -------------------------------------------------------------

/** The condition types the seed names; controllers may add others. */
export const CONDITION_TYPES = ['Ready', 'RoundActive', 'AggregationComplete', 'ParticipantsReady'] as const;
export type ConditionType = (typeof CONDITION_TYPES)[number];

/** metav1.Condition, with its validation. */
const conditionSchema = object({
  type: required(string({ description: `Condition type: ${CONDITION_TYPES.join(', ')}, ...`, maxLength: 316 })),
  status: required(enumOf(['True', 'False', 'Unknown'])),
  reason: required(string({ description: 'CamelCase reason for the last transition.', pattern: '^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$', maxLength: 1024 })),
  message: required(string({ description: 'Human-readable details.', maxLength: 32768 })),
  lastTransitionTime: required(time({ description: 'When the status last changed.' })),
  observedGeneration: integer({ description: 'The metadata.generation the condition was set for.', minimum: 0, format: 'int64' }),
});
export type Condition = TypeOf<typeof conditionSchema>;

const conditions = array(conditionSchema, { description: 'Kubernetes conditions, one per type.', listType: 'map', mapKeys: ['type'] });
const observedGeneration = integer({ description: 'The metadata.generation this status reflects.', minimum: 0, format: 'int64' });
const message = string({ description: 'Why the resource is in its phase, when that needs saying.' });

const localRef = (description: string) => object({ name: required(string({ minLength: 1 })) }, { description });
export type LocalObjectReference = TypeOf<ReturnType<typeof localRef>>;

const objectRef = object(
  { apiVersion: string(), kind: string(), namespace: string(), name: string(), uid: string() },
  { description: 'A Kubernetes object (ObjectReference).' },
);
export type ObjectReference = TypeOf<typeof objectRef>;

const cpuMemory = (description: string) => object({ cpu: quantity({ description: 'e.g. 100m' }), memory: quantity({ description: 'e.g. 64Mi' }) }, { description });
const requestsLimits = (description: string) =>
  object({ requests: record(quantity(), { description: 'Minimum resources, e.g. cpu: 100m, memory: 128Mi.' }), limits: record(quantity(), { description: 'Maximum resources.' }) }, { description });

/** Where a module comes from and how it is called: shared by WasmTask and Task. */
const moduleProps = {
  imageUrl: string({ description: 'Where proplets fetch the module: oci://host/repo:tag or http(s)://. This or file is required.' }),
  file: string({ description: 'The module itself, base64-encoded; takes precedence over imageUrl.' }),
  cliArgs: array(string(), { description: 'Command-line arguments for the module.' }),
  inputs: array(intOrString(), { description: "Arguments of the exported function called; 64-bit values as decimal strings." }),
  env: record(string(), { description: 'Environment variables for the module (ROUND_ID, MODEL_URI, HYPERPARAMS turn on FL).' }),
  daemon: boolean({ description: 'Keep running until stopped.' }),
};
/** A task needs a module: imageUrl or file. */
const moduleSource: (keyof typeof moduleProps)[][] = [['imageUrl'], ['file']];

export const TASK_PHASES = ['Pending', 'Scheduled', 'Running', 'Completed', 'Failed', 'Stopped'] as const;
export type TaskPhase = (typeof TASK_PHASES)[number];

/** What WasmTask and Task report of their control-plane task. */
const taskStatusSchema = object(
  {
    phase: enumOf(TASK_PHASES),
    taskId: string({ description: 'The control-plane task this resource runs as.' }),
    propletId: string({ description: 'The proplet the task runs on.' }),
    jobRef: objectRef,
    startTime: time(),
    finishTime: time(),
    results: anyValue({ description: 'What the module returned (any JSON value).' }),
    exitCode: integer({ format: 'int32' }),
    error: string({ description: 'Why the task failed.' }),
    observedGeneration,
    conditions,
  },
  { description: 'Observed state, written by the adapter.' },
);

// --- propeller.absmach.io: WasmTask -------------------------------------------

const wasmTaskSpecSchema = object(
  {
    ...moduleProps,
    propletId: string({ description: 'Run on this proplet only; empty lets the scheduler choose.' }),
    propletGroupRef: localRef('A PropletGroup whose proplets and algorithm place the task.'),
    mode: enumOf(['infer', 'train'], { description: 'Execution mode.' }),
    monitoringProfile: object(
      {
        enabled: boolean(),
        interval: integer({ description: 'Seconds between samples.', minimum: 1 }),
        metrics: array(string(), { description: 'What to sample, e.g. cpu, memory.' }),
      },
      { description: 'Monitoring configuration.' },
    ),
    resources: requestsLimits('Kubernetes-style resource requirements.'),
    restartPolicy: enumOf(['Always', 'OnFailure', 'Never']),
    execution: enumOf(['dispatch', 'job'], {
      description: 'dispatch (default): a live proplet runs the task; job: a Kubernetes Job runs a one-shot proplet for it (pod isolation).',
    }),
  },
  { description: 'A WebAssembly workload to run on a proplet.', atLeastOne: moduleSource },
);
export type WasmTaskSpec = TypeOf<typeof wasmTaskSpecSchema>;
export type WasmTaskStatus = TypeOf<typeof taskStatusSchema>;

// --- PropletGroup ----------------------------------------------------------------

export const SCHEDULING_ALGORITHMS = ['round-robin', 'least-loaded', 'random', 'resource-aware', 'hybrid'] as const;
export const PROPLET_PHASES = ['Pending', 'Ready', 'Offline', 'Failed'] as const;
export type PropletPhase = (typeof PROPLET_PHASES)[number];

const propletGroupSpecSchema = object(
  {
    selector: object({ matchLabels: record(string()) }, { description: 'Proplets whose labels match all of these.' }),
    scheduling: required(
      object({
        algorithm: required(enumOf(SCHEDULING_ALGORITHMS)),
        maxTasksPerProplet: integer({ description: 'At most this many tasks of the group on one proplet.', minimum: 1 }),
      }),
    ),
  },
  { description: 'A group of proplets with its own scheduling.' },
);
export type PropletGroupSpec = TypeOf<typeof propletGroupSpecSchema>;

const propletGroupStatusSchema = object({
  proplets: array(object({ id: required(string()), phase: enumOf(PROPLET_PHASES), assignedTasks: integer({ minimum: 0 }) }), {
    description: 'The proplets in the group.',
  }),
  totalProplets: integer({ minimum: 0 }),
  availableProplets: integer({ minimum: 0 }),
  observedGeneration,
  conditions,
});
export type PropletGroupStatus = TypeOf<typeof propletGroupStatusSchema>;

// --- FederatedJob ------------------------------------------------------------------

export const JOB_PHASES = ['Pending', 'Running', 'Completed', 'Failed'] as const;
export const ROUND_PHASES = ['Pending', 'Running', 'Aggregating', 'Completed', 'Failed'] as const;
export const CHECKPOINT_PHASES = ['Uploading', 'Ready', 'Failed'] as const;
/** A participant in a round: Submitted means its update counts. */
export const PARTICIPANT_PHASES = ['Pending', 'Running', 'Submitted', 'Refused', 'Failed', 'Stopped'] as const;

const modelRef = (what: string) => string({ description: `${what}: sha256:<hex> in the control plane's store, or an oci:// or http(s):// URL.`, minLength: 1 });
const hyperparams = freeform({ description: 'Training hyperparameters, passed to the module as HYPERPARAMS (JSON).' });
const kOfN = integer({ description: 'Updates needed to aggregate a round (k of n).', minimum: 1 });
const timeoutSeconds = integer({ description: 'A round fails when k updates have not come by then.', minimum: 1 });
const aggregator = object(
  {
    algorithm: required(string({ description: 'e.g. fedavg.', minLength: 1 })),
    config: freeform({ description: "The algorithm's settings." }),
  },
  { description: 'How updates are combined.' },
);

const federatedJobSpecSchema = object(
  {
    experimentId: required(string({ minLength: 1, maxLength: 128 })),
    modelRef: required(modelRef('The initial model')),
    taskWasmImage: required(modelRef('The FL client module')),
    participants: array(object({ propletId: required(string({ minLength: 1 })), namespace: string() }), {
      description: 'The proplets that train (this or participantSelector).',
      minItems: 1,
    }),
    participantSelector: object(
      {
        propletGroup: string({ description: "A PropletGroup: its selector picks the participants." }),
        matchLabels: record(string()),
        deviceTypes: array(string()),
      },
      { description: 'Instead of participants: the live proplets that match, chosen at the start of each round.' },
    ),
    hyperparams,
    kOfN: required(kOfN),
    timeoutSeconds: required(timeoutSeconds),
    rounds: required(
      object({
        total: required(integer({ minimum: 1 })),
        strategy: enumOf(['sequential', 'parallel']),
      }),
    ),
    aggregator: required(aggregator),
    roundRetries: integer({ description: 'A failed round runs again up to this many times in the job (default 0).', minimum: 0 }),
  },
  { description: 'A federated-learning experiment: rounds of training tasks and aggregation.', atLeastOne: [['participants'], ['participantSelector']] },
);
export type FederatedJobSpec = TypeOf<typeof federatedJobSpecSchema>;

const federatedJobStatusSchema = object({
  phase: enumOf(JOB_PHASES),
  currentRound: integer({ minimum: 0 }),
  completedRounds: integer({ minimum: 0 }),
  participants: array(
    object({
      propletId: required(string()),
      roundsContributed: integer({ description: 'Rounds whose aggregate holds this participant’s update.', minimum: 0 }),
      lastRound: integer({ minimum: 0 }),
      lastPhase: enumOf(PARTICIPANT_PHASES),
    }),
  ),
  currentModelRef: string({ description: 'The model the next round trains.' }),
  aggregatedModelRef: string({ description: 'The latest aggregated model.' }),
  retriesUsed: integer({ minimum: 0 }),
  startTime: time(),
  completionTime: time(),
  message,
  observedGeneration,
  conditions,
});
export type FederatedJobStatus = TypeOf<typeof federatedJobStatusSchema>;

// --- TrainingRound -------------------------------------------------------------------

const trainingRoundSpecSchema = object(
  {
    roundId: required(string({ minLength: 1, maxLength: 128 })),
    federatedJobRef: localRef('The FederatedJob this round belongs to; absent for a standalone round.'),
    modelRef: required(modelRef('The model this round trains')),
    taskWasmImage: required(modelRef('The FL client module')),
    participants: required(array(string({ minLength: 1 }), { description: 'Proplet ids.', minItems: 1 })),
    hyperparams,
    kOfN: required(kOfN),
    timeoutSeconds: required(timeoutSeconds),
    aggregator,
    round: integer({ description: 'Round number in its job, from 1.', minimum: 1 }),
  },
  { description: 'One round of a federated-learning job.' },
);
export type TrainingRoundSpec = TypeOf<typeof trainingRoundSpecSchema>;

const trainingRoundStatusSchema = object({
  phase: enumOf(ROUND_PHASES),
  startTime: time(),
  endTime: time(),
  deadline: time(),
  participants: array(
    object({
      propletId: required(string()),
      taskId: string(),
      phase: enumOf(PARTICIPANT_PHASES),
      numSamples: integer({ minimum: 0 }),
      metrics: record(number()),
      reason: string(),
    }),
  ),
  updatesReceived: integer({ minimum: 0 }),
  updatesRequired: integer({ minimum: 0 }),
  aggregatedModelRef: string(),
  checkpoint: string({ description: 'The ModelCheckpoint of the aggregate.' }),
  metrics: object({ totalSamples: integer({ minimum: 0 }), loss: number(), accuracy: number() }, { description: 'Weighted mean client metrics of the updates that count.' }),
  refused: object(
    { late: integer({ minimum: 0 }), notParticipant: integer({ minimum: 0 }), stale: integer({ minimum: 0 }), invalid: integer({ minimum: 0 }) },
    { description: 'Updates refused, by reason.' },
  ),
  restarts: integer({ description: 'Times the round started afresh after a control-plane restart.', minimum: 0 }),
  message,
  observedGeneration,
  conditions,
});
export type TrainingRoundStatus = TypeOf<typeof trainingRoundStatusSchema>;

// --- ModelCheckpoint -------------------------------------------------------------------

const modelCheckpointSpecSchema = object(
  {
    federatedJobRef: localRef('The FederatedJob; absent for a standalone round.'),
    roundRef: localRef('The TrainingRound whose aggregate this is.'),
    modelRef: required(modelRef('The model artifact')),
    algorithm: required(string({ minLength: 1 })),
    metadata: object(
      {
        totalSamples: integer({ minimum: 0, format: 'int64' }),
        numParticipants: integer({ minimum: 0 }),
        participants: array(string()),
        round: integer({ minimum: 1 }),
        metrics: freeform({ description: 'e.g. accuracy, loss.' }),
      },
      { description: 'About the aggregate.' },
    ),
  },
  { description: 'An aggregated model.' },
);
export type ModelCheckpointSpec = TypeOf<typeof modelCheckpointSpecSchema>;

const modelCheckpointStatusSchema = object({
  phase: enumOf(CHECKPOINT_PHASES),
  uploadTime: time(),
  sizeBytes: integer({ minimum: 0, format: 'int64' }),
  sha256: string({ pattern: '^[0-9a-f]{64}$' }),
  message,
  observedGeneration,
  conditions,
});
export type ModelCheckpointStatus = TypeOf<typeof modelCheckpointStatusSchema>;

// --- propeller.absmach.fr: Proplet ---------------------------------------------------

export const PROPLET_TYPES = ['k8s', 'external'] as const;
export type PropletType = (typeof PROPLET_TYPES)[number];

const propletSpecSchema = object(
  {
    type: required(enumOf(PROPLET_TYPES, { description: 'k8s: pods the adapter runs; external: a device (ESP32, Raspberry Pi, ...) that connects over MQTT.' })),
    k8s: object(
      {
        image: required(string({ description: 'The node proplet image.', minLength: 1 })),
        replicas: integer({ description: 'Proplet pods (kubectl scale sets this).', minimum: 0, default: 1, format: 'int32' }),
        resources: requestsLimits('Each pod’s resources.'),
      },
      { description: 'For type k8s.' },
    ),
    external: object(
      {
        endpoint: string({ description: 'host:port of the device, if it has one.' }),
        deviceType: string({ description: 'e.g. esp32, raspberry-pi.' }),
        capabilities: array(string(), { description: 'e.g. wasm, sensor, wifi.' }),
      },
      { description: 'For type external.' },
    ),
    connectionConfig: object(
      { domainId: string(), channelId: string(), broker: string({ description: 'e.g. mqtt://mqtt-broker:1883' }) },
      { description: 'The MQTT domain, channel and broker the proplet uses.' },
    ),
    resources: cpuMemory('What the proplet offers.'),
  },
  { description: 'A proplet: pods run by the adapter, or an external device.' },
);
export type PropletSpec = TypeOf<typeof propletSpecSchema>;

const propletStatusSchema = object({
  phase: enumOf(PROPLET_PHASES),
  propletIds: array(string(), { description: 'The registered proplets: one per pod, or the device.' }),
  replicas: integer({ description: 'Proplet pods that exist.', minimum: 0, format: 'int32' }),
  readyReplicas: integer({ description: 'Proplets registered and alive.', minimum: 0, format: 'int32' }),
  selector: string({ description: 'Label selector of the pods (for the scale subresource).' }),
  lastHeartbeat: time(),
  runningTasks: integer({ minimum: 0 }),
  credentialsSecret: string({ description: 'The Secret holding the MQTT credentials.' }),
  message,
  observedGeneration,
  conditions,
});
export type PropletStatus = TypeOf<typeof propletStatusSchema>;

// --- Task ------------------------------------------------------------------------------

const taskSpecSchema = object(
  {
    name: string({ description: 'The task name; defaults to metadata.name.' }),
    ...moduleProps,
    preferredPropletType: enumOf(['k8s', 'external', 'any'], { description: 'Which kind of proplet the hybrid scheduler prefers.' }),
    propletSelector: object({
      matchDeviceTypes: array(string()),
      matchCapabilities: array(string()),
      matchLabels: record(string()),
    }),
    resourceRequirements: cpuMemory('What the task needs.'),
  },
  { description: 'A task for the hybrid scheduler: k8s or external proplets.', atLeastOne: moduleSource },
);
export type TaskSpec = TypeOf<typeof taskSpecSchema>;
export type TaskStatus = TypeOf<typeof taskStatusSchema>;

// --- resources -----------------------------------------------------------------------------

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

/** metadata as the API sends it (timestamps are RFC 3339 strings). */
export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string;
  deletionTimestamp?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
  finalizers?: string[];
}

export interface Resource<K extends string, Spec, Status> {
  apiVersion: string;
  kind: K;
  metadata: ObjectMeta;
  spec: Spec;
  status?: Status;
}

export type WasmTask = Resource<'WasmTask', WasmTaskSpec, WasmTaskStatus>;
export type PropletGroup = Resource<'PropletGroup', PropletGroupSpec, PropletGroupStatus>;
export type FederatedJob = Resource<'FederatedJob', FederatedJobSpec, FederatedJobStatus>;
export type TrainingRound = Resource<'TrainingRound', TrainingRoundSpec, TrainingRoundStatus>;
export type ModelCheckpoint = Resource<'ModelCheckpoint', ModelCheckpointSpec, ModelCheckpointStatus>;
export type Proplet = Resource<'Proplet', PropletSpec, PropletStatus>;
export type Task = Resource<'Task', TaskSpec, TaskStatus>;

// --- kinds: names, columns, subresources -------------------------------------------------------

export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description?: string;
  /** 1: only with -o wide. */
  priority?: number;
}

export interface KindDef<K extends string = string, Spec = unknown, Status = unknown> {
  group: string;
  version: string;
  apiVersion: string;
  kind: K;
  plural: string;
  singular: string;
  shortNames: string[];
  description: string;
  spec: Schema<Spec>;
  status: Schema<Status>;
  columns: PrinterColumn[];
  /** The scale subresource (kubectl scale). */
  scale?: { specReplicasPath: string; statusReplicasPath: string; labelSelectorPath: string };
}

const column = (type: PrinterColumn['type']) => (name: string, jsonPath: string, priority?: 1): PrinterColumn => ({ name, type, jsonPath, ...(priority ? { priority } : {}) });
const text = column('string');
const count = column('integer');
const date = column('date');
const age = date('Age', '.metadata.creationTimestamp');
const phase = text('Phase', '.status.phase');
/** Shown with -o wide only. */
const WIDE = 1;

/** What `kubectl get` shows of each kind. */
const COLUMNS: Record<string, PrinterColumn[]> = {
  WasmTask: [phase, text('Proplet', '.status.propletId'), text('Image', '.spec.imageUrl', WIDE), text('Task', '.status.taskId', WIDE), age],
  PropletGroup: [text('Algorithm', '.spec.scheduling.algorithm'), count('Proplets', '.status.totalProplets'), count('Available', '.status.availableProplets'), age],
  FederatedJob: [phase, count('Round', '.status.currentRound'), count('Completed', '.status.completedRounds'), count('Total', '.spec.rounds.total'), text('Model', '.status.aggregatedModelRef', WIDE), age],
  TrainingRound: [phase, text('Job', '.spec.federatedJobRef.name'), count('Updates', '.status.updatesReceived'), count('Required', '.status.updatesRequired'), age],
  ModelCheckpoint: [phase, text('Job', '.spec.federatedJobRef.name'), text('Round', '.spec.roundRef.name'), text('Algorithm', '.spec.algorithm'), text('Model', '.spec.modelRef', WIDE), age],
  Proplet: [
    text('Type', '.spec.type'),
    text('Device Type', '.spec.external.deviceType'),
    count('Replicas', '.spec.k8s.replicas'),
    phase,
    count('Running Tasks', '.status.runningTasks'),
    date('Last Heartbeat', '.status.lastHeartbeat', WIDE),
    age,
  ],
  Task: [phase, text('Proplet', '.status.propletId'), text('Preferred', '.spec.preferredPropletType'), age],
};

/** A kind: plural and singular are its name in lower case (+s); the spec schema's description describes it. */
function kind<K extends string, Spec, Status>(group: string, name: K, shortName: string, spec: Schema<Spec>, status: Schema<Status>): KindDef<K, Spec, Status> {
  const singular = name.toLowerCase();
  const description = `${spec.openapi.description?.replace(/\.$/, '')} (${group === GROUP ? 'seed 000' : 'seeds 003/004'}).`;
  const names = { kind: name, singular, plural: `${singular}s`, shortNames: [shortName] };
  return { group, version: VERSION, apiVersion: `${group}/${VERSION}`, ...names, description, spec, status, columns: COLUMNS[name]! };
}

export const WASM_TASK = kind(GROUP, 'WasmTask', 'wt', wasmTaskSpecSchema, taskStatusSchema);
export const PROPLET_GROUP = kind(GROUP, 'PropletGroup', 'pg', propletGroupSpecSchema, propletGroupStatusSchema);
export const FEDERATED_JOB = kind(GROUP, 'FederatedJob', 'fj', federatedJobSpecSchema, federatedJobStatusSchema);
export const TRAINING_ROUND = kind(GROUP, 'TrainingRound', 'tr', trainingRoundSpecSchema, trainingRoundStatusSchema);
export const MODEL_CHECKPOINT = kind(GROUP, 'ModelCheckpoint', 'mc', modelCheckpointSpecSchema, modelCheckpointStatusSchema);
export const PROPLET = {
  ...kind(HYBRID_GROUP, 'Proplet', 'ppl', propletSpecSchema, propletStatusSchema),
  scale: { specReplicasPath: '.spec.k8s.replicas', statusReplicasPath: '.status.replicas', labelSelectorPath: '.status.selector' },
};
export const TASK = kind(HYBRID_GROUP, 'Task', 'ptask', taskSpecSchema, taskStatusSchema);

export const KINDS = [WASM_TASK, PROPLET_GROUP, FEDERATED_JOB, TRAINING_ROUND, MODEL_CHECKPOINT, PROPLET, TASK] as const;

/** The OpenAPI schema of a whole object of a kind. */
export function objectSchema(k: KindDef): OpenApi {
  return {
    type: 'object',
    description: k.description,
    properties: {
      apiVersion: { type: 'string' },
      kind: { type: 'string' },
      metadata: { type: 'object' },
      spec: k.spec.openapi,
      status: k.status.openapi,
    },
    required: ['spec'],
  };
}
