import test from 'ava';
import { createHmac, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CredentialError,
  CredentialStore,
  generateSecret,
  hashPassword,
  hashSecret,
  verifySecret,
  verifySecretAsync,
  type CredentialChange,
} from '../broker/index.ts';

test('generateSecret: 32 random bytes, base64url', (t) => {
  const a = generateSecret();
  t.regex(a, /^[A-Za-z0-9_-]{43}$/);
  t.is(Buffer.from(a, 'base64url').length, 32);
  t.not(a, generateSecret());
});

test('hashSecret: salted sha256 format, verifies, never twice the same', (t) => {
  const s = generateSecret();
  const h = hashSecret(s);
  t.regex(h, /^sha256\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]{43}$/);
  t.not(h, hashSecret(s));
  t.true(verifySecret(s, h));
  t.false(verifySecret(s + 'x', h));
  t.false(verifySecret('', h));
  t.false(h.includes(s));
});

test('scrypt hashes (human-chosen passwords) verify, sync and async', async (t) => {
  const h = hashPassword('correct horse');
  t.regex(h, /^scrypt\$16384\$8\$1\$[A-Za-z0-9_-]+\$[A-Za-z0-9_-]+$/);
  t.true(verifySecret('correct horse', h));
  t.false(verifySecret('correct horsE', h));
  t.true(await verifySecretAsync('correct horse', h));
  t.false(await verifySecretAsync('wrong', h));
});

test('malformed or abusive hashes verify nothing and never throw', (t) => {
  for (const h of ['', 'plain', 'sha256$', 'sha256$abc$def', 'md5$x$y', 'scrypt$16384$8$1$c2FsdHNhbHQ$', 'scrypt$1048577$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5', 'scrypt$1000$8$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5', 'scrypt$1048576$32$1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5']) {
    t.false(verifySecret('x', h), h);
  }
});

test('CredentialStore: issue stores only a hash, re-issue replaces, onChange sees every change', (t) => {
  const changes: CredentialChange[] = [];
  const store = new CredentialStore({ onChange: (c) => changes.push(c) });
  const s1 = store.issue('p1', 'proplet');
  const rec = store.get('p1')!;
  t.is(rec.role, 'proplet');
  t.false(JSON.stringify(rec).includes(s1));
  t.true(verifySecret(s1, rec.hash));
  const s2 = store.issue('p1', 'proplet');
  t.false(verifySecret(s1, store.get('p1')!.hash));
  t.true(verifySecret(s2, store.get('p1')!.hash));
  store.set({ id: 'm', role: 'manager', hash: hashSecret('x') });
  store.set({ id: 'd', role: 'debug', hash: hashSecret('y') }, { notify: false });
  t.deepEqual(
    store.list().map((r) => r.id),
    ['d', 'm', 'p1'],
  );
  t.true(store.delete('m'));
  t.false(store.delete('m'));
  t.deepEqual(
    changes.map((c) => ('deleted' in c ? `-${c.id}` : `${c.id}:${c.role}`)),
    ['p1:proplet', 'p1:proplet', 'm:manager', '-m'],
  );
  t.throws(() => store.issue('a/b', 'proplet'), { instanceOf: CredentialError });
  t.throws(() => store.issue('x', 'admin' as never), { instanceOf: CredentialError });
  t.throws(() => store.set({ id: 'x', role: 'debug', hash: 'plain' }), { instanceOf: CredentialError });
});

