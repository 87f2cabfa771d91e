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
//!
//! What crosses the boundary is typed: requests are
//! [`SegmentRequest`](clearclip_segment::SegmentRequest)s, results a
//! [`ResultSummary`] plus typed arrays, errors an [`ErrorReport`] that says
//! whether the model is still usable.

use std::cell::{Ref, RefCell, RefMut};
use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::rc::Rc;

use burn::tensor::Device;
use clearclip_model::{Activation, CheckpointLoader, ClipTokenizer, LoadOptions, Precision};
use clearclip_segment::{
    decode_image, render, Batching, Catalog, ClassList, Observer, ProbabilityMaps, Progress, SegmentError, SegmentParams, SegmentRequest, Segmentation, Segmenter, Timings,
};
use image::RgbImage;
use js_sys::{Float32Array, Function, Object, Reflect, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;

/// The event the panic hook dispatches on the worker's global scope; its
/// `detail` is [`panic_report`]'s sentence. A panic (a bug, here or in a
/// crate below) traps the wasm instance, and in an async call (every WebGPU
/// run) the trap comes from a task of the call's future, so the call's
/// promise never settles: this event is how the worker hears of it at once,
/// and with the panic's own message rather than the trap's "unreachable".
pub const PANIC_EVENT: &str = "wasm-panic";

#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        console_error_panic_hook::hook(info); // the message and the stack in the console, as before
        dispatch_global_event(PANIC_EVENT, &panic_report(info));
    }));
}

/// "internal error: MESSAGE (at FILE:LINE)": what the page shows of a panic.
fn panic_report(info: &std::panic::PanicHookInfo) -> String {
    let message = info.payload_as_str().unwrap_or("a panic without a message");
    match info.location() {
        Some(at) => format!("internal error: {message} (at {}:{})", at.file(), at.line()),
        None => format!("internal error: {message}"),
    }
}

/// Dispatch a `CustomEvent` named `name`, with `detail`, on the global scope
/// (the worker's), where `web/worker.js` listens.
fn dispatch_global_event(name: &str, detail: &str) {
    let init = web_sys::CustomEventInit::new();
    init.set_detail(&JsValue::from_str(detail));
    if let Ok(event) = web_sys::CustomEvent::new_with_event_init_dict(name, &init) {
        let global: web_sys::EventTarget = js_sys::global().unchecked_into();
        let _ = global.dispatch_event(&event);
    }
}

/// The name of the event that reports a panic ([`PANIC_EVENT`]).
#[wasm_bindgen(js_name = panicEvent)]
pub fn panic_event() -> String {
    PANIC_EVENT.to_string()
}

/// Trap the instance in a later task, as a bug or a failed allocation inside
/// an async call would (the tests of the recovery path, through the page's
/// `?debug=1` hook): `abort` aborts without a panic, as Rust does when an
/// allocation fails; otherwise it panics. `in_pool`: on a thread of the
/// threaded module's pool, as a kernel would (elsewhere, on this thread).
/// The returned promise never settles; the worker hears of a panic by
/// [`PANIC_EVENT`], of an abort by the uncaught trap, and the page of a pool
/// thread's trap by the thread's messages (vendor/wasm-bindgen-rayon,
/// `web/pool-threads.js`).
#[wasm_bindgen(js_name = trapForTest)]
pub fn trap_for_test(abort: bool, in_pool: bool) -> js_sys::Promise {
    #[cfg(feature = "threads")]
    if in_pool {
        rayon::spawn(move || {
            let _ = deliberate_trap(abort);
        });
        return js_sys::Promise::new(&mut |_, _| {});
    }
    #[cfg(not(feature = "threads"))]
    let _ = in_pool; // no pool: the trap comes on this thread
    wasm_bindgen_futures::future_to_promise(async move {
        let _ = wasm_bindgen_futures::JsFuture::from(next_task()).await;
        deliberate_trap(abort)
    })
}

fn deliberate_trap(abort: bool) -> Result<JsValue, JsValue> {
    if abort {
        std::process::abort()
    }
    panic!("a deliberate panic, asked for by the page's test hook")
}

