//! Bilinear resampling as `F.interpolate(x, size=..., mode='bilinear')` with
//! `align_corners=False` (PyTorch `upsample_bilinear2d`): source position
//! `(d + 0.5) * in / out - 0.5`, clamped at 0, the upper tap clamped to the
//! border. The taps are computed here; [`crate::merge`] applies them on the
//! device, columns first, then rows, in PyTorch's order
//! `h0 * (w0 * a00 + w1 * a01) + h1 * (w0 * a10 + w1 * a11)`, and
//! [`bilinear`] on the host, in the same order.

/// Two-tap weights of one axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: f32,
    pub w1: f32,
}

impl LinearTap {
    /// `w0 * a + w1 * b`: `a` and `b` the values at taps `i0` and `i1`.
    #[inline(always)]
    pub fn mix(&self, a: f32, b: f32) -> f32 {
        self.w0 * a + self.w1 * b
    }

    /// The value at this position of `line`, resampled along it.
    #[inline(always)]
    pub fn sample(&self, line: &[f32]) -> f32 {
        self.mix(line[self.i0], line[self.i1])
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

/// One output value from the two source rows `upper` (tap `row.i0`) and
/// `lower` (`row.i1`), in PyTorch's order.
#[inline]
pub(crate) fn bilinear(row: &LinearTap, column: &LinearTap, upper: &[f32], lower: &[f32]) -> f32 {
    row.mix(column.sample(upper), column.sample(lower))
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

    /// Every plane resized to `(height, width)` on the host (the CPU backend's
    /// PAMR inputs; a GPU resizes band by band in [`crate::merge::classify`]).
    pub fn resized(&self, (height, width): (usize, usize)) -> Maps {
        let (in_h, in_w) = self.size;
        let rows = linear_taps(in_h, height);
        let columns = linear_taps(in_w, width);
        let mut data = Vec::with_capacity(self.channels * height * width);
        for c in 0..self.channels {
            let plane = self.plane(c);
            for row in &rows {
                let (upper, lower) = (&plane[row.i0 * in_w..][..in_w], &plane[row.i1 * in_w..][..in_w]);
                data.extend(columns.iter().map(|column| bilinear(row, column, upper, lower)));
            }
        }
        Maps { data, channels: self.channels, size: (height, width) }
    }
}
