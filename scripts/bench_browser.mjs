import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ISOLATION, serve } from './serve.mjs';
// Times the page in headless Chromium:
//   node scripts/bench_browser.mjs WEIGHTS IMAGE [BACKENDS] [runs=N] [onnx=MODEL] [load-only]
// BACKENDS is a comma list (default cpu,webgpu) of
//   cpu     the page on its wasm CPU backend, with its default thread count (the server sends
//           the cross-origin isolation headers; see web/worker.js); `cpu:N` on N threads
//           (?threads=N: 1 is the one-thread module, more the threaded one, each with relaxed
//           SIMD; `cpu:N:plain`, ?relaxed=0, plays a browser without it: the same modules
//           without relaxed SIMD),
//   webgpu  the page on WebGPU,
//   onnx    the peer: onnxruntime-web's wasm backend running MODEL, the ClearCLIP dense encoder
//           for one 448x448 window (`scripts/gen_fixtures.py --dense-onnx`), on 1 thread
//           (`onnx:N`: on N, its own pool of web workers, as the page's threaded module).
// WEIGHTS and MODEL are paths under the served root (the repository, or $APP_ROOT to measure
// another checkout side by side), IMAGE a PNG file (448x448 to compare with the peer).
// For the page: load (and warm-up), the first run after load (the page's example image, when it
// shows one), then `runs` rounds (default 3). Round 1 segments IMAGE with two class names: the
// cold run of that image. Each later round first types two new names (the text is
// encoded again; the image is the same, so only the last block runs again) and then drops a
// copy of IMAGE with one pixel changed (all blocks run again; the names are cached). After the
// rounds it switches through the modes and times each re-run. It prints one JSON line per
// backend: the cold run, and the median/min/max of the warm rounds for text, image and each
// image phase. `load-only` stops once the model is loaded and reports the memory that took
// (peak resident size of the Chromium processes). `v8prof` runs Chromium with V8's sampling
// profiler: each isolate (the page, the worker) writes isolate-*-v8.log into the current
// directory, for `node --prof-process` (build with WASM_NAMES=1 to see the wasm functions' names).
// `jsflags=FLAGS` passes V8 flags (e.g. jsflags=--no-wasm-deopt).
const positional = process.argv.slice(2).filter((a) => !a.includes('=') && a !== 'load-only' && a !== 'v8prof');
const options = Object.fromEntries(process.argv.slice(2).filter((a) => a.includes('=')).map((a) => a.split(/=(.*)/s, 2)));
const [weightsPath, imagePath, backends = 'cpu,webgpu'] = positional;
const loadOnly = process.argv.includes('load-only');
const v8prof = process.argv.includes('v8prof');
const runs = Math.max(1, Number(options.runs ?? 3));
const server = await serve(process.env.APP_ROOT ? { root: process.env.APP_ROOT } : {});
const origin = `http://127.0.0.1:${server.port}`;
const args = ['--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--no-sandbox', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-quic',
  ...(v8prof || options.jsflags ? [`--js-flags=${[v8prof ? '--prof' : '', options.jsflags ?? ''].join(' ').trim()}`] : [])];
/** Class names for the rounds after the first: one new pair a round, so the text is encoded again. */
const NAME_PAIRS = [['dog', 'sky'], ['tree', 'road'], ['car', 'water'], ['bird', 'house'], ['boat', 'snow'], ['horse', 'sand'], ['chair', 'wall']];

/** Peak resident size (VmHWM) of the Chromium processes: the largest, the sum, and the largest of each type. */
function peakRss() {
  let max = 0, sum = 0;
  const byType = {};
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmd.includes('chromium')) continue;
      const hwm = Math.round(Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/VmHWM:\s+(\d+)/)?.[1] ?? 0) / 1024);
      const type = cmd.match(/--type=([a-z-]+)/)?.[1] ?? 'browser';
      byType[type] = Math.max(byType[type] ?? 0, hwm);
      max = Math.max(max, hwm); sum += hwm;
    } catch {}
  }
  return { maxProcessMB: max, sumMB: sum, byType };
}

/** Median, min and max, rounded to ms. */
function spread(values) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  const median = s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  return { median: Math.round(median), min: Math.round(s[0]), max: Math.round(s[s.length - 1]) };
}

/** A browser with a fresh profile on disk, as a user's: a fresh context would be off the record,
 * where the Cache API keeps the whole weights file in the browser's memory. */
