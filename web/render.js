// Drawing: the image with the class colours over it, the legend, the hover
// readout and the heatmap grid. Colours and heatmaps come from the wasm
// module (the same code the CLI uses); this file only puts them on canvases.

/** Draw `bitmap` and the RGBA class-colour layer at `opacity` into `canvas`. */
export function drawOverlay(canvas, bitmap, labelColors, opacity) {
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const ctx = canvas.getContext('2d');
  ctx.globalAlpha = 1;
  ctx.drawImage(bitmap, 0, 0);
  if (!labelColors) return;
  const layer = new OffscreenCanvas(bitmap.width, bitmap.height);
  layer.getContext('2d').putImageData(new ImageData(labelColors, bitmap.width, bitmap.height), 0, 0);
  ctx.globalAlpha = opacity;
  ctx.drawImage(layer, 0, 0);
  ctx.globalAlpha = 1;
}

/** Legend: colour swatch, name and share of pixels for each class. */
export function renderLegend(list, result) {
  list.replaceChildren(
    ...result.classNames.map((name, i) => {
      const item = document.createElement('li');
      const swatch = document.createElement('span');
      swatch.className = 'swatch';
      swatch.style.background = result.colors[i];
      const label = document.createElement('span');
      label.textContent = `${name} — ${(result.shares[i] * 100).toFixed(1)}%`;
      item.append(swatch, label);
      return item;
    }),
  );
}

/** One small canvas per class with its probability heatmap. */
export function renderHeatmaps(grid, result, heatmaps) {
  grid.replaceChildren(
    ...heatmaps.map((rgba, i) => {
      const figure = document.createElement('figure');
      const canvas = document.createElement('canvas');
      canvas.width = result.width;
      canvas.height = result.height;
      canvas.getContext('2d').putImageData(new ImageData(rgba, result.width, result.height), 0, 0);
      const caption = document.createElement('figcaption');
      caption.textContent = result.classNames[i];
      figure.append(canvas, caption);
      return figure;
    }),
  );
}

/** Class and probability under the pointer, or null outside the image. */
export function readout(result, x, y) {
  const { width, height } = result;
  if (x < 0 || y < 0 || x >= width || y >= height) return null;
  const pixel = y * width + x;
  const label = result.labels[pixel];
  const plane = width * height;
  const probability = result.probs[label * plane + pixel];
  return { name: result.classNames[label], probability, x, y };
}
