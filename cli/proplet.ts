// `propeller proplet`: one node proplet against a broker, until interrupted.

import { createLogger } from '../control-plane/log.ts';
import { parseBytes, parseDuration } from '../control-plane/config.ts';
import { NodeProplet } from '../proplet-node/proplet.ts';
import { UsageError, int, pairs, str, type Command } from './args.ts';
import { brokerUrl, scopeFrom, scopeHelp, scopeOptions } from './settings.ts';

export const proplet: Command = {
  usage: 'propeller proplet [options]',
  summary: 'run a node proplet that executes wasm tasks',
  options: {
    ...scopeOptions,
    broker: { type: 'string' },
    id: { type: 'string' },
    secret: { type: 'string' },
    'max-tasks': { type: 'string' },
    memory: { type: 'string' },
    heartbeat: { type: 'string' },
    encoding: { type: 'string' },
    'device-type': { type: 'string' },
    type: { type: 'string' },
    label: { type: 'string', multiple: true },
    'log-level': { type: 'string' },
    once: { type: 'boolean' },
  },
  help: `  --broker URL           broker (env MQTT_BROKER, default mqtt://127.0.0.1:1883)
  --id ID                proplet id = MQTT username (env PROPLET_ID; required)
  --secret SECRET        its MQTT password (env PROPLET_SECRET; from 'propeller proplet add ID')
  --max-tasks N          tasks at once (env PROPLET_MAX_TASKS, default 4)
  --memory SIZE          memory offered to tasks, e.g. 512Mi (env PROPLET_MEMORY)
  --heartbeat DURATION   heartbeat period (env PROPLET_HEARTBEAT, default 10s)
  --encoding json|cbor   payload encoding (default json)
  --device-type TYPE     reported device type (default node)
  --type external|k8s    proplet type for hybrid scheduling (env PROPLET_TYPE, default external)
  --label KEY=VALUE      label for selectors (repeat)
  --log-level LEVEL      debug, info, warn, error or silent (default info)
  --once                 exit after the first task has finished: 0 if it completed, 1 if not
                         (env PROPLET_ONCE=true; a Kubernetes Job per task runs it so)
${scopeHelp}`,
  async run(v) {
    const env = process.env;
    const id = str(v.id) ?? env.PROPLET_ID;
    if (!id) throw new UsageError('--id (or env PROPLET_ID) is required');
    const encoding = str(v.encoding) ?? 'json';
    if (encoding !== 'json' && encoding !== 'cbor') throw new UsageError('--encoding must be json or cbor');
    const type = str(v.type) ?? env.PROPLET_TYPE ?? 'external';
    if (type !== 'external' && type !== 'k8s') throw new UsageError('--type must be external or k8s');
    let heartbeatMs: number;
    let memory: number | undefined;
    try {
      heartbeatMs = parseDuration('--heartbeat', str(v.heartbeat) ?? env.PROPLET_HEARTBEAT ?? '10s');
      const mem = str(v.memory) ?? env.PROPLET_MEMORY;
      memory = mem ? parseBytes('--memory', mem) : undefined;
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    const log = createLogger((str(v['log-level']) ?? 'info') as 'info');
    const once = v.once === true || env.PROPLET_ONCE === 'true';
    let finished: ((code: number) => void) | undefined;
    const done = new Promise<number>((resolve) => {
      finished = resolve;
      process.once('SIGINT', () => resolve(0));
      process.once('SIGTERM', () => resolve(0));
    });
    const p = new NodeProplet({
      id,
      secret: str(v.secret) ?? env.PROPLET_SECRET,
      url: brokerUrl(str(v.broker) ?? env.MQTT_BROKER ?? 'mqtt://127.0.0.1:1883'),
      scope: scopeFrom(v),
      maxTasks: int('max-tasks', v['max-tasks'] ?? env.PROPLET_MAX_TASKS, 4),
      ...(memory !== undefined ? { memoryBytes: memory } : {}),
      heartbeatMs,
      encoding,
      deviceType: str(v['device-type']) ?? 'node',
      propletType: type,
      labels: pairs('label', v.label),
      log: (l, m, f) => log(l, m, { c: id, ...f }),
      ...(once ? { onTaskFinished: (_task: string, status: string) => finished!(status === 'completed' ? 0 : 1) } : {}),
    });
    await p.start();
    log('info', 'proplet running', { id, ...(once ? { once } : {}) });
    const code = await done;
    await p.close();
    return code;
  },
};
