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
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;

use burn::tensor::{Tensor, TensorData};
use clearclip_model::{Clip, ClipConfig, ClipTokenizer, DenseMode, InputError, LastBlock, LastBlockError, LastBlockInput, TokenizerError};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::classes::ClassList;
use crate::pamr::Pamr;
use crate::preprocess::{normalize, rescaled_size, resize_like_opencv};
use crate::prompts::Templates;
use crate::resample::{linear_taps, resize_bilinear, upsample_crop_add, Maps, Paste};
use crate::windows::{sliding_windows, Window};

/// Every knob of the pipeline; defaults are the reference's. This is the
/// request the CLI and the page both build (the page as JSON, every field
/// optional: `{crop, stride, backgroundThreshold, templates, lastBlock, pamr, ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
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

impl SegmentParams {
    /// What runs after the first blocks, e.g. `q-q attention, no residual, no FFN, then PAMR`.
    pub fn describe_last_block(&self) -> String {
        format!("{}{}", self.last_block, if self.pamr.is_some() { ", then PAMR" } else { "" })
    }
}

/// Images above this many pixels are refused: the probability maps are kept
/// at the original size (`classes x pixels` floats).
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// PAMR keeps 8 affinities per pixel and dilation: it is refused above this.
pub const MAX_PAMR_PIXELS: u64 = 16_000_000;

/// Settings that cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("crop {crop} (at least the patch, {patch}), stride {stride} (> 0), short side {short_side} (> 0, at most the long-side cap {long_side_cap})")]
    Geometry { crop: usize, stride: usize, short_side: u32, long_side_cap: u32, patch: usize },
    #[error("stride {stride} larger than the crop {crop} would leave gaps")]
    StrideAboveCrop { stride: usize, crop: usize },
    #[error(transparent)]
    LastBlock(#[from] LastBlockError),
    #[error("PAMR needs positive dilations, not {0:?}")]
    PamrDilations(Vec<usize>),
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("the image is {width}x{height}; it must be at least one patch ({patch} px) on each side")]
    TooSmall { width: u32, height: u32, patch: usize },
    #[error("the image is {width}x{height} ({} megapixels); the limit is {} megapixels: downscale it first", (*.width as u64 * *.height as u64) / 1_000_000, MAX_IMAGE_PIXELS / 1_000_000)]
    TooLarge { width: u32, height: u32 },
    #[error("PAMR is limited to {} megapixels; this image has {}: downscale it or turn PAMR off", MAX_PAMR_PIXELS / 1_000_000, *.0 / 1_000_000)]
    PamrTooLarge(u64),
    #[error("invalid settings: {0}")]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the GPU/CPU device failed: {0}")]
    Device(String),
    /// The caller's [`Observer`] asked to stop.
    #[error("the run was cancelled")]
    Cancelled,
}

impl SegmentError {
    /// Whether the model is unusable after this error (the device failed):
    /// the caller must load it again. Every other error is about the
    /// request, and the next request may succeed.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Device(_))
    }
}

/// Progress of the two long phases, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Class names encoded (cached ones count as done at once).
    Text { done: usize, total: usize },
    /// Sliding windows processed; `done: 0` is sent before the first starts.
    Window { done: usize, total: usize },
}

/// What a caller hears of a run as it goes, and its say in whether it goes on.
///
/// Any `FnMut(Progress)` closure is an observer that never stops a run (the
/// CLI's progress bar). The browser worker implements it to stop a run the
/// page cancelled, and to let its event loop deliver that message.
pub trait Observer {
    /// A step is done (a class name, a window). `Break` stops the run with
    /// [`SegmentError::Cancelled`] before the next step.
    fn progress(&mut self, progress: Progress) -> ControlFlow<()>;

    /// Awaited before each step is reported. A host whose event loop must
    /// run between steps (a worker reading a cancel message while the CPU
    /// backend computes) waits here; by default nothing happens.
    fn pause(&mut self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(std::future::ready(()))
    }
}

impl<F: FnMut(Progress)> Observer for F {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        self(progress);
        ControlFlow::Continue(())
    }
}

