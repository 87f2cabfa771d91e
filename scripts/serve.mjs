// A small static server for the app (the repository root) on 127.0.0.1.
// Usage: node scripts/serve.mjs [port]   (default 8080)
// Tests import `serve()` and read `requests` to see what the page fetched.
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { createServer } from 'node:http';
import { extname, join, normalize, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8', '.json': 'application/json', '.wasm': 'application/wasm', '.png': 'image/png',
  '.jpg': 'image/jpeg', '.safetensors': 'application/octet-stream', '.md': 'text/plain; charset=utf-8',
};

/**
 * Cross-origin isolation, which gives the page SharedArrayBuffer and so the
 * threaded CPU module (web/worker.js). Under it the page can still fetch the
 * weights from another origin that answers CORS requests, as the Hugging Face
 * hub does; `cross-origin-resource-policy` lets other isolated pages load
 * what this server serves.
 */
export const ISOLATION = {
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-embedder-policy': 'require-corp',
  'cross-origin-resource-policy': 'cross-origin',
};

/**
 * Start serving `root` (with {@link ISOLATION}); resolves to {server, port, requests}.
 * Tests can pass `fail(path, requests)`: where it returns true the answer is a 503; where
 * it returns 'hang', there is none (`server.closeAllConnections()` ends those).
 */
export function serve({ port = 0, root = ROOT, fail = () => false } = {}) {
  const requests = [];
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
    requests.push(path);
    const failure = fail(path, requests);
    if (failure === 'hang') return;
    if (failure) {
      res.writeHead(503, { 'content-type': 'text/plain', ...ISOLATION }).end(`refused by the test: ${path}\n`);
      return;
    }
    const file = normalize(join(root, path === '/' ? 'index.html' : path));
    if (!file.startsWith(root)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const info = await stat(file);
      if (!info.isFile()) throw new Error('not a file');
      res.writeHead(200, {
        'content-type': TYPES[extname(file)] ?? 'application/octet-stream',
        'content-length': info.size,
        'access-control-allow-origin': '*',
        'cache-control': 'no-cache',
        ...ISOLATION,
      });
      createReadStream(file).pipe(res);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found: ${path}\n`);
    }
  });
  return new Promise((done) => server.listen(port, '127.0.0.1', () => done({ server, port: server.address().port, requests })));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const { port } = await serve({ port: Number(process.argv[2] ?? 8080) });
  console.log(`ClearCLIP app on http://127.0.0.1:${port}/ (serving ${ROOT})`);
}
