// The one worker that owns the wasm module and the GPU. See protocol.js.
import init, { DecodedImage, WebSegmenter, WeightsLoader, mode_blocks, presets } from './pkg/clearclip_web.js';
import { MSG, TOKENIZER_URL } from './protocol.js';
import { loadWeightsFromFile, loadWeightsFromUrl } from './weights.js';

let segmenter = null;
let busy = false;
let pending = null; // latest segment request waiting to run
let decoded = null; // {id, image: DecodedImage}: the page's current image, decoded once
const post = (message, transfer = []) => self.postMessage(message, transfer);
let wasmMemory = null; // to report its size: wasm memory grows and never shrinks
const ready = init().then((wasm) => {
  wasmMemory = wasm.memory;
  post({ type: MSG.CATALOG, modes: mode_blocks(), presets: presets() });
});
const tokenizer = fetch(TOKENIZER_URL).then((r) => {
  if (!r.ok) throw new Error(`the tokenizer (${TOKENIZER_URL}) could not be loaded: HTTP ${r.status}`);
  return r.arrayBuffer();
});

const progress = (phase, done, total) => post({ type: MSG.PROGRESS, phase, done, total });

// The GPU device wgpu asks for, watched for loss. A lost device (driver
// reset, GPU process crash, `device.destroy()`) cannot be recovered inside
// this wasm instance: report it as fatal and let the page start a new worker.
let gpuDevice = null;
if (self.GPUAdapter) {
  const requestDevice = GPUAdapter.prototype.requestDevice;
  GPUAdapter.prototype.requestDevice = async function (...args) {
    const device = await requestDevice.apply(this, args);
    gpuDevice = device;
    device.lost.then((info) => {
      if (device !== gpuDevice) return;
      const reason = info.message || info.reason || 'unknown reason';
      post({ type: MSG.ERROR, stage: 'device', message: `the GPU device was lost (${reason})`, fatal: true });
    });
    return device;
  };
}

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
  let weights = null; // the loader, until the segmenter takes it over
  try {
    await ready;
    const usesGpu = preferGpu && 'gpu' in navigator;
    weights = await WeightsLoader.create(usesGpu, !!gelu);
    const { source, warning } = file
      ? await loadWeightsFromFile(file, weights, progress)
      : await loadWeightsFromUrl(url, weights, progress);
    progress('load', 0, 0);
    const tokenizerBytes = new Uint8Array(await tokenizer);
    const taken = weights;
    weights = null;
    const next = WebSegmenter.create(taken, tokenizerBytes);
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
      wasmMemoryBytes: wasmMemory.buffer.byteLength,
    });
  } catch (e) {
    weights?.free(); // what was uploaded of a refused or broken file
    fail('load', e);
  }
}

/** The request's image file, decoded in wasm exactly as the CLI decodes it. */
async function imageFor({ id, blob }) {
  if (decoded?.id === id) return decoded.image;
  decoded?.image.free();
  decoded = null;
  const image = DecodedImage.decode(new Uint8Array(await blob.arrayBuffer()));
  decoded = { id, image };
  return image;
}

async function runSegment(request) {
  const { id, options, compare } = request;
  const report = (phase, done, total) => progress(phase, done, total);
  const image = await imageFor(request.image);
  const result = await segmenter.segment(image, options, report);
  const heatmaps = result.classNames.map((_, i) => segmenter.heatmap_rgba(i));
  const transfer = [result.probs.buffer, result.labels.buffer, result.labelColors.buffer, ...heatmaps.map((h) => h.buffer)];
  let second = null;
  if (compare) {
    // The named mode's own block; the first blocks of every window are reused.
    const knobs = mode_blocks()[compare];
    const side = await segmenter.segment(image, { ...options, ...knobs, mode: compare, keep: false }, report);
    second = { mode: compare, result: side };
    transfer.push(side.probs.buffer, side.labels.buffer, side.labelColors.buffer);
  }
  post({ type: MSG.RESULT, id, result, heatmaps, compare: second }, transfer);
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
    case MSG.LOSE_DEVICE:
      if (gpuDevice) gpuDevice.destroy();
      else post({ type: MSG.ERROR, stage: 'device', message: 'no GPU device to lose (CPU backend)', fatal: false });
      break;
    default:
      post({ type: MSG.ERROR, stage: 'protocol', message: `unknown message ${data.type}`, fatal: false });
  }
};
