//! The segmenter for the browser: glue only. Everything it does is
//! [`clearclip_segment::Segmenter`] (the same pipeline as the CLI) on burn's
//! WebGPU backend, or burn's CPU backend where WebGPU is missing.
//!
//! The worker (`web/worker.js`) owns one [`WebSegmenter`]: it streams the
//! weights chunk by chunk into a [`WeightsLoader`] (which uploads each tensor
//! as soon as its bytes are in, so the file is never held whole), creates the
//! segmenter from it, then calls [`WebSegmenter::segment`] with an image file
//! decoded here ([`DecodedImage`]), as the CLI decodes it: the page never
//! resizes or re-encodes the photo, so both give the same answer.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use clearclip_model::{Activation, CheckpointLoader, AttentionKind, ClipTokenizer, DenseMode, LastBlock, LoadOptions, Residual};
use clearclip_segment::{decode_image, render, ClassList, Pamr, Preset, Progress, SegmentParams, Segmentation, Segmenter, Templates, PRESETS};
use image::{GrayImage, RgbImage};
use js_sys::{Array, Float32Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn set(target: &Object, key: &str, value: impl Into<JsValue>) {
    Reflect::set(target, &JsValue::from_str(key), &value.into()).expect("setting a property of a plain object");
}

fn get(source: &JsValue, key: &str) -> JsValue {
    Reflect::get(source, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// A number field; `null`/`undefined` is `None`, anything else not a number an error.
fn get_number(source: &JsValue, key: &str) -> Result<Option<f64>, JsError> {
    let value = get(source, key);
    if value.is_null() || value.is_undefined() {
        return Ok(None);
    }
    value.as_f64().map(Some).ok_or_else(|| JsError::new(&format!("option {key} must be a number")))
}

/// The settings of one segmentation, from the page's request object:
/// `{threshold, mode, singleTemplate, pamr, crop?, stride?, attention?,
/// neighbourhoodStd?, residualAlpha?, ffn?}`. The last-block fields override
/// the mode's own when present (`residualAlpha: null` keeps the mode's,
/// `residualAlpha: "none"` drops the residual, `neighbourhoodStd: 0` turns the bias off).
fn segment_params(options: &JsValue) -> Result<SegmentParams, JsError> {
    let mode_name = get(options, "mode").as_string().unwrap_or_else(|| "clearclip".into());
    let mode = DenseMode::from_name(&mode_name).ok_or_else(|| JsError::new(&format!("unknown mode {mode_name}")))?;
    let mut block: LastBlock = mode.last_block();
    if let Some(name) = get(options, "attention").as_string() {
        block.attention = AttentionKind::from_name(&name).ok_or_else(|| JsError::new(&format!("unknown attention {name}")))?;
    }
    if let Some(std) = get_number(options, "neighbourhoodStd")? {
        block.neighbourhood_std = (std > 0.0).then_some(std as f32);
    }
    let alpha = get(options, "residualAlpha");
    if alpha.as_string().is_some_and(|a| a == "none") {
        block.residual = Residual::Skip;
    } else if let Some(alpha) = get_number(options, "residualAlpha")? {
        block.residual = Residual::Keep { attention_scale: alpha as f32 };
    }
    if let Some(ffn) = get(options, "ffn").as_bool() {
        block.ffn = ffn;
    }
    let mut params = SegmentParams {
        background_threshold: get_number(options, "threshold")?.unwrap_or(0.0) as f32,
        last_block: block,
        templates: if get(options, "singleTemplate").is_truthy() { Templates::Single } else { Templates::OpenAiImageNet },
        pamr: get(options, "pamr").is_truthy().then(Pamr::default),
        ..SegmentParams::default()
    };
    if let Some(crop) = get_number(options, "crop")? {
        params.crop = crop as usize;
    }
    if let Some(stride) = get_number(options, "stride")? {
        params.stride = stride as usize;
    }
    Ok(params)
}

/// The dataset presets for the page: `[{id, title, labels, threshold, crop, stride}]`.
#[wasm_bindgen]
pub fn presets() -> Array {
    PRESETS
        .iter()
        .map(|p: &Preset| {
            let o = Object::new();
            set(&o, "id", p.id);
            set(&o, "title", p.title);
            set(&o, "labels", p.labels());
            set(&o, "threshold", p.background_threshold);
            set(&o, "crop", p.crop as u32);
            set(&o, "stride", p.stride as u32);
            JsValue::from(o)
        })
        .collect()
}

/// The last block of each named mode, as the page's knobs spell it:
/// `{mode: {attention, neighbourhoodStd, residualAlpha, ffn}}`.
#[wasm_bindgen]
pub fn mode_blocks() -> Object {
    let out = Object::new();
    for mode in DenseMode::ALL {
        let b = mode.last_block();
        let o = Object::new();
        set(&o, "attention", b.attention.name());
        set(&o, "neighbourhoodStd", b.neighbourhood_std.unwrap_or(0.0));
        match b.residual {
            Residual::Skip => set(&o, "residualAlpha", "none"),
            Residual::Keep { attention_scale } => set(&o, "residualAlpha", attention_scale),
        }
        set(&o, "ffn", b.ffn);
        set(&out, mode.name(), o);
    }
    out
}

/// Which backend the model runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    WebGpu,
    Cpu,
}

/// The last result the page shows: the image, the full-size labels (exports)
/// and the maps sampled for display (heatmaps).
struct LastResult {
    image: Rc<RgbImage>,
    full: Segmentation,
    display: Segmentation,
}

struct State {
    segmenter: Segmenter,
    last: Option<LastResult>,
}

/// An image file decoded as the CLI decodes it ([`decode_image`]: JPEG as
/// libjpeg-turbo/OpenCV, EXIF orientation applied), at its full size.
#[wasm_bindgen]
pub struct DecodedImage {
    image: Rc<RgbImage>,
}

#[wasm_bindgen]
impl DecodedImage {
    /// Decodes the bytes of an image file; throws a readable message for
    /// files that are not images, corrupt, truncated or too large.
    pub fn decode(bytes: &[u8]) -> Result<DecodedImage, JsError> {
        let image = decode_image(bytes).map_err(|e| JsError::new(&e.to_string()))?;
        Ok(DecodedImage { image: Rc::new(image) })
    }

    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.image.width()
    }

    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.image.height()
    }
}

