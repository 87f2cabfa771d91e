// The page: one state object, render functions by page region, and the
// worker that owns the GPU. Lists and defaults come from the wasm catalog;
// the settings are mirrored in the query string (urlstate.js).
import { DEFAULT_EXAMPLE, exampleById, markCurrentExample, renderGallery } from './gallery.js';
import { ClassEditor, labelText, splitClasses } from './labels.js';
import { poolWorkerCount, spawnPoolWorker, terminatePoolWorkers } from './pool-threads.js';
import { DEFAULT_MODEL, DEFAULT_WEIGHTS_URL, MSG } from './protocol.js';
import { drawOverlay, emptyView, readout, renderHeatmaps, renderLegend } from './render.js';
import { readSettings, writeSettings } from './urlstate.js';
import { isCached } from './weights.js';

const params = new URLSearchParams(location.search);
const fromUrl = readSettings(location.search);

const $ = (id) => document.getElementById(id);
const state = {
  // Weights: a URL (as typed, when the user typed one), or a dropped file.
  weightsUrl: fromUrl.weights ? new URL(fromUrl.weights, location.href).href : DEFAULT_WEIGHTS_URL,
  weightsTyped: fromUrl.weights ?? null, // what the query string keeps; never a local file's name
  weightsFile: null,
  gelu: fromUrl.gelu ?? false,
  half: fromUrl.half ?? false, // f16 on a GPU with shader-f16
  preferGpu: params.get('webgpu') !== '0',
  consent: false, // waiting for the user's click before a download
  catalog: null, // {modes: [{id, title, lastBlock}], attentions, presets, defaults, classColors}, from the worker
  model: null, // {backend, description, source}
  loading: null, // {phase, done, total}: the weights
  progress: null, // {phase, done, total}: the running segmentation
  loadNotice: null, // a short note in the model's status line (a cancelled download)
  runNotice: null, // a short note in the run's status line (a cancelled run, a copied link)
  image: null, // {id, blob, bitmap, width, height, example}: the file goes to the worker, the bitmap is for display
  classes: [], // one entry per class: "horse, pony"
  pendingClass: '', // typed, not yet ended with ';'
  threshold: 0,
  opacity: 0.55,
  lastBlock: null, // {attention, neighbourhoodStd, residualAlpha, ffn}: the knobs; the mode is derived from them
  pamr: false,
  singleTemplate: false,
  crop: null, // from the catalog's defaults
  stride: null,
  preset: '',
  compare: '', // second mode, shown through the before/after slider
  compareSplit: 50, // % of the width showing the main mode
  view: emptyView(), // which classes the overlay paints
  viewKind: 'classes', // or 'heatmap': the selected class's probabilities over the image
  heatmaps: new Map(), // class index -> canvas, for the shown result
  heatmapsAsked: new Set(), // class indices asked of the worker for the shown result
  requestId: 0,
  running: false,
  result: null, // {id, result, compare?: {mode, result}, totalMs}
  error: null,
  recovered: null, // the last fatal error the app restarted after, kept as a note
  /**
   * Fatal errors since the last result. A second one means the run that
   * followed a restart failed the same way (a failure the settings cause,
   * not a passing one): the page then reloads the model without running
   * again, so that it never restarts in a loop.
   */
  fatalsSinceResult: 0,
  /** After a run failed twice across a restart: wait for the user's next change. */
  get holdRun() { return this.fatalsSinceResult >= 2; },
};

let worker = null;
/**
 * How long a worker may take to fetch and start the threaded module (1.35 MB
 * gzipped) and its pool (MSG.POOL, `starting` to `settled`); the pool itself
 * starts in 0.1-0.4 s (measured in Chromium and Firefox with the cores busy).
 * In headless Firefox ESR 153 a worker sometimes stopped for good while it
 * created the pool's workers (about 1 page load in 15 with the cores busy;
 * vendor/README.md); the page now creates them (pool-threads.js). It still
 * watches, for a pool that does not come up for any other reason (a script
 * that never arrives): it starts a new worker, with the pool once more, then
 * on one thread.
 */
const POOL_START_MS = 20_000;
let poolWatchdog = null;
let poolStalls = 0;
let poolStarting = false; // between the worker's MSG.POOL `starting` and `settled`
let requestStarted = 0;
/**
 * Fatal errors while loading, since the last model was ready or the user
 * last asked for a load. A second one means the load that followed a
 * restart failed too: the page then waits for the user (Retry), so that it
 * never reloads in a loop either.
 */
