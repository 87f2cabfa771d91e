// Runs the given builds of src/lib.rs alternately in one headless Chromium
// page (so the machine's drift touches all alike) and prints each one's median
// GFLOP/s per product over `rounds` rounds.
//   node bench.mjs NAME=FILE.wasm ... [rounds=6]
import { chromium } from 'playwright-core';
import { readFileSync } from 'node:fs';

const args = process.argv.slice(2);
const rounds = Number(args.find((a) => a.startsWith('rounds='))?.slice(7) ?? 6);
const builds = args.filter((a) => !a.startsWith('rounds=')).map((a) => a.split('='));
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox'] });
const page = await browser.newPage();
const table = await page.evaluate(async ({ modules, rounds }) => {
  // [m, n, k]: the ViT-B/16 products on a 785-token window.
  const products = [[785, 3072, 768], [785, 768, 3072], [785, 2304, 768], [785, 785, 64], [785, 64, 785]];
  const runs = [];
  for (const b64 of modules) {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    runs.push((await WebAssembly.instantiate(bytes, {})).instance.exports.run);
  }
  const rates = runs.map(() => products.map(() => []));
  for (const run of runs) for (const [m, n, k] of products) run(m, n, k, 1);
  for (let r = 0; r < rounds; r++) {
    products.forEach(([m, n, k], p) => {
      const iters = m * n * k > 1e8 ? 1 : 10;
      runs.forEach((run, v) => {
        const t = performance.now();
        run(m, n, k, iters);
        rates[v][p].push((2 * m * n * k * iters) / (performance.now() - t) / 1e6);
      });
    });
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  return {
    header: products.map(([m, n, k]) => `${m}x${k} · ${k}x${n}`),
    rows: rates.map((perProduct) => perProduct.map((xs) => median(xs).toFixed(1))),
  };
}, { modules: builds.map(([, f]) => readFileSync(f).toString('base64')), rounds });
console.log(`Chromium ${browser.version()}, GFLOP/s, median of ${rounds} rounds\n`);
console.log(`| block | ${table.header.join(' | ')} |`);
console.log(`|---|${table.header.map(() => '---:').join('|')}|`);
builds.forEach(([name], v) => console.log(`| ${name} | ${table.rows[v].join(' | ')} |`));
await browser.close();
