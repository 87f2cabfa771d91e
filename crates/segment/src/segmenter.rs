//! The segmentation pipeline of mc-lan/ClearCLIP `clearclip_segmentor.py`,
//! shared by the CLI and the browser:
//!
//! 1. class embeddings: every name in the prompt templates, encoded,
//!    normalised, averaged, renormalised (`__init__`), cached by name;
//! 2. resize + normalise the image ([`crate::preprocess`]);
//! 3. the sliding windows, as many in one batch as memory allows: dense
//!    features, cosine similarity with the classes, bilinear upsampling to the
//!    crop, padding cut off, summed (`forward_slide`);
//! 4. average of overlaps, bilinear resize to the original size, optionally
//!    PAMR ([`crate::pamr`], as NACLIP's `predict`), softmax of
//!    `logit_scale * logits`, max over synonyms, argmax and background
//!    threshold (`postprocess_result`).
//!
//! Steps 3 and 4 run on the model's device ([`crate::merge`]); on a GPU one
//! transfer at the end reads back the label map and the probability maps
//! asked for ([`ProbabilityMaps`]); on the CPU backend step 4 is one pass
//! over the pixels.
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
use clearclip_model::{Clip, ClipConfig, ClipTokenizer, DenseMode, InputError, LastBlock, LastBlockError, LastBlockInput, TokenBatch, TokenizerError, VisionConfig};
use clearclip_model::host::is_host;
use clearclip_model::gpu_matmul::{matmul, ProductKind};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::classes::ClassList;
use crate::merge::{classify, classify_on_host, read_maps, warm_up_refinement, ClassMerge, FullSizeLogits, GpuMerge, WindowSum, BAND_BYTES};
use crate::pamr::{Pamr, MAX_PAMR_DILATIONS, MAX_PAMR_ITERATIONS};
use crate::preprocess::{normalize, rescaled_size, resize_like_opencv};
use crate::prompts::Templates;
use crate::render::display_stride;
use crate::resample::Maps;
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

    /// Whether these settings can be run with any model; [`Segmenter::segment`]
    /// also checks the crop against the model's patch. The CLI calls this
    /// before it loads the weights, so a mistyped flag costs no model load.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let Self { short_side, long_side_cap, crop, stride, logit_scale, background_threshold, .. } = *self;
        if short_side == 0 || short_side > long_side_cap {
            return Err(SettingsError::ShortSide { short_side, long_side_cap });
        }
        if stride == 0 {
            return Err(SettingsError::ZeroStride);
        }
        if stride > crop {
            return Err(SettingsError::StrideAboveCrop { stride, crop });
        }
        if !(logit_scale.is_finite() && logit_scale > 0.0) {
            return Err(SettingsError::LogitScale(logit_scale));
        }
        if !(0.0..=1.0).contains(&background_threshold) {
            return Err(SettingsError::BackgroundThreshold(background_threshold));
        }
        self.last_block.validate()?;
        if let Some(pamr) = &self.pamr {
            pamr.validate()?;
        }
        Ok(())
    }
}

/// Images above this many pixels are refused: the probability maps are kept
/// at the original size (`classes x pixels` floats).
pub const MAX_IMAGE_PIXELS: u64 = 40_000_000;

/// PAMR keeps 8 affinities per pixel and dilation: it is refused above this.
pub const MAX_PAMR_PIXELS: u64 = 16_000_000;

/// `pixels` as megapixels for a message about a limit: one decimal, rounded
/// up, so that an image over a limit never reads as the limit itself
/// (6325 x 6325 = 40,005,625 pixels is "40.1", not "40.0").
fn megapixels(pixels: u64) -> String {
    format!("{:.1}", (pixels as f64 / 100_000.0).ceil() / 10.0)
}

/// "the image is WxH (N megapixels); the limit is L: downscale it first",
/// naming only the limits the size is over: [`MAX_IMAGE_PIXELS`] (then with
/// the image's own megapixels) and, where one is given, `max_side` pixels a
/// side. One sentence for the decoder's refusal and the pipeline's.
pub(crate) fn too_large_message(width: u32, height: u32, max_side: Option<u32>) -> String {
    let pixels = width as u64 * height as u64;
    let (mut size, mut limits) = (format!("{width}x{height}"), Vec::new());
    if pixels > MAX_IMAGE_PIXELS {
        size += &format!(" ({} megapixels)", megapixels(pixels));
        limits.push(format!("{} megapixels", MAX_IMAGE_PIXELS / 1_000_000));
    }
    if let Some(side) = max_side.filter(|&side| width.max(height) > side) {
        limits.push(format!("{side} px a side"));
    }
    format!("the image is {size}; the limit is {}: downscale it first", limits.join(" and "))
}

