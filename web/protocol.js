// Messages between the page (main.js) and the worker (worker.js), which owns
// the wasm module and the GPU. One request type at a time per field; results
// carry the id of the request they answer.
//
// page -> worker
//   {type: 'load', url?, file?, preferGpu, gelu}         load weights (URL with cache, or a File)
//   {type: 'segment', id, image: {id, blob}, request, compare?}
//      image: the file as dropped (a Blob), decoded by the worker in wasm as the CLI decodes it, once per image id;
//      request: a SegmentRequest (crates/segment/src/request.rs): {labels, params: {lastBlock, crop, stride,
//      backgroundThreshold, templates, pamr, ...}}; compare: a mode id to also run (same request otherwise).
//      Latest wins: a request replaced by a newer one before its turn is skipped.
//   {type: 'heatmap', resultId, index}                    RGBA heatmap of one class of the latest result
//   {type: 'export', what: 'overlay'|'labels', opacity}   PNG bytes of the last result
//   {type: 'lose-device'}                                 destroy the GPU device (tests of the recovery path)
// worker -> page
//   {type: 'catalog', catalog: {modes, attentions, presets, defaults}}   once the wasm module is up
//   {type: 'progress', phase: 'download'|'cache'|'load'|'text'|'image', done, total}
//   {type: 'ready', backend: 'webgpu'|'cpu', description, source: 'network'|'cache'|'file', warning?, loadMs}
//   {type: 'result', id, result, compare?, wasmMemoryBytes}  result: ResultSummary (crates/web) with typed arrays
//                                                         transferred: labels and labelColors (RGBA) at full
//                                                         size, probs every probsStride-th pixel;
//                                                         compare: {mode, result} of the second mode
//   {type: 'heatmap', resultId, index, rgba}             probsWidth x probsHeight RGBA
//   {type: 'exported', what, bytes}
//   {type: 'error', id?, stage: 'load'|'segment'|'heatmap'|'export'|'device', message, fatal}
//      fatal: the wasm instance is unusable (e.g. lost GPU device); the page restarts the worker.

export const MSG = Object.freeze({
  LOAD: 'load',
  SEGMENT: 'segment',
  HEATMAP: 'heatmap',
  EXPORT: 'export',
  LOSE_DEVICE: 'lose-device',
  CATALOG: 'catalog',
  PROGRESS: 'progress',
  READY: 'ready',
  RESULT: 'result',
  EXPORTED: 'exported',
  ERROR: 'error',
});

/** The default model: OpenAI CLIP ViT-B/16 in open_clip layout, from the Hugging Face hub. */
export const DEFAULT_WEIGHTS_URL =
  'https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_model.safetensors';

/** Bump when the cached bytes must not be reused. */
export const WEIGHTS_CACHE = 'clearclip-weights-v1';

export const TOKENIZER_URL = new URL('../assets/tokenizer.json', import.meta.url).href;
