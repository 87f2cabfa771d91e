//! PAMR, pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020), as the
//! NACLIP and SCLIP segmentors apply it to the class logits: `pamr.py`
//! (`PAMR`, `LocalAffinityAbs`, `LocalAffinityCopy`, `LocalStDev`) in
//! sinahmr/NACLIP, called from `NACLIP.predict` with `pamr_steps=10`,
//! `pamr_stride=(8, 16)`.
//!
//! Each pixel looks at its 8 neighbours at each dilation `d` (offsets of
//! `-d, 0, d`, borders replicated). Affinities come from the image once:
//! `-mean_c(|x_c - x_c(neighbour)| / (1e-8 + 0.1 * std_c))`, with `std_c` the
//! unbiased standard deviation of channel `c` over the pixel and its
//! neighbours at every dilation (the centre counted once per dilation),
//! soft-maxed over the neighbours. Then, `iterations` times, every mask value
//! becomes the affinity-weighted sum of its neighbours' values.

use serde::{Deserialize, Serialize};

use crate::resample::Maps;
use crate::segmenter::SettingsError;

/// PAMR settings; the default is NACLIP's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pamr {
    pub iterations: usize,
    pub dilations: Vec<usize>,
}

impl Default for Pamr {
    fn default() -> Self {
        Self { iterations: 10, dilations: vec![8, 16] }
    }
}

/// The 8 neighbour offsets `(dy, dx)` of one dilation, in the kernel order
/// of `LocalAffinity._init_aff` (row by row, centre skipped).
fn neighbour_offsets(d: isize) -> [(isize, isize); 8] {
    [(-d, -d), (-d, 0), (-d, d), (0, -d), (0, d), (d, -d), (d, 0), (d, d)]
}

