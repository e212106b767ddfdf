// `npm run bench` runs the TypeScript sources the way the shipped build
// compiles them. tsx, which the tests use, compiles with esbuild's keepNames:
// every function, closures included, is wrapped in a __name() call that is an
// Object.defineProperty on each creation, and the function then leaves V8's
// fast path. dist/ (bin/build.js) has none of that, so a bench through tsx
// charges the code with a cost users never pay: 10–15 % of the control
// plane's CPU per heartbeat in `bench fleet`.
import { register } from 'node:module';

register('./loader-hooks.js', import.meta.url);
