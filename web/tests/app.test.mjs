// End-to-end tests of the app in Debian's Chromium (headless, SwiftShader's
// software WebGPU adapter), with the tiny fixture model served locally.
// The page's probabilities are compared with the native CLI's on the same inputs.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';
import { serve } from '../../scripts/serve.mjs';
import { LABELS, cliSegment, ROOT, TOLERANCE, WEIGHTS, maxAbsDiff, pageProbs, readNpy } from './helpers.mjs';

/** SwiftShader is slow: a run of the tiny model takes 30-60 s there. */
const RESULT_TIMEOUT = 400_000;

const CHROMIUM_ARGS = [
  '--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--no-sandbox', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic',
];

let server;
let browser;
let context;
let cliProbs;
let cliNaclipProbs;

before(async () => {
  const out = cliSegment(join(ROOT, 'web/assets/example.png'), ['--mode', 'clearclip,naclip']);
  cliProbs = readNpy(join(out, 'clearclip', 'probs.npy'));
  cliNaclipProbs = readNpy(join(out, 'naclip', 'probs.npy'));
  assert.deepEqual(cliProbs.shape, [4, 300, 451]);

  server = await serve();
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  context = await browser.newContext({ viewport: { width: 1200, height: 1100 } });
});

after(async () => {
  await browser?.close();
  server?.server.close();
});

// debug=1: the page exposes its state and test hooks (window.__clearclip, __clearclipDebug).
const appUrl = (query) => `http://127.0.0.1:${server.port}/?debug=1&${query}`;

async function openApp(query) {
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(appUrl(query));
  page.logs = logs;
  return page;
}

/** Wait until the latest request has a result (or the page shows an error). */
async function waitForResult(page) {
  await page.waitForFunction(
    () => {
      const s = window.__clearclip;
      return (s.result && s.result.id === s.requestId && !s.running) || (s.error && !s.running && !s.loading);
    },
    null, { timeout: RESULT_TIMEOUT, polling: 250 },
  ).catch((e) => { throw new Error(`${e.message}\n${page.logs.join('\n')}`); });
  const error = await page.evaluate(() => window.__clearclip.error);
  assert.equal(error, null, `page error: ${error}\n${page.logs.join('\n')}`);
}

/** Do `action` (which must start a new run), then wait for that run's result. */
async function nextResult(page, action) {
  const before = await page.evaluate(() => window.__clearclip.requestId);
  await action();
  await page.waitForFunction((b) => window.__clearclip.requestId > b, before, { timeout: 30_000 });
  await waitForResult(page);
}

async function dropFile(page, path, name, type) {
  const base64 = readFileSync(path).toString('base64');
  await page.evaluate(({ base64, name, type }) => {
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, { type }));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
  }, { base64, name, type });
}

