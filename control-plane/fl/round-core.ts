// The FL coordinator's decisions, pure: a job's or a round's record + an event
// -> commands (and the record's new participant state). No store, no timers, no
// MQTT, no aggregator: coordinator.ts executes the commands (creates and stops
// tasks, folds updates into the aggregator, writes checkpoints, arms timers).
// test/fl-round-core.test.ts drives it with tables.

import type { FlUpdate } from '../../protocol/index.ts';
import type { FederatedJob, RoundRefusals, TrainingRound } from './resources.ts';

// --- jobs -------------------------------------------------------------------------

export type JobStep =
  /** Nothing to do now: the job has ended, or a round in progress drives it on when it ends. */
  | { t: 'wait' }
  /** The initial model is not in the store yet: fetch it, then decide again. */
  | { t: 'fetch-model' }
  | { t: 'end'; phase: 'Completed' | 'Failed'; reason: string; message: string; catchUp?: TrainingRound }
  /** Start round `n` (`retry` > 0: again, after it failed). `catchUp`: the last round completed but the job's record does not say so yet. */
  | { t: 'begin'; n: number; retry: number; catchUp?: TrainingRound; start?: boolean };

/** What moves a job forward from its stored state: the same answer however often it is asked. */
export function nextStep(job: FederatedJob | undefined, rounds: readonly TrainingRound[]): JobStep {
  if (!job || job.status.phase === 'Completed' || job.status.phase === 'Failed') return { t: 'wait' };
  if (!job.status.currentModelRef) return { t: 'fetch-model' };
  const sorted = [...rounds].sort((a, b) => (a.spec.round ?? 0) - (b.spec.round ?? 0) || a.metadata.creationTimestamp.localeCompare(b.metadata.creationTimestamp));
  const last = sorted.at(-1);
  if (last && !isFinal(last)) return { t: 'wait' };
  if (last?.status.phase === 'Failed') {
    const n = last.spec.round ?? 1;
    const retries = sorted.filter((r) => r.spec.round === n).length - 1;
    if (retries >= (job.spec.roundRetries ?? 0)) return { t: 'end', phase: 'Failed', reason: 'RoundFailed', message: `round ${n} failed: ${last.status.message ?? 'unknown reason'}` };
    return { t: 'begin', n, retry: retries + 1 };
  }
  const done = last ? (last.spec.round ?? 0) : 0;
  const catchUp = last && job.status.completedRounds < done ? last : undefined;
  const completed = catchUp ? (catchUp.spec.round ?? job.status.completedRounds + 1) : job.status.completedRounds;
  if (completed >= job.spec.rounds.total) return { t: 'end', phase: 'Completed', reason: 'AllRoundsCompleted', message: `${completed} rounds completed`, ...(catchUp ? { catchUp } : {}) };
  return { t: 'begin', n: completed + 1, retry: 0, ...(catchUp ? { catchUp } : {}), ...(job.status.phase === 'Pending' ? { start: true } : {}) };
}

// --- rounds ------------------------------------------------------------------------

export type RoundCommand =
  /** A participant's change, written with the next flush. */
  | { t: 'touch' }
  /** The task completed; its update may still be on its way: wait this long before counting it failed. */
  | { t: 'await-update'; propletId: string; taskId: string }
  /** Drop what the aggregator holds of this participant (a half-streamed update). */
  | { t: 'abort-update'; propletId: string }
  /** Fold the update into the aggregator; answer with `folded`. */
  | { t: 'fold'; propletId: string }
  /** k updates are in: aggregate, write the checkpoint, complete the round. */
  | { t: 'aggregate' }
  | { t: 'fail-round'; reason: string; message: string }
  | { t: 'log'; level: 'warn' | 'info'; msg: string; fields: Record<string, unknown> };

export type UpdateVerdict = 'accepted' | 'partial' | 'duplicate' | 'unknown_round' | 'late' | 'not_participant' | 'stale' | 'invalid' | 'shape' | 'non_finite' | 'samples' | 'capacity' | 'failed_participant';

/** A task of the round changed state. */
export function onTaskState(r: TrainingRound, propletId: string, taskId: string, state: string, error?: string): RoundCommand[] {
  const p = r.status.participants.find((x) => x.propletId === propletId);
  if (!p || p.taskId !== taskId || settled(p.phase)) return [];
  if (state === 'Running') {
    if (p.phase !== 'Pending') return [];
    p.phase = 'Running';
    return [{ t: 'touch' }];
  }
  if (state === 'Completed') return [{ t: 'await-update', propletId, taskId }]; // the update travels on its own topic
  if (state === 'Failed' || state === 'Stopped') return participantFailed(r, propletId, error ?? `task ${state.toLowerCase()}`, taskId);
  return [];
}

