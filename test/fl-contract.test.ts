// The FL module contract as both proplet kinds apply it: the module's stdout
// becomes update messages that fit the packet limit, or one that says why not.

import test from 'ava';
import { decode, encode } from '../protocol/index.ts';
import { decodeModel, encodeModel, MODEL_FORMAT, type Model } from '../protocol/model-format.ts';
import { flInput, flOutcome } from '../wasm-runtime/fl.ts';

const model: Model = { format: MODEL_FORMAT, tensors: [{ name: 'w', shape: [300], data: new Float32Array(300) }, { name: 'b', shape: [], data: new Float32Array(1) }] };
const input = flInput(encodeModel(model));
const head = { proplet_id: 'p1', round_id: 'round-1-j', task_id: 't1' };
const trained = new Float32Array(301).map((_, i) => i / 2);
const line = (o: object) => `training...\n${JSON.stringify(o)}\n`;
const good = line({ num_samples: 40, loss: 0.25, accuracy: 0.5, weights: Buffer.from(trained.buffer).toString('base64') });

test('stdin holds the parameters, /data/model.cbor the model', (t) => {
  t.is(input.stdin.length, 301 * 4);
  t.deepEqual(decodeModel(input.files['model.cbor']!), model);
});

test('a good update goes whole when it fits, in parts that each fit otherwise; results carry samples and metrics', (t) => {
  const whole = flOutcome(head, { ok: true, stdout: good }, input, 1 << 20, 'cbor');
  t.is(whole.updates.length, 1);
  t.deepEqual([...decodeModel(whole.updates[0]!.model!).tensors[0]!.data.subarray(0, 3)], [0, 0.5, 1]);
  t.deepEqual(whole.results, { num_samples: 40, loss: 0.25, accuracy: 0.5 });
  t.is(whole.error, undefined);
  const parts = flOutcome(head, { ok: true, stdout: good }, input, 512, 'cbor');
  t.true(parts.updates.length > 2);
  for (const u of parts.updates) {
    t.true(encode('fl.update', u, 'cbor').length <= 512);
    t.is(decode('fl.update', encode('fl.update', u, 'cbor')).msg.parts, parts.updates.length);
  }
  t.is(parts.updates.reduce((n, u) => n + u.data!.length / 4, 0), 301);
});

test('no valid update: the task fails with the reason and the round hears it; a failed run just says so', (t) => {
  for (const [stdout, why] of [
    ['nothing here\n', /printed no update/],
    [line({ num_samples: 0, weights: '' }), /num_samples must be a positive integer/],
    [line({ num_samples: 3, weights: Buffer.alloc(8).toString('base64') }), /weights hold 8 bytes; the model has 301 float32 values/],
  ] as const) {
    const o = flOutcome(head, { ok: true, stdout }, input, 1 << 20, 'cbor');
    t.regex(o.error!, why);
    t.deepEqual(o.updates, [{ v: 1, ...head, error: o.error }]);
    t.is(o.results, undefined);
  }
  const failed = flOutcome(head, { ok: false, stdout: '', error: 'trap: unreachable' }, input, 1 << 20, 'cbor');
  t.is(failed.error, undefined, 'the run already failed');
  t.deepEqual(failed.updates, [{ v: 1, ...head, error: 'trap: unreachable' }]);
});