/// Settings that cannot be run. Each message names the one setting at
/// fault, for the CLI's flags and the page's controls alike.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error("the short side must be between 1 and the long-side cap of {long_side_cap} px, not {short_side}")]
    ShortSide { short_side: u32, long_side_cap: u32 },
    #[error("the crop must be at least the model's patch ({patch} px), not {crop}")]
    CropBelowPatch { crop: usize, patch: usize },
    #[error("the stride must be at least 1 px")]
    ZeroStride,
    #[error("a stride of {stride} px, larger than the crop of {crop} px, would leave pixels no window sees")]
    StrideAboveCrop { stride: usize, crop: usize },
    #[error("the logit scale must be a positive number, not {0}")]
    LogitScale(f32),
    #[error("the background threshold must be between 0 and 1, not {0}")]
    BackgroundThreshold(f32),
    #[error(transparent)]
    LastBlock(#[from] LastBlockError),
    #[error("PAMR needs 1 to {} positive dilations, not {:?}", MAX_PAMR_DILATIONS, .0)]
    PamrDilations(Vec<usize>),
    #[error("PAMR runs at most {} iterations, not {}", MAX_PAMR_ITERATIONS, .0)]
    PamrIterations(usize),
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("the image is {width}x{height}; it must be at least one patch ({patch} px) on each side")]
    TooSmall { width: u32, height: u32, patch: usize },
    /// Over [`MAX_IMAGE_PIXELS`].
    #[error("{}", too_large_message(*.width, *.height, None))]
    TooLarge { width: u32, height: u32 },
    #[error("PAMR is limited to {} megapixels; this image has {}: downscale it or turn PAMR off", MAX_PAMR_PIXELS / 1_000_000, megapixels(*.0))]
    PamrTooLarge(u64),
    /// One window's largest activation is more than the GPU holds in one
    /// buffer, and windows cannot be split further.
    #[error(
        "a window of {width}x{height} px is {tokens} tokens, whose attention scores would take {} MiB, more than the {} MiB this GPU holds in one buffer: use a smaller crop or short side",
        bytes.div_ceil(1 << 20),
        limit >> 20
    )]
    WindowTooLarge { width: usize, height: usize, tokens: usize, bytes: u64, limit: u64 },
    #[error(transparent)]
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

impl Timings {
    /// The request's time: text and image.
    pub fn total_ms(&self) -> f64 {
        self.text_ms + self.image_ms
    }
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
    /// Upsampling each window's logits, adding them up, averaging overlaps.
    pub window_merge_ms: f64,
    /// Resize to the original size, (PAMR,) softmax, synonym max, argmax.
    pub probabilities_ms: f64,
    /// Reading the label map and the probability maps back from the device.
    pub read_back_ms: f64,
}

/// Which probability maps a run reads back from the device (the label map
/// always comes back at full size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProbabilityMaps {
    /// Every pixel (the CLI's `probs.npy` and heatmaps).
    #[default]
    Full,
    /// Every `n`-th pixel in each direction, starting at the first.
    EveryNth(usize),
    /// As [`Self::EveryNth`] with [`display_stride`]: at most
    /// [`crate::render::DISPLAY_MAX_PIXELS`] pixels a class (the page).
    ForDisplay,
}

impl ProbabilityMaps {
    fn stride(self, width: u32, height: u32) -> usize {
        match self {
            Self::Full => 1,
            Self::EveryNth(n) => n.max(1),
            Self::ForDisplay => display_stride(width, height),
        }
    }
}

/// Result of one segmentation, at the original image size.
#[derive(Debug, Clone)]
pub struct Segmentation {
    pub width: u32,
    pub height: u32,
    /// Display name of each class.
    pub class_names: Vec<String>,
    /// `[classes, ceil(height / probs_stride), ceil(width / probs_stride)]`:
    /// softmax probabilities, max over synonyms, every `probs_stride`-th
    /// pixel of the full-size maps (`probs[:, ::s, ::s]`).
    pub probs: Vec<f32>,
    /// 1 for full-size maps; see [`ProbabilityMaps`].
    pub probs_stride: usize,
    /// `[height, width]`: class index per pixel (0 where below the threshold).
    pub labels: Vec<u8>,
    /// Size the model saw (after the resize), and the windows it ran.
    pub resized: (u32, u32),
    pub windows: usize,
    /// The batches the windows went through the encoder in ([`Batching`]).
    pub window_batches: usize,
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

    /// `(width, height)` of the probability maps.
    pub fn probs_size(&self) -> (u32, u32) {
        let stride = self.probs_stride.max(1) as u32;
        (self.width.div_ceil(stride), self.height.div_ceil(stride))
    }
}

