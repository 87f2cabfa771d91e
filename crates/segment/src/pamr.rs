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
//!
//! Three implementations of the one definition: [`Pamr::refine`] loops over
//! the pixels on the host (the CPU backend's path); on the model's device
//! (a GPU's path, run band by band with [`Pamr::halo`] rows of context by
//! [`crate::merge`]), [`Pamr::refine_on_device`] runs three kernels
//! ([`crate::gpu_pamr`]) where the device can, else burn's tensor operations.

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::gpu_pamr;
use crate::merge::GpuMerge;
use crate::resample::Maps;
use crate::segmenter::SettingsError;

/// PAMR settings; the default is NACLIP's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pamr {
    pub iterations: usize,
    pub dilations: Vec<usize>,
}

/// More PAMR iterations than this are refused: NACLIP runs 10, each one is a
/// pass over `8 x dilations` neighbours of every pixel and class, and a
/// mistyped count would otherwise hold the device (or the page) for minutes.
pub const MAX_PAMR_ITERATIONS: usize = 100;

/// More dilations than this are refused (NACLIP uses 2): each keeps 8
/// affinities per pixel.
pub const MAX_PAMR_DILATIONS: usize = 8;

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
    /// Rows of context a band of rows needs on each side for PAMR of the
    /// band alone to equal PAMR of the whole image on the band's rows.
    ///
    /// A band's own edges are replicated as if they were the image's border,
    /// which is wrong within the largest dilation of them; each iteration
    /// carries that error one largest dilation further in.
    pub fn halo(&self) -> usize {
        self.iterations.saturating_mul(self.dilations.iter().copied().max().unwrap_or(0))
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.dilations.is_empty() || self.dilations.contains(&0) || self.dilations.len() > MAX_PAMR_DILATIONS {
            return Err(SettingsError::PamrDilations(self.dilations.clone()));
        }
        if self.iterations > MAX_PAMR_ITERATIONS {
            return Err(SettingsError::PamrIterations(self.iterations));
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

    /// [`Self::refine`] on the tensors' device: by the kernels of
    /// [`crate::gpu_pamr`] where they run and `gpu_merge` asks for them, else
    /// by [`Self::refine_tensor`]. No buffer grows beyond `budget_bytes`.
    ///
    /// # Shapes
    /// - `guide`: `[channels, rows, width]`
    /// - `masks`: `[queries, rows, width]` -> the same
    pub fn refine_on_device(&self, guide: Tensor<3>, masks: Tensor<3>, budget_bytes: usize, gpu_merge: GpuMerge) -> Tensor<3> {
        let by_kernels = match gpu_merge {
            GpuMerge::Kernels if self.iterations > 0 => gpu_pamr::refine(self, &guide, &masks, budget_bytes),
            _ => None,
        };
        by_kernels.unwrap_or_else(|| self.refine_tensor(guide, masks, budget_bytes))
    }

    /// [`Self::refine`] as tensor ops on the tensors' device. The tensors'
    /// edges are the image border (replicated).
    ///
    /// Each step gathers the neighbours of a group of offsets for a chunk of
    /// queries in one `select`, weights them and sums over the group: a few
    /// kernels per step rather than a few per neighbour. Groups and chunks
    /// are as large as `budget_bytes` per buffer allows (every offset and
    /// query at once for a small image), so no binding outgrows a browser's
    /// limits.
    ///
    /// # Shapes
    /// - `guide`: `[channels, rows, width]`
    /// - `masks`: `[queries, rows, width]` -> the same
    pub fn refine_tensor(&self, guide: Tensor<3>, masks: Tensor<3>, budget_bytes: usize) -> Tensor<3> {
        let [queries, rows, width] = masks.dims();
        let [channels, ..] = guide.dims();
        if self.iterations == 0 || rows == 0 || width == 0 || queries == 0 {
            return masks;
        }
        let pixels = rows * width;
        let offsets: Vec<(isize, isize)> = self.dilations.iter().flat_map(|&d| neighbour_offsets(d as isize)).collect();
        let floats = (budget_bytes / (4 * pixels)).max(1);
        let groups: Vec<NeighbourGroup> = offsets
            .chunks((floats / channels).clamp(1, offsets.len()))
            .map(|group| NeighbourGroup::new(group, (rows, width), &guide.device()))
            .collect();
        let weights = self.affinity_tensors(guide.reshape([channels, pixels]), &groups);
        let refine = |mut masks: Tensor<2>| {
            let chunk = masks.dims()[0];
            for _ in 0..self.iterations {
                // (m * x).sum(2), a group of neighbours at a time.
                masks = groups
                    .iter()
                    .zip(&weights)
                    .map(|(group, w)| (group.gather(masks.clone()) * w.clone()).sum_dim(1).reshape([chunk, pixels]))
                    .reduce(|sum, part| sum + part)
                    .expect("at least one group");
            }
            masks
        };
        let largest_group = groups.iter().map(|g| g.len).max().unwrap_or(1);
        let chunk = (floats / largest_group).clamp(1, queries);
        let masks = masks.reshape([queries, pixels]);
        let refined = if chunk == queries {
            refine(masks)
        } else {
            Tensor::cat((0..queries).step_by(chunk).map(|q| refine(masks.clone().narrow(0, q, chunk.min(queries - q)))).collect(), 0)
        };
        refined.reshape([queries, rows, width])
    }

    /// The soft-maxed affinity of every pixel to each neighbour, `[1,
    /// group.len, pixels]` per group ([`Self::affinities`] on the device).
    ///
    /// # Shapes
    /// - `guide`: `[channels, pixels]`
    fn affinity_tensors(&self, guide: Tensor<2>, groups: &[NeighbourGroup]) -> Vec<Tensor<3>> {
        let [channels, pixels] = guide.dims();
        let centre = guide.clone().reshape([channels, 1, pixels]);
        let centre_copies = self.dilations.len() as f32;
        let samples = 9.0 * centre_copies; // LocalStDev: 3x3 per dilation
        let sum_over_groups = |f: &dyn Fn(Tensor<3>) -> Tensor<3>| {
            groups.iter().map(|g| f(g.gather(guide.clone())).sum_dim(1)).reduce(|a, b| a + b).expect("at least one group")
        };
        // x.std(2), unbiased, over the centre (once per dilation) and the neighbours.
        let mean = (sum_over_groups(&|n| n) + centre.clone() * centre_copies) / samples;
        let squared = |x: Tensor<3>| {
            let deviation = x - mean.clone();
            deviation.clone() * deviation
        };
        let variance = sum_over_groups(&squared) + squared(centre.clone()) * centre_copies;
        let scale = (variance / (samples - 1.0)).sqrt() * 0.1 + 1e-8;
        // -mean_c(|x - x(neighbour)| / (1e-8 + 0.1 std)), then F.softmax over all neighbours.
        let affinity: Vec<Tensor<3>> = groups
            .iter()
            .map(|g| -((centre.clone() - g.gather(guide.clone())).abs() / scale.clone()).sum_dim(0) / channels as f32)
            .collect();
        let max = affinity.iter().map(|a| a.clone().max_dim(1)).reduce(|a, b| a.max_pair(b)).expect("at least one group");
        let exp: Vec<Tensor<3>> = affinity.into_iter().map(|a| (a - max.clone()).exp()).collect();
        let total = exp.iter().map(|e| e.clone().sum_dim(1)).reduce(|a, b| a + b).expect("at least one group");
        exp.into_iter().map(|e| e / total.clone()).collect()
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

/// A few neighbour offsets and, on the device, the flat index of each
/// pixel's neighbour at each of them, borders replicated
/// (`F.pad(mode='replicate')` then the neighbour's view).
struct NeighbourGroup {
    len: usize,
    /// `[len * pixels]`: for offset `k` and pixel `y * width + x`,
    /// `clamp(y + dy_k) * width + clamp(x + dx_k)`.
    index: Tensor<1, Int>,
}

impl NeighbourGroup {
    fn new(offsets: &[(isize, isize)], (rows, width): (usize, usize), device: &Device) -> Self {
        // Built on the device from two small index vectors per offset: the
        // flat index would be 8 bytes a pixel and neighbour on the host.
        let clamped = |n: usize, offset: isize| {
            let index: Vec<i64> = (0..n as isize).map(|i| (i + offset).clamp(0, n as isize - 1) as i64).collect();
            Tensor::<1, Int>::from_data(TensorData::new(index, [n]), device)
        };
        let per_offset = offsets
            .iter()
            .map(|&(dy, dx)| (clamped(rows, dy).reshape([rows, 1]) * width as i64 + clamped(width, dx).reshape([1, width])).reshape([rows * width]));
        Self { len: offsets.len(), index: Tensor::cat(per_offset.collect(), 0) }
    }

    /// `out[c, k, p] = x[c, neighbour k of p]`.
    ///
    /// # Shapes
    /// - `x`: `[channels, pixels]` -> `[channels, len, pixels]`
    fn gather(&self, x: Tensor<2>) -> Tensor<3> {
        let [channels, pixels] = x.dims();
        x.select(1, self.index.clone()).reshape([channels, self.len, pixels])
    }
}

#[cfg(test)]
mod tests {
    use clearclip_fixtures::{assert_close, test_devices, SeededRng};

    use super::*;

    /// Random guide and masks with edges, on every test device: the tensor
    /// version equals the host loop, whole and in chunks of queries.
    #[test]
    fn on_the_device_equals_on_the_host() {
        let (h, w, queries) = (29, 37, 5);
        let mut rng = SeededRng::new(11);
        // Smooth regions plus noise, so the affinities are far from uniform.
        let guide: Vec<f32> = (0..3 * h * w)
            .map(|i| if (i % w) * 2 < w + (i / w) % h { 1.0 } else { -0.5 } + 0.2 * rng.uniform(1, -1.0, 1.0)[0])
            .collect();
        let masks = rng.uniform(queries * h * w, -3.0, 3.0);
        let pamr = Pamr { iterations: 4, dilations: vec![2, 5] };
        let mut expected = Maps::from_vec(masks.clone(), queries, (h, w)).unwrap();
        pamr.refine(&Maps::from_vec(guide.clone(), 3, (h, w)).unwrap(), &mut expected);
        for (name, device) in test_devices() {
            let upload = |v: &[f32], c| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [c, h, w]), &device);
            // Everything at once; then, by tensor operations, groups of 5
            // offsets (16 = 5 + 5 + 5 + 1) and queries 3 at a time; by the
            // kernels, groups of 15 and 1 offsets, then of 3 (16 = 5 x 3 + 1)
            // with queries 3 and 2 at a time.
            for budget in [1 << 30, 4 * 15 * h * w, 4 * 3 * h * w] {
                for gpu_merge in GpuMerge::ALL {
                    let refined = pamr.refine_on_device(upload(&guide, 3), upload(&masks, queries), budget, gpu_merge);
                    let refined = pollster::block_on(refined.into_data_async()).unwrap().iter::<f32>().collect::<Vec<_>>();
                    assert_close(&format!("{name}: device PAMR ({gpu_merge:?}) with {budget} bytes a buffer vs host"), &refined, expected.as_slice(), 1e-5);
                }
            }
        }
    }

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
