// Weights: fetched once with progress, kept in the Cache API under a
// versioned name, and streamed chunk by chunk into the wasm-side loader, which
// checks the header first and uploads each tensor as soon as it is complete:
// no copy of the whole file is ever held, in JS or in wasm. Runs inside the worker.
import { WEIGHTS_CACHE } from './protocol.js';

/** A failure of the transfer itself (HTTP status, network, interrupted stream). */
export class WeightsError extends Error {}

/** The user stopped the transfer (the page's Cancel button). */
export class CancelledError extends Error {
  constructor(done) {
    super(`the download was cancelled after ${done} bytes`);
    this.cancelled = true;
  }
}

/** Whether the weights at `url` are in the browser cache (no request is made). */
export async function isCached(url) {
  if (typeof caches === 'undefined') return false;
  try {
    return !!(await (await caches.open(WEIGHTS_CACHE)).match(url));
  } catch {
    return false;
  }
}

function describeHttp(response, url) {
  if (response.status === 404) return `the weights URL was not found (404): ${url}`;
  if (response.status === 401 || response.status === 403)
    return `the server refused the weights (${response.status}); the file may be gated or private: ${url}`;
  return `downloading the weights failed: HTTP ${response.status} ${response.statusText} for ${url}`;
}

/**
 * Stream `response.body` into `await sink.push(chunk)`, reporting `onProgress(done, total)`.
 * A chunk the sink refuses (not a CLIP file, ...) throws its error and stops
 * the transfer at once; a broken stream throws a WeightsError; `signal`
 * aborted throws a CancelledError.
 * @returns {Promise<number>} bytes read
 */
async function pump(response, sink, onProgress, signal) {
  const announced = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  let done = 0;
  try {
    for (;;) {
      let next;
      try {
        next = await reader.read();
      } catch (e) {
        if (signal?.aborted) throw new CancelledError(done);
        throw new WeightsError(`the transfer broke off after ${done} bytes: ${e.message}`);
      }
      if (signal?.aborted) throw new CancelledError(done);
      if (next.done) break;
      await sink.push(next.value);
      done += next.value.byteLength;
      // Without a content-length the file's own header tells the size.
      onProgress(done, announced || sink.expectedBytes() || 0);
    }
  } catch (e) {
    reader.cancel().catch(() => {});
    throw e;
  }
  if (announced && done !== announced) throw new WeightsError(`the transfer stopped at ${done} of ${announced} bytes`);
  const expected = sink.expectedBytes();
  if (expected && done !== expected) throw new WeightsError(`the file has ${done} bytes where its header announces ${expected}`);
  return done;
}

/**
 * Whether weights may come from `url`: https, this page's own origin, or
 * http on this machine (localhost counts as secure). Anything else is
 * refused before any request, with the reason.
 */
export function checkWeightsUrl(url, origin = self.location.origin) {
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    throw new WeightsError(`"${url}" is not a URL`);
  }
  const local = ['localhost', '127.0.0.1', '[::1]'].includes(parsed.hostname);
  if (parsed.protocol === 'https:' || parsed.origin === origin || (parsed.protocol === 'http:' && local)) return;
  throw new WeightsError(
    `weights are only loaded over https (or from this site): ${parsed.protocol}//${parsed.host} is not allowed; use an https:// URL or drop the file`);
}

/**
 * Stream the weights at `url` into `sink` (a WeightsLoader), from the cache
 * if there; `signal` (an AbortSignal) stops it.
 * @returns {Promise<{source: 'cache'|'network', warning?: string}>}
 */
export async function loadWeightsFromUrl(url, sink, onProgress, signal) {
  checkWeightsUrl(url);
  const cache = typeof caches !== 'undefined' ? await caches.open(WEIGHTS_CACHE).catch(() => null) : null;
  const cached = cache ? await cache.match(url) : undefined;
  if (cached) {
    try {
      await pump(cached, sink, (d, t) => onProgress('cache', d, t), signal);
    } catch (e) {
      if (e.cancelled) throw e;
      // A bad cached copy must not stick: the next try downloads again.
      await cache.delete(url).catch(() => {});
      throw new Error(`${e.message} (the cached copy was removed; retrying downloads it again)`);
    }
    return { source: 'cache' };
  }
  let response;
  try {
    response = await fetch(url, { mode: 'cors', signal });
  } catch (e) {
    if (signal?.aborted) throw new CancelledError(0);
    throw new WeightsError(
      `could not reach ${url} (network error or the server does not allow cross-origin requests): ${e.message}`);
  }
  if (!response.ok) throw new WeightsError(describeHttp(response, url));
  if (!cache) {
    await pump(response, sink, (d, t) => onProgress('download', d, t), signal);
    return { source: 'network' };
  }
  // Each chunk goes to the loader and into the cache entry as it arrives; the
  // download waits for the cache writer (backpressure), so chunks never pile
  // up in memory. Caching is best effort: if the browser refuses (quota,
  // private mode, an internal error), the model still loads and the page says so.
  const total = Number(response.headers.get('content-length')) || 0;
  let controller;
  let cacheError = null;
  let resume = null; // resolves a push waiting for the cache writer
  const wake = () => { resume?.(); resume = null; };
  const toCache = new ReadableStream({ start(c) { controller = c; }, pull: wake });
  const headers = new Headers({ 'content-type': 'application/octet-stream' });
  if (total) headers.set('content-length', String(total));
  const stored = cache.put(url, new Response(toCache, { headers })).catch((e) => { cacheError = e; wake(); });
  const toStream = (fn) => { if (!cacheError) try { fn(); } catch (e) { cacheError = e; } };
  const tee = {
    async push(chunk) {
      sink.push(chunk);
      toStream(() => controller.enqueue(chunk));
      if (!cacheError && controller.desiredSize <= 0) await new Promise((r) => { resume = r; });
    },
    expectedBytes: () => sink.expectedBytes(),
  };
  try {
    await pump(response, tee, (d, t) => onProgress('download', d, t), signal);
  } catch (e) {
    // Nothing incomplete or refused is kept.
    toStream(() => controller.error(e));
    await stored;
    await cache.delete(url).catch(() => {});
    throw e;
  }
  toStream(() => controller.close());
  await stored;
  if (cacheError) {
    await cache.delete(url).catch(() => {});
    const warning = `the weights could not be kept in the browser cache (${cacheError.message}); the next visit downloads them again`;
    return { source: 'network', warning };
  }
  return { source: 'network' };
}

/** Stream a dropped or picked File into `sink` (a WeightsLoader). */
export async function loadWeightsFromFile(file, sink, onProgress, signal) {
  await pump(new Response(file.stream(), { headers: { 'content-length': String(file.size) } }), sink,
    (d, t) => onProgress('file', d, t), signal);
  return { source: 'file' };
}