/// A loaded model, its tokenizer and the class embeddings computed so far.
pub struct Segmenter {
    model: Clip,
    tokenizer: ClipTokenizer,
    text_cache: HashMap<(String, Templates), Vec<f32>>,
    window_cache: Option<WindowCache>,
    clock: Clock,
    phase_sync: bool,
    gpu_merge: GpuMerge,
    probability_maps: ProbabilityMaps,
    window_batching: Batching,
    name_batching: Batching,
    /// The most bytes one tensor may take on the model's device
    /// ([`max_tensor_bytes`]).
    max_tensor_bytes: Option<u64>,
}

/// The largest activation of a batch of windows or prompts, in bytes (the
/// attention scores, `[batch, heads, tokens, tokens]`, or the MLP's hidden
/// layer): WebGPU guarantees a storage binding of 128 MiB.
const BATCH_BYTES: usize = 128 << 20;

/// The warm-up's second request ([`Segmenter::warm_up`]): like a user's
/// first, several classes and one with a synonym (5 classes, 6 names).
pub const WARM_UP_CLASSES: &str = "a wall; the floor, the ground; a window; a door; the sky";

/// How many windows, or how many class names' prompts, go through an
/// encoder together ([`Segmenter::with_window_batching`],
/// [`Segmenter::with_name_batching`]).
///
/// By default windows go by [`Self::Memory`] everywhere, and names too on a
/// GPU; on the CPU backend names go one at a time. There a name's prompts
/// are encoded up to its own longest prompt rather than the batch's, and
/// nothing is gained from larger products, while more windows a batch make
/// fewer, larger parallel steps (`clearclip bench`, ViT-B/16-shaped weights,
/// 672x448, 5 names x 80 prompts, two rounds, warm medians: on 2 threads the
/// image phase 1628 / 1647 ms with the 2 windows in one batch against 1750 /
/// 1741 ms one by one, text 2055 / 2080 ms with the names in one batch
/// against 2146 / 1929 ms; on 1 thread image 3318 / 3213 against 3360 /
/// 3240 ms, text 4019 / 3956 against 3737 / 3772 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// As many as keep the largest activation under [`BATCH_BYTES`].
    Memory,
    /// At most `n` windows or `n` names in a batch. A host that must be able
    /// to cancel between windows on a slow device (the page's CPU fallback)
    /// asks for 1.
    AtMost(usize),
}

impl Batching {
    /// `memory`, or the count.
    pub fn name(self) -> String {
        match self {
            Batching::Memory => "memory".to_string(),
            Batching::AtMost(n) => n.to_string(),
        }
    }

    fn at_least_one(self) -> Self {
        match self {
            Batching::AtMost(n) => Batching::AtMost(n.max(1)),
            memory => memory,
        }
    }

    /// [`Self::name`]'s inverse; a count must be at least 1.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "memory" => Some(Batching::Memory),
            count => count.parse().ok().filter(|&n| n >= 1).map(Batching::AtMost),
        }
    }
}

/// Everything of the last run that does not depend on the last block.
struct WindowCache {
    image: RgbImage,
    geometry: Geometry,
    /// The resized, normalised image, `[3, height, width]`.
    pixels: Maps,
    /// The windows of each batch, and the output of its first `L-1` blocks on the device.
    batches: Vec<(std::ops::Range<usize>, LastBlockInput)>,
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
    /// Consecutive windows of one shape, encoded together.
    batches: Vec<std::ops::Range<usize>>,
    reused: Option<Vec<LastBlockInput>>,
}

