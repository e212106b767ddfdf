export { PropletCore, runKey, type Command, type Event, type IgnoreReason, type Outcome, type Profile, type StartInfo } from './core.ts';
export { PAGE_BYTES, RamBudget, type Need } from './budget.ts';
export { encodeResult } from './result.ts';
export { peekStart, readStartRef, type StartRef } from './start-ref.ts';
export { outcomeOf, taskRun, type TaskRun } from './task-run.ts';