/// What the worker receives when a call fails: `{kind, message, fatal}`.
/// `fatal`: the model (or the whole wasm instance) is unusable and must be
/// loaded again; otherwise only this request failed.
#[derive(Serialize)]
pub struct ErrorReport {
    kind: &'static str,
    message: String,
    fatal: bool,
}

impl ErrorReport {
    /// The report as the JS object the promise rejects with.
    fn js(kind: &'static str, error: impl std::fmt::Display, fatal: bool) -> JsValue {
        let report = ErrorReport { kind, message: error.to_string(), fatal };
        to_js(&report).unwrap_or_else(|e| e)
    }
}

fn to_js(value: &impl Serialize) -> Result<JsValue, JsValue> {
    // Plain objects (not Maps) for the structs, so the page reads fields.
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| JsValue::from_str(&format!("cannot pass a result to JS: {e}")))
}

fn set(target: &Object, key: &str, value: impl Into<JsValue>) -> Result<(), JsValue> {
    Reflect::set(target, &JsValue::from_str(key), &value.into()).map(|_| ())
}

/// `performance.now()` of the worker (or window) running the module.
fn performance_now() -> f64 {
    let global: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
    global.performance().map(|p| p.now()).unwrap_or(f64::NAN)
}

/// A promise that settles in a later task of the event loop (a message to
/// itself: unlike `setTimeout(0)`, never clamped to 4 ms), so messages that
/// arrived meanwhile are handled first.
fn next_task() -> js_sys::Promise {
    js_sys::Promise::new(&mut |resolve, _reject| {
        match web_sys::MessageChannel::new() {
            Ok(channel) => {
                channel.port1().set_onmessage(Some(&resolve));
                let _ = channel.port2().post_message(&JsValue::NULL);
            }
            Err(_) => {
                let _ = resolve.call0(&JsValue::NULL);
            }
        }
    })
}

/// The worker's side of a run: progress goes to `report(phase, done, total)`,
/// whose truthy answer cancels the run; between steps the worker's event loop
/// runs (so the page's cancel message is read even while the CPU backend
/// computes).
struct WorkerObserver {
    report: Function,
}

impl Observer for WorkerObserver {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        let (phase, done, total) = match progress {
            Progress::Text { done, total } => ("text", done, total),
            Progress::Window { done, total } => ("image", done, total),
        };
        let answer = self.report.call3(&JsValue::NULL, &phase.into(), &(done as u32).into(), &(total as u32).into());
        if answer.is_ok_and(|cancel| cancel.is_truthy()) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    fn pause(&mut self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        Box::pin(async {
            let _ = wasm_bindgen_futures::JsFuture::from(next_task()).await;
        })
    }
}

/// The report of a failed run: `cancelled` when the page stopped it.
fn segment_error(error: &SegmentError) -> JsValue {
    match error {
        SegmentError::Cancelled => ErrorReport::js("cancelled", error, false),
        _ => ErrorReport::js("segment", error, error.is_fatal()),
    }
}

/// The modes, attention kinds, presets and default settings the page's
/// controls list ([`Catalog`]).
#[wasm_bindgen]
pub fn catalog() -> Result<JsValue, JsValue> {
    to_js(&Catalog::new())
}

/// Makes the CPU backend's matrix products multiply and add with relaxed
/// SIMD's `f32x4.relaxed_madd` (gemm's register blocks, vendor/gemm-f32).
/// The worker calls it in web/pkg-relaxed and web/pkg-threads, before a
/// model loads. web/pkg is the same build as web/pkg-relaxed with those
/// blocks removed (scripts/build-web.sh), so it must not: they trap there.
#[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
#[wasm_bindgen(js_name = useRelaxedSimd)]
pub fn use_relaxed_simd() {
    gemm_f32::use_relaxed_simd();
}

/// Which backend the model runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    WebGpu,
    Cpu,
}

/// The last result the page shows: the image, the full-size labels (exports)
/// and the probability maps at display size (heatmaps).
struct LastResult {
    image: Rc<RgbImage>,
    segmentation: Segmentation,
}

