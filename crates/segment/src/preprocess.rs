//! Image preprocessing of the reference test pipeline: mmseg
//! `Resize(scale=(2048, 448), keep_ratio=True)` (mmcv `imrescale`, OpenCV
//! bilinear on 8-bit pixels), then `SegDataPreProcessor` mean/std.

use image::RgbImage;

use crate::resample::Maps;
use crate::rows::for_each_chunk_mut;

/// OpenAI CLIP pixel mean and std on the 0-255 scale (`clearclip_segmentor.py`).
pub const CLIP_MEAN: [f32; 3] = [122.771, 116.746, 104.094];
pub const CLIP_STD: [f32; 3] = [68.501, 66.632, 70.323];

/// Output size of mmcv `rescale_size(old, scale=(long_cap, short_side))`:
/// `factor = min(long_cap / long, short_side / short)`, then `int(x * factor + 0.5)`.
pub fn rescaled_size(width: u32, height: u32, short_side: u32, long_cap: u32) -> (u32, u32) {
    let (long, short) = (width.max(height) as f64, width.min(height) as f64);
    let factor = (long_cap as f64 / long).min(short_side as f64 / short);
    let scale = |x: u32| ((x as f64 * factor + 0.5) as u32).max(1);
    (scale(width), scale(height))
}

/// One axis of OpenCV's `INTER_LINEAR` coefficients: source index and the two
/// weights in 11-bit fixed point (`INTER_RESIZE_COEF_BITS`).
struct Taps {
    index: Vec<i64>,
    weights: Vec<[i32; 2]>,
}

/// `cv::resize` coefficient setup (imgproc/src/resize.cpp): the source position
/// `(d + 0.5) * scale - 0.5` in float; along x, positions outside the image are
/// clamped with weight (1, 0); along y they are not (the rows are clamped later).
fn taps(src: usize, dst: usize, clamp_weights: bool) -> Taps {
    let scale = 1.0 / (dst as f64 / src as f64);
    let mut index = Vec::with_capacity(dst);
    let mut weights = Vec::with_capacity(dst);
    for d in 0..dst {
        let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
        let mut s = f.floor() as i64;
        f -= s as f32;
        if clamp_weights && s < 0 {
            f = 0.0;
            s = 0;
        }
        if clamp_weights && s >= src as i64 - 1 {
            f = 0.0;
            s = src as i64 - 1;
        }
        let fixed = |c: f32| (c * 2048.0).round_ties_even() as i32;
        index.push(s);
        weights.push([fixed(1.0 - f), fixed(f)]);
    }
    Taps { index, weights }
}

/// Bilinear resize bit-exact with `cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)`
/// on 8-bit images (checked against OpenCV in the tests). The vertical pass
/// reproduces OpenCV's SIMD rounding (`VResizeLinearVec_32s8u`). Each pass
/// runs row by row on all cores where there are threads.
pub fn resize_like_opencv(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let (dst_w, dst_h) = (width as usize, height as usize);
    let xs = taps(src_w, dst_w, true);
    let ys = taps(src_h, dst_h, false);
    let src = image.as_raw();
    // Horizontal pass of every source row: [src_h, dst_w * 3] in fixed point.
    let mut rows = vec![0i32; src_h * dst_w * 3];
    for_each_chunk_mut(&mut rows, dst_w * 3, |y, out| {
        let line = &src[y * src_w * 3..][..src_w * 3];
        for x in 0..dst_w {
            let s0 = xs.index[x] as usize;
            let s1 = (s0 + 1).min(src_w - 1);
            let [a0, a1] = xs.weights[x];
            for c in 0..3 {
                out[x * 3 + c] = line[s0 * 3 + c] as i32 * a0 + line[s1 * 3 + c] as i32 * a1;
            }
        }
    });
    let mut resized = RgbImage::new(width, height);
    let clamp_row = |r: i64| r.clamp(0, src_h as i64 - 1) as usize;
    for_each_chunk_mut(&mut resized, dst_w * 3, |y, out| {
        let r0 = &rows[clamp_row(ys.index[y]) * dst_w * 3..][..dst_w * 3];
        let r1 = &rows[clamp_row(ys.index[y] + 1) * dst_w * 3..][..dst_w * 3];
        let [b0, b1] = ys.weights[y];
        for (i, o) in out.iter_mut().enumerate() {
            // (mul_hi(S0 >> 4, b0) + mul_hi(S1 >> 4, b1) + 2) >> 2, saturated
            let v = (((r0[i] >> 4) * b0) >> 16) + (((r1[i] >> 4) * b1) >> 16);
            *o = ((v + 2) >> 2).clamp(0, 255) as u8;
        }
    });
    resized
}

/// Channel-first normalised pixels: `(x - mean) / std`, a channel per core
/// where there are threads.
///
/// # Shapes
/// - returns `[3, height, width]` row-major
pub fn normalize(image: &RgbImage) -> Maps {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut maps = Maps::zeros(3, (h, w));
    let pixels = image.as_raw();
    for_each_chunk_mut(maps.as_mut_slice(), w * h, |c, plane| {
        for (out, p) in plane.iter_mut().zip(pixels.chunks_exact(3)) {
            *out = (p[c] as f32 - CLIP_MEAN[c]) / CLIP_STD[c];
        }
    });
    maps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescaled_size_matches_mmcv() {
        // chelsea 451 x 300 -> short side 448: 451 * 448 / 300 = 673.49
        assert_eq!(rescaled_size(451, 300, 448, 2048), (673, 448));
        // a panorama is capped by the long side: factor = 2048 / 4000
        assert_eq!(rescaled_size(4000, 500, 448, 2048), (2048, 256));
        assert_eq!(rescaled_size(300, 451, 448, 2048), (448, 673));
    }

    #[test]
    fn identity_size_is_a_copy() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 9]));
        assert_eq!(resize_like_opencv(&img, 7, 5), img);
    }
}