pub(crate) fn device_error(e: impl std::fmt::Debug) -> SegmentError {
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
        let name_batching = if is_host(&model.vision.device()) { Batching::AtMost(1) } else { Batching::Memory };
        let max_tensor_bytes = max_tensor_bytes(&model.vision.device());
        Self {
            model,
            tokenizer,
            text_cache: HashMap::new(),
            window_cache: None,
            clock: instant_clock,
            phase_sync: false,
            gpu_merge: GpuMerge::Kernels,
            probability_maps: ProbabilityMaps::Full,
            window_batching: Batching::Memory,
            name_batching,
            max_tensor_bytes,
        }
    }

    /// The most bytes one tensor may take on the model's device, where
    /// there is such a limit (a GPU): windows whose attention would need more
    /// are refused ([`SegmentError::WindowTooLarge`]).
    pub fn max_tensor_bytes(&self) -> Option<u64> {
        self.max_tensor_bytes
    }

    /// Which probability maps the results carry (full size by default).
    pub fn with_probability_maps(mut self, maps: ProbabilityMaps) -> Self {
        self.probability_maps = maps;
        self
    }

    /// Which probability maps the next results carry, for a caller that
    /// wants both kinds from one model (the bench's re-runs).
    pub fn set_probability_maps(&mut self, maps: ProbabilityMaps) {
        self.probability_maps = maps;
    }

    /// How windows are batched.
    pub fn window_batching(&self) -> Batching {
        self.window_batching
    }

    /// How class names are batched.
    pub fn name_batching(&self) -> Batching {
        self.name_batching
    }

    /// How windows are batched (see [`Batching`] for the default).
    pub fn with_window_batching(mut self, batching: Batching) -> Self {
        self.window_batching = batching.at_least_one();
        self
    }

    /// How class names are batched (see [`Batching`] for the default).
    pub fn with_name_batching(mut self, batching: Batching) -> Self {
        self.name_batching = batching.at_least_one();
        self
    }

    /// How a GPU makes the window merge and the class maps (one kernel each
    /// by default; burn's tensor operations to compare against).
    pub fn with_gpu_merge(mut self, gpu_merge: GpuMerge) -> Self {
        self.gpu_merge = gpu_merge;
        self
    }

    /// Wait for the device after each phase of the image, so that
    /// [`ImagePhases`] says where the device's time went (for benchmarks;
    /// costs a round trip per window). Native only: a browser cannot block.
    pub fn with_phase_sync(mut self, sync: bool) -> Self {
        self.set_phase_sync(sync);
        self
    }

    /// As [`Self::with_phase_sync`], between runs.
    pub fn set_phase_sync(&mut self, sync: bool) {
        self.phase_sync = sync;
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
    /// Names not cached yet are encoded together, as many prompts per batch
    /// as [`Batching`] allows. Returns them with how many names had to be encoded.
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
            if !self.text_cache.contains_key(&key) {
                let batch = self.uncached_names_batch(&names[done..], templates)?;
                let embeddings = self.encode_classes(&batch, templates, warnings).await?;
                encoded += batch.len();
                for ((name, _), embedding) in batch.iter().zip(embeddings) {
                    self.text_cache.insert((name.to_string(), templates), embedding);
                }
            }
            out.extend_from_slice(&self.text_cache[&key]);
            step(observer, Progress::Text { done: done + 1, total }).await?;
        }
        Ok((out, encoded))
    }

    /// The first of `names` (not cached) and the following names not cached,
    /// as many as fit one text batch: at most [`BATCH_BYTES`] in the largest
    /// activation (`[prompts, tokens, mlp_width]` or the attention scores).
    /// Each comes with its prompts' tokens.
    fn uncached_names_batch<'n>(&self, names: &[&'n str], templates: Templates) -> Result<Vec<(&'n str, TokenBatch)>, SegmentError> {
        let text = &self.model.config.text;
        let mut batch: Vec<(&str, TokenBatch)> = Vec::new();
        let (mut rows, mut len) = (0, 0);
        for &name in names {
            if batch.iter().any(|(n, _)| *n == name) || self.text_cache.contains_key(&(name.to_string(), templates)) {
                continue;
            }
            if let Batching::AtMost(n) = self.name_batching {
                if batch.len() >= n {
                    break;
                }
            }
            let tokens = self.tokenizer.encode_batch(&templates.prompts(name))?;
            (rows, len) = (rows + tokens.rows(), len.max(tokens.len));
            let fits = 4 * rows * len * text.mlp_width.max(text.heads * len) <= BATCH_BYTES;
            if self.name_batching == Batching::Memory && !fits && !batch.is_empty() {
                break;
            }
            batch.push((name, tokens));
        }
        Ok(batch)
    }

    /// The class embeddings of the names of `batch`, all their prompts in one batch.
    async fn encode_classes(&self, batch: &[(&str, TokenBatch)], templates: Templates, warnings: &mut Vec<String>) -> Result<Vec<Vec<f32>>, SegmentError> {
        let per_name = templates.list().len();
        for (name, tokens) in batch {
            if tokens.truncated.iter().any(|&t| t) {
                warnings.push(format!("\"{name}\" is too long: its prompts were cut to {} tokens", self.tokenizer.context_length()));
            }
        }
        let tokens = TokenBatch::concat(batch.iter().map(|(_, tokens)| tokens));
        let features = read_back(self.model.text.encode(&tokens)?).await?;
        // clearclip_segmentor.py: feature /= norm; feature.mean(0); feature /= norm
        let dim = self.embed_dim();
        let embeddings = features
            .chunks_exact(per_name * dim)
            .map(|rows| {
                let mut mean = vec![0.0f32; dim];
                for row in rows.chunks_exact(dim) {
                    let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                    for (m, x) in mean.iter_mut().zip(row) {
                        *m += x / norm;
                    }
                }
                mean.iter_mut().for_each(|m| *m /= per_name as f32);
                l2_normalize(&mut mean);
                mean
            })
            .collect();
        Ok(embeddings)
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
        validate(width, height, &self.model.config.vision, self.max_tensor_bytes, params)?;
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
        let (window_count, window_batches) = (prepared.windows.len(), prepared.batches.len());
        let (averaged, inputs) = self.merged_window_logits(&prepared, &queries, &params.last_block, observer, &mut phases).await?;

        let merging = (self.clock)();
        let size = (height as usize, width as usize);
        let merge = ClassMerge::new(&class_of_query, classes.len(), params);
        let probs_stride = self.probability_maps.stride(width, height);
        let device = self.model.vision.device();
        // NACLIP.predict: logits and the network input resized to the original size, then PAMR.
        let (maps, classified) = if is_host(&device) {
            let mut logits = read_maps(averaged).await?;
            if let Some(pamr) = &params.pamr {
                logits = logits.resized(size);
                pamr.refine(&prepared.pixels.resized(size), &mut logits);
            }
            let maps = classify_on_host(&logits, size, &merge, probs_stride);
            (maps, (self.clock)())
        } else {
            let logits = match &params.pamr {
                None => FullSizeLogits::Resize(averaged),
                Some(pamr) => FullSizeLogits::Refined { averaged, guide: self.upload(&prepared.pixels), pamr },
            };
            let pending = classify(logits, size, &merge, probs_stride, BAND_BYTES, self.gpu_merge);
            let classified = self.phase_end()?;
            (pending.read().await?, classified)
        };
        let done = (self.clock)();
        phases.probabilities_ms = classified - merging;
        phases.read_back_ms = done - classified;

        let (rh, rw) = prepared.pixels.size();
        self.window_cache = Some(WindowCache { image: image.clone(), geometry, pixels: prepared.pixels, batches: prepared.batches.into_iter().zip(inputs).collect() });
        Ok(Segmentation {
            width,
            height,
            class_names: classes.classes.iter().map(|c| c.display_name().to_string()).collect(),
            probs: maps.probs,
            probs_stride,
            labels: maps.labels,
            resized: (rw as u32, rh as u32),
            windows: window_count,
            window_batches,
            reused_windows,
            timings: Timings { text_ms: text_done - started, image_ms: done - text_done, classes_encoded, image: phases },
            warnings,
        })
    }

    /// Run the pipeline on a blank image that gives two windows of `params`'
    /// crop, so that a GPU compiles its kernels at load rather than in the
    /// user's first request: once on one class name (all blocks), then again
    /// on [`WARM_UP_CLASSES`] (the last block only), and on a GPU once more
    /// with each other [`DenseMode`]'s last block, for the page's mode
    /// switches, a batch of one window (a square photo's), and PAMR's step on
    /// a small image, for its switch. A GPU compiles a kernel
    /// for each vector width, bounds check and order of work groups, which
    /// follow the shapes: the two passes cover the shapes of one name's
    /// prompts and of several names', and of one class and of several with a
    /// synonym. The caches are left as they were. Returns the milliseconds it took.
    pub async fn warm_up(&mut self, params: &SegmentParams) -> Result<f64, SegmentError> {
        let started = (self.clock)();
        let text_cache = std::mem::take(&mut self.text_cache);
        let window_cache = self.window_cache.take();
        let side = params.short_side.max(self.model.config.vision.patch_size as u32);
        let blank = RgbImage::from_pixel(side + side / 2, side, image::Rgb([128, 128, 128]));
        let on_gpu = !is_host(&self.model.vision.device());
        let result = async {
            for spec in ["a blank image", WARM_UP_CLASSES] {
                let (classes, _) = ClassList::parse(spec).map_err(|e| SegmentError::Device(e.to_string()))?;
                self.segment(&blank, &classes, params, &mut |_: Progress| {}).await?;
                // A mode switch runs the last block only, with kernels of its
                // own (attention kinds, NACLIP's bias, vanilla's residual and
                // FFN): every named mode's, on the blank's kept first blocks.
                if on_gpu && spec == WARM_UP_CLASSES {
                    for mode in DenseMode::ALL.into_iter().filter(|mode| mode.last_block() != params.last_block) {
                        let params = SegmentParams { last_block: mode.last_block(), ..params.clone() };
                        self.segment(&blank, &classes, &params, &mut |_: Progress| {}).await?;
                    }
                }
            }
            if on_gpu {
                self.warm_up_one_window(params).await?;
                // PAMR's kernels, for the page's PAMR switch (a request with
                // PAMR has compiled them above). PAMR is optional: where its
                // step fails, the model still loads, and a request with PAMR
                // says why.
                if params.pamr.is_none() && self.gpu_merge == GpuMerge::Kernels {
                    let _ = warm_up_refinement(&self.model.vision.device(), self.gpu_merge).await;
                }
            }
            Ok::<_, SegmentError>(())
        }
        .await;
        self.text_cache = text_cache;
        self.window_cache = window_cache;
        result?;
        Ok((self.clock)() - started)
    }

    /// A batch of one window through the encoder's embedding and first
    /// block: the variants of the encoder's kernels that a batch of one takes
    /// (the class token's slice-assign sizes its work groups by the batch,
    /// the positional add broadcasts only above one, the attention's copies
    /// size their work per unit by theirs). The warm-up's blank image has two
    /// windows, so without this a square photo (one window), or the last batch
    /// of a wide one, compiled four kernels in the user's request. The other
    /// blocks and every mode's last block run the same kernels at this batch
    /// size (counted with `scripts/kernel_misses.py`), so one block stands for
    /// them.
    async fn warm_up_one_window(&self, params: &SegmentParams) -> Result<(), SegmentError> {
        let device = self.model.vision.device();
        let patch = self.model.config.vision.patch_size;
        let side = params.crop.div_ceil(patch) * patch;
        let tokens = self.model.vision.warm_up_first_block(Tensor::zeros([1, 3, side, side], &device))?;
        tokens.into_data_async().await.map_err(device_error)?;
        Ok(())
    }

    /// `maps` on the model's device.
    ///
    /// # Shapes
    /// - `maps`: `[channels, height, width]` -> the same
    fn upload(&self, maps: &Maps) -> Tensor<3> {
        let (height, width) = maps.size();
        Tensor::from_data(TensorData::new(maps.as_slice().to_vec(), [maps.channels(), height, width]), &self.model.vision.device())
    }

    /// The class embeddings on the device, the left-hand side of
    /// `queries @ features^T`.
    ///
    /// # Shapes
    /// - `embeddings`: `[count, embed_dim]` row-major; returns the same
    fn queries(&self, embeddings: Vec<f32>, count: usize) -> Tensor<2> {
        Tensor::from_data(TensorData::new(embeddings, [count, self.embed_dim()]), &self.model.vision.device())
    }

    /// Resize, normalise and cut the image into windows, or take all of it
    /// (with the first blocks' output) from the previous run on the same
    /// image, geometry and batches. The cache is taken out: a run that fails half-way drops it.
    fn prepare(&mut self, image: &RgbImage, geometry: Geometry) -> PreparedImage {
        let (width, height) = image.dimensions();
        let (rw, rh) = rescaled_size(width, height, geometry.short_side, geometry.long_side_cap);
        let patch = self.model.config.vision.patch_size;
        let windows = sliding_windows(rw as usize, rh as usize, geometry.crop, geometry.stride, patch);
        let batches = self.window_batches(&windows);
        let cached = self.window_cache.take().filter(|c| {
            c.geometry == geometry && c.image == *image && c.batches.iter().map(|(b, _)| b).eq(batches.iter())
        });
        match cached {
            Some(c) => PreparedImage { pixels: c.pixels, windows, batches, reused: Some(c.batches.into_iter().map(|(_, input)| input).collect()) },
            None => {
                let resized = if (rw, rh) == (width, height) { image.clone() } else { resize_like_opencv(image, rw, rh) };
                PreparedImage { pixels: normalize(&resized), windows, batches, reused: None }
            }
        }
    }

    /// Runs of consecutive windows of one shape (in practice all of them
    /// share it), each at most as long as the batch limit.
    fn window_batches(&self, windows: &[Window]) -> Vec<std::ops::Range<usize>> {
        let shape = |w: &Window| (w.padded_height(), w.padded_width(), w.pad_top, w.pad_left);
        let mut batches: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            match batches.last_mut() {
                Some(b) if b.len() < self.windows_per_batch(w) && shape(&windows[b.start]) == shape(w) => b.end = i + 1,
                _ => batches.push(i..i + 1),
            }
        }
        batches
    }

    /// How many windows like `window` go through the encoder together.
    fn windows_per_batch(&self, window: &Window) -> usize {
        match self.window_batching {
            Batching::AtMost(n) => n,
            Batching::Memory => (BATCH_BYTES as u64 / largest_window_activation(&self.model.config.vision, window).1).max(1) as usize,
        }
    }

    /// The window logits averaged over the resized image, on the device, and
    /// the first `L-1` blocks' output of every batch (reused, or computed).
    ///
    /// # Shapes
    /// - `queries`: `[queries, embed_dim]`
    /// - returns `[queries, height, width]` at the resized image's size
    async fn merged_window_logits(
        &self,
        image: &PreparedImage,
        queries: &Tensor<2>,
        last_block: &LastBlock,
        observer: &mut dyn Observer,
        phases: &mut ImagePhases,
    ) -> Result<(Tensor<3>, Vec<LastBlockInput>), SegmentError> {
        let total = image.windows.len();
        let mut reused = image.reused.clone().map(Vec::into_iter);
        let mut inputs = Vec::with_capacity(image.batches.len());
        // Marks the end of the text phase for callers timing the two phases.
        step(observer, Progress::Window { done: 0, total }).await?;
        let patch = self.model.config.vision.patch_size;
        let mut sum = WindowSum::new(queries.dims()[0], image.pixels.size(), patch, &self.model.vision.device(), self.gpu_merge);
        for batch in &image.batches {
            let windows = &image.windows[batch.clone()];
            let started = (self.clock)();
            let input = match reused.as_mut().and_then(Iterator::next) {
                Some(input) => input,
                None => self.encode_windows(&image.pixels, windows)?,
            };
            let encoded = self.phase_end()?;
            let scores = self.window_scores(&input, queries, last_block);
            let scored = self.phase_end()?;
            sum.add(scores, windows);
            inputs.push(input);
            let merged = self.phase_end()?;
            phases.encoder_ms += encoded - started;
            phases.last_block_ms += scored - encoded;
            phases.window_merge_ms += merged - scored;
            step(observer, Progress::Window { done: batch.end, total }).await?;
        }
        Ok((sum.average(), inputs))
    }

    /// The first `L-1` blocks on zero-padded windows of one shape, as one batch.
    fn encode_windows(&self, pixels: &Maps, windows: &[Window]) -> Result<LastBlockInput, SegmentError> {
        let (ph, pw) = (windows[0].padded_height(), windows[0].padded_width());
        let crops: Vec<f32> = windows.iter().flat_map(|w| crop_padded(pixels, w)).collect();
        let crops: Tensor<4> = Tensor::from_data(TensorData::new(crops, [windows.len(), 3, ph, pw]), &self.model.vision.device());
        Ok(self.model.vision.encode_to_last_block(crops)?)
    }

    /// The last block on a batch of windows, then the cosine similarity of
    /// every patch with every query. The queries are the product's rows, so
    /// its GPU kernels are the same whatever their number (the columns'
    /// count sets the vector width).
    ///
    /// # Shapes
    /// - `queries`: `[queries, embed_dim]`
    /// - returns `[queries, windows * patches]` on the device
    fn window_scores(&self, input: &LastBlockInput, queries: &Tensor<2>, last_block: &LastBlock) -> Tensor<2> {
        let features = self.model.vision.dense_from_last_block(input, last_block);
        let [batch, n, dim] = features.dims();
        let features = features.reshape([batch * n, dim]);
        let norm = features.clone().square().sum_dim(1).sqrt();
        matmul(ProductKind::Projection, queries.clone(), (features / norm).transpose())
    }
}

