// The page: one state object, render functions by page region, and the
// worker that owns the GPU. Lists and defaults come from the wasm catalog.
import { DEFAULT_WEIGHTS_URL, MSG } from './protocol.js';
import { drawOverlay, readout, renderHeatmaps, renderLegend } from './render.js';

const params = new URLSearchParams(location.search);
const EXAMPLE = { url: new URL('./assets/example.png', import.meta.url).href, labels: 'cat; grass, lawn; wall; sky' };

const $ = (id) => document.getElementById(id);
const state = {
  weightsUrl: params.get('weights') ? new URL(params.get('weights'), location.href).href : DEFAULT_WEIGHTS_URL,
  weightsFile: null,
  preferGpu: params.get('webgpu') !== '0',
  catalog: null, // {modes: [{id, title, lastBlock}], attentions, presets, defaults}, from the worker
  model: null, // {backend, description, source}
  loading: null, // {phase, done, total}: the weights
  progress: null, // {phase, done, total}: the running segmentation
  image: null, // {id, blob, bitmap, width, height}: the file goes to the worker, the bitmap is for display
  labels: EXAMPLE.labels,
  threshold: 0,
  opacity: 0.55,
  lastBlock: null, // {attention, neighbourhoodStd, residualAlpha, ffn}: the knobs; the mode is derived from them
  pamr: false,
  singleTemplate: false,
  crop: null, // from the catalog's defaults
  stride: null,
  preset: '',
  compare: '', // second mode shown side by side
  requestId: 0,
  running: false,
  result: null, // {id, result, compare?: {mode, result}, totalMs}
  error: null,
  recovered: null, // the last fatal error the app restarted after, kept as a note
};

let worker = null;
let requestStarted = 0;
let renderedResult = null;

// Test hooks, only when the tests ask for them (?debug=1).
if (params.get('debug') === '1') {
  window.__clearclip = state;
  window.__clearclipDebug = { loseDevice: () => worker.postMessage({ type: MSG.LOSE_DEVICE }) };
}

function startWorker() {
  worker?.terminate();
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = ({ data }) => onWorkerMessage(data);
  worker.onerror = (e) => {
    state.error = `the worker failed: ${e.message}`;
    render();
  };
}

function loadModel() {
  $('weights-url').value = state.weightsFile ? '' : state.weightsUrl;
  $('weights-url').placeholder = state.weightsFile ? `local file: ${state.weightsFile.name}` : '';
  // The current model (if any) keeps serving until the new one is ready.
  state.loading = { phase: 'download', done: 0, total: 0 };
  state.error = null;
  worker.postMessage({ type: MSG.LOAD, url: state.weightsUrl, file: state.weightsFile, preferGpu: state.preferGpu,
    gelu: $('gelu').checked });
  render();
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
  $('mode').append(...modes.map((m) => new Option(m.title, m.id)), new Option('custom (advanced)', 'custom'));
  $('mode').lastChild.disabled = true;
  $('compare').append(...modes.map((m) => new Option(m.title, m.id)));
  $('attention').append(...attentions.map((a) => new Option(a.title, a.id)));
  $('preset').append(...presets.map((p) => new Option(p.title, p.id)));
  showSettings();
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
  $('labels').value = state.labels;
}

function onWorkerMessage(msg) {
  switch (msg.type) {
    case MSG.CATALOG:
      onCatalog(msg.catalog);
      break;
    case MSG.PROGRESS:
      if (['download', 'cache', 'load'].includes(msg.phase)) state.loading = msg;
      else state.progress = msg;
      break;
    case MSG.READY:
      state.model = msg;
      state.loading = null;
      requestSegment();
      break;
    case MSG.RESULT:
      // The worker skips requests replaced before their turn: an older
      // result is shown, and the run goes on until the latest's.
      state.running = msg.id !== state.requestId;
      if (!state.running) state.progress = null;
      state.result = { ...msg, totalMs: performance.now() - requestStarted };
      state.error = null;
      break;
    case MSG.HEATMAP:
      showHeatmap(msg);
      return; // drawn in place, nothing else changes
    case MSG.EXPORTED:
      download(new Blob([msg.bytes], { type: 'image/png' }), msg.what === 'overlay' ? 'overlay.png' : 'labels.png');
      break;
    case MSG.ERROR:
      onError(msg);
      break;
  }
  render();
}

function onError(msg) {
  if (msg.stage === 'load') state.loading = null;
  if (msg.stage === 'segment') state.running = msg.id !== state.requestId;
  if (msg.stage === 'device' && !msg.fatal) return; // nothing to lose on the CPU backend
  state.error = msg.message;
  if (msg.fatal) {
    // The wasm instance is gone (lost GPU device, internal error): start
    // over, keeping the image and labels; the weights come from the cache.
    state.error = `${msg.message} — the model is being reloaded`;
    state.recovered = msg.message;
    state.model = null;
    state.running = false;
    startWorker();
    loadModel();
  }
}

