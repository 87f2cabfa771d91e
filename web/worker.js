// The one worker that owns the wasm module and the GPU. See protocol.js.
// Work runs one task at a time on a promise queue; a segment request that a
// newer one has replaced before its turn is skipped (latest wins).
import { MSG, TOKENIZER_URL, TRAP_WITHOUT_PANIC } from './protocol.js';
import { hasRelaxedSimd, hasSimd } from './wasm-features.js';
import { loadWeightsFromFile, loadWeightsFromUrl } from './weights.js';

let wasm = null; // the module's exports, once `ready`
let segmenter = null;
let latestSegment = null; // the newest segment request received
let keptResultId = null; // the request whose result the segmenter keeps (heatmaps, exports)
let decoded = null; // {id, image: DecodedImage}: the page's current image, decoded once
let modeBlocks = {}; // mode id -> its last block, from the catalog
let loadAbort = null; // AbortController of the weights transfer under way
let cancelledRun = null; // id of the run the page cancelled
let panicked = null; // the panic hook's report of the panic that trapped the instance, if one did
const post = (message, transfer = []) => self.postMessage(message, transfer);
let wasmMemory = null; // to report its size: wasm memory grows and never shrinks

// Four modules (scripts/build-web.sh). pkg/ has WebGPU and a CPU backend
// on this worker's one thread; pkg-relaxed/ is the same with relaxed SIMD
// (fused multiply-adds in the matrix products, turned on by
// `useRelaxedSimd()`: 0.88x the time on one thread, docs/performance.md),
// taken where the browser has that.
// pkg-threads/ has only the CPU backend, on a pool of web workers sharing its
// memory (wasm-bindgen-rayon), which needs a cross-origin isolated page (the
// COOP and COEP headers that scripts/serve.mjs sends), with relaxed SIMD;
// pkg-threads-plain/ is the same without it, for browsers that lack it. The
// page says in this worker's URL whether it wants WebGPU (`webgpu=0`: no),
// how many threads (`threads=N`; 1 is the one-thread module) and whether
// relaxed SIMD may be used (`relaxed=0`: no, as in a browser without it).
//
// Without WebGPU the pool is the default on a cross-origin isolated page, one
// thread per core the browser reports (at most 16); `threads=1` asks for the
// one-thread module. On the 2-core test machine an image takes 0.62x the
// time on 2 threads that it takes on one (0.76x for the first image; docs/performance.md,
// "Threads").
const workerParams = new URL(self.location.href).searchParams;
const asksGpu = workerParams.get('webgpu') !== '0';
const wantsGpu = asksGpu && 'gpu' in navigator;
const askedThreads = Math.floor(Number(workerParams.get('threads')));
const poolThreads = wantsGpu || !self.crossOriginIsolated ? 1
  : Math.min(64, Math.max(1, askedThreads || Math.min(16, navigator.hardwareConcurrency || 1)));
const relaxed = workerParams.get('relaxed') !== '0' && hasRelaxedSimd();
// `pool=0`: the page saw this worker's pool fail to start twice (main.js,
// POOL_START_MS) and asks for one thread.
const poolStalled = workerParams.get('pool') === '0';
const threads = poolStalled ? 1 : poolThreads;
/** Said with the model's description where the pool was wanted but cannot run. */
let threadsNote = '';
if (poolThreads > 1 && poolStalled) threadsNote = ' (one thread: the pool of threads did not start, twice)';

/** The threaded module with its pool started, or the one-thread module where that cannot be. */
async function instantiate() {
  if (threads > 1) {
    // The page restarts this worker if `settled` does not follow in time.
    post({ type: MSG.POOL, threads, phase: 'starting' });
    try {
      const threaded = await (relaxed ? import('./pkg-threads/clearclip_web.js') : import('./pkg-threads-plain/clearclip_web.js'));
      const exports = await start(threaded);
      await threaded.initThreadPool(threads);
      return { module: threaded, exports };
    } catch (e) {
      const why = e?.message ?? String(e);
      console.warn(`the threaded CPU module failed (${why}); using one thread`);
      threadsNote = ` (one thread: ${why})`;
    } finally {
      post({ type: MSG.POOL, threads, phase: 'settled' });
    }
  }
  const single = await (relaxed ? import('./pkg-relaxed/clearclip_web.js') : import('./pkg/clearclip_web.js'));
  return { module: single, exports: await start(single) };
}

/**
 * Instantiates a module, and turns its relaxed-SIMD register blocks on where
 * it is the build with them: pkg/ and pkg-threads-plain/ are pkg-relaxed/ and
 * pkg-threads/ with those blocks removed, and they trap there.
 */
