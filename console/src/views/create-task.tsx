// Creating a task: checked here before sending (required fields, URL schemes,
// KEY=VALUE lines, JSON inputs), and when the API refuses it anyway (not a
// wasm module, a bad selector, an unknown proplet) its own message is shown
// next to the field it names.

import { useState } from 'preact/hooks';
import { ApiError, postJson, type Task } from '../api.ts';

type Errors = Record<string, string>;

/** The API's field names (`proplet_selector.match_labels`, ...) mapped to this form's fields. */
function formField(apiField: string | undefined): string {
  if (!apiField) return 'form';
  if (apiField === 'file' || apiField === 'image_url') return 'source';
  if (apiField.startsWith('proplet_selector')) {
    if (apiField.includes('device_types')) return 'device_types';
    if (apiField.includes('capabilities')) return 'capabilities';
    return 'match_labels';
  }
  if (apiField === 'cli_args') return 'args';
  const known = ['name', 'inputs', 'env', 'proplet_id', 'labels', 'timeout'];
  return known.includes(apiField) ? apiField : 'form';
}

function keyValues(text: string, field: string, errors: Errors): Record<string, string> | undefined {
  const out: Record<string, string> = {};
  for (const raw of text.split(/\n|,/)) {
    const line = raw.trim();
    if (!line) continue;
    const i = line.indexOf('=');
    if (i <= 0) {
      errors[field] = `expected KEY=VALUE, got "${line}"`;
      return undefined;
    }
    out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
  }
  return Object.keys(out).length ? out : undefined;
}

function list(text: string): string[] | undefined {
  const xs = text.split(',').map((s) => s.trim()).filter(Boolean);
  return xs.length ? xs : undefined;
}