let fatalLoads = 0;
/** Test hook (?debug=1): how many of the next loads lose their GPU device. */
let debugDeviceLosingLoads = 0;
let renderedResult = null;
let classEditor = null;

const labels = () => labelText(state.classes, state.pendingClass);

// Test hooks, only when the tests ask for them (?debug=1).
if (params.get('debug') === '1') {
  window.__clearclip = state;
  window.__clearclipDebug = {
    loseDevice: () => worker.postMessage({ type: MSG.LOSE_DEVICE }),
    trap: ({ abort = false, inPool = false } = {}) => worker.postMessage({ type: MSG.TRAP, abort, inPool }),
    loseDeviceInLoads: (count) => { debugDeviceLosingLoads = count; },
    poolWorkers: poolWorkerCount,
  };
}

function startWorker() {
  worker?.terminate();
  terminatePoolWorkers();
  clearTimeout(poolWatchdog);
  poolStarting = false;
  // What the worker needs before its first message: which wasm module to
  // start (worker.js), from whether WebGPU is wanted, how many threads and
  // whether relaxed SIMD may be used.
  const url = new URL('./worker.js', import.meta.url);
  if (!state.preferGpu) url.searchParams.set('webgpu', '0');
  for (const key of ['threads', 'relaxed']) if (params.get(key)) url.searchParams.set(key, params.get(key));
  if (poolStalls >= 2) url.searchParams.set('pool', '0');
  const started = new Worker(url, { type: 'module' });
  worker = started;
  // A replaced worker may still have messages on their way (the error that
  // follows a lost device's): only the current one is heard.
  started.onmessage = ({ data }) => {
    if (started === worker) onWorkerMessage(data);
  };
  started.onerror = (e) => {
    if (started !== worker) return;
    state.error = `the worker failed: ${e.message}`;
    render();
  };
}

/**
 * A thread of the worker's pool trapped (web/pool-threads.js): the module
 * they share is unusable, and the worker may wait on that thread forever.
 * The same as a fatal error from the worker: a new worker, a reload.
 */
function onPoolThreadStopped(message) {
  onError({ stage: 'internal', message, fatal: true });
  render();
}

/** The worker's pool did not start in time: a new worker, which loads what this one was loading. */
function onPoolStalled() {
  poolStalls += 1;
  console.warn(`the worker's pool of threads did not start within ${POOL_START_MS / 1000} s; `
    + `a new worker${poolStalls >= 2 ? ', on one thread' : ''}`);
  const wasLoading = !!state.loading;
  startWorker();
  if (wasLoading) loadModel({ pageRetry: true });
}

/**
 * Load the weights now: cached ones, a dropped file, or after the user agreed
 * to download. `warmUp: false` skips the GPU kernels' warm-up run.
 * `pageRetry`: the page's own reload (after a fatal error or a stalled
 * pool), which keeps the count of fatal loads; a load the user asks for
 * starts it again.
 */
function loadModel({ warmUp = true, pageRetry = false } = {}) {
  if (!pageRetry) fatalLoads = 0;
  $('weights-url').value = state.weightsFile ? '' : state.weightsUrl;
  $('weights-url').placeholder = state.weightsFile ? `local file: ${state.weightsFile.name}` : '';
  // The current model (if any) keeps serving until the new one is ready.
  state.consent = false;
  state.loading = { phase: state.weightsFile ? 'file' : 'download', done: 0, total: 0 };
  state.error = null;
  state.loadNotice = null;
  worker.postMessage({ type: MSG.LOAD, url: state.weightsUrl, file: state.weightsFile,
    gelu: state.gelu, half: state.half, warmUp, loseDevice: debugDeviceLosingLoads > 0 });
  debugDeviceLosingLoads = Math.max(0, debugDeviceLosingLoads - 1);
  render();
}

/** On opening: cached weights load at once; otherwise the page asks first. */
async function loadOrAsk() {
  if (await isCached(state.weightsUrl)) loadModel();
  else {
    state.consent = true;
    render();
  }
}

const sameBlock = (a, b) =>
  a.attention === b.attention && a.neighbourhoodStd === b.neighbourhoodStd && a.residualAlpha === b.residualAlpha && a.ffn === b.ffn;

/** The named mode whose last block the knobs are, or 'custom'. */
const modeId = () => state.catalog.modes.find((m) => sameBlock(m.lastBlock, state.lastBlock))?.id ?? 'custom';
const modeTitle = (id) => state.catalog.modes.find((m) => m.id === id)?.title ?? id;

