//! Attention's softmax on a GPU as one kernel.
//!
//! With the scores materialised, `softmax(scale * scores + bias)` over the
//! keys was burn's tensor operations: a cast to f32 (at f16), the scale, the
//! bias or the causal mask, then burn's softmax (the row maximum, a
//! subtraction, `exp`, the row sum, a division) and a cast back: five to
//! eight kernels, each a pass over `[batch, heads, tokens, tokens]` (59 MB a
//! block for two ViT-B/16 windows at f32). [`attention_softmax`] reads the
//! scores and writes the weights once, with the same arithmetic in f32 but
//! the order of the row sum's additions.
//!
//! The kernel needs cubecl tensors (`burn-cubecl`'s `CubeBackend`: wgpu on
//! WebGPU, Vulkan or Metal); it answers `None` for any other (the CPU
//! backend, a build with burn's kernel fusion, one without the `gpu-kernel`
//! feature), and the caller runs burn's operations instead.

use burn::tensor::Tensor;
use std::sync::atomic::{AtomicUsize, Ordering};

static RAN: AtomicUsize = AtomicUsize::new(0);

/// How many softmaxes the kernel has computed in this process so far.
pub fn kernel_count() -> usize {
    RAN.load(Ordering::Relaxed)
}

/// `softmax(scale * scores + bias)` over the last dimension, in f32, stored
/// in the scores' precision; with `causal`, the keys after each query are
/// left out (weight 0), as [`crate::nn::causal_mask`] masks them. `None`
/// where the kernel cannot run (see the module's doc; also scores that are
/// not contiguous f32 or f16, or a bias that is not contiguous f32).
///
/// # Shapes
/// - `scores`: `[batch, heads, tokens, tokens]`, queries by keys
/// - `bias`: `[1, 1, tokens, tokens]`, f32
/// - returns `[batch, heads, tokens, tokens]`
pub fn attention_softmax(scores: &Tensor<4>, scale: f32, bias: Option<&Tensor<4>>, causal: bool) -> Option<Tensor<4>> {
    #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
    {
        let weights = cube::attention_softmax(scores, scale, bias, causal);
        if weights.is_some() {
            RAN.fetch_add(1, Ordering::Relaxed);
        }
        weights
    }
    #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
    {
        let _ = (scores, scale, bias, causal);
        None
    }
}

