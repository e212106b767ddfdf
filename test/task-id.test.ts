import test from 'ava';
import { taskId } from '../control-plane/task-id.ts';

const V7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

test('task ids are version 7 UUIDs, each greater than the last as text (the store appends them), within one millisecond and across a clock stepped back', (t) => {
  const ms = Date.parse('2026-12-07T04:00:00.000Z');
  const ids = [taskId(ms)];
  // more than the 4,096 a millisecond's counter holds: the ids move on to the next millisecond
  for (let i = 0; i < 10_000; i++) ids.push(taskId(ms));
  ids.push(taskId(ms - 5_000));
  ids.push(taskId(Date.now()));
  for (const id of ids) t.regex(id, V7);
  for (let i = 1; i < ids.length; i++) if (!(ids[i - 1]! < ids[i]!)) t.fail(`${ids[i - 1]} is not before ${ids[i]}`);
  t.is(new Set(ids).size, ids.length);
  t.is(parseInt(ids[0]!.replace(/-/g, '').slice(0, 12), 16), ms, 'the first 48 bits are the millisecond');
});