function onCatalog(catalog) {
  const first = !state.catalog;
  state.catalog = catalog;
  if (!first) return; // a restarted worker: keep the user's settings
  const { modes, attentions, presets, defaults } = catalog;
  state.lastBlock = { ...defaults.lastBlock };
  state.crop = defaults.crop;
  state.stride = defaults.stride;
  state.threshold = defaults.backgroundThreshold;
  $('mode').append(...modes.map((m) => new Option(m.title, m.id)), new Option('custom (advanced)', 'custom'));
  $('mode').lastChild.disabled = true;
  $('compare').append(...modes.map((m) => new Option(m.title, m.id)));
  $('attention').append(...attentions.map((a) => new Option(a.title, a.id)));
  $('preset').append(...presets.map((p) => new Option(p.title, p.id)));
  applyUrlSettings();
  showSettings();
  classEditor.setColors((i) => catalog.classColors?.[i] ?? null);
  requestSegment(true);
}

/** The settings the link asked for, checked against the catalog (unknown values are ignored). */
function applyUrlSettings() {
  const s = fromUrl;
  const { catalog } = state;
  if (s.preset && catalog.presets.some((p) => p.id === s.preset)) applyPreset(s.preset);
  const mode = catalog.modes.find((m) => m.id === s.mode);
  if (mode) state.lastBlock = { ...mode.lastBlock };
  if (s.lastBlock && catalog.attentions.some((a) => a.id === s.lastBlock.attention)) state.lastBlock = s.lastBlock;
  if (s.threshold !== undefined) state.threshold = Math.min(1, Math.max(0, s.threshold));
  if (s.crop !== undefined) state.crop = s.crop;
  if (s.stride !== undefined) state.stride = s.stride;
  if (s.pamr !== undefined) state.pamr = s.pamr;
  if (s.singleTemplate !== undefined) state.singleTemplate = s.singleTemplate;
  if (s.compare && catalog.modes.some((m) => m.id === s.compare)) state.compare = s.compare;
  if (s.labels !== undefined) setClasses(splitClasses(s.labels));
}

/** Put the settings into the controls. */
function showSettings() {
  const k = state.lastBlock;
  $('mode').value = modeId();
  $('attention').value = k.attention;
  $('neighbourhood-std').value = k.neighbourhoodStd ?? 0;
  $('residual').checked = k.residualAlpha !== null;
  $('residual-alpha').disabled = k.residualAlpha === null;
  if (k.residualAlpha !== null) $('residual-alpha').value = k.residualAlpha;
  $('ffn').checked = k.ffn;
  $('pamr').checked = state.pamr;
  $('crop').value = state.crop;
  $('stride').value = state.stride;
  $('threshold').value = state.threshold;
  $('threshold-value').textContent = state.threshold.toFixed(2);
  $('single-template').checked = state.singleTemplate;
  $('compare').value = state.compare;
  $('preset').value = state.preset;
  $('gelu').checked = state.gelu;
  $('half').checked = state.half;
}

/** The settings into the query string, so the link reproduces them. */
function syncUrl() {
  if (!state.catalog) return;
  const { defaults, modes } = state.catalog;
  const example = exampleById(state.image?.example);
  const preset = state.catalog.presets.find((p) => p.id === state.preset);
  const named = preset ? preset.labels : example ? labelText(example.labels) : null;
  const search = writeSettings(location.search, {
    example: example?.id,
    labels: labels() === named ? undefined : labels(),
    preset: state.preset,
    mode: modeId(),
    lastBlock: state.lastBlock,
    threshold: state.threshold,
    crop: state.crop,
    stride: state.stride,
    pamr: state.pamr,
    singleTemplate: state.singleTemplate,
    compare: state.compare,
    weights: state.weightsFile ? null : state.weightsTyped,
    gelu: state.gelu,
    half: state.half,
  }, { mode: modes[0].id, crop: defaults.crop, stride: defaults.stride, backgroundThreshold: defaults.backgroundThreshold });
  if (search !== location.search) history.replaceState(null, '', `${location.pathname}${search}${location.hash}`);
}

