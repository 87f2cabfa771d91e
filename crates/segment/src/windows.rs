//! Sliding-window crops and their padding. Reference: `forward_slide` and
//! `compute_padsize` in mc-lan/ClearCLIP `clearclip_segmentor.py`.

/// One crop of the (resized) image, and the padding that makes its sides
/// multiples of the patch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub width: usize,
    pub height: usize,
    pub pad_left: usize,
    pub pad_top: usize,
    pub pad_right: usize,
    pub pad_bottom: usize,
}

impl Window {
    pub fn padded_width(&self) -> usize {
        self.width + self.pad_left + self.pad_right
    }
    pub fn padded_height(&self) -> usize {
        self.height + self.pad_top + self.pad_bottom
    }
}

/// `compute_padsize`: (left, right) or (top, bottom) padding of one side.
fn pad(size: usize, patch: usize) -> (usize, usize) {
    if size.is_multiple_of(patch) {
        return (0, 0);
    }
    let total = patch - size % patch;
    (total / 2, total - total / 2)
}

/// The windows `forward_slide` visits, row by row; the last one in each
/// direction is flush with the border. None for a zero crop or stride.
pub fn sliding_windows(width: usize, height: usize, crop: usize, stride: usize, patch: usize) -> Vec<Window> {
    if crop == 0 || stride == 0 {
        return Vec::new(); // refused earlier with a message (`SegmentParams::validate`)
    }
    let grids = |size: usize| (size + stride).saturating_sub(crop + 1) / stride + 1;
    let mut windows = Vec::new();
    for h_idx in 0..grids(height) {
        for w_idx in 0..grids(width) {
            let y2 = (h_idx * stride + crop).min(height);
            let x2 = (w_idx * stride + crop).min(width);
            let y = y2.saturating_sub(crop);
            let x = x2.saturating_sub(crop);
            let (pad_left, pad_right) = pad(x2 - x, patch);
            let (pad_top, pad_bottom) = pad(y2 - y, patch);
            windows.push(Window { x, y, width: x2 - x, height: y2 - y, pad_left, pad_top, pad_right, pad_bottom });
        }
    }
    windows
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct port of the reference loop, to compare with.
    fn reference(w_img: i64, h_img: i64, crop: i64, stride: i64) -> Vec<(i64, i64, i64, i64)> {
        let h_grids = (h_img - crop + stride - 1).max(0) / stride + 1;
        let w_grids = (w_img - crop + stride - 1).max(0) / stride + 1;
        let mut out = vec![];
        for h in 0..h_grids {
            for w in 0..w_grids {
                let (y1, x1) = (h * stride, w * stride);
                let (y2, x2) = ((y1 + crop).min(h_img), (x1 + crop).min(w_img));
                out.push(((x2 - crop).max(0), (y2 - crop).max(0), x2, y2));
            }
        }
        out
    }

    #[test]
    fn matches_reference_loop() {
        for (w, h, crop, stride) in [(673, 448, 448, 224), (448, 448, 448, 224), (2048, 256, 448, 224), (150, 100, 72, 40), (30, 20, 448, 224), (449, 900, 448, 224)] {
            let ours: Vec<_> = sliding_windows(w, h, crop, stride, 16)
                .iter()
                .map(|r| (r.x as i64, r.y as i64, (r.x + r.width) as i64, (r.y + r.height) as i64))
                .collect();
            assert_eq!(ours, reference(w as i64, h as i64, crop as i64, stride as i64), "{w}x{h}");
        }
    }

    #[test]
    fn pads_like_compute_padsize() {
        let w = sliding_windows(150, 100, 72, 40, 16)[0];
        // 72 % 16 = 8 -> pad 8: 4 left, 4 right
        assert_eq!((w.pad_left, w.pad_right, w.pad_top, w.pad_bottom), (4, 4, 4, 4));
        let w = sliding_windows(30, 21, 448, 224, 16)[0];
        // 30 -> 32 (1, 1); 21 -> 32 (5, 6)
        assert_eq!((w.pad_left, w.pad_right, w.pad_top, w.pad_bottom), (1, 1, 5, 6));
    }
}