async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'clearclip-bench-'));
  const browser = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args });
  const page = browser.pages()[0] ?? await browser.newPage();
  page.on('console', (m) => { if (m.type() === 'error') console.error('console', m.text().slice(0, 200)); });
  return { page, close: async () => { await browser.close(); rmSync(profile, { recursive: true, force: true }); } };
}

/** Wait until the page has shown the result of its latest request (one made after request `after`). */
const settled = (page, after) => page.waitForFunction((b) => {
  const s = window.__clearclip;
  return s.requestId > b && s.result && s.result.id === s.requestId && !s.running;
}, after, { timeout: 1_800_000, polling: 200 });

/** Drop IMAGE on the page, with pixel (0, 0) set to `variant` when given (so the window cache misses). */
async function dropImage(page, png, variant) {
  const before = await page.evaluate(() => window.__clearclip.requestId ?? 0);
  await page.evaluate(async ({ b64, variant }) => {
    let blob = new Blob([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], { type: 'image/png' });
    if (variant !== undefined) {
      const bitmap = await createImageBitmap(blob);
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const g = canvas.getContext('2d');
      g.drawImage(bitmap, 0, 0);
      g.fillStyle = `rgb(${variant % 256}, 0, 0)`;
      g.fillRect(0, 0, 1, 1);
      blob = await canvas.convertToBlob({ type: 'image/png' });
    }
    const t = new DataTransfer();
    t.items.add(new File([blob], 'bench.png', { type: 'image/png' }));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: t, bubbles: true, cancelable: true }));
  }, { b64: png.toString('base64'), variant });
  await settled(page, before);
  return page.evaluate(() => window.__clearclip.result.result);
}

/** Replace the class names (the chips) and wait for the re-run. */
async function setNames(page, names) {
  const before = await page.evaluate(() => window.__clearclip.requestId);
  await page.click('#clear-labels');
  await page.fill('#labels', names.join('; '));
  await page.press('#labels', 'Enter');
  await settled(page, before);
  return page.evaluate(() => window.__clearclip.result.result);
}

/** The page on `backend` (cpu, cpu:N, cpu:N:plain or webgpu). */
async function benchPage(backend, png) {
  const { page, close } = await launch();
  const t0 = Date.now();
  // Classes and one template through the query string; a fresh profile has no cached weights, so Load is clicked.
  const [name, threads, simd] = backend.split(':');
  const query = { webgpu: 'webgpu=1', cpu: `webgpu=0${threads ? `&threads=${threads}` : ''}${simd === 'plain' ? '&relaxed=0' : ''}` }[name];
  if (!query || (simd && simd !== 'plain')) throw new Error(`unknown backend ${backend}`);
  await page.goto(`${origin}/?debug=1&weights=/${weightsPath}&${query}&labels=cat%3B%20grass&templates=single`);
  await page.waitForFunction(() => { const s = window.__clearclip; return s.consent || s.loading || s.model; }, null, { timeout: 60000 });
  if (await page.evaluate(() => window.__clearclip.consent)) await page.click('#load-model');
  await page.waitForFunction(() => window.__clearclip.model || window.__clearclip.error, null, { timeout: 1_800_000 });
  const model = await page.evaluate(() => window.__clearclip.model);
  if (!model) throw new Error(`load failed: ${JSON.stringify(await page.evaluate(() => window.__clearclip.error))}`);
  const load = { root: process.env.APP_ROOT ?? 'repository', backend: model.backend, description: model.description, loadMs: Math.round(model.loadMs),
    warmUpMs: Math.round(model.warmUpMs ?? 0), wasmMemoryMB: model.wasmMemoryBytes && Math.round(model.wasmMemoryBytes / 2 ** 20),
    memAfterLoad: peakRss() };
  if (loadOnly) {
    await close();
    return { ...load, source: model.source };
  }
  // The page segments the image it shows (the example) as soon as the model is ready: the first run after load.
  await page.waitForFunction(() => { const s = window.__clearclip; return !s.image || (s.result && !s.running); }, null, { timeout: 1_800_000, polling: 200 });
  const first = await page.evaluate(() => window.__clearclip.result?.result ?? null);
  const cold = await dropImage(page, png);
  console.error(`${backend} round 1 (cold): image ${Math.round(cold.timings.imageMs)} ms`);
  const warm = [];
  for (let round = 1; round < runs; round++) {
    const renamed = await setNames(page, NAME_PAIRS[(round - 1) % NAME_PAIRS.length]);
    const full = await dropImage(page, png, round);
    warm.push({ textMs: renamed.timings.textMs, rerunMs: renamed.timings.imageMs, imageMs: full.timings.imageMs, phases: full.timings.image });
    console.error(`${backend} round ${round + 1}: text ${Math.round(renamed.timings.textMs)} ms, last-block re-run ${Math.round(renamed.timings.imageMs)} ms, image ${Math.round(full.timings.imageMs)} ms`);
  }
  // Mode switches on the same image: only the last block (and what follows) runs again.
  const switches = {};
  for (const mode of ['vanilla', 'maskclip', 'sclip', 'naclip', 'clearclip']) {
    const before = await page.evaluate(() => window.__clearclip.requestId);
    await page.selectOption('#mode', mode);
    await settled(page, before);
    const r = await page.evaluate(() => window.__clearclip.result.result);
    switches[mode] = { imageMs: Math.round(r.timings.imageMs), reused: r.reusedWindows };
  }
  const phaseNames = Object.keys(cold.timings.image);
  const report = {
    ...load,
    runs,
    firstAfterLoad: first && { image: `${first.width}x${first.height}`, windows: first.windows, textMs: Math.round(first.timings.textMs),
      imageMs: Math.round(first.timings.imageMs) },
    cold: { textMs: Math.round(cold.timings.textMs), imageMs: Math.round(cold.timings.imageMs),
      phases: Object.fromEntries(phaseNames.map((p) => [p, Math.round(cold.timings.image[p])])) },
    warm: warm.length ? {
      textMs: spread(warm.map((w) => w.textMs)), imageMs: spread(warm.map((w) => w.imageMs)),
      lastBlockRerunMs: spread(warm.map((w) => w.rerunMs)),
      phases: Object.fromEntries(phaseNames.map((p) => [p, spread(warm.map((w) => w.phases[p]))])),
    } : null,
    switches,
    status: await page.textContent('#run-status'),
    memPeak: peakRss(),
    wallS: (Date.now() - t0) / 1000,
  };
  await close();
  return report;
}