test('segments a dropped image on WebGPU and matches the CLI', async () => {
  const started = Date.now();
  const page = await openApp(`weights=${WEIGHTS}`);
  await waitForResult(page); // the bundled example, on first load
  const firstResultMs = Date.now() - started;
  const backend = await page.evaluate(() => window.__clearclip.model.backend);
  assert.equal(backend, 'webgpu', `expected the WebGPU backend\n${page.logs.join('\n')}`);

  assert.equal(await page.inputValue('#labels'), LABELS, 'labels pre-filled for the example');
  const exampleDiff = maxAbsDiff(await pageProbs(page), cliProbs.data);
  console.log(`webgpu (example) vs CLI: max abs diff ${exampleDiff.toExponential(2)}; first result ${firstResultMs} ms after page load`);
  assert.ok(exampleDiff <= TOLERANCE, `max abs diff ${exampleDiff}`);

  // The same photo dropped as a file runs again (text embeddings cached).
  await nextResult(page, () => dropFile(page, join(ROOT, 'fixtures/chelsea.png'), 'chelsea.png', 'image/png'));
  const probs = await pageProbs(page);
  const diff = maxAbsDiff(probs, cliProbs.data);
  console.log(`webgpu (dropped) vs CLI: max abs diff ${diff.toExponential(2)}`);
  assert.ok(diff <= TOLERANCE, `max abs diff ${diff}`);

  assert.equal(await page.locator('#legend li').count(), 4);
  assert.equal(await page.locator('#heatmaps canvas').count(), 4);
  // Heatmaps are drawn when they come into view (asked of the worker one by one).
  await page.locator('#heatmaps canvas').first().scrollIntoViewIfNeeded();
  await page.waitForFunction(() => document.querySelector('#heatmaps canvas').dataset.drawn === 'true', null, { timeout: 30_000 });
  const heatmapAlpha = await page.evaluate(() => {
    const c = document.querySelector('#heatmaps canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return [c.width, c.height, d.filter((_, i) => i % 4 === 3 && d[i] === 255).length];
  });
  assert.deepEqual(heatmapAlpha, [451, 300, 451 * 300], 'the heatmap covers its canvas');
  const overlay = await page.evaluate(() => {
    const c = document.getElementById('overlay');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const s = window.__clearclip;
    const raw = new OffscreenCanvas(c.width, c.height).getContext('2d');
    raw.drawImage(s.image.bitmap, 0, 0);
    const r = raw.getImageData(0, 0, c.width, c.height).data;
    let changed = 0;
    for (let i = 0; i < d.length; i += 4) if (Math.abs(d[i] - r[i]) + Math.abs(d[i + 1] - r[i + 1]) + Math.abs(d[i + 2] - r[i + 2]) > 6) changed++;
    return { width: c.width, height: c.height, changed: changed / (d.length / 4) };
  });
  assert.deepEqual([overlay.width, overlay.height], [451, 300]);
  assert.ok(overlay.changed > 0.5, `overlay changed only ${overlay.changed} of the pixels`);
  const status = await page.textContent('#run-status');
  assert.match(status, /text \d+ ms · image \d+ ms · total \d+ ms/);

  // The Content-Security-Policy (index.html) lets the whole app run: nothing was refused.
  assert.ok(!page.logs.some((l) => /Content Security Policy|Refused to/i.test(l)), page.logs.join('\n'));

  mkdirSync(join(ROOT, 'test-results'), { recursive: true });
  await page.screenshot({ path: join(ROOT, 'test-results', 'app.png'), fullPage: true });

  // Another mode re-runs only the last block, and matches the CLI's NACLIP.
  await nextResult(page, () => page.selectOption('#mode', 'naclip'));
  const naclip = await page.evaluate(() => window.__clearclip.result.result);
  assert.equal(naclip.reusedWindows, true, 'a mode switch must reuse the first blocks');
  assert.match(naclip.lastBlock, /k-k attention \+ neighbourhood \(std 5\), no residual, no FFN/);
  assert.equal(await page.inputValue('#attention'), 'k-k', 'the knobs show the mode');
  const naclipDiff = maxAbsDiff(await pageProbs(page), cliNaclipProbs.data);
  const switchStatus = await page.textContent('#run-status');
  console.log(`webgpu naclip after a mode switch vs CLI: max abs diff ${naclipDiff.toExponential(2)}; ${switchStatus}`);
  assert.ok(naclipDiff <= TOLERANCE, `max abs diff ${naclipDiff}`);
  // A knob that makes it no named mode: "custom".
  await page.locator('#advanced summary').click();
  await nextResult(page, () => page.check('#ffn'));
  assert.equal(await page.inputValue('#mode'), 'custom');
  assert.match(await page.evaluate(() => window.__clearclip.result.result.lastBlock), /, FFN$/);

  writeFileSync(join(ROOT, 'test-results', 'timings.json'), JSON.stringify({ firstResultMs, status, switchStatus }, null, 1));
  await page.close();
});

test('a lost GPU device, twice in a row, is reported and the app recovers with its image and labels', async () => {
  const page = await openApp(`weights=${WEIGHTS}`);
  await waitForResult(page);
  await nextResult(page, () => page.fill('#labels', 'cat; sky'));
  const before = await pageProbs(page);
  for (const round of [1, 2]) {
    const lastRequest = await page.evaluate(() => window.__clearclip.requestId);
    await page.evaluate(() => window.__clearclipDebug.loseDevice());
    // A new worker reloads the model (from the cache) and segments again.
    await page.waitForFunction((last) => window.__clearclip.requestId > last, lastRequest, { timeout: RESULT_TIMEOUT, polling: 250 });
    await waitForResult(page);
    assert.match(await page.evaluate(() => window.__clearclip.recovered), /^the GPU device was lost/, `round ${round}`);
    assert.match(await page.textContent('#notes'), /restarted after: the GPU device was lost/);
    assert.equal(await page.evaluate(() => window.__clearclip.model.source), 'cache');
    assert.equal(await page.evaluate(() => window.__clearclip.model.backend), 'webgpu');
    assert.equal(await page.inputValue('#labels'), 'cat; sky');
    const diff = maxAbsDiff(await pageProbs(page), before);
    assert.ok(diff <= TOLERANCE, `after restart ${round}: max abs diff ${diff}`);
  }
  await page.close();
});

test('weights switched while a segmentation runs: the new model takes over, image and labels stay', async () => {
  const page = await openApp(`weights=${WEIGHTS}&webgpu=0`);
  await waitForResult(page);
  // Start a run (the same photo again), and drop other weights while it runs:
  // the same model in the Hugging Face layout, f16.
  const lastRequest = await page.evaluate(() => window.__clearclip.requestId);
  await dropFile(page, join(ROOT, 'web/assets/example.png'), 'example.png', 'image/png');
  await page.setInputFiles('#weights-input', join(ROOT, 'fixtures/tiny_hf_f16.safetensors'));
  await page.waitForFunction((last) => {
    const s = window.__clearclip;
    return s.model?.source === 'file' && s.requestId > last + 1 && s.result?.id === s.requestId && !s.running;
  }, lastRequest, { timeout: RESULT_TIMEOUT, polling: 250 });
  assert.equal(await page.evaluate(() => window.__clearclip.error), null);
  assert.match(await page.textContent('#model-status'), /HuggingFace layout/);
  assert.equal(await page.inputValue('#labels'), LABELS);
  const diff = maxAbsDiff(await pageProbs(page), cliProbs.data);
  console.log(`weights switched mid-run, then the HF-layout model vs CLI: max abs diff ${diff.toExponential(2)}`);
  assert.ok(diff <= TOLERANCE, `max abs diff ${diff}`);
  await page.close();
});

test('a second visit reads the weights from the cache, not the network', async () => {
  const fetched = () => server.requests.filter((p) => p === WEIGHTS).length;
  const before = fetched();
  assert.ok(before >= 1, 'the first test downloaded the weights');
  const page = await openApp(`weights=${WEIGHTS}&webgpu=0`); // the cache, not the GPU, is tested: keep it quick
  await waitForResult(page);
  assert.equal(await page.evaluate(() => window.__clearclip.model.source), 'cache');
  assert.equal(fetched(), before, 'no weight request may reach the server');
  // The copy read back from the cache gives the CLI's answer.
  const diff = maxAbsDiff(await pageProbs(page), cliProbs.data);
  assert.ok(diff <= TOLERANCE, `from the cache: max abs diff ${diff}`);
  // A damaged cached copy (cut in half) is refused, removed, and a retry downloads it again.
  await page.evaluate(async (url) => {
    const cache = await caches.open('clearclip-weights-v1');
    const bytes = await (await cache.match(url)).arrayBuffer();
    await cache.put(url, new Response(bytes.slice(0, bytes.byteLength >> 1)));
  }, new URL(WEIGHTS, appUrl('')).href);
  await page.reload();
  await page.waitForFunction(() => window.__clearclip.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /header announces \d+ \(the cached copy was removed/);
  assert.ok(await page.isVisible('#retry'));
  await page.click('#retry');
  await waitForResult(page);
  assert.equal(await page.evaluate(() => window.__clearclip.model.source), 'network');
  assert.equal(fetched(), before + 1);
  await page.close();
});

test('without WebGPU the CPU backend in wasm gives the same answer', async () => {
  const page = await openApp(`weights=${WEIGHTS}&webgpu=0`);
  await waitForResult(page);
  assert.equal(await page.evaluate(() => window.__clearclip.model.backend), 'cpu');
  assert.match(await page.textContent('#model-status'), /CPU/);
  const diff = maxAbsDiff(await pageProbs(page), cliProbs.data);
  console.log(`wasm cpu vs CLI: max abs diff ${diff.toExponential(2)}`);
  assert.ok(diff <= TOLERANCE, `max abs diff ${diff}`);
  // A dataset preset sets the classes, the threshold and the windows.
  await page.check('#single-template');
  await nextResult(page, () => page.selectOption('#preset', 'voc21'));
  assert.equal(await page.locator('#legend li').count(), 21);
  assert.match(await page.inputValue('#labels'), /^background; aeroplane; bicycle/);
  assert.equal(await page.textContent('#threshold-value'), '0.50');
  // Side-by-side comparison with a second mode, which reuses the first blocks.
  await nextResult(page, () => page.selectOption('#compare', 'maskclip'));
  const compare = await page.evaluate(() => window.__clearclip.result.compare);
  assert.equal(compare.mode, 'maskclip');
  assert.equal(compare.result.reusedWindows, true);
  assert.match(compare.result.lastBlock, /identity attention/);
  assert.ok(await page.isVisible('#compare-overlay'));
  // Phone width: nothing overflows sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 390), 'page wider than a phone');
  await page.close();
});

/** A float32 / uint8 array of fixtures/reference.safetensors (written by scripts/gen_fixtures.py). */
function referenceArray(name) {
  const bytes = readFileSync(join(ROOT, 'fixtures/reference.safetensors'));
  const headerLength = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLength).toString('utf8'));
  const { dtype, shape, data_offsets: [begin, end] } = header[name];
  const data = bytes.buffer.slice(bytes.byteOffset + 8 + headerLength + begin, bytes.byteOffset + 8 + headerLength + end);
  return { shape, data: dtype === 'F32' ? new Float32Array(data) : new Uint8Array(data) };
}

