// Weights: fetched once with progress, kept in the Cache API under a
// versioned name, streamed chunk by chunk into a wasm-side buffer so the
// file is never held twice in memory. Runs inside the worker.
import { WEIGHTS_CACHE } from './protocol.js';

export class WeightsError extends Error {}

function describeHttp(response, url) {
  if (response.status === 404) return `the weights URL was not found (404): ${url}`;
  if (response.status === 401 || response.status === 403)
    return `the server refused the weights (${response.status}); the file may be gated or private: ${url}`;
  return `downloading the weights failed: HTTP ${response.status} ${response.statusText} for ${url}`;
}

/**
 * Stream `response.body` into `sink.push(chunk)`, reporting `onProgress(done, total)`.
 * @returns {Promise<number>} bytes read
 */
async function pump(response, sink, onProgress) {
  const total = Number(response.headers.get('content-length')) || 0;
  const reader = response.body.getReader();
  let done = 0;
  for (;;) {
    const { value, done: finished } = await reader.read();
    if (finished) break;
    sink.push(value);
    done += value.byteLength;
    onProgress(done, total);
  }
  if (total && done !== total) throw new WeightsError(`the download stopped at ${done} of ${total} bytes`);
  return done;
}

/**
 * Fetch `url` into a buffer made by `makeBuffer(expectedBytes)`, from the cache if there.
 * @returns {Promise<{buffer, source: 'cache'|'network'}>}
 */
export async function loadWeightsFromUrl(url, makeBuffer, onProgress) {
  const cache = typeof caches !== 'undefined' ? await caches.open(WEIGHTS_CACHE).catch(() => null) : null;
  const cached = cache ? await cache.match(url) : undefined;
  if (cached) {
    const buffer = makeBuffer(Number(cached.headers.get('content-length')) || 0);
    await pump(cached, buffer, (d, t) => onProgress('cache', d, t));
    return { buffer, source: 'cache' };
  }
  let response;
  try {
    response = await fetch(url, { mode: 'cors' });
  } catch (e) {
    throw new WeightsError(
      `could not reach ${url} (network error or the server does not allow cross-origin requests): ${e.message}`);
  }
  if (!response.ok) throw new WeightsError(describeHttp(response, url));
  const total = Number(response.headers.get('content-length')) || 0;
  if (!cache) {
    const buffer = makeBuffer(total);
    await pump(response, buffer, (d, t) => onProgress('download', d, t));
    return { buffer, source: 'network' };
  }
  // Tee-free: chunks go to the wasm buffer and into the cache entry as they
  // arrive. Caching is best effort: if the browser refuses (quota, private
  // mode, an internal error), the model still loads and the page says so.
  const buffer = makeBuffer(total);
  let controller;
  let cacheError = null;
  const toCache = new ReadableStream({ start(c) { controller = c; } });
  const headers = new Headers({ 'content-type': 'application/octet-stream' });
  if (total) headers.set('content-length', String(total));
  const stored = cache.put(url, new Response(toCache, { headers })).catch((e) => { cacheError = e; });
  const toStream = (fn) => { if (!cacheError) try { fn(); } catch (e) { cacheError = e; } };
  try {
    await pump(response, { push(chunk) { buffer.push(chunk); toStream(() => controller.enqueue(chunk)); } },
      (d, t) => onProgress('download', d, t));
  } catch (e) {
    toStream(() => controller.error(e));
    await stored;
    await cache.delete(url).catch(() => {});
    throw e instanceof WeightsError ? e : new WeightsError(`downloading the weights failed: ${e.message}`);
  }
  toStream(() => controller.close());
  await stored;
  if (cacheError) {
    await cache.delete(url).catch(() => {});
    const warning = `the weights could not be kept in the browser cache (${cacheError.message}); the next visit downloads them again`;
    return { buffer, source: 'network', warning };
  }
  return { buffer, source: 'network' };
}

/** Read a dropped or picked File into a buffer made by `makeBuffer`. */
export async function loadWeightsFromFile(file, makeBuffer, onProgress) {
  const buffer = makeBuffer(file.size);
  await pump(new Response(file.stream(), { headers: { 'content-length': String(file.size) } }), buffer,
    (d, t) => onProgress('load', d, t));
  return { buffer, source: 'file' };
}
