// The page: one state object, one render function, and the worker that owns the GPU.
import { DEFAULT_WEIGHTS_URL, MSG } from './protocol.js';
import { drawOverlay, readout, renderHeatmaps, renderLegend } from './render.js';

const params = new URLSearchParams(location.search);
const EXAMPLE = { url: new URL('./assets/example.png', import.meta.url).href, labels: 'cat; grass, lawn; wall; sky' };

const $ = (id) => document.getElementById(id);
const state = {
  weightsUrl: params.get('weights') ? new URL(params.get('weights'), location.href).href : DEFAULT_WEIGHTS_URL,
  weightsFile: null,
  preferGpu: params.get('webgpu') !== '0',
  model: null, // {backend, description, source}
  loading: null, // {phase, done, total}
  image: null, // {id, blob, bitmap, width, height}: the file goes to the worker, the bitmap is for display
  labels: EXAMPLE.labels,
  threshold: 0,
  opacity: 0.55,
  mode: 'clearclip', // a named mode, or 'custom' when the knobs match none
  knobs: null, // {attention, neighbourhoodStd, residualAlpha: 'none' | number, ffn}
  pamr: false,
  crop: 448,
  stride: 224,
  preset: '',
  compare: '', // second mode shown side by side
  catalog: null, // {modes: {name: knobs}, presets: [...]}, from the worker
  requestId: 0,
  running: false,
  result: null, // {result, heatmaps, compare?: {mode, result}, id, totalMs}
  error: null,
  recovered: null, // the last fatal error the app restarted after, kept as a note
};
window.__clearclip = state; // read by the end-to-end tests
window.__clearclipDebug = { loseDevice: () => worker.postMessage({ type: MSG.LOSE_DEVICE }) };

let worker = null;
let requestStarted = 0;
let renderedResult = null;

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

const sameKnobs = (a, b) =>
  a.attention === b.attention && a.neighbourhoodStd === b.neighbourhoodStd && a.residualAlpha === b.residualAlpha && a.ffn === b.ffn;

/** The named mode whose last block these knobs are, or 'custom'. */
function modeOf(knobs) {
  return Object.entries(state.catalog.modes).find(([, k]) => sameKnobs(k, knobs))?.[0] ?? 'custom';
}

function onCatalog({ modes, presets }) {
  const first = !state.catalog;
  state.catalog = { modes, presets };
  if (!first) return; // a restarted worker: keep the user's settings
  state.knobs = { ...modes[state.mode] };
  $('preset').append(...presets.map((p) => new Option(p.title, p.id)));
  showKnobs();
}

function showKnobs() {
  const k = state.knobs;
  $('mode').value = state.mode;
  $('attention').value = k.attention;
  $('neighbourhood-std').value = k.neighbourhoodStd;
  $('residual').checked = k.residualAlpha !== 'none';
  $('residual-alpha').disabled = k.residualAlpha === 'none';
  if (k.residualAlpha !== 'none') $('residual-alpha').value = k.residualAlpha;
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
      onCatalog(msg);
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
      // Every request reaches the worker, which runs only the latest pending
      // one: an older result is shown, and the run goes on until the latest's.
      state.running = msg.id !== state.requestId;
      if (!state.running) state.progress = null;
      state.result = { ...msg, totalMs: performance.now() - requestStarted };
      state.error = null;
      break;
    case MSG.EXPORTED:
      download(new Blob([msg.bytes], { type: 'image/png' }), msg.what === 'overlay' ? 'overlay.png' : 'labels.png');
      break;
    case MSG.ERROR:
      if (msg.stage === 'load') state.loading = null;
      if (msg.stage === 'segment') state.running = msg.id !== state.requestId;
      if (msg.stage === 'device' && !msg.fatal) break; // nothing to lose on the CPU backend
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
      break;
  }
  render();
}

