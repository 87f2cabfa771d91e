// Drawing: the image with the class colours (or one class's heatmap) over it,
// the legend chips, the hover readout and the heatmap grid. Colours and
// heatmaps come from the wasm module (the same code the CLI uses); this file
// only puts them on canvases.

/** Alpha of a class that is shown but not the one highlighted. */
const DIMMED_ALPHA = 64;

/**
 * What the overlay paints: `solo` (one class only, or null), `hidden` (a Set
 * of class indices left unpainted) and `highlight` (the class under the
 * pointer or keyboard focus: the others are dimmed).
 */
export const emptyView = () => ({ solo: null, hidden: new Set(), highlight: null });

/** Per-class alpha for `view`, over `count` classes. */
function classAlphas(view, count) {
  const alphas = new Uint8Array(256);
  for (let c = 0; c < count; c++) {
    const shown = view.solo === null ? !view.hidden.has(c) : c === view.solo;
    const dimmed = view.highlight !== null && view.highlight !== c;
    alphas[c] = shown ? (dimmed ? DIMMED_ALPHA : 255) : 0;
  }
  return alphas;
}

const layers = new WeakMap(); // result -> {key, canvas}: the last class layer drawn for it

/** The result's class-colour layer with the view's alphas, cached per result and view. */
function classLayer(result, view) {
  const alphas = classAlphas(view, result.classNames.length);
  const key = alphas.join(',');
  const cached = layers.get(result);
  if (cached?.key === key) return cached.canvas;
  const { width, height, labels } = result;
  const rgba = new Uint8ClampedArray(result.labelColors); // a copy: the result keeps its colours
  for (let i = 0; i < labels.length; i++) rgba[4 * i + 3] = alphas[labels[i]];
  const canvas = new OffscreenCanvas(width, height);
  canvas.getContext('2d').putImageData(new ImageData(rgba, width, height), 0, 0);
  layers.set(result, { key, canvas });
  return canvas;
}

/**
 * Draw `bitmap` into `canvas` with, over it at `opacity`, either the result's
 * classes as `view` says, or `heatmap` (an ImageBitmap/canvas of one class's
 * probabilities, stretched over the image) when given.
 */
export function drawOverlay(canvas, bitmap, result, { opacity, view, heatmap = null }) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d');
  ctx.globalAlpha = 1;
  ctx.drawImage(bitmap, 0, 0);
  if (!result) return;
  const layer = heatmap ?? classLayer(result, view);
  ctx.globalAlpha = opacity;
  ctx.imageSmoothingEnabled = !!heatmap;
  ctx.drawImage(layer, 0, 0, bitmap.width, bitmap.height);
  ctx.globalAlpha = 1;
}

/**
 * Legend: one chip per class (colour, name, share of pixels). Clicking a chip
 * shows only that class (again: all); its eye button hides or shows it;
 * pointer or focus on a chip highlights its class.
 * @param {{onSolo(i), onHide(i), onHighlight(i|null)}} on
 */
export function renderLegend(list, result, view, on) {
  list.replaceChildren(
    ...result.classNames.map((name, i) => {
      const item = document.createElement('li');
      const chip = document.createElement('button');
      chip.type = 'button';
      chip.className = 'legend-chip';
      chip.dataset.index = i;
      chip.setAttribute('aria-pressed', String(view.solo === i));
      chip.title = view.solo === i ? 'show all classes' : `show only ${name}`;
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = `rgb(${result.colors[i].join(', ')})`;
      const label = document.createElement('span');
      label.className = 'legend-name';
      label.textContent = name;
      const share = document.createElement('span');
      share.className = 'legend-share';
      share.textContent = `${(result.shares[i] * 100).toFixed(1)}%`;
      chip.append(swatch, label, share);
      chip.addEventListener('click', () => on.onSolo(i));
      const hide = document.createElement('button');
      hide.type = 'button';
      hide.className = 'legend-hide';
      const hidden = view.hidden.has(i);
      hide.setAttribute('aria-pressed', String(hidden));
      hide.setAttribute('aria-label', `hide ${name}`);
      hide.textContent = hidden ? 'hidden' : 'hide';
      hide.addEventListener('click', () => on.onHide(i));
      for (const el of [chip, hide]) {
        el.addEventListener('pointerenter', () => on.onHighlight(i));
        el.addEventListener('pointerleave', () => on.onHighlight(null));
        el.addEventListener('focus', () => on.onHighlight(i));
        el.addEventListener('blur', () => on.onHighlight(null));
      }
      item.className = hidden || (view.solo !== null && view.solo !== i) ? 'off' : '';
      item.append(chip, hide);
      return item;
    }),
  );
}

/**
 * One small canvas per class for its probability heatmap (at the sampled size
 * of `probs`), empty until it scrolls into view: then `request(index)` asks
 * the worker for it, and the page draws it when it arrives.
 */
export function renderHeatmaps(grid, result, request) {
  grid.observer?.disconnect();
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      request(Number(entry.target.dataset.index));
    }
  }, { rootMargin: '200px' });
  grid.observer = observer;
  grid.replaceChildren(
    ...result.classNames.map((name, i) => {
      const figure = document.createElement('figure');
      const canvas = document.createElement('canvas');
      canvas.width = result.probsWidth;
      canvas.height = result.probsHeight;
      canvas.dataset.index = i;
      canvas.setAttribute('role', 'img');
      canvas.setAttribute('aria-label', `probability of ${name}, yellow high, dark blue low`);
      const caption = document.createElement('figcaption');
      caption.textContent = name;
      figure.append(canvas, caption);
      observer.observe(canvas);
      return figure;
    }),
  );
}

/**
 * Class and probability under the pointer, or null outside the image. The
 * probability is the full-size map's value at the nearest sampled pixel
 * (every `probsStride`-th; the pixel itself below 2 megapixels).
 */
export function readout(result, x, y) {
  const { width, height, probsStride: s, probsWidth, probsHeight } = result;
  if (x < 0 || y < 0 || x >= width || y >= height) return null;
  const label = result.labels[y * width + x];
  const sampled = Math.floor(y / s) * probsWidth + Math.floor(x / s);
  const probability = result.probs[label * probsWidth * probsHeight + sampled];
  return { name: result.classNames[label], probability, x, y };
}