#[wasm_bindgen]
pub struct WebSegmenter {
    state: Rc<RefCell<State>>,
    backend: Backend,
    description: String,
}

/// WebGPU device, initialised once per page (a second init fails).
async fn webgpu_device() -> Result<Device, String> {
    thread_local! {
        static DEVICE: RefCell<Option<Device>> = const { RefCell::new(None) };
    }
    if let Some(device) = DEVICE.with(|d| d.borrow().clone()) {
        return Ok(device);
    }
    let device = init_webgpu().await?;
    DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    Ok(device)
}

#[cfg(target_arch = "wasm32")]
async fn init_webgpu() -> Result<Device, String> {
    Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
        .init_async()
        .await
        .map_err(|e| format!("{e:?}"))
}

#[cfg(not(target_arch = "wasm32"))]
async fn init_webgpu() -> Result<Device, String> {
    Err("WebGPU exists only in the browser".to_string())
}

/// Receives the weights file chunk by chunk while it downloads (or a dropped
/// file is read), on the device chosen up front: the header is checked as soon
/// as it is in (a file that is not CLIP fails on its first chunk), and each
/// tensor is converted and uploaded the moment its last byte arrives. Neither
/// JS nor wasm memory ever holds the whole file.
#[wasm_bindgen]
pub struct WeightsLoader {
    loader: CheckpointLoader,
    backend: Backend,
    note: String,
}

#[wasm_bindgen]
impl WeightsLoader {
    /// `prefer_gpu` tries WebGPU first; if it fails (no adapter) the CPU
    /// backend is used and the segmenter's `backend()` says so.
    pub async fn create(prefer_gpu: bool, gelu: bool) -> WeightsLoader {
        let (device, backend, note) = if prefer_gpu {
            match webgpu_device().await {
                Ok(device) => (device, Backend::WebGpu, String::new()),
                Err(e) => (Device::flex(), Backend::Cpu, format!(" (WebGPU failed: {e})")),
            }
        } else {
            (Device::flex(), Backend::Cpu, String::new())
        };
        let activation = if gelu { Activation::Gelu } else { Activation::QuickGelu };
        WeightsLoader { loader: CheckpointLoader::new(LoadOptions { activation }, &device), backend, note }
    }

    /// The next chunk of the file (copied out of the JS array, converted and
    /// uploaded as tensors complete). Throws if the file is refused; then
    /// the download should stop.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsError> {
        self.loader.push(chunk).map_err(|e| JsError::new(&e.to_string()))
    }

    /// The file size the header announces, once the header is in.
    #[wasm_bindgen(js_name = expectedBytes)]
    pub fn expected_bytes(&self) -> Option<f64> {
        self.loader.expected_len().map(|n| n as f64)
    }
}

#[wasm_bindgen]
impl WebSegmenter {
    /// The segmenter over the model `weights` received completely.
    pub fn create(weights: WeightsLoader, tokenizer_json: &[u8]) -> Result<WebSegmenter, JsError> {
        let WeightsLoader { loader, backend, note } = weights;
        let model = loader.finish().map_err(|e| JsError::new(&e.to_string()))?;
        let tokenizer = ClipTokenizer::from_json_bytes(tokenizer_json, model.config.text.context_length)
            .map_err(|e| JsError::new(&e.to_string()))?;
        let description = format!("{} [{:?} layout]{note}", model.config.describe(), model.layout);
        Ok(WebSegmenter {
            state: Rc::new(RefCell::new(State { segmenter: Segmenter::new(model, tokenizer), last: None })),
            backend,
            description,
        })
    }

    /// `"webgpu"` or `"cpu"`.
    pub fn backend(&self) -> String {
        match self.backend {
            Backend::WebGpu => "webgpu".into(),
            Backend::Cpu => "cpu".into(),
        }
    }

    pub fn description(&self) -> String {
        self.description.clone()
    }