/** The page's maps and labels every `stride`-th pixel (as the generator stores large references). */
async function pageStrided(page, stride) {
  const r = await page.evaluate((stride) => {
    const r = window.__clearclip.result.result;
    const { width, height, probsStride, probsWidth, probsHeight } = r;
    if (probsStride !== 1) return null;
    const probs = [];
    const labels = [];
    for (let c = 0; c < r.classNames.length; c++)
      for (let y = 0; y < height; y += stride)
        for (let x = 0; x < width; x += stride) probs.push(r.probs[(c * probsHeight + y) * probsWidth + x]);
    for (let y = 0; y < height; y += stride) for (let x = 0; x < width; x += stride) labels.push(r.labels[y * width + x]);
    return { probs, labels };
  }, stride);
  assert.ok(r, 'maps at full size below 2 megapixels');
  return r;
}

/** CLI labels from its probabilities (argmax; no threshold). */
function argmaxLabels({ shape: [classes, height, width], data }) {
  const plane = height * width;
  const labels = new Uint8Array(plane);
  for (let i = 0; i < plane; i++) {
    let best = 0;
    for (let c = 1; c < classes; c++) if (data[c * plane + i] > data[best * plane + i]) best = c;
    labels[i] = best;
  }
  return labels;
}

test('a JPEG photo longer than 2048 px gives the CLI\'s answer (decoded in wasm, resized once)', async () => {
  const page = await openApp(`weights=${WEIGHTS}&webgpu=0`); // the decoding path, not the GPU: keep it quick
  await waitForResult(page);
  // A 2400x1600 photo, JPEG-encoded by Chromium's own encoder.
  const base64 = await page.evaluate(async (url) => {
    const bitmap = await createImageBitmap(await (await fetch(url)).blob());
    const canvas = new OffscreenCanvas(2400, 1600);
    canvas.getContext('2d').drawImage(bitmap, 0, 0, 2400, 1600);
    const bytes = new Uint8Array(await (await canvas.convertToBlob({ type: 'image/jpeg', quality: 0.9 })).arrayBuffer());
    let s = '';
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }, '/web/assets/example.png');
  const tmp = mkdtempSync(join(tmpdir(), 'clearclip-jpeg-'));
  const photo = join(tmp, 'large.jpg');
  writeFileSync(photo, Buffer.from(base64, 'base64'));
  const cliOut = cliSegment(photo);
  const cliLarge = readNpy(join(cliOut, 'probs.npy'));
  assert.deepEqual(cliLarge.shape, [4, 1600, 2400]);

  await nextResult(page, () => dropFile(page, photo, 'large.jpg', 'image/jpeg'));
  const r = await page.evaluate(() => {
    const r = window.__clearclip.result.result;
    return { width: r.width, height: r.height, stride: r.probsStride, pw: r.probsWidth, ph: r.probsHeight,
      resized: r.resized, labels: Array.from(r.labels) };
  });
  assert.deepEqual([r.width, r.height, r.resized], [2400, 1600, [672, 448]]);
  assert.equal(r.stride, 2, 'maps above 2 megapixels are sampled for display');
  const sampled = new Float32Array(4 * r.ph * r.pw);
  for (let c = 0; c < 4; c++)
    for (let y = 0; y < r.ph; y++)
      for (let x = 0; x < r.pw; x++) sampled[(c * r.ph + y) * r.pw + x] = cliLarge.data[(c * 1600 + y * 2) * 2400 + x * 2];
  const diff = maxAbsDiff(await pageProbs(page), sampled);
  const cliLabels = argmaxLabels(cliLarge);
  const equal = r.labels.reduce((n, l, i) => n + (l === cliLabels[i]), 0) / cliLabels.length;
  console.log(`2400x1600 JPEG, wasm CPU vs CLI: max abs diff ${diff.toExponential(2)}, labels ${(100 * equal).toFixed(4)}% equal`);
  assert.ok(diff <= TOLERANCE, `max abs diff ${diff}`);
  assert.ok(equal >= 0.999, `labels ${equal}`);

  // The real JPEG photo of the pipeline fixture, against the official pipeline's
  // probabilities (scripts/gen_fixtures.py), in ClearCLIP and vanilla modes.
  const meta = JSON.parse(readFileSync(join(ROOT, 'fixtures/reference.json'), 'utf8')).pipeline_jpeg;
  await nextResult(page, () => page.fill('#labels', meta.cases.clearclip.classes));
  await nextResult(page, () => dropFile(page, join(ROOT, 'fixtures', meta.file), 'retina.jpg', 'image/jpeg'));
  for (const mode of ['clearclip', 'vanilla']) {
    if (mode !== 'clearclip') await nextResult(page, () => page.selectOption('#mode', mode));
    const ours = await pageStrided(page, meta.stride);
    const probsDiff = maxAbsDiff(Float32Array.from(ours.probs), referenceArray(`pipeline_jpeg.${mode}.probs`).data);
    const expected = referenceArray(`pipeline_jpeg.${mode}.labels`).data;
    const same = ours.labels.reduce((n, l, i) => n + (l === expected[i]), 0) / expected.length;
    console.log(`retina JPEG ${mode}, page vs official pipeline: max abs diff ${probsDiff.toExponential(2)}, labels ${(100 * same).toFixed(4)}% equal`);
    assert.ok(probsDiff <= TOLERANCE, `${mode}: max abs diff ${probsDiff}`);
    assert.ok(same >= 0.999, `${mode}: labels ${same}`);
  }

  // EXIF orientation 6 (rotate 90 degrees): the page segments the upright photo, as the CLI does.
  await nextResult(page, () => dropFile(page, join(ROOT, 'fixtures/jpeg/orientation_6.jpg'), 'rotated.jpg', 'image/jpeg'));
  const size = await page.evaluate(() => [window.__clearclip.result.result.width, window.__clearclip.result.result.height]);
  assert.deepEqual(size, [77, 123]);
});