async function start(module) {
  const exports = await module.default();
  if (relaxed) module.useRelaxedSimd();
  return exports;
}

// Every module is built with WebAssembly SIMD (.cargo/config.toml).
const ready = (hasSimd()
  ? instantiate()
  : Promise.reject(new Error('this browser\'s WebAssembly has no SIMD, which the app needs: use a current Chrome, Edge, Firefox or Safari'))
).then(({ module, exports }) => {
  wasm = module;
  wasmMemory = exports.memory;
  // A lost GPU device (driver reset, GPU process crash, `destroy()`), which
  // wgpu reports from inside the wasm (crates/web: webgpu_device), cannot be
  // recovered in this instance: report it as fatal; the page starts a new worker.
  self.addEventListener(wasm.deviceLostEvent(), (e) => {
    post({ type: MSG.ERROR, stage: 'device', message: `the GPU device was lost (${e.detail})`, fatal: true });
  });
  // A panic (a bug) traps the instance. In an async call the trap comes from
  // a task of the call's future, and the call's promise never settles: the
  // panic hook (crates/web: PANIC_EVENT) reports it at once, with its message.
  self.addEventListener(wasm.panicEvent(), (e) => {
    panicked = e.detail;
    post({ type: MSG.ERROR, stage: 'internal', message: e.detail, fatal: true });
  });
  // A trap without a panic (Rust aborts when an allocation fails) in an
  // async call is uncaught here, in the future's task: fatal too.
  self.addEventListener('error', (e) => {
    if (e.error instanceof WebAssembly.RuntimeError) post({ type: MSG.ERROR, stage: 'internal', message: trapMessage(e.error), fatal: true });
  });
  const list = wasm.catalog();
  modeBlocks = Object.fromEntries(list.modes.map((m) => [m.id, m.lastBlock]));
  post({ type: MSG.CATALOG, catalog: list });
});
const tokenizer = fetch(TOKENIZER_URL).then((r) => {
  if (!r.ok) throw new Error(`the tokenizer (${TOKENIZER_URL}) could not be loaded: HTTP ${r.status}`);
  return r.arrayBuffer();
});

let queue = Promise.resolve();
/** Run `task` after everything queued before it; resolves with its result. */
function enqueue(task) {
  const run = queue.then(task);
  queue = run.catch(() => {});
  return run;
}

const progress = (phase, done, total) => post({ type: MSG.PROGRESS, phase, done, total });

/** What the page shows of a trap: the panic's own message where the panic hook gave one. */
function trapMessage(error) {
  return panicked ?? `the wasm module stopped (${error.message}), ${TRAP_WITHOUT_PANIC}`;
}

/**
 * Errors from wasm are `{kind, message, fatal}` reports (see `ErrorReport`
 * in crates/web); a trap (a panic) leaves the instance unusable.
 */
function fail(stage, error, id) {
  const trapped = error instanceof WebAssembly.RuntimeError;
  const fatal = trapped || error?.fatal === true;
  const cancelled = error?.cancelled === true || error?.kind === 'cancelled';
  post({ type: MSG.ERROR, stage, id, message: trapped ? trapMessage(error) : String(error?.message ?? error), fatal, cancelled });
}

async function load({ url, file, gelu, half, warmUp, loseDevice }) {
  const started = performance.now();
  let weights = null; // the loader, until the segmenter takes it over
  loadAbort?.abort(); // a newer load replaces one under way
  const abort = new AbortController();
  loadAbort = abort;
  try {
    await ready;
    weights = await wasm.WeightsLoader.create(wantsGpu, !!gelu, !!half);
    if (loseDevice && wasm.loseGpuDevice()) {
      // Test hook (the page's ?debug=1): the device lost mid-load. The loss
      // is reported as fatal and the page replaces this worker; until then
      // this load goes no further.
      await new Promise(() => {});
    }
    const { source, warning } = file
      ? await loadWeightsFromFile(file, weights, progress, abort.signal)
      : await loadWeightsFromUrl(url, weights, progress, abort.signal);
    progress('prepare', 0, 0);
    const tokenizerBytes = new Uint8Array(await tokenizer);
    const taken = weights;
    weights = null;
    const next = wasm.WebSegmenter.create(taken, tokenizerBytes);
    // On WebGPU the kernels compile now, as part of loading, so the first image
    // costs what the next ones do (unless the page says a run follows at once).
    let warmUpMs = 0;
    if (next.backend() === 'webgpu' && warmUp !== false) {
      try {
        warmUpMs = await next.warmUp();
      } catch (e) {
        next.free();
        throw e;
      }
    }
    // Keep the previous model until the new one works; swap between runs.
    await enqueue(() => {
      segmenter?.free();
      segmenter = next;
      keptResultId = null;
    });
    post({
      type: MSG.READY,
      backend: segmenter.backend(),
      description: segmenter.description() + (asksGpu && !wantsGpu ? ' (this browser has no WebGPU)' : '') + threadsNote,
      patch: segmenter.patch(),
      source,
      warning,
      loadMs: performance.now() - started,
      warmUpMs,
      wasmMemoryBytes: wasmMemory.buffer.byteLength,
    });
  } catch (e) {
    weights?.free(); // what was uploaded of a refused, broken or cancelled file
    if (abort === loadAbort || !e?.cancelled) fail('load', e); // not for a load replaced by a newer one
  } finally {
    if (loadAbort === abort) loadAbort = null;
  }
}