function onWorkerMessage(msg) {
  switch (msg.type) {
    case MSG.THREAD_SPAWN:
      spawnPoolWorker(worker, msg, { starting: () => poolStarting, onStopped: onPoolThreadStopped });
      return;
    case MSG.POOL:
      clearTimeout(poolWatchdog);
      poolStarting = msg.phase === 'starting';
      if (poolStarting) poolWatchdog = setTimeout(onPoolStalled, POOL_START_MS);
      return;
    case MSG.CATALOG:
      onCatalog(msg.catalog);
      break;
    case MSG.PROGRESS:
      if (['download', 'cache', 'file', 'prepare'].includes(msg.phase)) state.loading = msg;
      else state.progress = msg;
      break;
    case MSG.READY:
      fatalLoads = 0;
      state.model = msg;
      state.loading = null;
      // Windows and strides in whole patches of this model (16 px for B/16,
      // 32 for B/32, 14 for L/14): the smallest the segmenter accepts.
      for (const id of ['crop', 'stride']) Object.assign($(id), { min: msg.patch, step: msg.patch });
      if (!state.holdRun) requestSegment(true);
      break;
    case MSG.RESULT:
      // The worker skips requests replaced before their turn: an older
      // result is shown, and the run goes on until the latest's.
      state.running = msg.id !== state.requestId;
      if (!state.running) state.progress = null;
      onResult(msg);
      break;
    case MSG.HEATMAP:
      onHeatmap(msg);
      return; // drawn in place
    case MSG.EXPORTED:
      download(new Blob([msg.bytes], { type: 'image/png' }), msg.what === 'overlay' ? 'overlay.png' : 'labels.png');
      break;
    case MSG.ERROR:
      onError(msg);
      break;
  }
  render();
}

function onResult(msg) {
  state.fatalsSinceResult = 0;
  const before = state.result?.result.classNames.join('\n');
  state.result = { ...msg, totalMs: performance.now() - requestStarted };
  state.heatmaps = new Map();
  state.heatmapsAsked = new Set();
  // Showing one class or hiding some carries over while the classes stay the same.
  if (msg.result.classNames.join('\n') !== before) state.view = emptyView();
  state.error = null;
  state.runNotice = null;
}

function onError(msg) {
  const whileLoading = msg.stage === 'load' || !!state.loading;
  if (msg.stage === 'load') state.loading = null;
  if (msg.stage === 'segment') {
    state.running = msg.id !== state.requestId;
    if (!state.running) state.progress = null;
  }
  if (msg.stage === 'device' && !msg.fatal) return; // nothing to lose on the CPU backend
  if (msg.cancelled && msg.stage === 'load') {
    state.loadNotice = 'Download cancelled.';
    if (!state.model) state.consent = true;
    return;
  }
  if (msg.cancelled) {
    state.runNotice = 'Run cancelled; the last result stays.';
    return;
  }
  state.error = msg.message;
  if (msg.fatal) {
    // The wasm instance is gone (lost GPU device, internal error): start
    // over, keeping the image and labels; the weights come from the cache.
    state.error = `${msg.message} — the model is being reloaded`;
    state.recovered = msg.message;
    state.model = null;
    state.running = false;
    if (whileLoading) {
      fatalLoads += 1;
    } else {
      state.fatalsSinceResult += 1;
      if (state.holdRun) {
        state.runNotice = `The run failed again after a restart (${msg.message.split('\n')[0]}), so it is not run again: `
          + 'change the settings, the image or the classes to try again.';
      }
    }
    startWorker();
    if (fatalLoads >= 2) {
      // The reload after a restart failed too: a new worker, but no load
      // until the user asks (Retry, other weights).
      state.loading = null;
      state.error = `${msg.message} — loading failed again after a restart, so it is not retried automatically: `
        + 'press Retry, or choose other weights.';
      return;
    }
    // No warm-up: the user's run follows at once and compiles the same
    // kernels; a warm-up would only delay it by a run on a blank image.
    loadModel({ warmUp: false, pageRetry: true });
  }
}

/** The request for the current settings (a SegmentRequest, crates/segment/src/request.rs). */
function segmentRequest() {
  return {
    labels: labels(),
    params: {
      backgroundThreshold: state.threshold,
      lastBlock: state.lastBlock,
      pamr: state.pamr ? {} : null,
      crop: state.crop,
      stride: state.stride,
      templates: state.singleTemplate ? 'single' : 'openai-imagenet',
    },
  };
}

