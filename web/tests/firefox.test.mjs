// The app in a second browser: Debian's Firefox ESR, driven by puppeteer-core
// over WebDriver BiDi. Firefox ESR has no WebGPU here, so the page must say
// so and fall back to its wasm CPU path, with the CLI's probabilities; the
// threaded CPU module is asked for, so it is tested in a second engine (with
// relaxed SIMD where this Firefox has it, else without).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import puppeteer from 'puppeteer-core';
import { serve } from '../../scripts/serve.mjs';
import { ROOT, TOLERANCE, WEIGHTS, cliSegment, maxAbsDiff, pageProbs, readNpy } from './helpers.mjs';

const FIREFOX = '/usr/bin/firefox-esr';
let server;
let browser;
let cliProbs;

before(async () => {
  assert.ok(existsSync(FIREFOX), 'firefox-esr is missing: scripts/test.sh installs it');
  cliProbs = readNpy(join(cliSegment(join(ROOT, 'web/assets/example.png')), 'probs.npy'));
  server = await serve();
  browser = await puppeteer.launch({ browser: 'firefox', executablePath: FIREFOX, headless: true });
});

after(async () => {
  await browser?.close();
  server?.server.close();
});

/**
 * Polls `predicate` in the page until it is true. Not puppeteer's
 * `waitForFunction`: over WebDriver BiDi it builds its poller with
 * `new Function`, which Firefox ESR 140.10 blocks under the page's CSP (no
 * `unsafe-eval`); `page.evaluate` calls the function directly.
 */
async function waitFor(page, predicate, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!(await page.evaluate(predicate))) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${predicate}`);
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

test('Firefox ESR: the page falls back to the CPU, says so, and matches the CLI', async () => {
  const page = await browser.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  await page.goto(`http://127.0.0.1:${server.port}/?debug=1&weights=${WEIGHTS}&threads=2`);
  // Not cached yet: the page asks before downloading.
  await waitFor(page, () => window.__clearclip?.consent, 60_000);
  await page.click('#load-model');
  await waitFor(page, () => {
    const s = window.__clearclip;
    return s && ((s.result && s.result.id === s.requestId && !s.running) || (s.error && !s.loading));
  }, 300_000).catch((e) => { throw new Error(`${e.message}\n${logs.join('\n')}`); });
  assert.equal(await page.evaluate(() => window.__clearclip.error), null, logs.join('\n'));
  const { backend, hasWebGpu } = await page.evaluate(() => ({ backend: window.__clearclip.model.backend, hasWebGpu: 'gpu' in navigator }));
  const status = await page.$eval('#model-status', (e) => e.textContent);
  if (!hasWebGpu) {
    assert.equal(backend, 'cpu');
    assert.match(status, /no WebGPU/, 'the page says why it runs on the CPU');
    assert.equal(await page.evaluate(() => crossOriginIsolated), true);
    // The threaded module, with relaxed SIMD where this Firefox has it
    // (Debian's Firefox ESR 153 has it, ESR 140 had not).
    const relaxed = await page.evaluate(async () => (await import('/web/wasm-features.js')).hasRelaxedSimd());
    assert.match(status, relaxed ? /CPU on 2 threads, relaxed SIMD\)/ : /CPU on 2 threads\)/, logs.join('\n'));
    // The page created the pool's workers (web/pool-threads.js), not the worker.
    assert.equal(await page.evaluate(() => window.__clearclipDebug.poolWorkers()), 2);
  }
  const diff = maxAbsDiff(await pageProbs(page), cliProbs.data);
  console.log(`firefox-esr (${backend}) vs CLI: max abs diff ${diff.toExponential(2)}; status: ${status}`);
  assert.ok(diff <= TOLERANCE, `max abs diff ${diff}`);
  assert.equal(await page.$$eval('#legend li', (items) => items.length), 4);
  assert.ok(!logs.some((l) => /Content-Security-Policy|Content Security Policy/i.test(l)), logs.join('\n'));
  await page.close();
});