/** The request's image file, decoded in wasm exactly as the CLI decodes it. */
async function imageFor({ id, blob }) {
  if (decoded?.id === id) return decoded.image;
  decoded?.image.free();
  decoded = null;
  const image = wasm.DecodedImage.decode(new Uint8Array(await blob.arrayBuffer()));
  decoded = { id, image };
  return image;
}

const arrays = (result) => [result.probs.buffer, result.labels.buffer, result.labelColors.buffer];

async function runSegment({ id, image: file, request, compare }) {
  if (!segmenter) throw new Error('no model is loaded yet');
  const image = await imageFor(file);
  // The progress callback's answer stops the run between two class names or windows.
  const report = (phase, done, total) => {
    progress(phase, done, total);
    return cancelledRun === id;
  };
  const result = await segmenter.segment(image, request, true, report);
  keptResultId = id;
  const transfer = arrays(result);
  let second = null;
  if (compare) {
    // The named mode's own block; the first blocks of every window are reused.
    const params = { ...request.params, lastBlock: modeBlocks[compare] };
    const side = await segmenter.segment(image, { ...request, params }, false, report);
    second = { mode: compare, result: side };
    transfer.push(...arrays(side));
  }
  post({ type: MSG.RESULT, id, result, compare: second, wasmMemoryBytes: wasmMemory.buffer.byteLength }, transfer);
}

function heatmap({ resultId, index }) {
  // Only the kept result's maps exist; a newer result makes this one moot.
  if (!segmenter || resultId !== keptResultId) return;
  const rgba = segmenter.heatmap_rgba(index);
  post({ type: MSG.HEATMAP, resultId, index, rgba }, [rgba.buffer]);
}

function exportPng({ what, opacity }) {
  const bytes = what === 'overlay' ? segmenter.overlay_png(opacity) : segmenter.labels_png();
  post({ type: MSG.EXPORTED, what, bytes }, [bytes.buffer]);
}

self.onmessage = ({ data }) => {
  switch (data.type) {
    case MSG.LOAD:
      load(data);
      break;
    case MSG.SEGMENT:
      latestSegment = data;
      enqueue(() => {
        if (latestSegment === data) return runSegment(data);
        if (cancelledRun === data.id) throw Object.assign(new Error('cancelled before it started'), { cancelled: true });
        return null;
      }).catch((e) => fail('segment', e, data.id));
      break;
    case MSG.HEATMAP:
      enqueue(() => heatmap(data)).catch((e) => fail('heatmap', e));
      break;
    case MSG.EXPORT:
      enqueue(() => exportPng(data)).catch((e) => fail('export', e));
      break;
    case MSG.CANCEL:
      if (data.what === 'load') loadAbort?.abort();
      else if (data.what === 'segment') {
        cancelledRun = data.id;
        if (latestSegment?.id === data.id) latestSegment = null; // not started yet: skipped
      }
      break;
    case MSG.LOSE_DEVICE:
      if (!wasm?.loseGpuDevice()) post({ type: MSG.ERROR, stage: 'device', message: 'no GPU device to lose (CPU backend)', fatal: false });
      break;
    case MSG.TRAP:
      wasm?.trapForTest(!!data.abort, !!data.inPool); // its promise never settles: the trap is reported as it happens
      break;
    case MSG.THREAD_SPAWN_FAILED:
      break; // the pool's start listens for it (vendor/wasm-bindgen-rayon)
    default:
      post({ type: MSG.ERROR, stage: 'protocol', message: `unknown message ${data.type}`, fatal: false });
  }
};
