//! The segmentation pipeline of mc-lan/ClearCLIP `clearclip_segmentor.py`,
//! shared by the CLI and the browser:
//!
//! 1. class embeddings: every name in the prompt templates, encoded,
//!    normalised, averaged, renormalised (`__init__`), cached by name;
//! 2. resize + normalise the image ([`crate::preprocess`]);
//! 3. per sliding window: dense features, cosine similarity with the classes,
//!    bilinear upsampling to the crop, padding cut off, summed (`forward_slide`);
//! 4. average of overlaps, bilinear resize to the original size, optionally
//!    PAMR ([`crate::pamr`], as NACLIP's `predict`), softmax of
//!    `logit_scale * logits`, max over synonyms, argmax and background
//!    threshold (`postprocess_result`).
//!
//! The output of the first `L-1` vision blocks of every window is kept for
//! the last image, so a new [`LastBlock`] (another mode, another knob)
//! re-runs only the last block and what follows.
//!
//! Device work is `async` (browsers only allow asynchronous reads); natively a
//! trivial executor such as `pollster::block_on` drives it.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use clearclip_model::{Clip, ClipTokenizer, DenseMode, LastBlock, LastBlockInput, TokenizerError};
use image::RgbImage;

use crate::classes::ClassList;
use crate::pamr::Pamr;
use crate::preprocess::{normalize, rescaled_size, resize_like_opencv};
use crate::prompts::Templates;
use crate::resample::{linear_taps, resize_bilinear, upsample_crop_add};
use crate::windows::{sliding_windows, Window};

/// Every knob of the pipeline; defaults are the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentParams {
    /// Short side after resizing (`Resize(scale=(2048, 448))`).
    pub short_side: u32,
    /// Cap on the long side after resizing.
    pub long_side_cap: u32,
    /// Sliding-window crop and stride (`slide_crop`, `slide_stride`).
    pub crop: usize,
    pub stride: usize,
    /// Multiplies the cosine similarities before the softmax (`logit_scale`).
    pub logit_scale: f32,
    /// Pixels whose top probability is below this get class 0 (`prob_thd`).
    pub background_threshold: f32,
    pub templates: Templates,
    pub last_block: LastBlock,
    /// Refine the class maps with PAMR before the softmax (off in ClearCLIP,
    /// on in NACLIP's own protocol).
    pub pamr: Option<Pamr>,
}

impl Default for SegmentParams {
    fn default() -> Self {
        Self {
            short_side: 448,
            long_side_cap: 2048,
            crop: 448,
            stride: 224,
            logit_scale: 50.0,
            background_threshold: 0.0,
            templates: Templates::OpenAiImageNet,
            last_block: DenseMode::ClearClip.last_block(),
            pamr: None,
        }
    }
}

/// Images above this many pixels are refused: the probability maps are kept
/// at the original size (`classes x pixels` floats).
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// PAMR keeps 8 affinities per pixel and dilation: it is refused above this.
pub const MAX_PAMR_PIXELS: u64 = 16_000_000;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("the image is {width}x{height}; it must be at least one patch ({patch} px) on each side")]
    TooSmall { width: u32, height: u32, patch: usize },
    #[error("the image is {width}x{height} ({} megapixels); the limit is {} megapixels: downscale it first", (*.width as u64 * *.height as u64) / 1_000_000, MAX_IMAGE_PIXELS / 1_000_000)]
    TooLarge { width: u32, height: u32 },
    #[error("PAMR is limited to {} megapixels; this image has {}: downscale it or turn PAMR off", MAX_PAMR_PIXELS / 1_000_000, *.0 / 1_000_000)]
    PamrTooLarge(u64),
    #[error("invalid settings: {0}")]
    Params(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("the GPU/CPU device failed: {0}")]
    Device(String),
}

/// Progress of the two long phases, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Class names encoded (cached ones count as done at once).
    Text { done: usize, total: usize },
    /// Sliding windows processed; `done: 0` is sent before the first starts.
    Window { done: usize, total: usize },
}

