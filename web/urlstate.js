// Shareable state: the settings live in the page's query string, so a link
// reproduces a configuration (classes, mode or last-block knobs, threshold,
// windows, preset, example photo). A weights URL is kept only as the user
// typed it; a local file never appears. Other parameters (debug, webgpu) are
// left as they are.

const KEYS = ['example', 'labels', 'preset', 'mode', 'attention', 'std', 'alpha', 'ffn', 'threshold', 'crop', 'stride',
  'pamr', 'templates', 'compare', 'weights', 'gelu', 'precision'];

const number = (text) => (text === null || text.trim() === '' || !Number.isFinite(Number(text)) ? undefined : Number(text));

/**
 * The settings a query string asks for; only what it names, unchecked
 * against the catalog (the page does that when it applies them).
 */
export function readSettings(search) {
  const q = new URLSearchParams(search);
  const s = {};
  if (q.has('example')) s.example = q.get('example');
  if (q.has('labels')) s.labels = q.get('labels');
  if (q.has('preset')) s.preset = q.get('preset');
  if (q.has('mode')) s.mode = q.get('mode');
  if (q.has('attention')) {
    s.lastBlock = {
      attention: q.get('attention'),
      neighbourhoodStd: number(q.get('std')) ?? null,
      residualAlpha: number(q.get('alpha')) ?? null,
      ffn: q.get('ffn') === '1',
    };
  }
  for (const key of ['threshold', 'crop', 'stride']) {
    const value = number(q.get(key));
    if (value !== undefined) s[key] = value;
  }
  if (q.has('pamr')) s.pamr = q.get('pamr') === '1';
  if (q.has('templates')) s.singleTemplate = q.get('templates') === 'single';
  if (q.has('compare')) s.compare = q.get('compare');
  if (q.has('weights')) s.weights = q.get('weights');
  if (q.has('gelu')) s.gelu = q.get('gelu') === '1';
  if (q.has('precision')) s.half = q.get('precision') === 'f16';
  return s;
}

/**
 * `search` with the settings written in (defaults left out, so links stay short).
 * @param {object} s  {example, labels, preset, mode, lastBlock, threshold, crop, stride, pamr, singleTemplate, compare, weights, gelu, half}
 * @param {object} defaults  the catalog's defaults ({crop, stride, backgroundThreshold})
 */
export function writeSettings(search, s, defaults) {
  const q = new URLSearchParams(search);
  for (const key of KEYS) q.delete(key);
  if (s.example) q.set('example', s.example);
  // Left out by the caller when the preset or the example names them.
  if (s.labels) q.set('labels', s.labels);
  if (s.preset) q.set('preset', s.preset);
  if (s.mode !== 'custom') {
    if (s.mode !== defaults.mode) q.set('mode', s.mode);
  } else {
    const k = s.lastBlock;
    q.set('attention', k.attention);
    if (k.neighbourhoodStd !== null) q.set('std', String(k.neighbourhoodStd));
    if (k.residualAlpha !== null) q.set('alpha', String(k.residualAlpha));
    if (k.ffn) q.set('ffn', '1');
  }
  if (s.threshold !== defaults.backgroundThreshold) q.set('threshold', String(s.threshold));
  if (s.crop !== defaults.crop) q.set('crop', String(s.crop));
  if (s.stride !== defaults.stride) q.set('stride', String(s.stride));
  if (s.pamr) q.set('pamr', '1');
  if (s.singleTemplate) q.set('templates', 'single');
  if (s.compare) q.set('compare', s.compare);
  if (s.weights) q.set('weights', s.weights);
  if (s.gelu) q.set('gelu', '1');
  if (s.half) q.set('precision', 'f16');
  const text = q.toString();
  return text ? `?${text}` : '';
}
