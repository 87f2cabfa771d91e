// Measures how Chromium's own image decoder (createImageBitmap + canvas, what
// the page used before it decoded files in wasm) differs from OpenCV's pixels
// on the JPEG fixtures. Prints a Markdown table; asserts nothing.
//   node scripts/browser_jpeg_pixels.mjs
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './serve.mjs';

const ROOT = resolve(fileURLToPath(new URL('..', import.meta.url)));
const manifest = JSON.parse(readFileSync(join(ROOT, 'fixtures/jpeg/manifest.json'), 'utf8'));
const server = await serve();
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
const page = await browser.newPage();
await page.goto(`http://127.0.0.1:${server.port}/index.html`);
console.log('| fixture | Chromium: max / mean / % differing from OpenCV |\n|---|---|');
for (const f of manifest.files.filter((f) => !f.sha256)) {
  const stats = await page.evaluate(async ({ name, oriented }) => {
    const rgba = async (url, options) => {
      const bitmap = await createImageBitmap(await (await fetch(url)).blob(), options);
      const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
      const ctx = canvas.getContext('2d');
      ctx.drawImage(bitmap, 0, 0);
      return ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    };
    // As the page did: EXIF orientation applied; against cv2.imread's pixels (oriented too).
    const ours = await rgba(`/fixtures/jpeg/${name}.jpg`, { imageOrientation: 'from-image' });
    const ref = await rgba(`/fixtures/jpeg/${name}${oriented ? '.oriented' : ''}.png`, {});
    if (ours.length !== ref.length) return null;
    let max = 0, sum = 0, n = 0, differing = 0;
    for (let i = 0; i < ours.length; i++) {
      if (i % 4 === 3) continue;
      const d = Math.abs(ours[i] - ref[i]);
      max = Math.max(max, d); sum += d; n++; differing += d > 0;
    }
    return { max, mean: sum / n, frac: differing / n };
  }, { name: f.name, oriented: !!f.oriented_png });
  console.log(`| ${f.name} | ${stats ? `${stats.max} / ${stats.mean.toFixed(3)} / ${(100 * stats.frac).toFixed(2)}` : 'size differs'} |`);
}
await browser.close();
server.server.close();
