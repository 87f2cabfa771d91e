//! The segmenter for the browser: glue only. Everything it does is
//! [`clearclip_segment::Segmenter`] (the same pipeline as the CLI) on burn's
//! WebGPU backend, or burn's CPU backend where WebGPU is missing.
//!
//! The worker (`web/worker.js`) owns one [`WebSegmenter`]: it streams the
//! weights into a [`WeightsBuffer`] (one copy, inside wasm memory), creates
//! the segmenter, then calls [`WebSegmenter::segment`] with RGBA pixels.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::Device;
use clearclip_model::{load_clip, Activation, ClipTokenizer, DenseMode, LoadOptions};
use clearclip_segment::{render, ClassList, Progress, SegmentParams, Segmentation, Segmenter, Templates};
use image::{GrayImage, RgbImage, RgbaImage};
use js_sys::{Array, Float32Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

/// A byte buffer in wasm memory that JS fills chunk by chunk while the
/// weights download, so the file is never held twice.
#[wasm_bindgen]
pub struct WeightsBuffer {
    bytes: Vec<u8>,
}

#[wasm_bindgen]
impl WeightsBuffer {
    #[wasm_bindgen(constructor)]
    pub fn new(capacity: usize) -> Result<WeightsBuffer, JsError> {
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(capacity).map_err(|_| JsError::new(&format!("cannot allocate {} MB for the weights", capacity >> 20)))?;
        Ok(Self { bytes })
    }

    /// Append a chunk (copied out of the JS array).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsError> {
        self.bytes.try_reserve(chunk.len()).map_err(|_| JsError::new("out of memory while receiving the weights"))?;
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

fn set(target: &Object, key: &str, value: impl Into<JsValue>) {
    Reflect::set(target, &JsValue::from_str(key), &value.into()).expect("setting a property of a plain object");
}

/// Which backend the model runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    WebGpu,
    Cpu,
}

struct State {
    segmenter: Segmenter,
    last: Option<(RgbImage, Segmentation)>,
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
    #[cfg(target_arch = "wasm32")]
    let device = Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
        .init_async()
        .await
        .map_err(|e| format!("{e:?}"))?;
    #[cfg(not(target_arch = "wasm32"))]
    let device: Device = return Err("WebGPU exists only in the browser".to_string());
    DEVICE.with(|d| *d.borrow_mut() = Some(device.clone()));
    Ok(device)
}

#[wasm_bindgen]
impl WebSegmenter {
    /// Load the model. `prefer_gpu` tries WebGPU first; if it fails (no
    /// adapter) the CPU backend is used and `backend()` says so.
    pub async fn create(weights: WeightsBuffer, tokenizer_json: &[u8], prefer_gpu: bool, gelu: bool) -> Result<WebSegmenter, JsError> {
        let (device, backend, note) = if prefer_gpu {
            match webgpu_device().await {
                Ok(device) => (device, Backend::WebGpu, String::new()),
                Err(e) => (Device::flex(), Backend::Cpu, format!(" (WebGPU failed: {e})")),
            }
        } else {
            (Device::flex(), Backend::Cpu, String::new())
        };
        let activation = if gelu { Activation::Gelu } else { Activation::QuickGelu };
        let model = load_clip(&weights.bytes, LoadOptions { activation }, &device).map_err(|e| JsError::new(&e.to_string()))?;
        drop(weights);
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

    /// Segment RGBA pixels. `progress(phase, done, total)` is called as text
    /// and windows complete. Resolves to `{width, height, classNames, colors,
    /// probs: Float32Array [C*H*W], labels: Uint8Array [H*W], shares,
    /// warnings, textMs, imageMs, windows, resized}`.
    #[allow(clippy::too_many_arguments)]
    pub fn segment(
        &self,
        rgba: Vec<u8>,
        width: u32,
        height: u32,
        labels: String,
        background_threshold: f32,
        mode: String,
        single_template: bool,
        progress: Function,
    ) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (classes, mut warnings) = ClassList::parse(&labels).map_err(|e| JsError::new(&e.to_string()))?;
            let mode = DenseMode::from_name(&mode).ok_or_else(|| JsError::new(&format!("unknown mode {mode}")))?;
            let rgba = RgbaImage::from_raw(width, height, rgba).ok_or_else(|| JsError::new("pixel buffer does not match the size"))?;
            let image = image::DynamicImage::ImageRgba8(rgba).to_rgb8();
            let params = SegmentParams {
                background_threshold,
                last_block: mode.last_block(),
                templates: if single_template { Templates::Single } else { Templates::OpenAiImageNet },
                ..SegmentParams::default()
            };
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
            let seg = guard.segmenter.segment(&image, &classes, &params, &mut report).await.map_err(|e| JsError::new(&e.to_string()))?;
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
            set(&out, "probs", Float32Array::from(seg.probs.as_slice()));
            set(&out, "labels", Uint8Array::from(seg.labels.as_slice()));
            set(&out, "shares", seg.class_shares().into_iter().map(JsValue::from).collect::<Array>());
            set(&out, "warnings", warnings.iter().map(JsValue::from).collect::<Array>());
            set(&out, "textMs", text_done - started);
            set(&out, "imageMs", finished - text_done);
            set(&out, "windows", seg.windows as u32);
            set(&out, "resized", format!("{}x{}", seg.resized.0, seg.resized.1));
            guard.last = Some((image, seg));
            Ok(out.into())
        })
    }

    /// RGBA of the class colours of the last result (alpha 255), for the overlay canvas.
    pub fn label_colors_rgba(&self) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let (_, seg) = state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?;
        Ok(render::label_colors(seg, 255).into_raw())
    }

    /// RGBA heatmap (viridis) of class `index` of the last result.
    pub fn heatmap_rgba(&self, index: usize) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let (_, seg) = state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?;
        if index >= seg.class_names.len() {
            return Err(JsError::new("no such class"));
        }
        let rgb = render::heatmap(seg, index);
        Ok(image::DynamicImage::ImageRgb8(rgb).to_rgba8().into_raw())
    }

    /// PNG of the image with the classes overlaid and a legend (as the CLI's overlay.png).
    pub fn overlay_png(&self, opacity: f32) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let (image, seg) = state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?;
        png(image::DynamicImage::ImageRgb8(render::overlay(image, seg, opacity.clamp(0.0, 1.0))))
    }

    /// 8-bit PNG of the class index per pixel (as the CLI's labels.png).
    pub fn labels_png(&self) -> Result<Vec<u8>, JsError> {
        let state = self.state.borrow();
        let (_, seg) = state.last.as_ref().ok_or_else(|| JsError::new("nothing segmented yet"))?;
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

/// Parse a label string as the segmenter will (for instant feedback in the
/// page): resolves to `{classes: [[names]], warnings: [..]}` or throws the error.
#[wasm_bindgen]
pub fn parse_labels(labels: &str) -> Result<JsValue, JsError> {
    let (list, warnings) = ClassList::parse(labels).map_err(|e| JsError::new(&e.to_string()))?;
    let out = Object::new();
    let classes: Array = list.classes.iter().map(|c| c.names.iter().map(JsValue::from).collect::<Array>()).map(JsValue::from).collect();
    set(&out, "classes", classes);
    set(&out, "warnings", warnings.iter().map(JsValue::from).collect::<Array>());
    Ok(out.into())
}
