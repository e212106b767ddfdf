// The read-only `debug` account of `propeller serve --debug-account`. Its
// password lives in DATA_DIR/debug.secret (mode 0600) and is kept across
// restarts, so a running `mosquitto_sub` or `propeller watch` reconnects with
// the password it read; delete the file to get a new one.

import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateSecret, hashSecret, type CredentialStore } from '../broker/index.ts';

/** What generateSecret makes: base64url, 43 characters for 32 bytes. */
const SECRET = /^[A-Za-z0-9_-]{32,128}$/;

export function debugAccount(creds: CredentialStore, dataDir: string): { path: string; reused: boolean } {
  const path = join(dataDir, 'debug.secret');
  let secret: string | undefined;
  try {
    const text = readFileSync(path, 'utf8').trim();
    if (SECRET.test(text)) secret = text;
  } catch {
    // none yet
  }
  const reused = secret !== undefined;
  if (secret === undefined) {
    secret = generateSecret();
    writeFileSync(path, secret + '\n', { mode: 0o600 });
  }
  // a file made by hand or by an older version may be readable by others
  if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
  creds.set({ id: 'debug', role: 'debug', hash: hashSecret(secret) });
  return { path, reused };
}