struct State {
    segmenter: Segmenter,
    last: Option<LastResult>,
}

/// The worker runs one call at a time (web/worker.js's promise queue), so a
/// call never finds the state borrowed; if one did, it fails with kind `busy`
/// instead of the module panicking.
fn state_mut(state: &RefCell<State>) -> Result<RefMut<'_, State>, JsValue> {
    state.try_borrow_mut().map_err(|_| ErrorReport::js("busy", "the segmenter is running another call", false))
}

/// See [`state_mut`].
fn state_ref(state: &RefCell<State>) -> Result<Ref<'_, State>, JsValue> {
    state.try_borrow().map_err(|_| ErrorReport::js("busy", "the segmenter is running another call", false))
}

/// An image file decoded as the CLI decodes it ([`decode_image`]: JPEG as
/// libjpeg-turbo/OpenCV, EXIF orientation applied), at its full size.
#[wasm_bindgen]
pub struct DecodedImage {
    image: Rc<RgbImage>,
}

#[wasm_bindgen]
impl DecodedImage {
    /// Decodes the bytes of an image file; throws an [`ErrorReport`] for
    /// files that are not images, corrupt, truncated or too large.
    pub fn decode(bytes: &[u8]) -> Result<DecodedImage, JsValue> {
        let image = decode_image(bytes).map_err(|e| ErrorReport::js("image", e, false))?;
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

/// The event [`webgpu_device`] dispatches on the worker's global scope when
/// the GPU device is lost; its `detail` is the browser's message.
pub const DEVICE_LOST_EVENT: &str = "gpu-device-lost";

#[cfg(all(target_arch = "wasm32", feature = "webgpu"))]
type GpuDevice = burn::tensor::wgpu::wgpu::Device;
#[cfg(not(all(target_arch = "wasm32", feature = "webgpu")))]
type GpuDevice = ();

thread_local! {
    /// burn's device and the wgpu device under it, initialised once per worker
    /// (a second init fails; a lost device means a new worker).
    static WEBGPU: RefCell<Option<(Device, GpuDevice)>> = const { RefCell::new(None) };
}

/// The WebGPU device. A loss of it (driver reset, GPU process crash,
/// `destroy()`) cannot be recovered inside this wasm instance: wgpu's
/// device-lost callback dispatches [`DEVICE_LOST_EVENT`] for the worker to
/// report, and the page starts a new worker.
async fn webgpu_device() -> Result<Device, String> {
    if let Some(device) = WEBGPU.with(|d| d.borrow().as_ref().map(|(device, _)| device.clone())) {
        return Ok(device);
    }
    let (device, gpu) = init_webgpu().await?;
    WEBGPU.with(|d| *d.borrow_mut() = Some((device.clone(), gpu)));
    Ok(device)
}

#[cfg(all(target_arch = "wasm32", feature = "webgpu"))]
async fn init_webgpu() -> Result<(Device, GpuDevice), String> {
    let (device, setup) = Device::wgpu_options()
        .graphics_api(burn::tensor::wgpu::WgpuBackend::WebGpu)
        .init_with_setup_async()
        .await
        .map_err(|e| format!("{e:?}"))?;
    setup.device.set_device_lost_callback(|reason, message| {
        let message = if message.is_empty() { format!("{reason:?}") } else { message };
        dispatch_global_event(DEVICE_LOST_EVENT, &message);
    });
    Ok((device, setup.device))
}

#[cfg(not(all(target_arch = "wasm32", feature = "webgpu")))]
async fn init_webgpu() -> Result<(Device, GpuDevice), String> {
    Err(match cfg!(target_arch = "wasm32") {
        true => "this is the threaded CPU module, built without WebGPU".to_string(),
        false => "WebGPU exists only in the browser".to_string(),
    })
}

/// Starts the pool of web workers the CPU backend runs on (the threaded
/// module only): `initThreadPool(n)` returns a promise, to be awaited
/// before any other call.
#[cfg(all(target_arch = "wasm32", feature = "threads"))]
pub use wasm_bindgen_rayon::init_thread_pool;

/// Destroy the WebGPU device, as a driver reset would lose it (the tests of
/// the recovery path). False when there is none (the CPU backend).
#[wasm_bindgen(js_name = loseGpuDevice)]
pub fn lose_gpu_device() -> bool {
    WEBGPU.with(|d| match d.borrow().as_ref() {
        #[cfg(all(target_arch = "wasm32", feature = "webgpu"))]
        Some((_, gpu)) => {
            gpu.destroy();
            true
        }
        #[cfg(not(all(target_arch = "wasm32", feature = "webgpu")))]
        Some(_) => false,
        None => false,
    })
}

/// The name of the event that reports a lost GPU device ([`DEVICE_LOST_EVENT`]).
#[wasm_bindgen(js_name = deviceLostEvent)]
pub fn device_lost_event() -> String {
    DEVICE_LOST_EVENT.to_string()
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
    precision: Precision,
    note: String,
}

#[wasm_bindgen]
impl WeightsLoader {
    /// `prefer_gpu` tries WebGPU first; if it fails (no adapter) the CPU
    /// backend is used and the segmenter's `backend()` says so. `half` asks
    /// for f16 ([`Precision::F16`]), which only a WebGPU adapter with
    /// `shader-f16` gives; elsewhere the model is f32 and the description says why.
    pub async fn create(prefer_gpu: bool, gelu: bool, half: bool) -> WeightsLoader {
        let (device, backend, mut note) = if prefer_gpu {
            match webgpu_device().await {
                Ok(device) => (device, Backend::WebGpu, String::new()),
                Err(e) => (Device::flex(), Backend::Cpu, format!(" (WebGPU failed: {e})")),
            }
        } else {
            (Device::flex(), Backend::Cpu, String::new())
        };
        if backend == Backend::Cpu {
            // Which build of the module runs the CPU backend
            // (scripts/build-web.sh): the pool's size, and whether its
            // matrix products use relaxed SIMD's fused multiply-add.
            let mut build: Vec<String> = Vec::new();
            #[cfg(feature = "threads")]
            build.push(format!("CPU on {} threads", rayon::current_num_threads()));
            #[cfg(all(target_arch = "wasm32", feature = "relaxed-simd"))]
            if gemm_f32::uses_relaxed_simd() {
                build.push("relaxed SIMD".into());
            }
            if !build.is_empty() {
                note.push_str(&format!(" ({})", build.join(", ")));
            }
        }
        let precision = match half {
            true if Precision::F16.is_supported_on(&device) => Precision::F16,
            true if backend == Backend::WebGpu => {
                note.push_str(" (f16 unavailable: this GPU has no shader-f16)");
                Precision::F32
            }
            true => {
                note.push_str(" (f16 needs WebGPU)");
                Precision::F32
            }
            false => Precision::F32,
        };
        let activation = if gelu { Activation::Gelu } else { Activation::QuickGelu };
        let loader = CheckpointLoader::new(LoadOptions { activation, precision }, &device);
        WeightsLoader { loader, backend, precision, note }
    }

    /// The next chunk of the file (copied out of the JS array, converted and
    /// uploaded as tensors complete). Throws an [`ErrorReport`] if the file
    /// is refused; then the download should stop.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        self.loader.push(chunk).map_err(|e| ErrorReport::js("weights", e, false))
    }

    /// The file size the header announces, once the header is in.
    #[wasm_bindgen(js_name = expectedBytes)]
    pub fn expected_bytes(&self) -> Option<f64> {
        self.loader.expected_len().map(|n| n as f64)
    }
}

/// The fields of a result besides its typed arrays.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResultSummary {
    width: u32,
    height: u32,
    class_names: Vec<String>,
    /// `[r, g, b]` of each class, as in the overlay and the PNGs.
    colors: Vec<[u8; 3]>,
    shares: Vec<f32>,
    warnings: Vec<String>,
    timings: Timings,
    windows: usize,
    /// `[width, height]` the model saw.
    resized: [u32; 2],
    reused_windows: bool,
    /// What ran after the first blocks, e.g. `q-q attention, no residual, no FFN`.
    last_block: String,
    /// `probs` holds every `probs_stride`-th pixel in each direction.
    probs_stride: usize,
    probs_width: u32,
    probs_height: u32,
    /// The GPU allocator after the run (WebGPU only), for the memory soak.
    device_memory: Option<DeviceMemory>,
}

