// Messages between the page (main.js) and the worker (worker.js), which owns
// the wasm module and the GPU. One request type at a time per field; results
// carry the id of the request they answer.
//
// page -> worker
//   {type: 'load', url?, file?, preferGpu, gelu}         load weights (URL with cache, or a File)
//   {type: 'segment', id, image: {id, blob}, options, compare?}
//      image: the file as dropped (a Blob), decoded by the worker in wasm as the CLI decodes it, once per image id;
//      options: {labels, threshold, mode, attention, neighbourhoodStd, residualAlpha ('none' | number),
//                ffn, pamr, singleTemplate, crop, stride}; compare: a mode name to also run (same options
//      otherwise). Latest wins: a newer request replaces a pending one.
//   {type: 'export', what: 'overlay'|'labels', opacity}   PNG bytes of the last result
//   {type: 'lose-device'}                                 destroy the GPU device (tests of the recovery path)
// worker -> page
//   {type: 'catalog', modes: {name: knobs}, presets: [{id, title, labels, threshold, crop, stride}]}
//                                                         once the wasm module is up
//   {type: 'progress', phase: 'download'|'cache'|'load'|'text'|'image', done, total}
//   {type: 'ready', backend: 'webgpu'|'cpu', description, source: 'network'|'cache'|'file', warning?, loadMs}
//   {type: 'result', id, result, heatmaps, compare?}     typed arrays transferred; result.labels and
//                                                         result.labelColors (RGBA) at full size, result.probs
//                                                         and heatmaps every probsStride-th pixel;
//                                                         compare: {mode, result} of the second mode
//   {type: 'exported', what, bytes}
//   {type: 'error', id?, stage: 'load'|'segment'|'export', message, fatal}
//      fatal: the wasm instance is unusable (e.g. lost GPU device); the page restarts the worker.

export const MSG = Object.freeze({
  LOAD: 'load',
  SEGMENT: 'segment',
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
