//! A JPEG decoder whose RGB output is the one libjpeg-turbo gives with its
//! default settings, bit for bit: what OpenCV's `cv2.imread` and PIL read, and
//! so what the official ClearCLIP pipeline sees.
//!
//! General-purpose decoders (zune-jpeg, jpeg-decoder, stb_image) use faster
//! integer IDCTs with other rounding and upsample chroma in two rounded
//! passes; on photos that moves pixels by a few levels. This crate follows
//! libjpeg-turbo's C code path by path instead:
//! - the accurate integer IDCT (`jidctint.c`, `JDCT_ISLOW`), with its range
//!   limiting (`jdmaster.c` `prepare_range_limit_table`);
//! - "fancy" chroma upsampling (`jdsample.c`: h2v1, h1v2 and h2v2 triangle
//!   filters, box replication elsewhere), with the context rows of
//!   `jdmainct.c` (first and last real row repeated at the edges);
//! - YCbCr, RGB, grayscale, CMYK and YCCK colour handling (`jdcolor.c`,
//!   `jdapimin.c` for which colour space a file is in);
//! - baseline, extended and progressive Huffman scans with restart markers
//!   (`jdhuff.c`, `jdphuff.c`).
//!
//! CMYK and YCCK files are turned into RGB the way OpenCV does
//! (`icvCvt_CMYK2BGR_8u_C4C3R`), as the reference reads images with OpenCV.
//! The EXIF orientation is reported, not applied.
//!
//! Not supported, each refused with its own error: arithmetic coding,
//! lossless and hierarchical JPEG, 12-bit samples. Truncated or corrupt data
//! is refused rather than patched with grey as libjpeg does.
//!
//! ```
//! let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/jpeg/baseline_420_q90.jpg");
//! let bytes = std::fs::read(path).unwrap();
//! let image = clearclip_jpeg::decode(&bytes, &clearclip_jpeg::Limits::default())?;
//! assert_eq!(image.rgb.len(), (image.width * image.height * 3) as usize);
//! # Ok::<(), clearclip_jpeg::JpegError>(())
//! ```

mod color;
mod entropy;
mod exif;
mod idct;
mod markers;
mod upsample;

use markers::{ColorTransform, Frame};

/// What a decode may allocate, checked against the frame header before any
/// pixel memory is taken.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest width or height.
    pub max_side: u32,
    /// Largest width x height.
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_side: 16384, max_pixels: 64 << 20 }
    }
}

/// A decoded image: interleaved 8-bit RGB, rows top to bottom, as stored in
/// the file (the EXIF orientation is not applied).
#[derive(Debug, Clone)]
pub struct DecodedJpeg {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// EXIF orientation tag (1..=8) when the file carries one.
    pub exif_orientation: Option<u8>,
    pub info: JpegInfo,
}

/// How the file is coded, for diagnostics and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegInfo {
    pub progressive: bool,
    /// Colour space of the coded components.
    pub color: ColorSpace,
    /// (horizontal, vertical) sampling factors of each component.
    pub sampling: Vec<(u8, u8)>,
    pub restart_interval: u16,
    pub scans: usize,
    /// A progressive file whose scans leave some of the first ten
    /// coefficients unrefined. libjpeg smooths such blocks
    /// (`jdcoefct.c` `decompress_smooth_data`); this decoder does not, so
    /// its output differs there. Complete files never set this.
    pub unrefined_progressive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorSpace {
    Grayscale,
    YCbCr,
    Rgb,
    Cmyk,
    Ycck,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JpegError {
    #[error("not a JPEG file (no start-of-image marker)")]
    NotJpeg,
    #[error("the JPEG file is truncated ({0})")]
    Truncated(&'static str),
    #[error("corrupt JPEG data: {0}")]
    Corrupt(String),
    #[error("this JPEG kind is not supported: {0}")]
    Unsupported(String),
    #[error("the image is {width}x{height}; the limit is {limit}")]
    TooLarge { width: u32, height: u32, limit: String },
}

/// Reads only the headers: size and coding, no pixel memory.
pub fn read_info(data: &[u8]) -> Result<(u32, u32, JpegInfo), JpegError> {
    let parsed = markers::parse_until_first_scan(data)?;
    let frame = &parsed.frame;
    Ok((frame.width, frame.height, info(frame, &parsed.transform, parsed.restart_interval, 0)))
}

/// Decodes a whole JPEG file to RGB as libjpeg-turbo does with its defaults.
pub fn decode(data: &[u8], limits: &Limits) -> Result<DecodedJpeg, JpegError> {
    let decoded = entropy::decode_coefficients(data, limits)?;
    let color = decoded.color_space();
    let mut info = info(&decoded.frame, &decoded.transform, decoded.restart_interval, decoded.scans);
    info.unrefined_progressive = decoded.unrefined;
    let planes = decoded.components.iter().map(idct::component_plane).collect::<Vec<_>>();
    drop(decoded.components);
    let rgb = upsample::to_rgb(&decoded.frame, &planes, color);
    Ok(DecodedJpeg {
        width: decoded.frame.width,
        height: decoded.frame.height,
        rgb,
        exif_orientation: decoded.exif_orientation,
        info,
    })
}

fn info(frame: &Frame, transform: &ColorTransform, restart_interval: u16, scans: usize) -> JpegInfo {
    JpegInfo {
        progressive: frame.progressive,
        color: transform.color_space(frame),
        sampling: frame.components.iter().map(|c| (c.h, c.v)).collect(),
        restart_interval,
        scans,
        unrefined_progressive: false,
    }
}