/// Result of one segmentation, at the original image size.
#[derive(Debug, Clone)]
pub struct Segmentation {
    pub width: u32,
    pub height: u32,
    /// Display name of each class.
    pub class_names: Vec<String>,
    /// `[classes, height, width]`: softmax probabilities, max over synonyms.
    pub probs: Vec<f32>,
    /// `[height, width]`: class index per pixel (0 where below the threshold).
    pub labels: Vec<u8>,
    /// Size the model saw (after the resize), and the windows it ran.
    pub resized: (u32, u32),
    pub windows: usize,
    /// The first `L-1` blocks of every window came from the previous run on
    /// the same image (only the last block and what follows ran).
    pub reused_windows: bool,
    /// Non-fatal notes (truncated prompts, ...).
    pub warnings: Vec<String>,
}

impl Segmentation {
    /// Share of pixels labelled with each class.
    pub fn class_shares(&self) -> Vec<f32> {
        let mut counts = vec![0usize; self.class_names.len()];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts.iter().map(|&c| c as f32 / self.labels.len().max(1) as f32).collect()
    }

    /// Every `stride`-th pixel in each direction, starting at the first: the
    /// values are the full-size ones, not averages (`probs[:, ::s, ::s]`).
    /// The page shows heatmaps and the hover readout from this.
    pub fn sampled(&self, stride: usize) -> Segmentation {
        let stride = stride.max(1);
        let (w, h) = (self.width as usize, self.height as usize);
        let (sw, sh) = (w.div_ceil(stride), h.div_ceil(stride));
        let probs = every_nth_pixel(&self.probs, w, h, stride);
        let labels = every_nth_pixel(&self.labels, w, h, stride);
        Segmentation {
            width: sw as u32,
            height: sh as u32,
            class_names: self.class_names.clone(),
            probs,
            labels,
            resized: self.resized,
            windows: self.windows,
            reused_windows: self.reused_windows,
            warnings: self.warnings.clone(),
        }
    }
}

/// Every `stride`-th row and column of each `[height, width]` plane in `maps`.
fn every_nth_pixel<T: Copy>(maps: &[T], width: usize, height: usize, stride: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(maps.len() / (stride * stride) + width + height);
    for plane in maps.chunks_exact(width * height) {
        for row in plane.chunks_exact(width).step_by(stride) {
            out.extend(row.iter().step_by(stride));
        }
    }
    out
}

/// A loaded model, its tokenizer and the class embeddings computed so far.
pub struct Segmenter {
    pub model: Clip,
    tokenizer: ClipTokenizer,
    text_cache: HashMap<(String, Templates), Vec<f32>>,
    window_cache: Option<WindowCache>,
}

/// Everything of the last run that does not depend on the last block.
struct WindowCache {
    image: RgbImage,
    geometry: Geometry,
    /// The resized, normalised image, `[3, height, width]`.
    pixels: Vec<f32>,
    /// Output of the first `L-1` blocks, one per window, on the device.
    inputs: Vec<LastBlockInput>,
}

/// The settings that decide the windows and their pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    short_side: u32,
    long_side_cap: u32,
    crop: usize,
    stride: usize,
}

impl From<&SegmentParams> for Geometry {
    fn from(p: &SegmentParams) -> Self {
        Self { short_side: p.short_side, long_side_cap: p.long_side_cap, crop: p.crop, stride: p.stride }
    }
}

