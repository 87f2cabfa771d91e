//! Image files to RGB pixels, as the reference reads them: mmcv's
//! `LoadImageFromFile` uses `cv2.imread`, which decodes JPEGs with
//! libjpeg-turbo's defaults and applies the EXIF orientation. JPEGs go
//! through [`clearclip_jpeg`], which gives libjpeg-turbo's pixels bit for
//! bit; other formats are lossless (PNG, BMP, GIF) or rare (WebP) and go
//! through the `image` crate (an animated GIF or WebP gives its first frame,
//! as `cv2.imread` does; 16-bit samples keep their high byte, as libpng's
//! `png_set_strip_16` in OpenCV). One implementation for the CLI and the page.

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::segmenter::{too_large_message, MAX_IMAGE_PIXELS};

/// Largest side decoded; larger files are refused before allocating.
pub const MAX_DECODE_SIDE: u32 = 16384;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an image this app can read (PNG, JPEG, WebP, BMP, GIF)")]
    UnknownFormat,
    /// Over [`MAX_DECODE_SIDE`] or [`MAX_IMAGE_PIXELS`]; the message names
    /// the limits it is over.
    #[error("{}", too_large_message(*.width, *.height, Some(MAX_DECODE_SIDE)))]
    TooLarge { width: u32, height: u32 },
    #[error("cannot decode the JPEG: {0}")]
    Jpeg(clearclip_jpeg::JpegError),
    #[error("cannot decode the image (corrupt or truncated?): {0}")]
    Other(String),
}

/// Decodes an image file and applies its EXIF orientation.
pub fn decode_image(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return decode_jpeg(bytes);
    }
    let reader = ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format().map_err(|e| DecodeError::Other(e.to_string()))?;
    if reader.format().is_none() {
        return Err(DecodeError::UnknownFormat);
    }
    let mut decoder = reader.into_decoder().map_err(|e| DecodeError::Other(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(|e| DecodeError::Other(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(to_rgb8_like_opencv(image))
}

/// 8-bit RGB, alpha dropped (not composited) as `cv2.imread` does. 16-bit
/// samples keep their high byte (libpng's `png_set_strip_16`, which OpenCV
/// uses), where `image`'s own conversion rounds.
fn to_rgb8_like_opencv(image: DynamicImage) -> RgbImage {
    if image.color().bytes_per_pixel() / image.color().channel_count() == 2 {
        let rgb16 = image.to_rgb16();
        let (width, height) = rgb16.dimensions();
        let mut out = RgbImage::new(width, height);
        for (o, &v) in out.iter_mut().zip(rgb16.iter()) {
            *o = (v >> 8) as u8;
        }
        return out;
    }
    image.to_rgb8()
}

fn check_size(width: u32, height: u32) -> Result<(), DecodeError> {
    if width.max(height) > MAX_DECODE_SIDE || width as u64 * height as u64 > MAX_IMAGE_PIXELS {
        return Err(DecodeError::TooLarge { width, height });
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8]) -> Result<RgbImage, DecodeError> {
    let limits = clearclip_jpeg::Limits { max_side: MAX_DECODE_SIDE, max_pixels: MAX_IMAGE_PIXELS };
    let decoded = clearclip_jpeg::decode(bytes, &limits).map_err(|e| match e {
        clearclip_jpeg::JpegError::TooLarge { width, height, .. } => DecodeError::TooLarge { width, height },
        other => DecodeError::Jpeg(other),
    })?;
    let (width, height) = (decoded.width, decoded.height);
    let image = RgbImage::from_raw(width, height, decoded.rgb).ok_or_else(|| DecodeError::Other(format!("the decoded pixels do not fill {width}x{height}")))?;
    let mut image = DynamicImage::ImageRgb8(image);
    // OpenCV's `ApplyExifOrientation` and image's `apply_orientation` are the
    // same eight transforms (checked against cv2.imread in the tests).
    if let Some(orientation) = decoded.exif_orientation.and_then(Orientation::from_exif) {
        image.apply_orientation(orientation);
    }
    Ok(image.into_rgb8())
}
