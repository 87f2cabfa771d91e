import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { serve } from './serve.mjs';
// Times a segmentation in headless Chromium: node scripts/bench_browser.mjs WEIGHTS IMAGE [cpu,webgpu] [load-only]
// WEIGHTS is a path under the served root (the repository, or $APP_ROOT to measure another
// checkout side by side), IMAGE a PNG file. After the first result it switches through the
// modes and times each re-run (last block only). `load-only` stops once the model is loaded
// and reports the memory that took (peak resident size of the Chromium processes).
const [weightsPath, imagePath, backends = 'cpu,webgpu', only] = process.argv.slice(2);
const server = await serve(process.env.APP_ROOT ? { root: process.env.APP_ROOT } : {});
const args = ['--enable-unsafe-webgpu', '--enable-unsafe-swiftshader', '--no-sandbox', '--no-first-run','--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'];
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
const square = readFileSync(imagePath).toString('base64');
for (const gpu of backends.split(',')) {
  // A profile on disk, as a user's: a fresh context would be off the record,
  // where the Cache API keeps the whole weights file in the browser's memory.
  const profile = mkdtempSync(join(tmpdir(), 'clearclip-bench-'));
  const browser = await chromium.launchPersistentContext(profile, { executablePath: '/usr/bin/chromium', headless: true, args });
  const page = browser.pages()[0] ?? await browser.newPage();
  const t0 = Date.now();
  page.on('console', (m) => { if (m.type() === 'error') console.log('console', m.text().slice(0, 200)); });
  // Classes and one template through the query string; a fresh profile has no cached weights, so Load is clicked.
  await page.goto(`http://127.0.0.1:${server.port}/?debug=1&weights=/${weightsPath}&webgpu=${gpu === 'webgpu' ? 1 : 0}` +
    '&labels=cat%3B%20grass&templates=single');
  await page.waitForFunction(() => { const s = window.__clearclip; return s.consent || s.loading || s.model; }, null, { timeout: 60000 });
  if (await page.evaluate(() => window.__clearclip.consent)) await page.click('#load-model');
  await page.waitForFunction(() => window.__clearclip.model, null, { timeout: 600000 });
  const loadMs = await page.evaluate(() => window.__clearclip.model.loadMs);
  const memAfterLoad = peakRss();
  if (only === 'load-only') {
    const model = await page.evaluate(() => window.__clearclip.model);
    console.log(JSON.stringify({ root: process.env.APP_ROOT ?? 'repository', backend: model.backend, source: model.source,
      loadMs: Math.round(loadMs), wasmMemoryMB: model.wasmMemoryBytes && Math.round(model.wasmMemoryBytes / 2 ** 20), memAfterLoad }));
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
    continue;
  }
  await page.evaluate((b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const t = new DataTransfer(); t.items.add(new File([bytes], 'square.png', { type: 'image/png' }));
    document.dispatchEvent(new DragEvent('drop', { dataTransfer: t, bubbles: true, cancelable: true }));
  }, square);
  await page.waitForFunction(() => { const s = window.__clearclip; return s.result && s.image && s.result.result.width === s.image.width && s.result.result.height === s.image.height && s.result.id === s.requestId && !s.running; }, null, { timeout: 1200000, polling: 1000 });
  const status = await page.textContent('#run-status');
  const full = await page.evaluate(() => window.__clearclip.result.result.timings.imageMs);
  // Mode switches on the same image: only the last block (and what follows) runs again.
  const switches = {};
  for (const mode of ['vanilla', 'maskclip', 'sclip', 'naclip', 'clearclip']) {
    const before = await page.evaluate(() => window.__clearclip.requestId);
    await page.selectOption('#mode', mode);
    await page.waitForFunction((b) => { const s = window.__clearclip; return s.requestId > b && s.result.id === s.requestId && !s.running; }, before, { timeout: 1200000, polling: 200 });
    const r = await page.evaluate(() => window.__clearclip.result.result);
    switches[mode] = { imageMs: Math.round(r.timings.imageMs), reused: r.reusedWindows, ofFull: +(r.timings.imageMs / full).toFixed(3) };
  }
  console.log(JSON.stringify({ backend: await page.evaluate(() => window.__clearclip.model.backend), loadMs: Math.round(loadMs), status, switches, memAfterLoad, memPeak: peakRss(), wallS: (Date.now() - t0) / 1000 }));
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
server.server.close();
