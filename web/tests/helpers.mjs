// Shared by the browser tests (Chromium through playwright-core, Firefox
// through puppeteer-core): the CLI's outputs and the page's probabilities.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const WEIGHTS = '/fixtures/tiny_openclip_bf16.safetensors';
export const LABELS = 'cat; grass, lawn; wall; sky';
/** Probabilities: same pipeline, WebGPU/CPU in wasm vs native CPU, f32. */
export const TOLERANCE = 1e-4;
/** The CLI built by `cargo test --workspace`. */
export const CLI = join(process.env.CARGO_TARGET_DIR ?? join(ROOT, 'target'), 'debug', 'clearclip');

export function readNpy(path) {
  const bytes = readFileSync(path);
  const headerLength = bytes.readUInt16LE(8);
  const header = bytes.subarray(10, 10 + headerLength).toString('latin1');
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim()).map(Number);
  const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset + 10 + headerLength));
  return { shape, data };
}

/** The probabilities of the page's latest result (a playwright or puppeteer page; needs ?debug=1). */
export async function pageProbs(page) {
  const base64 = await page.evaluate(() => {
    const p = window.__clearclip.result.result.probs;
    let s = '';
    const bytes = new Uint8Array(p.buffer, p.byteOffset, p.byteLength);
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  });
  const bytes = Buffer.from(base64, 'base64');
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

export function maxAbsDiff(a, b) {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

/** Run the CLI on `image` with the test weights and labels (and `args`); returns its output folder. */
export function cliSegment(image, args = []) {
  assert.ok(existsSync(CLI), 'target/debug/clearclip is missing: run `cargo test --workspace` first');
  const out = mkdtempSync(join(tmpdir(), 'clearclip-cli-'));
  execFileSync(CLI, ['segment', '--weights', join(ROOT, WEIGHTS), '--labels', LABELS, '--image', image, '--out', out, ...args],
    { stdio: 'pipe' });
  return out;
}