/// Report one finished step: let the host run, then ask whether to go on.
async fn step(observer: &mut dyn Observer, progress: Progress) -> Result<(), SegmentError> {
    observer.pause().await;
    match observer.progress(progress) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(SegmentError::Cancelled),
    }
}

/// Milliseconds on a monotonic clock, for the phase timings.
pub type Clock = fn() -> f64;

/// `std::time::Instant` (natively). In wasm32 std has no clock: the glue
/// passes `performance.now()` to [`Segmenter::with_clock`].
fn instant_clock() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
    }
    #[cfg(target_arch = "wasm32")]
    {
        f64::NAN
    }
}

/// How long the phases of one segmentation took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    /// Encoding the class names not cached yet.
    pub text_ms: f64,
    /// The windows (all blocks, or the last one when reused) and the merge.
    pub image_ms: f64,
    /// How many class names were encoded (the rest came from the cache).
    pub classes_encoded: usize,
    /// Where `image_ms` went.
    pub image: ImagePhases,
}

/// The parts of the image phase, summed over the windows, in milliseconds.
///
/// A GPU backend queues work and runs it when a result is read: unless the
/// segmenter synchronises after each phase ([`Segmenter::with_phase_sync`]),
/// the device's compute shows up under `read_back_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagePhases {
    /// Resize and normalise the image, cut the windows.
    pub prepare_ms: f64,
    /// The first `L-1` vision blocks (0 when reused from the last run).
    pub encoder_ms: f64,
    /// The last block, `ln_post`, the projection and the cosine logits.
    pub last_block_ms: f64,
    /// Reading the window logits back from the device.
    pub read_back_ms: f64,
    /// Upsampling each window's logits, adding them up, averaging overlaps.
    pub window_merge_ms: f64,
    /// Resize to the original size, (PAMR,) softmax, synonym max, argmax.
    pub probabilities_ms: f64,
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
    pub timings: Timings,
    /// Non-fatal notes (truncated prompts, ...).
    pub warnings: Vec<String>,
}

impl Segmentation {
    /// Share of pixels labelled with each class.
    pub fn class_shares(&self) -> Vec<f32> {
        let mut counts = vec![0usize; self.class_names.len()];
        for &l in &self.labels {
            if let Some(count) = counts.get_mut(l as usize) {
                *count += 1;
            }
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
        Segmentation {
            width: sw as u32,
            height: sh as u32,
            probs: every_nth_pixel(&self.probs, w, h, stride),
            labels: every_nth_pixel(&self.labels, w, h, stride),
            class_names: self.class_names.clone(),
            warnings: self.warnings.clone(),
            ..*self
        }
    }
}

/// Every `stride`-th row and column of each `[height, width]` plane in `maps`.
fn every_nth_pixel<T: Copy>(maps: &[T], width: usize, height: usize, stride: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(maps.len() / (stride * stride) + width + height);
    for plane in maps.chunks_exact((width * height).max(1)) {
        for row in plane.chunks_exact(width.max(1)).step_by(stride) {
            out.extend(row.iter().step_by(stride));
        }
    }
    out
}

/// A loaded model, its tokenizer and the class embeddings computed so far.
pub struct Segmenter {
    model: Clip,
    tokenizer: ClipTokenizer,
    text_cache: HashMap<(String, Templates), Vec<f32>>,
    window_cache: Option<WindowCache>,
    clock: Clock,
    phase_sync: bool,
}

/// Everything of the last run that does not depend on the last block.
struct WindowCache {
    image: RgbImage,
    geometry: Geometry,
    /// The resized, normalised image, `[3, height, width]`.
    pixels: Maps,
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

/// The model input for one image: resized and normalised, cut into windows,
/// and the first blocks' output of each window when they can be reused.
struct PreparedImage {
    pixels: Maps,
    windows: Vec<Window>,
    reused: Option<Vec<LastBlockInput>>,
}

/// The class embeddings as the right-hand side of `features @ queries^T`.
struct Queries {
    /// `[embed_dim, queries]` on the device.
    transposed: Tensor<2>,
    count: usize,
}

fn device_error(e: impl std::fmt::Debug) -> SegmentError {
    SegmentError::Device(format!("{e:?}"))
}

fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
}

/// Reads a float tensor back from the device.
async fn read_back<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, SegmentError> {
    tensor.into_data_async().await.map_err(device_error)?.try_into_vec::<f32>().map_err(device_error)
}

impl Segmenter {
    pub fn new(model: Clip, tokenizer: ClipTokenizer) -> Self {
        Self { model, tokenizer, text_cache: HashMap::new(), window_cache: None, clock: instant_clock, phase_sync: false }
    }

