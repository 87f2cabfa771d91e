//! PAMR ([`crate::pamr`]) on a GPU as three cubecl kernels, in place of some
//! sixteen kinds of burn's tensor operations that gathered every neighbour
//! of every pixel into memory (`[queries, neighbours, pixels]` a step):
//!
//! - `local_scale`: a unit per channel and pixel, `1e-8 + 0.1 std` of the
//!   pixel (once per dilation) and its neighbours (`LocalStDev`);
//! - `affinities`: a unit per pixel, its affinity to each neighbour soft-maxed
//!   over all of them (`LocalAffinityAbs`, then `F.softmax`), written for one
//!   group of neighbours at a time;
//! - `propagate`: a unit per query and pixel, one step for one group of
//!   neighbours (`(m * x).sum(2)`); the first group starts the sum, the others
//!   add to it in the neighbours' order.
//!
//! Each unit does [`Pamr::refine`]'s arithmetic for its pixel in the same
//! order (the host's loop is the reference in the tests). The kernels read
//! the neighbours where they lie, so nothing grows with the neighbour count
//! but the affinities, which are kept in groups of neighbours no larger than
//! the buffer budget, as the queries are refined in chunks no larger than it.
//! Their shapes are run-time arguments: a GPU compiles each once, whatever the
//! image and however many queries and dilations.
//!
//! They need cubecl tensors (see [`crate::gpu_merge`]); [`refine`] answers
//! `None` for any other and the caller runs the tensor operations instead.

use burn::tensor::Tensor;

use crate::pamr::Pamr;

/// `masks` refined by `pamr` guided by `guide`, by the kernels, or `None`
/// where they cannot run (see the module's doc; also tensors that are not f32,
/// or a budget too small for one neighbour's affinities).
///
/// # Shapes
/// - `guide`: `[channels, rows, width]`
/// - `masks`: `[queries, rows, width]` -> the same
pub(crate) fn refine(pamr: &Pamr, guide: &Tensor<3>, masks: &Tensor<3>, budget_bytes: usize) -> Option<Tensor<3>> {
    #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
    {
        cube::refine(pamr, guide, masks, budget_bytes)
    }
    #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
    {
        let _ = (pamr, guide, masks, budget_bytes);
        None
    }
}

#[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
mod cube {
    use burn::tensor::{self as burn_tensor, DType, Shape};
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeBackend;
    use cubecl::prelude::*;
    use crate::gpu_merge::cube::{empty, launch_over, upload};
    use crate::pamr::Pamr;

    /// The flat index of neighbour `k` of the pixel at `(y, x)`: neighbour
    /// `k % 8` (row by row, the centre skipped: `LocalAffinity._init_aff`) at
    /// the dilation `dilations[k / 8]`, the borders replicated.
    #[cube]
    fn neighbour(dilations: &Tensor<u32>, k: u32, y: u32, x: u32, rows: u32, width: u32) -> u32 {
        let d = dilations[(k / 8) as usize];
        let mut j = k % 8;
        if j >= 4 {
            j += 1;
        }
        let (row, column) = (j / 3, j % 3);
        let mut ny = y;
        if row == 0 {
            ny = y.saturating_sub(d);
        } else if row == 2 {
            ny = u32::min(y + d, rows - 1);
        }
        let mut nx = x;
        if column == 0 {
            nx = x.saturating_sub(d);
        } else if column == 2 {
            nx = u32::min(x + d, width - 1);
        }
        ny * width + nx
    }

    /// `x[c, p]` of a `[channels, rows, width]` tensor, `p` a flat pixel index.
    #[cube]
    fn at(x: &Tensor<f32>, c: u32, p: u32, width: u32) -> f32 {
        x[(c as usize) * x.stride(0) + ((p / width) as usize) * x.stride(1) + ((p % width) as usize) * x.stride(2)]
    }