test('a soak of 50 runs changing image, labels, mode and threshold keeps wasm memory flat (wasm CPU)', async () => {
  const page = await openApp(`weights=${WEIGHTS}&webgpu=0`);
  await waitForResult(page);
  const images = [['fixtures/chelsea.png', 'chelsea.png', 'image/png'], ['web/assets/example.png', 'example.png', 'image/png'],
    ['fixtures/jpeg/baseline_420_q90.jpg', 'photo.jpg', 'image/jpeg']];
  const labels = ['cat; sky', 'cat; grass, lawn; wall; sky', 'tree; road; person, man; car; building', 'dog'];
  const modes = ['clearclip', 'naclip', 'vanilla', 'sclip', 'maskclip'];
  const memory = [];
  const started = Date.now();
  for (let run = 1; run <= 50; run++) {
    await nextResult(page, async () => {
      switch (run % 4) {
        case 0: return dropFile(page, join(ROOT, images[run % 3][0]), images[run % 3][1], images[run % 3][2]);
        case 1: return page.fill('#labels', labels[run % labels.length]);
        case 2: return page.selectOption('#mode', modes[run % modes.length]);
        default: return page.evaluate((t) => {
          const slider = document.getElementById('threshold');
          slider.value = t;
          slider.dispatchEvent(new Event('input'));
        }, String((run % 10) / 10));
      }
    });
    if (run % 10 === 0) memory.push(await page.evaluate(() => window.__clearclip.result.wasmMemoryBytes));
  }
  const mb = memory.map((b) => +(b / 2 ** 20).toFixed(1));
  console.log(`soak (wasm CPU): 50 runs in ${((Date.now() - started) / 1000).toFixed(0)} s; wasm memory at runs 10/20/30/40/50: ${mb.join(' / ')} MB`);
  // Wasm memory only grows; after the first cycles through every image, label set and mode it must stop.
  assert.ok(memory[4] <= memory[1] * 1.05, `wasm memory keeps growing: ${mb.join(' / ')} MB`);
  assert.equal(await page.locator('#legend li').count(), (await page.inputValue('#labels')).split(';').length);
  await page.close();
});