/** The peer: onnxruntime-web, wasm backend, on `threads` threads, `runs` inferences of the dense encoder. */
async function benchOnnx(modelPath, threads) {
  if (!modelPath) throw new Error('the onnx backend needs onnx=MODEL (scripts/gen_fixtures.py --dense-onnx)');
  const { page, close } = await launch();
  // An empty page of the served origin, so the module and the model load from it.
  // Cross-origin isolated as the app is, so that its threads can share memory.
  await page.route(`${origin}/__peer.html`, (route) => route.fulfill({ contentType: 'text/html', headers: ISOLATION,
    body: '<!doctype html><title>peer</title>' }));
  await page.goto(`${origin}/__peer.html`);
  const result = await page.evaluate(async ({ modelUrl, runs, threads }) => {
    const ort = await import('/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs');
    ort.env.wasm.numThreads = threads;
    ort.env.wasm.wasmPaths = '/node_modules/onnxruntime-web/dist/';
    let t = performance.now();
    const session = await ort.InferenceSession.create(modelUrl, { executionProviders: ['wasm'] });
    const loadMs = performance.now() - t;
    const channels = 3, size = 448; // the window the model was exported for
    const times = [];
    let dims;
    for (let run = 0; run < runs; run++) {
      const pixels = new Float32Array(channels * size * size).map((_, i) => Math.sin(i * 1e-3 + run));
      t = performance.now();
      const out = await session.run({ pixels: new ort.Tensor('float32', pixels, [1, channels, size, size]) });
      times.push(performance.now() - t);
      dims = out.features.dims;
      out.features.dispose?.();
    }
    return { version: ort.env.versions?.web, loadMs, times, dims };
  }, { modelUrl: `/${modelPath}`, runs, threads });
  await close();
  return { backend: `onnxruntime-web ${result.version} (wasm, ${threads} thread${threads > 1 ? 's' : ''})`, loadMs: Math.round(result.loadMs), runs,
    outputDims: result.dims, cold: { imageMs: Math.round(result.times[0]) }, warm: { imageMs: spread(result.times.slice(1)) } };
}

const png = readFileSync(imagePath);
for (const backend of backends.split(',')) {
  const [name, threads] = backend.split(':');
  const report = name === 'onnx' ? await benchOnnx(options.onnx, Math.max(1, Number(threads ?? 1))) : await benchPage(backend, png);
  console.log(JSON.stringify(report));
}
server.server.close();
