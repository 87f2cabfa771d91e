// Messages between the page (main.js) and the worker (worker.js), which owns
// the wasm module and the GPU. One request type at a time per field; results
// carry the id of the request they answer.
//
// page -> worker
//   {type: 'load', url?, file?, gelu, half, warmUp}   load weights (URL with cache, or a File); half: f16 where the GPU
//      has shader-f16; warmUp: false skips the kernels' warm-up (a reload whose image runs at once and compiles them)
//   {type: 'segment', id, image: {id, blob}, request, compare?}
//      image: the file as dropped (a Blob), decoded by the worker in wasm as the CLI decodes it, once per image id;
//      request: a SegmentRequest (crates/segment/src/request.rs): {labels, params: {lastBlock, crop, stride,
//      backgroundThreshold, templates, pamr, ...}}; compare: a mode id to also run (same request otherwise).
//      Latest wins: a request replaced by a newer one before its turn is skipped.
//   {type: 'heatmap', resultId, index}                    RGBA heatmap of one class of the latest result
//   {type: 'export', what: 'overlay'|'labels', opacity}   PNG bytes of the last result
//   {type: 'cancel', what: 'load'|'segment', id?}         stop the weights transfer, or the run `id` (between
//                                                         two class names or two windows); answered by an error
//                                                         with `cancelled: true`
//   {type: 'lose-device'}                                 destroy the GPU device (tests of the recovery path)
//   {type: 'trap', abort, inPool}                         trap the wasm instance in a later task, by a panic or
//                                                         (abort) as a failed allocation does; inPool: on a thread of
//                                                         the pool (the same tests)
//   {type: 'wasm_bindgen_rayon_spawn_failed', id, message}  the pool worker `id` asked for did not load its script
// worker -> page
//   {type: 'wasm_bindgen_rayon_spawn', id, url, name, port}   create a worker of the pool from `url` and hand it
//                                                         `port` (pool-threads.js; vendor/wasm-bindgen-rayon)
//   {type: 'pool', threads, phase: 'starting'|'settled'}  the threaded module and its pool: starting, then
//                                                         up or given up; the page starts a new worker if
//                                                         `settled` does not follow in time
//   {type: 'catalog', catalog: {modes, attentions, presets, defaults}}   once the wasm module is up
//   {type: 'progress', phase: 'download'|'cache'|'file'|'prepare'|'text'|'image', done, total}
//      download/cache/file: bytes of the weights streamed (each tensor is converted and uploaded as it
//      completes); prepare: the tokenizer, the segmenter and (WebGPU) the kernels' warm-up; text/image: a run's class names and windows
//   {type: 'ready', backend: 'webgpu'|'cpu', description, patch, source: 'network'|'cache'|'file', warning?, loadMs,
//      warmUpMs}  patch: the model's patch side in px (the least crop and stride); warmUpMs: part of loadMs spent
//      compiling the GPU kernels (a run on a blank image; 0 on the CPU and when skipped)
//   {type: 'result', id, result, compare?, wasmMemoryBytes}  result: ResultSummary (crates/web) with typed arrays
//                                                         transferred: labels and labelColors (RGBA) at full
//                                                         size, probs every probsStride-th pixel;
//                                                         compare: {mode, result} of the second mode
//   {type: 'heatmap', resultId, index, rgba}             probsWidth x probsHeight RGBA
//   {type: 'exported', what, bytes}
//   {type: 'error', id?, stage: 'load'|'segment'|'heatmap'|'export'|'device'|'internal', message, fatal, cancelled?}
//      fatal: the wasm instance is unusable (a lost GPU device; a trap, stage 'internal', which may come
//      while any call is under way); the page restarts the worker.

export const MSG = Object.freeze({
  LOAD: 'load',
  SEGMENT: 'segment',
  HEATMAP: 'heatmap',
  EXPORT: 'export',
  CANCEL: 'cancel',
  LOSE_DEVICE: 'lose-device',
  TRAP: 'trap',
  THREAD_SPAWN_FAILED: 'wasm_bindgen_rayon_spawn_failed',
  THREAD_SPAWN: 'wasm_bindgen_rayon_spawn',
  POOL: 'pool',
  CATALOG: 'catalog',
  PROGRESS: 'progress',
  READY: 'ready',
  RESULT: 'result',
  EXPORTED: 'exported',
  ERROR: 'error',
});

/**
 * What the page says of a wasm trap that came without a panic's message. In
 * Rust that is an abort, and the abort a program meets is an allocation
 * that failed.
 */
export const TRAP_WITHOUT_PANIC = 'most likely out of memory: try a smaller image or fewer classes';

/** The default model: OpenAI CLIP ViT-B/16 in open_clip layout, from the Hugging Face hub. */
export const DEFAULT_WEIGHTS_URL =
  'https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/open_clip_model.safetensors';

/** What the page tells a user before the default weights are downloaded. */
export const DEFAULT_MODEL = Object.freeze({
  name: 'OpenAI CLIP ViT-B/16',
  source: 'the Hugging Face hub (timm/vit_base_patch16_clip_224.openai)',
  size: '598 MB', // fp32, as measured when the page streamed it (docs/performance.md, memory table)
});

/** Bump when the cached bytes must not be reused. */
export const WEIGHTS_CACHE = 'clearclip-weights-v1';

export const TOKENIZER_URL = new URL('../assets/tokenizer.json', import.meta.url).href;