/// The tokens of one window (its patches and the class token) and the
/// bytes of its largest activation as f32: the attention scores (`heads x
/// tokens x tokens`) or the MLP's hidden layer.
fn largest_window_activation(vision: &VisionConfig, window: &Window) -> (usize, u64) {
    let tokens = 1 + (window.padded_height() / vision.patch_size) * (window.padded_width() / vision.patch_size);
    (tokens, 4 * tokens as u64 * (vision.heads * tokens).max(vision.mlp_width).max(1) as u64)
}

/// The most bytes one tensor may take on `device`: cubecl's largest
/// allocation there, which is the smaller of the device's
/// `maxStorageBufferBindingSize` and `maxBufferSize` on WebGPU. `None` on
/// the CPU backend, and in builds whose GPU tensors are not cubecl's (kernel
/// fusion): no limit is checked there.
fn max_tensor_bytes(device: &burn::tensor::Device) -> Option<u64> {
    if is_host(device) {
        return None;
    }
    #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
    return Tensor::<1>::zeros([1], device)
        .try_into_primitive::<burn_cubecl::CubeBackend>()
        .ok()
        .map(|t| t.client.properties().memory.max_page_size);
    #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
    None
}

/// Refuses what cannot run before any work: bad settings, an image too
/// small or too large, and windows too large for one of the GPU's buffers
/// (`max_tensor_bytes`), which batching cannot split.
fn validate(width: u32, height: u32, vision: &VisionConfig, max_tensor_bytes: Option<u64>, params: &SegmentParams) -> Result<(), SegmentError> {
    let patch = vision.patch_size;
    params.validate()?;
    if params.crop < patch {
        return Err(SettingsError::CropBelowPatch { crop: params.crop, patch }.into());
    }
    if (width as usize) < patch || (height as usize) < patch {
        return Err(SegmentError::TooSmall { width, height, patch });
    }
    if width as u64 * height as u64 > MAX_IMAGE_PIXELS {
        return Err(SegmentError::TooLarge { width, height });
    }
    if params.pamr.is_some() && width as u64 * height as u64 > MAX_PAMR_PIXELS {
        return Err(SegmentError::PamrTooLarge(width as u64 * height as u64));
    }
    if let Some(limit) = max_tensor_bytes {
        // Every window has the size of the first (the last ones are flush
        // with the border), whatever the stride.
        let (rw, rh) = rescaled_size(width, height, params.short_side, params.long_side_cap);
        if let Some(window) = sliding_windows(rw as usize, rh as usize, params.crop, params.crop, patch).first() {
            let (tokens, bytes) = largest_window_activation(vision, window);
            if bytes > limit {
                return Err(SegmentError::WindowTooLarge { width: window.width, height: window.height, tokens, bytes, limit });
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_run_are_refused_naming_the_setting() {
        let ok = SegmentParams::default();
        assert_eq!(ok.validate(), Ok(()));
        let refused = |params: SegmentParams| params.validate().unwrap_err();
        assert_eq!(refused(SegmentParams { short_side: 0, ..ok.clone() }), SettingsError::ShortSide { short_side: 0, long_side_cap: 2048 });
        assert_eq!(refused(SegmentParams { short_side: 2049, ..ok.clone() }), SettingsError::ShortSide { short_side: 2049, long_side_cap: 2048 });
        assert_eq!(refused(SegmentParams { stride: 0, ..ok.clone() }), SettingsError::ZeroStride);
        assert_eq!(refused(SegmentParams { stride: 449, ..ok.clone() }), SettingsError::StrideAboveCrop { stride: 449, crop: 448 });
        assert_eq!(SegmentParams { stride: 448, ..ok.clone() }.validate(), Ok(()));
        for scale in [0.0, -1.0, f32::INFINITY] {
            assert_eq!(refused(SegmentParams { logit_scale: scale, ..ok.clone() }), SettingsError::LogitScale(scale));
        }
        assert!(matches!(refused(SegmentParams { logit_scale: f32::NAN, ..ok.clone() }), SettingsError::LogitScale(s) if s.is_nan()));
        for threshold in [-0.01, 1.01] {
            assert_eq!(refused(SegmentParams { background_threshold: threshold, ..ok.clone() }), SettingsError::BackgroundThreshold(threshold));
        }
        assert!(matches!(refused(SegmentParams { background_threshold: f32::NAN, ..ok.clone() }), SettingsError::BackgroundThreshold(t) if t.is_nan()));
        assert_eq!(SegmentParams { background_threshold: 1.0, ..ok.clone() }.validate(), Ok(()));
        let residual = LastBlock { residual: clearclip_model::Residual::Keep { attention_scale: f32::NAN }, ..ok.last_block };
        assert!(matches!(refused(SegmentParams { last_block: residual, ..ok.clone() }), SettingsError::LastBlock(_)));
        let pamr = Pamr { dilations: vec![8, 0], ..Pamr::default() };
        assert_eq!(refused(SegmentParams { pamr: Some(pamr), ..ok.clone() }), SettingsError::PamrDilations(vec![8, 0]));
        let pamr = Pamr { dilations: vec![1; MAX_PAMR_DILATIONS + 1], ..Pamr::default() };
        assert!(matches!(refused(SegmentParams { pamr: Some(pamr), ..ok.clone() }), SettingsError::PamrDilations(_)));
        let pamr = Pamr { iterations: MAX_PAMR_ITERATIONS + 1, ..Pamr::default() };
        assert_eq!(refused(SegmentParams { pamr: Some(pamr), ..ok.clone() }), SettingsError::PamrIterations(MAX_PAMR_ITERATIONS + 1));
        let pamr = Pamr { iterations: MAX_PAMR_ITERATIONS, dilations: vec![1; MAX_PAMR_DILATIONS] };
        assert_eq!(SegmentParams { pamr: Some(pamr), ..ok }.validate(), Ok(()));
    }

    #[test]
    fn a_settings_error_reads_as_one_message() {
        // What a reporter prints (anyhow's `{:#}`): the error, then each source.
        let chain = |err: &dyn std::error::Error| {
            let mut parts = vec![err.to_string()];
            let mut source = err.source();
            while let Some(e) = source {
                parts.push(e.to_string());
                source = e.source();
            }
            parts.join(": ")
        };
        let err = SegmentError::from(SettingsError::StrideAboveCrop { stride: 500, crop: 448 });
        assert_eq!(chain(&err), "a stride of 500 px, larger than the crop of 448 px, would leave pixels no window sees");
        let err = SegmentError::from(SettingsError::from(LastBlockError::ResidualScale(f32::NAN)));
        assert_eq!(chain(&err), "the residual scale must be a finite number, not NaN");
    }
}