/** No update will come from this participant: it is out, and the round fails once k is out of reach. */
export function participantFailed(r: TrainingRound, propletId: string, reason: string, taskId?: string): RoundCommand[] {
  if (r.status.phase !== 'Running') return [];
  const p = r.status.participants.find((x) => x.propletId === propletId);
  if (!p || (taskId && p.taskId !== taskId) || settled(p.phase)) return [];
  p.phase = 'Failed';
  p.reason = reason;
  return [{ t: 'log', level: 'warn', msg: 'round participant failed', fields: { round: r.metadata.name, proplet_id: propletId, reason } }, { t: 'abort-update', propletId }, { t: 'touch' }, ...reachable(r)];
}

/** The round's deadline passed. */
export function onDeadline(r: TrainingRound): RoundCommand[] {
  if (r.status.phase !== 'Running') return [];
  return [{ t: 'fail-round', reason: 'Timeout', message: `timed out after ${r.spec.timeoutSeconds} s with ${r.status.updatesReceived} of ${r.spec.kOfN} required updates` }];
}

/**
 * An update arrives (already valid as a protocol message): refused with a
 * reason and a counter, a duplicate, the end of a participant, or folded.
 * `open`: the round runs here and has an aggregator.
 */
export function screenUpdate(r: TrainingRound, msg: Pick<FlUpdate, 'proplet_id' | 'task_id' | 'error'>, open: boolean): { verdict?: UpdateVerdict; commands: RoundCommand[] } {
  const p = r.status.participants.find((x) => x.propletId === msg.proplet_id);
  const refuse = (counter: keyof RoundRefusals, verdict: UpdateVerdict) => {
    r.status.refused[counter]++;
    return { verdict, commands: [{ t: 'touch' } as RoundCommand] };
  };
  if (!p) return refuse('notParticipant', 'not_participant');
  if (p.taskId !== msg.task_id) return refuse('stale', 'stale');
  if (p.phase === 'Submitted') return { verdict: 'duplicate', commands: [] };
  if (r.status.phase !== 'Running' || !open) return refuse('late', 'late');
  if (p.phase === 'Refused' || p.phase === 'Failed') return refuse('invalid', 'failed_participant');
  if (msg.error !== undefined) return { verdict: 'failed_participant', commands: participantFailed(r, p.propletId, `participant: ${msg.error}`) };
  return { commands: [{ t: 'fold', propletId: p.propletId }] };
}

/** What folding the update into the aggregator came to. */
export type Folded =
  | { t: 'partial' }
  | { t: 'duplicate-part' }
  | { t: 'complete'; numSamples: number; metrics?: Record<string, number>; count: number }
  | { t: 'refused'; reason: string; message: string; verdict: UpdateVerdict };

export function onFolded(r: TrainingRound, propletId: string, f: Folded): { verdict: UpdateVerdict; commands: RoundCommand[] } {
  const p = r.status.participants.find((x) => x.propletId === propletId)!;
  switch (f.t) {
    case 'duplicate-part':
      return { verdict: 'duplicate', commands: [] };
    case 'partial':
      if (p.phase === 'Pending') p.phase = 'Running';
      return { verdict: 'partial', commands: [] };
    case 'refused':
      p.phase = 'Refused';
      p.reason = `${f.reason}: ${f.message}`;
      r.status.refused.invalid++;
      return { verdict: f.verdict, commands: [{ t: 'abort-update', propletId }, { t: 'touch' }, ...reachable(r)] };
    case 'complete':
      p.phase = 'Submitted';
      p.numSamples = f.numSamples;
      if (f.metrics) p.metrics = f.metrics;
      delete p.reason;
      r.status.updatesReceived = f.count;
      return { verdict: 'accepted', commands: [f.count >= r.spec.kOfN ? { t: 'aggregate' } : { t: 'touch' }] };
  }
}

/** Fails the round as soon as k updates can no longer arrive. */
function reachable(r: TrainingRound): RoundCommand[] {
  const out = r.status.participants.filter((p) => p.phase === 'Failed' || p.phase === 'Refused').length;
  const possible = r.status.participants.length - out;
  if (possible >= r.spec.kOfN) return [];
  return [{ t: 'fail-round', reason: 'NotEnoughUpdates', message: `only ${possible} of ${r.status.participants.length} participants can still send an update, ${r.spec.kOfN} required` }];
}

/** How many participants other than `propletId` may still send an update. */
export function stillToCome(r: TrainingRound, propletId: string): number {
  let n = 0;
  for (const p of r.status.participants) if (p.propletId !== propletId && !settled(p.phase)) n++;
  return n;
}

function settled(phase: string): boolean {
  return phase === 'Submitted' || phase === 'Refused' || phase === 'Failed';
}

export function isFinal(r: TrainingRound): boolean {
  return r.status.phase === 'Completed' || r.status.phase === 'Failed';
}
