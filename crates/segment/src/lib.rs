//! Open-vocabulary semantic segmentation with ClearCLIP, following the
//! official protocol (mc-lan/ClearCLIP `clearclip_segmentor.py` and its mmseg
//! test pipeline). Shared by the `clearclip` CLI and the browser app; it knows
//! nothing of files or of the browser.

pub mod classes;
pub mod decode;
pub mod pamr;
pub mod preprocess;
pub mod presets;
pub mod prompts;
pub mod render;
pub mod request;
pub mod resample;
pub mod segmenter;
pub mod windows;

pub use classes::{ClassError, ClassList, ClassSpec};
pub use decode::{decode_image, DecodeError, MAX_DECODE_SIDE};
pub use pamr::Pamr;
pub use presets::{Preset, PRESETS};
pub use prompts::Templates;
pub use request::{Catalog, LastBlockOverrides, SegmentRequest};
pub use segmenter::{
    Clock, Progress, SegmentError, SegmentParams, Segmentation, Segmenter, SettingsError, Timings, MAX_IMAGE_PIXELS, MAX_PAMR_PIXELS,
};