let debounce = 0;
function requestSegment(now = false) {
  clearTimeout(debounce);
  if (!state.model || !state.image || !state.knobs) return;
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
    const options = {
      labels: state.labels, threshold: state.threshold, mode: state.mode === 'custom' ? 'clearclip' : state.mode,
      ...state.knobs, pamr: state.pamr, crop: state.crop, stride: state.stride,
      singleTemplate: $('single-template').checked,
    };
    // The file itself: the worker decodes it as the CLI does (no resize or
    // re-encoding here), once per image.
    const image = { id: state.image.id, blob: state.image.blob };
    worker.postMessage({ type: MSG.SEGMENT, id: state.requestId, image, options, compare: state.compare || null });
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

function isWeightsFile(file) {
  return /\.safetensors$/i.test(file.name);
}

function onFiles(files) {
  const file = files?.[0];
  if (!file) return;
  if (isWeightsFile(file)) {
    state.weightsFile = file;
    loadModel();
  } else {
    setImage(file);
  }
}

const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${(n / 1024).toFixed(0)} kB`);

function render() {
  const s = state;
  // Model status and progress bar.
  const bar = $('progress');
  if (s.loading) {
    const { phase, done, total } = s.loading;
    const verb = { download: 'Downloading weights', cache: 'Reading cached weights', load: 'Loading model' }[phase];
    $('model-status').textContent = total
      ? `${verb}: ${fmtBytes(done)} of ${fmtBytes(total)} (${((100 * done) / total).toFixed(0)}%)`
      : `${verb}…`;
    bar.hidden = false;
    bar.max = total || 1;
    bar.value = total ? done : 0;
  } else if (s.model) {
    $('model-status').textContent = `${s.model.description} — on ${s.model.backend === 'webgpu' ? 'WebGPU' : 'the CPU (no WebGPU: slower)'}, weights from ${s.model.source}`;
    bar.hidden = true;
  } else {
    bar.hidden = true;
  }
  document.body.dataset.backend = s.model?.backend ?? '';
  $('retry').hidden = !(s.error && !s.model && !s.loading);
  $('error').textContent = s.error ?? '';
  $('error').hidden = !s.error;

  // Run status.
  let status = '';
  if (s.running) {
    const p = s.progress;
    status = p ? `${p.phase === 'text' ? 'Encoding class names' : 'Segmenting windows'} ${p.done}/${p.total}…` : 'Segmenting…';
  } else if (s.result) {
    const r = s.result.result;
    status = `text ${r.textMs.toFixed(0)} ms · image ${r.imageMs.toFixed(0)} ms · total ${s.result.totalMs.toFixed(0)} ms` +
      ` (${r.windows} windows at ${r.resized}${r.reusedWindows ? '; last block only, first blocks reused' : ''})`;
  }
  $('run-status').textContent = status;
  const recovered = s.recovered && `restarted after: ${s.recovered}`;
  $('notes').textContent = [recovered, s.model?.warning, ...(s.result?.result.warnings ?? [])].filter(Boolean).join(' · ');

  // Pictures.
  const canvas = $('overlay');
  canvas.hidden = !s.image;
  $('drop-hint').hidden = !!s.image;
  if (s.image) drawOverlay(canvas, s.image.bitmap, s.result?.result, s.opacity);
  const modeName = (m) => $('mode').querySelector(`option[value="${m}"]`)?.textContent ?? m;
  $('main-caption').textContent = s.result ? `${modeName(modeOf(s.knobs))}: ${s.result.result.lastBlock}` : '';
  const second = s.image && s.result?.compare;
  $('compare-figure').hidden = !second;
  if (second) {
    drawOverlay($('compare-overlay'), s.image.bitmap, second.result, s.opacity);
    $('compare-caption').textContent = `${modeName(second.mode)}: ${second.result.lastBlock} (${second.result.imageMs.toFixed(0)} ms)`;
  }
  // Legend and heatmaps change only with the result, not with progress or opacity.
  if (s.result !== renderedResult) {
    renderedResult = s.result;
    if (s.result) {
      renderLegend($('legend'), s.result.result);
      renderHeatmaps($('heatmaps'), s.result.result, s.result.heatmaps.map((h) => new Uint8ClampedArray(h.buffer)));
    } else {
      $('legend').replaceChildren();
      $('heatmaps').replaceChildren();
    }
  }
  $('download-overlay').disabled = $('download-labels').disabled = !s.result;
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
    state.mode = e.target.value;
    state.knobs = { ...state.catalog.modes[state.mode] };
    showKnobs();
    requestSegment(true);
  });
  const onKnob = () => {
    state.knobs = {
      attention: $('attention').value,
      neighbourhoodStd: Math.max(0, Number($('neighbourhood-std').value) || 0),
      residualAlpha: $('residual').checked ? Number($('residual-alpha').value) || 0 : 'none',
      ffn: $('ffn').checked,
    };
    if (state.knobs.attention === 'identity') state.knobs.neighbourhoodStd = 0; // nothing to bias
    state.mode = modeOf(state.knobs);
    state.pamr = $('pamr').checked;
    state.crop = Math.max(16, Number($('crop').value) || 448);
    state.stride = Math.min(state.crop, Math.max(16, Number($('stride').value) || 224));
    showKnobs();
    requestSegment();
  };
  for (const id of ['attention', 'neighbourhood-std', 'residual', 'residual-alpha', 'ffn', 'pamr', 'crop', 'stride']) {
    $(id).addEventListener('change', onKnob);
  }
  $('compare').addEventListener('change', (e) => {
    state.compare = e.target.value;
    requestSegment(true);
  });
  $('preset').addEventListener('change', (e) => {
    const preset = state.catalog.presets.find((p) => p.id === e.target.value);
    state.preset = e.target.value;
    if (preset) {
      Object.assign(state, { labels: preset.labels, threshold: preset.threshold, crop: preset.crop, stride: preset.stride });
    } else {
      Object.assign(state, { labels: EXAMPLE.labels, threshold: 0, crop: 448, stride: 224 });
    }
    showKnobs();
    requestSegment(true);
  });
  $('single-template').addEventListener('change', () => requestSegment(true));
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