test('bad files get a visible message and the app keeps its model and result', async () => {
  const page = await openApp(`weights=${WEIGHTS}&webgpu=0`); // error handling, not the GPU: keep it quick
  await waitForResult(page);
  const tmp = mkdtempSync(join(tmpdir(), 'clearclip-bad-'));
  writeFileSync(join(tmp, 'notes.png'), 'not an image at all');
  await page.setInputFiles('#image-input', join(tmp, 'notes.png'));
  await page.waitForFunction(() => window.__clearclip.error);
  assert.match(await page.textContent('#error'), /not an image/);
  assert.equal(await page.locator('#legend li').count(), 4, 'the previous result stays');

  writeFileSync(join(tmp, 'fake.safetensors'), readFileSync(join(ROOT, 'fixtures/chelsea.png')));
  await page.setInputFiles('#weights-input', join(tmp, 'fake.safetensors'));
  await page.waitForFunction(() => /safetensors/.test(window.__clearclip.error ?? ''), null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /not a readable safetensors file/);
  // The model loaded before still segments.
  await nextResult(page, () => page.fill('#labels', 'cat; sky'));
  assert.equal(await page.locator('#legend li').count(), 2);

  // Class names are text, never markup: nothing in them becomes an element.
  const hostile = '<img src=x onerror="window.__pwned=1">; <b>sky</b>';
  await nextResult(page, () => page.fill('#labels', hostile));
  assert.equal(await page.locator('#legend li').count(), 2);
  assert.match(await page.textContent('#legend'), /<img src=x onerror="window.__pwned=1">/);
  assert.equal(await page.locator('#legend img, #legend b, #heatmaps img, #heatmaps b').count(), 0);
  assert.equal(await page.evaluate(() => window.__pwned), undefined);

  await page.fill('#labels', ' ; ');
  await page.waitForFunction(() => window.__clearclip.error);
  assert.match(await page.textContent('#error'), /no classes given/);
  await page.close();
});

