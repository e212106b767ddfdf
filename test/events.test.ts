// GET /events on its own: changes are coalesced per tick (the latest state of
// each object, once), wire lines go only to streams that asked for them, and
// nothing is kept while no one listens.

import test from 'ava';
import { readFileSync } from 'node:fs';
import { request, type IncomingMessage } from 'node:http';
import { buildExamples, EXAMPLES_BUILD_DIR } from '../examples/build.ts';
import { startStack, until, type Stack } from './helpers/stack.ts';

interface Frame {
  event: string;
  data: unknown;
}

/** An /events client that collects parsed frames. */
async function listen(s: Stack, query = ''): Promise<{ frames: Frame[]; res: IncomingMessage }> {
  const { port } = new URL(s.apiUrl);
  const res = await new Promise<IncomingMessage>((resolve, reject) => request({ host: '127.0.0.1', port, path: `/events${query}` }, resolve).on('error', reject).end());
  const frames: Frame[] = [];
  let buf = '';
  res.setEncoding('utf8');
  res.on('data', (c: string) => {
    buf += c;
    let i: number;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const event = /^event: (.*)$/m.exec(block)?.[1];
      const data = /^data: (.*)$/m.exec(block)?.[1];
      if (event && data) frames.push({ event, data: JSON.parse(data) });
    }
  });
  await until(() => frames.some((f) => f.event === 'hello'), 'hello');
  return { frames, res };
}

test('twenty-one heartbeats in one tick are one proplet change with the latest load; wire lines only with ?wire=1', async (t) => {
  const s = await startStack({ proplets: 1, health: { offlineThresholdMs: 60_000, failureThresholdMs: 120_000 } });
  t.teardown(() => s.close());
  const plain = await listen(s);
  const wired = await listen(s, '?wire=1');
  t.teardown(() => (plain.res.destroy(), wired.res.destroy()));
  t.is(s.cp.events.clientCount, 2);
  // running_tasks 1..21 mark this tick's heartbeats (the proplet's own report 0)
  for (let i = 1; i <= 21; i++) s.cp.registry.alive({ proplet_id: 'p1', status: 'alive', running_tasks: i } as never);
  // a message as the broker hands it to the control plane: shown on the wire, decoded
  s.cp.gateway.handle('m/propeller/c/control/messages/control/proplet/alive', Buffer.from(JSON.stringify({ proplet_id: 'p1', status: 'alive', running_tasks: 99 })));
  s.cp.events.flush();
  const marked = () =>
    plain.frames
      .filter((f) => f.event === 'proplets')
      .flatMap((f) => (f.data as { changed: { id: string; running_tasks: number; alive_history?: unknown }[] }).changed)
      .filter((p) => p.id === 'p1' && p.running_tasks > 0 && p.running_tasks <= 21);
  await until(() => marked().length > 0 && wired.frames.some((f) => f.event === 'wire'), 'frames of the tick');
  t.deepEqual(marked().map((p) => p.running_tasks), [21], 'one change, the latest');
  t.is(marked()[0]!.alive_history, undefined, 'the heartbeat history stays out of the stream');
  t.false(plain.frames.some((f) => f.event === 'wire'));
  const wire = wired.frames.find((f) => f.event === 'wire')!.data as { lines: { dir: string; kind: string; proplet_id: string; payload: { running_tasks: number } }[] };
  const line = wire.lines.find((l) => l.kind === 'proplet.alive' && l.payload.running_tasks === 99);
  t.truthy(line);
  t.is(line!.dir, 'in');
  t.is(line!.proplet_id, 'p1');
});

test('a task\'s transitions reach the stream without its output; after the last client leaves nothing is kept', async (t) => {
  const s = await startStack({ proplets: 1 });
  t.teardown(() => s.close());
  const c = await listen(s);
  await buildExamples();
  const file = readFileSync(`${EXAMPLES_BUILD_DIR}/hello.wasm`).toString('base64');
  const task = await s.api.createTask({ name: 'hello', file, cli_args: ['x'] } as never, { start: true, waitMs: 60_000 });
  await until(() => c.frames.some((f) => f.event === 'tasks' && (f.data as { changed: { id: string; state: string }[] }).changed.some((x) => x.id === task.id && x.state === 'Completed')), 'Completed pushed');
  const done = c.frames
    .filter((f) => f.event === 'tasks')
    .flatMap((f) => (f.data as { changed: Record<string, unknown>[] }).changed)
    .find((x) => x.id === task.id && x.state === 'Completed')!;
  t.is(done.result, undefined);
  t.true(done.has_result);
  c.res.destroy();
  await until(() => s.cp.events.clientCount === 0, 'client gone');
  s.cp.registry.alive({ proplet_id: 'p1', status: 'alive', running_tasks: 3 } as never);
  // a new client starts from 'hello' (and fetches the state): nothing heard while no one listened is replayed
  const next = await listen(s);
  t.teardown(() => next.res.destroy());
  s.cp.events.flush();
  s.cp.registry.alive({ proplet_id: 'p1', status: 'alive', running_tasks: 4 } as never);
  s.cp.events.flush();
  await until(() => next.frames.some((f) => f.event === 'proplets'), 'the next change');
  const seen = next.frames.filter((f) => f.event === 'proplets').flatMap((f) => (f.data as { changed: { running_tasks: number }[] }).changed.map((x) => x.running_tasks));
  t.deepEqual(seen, [4]);
});