    /// One unit per channel and pixel: `1e-8 + 0.1 std`, the unbiased standard
    /// deviation of the channel over the pixel, counted once per dilation, and
    /// its neighbours ([`Pamr::refine`]'s sums, in its order).
    #[cube(launch)]
    fn local_scale(guide: &Tensor<f32>, dilations: &Tensor<u32>, scale: &mut Tensor<f32>, rows: u32, width: u32) {
        let at_out = ABSOLUTE_POS;
        if at_out >= scale.len() {
            terminate!();
        }
        let pixels = rows * width;
        let (c, p) = (at_out as u32 / pixels, at_out as u32 % pixels);
        let (y, x) = (p / width, p % width);
        let copies = dilations.len() as u32;
        let neighbours = 8 * copies;
        let samples = (9 * copies) as f32;
        let centre = at(guide, c, p, width);
        let mut sum = f32::new(0.0);
        for _copy in 0..copies {
            sum += centre;
        }
        for k in 0..neighbours {
            sum += at(guide, c, neighbour(dilations, k, y, x, rows, width), width);
        }
        let mean = sum / samples;
        let mut squares = f32::new(0.0);
        for _copy in 0..copies {
            squares += (centre - mean) * (centre - mean);
        }
        for k in 0..neighbours {
            let v = at(guide, c, neighbour(dilations, k, y, x, rows, width), width);
            squares += (v - mean) * (v - mean);
        }
        scale[at_out] = 1e-8 + 0.1 * f32::sqrt(squares / (samples - 1.0));
    }

    /// `-mean_c(|x_c - x_c(neighbour k)| / scale_c)` at pixel `p`.
    #[cube]
    fn affinity(guide: &Tensor<f32>, scale: &Tensor<f32>, dilations: &Tensor<u32>, k: u32, p: u32, rows: u32, width: u32) -> f32 {
        let q = neighbour(dilations, k, p / width, p % width, rows, width);
        let channels = guide.shape(0) as u32;
        let pixels = (rows * width) as usize;
        let mut sum = f32::new(0.0);
        for c in 0..channels {
            sum += -f32::abs(at(guide, c, p, width) - at(guide, c, q, width)) / scale[c as usize * pixels + p as usize];
        }
        sum / channels as f32
    }