#[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::{self as burn_tensor, DType, Shape};
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeBackend;
    use cubecl::prelude::*;

    /// Units that share one row (each takes every `ROW_UNITS`-th key).
    const ROW_UNITS: usize = 32;
    /// Rows of a work group.
    const CUBE_ROWS: usize = 8;
    /// Work groups along a dispatch's x (WebGPU allows 65535).
    const MAX_CUBES_X: usize = 65_535;

    /// The row's weights before the softmax, in f32: `scale * score (+ bias)`.
    #[cube]
    fn logit<F: Float>(scores: &Tensor<F>, bias: &Tensor<f32>, at: usize, bias_at: usize, key: usize, scale: f32, #[comptime] has_bias: bool) -> f32 {
        let x = f32::cast_from(scores[at + key]) * scale;
        if has_bias {
            x + bias[bias_at + key]
        } else {
            x
        }
    }

    /// `ROW_UNITS` units a row, `CUBE_ROWS` rows a work group: each unit
    /// takes every `ROW_UNITS`-th key of its row, and the row's maximum and
    /// sum are combined through workgroup memory, each unit adding its
    /// row's partials in the same order. Three passes over the row (the
    /// maximum, the sum of `exp`, the weights), whose re-reads come from the
    /// cache: a row of 785 keys is 3 kB.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    fn softmax_rows<F: Float>(
        scores: &Tensor<F>,
        bias: &Tensor<f32>,
        out: &mut Tensor<F>,
        scale: f32,
        rows: u32,
        #[comptime] has_bias: bool,
        #[comptime] causal: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let tokens = scores.shape(scores.rank() - 1);
        let cube = CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize;
        let row = cube * CUBE_ROWS + UNIT_POS_Y as usize;
        let query = row % tokens;
        // The keys this row weighs (none past the last row); the rest get 0.
        let rows = rows as usize;
        let mut attended = if row < rows { tokens } else { 0usize };
        if causal {
            attended = min(attended, query + 1);
        }
        let (at, bias_at) = (row * tokens, query * tokens);
        let lane = UNIT_POS_X as usize;
        let mut partials = Shared::<[f32]>::new_slice(comptime!(ROW_UNITS * CUBE_ROWS));
        let first = UNIT_POS_Y as usize * ROW_UNITS;

        let mut maximum = f32::min_value();
        for key in range_stepped(lane, attended, ROW_UNITS) {
            maximum = max(maximum, logit(scores, bias, at, bias_at, key, scale, has_bias));
        }
        partials[first + lane] = maximum;
        sync_cube();
        let mut row_max = f32::min_value();
        for u in 0..ROW_UNITS {
            row_max = max(row_max, partials[first + u]);
        }
        sync_cube();

        let mut sum = 0.0f32;
        for key in range_stepped(lane, attended, ROW_UNITS) {
            sum += Exp::exp(logit(scores, bias, at, bias_at, key, scale, has_bias) - row_max);
        }
        partials[first + lane] = sum;
        sync_cube();
        let mut row_sum = 0.0f32;
        for u in 0..ROW_UNITS {
            row_sum += partials[first + u];
        }

        let written = if row < rows { tokens } else { 0usize };
        for key in range_stepped(lane, written, ROW_UNITS) {
            let weight = if key < attended { Exp::exp(logit(scores, bias, at, bias_at, key, scale, has_bias) - row_max) / row_sum } else { 0.0f32 };
            out[at + key] = F::cast_from(weight);
        }
    }

    /// Whether `tensor` is stored row-major without gaps.
    fn contiguous(tensor: &CubeTensor) -> bool {
        let (shape, strides) = (tensor.meta.shape(), tensor.meta.strides());
        let mut expected = 1;
        for d in (0..shape.num_dims()).rev() {
            if shape[d] != 1 && strides[d] != expected {
                return false;
            }
            expected *= shape[d];
        }
        true
    }

    pub(super) fn attention_softmax(scores: &burn_tensor::Tensor<4>, scale: f32, bias: Option<&burn_tensor::Tensor<4>>, causal: bool) -> Option<burn_tensor::Tensor<4>> {
        let scores = scores.clone().try_into_primitive::<CubeBackend>().ok()?;
        let dtype = scores.dtype;
        if !matches!(dtype, DType::F32 | DType::F16) || !contiguous(&scores) {
            return None;
        }
        let bias = match bias {
            Some(bias) => {
                let bias = bias.clone().try_into_primitive::<CubeBackend>().ok()?;
                if bias.dtype != DType::F32 || !contiguous(&bias) || bias.meta.num_elements() != scores.meta.shape()[3].pow(2) {
                    return None;
                }
                Some(bias)
            }
            None => None,
        };
        let shape = scores.meta.shape().clone();
        let rows = shape.num_elements() / shape[3].max(1);
        let (client, device) = (scores.client.clone(), scores.device.clone());
        let handle = client.empty(shape.num_elements() * dtype.size());
        let out = CubeTensor::new_contiguous(client.clone(), device, shape.clone(), handle, dtype);
        if rows == 0 {
            return Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out));
        }
        let has_bias = bias.is_some();
        // Without a bias the kernel reads none, but binds one value.
        let bias = bias.unwrap_or_else(|| {
            let handle = client.create_from_slice(&0f32.to_le_bytes());
            CubeTensor::new_contiguous(client.clone(), scores.device.clone(), Shape::new([1]), handle, DType::F32)
        });
        let cubes = rows.div_ceil(CUBE_ROWS);
        let (x, y) = (cubes.min(MAX_CUBES_X), cubes.div_ceil(MAX_CUBES_X));
        // SAFETY: a unit reads its row's keys (`< tokens`) of a row that
        // exists (`< rows`), and the bias at the same keys of its query's row
        // (a `tokens x tokens` bias, checked above), and writes its own row
        // of the output; workgroup memory is indexed within its length.
        unsafe {
            softmax_rows::launch_unchecked(
                &client,
                CubeCount::Static(x as u32, y as u32, 1),
                CubeDim::new_2d(ROW_UNITS as u32, CUBE_ROWS as u32),
                scores.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                scale,
                rows as u32,
                has_bias,
                causal,
                dtype_to_storage_type(dtype),
            );
        }
        Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
    }
}
