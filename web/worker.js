// The one worker that owns the wasm module and the GPU. See protocol.js.
import init, { WebSegmenter, WeightsBuffer } from './pkg/clearclip_web.js';
import { MSG, TOKENIZER_URL } from './protocol.js';
import { loadWeightsFromFile, loadWeightsFromUrl } from './weights.js';

let segmenter = null;
let busy = false;
let pending = null; // latest segment request waiting to run
const ready = init();
const tokenizer = fetch(TOKENIZER_URL).then((r) => {
  if (!r.ok) throw new Error(`the tokenizer (${TOKENIZER_URL}) could not be loaded: HTTP ${r.status}`);
  return r.arrayBuffer();
});

const post = (message, transfer = []) => self.postMessage(message, transfer);
const progress = (phase, done, total) => post({ type: MSG.PROGRESS, phase, done, total });

/** A panic or a lost device leaves wasm unusable: the page must restart us. */
function isFatal(error) {
  const text = String(error?.message ?? error);
  return error instanceof WebAssembly.RuntimeError || /unreachable|device (was )?lost|panicked/i.test(text);
}

function fail(stage, error, id) {
  const message = String(error?.message ?? error);
  post({ type: MSG.ERROR, stage, id, message, fatal: isFatal(error) });
}

async function load({ url, file, preferGpu, gelu }) {
  const started = performance.now();
  try {
    await ready;
    const makeBuffer = (bytes) => new WeightsBuffer(bytes);
    const { buffer, source, warning } = file
      ? await loadWeightsFromFile(file, makeBuffer, progress)
      : await loadWeightsFromUrl(url, makeBuffer, progress);
    progress('load', 0, 0);
    const tokenizerBytes = new Uint8Array(await tokenizer);
    const usesGpu = preferGpu && 'gpu' in navigator;
    const next = await WebSegmenter.create(buffer, tokenizerBytes, usesGpu, !!gelu);
    // Keep the previous model until the new one works; swap between runs.
    while (busy) await new Promise((r) => setTimeout(r, 20));
    segmenter?.free();
    segmenter = next;
    post({
      type: MSG.READY,
      backend: segmenter.backend(),
      description: segmenter.description() + (preferGpu && !usesGpu ? ' (this browser has no WebGPU)' : ''),
      source,
      warning,
      loadMs: performance.now() - started,
    });
  } catch (e) {
    fail('load', e);
  }
}

async function runSegment(request) {
  const { id, rgba, width, height, labels, threshold, mode, singleTemplate } = request;
  const result = await segmenter.segment(new Uint8Array(rgba), width, height, labels, threshold, mode,
    !!singleTemplate, (phase, done, total) => progress(phase, done, total));
  const labelColors = segmenter.label_colors_rgba();
  const heatmaps = result.classNames.map((_, i) => segmenter.heatmap_rgba(i));
  post({ type: MSG.RESULT, id, result, labelColors, heatmaps },
    [result.probs.buffer, result.labels.buffer, labelColors.buffer, ...heatmaps.map((h) => h.buffer)]);
}

async function drain() {
  busy = true;
  while (pending) {
    const request = pending;
    pending = null;
    if (!segmenter) {
      fail('segment', new Error('no model is loaded yet'), request.id);
      continue;
    }
    try {
      await runSegment(request);
    } catch (e) {
      fail('segment', e, request.id);
    }
  }
  busy = false;
}

function exportPng({ what, opacity }) {
  try {
    const bytes = what === 'overlay' ? segmenter.overlay_png(opacity) : segmenter.labels_png();
    post({ type: MSG.EXPORTED, what, bytes }, [bytes.buffer]);
  } catch (e) {
    fail('export', e);
  }
}

self.onmessage = ({ data }) => {
  switch (data.type) {
    case MSG.LOAD:
      load(data);
      break;
    case MSG.SEGMENT:
      pending = data; // latest wins
      if (!busy) drain();
      break;
    case MSG.EXPORT:
      exportPng(data);
      break;
    default:
      post({ type: MSG.ERROR, stage: 'protocol', message: `unknown message ${data.type}`, fatal: false });
  }
};