impl Pamr {
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.dilations.is_empty() || self.dilations.contains(&0) {
            return Err(SettingsError::PamrDilations(self.dilations.clone()));
        }
        Ok(())
    }

    /// Refine `masks` in place, guided by `image`.
    ///
    /// # Shapes
    /// - `image`: `[channels, height, width]` (NACLIP: the normalised network
    ///   input resized bilinearly to the output size)
    /// - `masks`: `[classes, height, width]`
    pub fn refine(&self, guide: &Maps, masks: &mut Maps) {
        let (height, width) = masks.size();
        let pixels = height * width;
        debug_assert_eq!(guide.size(), masks.size(), "PAMR's guide and masks differ in size");
        if self.iterations == 0 || pixels == 0 || guide.size() != masks.size() {
            return;
        }
        let (image, image_channels) = (guide.as_slice(), guide.channels());
        let classes = masks.channels();
        let masks = masks.as_mut_slice();
        let offsets: Vec<(isize, isize)> = self.dilations.iter().flat_map(|&d| neighbour_offsets(d as isize)).collect();
        // Index of neighbour `k` of every pixel, borders replicated (F.pad mode='replicate').
        let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
        let neighbour = |y: usize, x: usize, (dy, dx): (isize, isize)| {
            clamp(y as isize + dy, height) * width + clamp(x as isize + dx, width)
        };

        let affinity = self.affinities(image, image_channels, (height, width), &offsets, &neighbour);

        let mut next = vec![0.0f32; masks.len()];
        let k = offsets.len();
        for _ in 0..self.iterations {
            for c in 0..classes {
                let src = &masks[c * pixels..][..pixels];
                let dst = &mut next[c * pixels..][..pixels];
                for y in 0..height {
                    for x in 0..width {
                        let p = y * width + x;
                        let weights = &affinity[p * k..][..k];
                        // (m * x).sum(2)
                        dst[p] = offsets.iter().zip(weights).map(|(&o, &w)| src[neighbour(y, x, o)] * w).sum();
                    }
                }
            }
            masks.copy_from_slice(&next);
        }
    }

    /// Soft-maxed affinities of every pixel to its neighbours, `[pixels, neighbours]`.
    fn affinities(
        &self,
        image: &[f32],
        channels: usize,
        (height, width): (usize, usize),
        offsets: &[(isize, isize)],
        neighbour: &dyn Fn(usize, usize, (isize, isize)) -> usize,
    ) -> Vec<f32> {
        let pixels = height * width;
        let k = offsets.len();
        let samples = (9 * self.dilations.len()) as f32; // LocalStDev: 3x3 per dilation
        let mut affinity = vec![0.0f32; pixels * k];
        let mut std = vec![0.0f32; channels];
        for y in 0..height {
            for x in 0..width {
                let p = y * width + x;
                for (c, s) in std.iter_mut().enumerate() {
                    let plane = &image[c * pixels..][..pixels];
                    let centre = plane[p];
                    // Centre once per dilation, then the neighbours (x.std(2), unbiased).
                    let values = || {
                        std::iter::repeat_n(centre, self.dilations.len()).chain(offsets.iter().map(|&o| plane[neighbour(y, x, o)]))
                    };
                    let mean = values().sum::<f32>() / samples;
                    let var = values().map(|v| (v - mean) * (v - mean)).sum::<f32>() / (samples - 1.0);
                    *s = var.sqrt();
                }
                let row = &mut affinity[p * k..][..k];
                for (a, &o) in row.iter_mut().zip(offsets) {
                    let q = neighbour(y, x, o);
                    let sum: f32 = (0..channels)
                        .map(|c| -(image[c * pixels + p] - image[c * pixels + q]).abs() / (1e-8 + 0.1 * std[c]))
                        .sum();
                    *a = sum / channels as f32;
                }
                // F.softmax(x, 2)
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0;
                for a in row.iter_mut() {
                    *a = (*a - max).exp();
                    total += *a;
                }
                row.iter_mut().for_each(|a| *a /= total);
            }
        }
        affinity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flat_image_averages_neighbours_uniformly() {
        // Constant image: every affinity is equal (1/16), so one step is the
        // plain mean of the 16 replicated-border neighbours.
        let (h, w) = (5, 6);
        let image = Maps::from_vec(vec![0.3f32; 3 * h * w], 3, (h, w)).unwrap();
        let original: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
        let mut masks = Maps::from_vec(original.clone(), 1, (h, w)).unwrap();
        let pamr = Pamr { iterations: 1, dilations: vec![1, 2] };
        pamr.refine(&image, &mut masks);
        let mask = masks.into_vec();
        let at = |y: isize, x: isize| original[(y.clamp(0, h as isize - 1) * w as isize + x.clamp(0, w as isize - 1)) as usize];
        let (y, x) = (2isize, 3isize);
        let expected: f32 = [1isize, 2]
            .iter()
            .flat_map(|&d| neighbour_offsets(d))
            .map(|(dy, dx)| at(y + dy, x + dx))
            .sum::<f32>()
            / 16.0;
        assert!((mask[(y * w as isize + x) as usize] - expected).abs() < 1e-4);
    }

    #[test]
    fn an_edge_stops_the_mask_from_leaking_across() {
        // Left half dark, right half bright; the mask starts as 1 on the left.
        let (h, w) = (8, 8);
        let image: Vec<f32> = (0..3 * h * w).map(|i| if i % w < w / 2 { -1.0 } else { 1.0 }).collect();
        let mask: Vec<f32> = (0..h * w).map(|i| if i % w < w / 2 { 1.0 } else { 0.0 }).collect();
        let mut masks = Maps::from_vec(mask, 1, (h, w)).unwrap();
        Pamr { iterations: 10, dilations: vec![1] }.refine(&Maps::from_vec(image, 3, (h, w)).unwrap(), &mut masks);
        let mask = masks.into_vec();
        assert!(mask[3 * w + 1] > 0.99 && mask[3 * w + 6] < 0.01, "{mask:?}");
    }
}
