// Drawing: the image with the class colours over it, the legend, the hover
// readout and the heatmap grid. Colours and heatmaps come from the wasm
// module (the same code the CLI uses); this file only puts them on canvases.

/** Draw `bitmap` and the result's RGBA class-colour layer at `opacity` into `canvas`. */
export function drawOverlay(canvas, bitmap, result, opacity) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d');
  ctx.globalAlpha = 1;
  ctx.drawImage(bitmap, 0, 0);
  if (!result) return;
  const colors = new Uint8ClampedArray(result.labelColors.buffer);
  const layer = new OffscreenCanvas(result.width, result.height);
  layer.getContext('2d').putImageData(new ImageData(colors, result.width, result.height), 0, 0);
  ctx.globalAlpha = opacity;
  ctx.drawImage(layer, 0, 0, bitmap.width, bitmap.height);
  ctx.globalAlpha = 1;
}

/** Legend: colour swatch, name and share of pixels for each class. */
export function renderLegend(list, result) {
  list.replaceChildren(
    ...result.classNames.map((name, i) => {
      const item = document.createElement('li');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = `rgb(${result.colors[i].join(', ')})`;
      const label = document.createElement('span');
      label.textContent = `${name} — ${(result.shares[i] * 100).toFixed(1)}%`;
      item.append(swatch, label);
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