fn device_error(e: impl std::fmt::Debug) -> SegmentError {
    SegmentError::Device(format!("{e:?}"))
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

impl Segmenter {
    pub fn new(model: Clip, tokenizer: ClipTokenizer) -> Self {
        Self { model, tokenizer, text_cache: HashMap::new(), window_cache: None }
    }

    pub fn embed_dim(&self) -> usize {
        self.model.config.vision.embed_dim
    }

    /// Normalised class embedding of each name, `[names, embed_dim]`
    /// row-major, computed once per (name, templates) and then cached.
    pub async fn class_embeddings(
        &mut self,
        names: &[&str],
        templates: Templates,
        progress: &mut dyn FnMut(Progress),
        warnings: &mut Vec<String>,
    ) -> Result<Vec<f32>, SegmentError> {
        let total = names.len();
        let mut out = Vec::with_capacity(total * self.embed_dim());
        for (done, name) in names.iter().enumerate() {
            let key = (name.to_string(), templates);
            if !self.text_cache.contains_key(&key) {
                let embedding = self.encode_class(name, templates, warnings).await?;
                self.text_cache.insert(key.clone(), embedding);
            }
            out.extend_from_slice(&self.text_cache[&key]);
            progress(Progress::Text { done: done + 1, total });
        }
        Ok(out)
    }

    /// Whether a name's embedding is already cached.
    pub fn is_cached(&self, name: &str, templates: Templates) -> bool {
        self.text_cache.contains_key(&(name.to_string(), templates))
    }

    async fn encode_class(&self, name: &str, templates: Templates, warnings: &mut Vec<String>) -> Result<Vec<f32>, SegmentError> {
        let prompts = templates.prompts(name);
        let batch = self.tokenizer.encode_batch(&prompts)?;
        if batch.truncated.iter().any(|&t| t) {
            warnings.push(format!(
                "\"{name}\" is too long: its prompts were cut to {} tokens",
                self.tokenizer.context_length()
            ));
        }
        let features = self.model.text.encode(&batch);
        let data = features.into_data_async().await.map_err(device_error)?;
        let features: Vec<f32> = data.try_into_vec::<f32>().map_err(device_error)?;
        // clearclip_segmentor.py: feature /= norm; feature.mean(0); feature /= norm
        let dim = self.embed_dim();
        let mut mean = vec![0.0f32; dim];
        for row in features.chunks_exact(dim) {
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            for (m, x) in mean.iter_mut().zip(row) {
                *m += x / norm;
            }
        }
        let rows = features.len() / dim;
        mean.iter_mut().for_each(|m| *m /= rows as f32);
        l2_normalize(&mut mean);
        Ok(mean)
    }

    /// Segment `image` into `classes`. When `image` and the window geometry
    /// are those of the previous call, the first `L-1` blocks are not run again.
    pub async fn segment(
        &mut self,
        image: &RgbImage,
        classes: &ClassList,
        params: &SegmentParams,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Segmentation, SegmentError> {
        let (width, height) = image.dimensions();
        let patch = self.model.config.vision.patch_size;
        validate(width, height, patch, params)?;
        let mut warnings = Vec::new();
        let (names, class_of_query) = classes.queries();
        let queries = self.class_embeddings(&names, params.templates, progress, &mut warnings).await?;

        let geometry = Geometry::from(params);
        let (rw, rh) = rescaled_size(width, height, params.short_side, params.long_side_cap);
        let windows = sliding_windows(rw as usize, rh as usize, params.crop, params.stride, patch);
        // Take the cache out: it is dropped if this run fails half-way.
        let cached = self.window_cache.take().filter(|c| c.geometry == geometry && c.image == *image);
        let reused_windows = cached.is_some();
        let (kept_image, pixels, cached_inputs) = match cached {
            Some(c) => (c.image, c.pixels, Some(c.inputs)),
            None => {
                let resized = if (rw, rh) == (width, height) { image.clone() } else { resize_like_opencv(image, rw, rh) };
                (image.clone(), normalize(&resized), None)
            }
        };
        let (logits, inputs) = self
            .sliding_window_logits(&pixels, (rw as usize, rh as usize), &windows, cached_inputs, &queries, names.len(), params, progress)
            .await?;
        let in_size = (rh as usize, rw as usize);
        let out_size = (height as usize, width as usize);
        let (probs, labels) = match &params.pamr {
            None => probabilities(&logits, names.len(), in_size, out_size, &class_of_query, classes.len(), params),
            Some(pamr) => {
                // NACLIP.predict: logits and the network input, both resized
                // bilinearly to the original size, then PAMR, then the softmax.
                let mut full = resize_bilinear(&logits, names.len(), in_size, out_size);
                let guide = resize_bilinear(&pixels, 3, in_size, out_size);
                pamr.refine(&guide, 3, &mut full, names.len(), out_size);
                probabilities(&full, names.len(), out_size, out_size, &class_of_query, classes.len(), params)
            }
        };
        self.window_cache = Some(WindowCache { image: kept_image, geometry, pixels, inputs });
        Ok(Segmentation {
            width,
            height,
            class_names: classes.classes.iter().map(|c| c.display_name().to_string()).collect(),
            probs,
            labels,
            resized: (rw, rh),
            windows: windows.len(),
            reused_windows,
            warnings,
        })
    }

    /// Averaged window logits over the resized image, `[queries, height, width]`,
    /// and the first `L-1` blocks' output of every window (taken from
    /// `cached`, one per window, when given; computed otherwise).
    #[allow(clippy::too_many_arguments)]
    async fn sliding_window_logits(
        &self,
        pixels: &[f32],
        (width, height): (usize, usize),
        windows: &[Window],
        cached: Option<Vec<LastBlockInput>>,
        queries: &[f32],
        n_queries: usize,
        params: &SegmentParams,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Vec<f32>, Vec<LastBlockInput>), SegmentError> {
        let device = self.model.vision.device();
        let dim = self.embed_dim();
        let patch = self.model.config.vision.patch_size;
        // [queries, dim] -> [dim, queries] for `features @ queries^T`.
        let mut queries_t = vec![0.0f32; dim * n_queries];
        for q in 0..n_queries {
            for d in 0..dim {
                queries_t[d * n_queries + q] = queries[q * dim + d];
            }
        }
        let queries_t: Tensor<2> = Tensor::from_data(TensorData::new(queries_t, [dim, n_queries]), &device);

        let mut cached = cached.map(Vec::into_iter);
        let mut inputs = Vec::with_capacity(windows.len());
        // Marks the end of the text phase for callers timing the two phases.
        progress(Progress::Window { done: 0, total: windows.len() });
        let mut sum = vec![0.0f32; n_queries * height * width];
        let mut count = vec![0u16; height * width];
        for (i, window) in windows.iter().enumerate() {
            let (ph, pw) = (window.padded_height(), window.padded_width());
            let input = match cached.as_mut().and_then(Iterator::next) {
                Some(input) => input,
                None => {
                    let crop = crop_padded(pixels, (width, height), window);
                    let crop: Tensor<4> = Tensor::from_data(TensorData::new(crop, [1, 3, ph, pw]), &device);
                    self.model.vision.encode_to_last_block(crop)
                }
            };
            let features = self.model.vision.dense_from_last_block(&input, &params.last_block);
            inputs.push(input);
            let [_, n, _] = features.dims();
            let features = features.reshape([n, dim]);
            let norm = features.clone().square().sum_dim(1).sqrt();
            let logits = (features / norm).matmul(queries_t.clone());
            let logits: Vec<f32> = logits.into_data_async().await.map_err(device_error)?.try_into_vec::<f32>().map_err(device_error)?;
            let (gh, gw) = (ph / patch, pw / patch);
            // [patches, queries] -> [queries, grid_h, grid_w]
            let mut planes = vec![0.0f32; n_queries * gh * gw];
            for p in 0..gh * gw {
                for q in 0..n_queries {
                    planes[q * gh * gw + p] = logits[p * n_queries + q];
                }
            }
            upsample_crop_add(
                &planes,
                n_queries,
                (gh, gw),
                (ph, pw),
                (window.pad_top, window.pad_left),
                (window.height, window.width),
                &mut sum,
                (height, width),
                (window.y, window.x),
            );
            for y in window.y..window.y + window.height {
                count[y * width + window.x..][..window.width].iter_mut().for_each(|c| *c += 1);
            }
            progress(Progress::Window { done: i + 1, total: windows.len() });
        }
        for plane in sum.chunks_exact_mut(height * width) {
            for (s, &c) in plane.iter_mut().zip(&count) {
                *s /= c as f32;
            }
        }
        Ok((sum, inputs))
    }
}

fn validate(width: u32, height: u32, patch: usize, params: &SegmentParams) -> Result<(), SegmentError> {
    if (width as usize) < patch || (height as usize) < patch {
        return Err(SegmentError::TooSmall { width, height, patch });
    }
    if width as u64 * height as u64 > MAX_IMAGE_PIXELS {
        return Err(SegmentError::TooLarge { width, height });
    }
    if params.crop < patch || params.stride == 0 || params.short_side == 0 || params.long_side_cap < params.short_side {
        return Err(SegmentError::Params(format!(
            "crop {} (at least the patch, {patch}), stride {} (> 0), short side {} (> 0, at most the long-side cap {})",
            params.crop, params.stride, params.short_side, params.long_side_cap
        )));
    }
    params.last_block.validate().map_err(SegmentError::Params)?;
    if let Some(pamr) = &params.pamr {
        pamr.validate().map_err(SegmentError::Params)?;
        if width as u64 * height as u64 > MAX_PAMR_PIXELS {
            return Err(SegmentError::PamrTooLarge(width as u64 * height as u64));
        }
    }
    if params.stride > params.crop {
        return Err(SegmentError::Params(format!("stride {} larger than the crop {} would leave gaps", params.stride, params.crop)));
    }
    Ok(())
}

/// Copy one window of `[3, height, width]` pixels into a zero-padded buffer
/// (`F.pad` of the normalised image).
///
/// # Shapes
/// - returns `[3, padded_height, padded_width]`
fn crop_padded(pixels: &[f32], (width, height): (usize, usize), w: &Window) -> Vec<f32> {
    let (ph, pw) = (w.padded_height(), w.padded_width());
    let mut out = vec![0.0f32; 3 * ph * pw];
    for c in 0..3 {
        for r in 0..w.height {
            let src = &pixels[c * height * width + (w.y + r) * width + w.x..][..w.width];
            out[c * ph * pw + (r + w.pad_top) * pw + w.pad_left..][..w.width].copy_from_slice(src);
        }
    }
    out
}

/// Resize the averaged logits to the original size, softmax over queries of
/// `logit_scale * logits`, max over each class's synonyms, argmax with the
/// background threshold. Row by row, so only the outputs are held in memory.
///
/// # Shapes
/// - `logits`: `[queries, in_h, in_w]`
/// - returns probabilities `[classes, out_h, out_w]` and labels `[out_h, out_w]`
pub fn probabilities(
    logits: &[f32],
    n_queries: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    class_of_query: &[usize],
    n_classes: usize,
    params: &SegmentParams,
) -> (Vec<f32>, Vec<u8>) {
    let plane = in_h * in_w;
    let ty = linear_taps(in_h, out_h);
    let tx = linear_taps(in_w, out_w);
    let mut probs = vec![0.0f32; n_classes * out_h * out_w];
    let mut labels = vec![0u8; out_h * out_w];
    let mut scores = vec![0.0f32; n_queries];
    let mut class_probs = vec![0.0f32; n_classes];
    for (y, t) in ty.iter().enumerate() {
        for (x, s) in tx.iter().enumerate() {
            for (q, score) in scores.iter_mut().enumerate() {
                let a = &logits[q * plane + t.i0 * in_w..][..in_w];
                let b = &logits[q * plane + t.i1 * in_w..][..in_w];
                *score = t.blend(s, a, b) * params.logit_scale;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                total += *score;
            }
            class_probs.iter_mut().for_each(|p| *p = f32::NEG_INFINITY);
            for (q, score) in scores.iter().enumerate() {
                let c = class_of_query[q];
                class_probs[c] = class_probs[c].max(score / total);
            }
            let pixel = y * out_w + x;
            let mut best = 0;
            for (c, &p) in class_probs.iter().enumerate() {
                probs[c * out_h * out_w + pixel] = p;
                if p > class_probs[best] {
                    best = c;
                }
            }
            labels[pixel] = if class_probs[best] < params.background_threshold { 0 } else { best as u8 };
        }
    }
    (probs, labels)
}

#[cfg(test)]
mod sampling_tests {
    use super::*;

    #[test]
    fn sampled_maps_hold_the_full_size_values_of_every_nth_pixel() {
        let (w, h) = (5usize, 3usize);
        let seg = Segmentation {
            width: w as u32,
            height: h as u32,
            class_names: vec!["a".into(), "b".into()],
            probs: (0..2 * w * h).map(|i| i as f32).collect(),
            labels: (0..w * h).map(|i| (i % 2) as u8).collect(),
            resized: (5, 3),
            windows: 1,
            reused_windows: false,
            warnings: Vec::new(),
        };
        let s = seg.sampled(2);
        assert_eq!((s.width, s.height), (3, 2));
        // Rows 0 and 2, columns 0, 2 and 4 of each class plane.
        assert_eq!(s.probs, [0.0, 2.0, 4.0, 10.0, 12.0, 14.0, 15.0, 17.0, 19.0, 25.0, 27.0, 29.0]);
        assert_eq!(s.labels, [0, 0, 0, 0, 0, 0]);
        let same = seg.sampled(1);
        assert_eq!((same.probs, same.labels), (seg.probs.clone(), seg.labels.clone()));
        assert_eq!(crate::render::display_stride(4032, 3024), 3);
        assert_eq!(crate::render::display_stride(1411, 1411), 1);
    }
}
