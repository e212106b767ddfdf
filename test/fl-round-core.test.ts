// The FL coordinator's pure core, without MQTT, HTTP or a store: what a job
// does next, and what a round does with task events and updates.

import test from 'ava';
import type { FederatedJob, TrainingRound } from '../control-plane/fl/resources.ts';
import { nextStep, onDeadline, onFolded, onTaskState, participantFailed, screenUpdate, stillToCome, type RoundCommand } from '../control-plane/fl/round-core.ts';

function job(o: { phase?: FederatedJob['status']['phase']; model?: boolean; completed?: number; total?: number; retries?: number } = {}): FederatedJob {
  return {
    kind: 'FederatedJob',
    metadata: { name: 'j', uid: 'u', creationTimestamp: '2026-01-01T00:00:00Z' },
    spec: { experimentId: 'e', modelRef: 'sha256:x', taskWasmImage: 'sha256:y', kOfN: 2, timeoutSeconds: 30, rounds: { total: o.total ?? 3 }, aggregator: { algorithm: 'fedavg' }, roundRetries: o.retries ?? 0 },
    status: { phase: o.phase ?? 'Running', currentRound: 0, completedRounds: o.completed ?? 0, participants: [], retriesUsed: 0, ...(o.model === false ? {} : { currentModelRef: 'sha256:x' }) },
  };
}

function round(n: number, phase: TrainingRound['status']['phase'], o: { at?: string; k?: number; participants?: [string, string][] } = {}): TrainingRound {
  const participants = o.participants ?? [['a', 'Pending'], ['b', 'Pending'], ['c', 'Pending']];
  return {
    kind: 'TrainingRound',
    metadata: { name: `round-${n}`, uid: 'u', creationTimestamp: o.at ?? `2026-01-01T00:00:0${n}Z` },
    spec: { roundId: `round-${n}`, federatedJobRef: { name: 'j' }, modelRef: 'sha256:x', taskWasmImage: 'sha256:y', participants: participants.map(([p]) => p), kOfN: o.k ?? 2, timeoutSeconds: 30, round: n },
    status: {
      phase,
      participants: participants.map(([p, ph]) => ({ propletId: p, taskId: `task-${p}`, phase: ph as 'Pending' })),
      updatesReceived: 0,
      updatesRequired: o.k ?? 2,
      refused: { late: 0, notParticipant: 0, stale: 0, invalid: 0 },
      restarts: 0,
      message: 'why',
    },
  };
}

const stepRows: [string, FederatedJob | undefined, TrainingRound[], string][] = [
  ['no job: nothing', undefined, [], 'wait'],
  ['an ended job: nothing', job({ phase: 'Completed' }), [], 'wait'],
  ['no model yet: fetch it first', job({ model: false, phase: 'Pending' }), [], 'fetch-model'],
  ['a fresh job starts round 1', job({ phase: 'Pending' }), [], 'begin 1 retry 0 start'],
  ['a round in progress drives the job', job(), [round(1, 'Running')], 'wait'],
  ['a completed round: the next', job({ completed: 1 }), [round(1, 'Completed')], 'begin 2 retry 0'],
  ['a completed round the job does not count yet: catch up, then the next', job({ completed: 0 }), [round(1, 'Completed')], 'begin 2 retry 0 catch-up round-1'],
  ['the last round completed: the job completes', job({ completed: 3 }), [round(1, 'Completed'), round(2, 'Completed'), round(3, 'Completed')], 'end Completed AllRoundsCompleted'],
  ['the last round completed, not yet counted: catch up and complete', job({ completed: 2 }), [round(1, 'Completed'), round(2, 'Completed'), round(3, 'Completed')], 'end Completed AllRoundsCompleted catch-up round-3'],
  ['a failed round with retries left: again', job({ retries: 1 }), [round(1, 'Failed')], 'begin 1 retry 1'],
  ['a failed round without retries: the job fails', job({ retries: 1 }), [round(1, 'Failed'), round(1, 'Failed', { at: '2026-01-01T00:01:00Z' })], 'end Failed RoundFailed'],
];