    /// One unit per pixel: its affinities soft-maxed over all `8 x dilations`
    /// neighbours, written for neighbours `first..first + weights.shape(0)`
    /// (`weights`: `[group, pixels]`). The affinities are recomputed in each
    /// pass rather than kept in an array of a length known only at run time.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn affinities(guide: &Tensor<f32>, scale: &Tensor<f32>, dilations: &Tensor<u32>, weights: &mut Tensor<f32>, first: u32, rows: u32, width: u32) {
        let p = ABSOLUTE_POS as u32;
        let pixels = rows * width;
        if p >= pixels {
            terminate!();
        }
        let neighbours = 8 * dilations.len() as u32;
        // (WGSL has no infinity literal: the first neighbour starts the max.)
        let mut largest = affinity(guide, scale, dilations, 0, p, rows, width);
        for k in 1..neighbours {
            largest = f32::max(largest, affinity(guide, scale, dilations, k, p, rows, width));
        }
        let mut total = f32::new(0.0);
        for k in 0..neighbours {
            total += f32::exp(affinity(guide, scale, dilations, k, p, rows, width) - largest);
        }
        let group = weights.shape(0) as u32;
        for i in 0..group {
            let e = f32::exp(affinity(guide, scale, dilations, first + i, p, rows, width) - largest);
            weights[(i * pixels + p) as usize] = e / total;
        }
    }

    /// One unit per query and pixel: `out[q, p]` (0 when `accumulate` is 0)
    /// plus `weights[i, p] * masks[first_query + q, neighbour first + i of p]`
    /// for each neighbour of the group, in order (`masks`: `[queries, pixels]`).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn propagate(
        masks: &Tensor<f32>,
        weights: &Tensor<f32>,
        dilations: &Tensor<u32>,
        out: &mut Tensor<f32>,
        first_query: u32,
        first: u32,
        accumulate: u32,
        rows: u32,
        width: u32,
    ) {
        let at_out = ABSOLUTE_POS;
        if at_out >= out.len() {
            terminate!();
        }
        let pixels = rows * width;
        let (q, p) = (at_out as u32 / pixels, at_out as u32 % pixels);
        let (y, x) = (p / width, p % width);
        let mut sum = f32::new(0.0);
        if accumulate != 0 {
            sum = out[at_out];
        }
        let group = weights.shape(0) as u32;
        for i in 0..group {
            let n = neighbour(dilations, first + i, y, x, rows, width);
            sum += weights[(i * pixels + p) as usize] * masks[((first_query + q) as usize) * masks.stride(0) + (n as usize) * masks.stride(1)];
        }
        out[at_out] = sum;
    }

    pub(super) fn refine(pamr: &Pamr, guide: &burn_tensor::Tensor<3>, masks: &burn_tensor::Tensor<3>, budget_bytes: usize) -> Option<burn_tensor::Tensor<3>> {
        let [queries, rows, width] = masks.dims();
        let [channels, ..] = guide.dims();
        // `[queries, pixels]`; each chunk's first step reads its queries where they are.
        let masks = masks.clone().reshape([queries, rows * width]);
        let (guide, masks) = (guide.clone().try_into_primitive::<CubeBackend>().ok()?, masks.try_into_primitive::<CubeBackend>().ok()?);
        let pixels = rows * width;
        let per_plane = 4 * pixels;
        if pixels == 0 || queries == 0 || guide.dtype != DType::F32 || masks.dtype != DType::F32 || guide.device != masks.device || budget_bytes < per_plane {
            return None;
        }
        let (client, device) = (guide.client.clone(), guide.device.clone());
        let dilations: Vec<u8> = pamr.dilations.iter().flat_map(|&d| (d as u32).to_le_bytes()).collect();
        let dilations = upload(&client, &device, dilations, pamr.dilations.len(), DType::U32);
        let neighbours = 8 * pamr.dilations.len();
        let (rows, width) = (rows as u32, width as u32);

        let scale = empty(&client, &device, Shape::new([channels, pixels]), DType::F32);
        launch_over(&client, channels * pixels, |count, dim| {
            local_scale::launch(&client, count, dim, guide.clone().into_tensor_arg(), dilations.clone().into_tensor_arg(), scale.clone().into_tensor_arg(), rows, width)
        });
        // The affinities in groups of neighbours, each within the budget.
        let group = (budget_bytes / per_plane).clamp(1, neighbours);
        let groups: Vec<(u32, CubeTensor)> = (0..neighbours)
            .step_by(group)
            .map(|first| {
                let weights = empty(&client, &device, Shape::new([group.min(neighbours - first), pixels]), DType::F32);
                launch_over(&client, pixels, |count, dim| {
                    affinities::launch(
                        &client,
                        count,
                        dim,
                        guide.clone().into_tensor_arg(),
                        scale.clone().into_tensor_arg(),
                        dilations.clone().into_tensor_arg(),
                        weights.clone().into_tensor_arg(),
                        first as u32,
                        rows,
                        width,
                    )
                });
                (first as u32, weights)
            })
            .collect();

        let chunk = (budget_bytes / per_plane).clamp(1, queries);
        let refined: Vec<_> = (0..queries)
            .step_by(chunk)
            .map(|first_query| {
                // The first step reads the chunk's queries from `masks`, the
                // others the previous step's `[chunk, pixels]`.
                let (mut current, mut offset) = (masks.clone(), first_query as u32);
                let shape = Shape::new([chunk.min(queries - first_query), pixels]);
                for _ in 0..pamr.iterations {
                    let out = empty(&client, &device, shape.clone(), DType::F32);
                    for (g, (first, weights)) in groups.iter().enumerate() {
                        launch_over(&client, shape.num_elements(), |count, dim| {
                            propagate::launch(
                                &client,
                                count,
                                dim,
                                current.clone().into_tensor_arg(),
                                weights.clone().into_tensor_arg(),
                                dilations.clone().into_tensor_arg(),
                                out.clone().into_tensor_arg(),
                                offset,
                                *first,
                                u32::from(g > 0),
                                rows,
                                width,
                            )
                        });
                    }
                    (current, offset) = (out, 0);
                }
                burn_tensor::Tensor::<2>::from_primitive::<CubeBackend>(current)
            })
            .collect();
        let refined = if refined.len() == 1 { refined.into_iter().next().expect("one chunk") } else { burn_tensor::Tensor::cat(refined, 0) };
        Some(refined.reshape([queries, rows as usize, width as usize]))
    }
}
