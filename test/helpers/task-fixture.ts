// A plain task record for tests that write tasks straight into a store or a
// scheduler, without going through TaskService.create.

import type { Task } from '../../control-plane/model.ts';

export const FIXTURE_AT = '2026-12-07T02:00:00.000Z';

export function taskFixture(id: string, over: Partial<Task> = {}): Task {
  return {
    id,
    name: id,
    cli_args: [],
    inputs: [],
    env: {},
    daemon: false,
    resources: {},
    labels: {},
    state: 'Pending',
    start_requested: false,
    attempt: 0,
    attempts: [],
    history: [{ state: 'Pending', at: FIXTURE_AT, reason: 'created' }],
    created_at: FIXTURE_AT,
    updated_at: FIXTURE_AT,
    ...over,
  };
}
