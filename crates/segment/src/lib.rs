//! Open-vocabulary semantic segmentation with ClearCLIP, following the
//! official protocol (mc-lan/ClearCLIP `clearclip_segmentor.py` and its mmseg
//! test pipeline). Shared by the `clearclip` CLI and the browser app; it knows
//! nothing of files or of the browser.
//!
//! A request is [`SegmentParams`] (every knob, serde-readable, defaults the
//! reference's) and a [`ClassList`]; the CLI builds it from flags
//! ([`LastBlockOverrides`] over a mode), the page sends it as JSON
//! ([`SegmentRequest`]) and builds its controls from the [`Catalog`].
//!
//! # Example
//!
//! ```
//! use burn::tensor::Device;
//! use clearclip_model::{load_clip, ClipTokenizer, LoadOptions};
//! use clearclip_segment::{decode_image, ClassList, SegmentParams, Segmenter};
//!
//! let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
//! let device = Device::flex();
//! let clip = load_clip(&std::fs::read(format!("{root}/fixtures/tiny_openclip_bf16.safetensors"))?, LoadOptions::default(), &device)?;
//! let tokenizer = ClipTokenizer::from_json_bytes(&std::fs::read(format!("{root}/assets/tokenizer.json"))?, 77)?;
//! let mut segmenter = Segmenter::new(clip, tokenizer);
//!
//! let image = decode_image(&std::fs::read(format!("{root}/web/assets/example.png"))?)?;
//! let (classes, _warnings) = ClassList::parse("cat; grass, lawn; sky")?;
//! // The reference's settings, on a smaller model input to keep the example quick.
//! let params = SegmentParams { short_side: 112, crop: 112, stride: 112, ..SegmentParams::default() };
//! let result = pollster::block_on(segmenter.segment(&image, &classes, &params, &mut |_progress| {}))?;
//!
//! assert_eq!((result.width, result.height), image.dimensions());
//! assert_eq!(result.probs.len(), 3 * result.labels.len()); // [classes, height, width]
//! println!("{:?} in {:.0} ms", result.class_shares(), result.timings.total_ms());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod classes;
pub mod decode;
mod gpu_merge;
mod gpu_pamr;
pub mod pamr;
pub mod preprocess;
pub mod merge;
pub mod presets;
pub mod prompts;
pub mod render;
pub mod request;
pub mod resample;
mod rows;
pub mod segmenter;
pub mod windows;

pub use classes::{ClassError, ClassList, ClassSpec};
pub use decode::{decode_image, DecodeError, MAX_DECODE_SIDE};
pub use merge::GpuMerge;
pub use pamr::{Pamr, MAX_PAMR_DILATIONS, MAX_PAMR_ITERATIONS};
pub use presets::{Preset, PRESETS};
pub use prompts::Templates;
pub use request::{Catalog, LastBlockOverrides, SegmentRequest};
pub use segmenter::{
    Batching, Clock, ImagePhases, Observer, ProbabilityMaps, Progress, SegmentError, SegmentParams, Segmentation, Segmenter, SettingsError, Timings, MAX_IMAGE_PIXELS, MAX_PAMR_PIXELS,
};

/// Whether this build runs its own GPU kernels (the `gpu-kernel` feature
/// without `fusion`): the window merge, the class maps and PAMR, and the
/// check of a window's size against the GPU's largest buffer
/// ([`Segmenter::max_tensor_bytes`]).
pub const GPU_KERNELS: bool = cfg!(all(feature = "gpu-kernel", not(feature = "fusion")));
