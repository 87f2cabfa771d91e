//! Pictures of a [`Segmentation`]: the image with coloured classes and a
//! legend, and a per-class probability heatmap (viridis, a perceptual map).

use font8x8::{UnicodeFonts, BASIC_FONTS, LATIN_FONTS};
use image::{DynamicImage, GrayImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};

use crate::segmenter::Segmentation;

/// Distinct colours for classes (Tableau 20 order: strong colours first).
pub const PALETTE: [[u8; 3]; 20] = [
    [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
    [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
    [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
];

/// Colour of class `index` (the palette repeats, slightly darker each round).
pub fn class_color(index: usize) -> [u8; 3] {
    let base = PALETTE[index % PALETTE.len()];
    let round = (index / PALETTE.len()) as u32;
    base.map(|c| (c as u32 * 4 / (4 + round)) as u8)
}

/// The label map as colours, `[height, width]` RGBA with the given alpha.
pub fn label_colors(seg: &Segmentation, alpha: u8) -> RgbaImage {
    RgbaImage::from_fn(seg.width, seg.height, |x, y| {
        let c = class_color(seg.labels[(y * seg.width + x) as usize] as usize);
        Rgba([c[0], c[1], c[2], alpha])
    })
}

/// `image` blended with the class colours (`opacity` in 0..=1), with a legend
/// (colour, name, share of pixels) drawn in the top-left corner.
/// `None` unless `image` is the segmented image (same size).
pub fn overlay(image: &RgbImage, seg: &Segmentation, opacity: f32) -> Option<RgbImage> {
    if image.dimensions() != (seg.width, seg.height) || seg.labels.len() != (seg.width * seg.height) as usize {
        return None;
    }
    let mut out = image.clone();
    for (x, y, p) in out.enumerate_pixels_mut() {
        let c = class_color(seg.labels[(y * seg.width + x) as usize] as usize);
        for k in 0..3 {
            p[k] = (p[k] as f32 * (1.0 - opacity) + c[k] as f32 * opacity).round() as u8;
        }
    }
    draw_legend(&mut out, seg);
    Some(out)
}

/// The probability map of class `class` in viridis, at the size of the
/// result's probability maps ([`Segmentation::probs_size`]).
pub fn heatmap(seg: &Segmentation, class: usize) -> RgbImage {
    let (width, height) = seg.probs_size();
    let plane = &seg.probs[class * (width * height) as usize..][..(width * height) as usize];
    RgbImage::from_fn(width, height, |x, y| {
        let p = plane[(y * width + x) as usize].clamp(0.0, 1.0);
        let c = colorous::VIRIDIS.eval_continuous(p as f64);
        Rgb([c.r, c.g, c.b])
    })
}

const GLYPH: u32 = 8;

fn glyph(ch: char) -> [u8; 8] {
    BASIC_FONTS.get(ch).or_else(|| LATIN_FONTS.get(ch)).or_else(|| BASIC_FONTS.get('?')).unwrap_or([0; 8])
}

fn draw_text(img: &mut RgbImage, text: &str, x0: u32, y0: u32, scale: u32, color: [u8; 3]) {
    for (i, ch) in text.chars().enumerate() {
        let rows = glyph(ch);
        for (gy, row) in rows.iter().enumerate() {
            for gx in 0..GLYPH {
                if row >> gx & 1 == 1 {
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let x = x0 + (i as u32 * GLYPH + gx) * scale + sx;
                            let y = y0 + gy as u32 * scale + sy;
                            if x < img.width() && y < img.height() {
                                img.put_pixel(x, y, Rgb(color));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn draw_legend(img: &mut RgbImage, seg: &Segmentation) {
    let scale = (img.width().min(img.height()) / 300).clamp(1, 4);
    let line = (GLYPH + 4) * scale;
    let shares = seg.class_shares();
    let entries: Vec<String> = seg
        .class_names
        .iter()
        .zip(&shares)
        .map(|(name, share)| format!("{name} {:.0}%", share * 100.0))
        .collect();
    let text_w = entries.iter().map(|e| e.chars().count() as u32).max().unwrap_or(0) * GLYPH * scale;
    let (box_w, box_h) = (text_w + line + 3 * scale * 2, entries.len() as u32 * line + 4 * scale);
    for y in 0..box_h.min(img.height()) {
        for x in 0..box_w.min(img.width()) {
            let p = img.get_pixel_mut(x, y);
            for k in 0..3 {
                p[k] = (p[k] as u32 * 2 / 5) as u8;
            }
        }
    }
    for (i, entry) in entries.iter().enumerate() {
        let y = 2 * scale + i as u32 * line;
        let c = class_color(i);
        for dy in 0..GLYPH * scale {
            for dx in 0..GLYPH * scale {
                let (x, yy) = (3 * scale + dx, y + dy);
                if x < img.width() && yy < img.height() {
                    img.put_pixel(x, yy, Rgb(c));
                }
            }
        }
        draw_text(img, entry, 3 * scale + line, y, scale, [255, 255, 255]);
    }
}

/// The label map as an 8-bit grey image (class index per pixel).
pub fn labels_image(seg: &Segmentation) -> Option<GrayImage> {
    GrayImage::from_raw(seg.width, seg.height, seg.labels.clone())
}

/// PNG bytes of an image: the CLI's files and the page's downloads.
pub fn png(image: impl Into<DynamicImage>) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image.into().write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)?;
    Ok(bytes)
}

/// Class maps larger than this many pixels are shown sampled (see
/// [`display_stride`]): a 12-megapixel photo's maps are 48 MB a class.
pub const DISPLAY_MAX_PIXELS: u64 = 1 << 21;

/// The smallest sampling step that brings `width x height` within
/// [`DISPLAY_MAX_PIXELS`].
pub fn display_stride(width: u32, height: u32) -> usize {
    let sampled = |s: u32| width.div_ceil(s) as u64 * height.div_ceil(s) as u64;
    let mut stride = 1;
    while sampled(stride) > DISPLAY_MAX_PIXELS {
        stride += 1;
    }
    stride as usize
}
