//! Bilinear resampling of class maps as `F.interpolate(x, size=..., mode='bilinear')`
//! with `align_corners=False` (PyTorch `upsample_bilinear2d`): source position
//! `(d + 0.5) * in / out - 0.5`, clamped at 0, the upper tap clamped to the border.

/// Two-tap weights of one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

impl LinearTap {
    /// Bilinear value between rows `top`/`bottom` at column tap `x`, in
    /// PyTorch's order: `h0 * (w0 * a00 + w1 * a01) + h1 * (w0 * a10 + w1 * a11)`.
    #[inline]
    pub fn blend(&self, x: &LinearTap, top: &[f32], bottom: &[f32]) -> f32 {
        self.w0 * (x.w0 * top[x.i0] + x.w1 * top[x.i1]) + self.w1 * (x.w0 * bottom[x.i0] + x.w1 * bottom[x.i1])
    }
}

pub fn linear_taps(in_size: usize, out_size: usize) -> Vec<LinearTap> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|d| {
            let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(in_size - 1);
            let i1 = if i0 < in_size - 1 { i0 + 1 } else { i0 };
            let w1 = src - i0 as f32;
            LinearTap { i0, i1, w0: 1.0 - w1, w1 }
        })
        .collect()
}

/// Resize `planes` (`[channels, in_h, in_w]`) to `[channels, out_h, out_w]`
/// and add rows `row_offset..` / columns `col_offset..` of the result into
/// `dst` (`[channels, dst_h, dst_w]`) at (`dst_y`, `dst_x`), `rows x cols` of them.
/// This is the crop step of `forward_slide`: upsample to the padded crop, cut
/// the padding off, add into `preds`; only the kept pixels are computed.
#[allow(clippy::too_many_arguments)]
pub fn upsample_crop_add(
    planes: &[f32],
    channels: usize,
    (in_h, in_w): (usize, usize),
    (out_h, out_w): (usize, usize),
    (row_offset, col_offset): (usize, usize),
    (rows, cols): (usize, usize),
    dst: &mut [f32],
    (dst_h, dst_w): (usize, usize),
    (dst_y, dst_x): (usize, usize),
) {
    assert_eq!(planes.len(), channels * in_h * in_w);
    assert_eq!(dst.len(), channels * dst_h * dst_w);
    let ty = &linear_taps(in_h, out_h)[row_offset..row_offset + rows];
    let tx = &linear_taps(in_w, out_w)[col_offset..col_offset + cols];
    for c in 0..channels {
        let src = &planes[c * in_h * in_w..][..in_h * in_w];
        let out = &mut dst[c * dst_h * dst_w..][..dst_h * dst_w];
        for (r, y) in ty.iter().enumerate() {
            let line = &mut out[(dst_y + r) * dst_w + dst_x..][..cols];
            let (a, b) = (&src[y.i0 * in_w..][..in_w], &src[y.i1 * in_w..][..in_w]);
            for (o, x) in line.iter_mut().zip(tx) {
                *o += y.blend(x, a, b);
            }
        }
    }
}

/// Plain resize of `[channels, in_h, in_w]` to `[channels, out_h, out_w]`.
pub fn resize_bilinear(planes: &[f32], channels: usize, (in_h, in_w): (usize, usize), (out_h, out_w): (usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0; channels * out_h * out_w];
    upsample_crop_add(planes, channels, (in_h, in_w), (out_h, out_w), (0, 0), (out_h, out_w), &mut out, (out_h, out_w), (0, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_matches_pytorch() {
        // F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode='bilinear')
        let out = resize_bilinear(&[0., 1., 2., 3.], 1, (2, 2), (4, 4));
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn same_size_is_identity() {
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(resize_bilinear(&x, 2, (2, 3), (2, 3)), x);
    }
}
