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

/// The taps of every output position of one axis (`in_size` > 0).
pub fn linear_taps(in_size: usize, out_size: usize) -> Vec<LinearTap> {
    let in_size = in_size.max(1);
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

/// Planes of floats, `[channels, height, width]` row-major: class maps,
/// logits, or the normalised image. The buffer always holds exactly
/// `channels * height * width` values.
#[derive(Debug, Clone, PartialEq)]
pub struct Maps {
    data: Vec<f32>,
    channels: usize,
    size: (usize, usize),
}

impl Maps {
    pub fn zeros(channels: usize, (height, width): (usize, usize)) -> Self {
        Self { data: vec![0.0; channels * height * width], channels, size: (height, width) }
    }

    /// `None` unless `data` holds `channels * height * width` values.
    pub fn from_vec(data: Vec<f32>, channels: usize, (height, width): (usize, usize)) -> Option<Self> {
        (data.len() == channels * height * width).then_some(Self { data, channels, size: (height, width) })
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// `(height, width)`.
    pub fn size(&self) -> (usize, usize) {
        self.size
    }

    pub fn plane(&self, channel: usize) -> &[f32] {
        let pixels = self.size.0 * self.size.1;
        &self.data[channel * pixels..][..pixels]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

/// Where an upsampled map is added: `source` resized to `scaled`, then
/// `rows x cols` of it from `(from_y, from_x)` added into the destination at
/// `(to_y, to_x)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paste {
    pub scaled: (usize, usize),
    pub from: (usize, usize),
    pub extent: (usize, usize),
    pub to: (usize, usize),
}

/// The crop step of `forward_slide`: upsample to the padded crop, cut the
/// padding off, add into `preds`; only the kept pixels are computed.
///
/// # Shapes
/// - `source`: `[channels, in_h, in_w]`; `destination`: `[channels, dst_h, dst_w]`
///   with the same channels, and room for `paste.extent` at `paste.to`
pub fn upsample_crop_add(source: &Maps, paste: &Paste, destination: &mut Maps) {
    let (in_h, in_w) = source.size;
    let (out_h, out_w) = paste.scaled;
    let (rows, cols) = paste.extent;
    let dst_w = destination.size.1;
    let ty = &linear_taps(in_h, out_h)[paste.from.0..paste.from.0 + rows];
    let tx = &linear_taps(in_w, out_w)[paste.from.1..paste.from.1 + cols];
    let dst_pixels = destination.size.0 * dst_w;
    for c in 0..source.channels.min(destination.channels) {
        let src = source.plane(c);
        let out = &mut destination.data[c * dst_pixels..][..dst_pixels];
        for (r, y) in ty.iter().enumerate() {
            let line = &mut out[(paste.to.0 + r) * dst_w + paste.to.1..][..cols];
            let (a, b) = (&src[y.i0 * in_w..][..in_w], &src[y.i1 * in_w..][..in_w]);
            for (o, x) in line.iter_mut().zip(tx) {
                *o += y.blend(x, a, b);
            }
        }
    }
}

/// Plain bilinear resize of every plane to `size`.
pub fn resize_bilinear(source: &Maps, size: (usize, usize)) -> Maps {
    let mut out = Maps::zeros(source.channels, size);
    upsample_crop_add(source, &Paste { scaled: size, from: (0, 0), extent: size, to: (0, 0) }, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_matches_pytorch() {
        // F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode='bilinear')
        let out = resize_bilinear(&Maps::from_vec(vec![0., 1., 2., 3.], 1, (2, 2)).unwrap(), (4, 4)).into_vec();
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
        let maps = Maps::from_vec(x.clone(), 2, (2, 3)).unwrap();
        assert_eq!(resize_bilinear(&maps, (2, 3)).into_vec(), x);
    }
}