let debounce = 0;
function requestSegment(now = false) {
  clearTimeout(debounce);
  // Only a change by the user reaches here while a run is held: it runs,
  // and gets the same one retry after a restart as any other run.
  if (state.holdRun) state.fatalsSinceResult = 0;
  syncUrl();
  if (!state.model || !state.image || !state.catalog) return;
  const run = () => {
    if (!labels()) {
      state.error = 'type at least one class name';
      render();
      return;
    }
    state.requestId += 1;
    state.running = true;
    state.error = null;
    state.runNotice = null;
    requestStarted = performance.now();
    // The file itself: the worker decodes it as the CLI does (no resize or
    // re-encoding here), once per image.
    const image = { id: state.image.id, blob: state.image.blob };
    worker.postMessage({ type: MSG.SEGMENT, id: state.requestId, image, request: segmentRequest(), compare: state.compare || null });
    render();
  };
  if (now) run();
  else debounce = setTimeout(run, 350);
}

function cancelRun() {
  clearTimeout(debounce);
  if (state.running) worker.postMessage({ type: MSG.CANCEL, what: 'segment', id: state.requestId });
}

let imageCount = 0;

/** Show `blob` and segment it; `example` is the gallery entry it came from. */
async function setImage(blob, example = null) {
  // The previous file's message goes at once, not after the decode below.
  state.error = null;
  let bitmap;
  try {
    // For display only; the worker decodes the same file for segmentation.
    bitmap = await createImageBitmap(blob, { imageOrientation: 'from-image' });
  } catch {
    state.error = `${blob.name ?? 'that file'} is not an image the browser can read (or it is corrupt)`;
    render();
    return;
  }
  state.image?.bitmap.close();
  imageCount += 1;
  state.image = { id: imageCount, blob, bitmap, width: bitmap.width, height: bitmap.height, example: example?.id ?? null };
  state.result = null;
  state.error = null;
  markCurrentExample($('gallery'), state.image.example);
  render();
  requestSegment(true);
}

/** A gallery photo with its classes. */
async function pickExample(example) {
  setClasses(example.labels);
  state.preset = '';
  $('preset').value = '';
  const blob = await (await fetch(example.image)).blob();
  await setImage(blob, example);
}

function setClasses(classes) {
  state.classes = [...classes];
  state.pendingClass = '';
  classEditor.set(state.classes);
}

