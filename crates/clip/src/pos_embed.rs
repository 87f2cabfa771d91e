//! Resizing the patch positional embeddings to another grid, exactly as
//! `VisionTransformer.interpolate_pos_encoding` in mc-lan/ClearCLIP
//! `open_clip/transformer.py`:
//!
//! ```python
//! w0, h0 = w // patch + 0.1, h // patch + 0.1
//! F.interpolate(pos.reshape(1, n, n, dim).permute(0, 3, 1, 2),
//!               scale_factor=(w0 / n, h0 / n), mode='bicubic')
//! ```
//!
//! PyTorch sizes the output as `floor(n * scale)` and, since a scale factor is
//! given, samples at `src = (dst + 0.5) / scale - 0.5` (align_corners False):
//! the `+0.1` shifts the sampling positions slightly, so the result differs
//! from resizing to the target size. Bicubic uses a = -0.75 and clamps the
//! four taps to the border (`upsample_bicubic2d`).

use crate::InputError;

/// Cubic convolution weights with a = -0.75 (PyTorch `get_cubic_upsample_coefficients`).
fn cubic_coefficients(t: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Dense `[out_size, in_size]` matrix of the 1-D bicubic resampling that
/// PyTorch applies along one axis when called with `scale_factor = scale`.
pub fn bicubic_scale_factor_weights(in_size: usize, out_size: usize, scale: f64) -> Vec<f64> {
    let mut weights = vec![0.0; out_size * in_size];
    for dst in 0..out_size {
        // area_pixel_compute_source_index with align_corners = false; bicubic
        // does not clamp the source coordinate at zero.
        let src = (dst as f64 + 0.5) / scale - 0.5;
        let base = src.floor();
        let coefficients = cubic_coefficients(src - base);
        for (tap, c) in coefficients.iter().enumerate() {
            let index = (base as i64 - 1 + tap as i64).clamp(0, in_size as i64 - 1) as usize;
            weights[dst * in_size + index] += c;
        }
    }
    weights
}

/// Resize the `n x n` grid of patch positional embeddings for an input of
/// `height x width` pixels (already padded to a multiple of the patch size).
///
/// # Shapes
/// - `positions`: `[n * n, dim]` row-major (no class token)
/// - returns `[grid_h * grid_w, dim]` with `grid_h = height / patch`
pub fn resize_patch_positions(
    positions: &[f32],
    n: usize,
    dim: usize,
    patch: usize,
    height: usize,
    width: usize,
) -> Result<Vec<f32>, InputError> {
    let grid_error = || InputError::PositionGrid { n, height, width, patch };
    if positions.len() != n * n * dim || n == 0 || patch == 0 {
        return Err(grid_error());
    }
    let (grid_h, grid_w) = (height / patch, width / patch);
    // Reference: `if x.shape[1] != positional_embedding.shape[0]` interpolate,
    // else use as is (also for a non-square grid with n*n patches).
    if grid_h * grid_w == n * n {
        return Ok(positions.to_vec());
    }
    let (h0, w0) = (grid_h as f64 + 0.1, grid_w as f64 + 0.1);
    let (scale_h, scale_w) = (h0 / n as f64, w0 / n as f64);
    // floor(n * scale) as PyTorch computes it; equals grid_h for any sane n.
    let (out_h, out_w) = ((n as f64 * scale_h).floor() as usize, (n as f64 * scale_w).floor() as usize);
    // The reference asserts `int(w0) == output size`.
    if (out_h, out_w) != (grid_h, grid_w) {
        return Err(grid_error());
    }
    let wy = bicubic_scale_factor_weights(n, out_h, scale_h);
    let wx = bicubic_scale_factor_weights(n, out_w, scale_w);
    // Separable: first along x ([n, out_w, dim]), then along y.
    let mut along_x = vec![0.0f64; n * out_w * dim];
    for row in 0..n {
        for ox in 0..out_w {
            let acc = &mut along_x[(row * out_w + ox) * dim..][..dim];
            for ix in 0..n {
                let w = wx[ox * n + ix];
                if w != 0.0 {
                    let src = &positions[(row * n + ix) * dim..][..dim];
                    for (a, &s) in acc.iter_mut().zip(src) {
                        *a += w * s as f64;
                    }
                }
            }
        }
    }
    let mut out = vec![0.0f32; out_h * out_w * dim];
    for oy in 0..out_h {
        for ox in 0..out_w {
            let dst = &mut out[(oy * out_w + ox) * dim..][..dim];
            let mut acc = vec![0.0f64; dim];
            for iy in 0..n {
                let w = wy[oy * n + iy];
                if w != 0.0 {
                    let src = &along_x[(iy * out_w + ox) * dim..][..dim];
                    for (a, &s) in acc.iter_mut().zip(src) {
                        *a += w * s;
                    }
                }
            }
            for (d, a) in dst.iter_mut().zip(acc) {
                *d = a as f32;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_rows_sum_to_one() {
        for (n, out, scale) in [(14, 28, 28.1 / 14.0), (4, 6, 6.1 / 4.0), (24, 7, 7.1 / 24.0)] {
            let w = bicubic_scale_factor_weights(n, out, scale);
            for row in w.chunks(n) {
                assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn same_patch_count_is_returned_unchanged() {
        let p: Vec<f32> = (0..4 * 4 * 3).map(|i| i as f32).collect();
        // 2 x 8 grid has 16 patches = 4 x 4: the reference skips interpolation.
        assert_eq!(resize_patch_positions(&p, 4, 3, 16, 32, 128), Ok(p.clone()));
        assert!(resize_patch_positions(&p[1..], 4, 3, 16, 32, 128).is_err(), "a table of the wrong size is refused");
    }
}
