// The sign-in prompt, shown whenever the API answers 401: paste the token
// `propeller serve` printed. It is checked first, so a wrong one is said here;
// a good one goes to GET /login, which sets the HttpOnly session cookie and
// brings the browser back to the console. The page never stores the token.

import { useState } from 'preact/hooks';
import { tokenWorks } from '../api.ts';

export function SignIn() {
  const [error, setError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    const token = String(new FormData(e.target as HTMLFormElement).get('token') ?? '').trim();
    if (!token) return setError('paste the API token');
    setBusy(true);
    try {
      if (!(await tokenWorks(token))) return setError('this token was refused: check it and try again');
      location.assign(`/login?token=${encodeURIComponent(token)}&next=${encodeURIComponent('/' + location.hash)}`);
    } catch (x) {
      setError(`the control plane is unreachable (${(x as Error).message})`);
    } finally {
      setBusy(false);
    }
  };
  return (
    <main class="signin" id="signin">
      <h1>Sign in to Propeller</h1>
      <p>
        The control plane needs its API token. <code>propeller serve</code> printed a sign-in link when it started (<code>http://HOST:PORT/login?token=…</code>): open it, or paste the token
        here (it is also in the data directory's <code>api.token</code> file).
      </p>
      <form onSubmit={submit} noValidate>
        <label for="token">API token</label>
        <input id="token" name="token" type="password" autoComplete="off" autoFocus aria-invalid={error ? 'true' : undefined} aria-describedby={error ? 'token-error' : undefined} />
        {error && (
          <span class="field-error" id="token-error" role="alert">
            {error}
          </span>
        )}
        <button type="submit" id="signin-submit" disabled={busy}>
          Sign in
        </button>
      </form>
    </main>
  );
}