async function base64(f: File): Promise<string> {
  const bytes = new Uint8Array(await f.arrayBuffer());
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function CreateTask({ onCancel, onCreated }: { onCancel: () => void; onCreated: (t: Task) => void }) {
  const [errors, setErrors] = useState<Errors>({});
  const [source, setSource] = useState<'file' | 'url'>('file');
  const [busy, setBusy] = useState(false);

  const submit = async (e: Event) => {
    e.preventDefault();
    const form = e.target as HTMLFormElement;
    const fd = new FormData(form);
    const errs: Errors = {};
    const body: Record<string, unknown> = {};
    const name = String(fd.get('name') ?? '').trim();
    if (!name) errs.name = 'a name is required';
    body.name = name;
    if (source === 'file') {
      const f = fd.get('file');
      if (!(f instanceof File) || f.size === 0) errs.source = 'choose a .wasm file';
      else body.file = await base64(f);
    } else {
      const url = String(fd.get('image_url') ?? '').trim();
      if (!/^(oci|https?):\/\/\S+$/.test(url)) errs.source = 'an oci://host/repo:tag or https:// URL';
      else body.image_url = url;
    }
    const inputs = String(fd.get('inputs') ?? '').trim();
    if (inputs) {
      try {
        const v = JSON.parse(inputs.startsWith('[') ? inputs : `[${inputs}]`) as unknown;
        body.inputs = v;
      } catch {
        errs.inputs = 'a JSON array, or values separated by commas (2, 3 or "a", "b")';
      }
    }
    const args = String(fd.get('args') ?? '').trim();
    if (args) body.cli_args = args.split(/\s+/);
    const env = keyValues(String(fd.get('env') ?? ''), 'env', errs);
    if (env) body.env = env;
    const labels = keyValues(String(fd.get('labels') ?? ''), 'labels', errs);
    if (labels) body.labels = labels;
    const sel: Record<string, unknown> = {};
    const types = list(String(fd.get('device_types') ?? ''));
    if (types) sel.match_device_types = types;
    const caps = list(String(fd.get('capabilities') ?? ''));
    if (caps) sel.match_capabilities = caps;
    const ml = keyValues(String(fd.get('match_labels') ?? ''), 'match_labels', errs);
    if (ml) sel.match_labels = ml;
    if (Object.keys(sel).length) body.proplet_selector = sel;
    const pin = String(fd.get('proplet_id') ?? '').trim();
    if (pin) body.proplet_id = pin;
    if (fd.get('daemon')) body.daemon = true;
    setErrors(errs);
    if (Object.keys(errs).length) {
      form.querySelector<HTMLElement>('[aria-invalid="true"]')?.focus();
      return;
    }
    setBusy(true);
    try {
      // require_proplet: a mistyped pin is refused next to its field, not left waiting for a proplet that never comes
      const start = fd.get('start') ? '&start=true' : '';
      onCreated(await postJson<Task>(`/tasks?require_proplet=true${start}`, body));
    } catch (e) {
      const err = e as ApiError;
      setErrors({ [formField(err.field)]: err.message });
    } finally {
      setBusy(false);
    }
  };

  const field = (id: string) => ({
    id: `f-${id}`,
    'aria-invalid': errors[id] ? ('true' as const) : undefined,
    'aria-describedby': errors[id] ? `err-${id}` : undefined,
  });
  const err = (id: string) =>
    errors[id] ? (
      <span class="field-error" id={`err-${id}`} role="alert">
        {errors[id]}
      </span>
    ) : null;

  return (
    <form class="create" id="create-task" onSubmit={submit} noValidate aria-labelledby="create-h">
      <h3 id="create-h">New task</h3>
      {err('form')}
      <label for="f-name">Name (for a module without _start: the exported function to call)</label>
      <input name="name" {...field('name')} required autoFocus />
      {err('name')}
      <fieldset>
        <legend>Module</legend>
        <label class="inline">
          <input type="radio" name="source" value="file" checked={source === 'file'} onChange={() => setSource('file')} /> upload a .wasm
        </label>
        <label class="inline">
          <input type="radio" name="source" value="url" checked={source === 'url'} onChange={() => setSource('url')} /> from a URL
        </label>
        {source === 'file' ? (
          <>
            <label for="f-source">WebAssembly file</label>
            <input type="file" name="file" accept=".wasm,application/wasm" {...field('source')} />
          </>
        ) : (
          <>
            <label for="f-source">oci:// or https:// URL</label>
            <input name="image_url" placeholder="oci://registry:5000/apps/app:v1" {...field('source')} />
          </>
        )}
        {err('source')}
      </fieldset>
      <label for="f-inputs">Inputs</label>
      <input name="inputs" placeholder='2, 3  or  ["a", 1]' {...field('inputs')} />
      {err('inputs')}
      <label for="f-args">Arguments</label>
      <input name="args" placeholder="world" {...field('args')} />
      {err('args')}
      <label for="f-env">Environment (KEY=VALUE, one a line)</label>
      <textarea name="env" rows={2} {...field('env')} />
      {err('env')}
      <label for="f-labels">Labels (KEY=VALUE)</label>
      <input name="labels" {...field('labels')} />
      {err('labels')}
      <fieldset>
        <legend>Where it runs</legend>
        <label for="f-proplet_id">Pin to proplet</label>
        <input name="proplet_id" {...field('proplet_id')} />
        {err('proplet_id')}
        <label for="f-device_types">Device types (comma-separated)</label>
        <input name="device_types" {...field('device_types')} />
        {err('device_types')}
        <label for="f-capabilities">Capabilities (comma-separated)</label>
        <input name="capabilities" {...field('capabilities')} />
        {err('capabilities')}
        <label for="f-match_labels">Proplet labels (KEY=VALUE)</label>
        <input name="match_labels" {...field('match_labels')} />
        {err('match_labels')}
      </fieldset>
      <label class="inline">
        <input type="checkbox" name="daemon" id="f-daemon" /> daemon (runs until stopped)
      </label>
      <label class="inline">
        <input type="checkbox" name="start" id="f-start" checked /> start at once
      </label>
      <div class="toolbar">
        <button type="submit" id="create-submit" disabled={busy}>
          {busy ? 'Creating…' : 'Create'}
        </button>
        <button type="button" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}