    /// Wait for the device after each phase of the image, so that
    /// [`ImagePhases`] says where the device's time went (for benchmarks;
    /// costs a round trip per window). Native only: a browser cannot block.
    pub fn with_phase_sync(mut self, sync: bool) -> Self {
        self.phase_sync = sync;
        self
    }

    /// Forget the class embeddings and the last image's first blocks, so the
    /// next run computes everything (for benchmarks).
    pub fn clear_caches(&mut self) {
        self.text_cache.clear();
        self.window_cache = None;
    }

    /// The clock's reading after the device has finished the queued work,
    /// when phases are synchronised.
    fn phase_end(&self) -> Result<f64, SegmentError> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.phase_sync {
            self.model.vision.device().sync().map_err(device_error)?;
        }
        Ok((self.clock)())
    }

    /// Use `clock` for the phase timings (the browser's `performance.now()`).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The architecture of the loaded model.
    pub fn config(&self) -> &ClipConfig {
        &self.model.config
    }

    /// What the device's allocator holds now (`None` where the backend does
    /// not say), for memory soaks.
    pub fn device_memory(&self) -> Option<burn::tensor::MemoryPoolUsage> {
        self.model.vision.device().memory_pool_usage()
    }

    fn embed_dim(&self) -> usize {
        self.model.config.vision.embed_dim
    }