function download(blob, name) {
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function onFiles(files) {
  const file = files?.[0];
  if (!file) return;
  if (/\.safetensors$/i.test(file.name)) {
    state.weightsFile = file;
    loadModel();
  } else {
    setImage(file);
  }
}

const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${(n / 1024).toFixed(0)} kB`);

function render() {
  renderModelStatus();
  renderRunStatus();
  renderPictures();
  renderResultPanels();
}

/**
 * The model's one status line (derived from the state, so it never
 * contradicts the error area), the consent panel, the progress bar, the
 * error and the retry and cancel buttons.
 */
function renderModelStatus() {
  const s = state;
  const bar = $('progress');
  let status = '';
  let kind = 'idle';
  if (s.loading) {
    const { phase, done, total } = s.loading;
    const verb = {
      download: 'Downloading and converting the weights',
      cache: 'Reading the weights from this browser\'s cache',
      file: 'Reading the weights file',
      prepare: 'Preparing the model',
    }[phase];
    status = total ? `${verb}: ${fmtBytes(done)} of ${fmtBytes(total)} (${((100 * done) / total).toFixed(0)}%)` : `${verb}…`;
    kind = 'loading';
    bar.max = total || 1;
    bar.value = total ? done : 0;
    if (!total) bar.removeAttribute('value'); // indeterminate
  } else if (s.model) {
    status = `${s.model.description} — on ${s.model.backend === 'webgpu' ? 'WebGPU' : 'the CPU (no WebGPU: slower)'}, weights from ${s.model.source}`;
    kind = 'ready';
  } else if (s.error) {
    status = 'No model loaded: the weights could not be loaded (see below).';
    kind = 'failed';
  } else if (s.consent) {
    status = s.loadNotice ?? 'The model is not downloaded yet.';
  }
  if (s.loadNotice && kind === 'ready') status = `${s.loadNotice} ${status}`;
  $('model-status').textContent = status;
  $('model-status').dataset.state = kind;
  bar.hidden = !s.loading;
  $('cancel-load').hidden = !(s.loading && s.loading.phase !== 'prepare');
  $('consent').hidden = !s.consent || !!s.loading;
  if (s.consent) {
    const isDefault = s.weightsUrl === DEFAULT_WEIGHTS_URL;
    const url = new URL(s.weightsUrl);
    $('consent-model').textContent = isDefault ? DEFAULT_MODEL.name : url.pathname.split('/').pop();
    $('consent-source').textContent = isDefault ? DEFAULT_MODEL.source : url.host || 'this site';
    $('consent-size').textContent = isDefault ? DEFAULT_MODEL.size : 'size shown once the download starts';
  }
  document.body.dataset.backend = s.model?.backend ?? '';
  $('retry').hidden = !(s.error && !s.model && !s.loading);
  $('error').textContent = s.error ?? '';
  $('error').hidden = !s.error;
}

/** The run's progress, or the last run's timings, and the notes. */
function renderRunStatus() {
  const s = state;
  let status = '';
  if (s.running) {
    const p = s.progress;
    status = p ? `${p.phase === 'text' ? 'Encoding class names' : 'Segmenting windows'} ${p.done}/${p.total}…` : 'Segmenting…';
  } else if (s.result) {
    const r = s.result.result;
    const { textMs, imageMs } = r.timings;
    status = `text ${textMs.toFixed(0)} ms · image ${imageMs.toFixed(0)} ms · total ${s.result.totalMs.toFixed(0)} ms` +
      ` (${r.windows} windows at ${r.resized.join('x')}${r.reusedWindows ? '; last block only, first blocks reused' : ''})`;
  } else if (!s.model && s.image) {
    status = s.loading ? 'The image is segmented once the model is ready.' : 'Load the model to segment this image.';
  }
  if (s.runNotice && !s.running && s.model) status = `${s.runNotice} ${status}`;
  $('run-status').textContent = status;
  $('cancel-run').hidden = !s.running;
  const recovered = s.recovered && `restarted after: ${s.recovered}`;
  $('notes').textContent = [recovered, s.model?.warning, ...(s.result?.result.warnings ?? [])].filter(Boolean).join(' · ');
}

/** The class whose heatmap the heatmap view shows: the one shown alone, or the one highlighted, or the first. */
const heatmapClass = () => state.view.solo ?? state.view.highlight ?? 0;

/** The image with its segmentation (or one class's heatmap), and the compared mode under the slider. */
function renderPictures() {
  const s = state;
  $('canvas-stack').hidden = !s.image;
  $('drop-hint').hidden = !!s.image;
  const result = s.result?.result;
  let heatmap = null;
  if (result && s.viewKind === 'heatmap') {
    heatmap = s.heatmaps.get(heatmapClass()) ?? null;
    if (!heatmap) requestHeatmap(heatmapClass());
  }
  $('heatmap-class').textContent = result ? result.classNames[heatmapClass()] ?? 'the first class' : 'the first class';
  if (s.image) drawOverlay($('overlay'), s.image.bitmap, result, { opacity: s.opacity, view: s.view, heatmap });
  const second = s.image && s.result?.compare;
  $('compare-overlay').hidden = !second || s.viewKind === 'heatmap';
  $('compare-slider-label').hidden = !second || s.viewKind === 'heatmap';
  let caption = result && s.catalog ? `${modeTitle(modeId())}: ${result.lastBlock}` : '';
  if (second && s.viewKind !== 'heatmap') {
    const canvas = $('compare-overlay');
    drawOverlay(canvas, s.image.bitmap, second.result, { opacity: s.opacity, view: s.view });
    clipCompared();
    caption = `Left: ${caption}. Right: ${modeTitle(second.mode)}: ${second.result.lastBlock} (${second.result.timings.imageMs.toFixed(0)} ms).`;
  }
  $('main-caption').textContent = caption;
}

let renderedView = null;

/** Show the compared mode right of the slider's position only. */
function clipCompared() {
  $('compare-overlay').style.clipPath = `inset(0 0 0 ${state.compareSplit}%)`;
}

/** Legend and heatmaps: they change only with the result, or (the legend) with the view. */
function renderResultPanels() {
  const s = state;
  $('download-overlay').disabled = $('download-labels').disabled = !s.result;
  $('legend-heading').hidden = $('heatmaps-section').hidden = !s.result;
  const view = `${s.view.solo}|${[...s.view.hidden]}`;
  if (s.result && (s.result !== renderedResult || view !== renderedView)) renderLegend($('legend'), s.result.result, s.view, legendActions);
  renderedView = view;
  if (s.result === renderedResult) return;
  renderedResult = s.result;
  if (!s.result) {
    $('legend').replaceChildren();
    $('heatmaps').replaceChildren();
    return;
  }
  // Each heatmap is asked for when its canvas scrolls into view.
  renderHeatmaps($('heatmaps'), s.result.result, requestHeatmap);
}

function requestHeatmap(index) {
  if (!state.result || state.heatmapsAsked.has(index)) return;
  state.heatmapsAsked.add(index);
  worker.postMessage({ type: MSG.HEATMAP, resultId: state.result.id, index });
}

function onHeatmap({ resultId, index, rgba }) {
  if (resultId !== state.result?.id) return;
  const { probsWidth, probsHeight } = state.result.result;
  const image = new ImageData(new Uint8ClampedArray(rgba.buffer), probsWidth, probsHeight);
  const layer = new OffscreenCanvas(probsWidth, probsHeight);
  layer.getContext('2d').putImageData(image, 0, 0);
  state.heatmaps.set(index, layer);
  const canvas = $('heatmaps').querySelectorAll('canvas')[index];
  canvas?.getContext('2d').putImageData(image, 0, 0);
  if (canvas) canvas.dataset.drawn = 'true';
  if (state.viewKind === 'heatmap' && heatmapClass() === index) renderPictures();
}

/** What the legend chips do to the view. */
const legendActions = {
  onSolo(i) {
    state.view.solo = state.view.solo === i ? null : i;
    state.view.hidden.delete(i);
    renderView();
  },
  onHide(i) {
    if (state.view.hidden.has(i)) state.view.hidden.delete(i);
    else state.view.hidden.add(i);
    if (state.view.solo === i) state.view.solo = null;
    renderView();
  },
  onHighlight(i) {
    if (state.view.highlight === i) return;
    state.view.highlight = i;
    renderPictures();
  },
};

/** Redraw after a change of the view, keeping keyboard focus on the chip that made it. */
function renderView() {
  const focused = document.activeElement;
  const index = focused?.closest?.('#legend li') ? [...$('legend').children].indexOf(focused.closest('li')) : -1;
  const which = focused?.classList.contains('legend-hide') ? '.legend-hide' : '.legend-chip';
  renderPictures();
  renderResultPanels();
  if (index >= 0) $('legend').children[index]?.querySelector(which)?.focus();
}

/** Read the last-block knobs and the window settings from the controls. */
function readKnobs() {
  const std = Math.max(0, Number($('neighbourhood-std').value) || 0);
  const attention = $('attention').value;
  const hasScores = state.catalog.attentions.find((a) => a.id === attention)?.hasScores;
  state.lastBlock = {
    attention,
    neighbourhoodStd: std > 0 && hasScores ? std : null, // identity attention has nothing to bias
    residualAlpha: $('residual').checked ? Number($('residual-alpha').value) || 0 : null,
    ffn: $('ffn').checked,
  };
  state.pamr = $('pamr').checked;
  const { crop, stride } = state.catalog.defaults;
  const least = Number($('crop').min); // one patch, once a model is loaded
  state.crop = Math.max(least, Number($('crop').value) || crop);
  state.stride = Math.min(state.crop, Math.max(least, Number($('stride').value) || stride));
}

function applyPreset(id) {
  const preset = state.catalog.presets.find((p) => p.id === id);
  const { backgroundThreshold, crop, stride } = preset ?? state.catalog.defaults;
  state.preset = preset ? id : '';
  const example = exampleById(state.image?.example) ?? DEFAULT_EXAMPLE;
  setClasses(preset ? splitClasses(preset.labels) : example.labels);
  Object.assign(state, { threshold: backgroundThreshold, crop, stride });
}

function onPointerMove(e) {
  const main = state.result?.result;
  if (!main) return;
  const rect = $('canvas-stack').getBoundingClientRect();
  const fx = (e.clientX - rect.left) / rect.width;
  const compared = state.result.compare && state.viewKind !== 'heatmap' && fx * 100 >= state.compareSplit;
  const r = compared ? state.result.compare.result : main;
  const x = Math.floor(fx * r.width);
  const y = Math.floor(((e.clientY - rect.top) / rect.height) * r.height);
  const hit = readout(r, x, y);
  const side = compared ? ` (${modeTitle(state.result.compare.mode)})` : '';
  $('hover').textContent = hit ? `${hit.name}: ${(hit.probability * 100).toFixed(1)}% at (${x}, ${y})${side}` : '';
}

/** Model: consent, typed URL, dropped weights, GELU, cancel and retry. */
function wireModel() {
  $('weights-input').addEventListener('change', (e) => onFiles(e.target.files));
  $('weights-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const typed = $('weights-url').value.trim();
    state.weightsUrl = typed ? new URL(typed, location.href).href : DEFAULT_WEIGHTS_URL;
    state.weightsTyped = typed && state.weightsUrl !== DEFAULT_WEIGHTS_URL ? typed : null;
    state.weightsFile = null;
    syncUrl();
    loadModel(); // the user asked for these weights: no further question
  });
  for (const [id, key] of [['gelu', 'gelu'], ['half', 'half']]) {
    $(id).addEventListener('change', (e) => {
      state[key] = e.target.checked;
      syncUrl();
      // The same weights again: where an image is shown, its run follows at
      // once and compiles the kernels, so a warm-up would only delay it.
      if (state.model || state.loading) loadModel({ warmUp: !state.image });
    });
  }
  $('load-model').addEventListener('click', () => loadModel());
  // Where an image is shown its run follows at once, and is the warm-up.
  $('retry').addEventListener('click', () => loadModel({ warmUp: !state.image }));
  $('cancel-load').addEventListener('click', () => worker.postMessage({ type: MSG.CANCEL, what: 'load' }));
}

/** Image: gallery, file picker, drop anywhere, paste. */
function wireImage() {
  renderGallery($('gallery'), pickExample);
  $('image-input').addEventListener('change', (e) => onFiles(e.target.files));
  document.addEventListener('dragover', (e) => e.preventDefault());
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    onFiles(e.dataTransfer.files);
  });
  document.addEventListener('paste', (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith('image/'));
    if (item) setImage(item.getAsFile());
  });
}

/** Classes: the chip editor and its clear button. */
function wireClasses() {
  classEditor = new ClassEditor($('class-chips'), $('labels'), (classes, pending) => {
    const before = labels();
    state.classes = classes;
    state.pendingClass = pending;
    if (labels() === before) return; // a chip became text or text a chip: the same classes
    if (state.preset) $('preset').value = state.preset = '';
    requestSegment();
  });
  $('clear-labels').addEventListener('click', () => classEditor.clear());
}

/** Settings: mode and its knobs, comparison, dataset preset, threshold, templates. */
function wireSettings() {
  $('threshold').addEventListener('input', (e) => {
    state.threshold = Number(e.target.value);
    $('threshold-value').textContent = state.threshold.toFixed(2);
    requestSegment();
  });
  $('mode').addEventListener('change', (e) => {
    state.lastBlock = { ...state.catalog.modes.find((m) => m.id === e.target.value).lastBlock };
    showSettings();
    requestSegment(true);
  });
  for (const id of ['attention', 'neighbourhood-std', 'residual', 'residual-alpha', 'ffn', 'pamr', 'crop', 'stride']) {
    $(id).addEventListener('change', () => {
      readKnobs();
      showSettings();
      requestSegment();
    });
  }
  $('compare').addEventListener('change', (e) => {
    state.compare = e.target.value;
    requestSegment(true);
  });
  $('preset').addEventListener('change', (e) => {
    applyPreset(e.target.value);
    showSettings();
    requestSegment(true);
  });
  $('single-template').addEventListener('change', (e) => {
    state.singleTemplate = e.target.checked;
    requestSegment(true);
  });
}

/** Result: view kind, opacity, compare slider, hover, cancel, link, downloads. */
function wireResult() {
  $('opacity').addEventListener('input', (e) => {
    state.opacity = Number(e.target.value);
    renderPictures();
  });
  for (const radio of document.querySelectorAll('input[name=view-kind]')) {
    radio.addEventListener('change', (e) => {
      state.viewKind = e.target.value;
      renderPictures();
    });
  }
  $('compare-slider').addEventListener('input', (e) => {
    state.compareSplit = Number(e.target.value);
    clipCompared();
  });
  $('canvas-stack').addEventListener('pointermove', onPointerMove);
  $('canvas-stack').addEventListener('pointerleave', () => { $('hover').textContent = ''; });
  $('cancel-run').addEventListener('click', cancelRun);
  $('copy-link').addEventListener('click', copyLink);
  $('download-overlay').addEventListener('click', () => worker.postMessage({ type: MSG.EXPORT, what: 'overlay', opacity: state.opacity }));
  $('download-labels').addEventListener('click', () => worker.postMessage({ type: MSG.EXPORT, what: 'labels' }));
}

async function copyLink() {
  syncUrl();
  try {
    await navigator.clipboard.writeText(location.href);
    state.runNotice = 'Link copied.';
  } catch {
    state.runNotice = 'The link is in the address bar (the clipboard was not available).';
  }
  renderRunStatus();
}

wireModel();
wireImage();
wireClasses();
wireSettings();
wireResult();
startWorker();
loadOrAsk();
pickExample(exampleById(fromUrl.example) ?? DEFAULT_EXAMPLE);