    /// Segment `image` with the settings in `options` (see
    /// [`segment_params`]; `labels` is a field too, and `keep: false` makes
    /// it a side run that does not replace the last result). `progress(phase,
    /// done, total)` is called as text and windows complete. Resolves to
    /// `{width, height, classNames, colors, labels: Uint8Array [H*W],
    /// labelColors: Uint8Array [H*W*4], probs: Float32Array [C*h*w],
    /// probsStride, probsWidth, probsHeight, shares, warnings, textMs,
    /// imageMs, windows, resized, reusedWindows, lastBlock}`. Labels are at
    /// full size; `probs` holds every `probsStride`-th pixel of the full-size
    /// maps in each direction (1 up to [`render::DISPLAY_MAX_PIXELS`]).
    pub fn segment(&self, image: &DecodedImage, options: JsValue, progress: Function) -> js_sys::Promise {
        let state = self.state.clone();
        let image = image.image.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let labels = get(&options, "labels").as_string().unwrap_or_default();
            let (classes, mut warnings) = ClassList::parse(&labels).map_err(|e| JsError::new(&e.to_string()))?;
            let params = segment_params(&options)?;
            let started = js_sys::Date::now();
            let mut text_done = None;
            let mut report = |p: Progress| {
                let (phase, done, total) = match p {
                    Progress::Text { done, total } => ("text", done, total),
                    Progress::Window { done, total } => {
                        text_done.get_or_insert_with(js_sys::Date::now);
                        ("image", done, total)
                    }
                };
                let _ = progress.call3(&JsValue::NULL, &phase.into(), &(done as u32).into(), &(total as u32).into());
            };
            let mut guard = state.borrow_mut();
            let mut seg = guard.segmenter.segment(&image, &classes, &params, &mut report).await.map_err(|e| JsError::new(&e.to_string()))?;
            let finished = js_sys::Date::now();
            let text_done = text_done.unwrap_or(finished);
            warnings.extend(seg.warnings.iter().cloned());

            let out = Object::new();
            set(&out, "width", seg.width);
            set(&out, "height", seg.height);
            set(&out, "classNames", seg.class_names.iter().map(JsValue::from).collect::<Array>());
            let colors: Array = (0..seg.class_names.len())
                .map(|i| {
                    let [r, g, b] = render::class_color(i);
                    JsValue::from(format!("rgb({r}, {g}, {b})"))
                })
                .collect();
            set(&out, "colors", colors);
            let stride = render::display_stride(seg.width, seg.height);
            let display = seg.sampled(stride);
            seg.probs = Vec::new(); // the exports need only the labels
            set(&out, "probs", Float32Array::from(display.probs.as_slice()));
            set(&out, "probsStride", stride as u32);
            set(&out, "probsWidth", display.width);
            set(&out, "probsHeight", display.height);
            set(&out, "labels", Uint8Array::from(seg.labels.as_slice()));
            set(&out, "shares", seg.class_shares().into_iter().map(JsValue::from).collect::<Array>());
            set(&out, "warnings", warnings.iter().map(JsValue::from).collect::<Array>());
            set(&out, "textMs", text_done - started);
            set(&out, "imageMs", finished - text_done);
            set(&out, "windows", seg.windows as u32);
            set(&out, "resized", format!("{}x{}", seg.resized.0, seg.resized.1));
            set(&out, "reusedWindows", seg.reused_windows);
            set(&out, "lastBlock", params.last_block.to_string() + if params.pamr.is_some() { ", then PAMR" } else { "" });
            set(&out, "labelColors", Uint8Array::from(render::label_colors(&seg, 255).as_raw().as_slice()));
            // A comparison run ({keep: false}) leaves the last result (heatmaps, exports) alone.
            if get(&options, "keep") != JsValue::FALSE {
                guard.last = Some(LastResult { image, full: seg, display });
            }
            Ok(out.into())
        })
    }

    /// RGBA heatmap (viridis) of class `index` of the last result, at the
    /// size of its sampled maps (`probsWidth x probsHeight`).
    pub fn heatmap_rgba(&self, index: usize) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let last = state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?;
        if index >= last.display.class_names.len() {
            return Err(JsError::new("no such class"));
        }
        let rgb = render::heatmap(&last.display, index);
        Ok(image::DynamicImage::ImageRgb8(rgb).to_rgba8().into_raw())
    }

    /// PNG of the image with the classes overlaid and a legend (as the CLI's overlay.png).
    pub fn overlay_png(&self, opacity: f32) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let last = state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?;
        png(image::DynamicImage::ImageRgb8(render::overlay(&last.image, &last.full, opacity.clamp(0.0, 1.0))))
    }

    /// 8-bit PNG of the class index per pixel (as the CLI's labels.png).
    pub fn labels_png(&self) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let seg = &state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?.full;
        png(image::DynamicImage::ImageLuma8(GrayImage::from_raw(seg.width, seg.height, seg.labels.clone()).expect("label map size")))
    }
}

fn png(image: image::DynamicImage) -> Result<Vec<u8>, JsError> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| JsError::new(&e.to_string()))?;
    Ok(bytes)
}