    /// Normalised class embedding of each name, `[names, embed_dim]`
    /// row-major, computed once per (name, templates) and then cached.
    /// Returns them with how many names had to be encoded.
    pub async fn class_embeddings(
        &mut self,
        names: &[&str],
        templates: Templates,
        observer: &mut dyn Observer,
        warnings: &mut Vec<String>,
    ) -> Result<(Vec<f32>, usize), SegmentError> {
        let total = names.len();
        let mut out = Vec::with_capacity(total * self.embed_dim());
        let mut encoded = 0;
        for (done, name) in names.iter().enumerate() {
            let key = (name.to_string(), templates);
            let embedding = match self.text_cache.get(&key) {
                Some(embedding) => embedding,
                None => {
                    let embedding = self.encode_class(name, templates, warnings).await?;
                    encoded += 1;
                    self.text_cache.entry(key).or_insert(embedding)
                }
            };
            out.extend_from_slice(embedding);
            step(observer, Progress::Text { done: done + 1, total }).await?;
        }
        Ok((out, encoded))
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
        let features = read_back(self.model.text.encode(&batch)?).await?;
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

    /// Segment `image` into `classes`: encode the class names, run the
    /// windows, merge them into probabilities at the original size. When
    /// `image` and the window geometry are those of the previous call, the
    /// first `L-1` blocks are not run again. `observer` hears of every class
    /// name and window, and may stop the run between two of them.
    pub async fn segment(
        &mut self,
        image: &RgbImage,
        classes: &ClassList,
        params: &SegmentParams,
        observer: &mut dyn Observer,
    ) -> Result<Segmentation, SegmentError> {
        let (width, height) = image.dimensions();
        validate(width, height, self.model.config.vision.patch_size, params)?;
        let started = (self.clock)();
        let mut warnings = Vec::new();
        let (names, class_of_query) = classes.queries();
        let (embeddings, classes_encoded) = self.class_embeddings(&names, params.templates, observer, &mut warnings).await?;
        let queries = self.queries(embeddings, names.len());
        let text_done = (self.clock)();

        let geometry = Geometry::from(params);
        let prepared = self.prepare(image, geometry);
        let mut phases = ImagePhases { prepare_ms: (self.clock)() - text_done, ..ImagePhases::default() };
        let reused_windows = prepared.reused.is_some();
        let window_count = prepared.windows.len();
        let (logits, inputs) = self.window_logits(&prepared, &queries, &params.last_block, observer, &mut phases).await?;
        let merge = ClassMerge::new(&class_of_query, classes.len(), params);
        let merge_started = (self.clock)();
        let (probs, labels) = merge_logits(logits, &prepared.pixels, (height as usize, width as usize), params.pamr.as_ref(), &merge);
        let done = (self.clock)();
        phases.probabilities_ms = done - merge_started;
        let (rh, rw) = prepared.pixels.size();
        self.window_cache = Some(WindowCache { image: image.clone(), geometry, pixels: prepared.pixels, inputs });
        Ok(Segmentation {
            width,
            height,
            class_names: classes.classes.iter().map(|c| c.display_name().to_string()).collect(),
            probs,
            labels,
            resized: (rw as u32, rh as u32),
            windows: window_count,
            reused_windows,
            timings: Timings { text_ms: text_done - started, image_ms: done - text_done, classes_encoded, image: phases },
            warnings,
        })
    }

    /// The class embeddings, `[queries, dim]`, uploaded transposed.
    fn queries(&self, embeddings: Vec<f32>, count: usize) -> Queries {
        let dim = self.embed_dim();
        let mut transposed = vec![0.0f32; dim * count];
        for (q, row) in embeddings.chunks_exact(dim).enumerate() {
            for (d, &value) in row.iter().enumerate() {
                transposed[d * count + q] = value;
            }
        }
        let device = self.model.vision.device();
        Queries { transposed: Tensor::from_data(TensorData::new(transposed, [dim, count]), &device), count }
    }

    /// Resize, normalise and cut the image into windows, or take all of it
    /// (with the first blocks' output) from the previous run on the same
    /// image and geometry. The cache is taken out: a run that fails half-way drops it.
    fn prepare(&mut self, image: &RgbImage, geometry: Geometry) -> PreparedImage {
        let (width, height) = image.dimensions();
        let (rw, rh) = rescaled_size(width, height, geometry.short_side, geometry.long_side_cap);
        let patch = self.model.config.vision.patch_size;
        let windows = sliding_windows(rw as usize, rh as usize, geometry.crop, geometry.stride, patch);
        let cached = self.window_cache.take().filter(|c| c.geometry == geometry && c.image == *image);
        match cached {
            Some(c) => PreparedImage { pixels: c.pixels, windows, reused: Some(c.inputs) },
            None => {
                let resized = if (rw, rh) == (width, height) { image.clone() } else { resize_like_opencv(image, rw, rh) };
                PreparedImage { pixels: normalize(&resized), windows, reused: None }
            }
        }
    }

    /// Averaged window logits over the resized image, `[queries, height, width]`,
    /// and the first `L-1` blocks' output of every window (reused, or computed).
    async fn window_logits(
        &self,
        image: &PreparedImage,
        queries: &Queries,
        last_block: &LastBlock,
        observer: &mut dyn Observer,
        phases: &mut ImagePhases,
    ) -> Result<(Maps, Vec<LastBlockInput>), SegmentError> {
        let size = image.pixels.size();
        let total = image.windows.len();
        let mut reused = image.reused.clone().map(Vec::into_iter);
        let mut inputs = Vec::with_capacity(total);
        // Marks the end of the text phase for callers timing the two phases.
        step(observer, Progress::Window { done: 0, total }).await?;
        let mut sum = Maps::zeros(queries.count, size);
        let mut count = vec![0u16; size.0 * size.1];
        for (i, window) in image.windows.iter().enumerate() {
            let started = (self.clock)();
            let input = match reused.as_mut().and_then(Iterator::next) {
                Some(input) => input,
                None => self.encode_window(&image.pixels, window)?,
            };
            let encoded = self.phase_end()?;
            let scores = self.window_scores(&input, queries, last_block);
            let scored = self.phase_end()?;
            let scores = read_back(scores).await?;
            let read = (self.clock)();
            let planes = self.score_planes(&scores, window, queries.count);
            inputs.push(input);
            let paste = Paste {
                scaled: (window.padded_height(), window.padded_width()),
                from: (window.pad_top, window.pad_left),
                extent: (window.height, window.width),
                to: (window.y, window.x),
            };
            upsample_crop_add(&planes, &paste, &mut sum);
            for y in window.y..window.y + window.height {
                count[y * size.1 + window.x..][..window.width].iter_mut().for_each(|c| *c += 1);
            }
            let merged = (self.clock)();
            phases.encoder_ms += encoded - started;
            phases.last_block_ms += scored - encoded;
            phases.read_back_ms += read - scored;
            phases.window_merge_ms += merged - read;
            step(observer, Progress::Window { done: i + 1, total }).await?;
        }
        let averaging = (self.clock)();
        let pixels = size.0 * size.1;
        for plane in sum.as_mut_slice().chunks_exact_mut(pixels.max(1)) {
            for (s, &c) in plane.iter_mut().zip(&count) {
                *s /= c.max(1) as f32;
            }
        }
        phases.window_merge_ms += (self.clock)() - averaging;
        Ok((sum, inputs))
    }

    /// The first `L-1` blocks on one zero-padded window.
    fn encode_window(&self, pixels: &Maps, window: &Window) -> Result<LastBlockInput, SegmentError> {
        let (ph, pw) = (window.padded_height(), window.padded_width());
        let crop = crop_padded(pixels, window);
        let crop: Tensor<4> = Tensor::from_data(TensorData::new(crop, [1, 3, ph, pw]), &self.model.vision.device());
        Ok(self.model.vision.encode_to_last_block(crop)?)
    }

    /// The last block on one window, then the cosine similarity of every
    /// patch with every query.
    ///
    /// # Shapes
    /// - returns `[patches, queries]` on the device
    fn window_scores(&self, input: &LastBlockInput, queries: &Queries, last_block: &LastBlock) -> Tensor<2> {
        let features = self.model.vision.dense_from_last_block(input, last_block);
        let [_, n, dim] = features.dims();
        let features = features.reshape([n, dim]);
        let norm = features.clone().square().sum_dim(1).sqrt();
        (features / norm).matmul(queries.transposed.clone())
    }

    /// The read-back scores of one window as one plane per query.
    ///
    /// # Shapes
    /// - `scores`: `[patches, queries]`; returns `[queries, grid_h, grid_w]`
    fn score_planes(&self, scores: &[f32], window: &Window, queries: usize) -> Maps {
        let patch = self.model.config.vision.patch_size;
        let (gh, gw) = (window.padded_height() / patch, window.padded_width() / patch);
        let mut planes = Maps::zeros(queries, (gh, gw));
        let out = planes.as_mut_slice();
        for (p, row) in scores.chunks_exact(queries).enumerate().take(gh * gw) {
            for (q, &value) in row.iter().enumerate() {
                out[q * gh * gw + p] = value;
            }
        }
        planes
    }
}

fn validate(width: u32, height: u32, patch: usize, params: &SegmentParams) -> Result<(), SegmentError> {
    if (width as usize) < patch || (height as usize) < patch {
        return Err(SegmentError::TooSmall { width, height, patch });
    }
    if width as u64 * height as u64 > MAX_IMAGE_PIXELS {
        return Err(SegmentError::TooLarge { width, height });
    }
    let SegmentParams { crop, stride, short_side, long_side_cap, .. } = *params;
    if crop < patch || stride == 0 || short_side == 0 || long_side_cap < short_side {
        return Err(SettingsError::Geometry { crop, stride, short_side, long_side_cap, patch }.into());
    }
    params.last_block.validate().map_err(SettingsError::from)?;
    if let Some(pamr) = &params.pamr {
        pamr.validate()?;
        if width as u64 * height as u64 > MAX_PAMR_PIXELS {
            return Err(SegmentError::PamrTooLarge(width as u64 * height as u64));
        }
    }
    if stride > crop {
        return Err(SettingsError::StrideAboveCrop { stride, crop }.into());
    }
    Ok(())
}

/// Copy one window of the `[3, height, width]` pixels into a zero-padded
/// buffer (`F.pad` of the normalised image).
///
/// # Shapes
/// - returns `[3, padded_height, padded_width]`
fn crop_padded(pixels: &Maps, w: &Window) -> Vec<f32> {
    let (ph, pw) = (w.padded_height(), w.padded_width());
    let width = pixels.size().1;
    let mut out = vec![0.0f32; 3 * ph * pw];
    for c in 0..3 {
        let plane = pixels.plane(c);
        for r in 0..w.height {
            let src = &plane[(w.y + r) * width + w.x..][..w.width];
            out[c * ph * pw + (r + w.pad_top) * pw + w.pad_left..][..w.width].copy_from_slice(src);
        }
    }
    out
}

/// How the queries' scores become class probabilities and labels.
pub struct ClassMerge<'a> {
    /// The class of each query (synonyms share one).
    pub class_of_query: &'a [usize],
    pub classes: usize,
    pub logit_scale: f32,
    pub background_threshold: f32,
}