function withFile(t: { teardown: (f: () => void) => void }, name: string, text: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'creds-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

test('loadFile: lines id:role:secret-or-hash, comments, secrets with colons', (t) => {
  const h = hashSecret('s3cret');
  const pw = hashPassword('pass:word');
  const p = withFile(
    t,
    'creds.txt',
    ['# accounts', '', 'manager:manager:' + h, 'dbg:debug:' + pw, '  esp32-01:proplet:plain:with:colons  ', 'p2:proplet:hunter2\r', ''].join('\n'),
  );
  const changes: CredentialChange[] = [];
  const store = new CredentialStore({ onChange: (c) => changes.push(c) });
  t.is(store.loadFile(p), 4);
  t.is(store.get('manager')!.hash, h);
  t.true(verifySecret('s3cret', store.get('manager')!.hash));
  t.true(verifySecret('pass:word', store.get('dbg')!.hash));
  t.true(verifySecret('plain:with:colons', store.get('esp32-01')!.hash));
  t.true(verifySecret('hunter2', store.get('p2')!.hash));
  t.regex(store.get('p2')!.hash, /^sha256\$/);
  t.deepEqual(changes, [], 'a file does not feed onChange');
});

test('loadFile: a JSON array of {id, role, secret | hash}', (t) => {
  const p = withFile(t, 'creds.json', JSON.stringify([{ id: 'm', role: 'manager', secret: 'abc' }, { id: 'p', role: 'proplet', hash: hashSecret('def') }]));
  const store = new CredentialStore();
  t.is(store.loadFile(p), 2);
  t.true(verifySecret('abc', store.get('m')!.hash));
  t.true(verifySecret('def', store.get('p')!.hash));
});

test('loadFile: one-line errors naming the line, never the secret, and nothing applied', (t) => {
  const bad: [string, string, RegExp][] = [
    ['creds.txt', 'a:manager:x\nb:proplet\n', /creds\.txt:2: expected 'id:role:secret-or-hash'/],
    ['creds.txt', 'a:manager:x\n\nb:admin:topsecret\n', /creds\.txt:3: invalid role "admin"/],
    ['creds.txt', 'a/b:proplet:topsecret\n', /creds\.txt:1: invalid id "a\/b"/],
    ['creds.txt', 'a:proplet:\n', /creds\.txt:1: empty or missing secret/],
    ['creds.txt', 'a:proplet:sha256$nothex$topsecret\n', /creds\.txt:1: malformed hash/],
    ['creds.txt', 'a:proplet:x\n# c\na:debug:topsecret\n', /creds\.txt:3: duplicate id "a" \(first at .*creds\.txt:1\)/],
    ['creds.json', '[{"id":"a","role":"proplet"}]', /creds\.json: entry 1: give exactly one of "secret" or "hash"/],
    ['creds.json', '[{"id":"a","role":"proplet","password":"topsecret"}]', /entry 1: unknown field "password"/],
    ['creds.json', '[{"id":"a","role":"proplet","secret":"x"}, 7]', /entry 2: expected an object/],
    ['creds.json', '[{"id":"a",', /creds\.json: not valid JSON/],
  ];
  for (const [name, text, re] of bad) {
    const p = withFile(t, name, text);
    const store = new CredentialStore();
    const e = t.throws(() => store.loadFile(p), { instanceOf: CredentialError });
    t.regex(e!.message, re);
    t.false(e!.message.includes('\n'), 'one line');
    t.false(e!.message.includes('topsecret'), 'no secret in the message');
    t.is(store.list().length, 0, 'nothing applied');
  }
  t.throws(() => new CredentialStore().loadFile('/nonexistent/creds'), { message: /credentials file \/nonexistent\/creds: cannot read/ });
});

test('generated secrets never start with a dash (they go on command lines)', (t) => {
  for (let i = 0; i < 2000; i++) t.not(generateSecret()[0], '-');
});

test('sha256 hashes are HMAC-SHA256 (RFC 2104) of the secret keyed by the salt, whatever the salt length and the secret', (t) => {
  // verification computes the HMAC from two one-shot digests: it must give createHmac's bytes
  for (const saltLen of [8, 16, 33, 63, 64]) {
    for (const secret of ['x', generateSecret(), 'päss wörd ✓ 🔑', 'a'.repeat(200)]) {
      const salt = randomBytes(saltLen);
      const mac = createHmac('sha256', salt).update(secret, 'utf8').digest();
      const hash = `sha256$${salt.toString('base64url')}$${mac.toString('base64url')}`;
      t.true(verifySecret(secret, hash), `salt ${saltLen} bytes, secret ${JSON.stringify(secret.slice(0, 12))}`);
      t.false(verifySecret(secret + ' ', hash));
      t.false(verifySecret(secret.slice(1) || 'y', hash));
    }
  }
});