/// Bytes the GPU allocator holds: in live buffers, and reserved in all.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeviceMemory {
    bytes_in_use: u64,
    bytes_reserved: u64,
}

impl ResultSummary {
    fn new(seg: &Segmentation, warnings: Vec<String>, last_block: String) -> Self {
        let (probs_width, probs_height) = seg.probs_size();
        Self {
            width: seg.width,
            height: seg.height,
            class_names: seg.class_names.clone(),
            colors: (0..seg.class_names.len()).map(render::class_color).collect(),
            shares: seg.class_shares(),
            warnings,
            timings: seg.timings,
            windows: seg.windows,
            resized: [seg.resized.0, seg.resized.1],
            reused_windows: seg.reused_windows,
            last_block,
            probs_stride: seg.probs_stride,
            probs_width,
            probs_height,
            device_memory: None,
        }
    }
}

#[wasm_bindgen]
pub struct WebSegmenter {
    state: Rc<RefCell<State>>,
    backend: Backend,
    description: String,
    patch: usize,
}

#[wasm_bindgen]
impl WebSegmenter {
    /// The segmenter over the model `weights` received completely.
    pub fn create(weights: WeightsLoader, tokenizer_json: &[u8]) -> Result<WebSegmenter, JsValue> {
        let WeightsLoader { loader, backend, precision, note } = weights;
        let model = loader.finish().map_err(|e| ErrorReport::js("weights", e, false))?;
        let tokenizer = ClipTokenizer::from_json_bytes(tokenizer_json, model.config.text.context_length)
            .map_err(|e| ErrorReport::js("tokenizer", e, false))?;
        let description = format!("{} [{:?} layout, {}]{note}", model.config.describe(), model.layout, precision.name());
        let patch = model.config.vision.patch_size;
        // The page draws heatmaps at display size. On the CPU the segmenter
        // takes one window (and one class name) at a time, so a cancel is
        // heard, and the progress bar moves, between them.
        let mut segmenter = Segmenter::new(model, tokenizer).with_clock(performance_now).with_probability_maps(ProbabilityMaps::ForDisplay);
        if backend == Backend::Cpu {
            segmenter = segmenter.with_window_batching(Batching::AtMost(1));
        }
        Ok(WebSegmenter { state: Rc::new(RefCell::new(State { segmenter, last: None })), backend, description, patch })
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

    /// The model's patch side in pixels: the smallest window (crop) and
    /// stride the page offers, and their step.
    pub fn patch(&self) -> usize {
        self.patch
    }

    /// Run the default settings on a blank image, so that the GPU
    /// compiles its kernels now rather than in the first real run (see
    /// [`Segmenter::warm_up`]). Resolves to the milliseconds it took; rejects
    /// with an [`ErrorReport`].
    #[wasm_bindgen(js_name = warmUp)]
    // The state stays borrowed across the awaits: see `state_mut`.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn warm_up(&self) -> js_sys::Promise {
        let state = self.state.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let mut guard = state_mut(&state)?;
            let ms = guard.segmenter.warm_up(&SegmentParams::default()).await.map_err(|e| segment_error(&e))?;
            Ok(JsValue::from_f64(ms))
        })
    }

    /// Segment `image` as `request` (a [`SegmentRequest`]) says; with `keep:
    /// false` it is a side run that does not replace the last result.
    /// `progress(phase, done, total)` is called as text and windows complete;
    /// a truthy return value cancels the run (rejecting with kind `cancelled`).
    /// Resolves to a [`ResultSummary`] with the typed arrays `labels`
    /// (`Uint8Array [H*W]`), `labelColors` (`Uint8Array [H*W*4]`, RGBA) and
    /// `probs` (`Float32Array [C*h*w]`, every `probsStride`-th pixel of the
    /// full-size maps in each direction: 1 up to [`render::DISPLAY_MAX_PIXELS`]).
    /// Rejects with an [`ErrorReport`].
    // The state stays borrowed across the awaits: see `state_mut`.
    #[allow(clippy::await_holding_refcell_ref)]
    pub fn segment(&self, image: &DecodedImage, request: JsValue, keep: bool, progress: Function) -> js_sys::Promise {
        let state = self.state.clone();
        let image = image.image.clone();
        let backend = self.backend;
        wasm_bindgen_futures::future_to_promise(async move {
            let request: SegmentRequest = serde_wasm_bindgen::from_value(request).map_err(|e| ErrorReport::js("request", e, false))?;
            let (classes, mut warnings) = ClassList::parse(&request.labels).map_err(|e| ErrorReport::js("labels", e, false))?;
            let mut observer = WorkerObserver { report: progress };
            let mut guard = state_mut(&state)?;
            let seg = guard
                .segmenter
                .segment(&image, &classes, &request.params, &mut observer)
                .await
                .map_err(|e| segment_error(&e))?;
            warnings.extend(seg.warnings.iter().cloned());
            let mut summary = ResultSummary::new(&seg, warnings, request.params.describe_last_block());
            if backend == Backend::WebGpu {
                summary.device_memory = guard
                    .segmenter
                    .device_memory()
                    .map(|m| DeviceMemory { bytes_in_use: m.bytes_in_use, bytes_reserved: m.bytes_reserved });
            }
            let out: Object = to_js(&summary)?.unchecked_into();
            set(&out, "probs", Float32Array::from(seg.probs.as_slice()))?;
            set(&out, "labels", Uint8Array::from(seg.labels.as_slice()))?;
            set(&out, "labelColors", Uint8Array::from(render::label_colors(&seg, 255).as_raw().as_slice()))?;
            if keep {
                guard.last = Some(LastResult { image, segmentation: seg });
            }
            Ok(out.into())
        })
    }

    /// RGBA heatmap (viridis) of class `index` of the last result, at the
    /// size of its sampled maps (`probsWidth x probsHeight`).
    pub fn heatmap_rgba(&self, index: usize) -> Result<Vec<u8>, JsValue> {
        let state = state_ref(&self.state)?;
        let last = state.last.as_ref().ok_or_else(|| ErrorReport::js("export", "nothing segmented yet", false))?;
        if index >= last.segmentation.class_names.len() {
            return Err(ErrorReport::js("export", format!("no class {index}"), false));
        }
        let rgb = render::heatmap(&last.segmentation, index);
        Ok(image::DynamicImage::ImageRgb8(rgb).to_rgba8().into_raw())
    }

    /// PNG of the image with the classes overlaid and a legend (as the CLI's overlay.png).
    pub fn overlay_png(&self, opacity: f32) -> Result<Vec<u8>, JsValue> {
        let state = state_ref(&self.state)?;
        let last = state.last.as_ref().ok_or_else(|| ErrorReport::js("export", "nothing segmented yet", false))?;
        let overlay = render::overlay(&last.image, &last.segmentation, opacity.clamp(0.0, 1.0))
            .ok_or_else(|| ErrorReport::js("export", "the result is not of this image", false))?;
        render::png(overlay).map_err(|e| ErrorReport::js("export", e, false))
    }

    /// 8-bit PNG of the class index per pixel (as the CLI's labels.png).
    pub fn labels_png(&self) -> Result<Vec<u8>, JsValue> {
        let state = state_ref(&self.state)?;
        let last = state.last.as_ref().ok_or_else(|| ErrorReport::js("export", "nothing segmented yet", false))?;
        let labels = render::labels_image(&last.segmentation).ok_or_else(|| ErrorReport::js("export", "the label map is damaged", false))?;
        render::png(labels).map_err(|e| ErrorReport::js("export", e, false))
    }
}