impl<'a> ClassMerge<'a> {
    pub fn new(class_of_query: &'a [usize], classes: usize, params: &SegmentParams) -> Self {
        Self { class_of_query, classes, logit_scale: params.logit_scale, background_threshold: params.background_threshold }
    }
}

/// The last step of `forward_slide` and `postprocess_result`: the averaged
/// logits to the original size, then probabilities and labels; with PAMR as
/// `NACLIP.predict`: logits and the network input, both resized bilinearly
/// to the original size, then PAMR, then the softmax.
///
/// # Shapes
/// - `logits`: `[queries, in_h, in_w]`; `pixels`: `[3, in_h, in_w]`
/// - returns probabilities `[classes, out_h, out_w]` and labels `[out_h, out_w]`
fn merge_logits(logits: Maps, pixels: &Maps, size: (usize, usize), pamr: Option<&Pamr>, merge: &ClassMerge) -> (Vec<f32>, Vec<u8>) {
    match pamr {
        None => probabilities(&logits, size, merge),
        Some(pamr) => {
            let mut full = resize_bilinear(&logits, size);
            pamr.refine(&resize_bilinear(pixels, size), &mut full);
            probabilities(&full, size, merge)
        }
    }
}

/// Resize the averaged logits to `(out_h, out_w)`, softmax over queries of
/// `logit_scale * logits`, max over each class's synonyms, argmax with the
/// background threshold. Row by row, so only the outputs are held in memory.
///
/// # Shapes
/// - `logits`: `[queries, in_h, in_w]`
/// - returns probabilities `[classes, out_h, out_w]` and labels `[out_h, out_w]`
pub fn probabilities(logits: &Maps, (out_h, out_w): (usize, usize), merge: &ClassMerge) -> (Vec<f32>, Vec<u8>) {
    let (in_h, in_w) = logits.size();
    let ty = linear_taps(in_h, out_h);
    let tx = linear_taps(in_w, out_w);
    let n_classes = merge.classes;
    let mut probs = vec![0.0f32; n_classes * out_h * out_w];
    let mut labels = vec![0u8; out_h * out_w];
    let mut scores = vec![0.0f32; logits.channels()];
    let mut class_probs = vec![0.0f32; n_classes];
    for (y, t) in ty.iter().enumerate() {
        for (x, s) in tx.iter().enumerate() {
            for (q, score) in scores.iter_mut().enumerate() {
                let plane = logits.plane(q);
                let a = &plane[t.i0 * in_w..][..in_w];
                let b = &plane[t.i1 * in_w..][..in_w];
                *score = t.blend(s, a, b) * merge.logit_scale;
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut total = 0.0;
            for score in scores.iter_mut() {
                *score = (*score - max).exp();
                total += *score;
            }
            class_probs.iter_mut().for_each(|p| *p = f32::NEG_INFINITY);
            for (&c, score) in merge.class_of_query.iter().zip(&scores) {
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
            labels[pixel] = if class_probs[best] < merge.background_threshold { 0 } else { best as u8 };
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
            timings: Timings::default(),
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
