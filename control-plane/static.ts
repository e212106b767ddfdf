// A directory of built web assets served from the API's port: `/` is the
// directory's index.html (never cached: it names the current assets), and
// `/ui/NAME` its files, cached for a year when NAME carries a content hash.
// Every answer carries a strict Content-Security-Policy: scripts, styles and
// connections from this origin only, no inline code, no frames.

import { readFile } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';

export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "form-action 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.map': 'application/json',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/** esbuild's `[name]-[hash]` file names: 8 characters of [A-Z0-9]. */
const HASHED = /-[A-Z0-9]{8}\.[a-z0-9]+$/;
/** One path segment of ordinary characters: no traversal, no hidden files. */
const NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}$/;

/** A handler for HttpApi.mount: answers GET/HEAD of `/`, `/index.html` and `/ui/NAME`; false for anything else. */
export function staticDirectory(dir: string): (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<boolean> {
  return async (req, res, url) => {
    const method = req.method ?? 'GET';
    if (method !== 'GET' && method !== 'HEAD') return false;
    const p = url.pathname;
    let file: string;
    let cache: string;
    if (p === '/' || p === '/index.html') {
      file = join(dir, 'index.html');
      cache = 'no-cache';
    } else if (p.startsWith('/ui/') && NAME.test(p.slice(4))) {
      const name = p.slice(4);
      file = join(dir, 'ui', name);
      cache = HASHED.test(name) ? 'public, max-age=31536000, immutable' : 'no-cache';
    } else return false;
    let body: Buffer;
    try {
      body = await readFile(file);
    } catch {
      if (p.startsWith('/ui/')) {
        res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8', ...SECURITY_HEADERS }).end(`no such asset: ${p}\n`);
        return true;
      }
      return false;
    }
    const ext = file.slice(file.lastIndexOf('.'));
    res.writeHead(200, {
      'content-type': TYPES[ext] ?? 'application/octet-stream',
      'content-length': body.length,
      'cache-control': cache,
      ...SECURITY_HEADERS,
    });
    res.end(method === 'HEAD' ? undefined : body);
    return true;
  };
}

const SECURITY_HEADERS = {
  'content-security-policy': CONTENT_SECURITY_POLICY,
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
};