for (const [name, j, rounds, want] of stepRows) {
  test(`job: ${name}`, (t) => {
    const s = nextStep(j, rounds);
    const got =
      s.t === 'begin'
        ? `begin ${s.n} retry ${s.retry}${s.start ? ' start' : ''}${s.catchUp ? ` catch-up ${s.catchUp.metadata.name}` : ''}`
        : s.t === 'end'
          ? `end ${s.phase} ${s.reason}${s.catchUp ? ` catch-up ${s.catchUp.metadata.name}` : ''}`
          : s.t;
    t.is(got, want);
  });
}

const kinds = (cs: RoundCommand[]) => cs.map((c) => (c.t === 'fail-round' ? `fail-round ${c.reason}` : c.t)).filter((k) => k !== 'log');

test('round: task events move participants; a completed task waits for its update; k out of reach fails the round', (t) => {
  const r = round(1, 'Running', { k: 2 });
  t.deepEqual(kinds(onTaskState(r, 'a', 'task-a', 'Running')), ['touch']);
  t.is(r.status.participants[0]!.phase, 'Running');
  t.deepEqual(kinds(onTaskState(r, 'a', 'task-old', 'Failed')), [], 'an older task of the participant does not count');
  t.deepEqual(kinds(onTaskState(r, 'a', 'task-a', 'Completed')), ['await-update']);
  t.deepEqual(kinds(onTaskState(r, 'b', 'task-b', 'Failed', 'boom')), ['abort-update', 'touch']);
  t.is(r.status.participants[1]!.reason, 'boom');
  t.deepEqual(kinds(participantFailed(r, 'c', 'no update')), ['abort-update', 'touch', 'fail-round NotEnoughUpdates']);
  t.deepEqual(kinds(participantFailed(r, 'c', 'again')), [], 'once');
});

test('round: updates are screened, folded, and the k-th closes the round', (t) => {
  const r = round(1, 'Running', { k: 2 });
  const screen = (p: string, task = `task-${p}`, open = true, error?: string) => screenUpdate(r, { proplet_id: p, task_id: task, ...(error ? { error } : {}) }, open);
  t.is(screen('x').verdict, 'not_participant');
  t.is(screen('a', 'task-old').verdict, 'stale');
  t.is(screen('a', 'task-a', false).verdict, 'late');
  t.deepEqual(r.status.refused, { late: 1, notParticipant: 1, stale: 1, invalid: 0 });
  t.deepEqual(kinds(screen('a').commands), ['fold']);
  t.is(onFolded(r, 'a', { t: 'partial' }).verdict, 'partial');
  t.is(r.status.participants[0]!.phase, 'Running');
  t.deepEqual(onFolded(r, 'a', { t: 'complete', numSamples: 10, count: 1 }), { verdict: 'accepted', commands: [{ t: 'touch' }] });
  t.is(screen('a').verdict, 'duplicate');
  const bad = onFolded(r, 'b', { t: 'refused', reason: 'shape', message: 'wrong', verdict: 'shape' });
  t.is(bad.verdict, 'shape');
  t.is(r.status.participants[1]!.phase, 'Refused');
  t.is(screen('b').verdict, 'failed_participant');
  t.deepEqual(kinds(onFolded(r, 'c', { t: 'complete', numSamples: 5, count: 2 }).commands), ['aggregate']);
  t.is(r.status.updatesReceived, 2);
});

test('round: a participant reporting an error is out; the deadline fails a running round only', (t) => {
  const r = round(1, 'Running', { k: 3 });
  const s = screenUpdate(r, { proplet_id: 'a', task_id: 'task-a', error: 'no data' }, true);
  t.is(s.verdict, 'failed_participant');
  t.deepEqual(kinds(s.commands), ['abort-update', 'touch', 'fail-round NotEnoughUpdates']);
  t.deepEqual(kinds(onDeadline(round(1, 'Running'))), ['fail-round Timeout']);
  t.deepEqual(onDeadline(round(1, 'Completed')), []);
});

test('the updates still to come besides one participant: those not yet submitted, refused or failed', (t) => {
  const r = round(1, 'Running', { participants: [['a', 'Pending'], ['b', 'Running'], ['c', 'Submitted'], ['d', 'Refused'], ['e', 'Failed'], ['f', 'Pending']] });
  t.is(stillToCome(r, 'a'), 2); // b and f
  t.is(stillToCome(r, 'c'), 3);
});