test('a large download that is not CLIP is refused at its header and stops', async () => {
  // A well-formed safetensors file of 256 MB whose only tensor is a text
  // embedding, streamed by a second server (another origin) that counts the
  // bytes it gets to send before the page hangs up.
  const size = 256 << 20;
  const header = Buffer.from(JSON.stringify({
    'text_model.embeddings.token_embedding.weight': { dtype: 'F32', shape: [size / 4], data_offsets: [0, size] },
  }));
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(header.length));
  const stream = { sent: 0, closed: false };
  const remote = createServer(async (req, res) => {
    res.writeHead(200, { 'content-length': 8 + header.length + size, 'access-control-allow-origin': '*' });
    res.on('close', () => { stream.closed = true; });
    res.write(Buffer.concat([prefix, header]));
    const chunk = Buffer.alloc(1 << 16);
    while (!stream.closed && stream.sent < size) {
      stream.sent += chunk.length;
      if (!res.write(chunk)) {
        await new Promise((r) => {
          const resume = () => { res.off('drain', resume); res.off('close', resume); r(); };
          res.on('drain', resume);
          res.on('close', resume);
        });
      }
    }
    res.end();
  });
  await new Promise((r) => remote.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${remote.address().port}/not-clip.safetensors`;
  try {
    const page = await openApp(`weights=${encodeURIComponent(url)}&webgpu=0`);
    await page.waitForFunction(() => window.__clearclip.error, null, { timeout: 60_000 });
    assert.match(await page.textContent('#error'), /not a CLIP checkpoint/);
    for (let i = 0; i < 100 && !stream.closed; i++) await new Promise((r) => setTimeout(r, 100));
    console.log(`not-CLIP download: ${(stream.sent / 2 ** 20).toFixed(1)} of ${size / 2 ** 20} MB sent before the page hung up`);
    assert.ok(stream.closed, 'the page must stop the transfer');
    assert.ok(stream.sent < size / 8, `${stream.sent} bytes were sent`);
    const cached = await page.evaluate(async (u) => {
      for (const name of await caches.keys()) if (await (await caches.open(name)).match(u)) return true;
      return false;
    }, url);
    assert.equal(cached, false, 'a refused file must not stay in the cache');
    await page.close();
  } finally {
    remote.closeAllConnections();
    remote.close();
  }
});

test('a weights URL that fails says why and offers a retry', async () => {
  const page = await openApp('weights=/fixtures/missing.safetensors');
  await page.waitForFunction(() => window.__clearclip.error, null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /not found \(404\)/);
  assert.ok(await page.isVisible('#retry'));
  // Weights from a plain-http site elsewhere are refused before any request.
  await page.fill('#weights-url', 'http://example.com/clip.safetensors');
  await page.click('#weights-form button[type=submit]');
  await page.waitForFunction(() => /https/.test(window.__clearclip.error ?? ''), null, { timeout: 60_000 });
  assert.match(await page.textContent('#error'), /only loaded over https .*http:\/\/example.com is not allowed/);
  await page.close();
});