/** The request for the current settings (a SegmentRequest, crates/segment/src/request.rs). */
function segmentRequest() {
  return {
    labels: state.labels,
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
  if (!state.model || !state.image || !state.catalog) return;
  const run = () => {
    if (!state.labels.trim()) {
      state.error = 'type at least one class name';
      render();
      return;
    }
    state.requestId += 1;
    state.running = true;
    state.error = null;
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

let imageCount = 0;

async function setImage(blob) {
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
  state.image = { id: imageCount, blob, bitmap, width: bitmap.width, height: bitmap.height };
  state.result = null;
  state.error = null;
  render();
  requestSegment(true);
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

/** The model line, the download progress bar, the error and the retry button. */
function renderModelStatus() {
  const s = state;
  const bar = $('progress');
  if (s.loading) {
    const { phase, done, total } = s.loading;
    const verb = { download: 'Downloading weights', cache: 'Reading cached weights', load: 'Loading model' }[phase];
    $('model-status').textContent = total
      ? `${verb}: ${fmtBytes(done)} of ${fmtBytes(total)} (${((100 * done) / total).toFixed(0)}%)`
      : `${verb}…`;
    bar.max = total || 1;
    bar.value = total ? done : 0;
  } else if (s.model) {
    $('model-status').textContent = `${s.model.description} — on ${s.model.backend === 'webgpu' ? 'WebGPU' : 'the CPU (no WebGPU: slower)'}, weights from ${s.model.source}`;
  }
  bar.hidden = !s.loading;
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
  }
  $('run-status').textContent = status;
  const recovered = s.recovered && `restarted after: ${s.recovered}`;
  $('notes').textContent = [recovered, s.model?.warning, ...(s.result?.result.warnings ?? [])].filter(Boolean).join(' · ');
}

/** The image with its segmentation, and the comparison beside it. */
function renderPictures() {
  const s = state;
  const canvas = $('overlay');
  canvas.hidden = !s.image;
  $('drop-hint').hidden = !!s.image;
  if (s.image) drawOverlay(canvas, s.image.bitmap, s.result?.result, s.opacity);
  $('main-caption').textContent = s.result && s.catalog ? `${modeTitle(modeId())}: ${s.result.result.lastBlock}` : '';
  const second = s.image && s.result?.compare;
  $('compare-figure').hidden = !second;
  if (second) {
    drawOverlay($('compare-overlay'), s.image.bitmap, second.result, s.opacity);
    $('compare-caption').textContent = `${modeTitle(second.mode)}: ${second.result.lastBlock} (${second.result.timings.imageMs.toFixed(0)} ms)`;
  }
}

/** Legend and heatmaps: they change only with the result, not with progress or opacity. */
function renderResultPanels() {
  const s = state;
  $('download-overlay').disabled = $('download-labels').disabled = !s.result;
  if (s.result === renderedResult) return;
  renderedResult = s.result;
  if (!s.result) {
    $('legend').replaceChildren();
    $('heatmaps').replaceChildren();
    return;
  }
  const resultId = s.result.id;
  renderLegend($('legend'), s.result.result);
  // Each heatmap is asked for when its canvas scrolls into view.
  renderHeatmaps($('heatmaps'), s.result.result, (index) => worker.postMessage({ type: MSG.HEATMAP, resultId, index }));
}

function showHeatmap({ resultId, index, rgba }) {
  if (resultId !== state.result?.id) return;
  const { probsWidth, probsHeight } = state.result.result;
  const canvas = $('heatmaps').querySelectorAll('canvas')[index];
  canvas?.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer), probsWidth, probsHeight), 0, 0);
  if (canvas) canvas.dataset.drawn = 'true';
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
  const least = Number($('crop').min); // one patch
  state.crop = Math.max(least, Number($('crop').value) || crop);
  state.stride = Math.min(state.crop, Math.max(least, Number($('stride').value) || stride));
}

function applyPreset(id) {
  const preset = state.catalog.presets.find((p) => p.id === id);
  const { backgroundThreshold, crop, stride } = preset ?? state.catalog.defaults;
  state.preset = id;
  Object.assign(state, { labels: preset?.labels ?? EXAMPLE.labels, threshold: backgroundThreshold, crop, stride });
}

function wire() {
  $('labels').value = state.labels;
  $('labels').addEventListener('input', (e) => {
    state.labels = e.target.value;
    if (state.preset) $('preset').value = state.preset = '';
    requestSegment();
  });
  $('threshold').addEventListener('input', (e) => {
    state.threshold = Number(e.target.value);
    $('threshold-value').textContent = state.threshold.toFixed(2);
    requestSegment();
  });
  $('opacity').addEventListener('input', (e) => {
    state.opacity = Number(e.target.value);
    render();
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
  $('image-input').addEventListener('change', (e) => onFiles(e.target.files));
  $('weights-input').addEventListener('change', (e) => onFiles(e.target.files));
  $('weights-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.weightsUrl = $('weights-url').value.trim() || DEFAULT_WEIGHTS_URL;
    state.weightsFile = null;
    loadModel();
  });
  $('gelu').addEventListener('change', loadModel);
  $('retry').addEventListener('click', loadModel);
  $('download-overlay').addEventListener('click', () => worker.postMessage({ type: MSG.EXPORT, what: 'overlay', opacity: state.opacity }));
  $('download-labels').addEventListener('click', () => worker.postMessage({ type: MSG.EXPORT, what: 'labels' }));
  document.addEventListener('dragover', (e) => e.preventDefault());
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    onFiles(e.dataTransfer.files);
  });
  document.addEventListener('paste', (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith('image/'));
    if (item) setImage(item.getAsFile());
  });
  $('overlay').addEventListener('mousemove', (e) => {
    const r = state.result?.result;
    if (!r) return;
    const rect = e.target.getBoundingClientRect();
    const x = Math.floor(((e.clientX - rect.left) / rect.width) * r.width);
    const y = Math.floor(((e.clientY - rect.top) / rect.height) * r.height);
    const hit = readout(r, x, y);
    $('hover').textContent = hit ? `${hit.name}: ${(hit.probability * 100).toFixed(1)}% at (${x}, ${y})` : '';
  });
}

wire();
startWorker();
loadModel();
fetch(EXAMPLE.url).then((r) => r.blob()).then(setImage);
