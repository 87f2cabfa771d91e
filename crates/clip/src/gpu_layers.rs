//! The towers' layers between the matrix products on a GPU, each one kernel
//! of ours where burn's tensor operations were several kernels, each a
//! launch and a pass over memory:
//!
//! - [`attention_softmax`]: `softmax(scale * scores + bias)` over the keys,
//!   causal in the text tower, in f32 (five to eight of burn's operations:
//!   the scale, the bias or the mask, the row maximum, a subtraction, `exp`,
//!   the row sum, a division, and at f16 a cast each way);
//! - [`layer_norm`]: in f32, the variance as the mean of the centred
//!   squares (nine operations, eleven at f16);
//! - [`bias_quick_gelu`]: the MLP's first bias and QuickGELU,
//!   `x / (1 + e^(-1.702 x))` in f32 (five operations, seven at f16);
//! - [`bias_residual`]: a block's residual sums, the bias of the product
//!   before them added on the way (two operations);
//! - [`split_heads`]: the fused q, k, v projection's bias, and its thirds
//!   as three `[batch, heads, tokens, head_dim]` tensors stored in that
//!   order (the bias's addition, then three copies by `reshape` and three or
//!   six more where the matrix products cannot read a view of the heads);
//! - [`value_product_merged`]: attention's value product written with the
//!   heads side by side in each token's row, as the output projection reads
//!   them (the product, then a copy).
//!
//! Each does the operations' arithmetic in their order, but for the order of
//! a row's sums. They need cubecl tensors (`burn-cubecl`'s `CubeBackend`:
//! wgpu on WebGPU, Vulkan or Metal) and answer `None` for any other (the CPU
//! backend, a build with burn's kernel fusion, one without the `gpu-kernel`
//! feature), or when [`set_gpu_layers`] chose [`GpuLayers::TensorOps`]; the
//! caller then runs burn's operations.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::Tensor;

use crate::routine_choice::RoutineChoice;

crate::named_choices! {
    /// How the GPU computes the towers' softmax, layer norms, QuickGELU,
    /// residual sums, head splits and merges.
    pub enum GpuLayers: "way to compute the layers" {
        /// One kernel each (this module).
        Kernels => "kernels",
        /// burn's tensor operations, to compare against.
        TensorOps => "tensor-ops",
    }
}

static CHOICE: RoutineChoice<GpuLayers> = RoutineChoice::new(&GpuLayers::ALL);

/// Compute the towers' layers on a GPU as `layers` says from now on, in this
/// process. `false` (and nothing changes) where this build cannot choose
/// (see [`crate::gpu_matmul::set_gpu_matmul`]).
pub fn set_gpu_layers(layers: GpuLayers) -> bool {
    CHOICE.set(layers)
}

/// What [`set_gpu_layers`] chose ([`GpuLayers::Kernels`] unless it was called).
pub fn gpu_layers() -> GpuLayers {
    CHOICE.get()
}

/// How many times each kernel of this module ran in this process so far
/// (serialised as the bench's JSON reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelCounts {
    pub softmax: usize,
    pub layer_norm: usize,
    pub quick_gelu: usize,
    pub residual: usize,
    pub split_heads: usize,
    pub merged_heads: usize,
}

impl KernelCounts {
    /// How many of each ran since `before` (an earlier [`kernel_counts`]).
    pub fn since(self, before: KernelCounts) -> KernelCounts {
        KernelCounts {
            softmax: self.softmax - before.softmax,
            layer_norm: self.layer_norm - before.layer_norm,
            quick_gelu: self.quick_gelu - before.quick_gelu,
            residual: self.residual - before.residual,
            split_heads: self.split_heads - before.split_heads,
            merged_heads: self.merged_heads - before.merged_heads,
        }
    }
}

static SOFTMAX: AtomicUsize = AtomicUsize::new(0);
static LAYER_NORM: AtomicUsize = AtomicUsize::new(0);
static QUICK_GELU: AtomicUsize = AtomicUsize::new(0);
static RESIDUAL: AtomicUsize = AtomicUsize::new(0);
static SPLIT_HEADS: AtomicUsize = AtomicUsize::new(0);
static MERGED_HEADS: AtomicUsize = AtomicUsize::new(0);

pub fn kernel_counts() -> KernelCounts {
    let load = |count: &AtomicUsize| count.load(Ordering::Relaxed);
    KernelCounts {
        softmax: load(&SOFTMAX),
        layer_norm: load(&LAYER_NORM),
        quick_gelu: load(&QUICK_GELU),
        residual: load(&RESIDUAL),
        split_heads: load(&SPLIT_HEADS),
        merged_heads: load(&MERGED_HEADS),
    }
}

/// `kernel()` where this build has the kernels and they are chosen, counted
/// in `count` when it ran.
fn counted<T>(count: &AtomicUsize, kernel: impl FnOnce() -> Option<T>) -> Option<T> {
    if gpu_layers() != GpuLayers::Kernels || !cfg!(all(feature = "gpu-kernel", not(feature = "fusion"))) {
        return None;
    }
    let out = kernel();
    if out.is_some() {
        count.fetch_add(1, Ordering::Relaxed);
    }
    out
}

/// `cube::$kernel(args)`, [`counted`] in `$count`; `None` in a build
/// without the kernels (which has no `cube` module).
macro_rules! run_kernel {
    ($count:expr, $kernel:ident($($arg:expr),*)) => {
        counted($count, || {
            #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
            return cube::$kernel($($arg),*);
            #[allow(unreachable_code)]
            {
                let _ = ($($arg,)*);
                None
            }
        })
    };
}

/// `softmax(scale * scores + bias)` over the last dimension, in f32, stored
/// in the scores' precision; with `causal`, the keys after each query are
/// left out (weight 0), as [`crate::nn::CausalMask`] masks them. `None`
/// where the kernel does not run (see the module's doc; also scores that are
/// not contiguous f32 or f16, or a bias that is not contiguous f32).
///
/// # Shapes
/// - `scores`: `[batch, heads, tokens, tokens]`, queries by keys
/// - `bias`: `[1, 1, tokens, tokens]`, f32
/// - returns `[batch, heads, tokens, tokens]`
pub fn attention_softmax(scores: &Tensor<4>, scale: f32, bias: Option<&Tensor<4>>, causal: bool) -> Option<Tensor<4>> {
    run_kernel!(&SOFTMAX, attention_softmax(scores, scale, bias, causal))
}

/// Layer norm over the last dimension in f32, `(x - mean) / sqrt(var + eps)
/// * gamma + beta` with the variance as the mean of the centred squares,
/// stored in `x`'s precision. `None` where the kernel does not run (see the
/// module's doc; also `x` not contiguous f32 or f16, or `gamma` and `beta`
/// not f32 of `x`'s width).
///
/// # Shapes
/// - `x`: `[..., width]`, `gamma`, `beta`: `[width]` -> `[..., width]`
pub fn layer_norm<const D: usize>(x: &Tensor<D>, gamma: &Tensor<1>, beta: &Tensor<1>, eps: f32) -> Option<Tensor<D>> {
    run_kernel!(&LAYER_NORM, layer_norm(x, gamma, beta, eps))
}

/// QuickGELU of `x + bias`: the sum in `x`'s precision (as burn's add), then
/// `z / (1 + e^(-1.702 z))` in f32, stored in `x`'s precision. `None` where
/// the kernel does not run (see the module's doc; also `x` not contiguous,
/// or `bias` not of `x`'s precision and width).
///
/// # Shapes
/// - `x`: `[rows, width]`, `bias`: `[width]` -> `[rows, width]`
pub fn bias_quick_gelu(x: &Tensor<2>, bias: &Tensor<1>) -> Option<Tensor<2>> {
    run_kernel!(&QUICK_GELU, bias_quick_gelu(x, bias))
}

/// `residual + (x + bias)`, each sum in `x`'s precision, as burn's two
/// additions. `None` where the kernel does not run (see the module's doc;
/// also `x` or `residual` not contiguous, or not all three of one
/// precision and `x`'s width).
///
/// # Shapes
/// - `x`, `residual`: `[rows, width]`, `bias`: `[width]` -> `[rows, width]`
pub fn bias_residual(x: &Tensor<2>, bias: &Tensor<1>, residual: &Tensor<2>) -> Option<Tensor<2>> {
    run_kernel!(&RESIDUAL, bias_residual(x, bias, residual))
}

/// The heads of a fused q, k, v projection (`in_proj` of
/// `torch.nn.MultiheadAttention`: the q, k, v thirds of each row in that
/// order, each third `heads` runs of `head_dim` values), plus `bias` where
/// given (the sum in `qkv`'s precision, as burn's addition), as three
/// contiguous tensors: what the matrix products of attention read without
/// copying (`q k^T` reads k's transposed view as it is). `None` where the
/// kernel does not run (see the module's doc; also `qkv` not contiguous,
/// its width not `3 * heads` equal parts, or `bias` not of its precision and
/// width).
///
/// # Shapes
/// - `qkv`: `[batch, tokens, 3 * heads * head_dim]`, `bias`: `[3 * heads * head_dim]`
/// - returns q, k, v, each `[batch, heads, tokens, head_dim]`
pub fn split_heads(qkv: &Tensor<3>, bias: Option<&Tensor<1>>, heads: usize) -> Option<[Tensor<4>; 3]> {
    run_kernel!(&SPLIT_HEADS, split_heads(qkv, bias, heads))
}

/// Attention's value product `weights @ v` with the heads side by side in
/// each token's row, as the output projection reads them: burn's product
/// (cubek's routine, chosen as burn chooses it) writing through a view of
/// that layout, so no copy merges the heads after it (cubek writes where
/// the output's strides say). The same values as the product then the
/// copy. `None` where the kernel does not run (see the module's doc; also
/// where [`crate::gpu_matmul`] chose another routine for attention's
/// products, or cubek declines).
///
/// # Shapes
/// - `weights`: `[batch, heads, tokens, keys]`, `v`: `[batch, heads, keys, head_dim]`
/// - returns `[batch, tokens, heads * head_dim]`
pub fn value_product_merged(weights: &Tensor<4>, v: &Tensor<4>) -> Option<Tensor<3>> {
    if crate::gpu_matmul::gpu_matmul().attention != crate::gpu_matmul::MatmulRoutine::Burn {
        return None;
    }
    run_kernel!(&MERGED_HEADS, value_product_merged(weights, v))
}

#[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::{self as burn_tensor, DType, Shape};
    use burn_cubecl::kernel::matmul;
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::CubeBackend;
    use cubecl::prelude::*;

    /// Units that share one row (each takes every `ROW_UNITS`-th value).
    const ROW_UNITS: usize = 32;
    /// Rows of a work group.
    const CUBE_ROWS: usize = 8;
    /// Work groups along a dispatch's x (WebGPU allows 65535).
    const MAX_CUBES_X: usize = 65_535;
    /// Units of a work group of the elementwise kernel.
    const ELEMENT_UNITS: usize = 256;

    /// The work group's index in a dispatch of [`cube_count`].
    #[cube]
    fn cube_index() -> usize {
        CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
    }

    /// `cubes` work groups as a dispatch: along x, and y when x is full.
    fn cube_count(cubes: usize) -> CubeCount {
        let x = cubes.clamp(1, MAX_CUBES_X);
        CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
    }

    /// The sum (`maximum` false) or the maximum of the `ROW_UNITS` partials
    /// of this unit's row, each unit adding them in the same order; the
    /// partials are `value` of each unit of the row.
    #[cube]
    fn row_total(partials: &mut Shared<[f32]>, value: f32, #[comptime] maximum: bool) -> f32 {
        let first = UNIT_POS_Y as usize * ROW_UNITS;
        partials[first + UNIT_POS_X as usize] = value;
        sync_cube();
        let mut total = partials[first];
        for u in 1..ROW_UNITS {
            if maximum {
                total = max(total, partials[first + u]);
            } else {
                total += partials[first + u];
            }
        }
        // The partials are written again only after every unit has read them.
        sync_cube();
        total
    }

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
    /// sum are combined through workgroup memory. Three passes over the row
    /// (the maximum, the sum of `exp`, the weights), whose re-reads come from
    /// the cache: a row of 785 keys is 3 kB.
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
        let row = cube_index() * CUBE_ROWS + UNIT_POS_Y as usize;
        let rows = rows as usize;
        let query = row % tokens;
        // The keys this row weighs (none past the last row); the rest get 0.
        let mut attended = if row < rows { tokens } else { 0usize };
        if causal {
            attended = min(attended, query + 1);
        }
        let (at, bias_at) = (row * tokens, query * tokens);
        let lane = UNIT_POS_X as usize;
        let mut partials = Shared::<[f32]>::new_slice(comptime!(ROW_UNITS * CUBE_ROWS));

        // Every unit takes as many steps as the row's keys need, whatever its
        // row (a loop of the same length in every unit keeps the barriers in
        // what WGSL's uniformity analysis accepts as uniform control flow).
        #[allow(clippy::manual_div_ceil)] // kernel code has no div_ceil
        let steps = (tokens + ROW_UNITS - 1) / ROW_UNITS;
        let mut maximum = f32::min_value();
        for step in 0..steps {
            let key = lane + step * ROW_UNITS;
            if key < attended {
                maximum = max(maximum, logit(scores, bias, at, bias_at, key, scale, has_bias));
            }
        }
        let row_max = row_total(&mut partials, maximum, true);
        let mut sum = 0.0f32;
        for step in 0..steps {
            let key = lane + step * ROW_UNITS;
            if key < attended {
                sum += Exp::exp(logit(scores, bias, at, bias_at, key, scale, has_bias) - row_max);
            }
        }
        let row_sum = row_total(&mut partials, sum, false);

        for step in 0..steps {
            let key = lane + step * ROW_UNITS;
            if row < rows && key < tokens {
                let weight = if key < attended { Exp::exp(logit(scores, bias, at, bias_at, key, scale, has_bias) - row_max) / row_sum } else { 0.0f32 };
                out[at + key] = F::cast_from(weight);
            }
        }
    }

    /// Layer norm of rows of `width` values, laid out as [`softmax_rows`]:
    /// the mean, the mean of the centred squares, then the normalised row.
    #[cube(launch_unchecked)]
    fn layer_norm_rows<F: Float>(x: &Tensor<F>, gamma: &Tensor<f32>, beta: &Tensor<f32>, out: &mut Tensor<F>, eps: f32, rows: u32, #[define(F)] _dtype: ElemType) {
        let width = x.shape(x.rank() - 1);
        let row = cube_index() * CUBE_ROWS + UNIT_POS_Y as usize;
        let values = if row < rows as usize { width } else { 0usize };
        let at = row * width;
        let lane = UNIT_POS_X as usize;
        let mut partials = Shared::<[f32]>::new_slice(comptime!(ROW_UNITS * CUBE_ROWS));
        let count = f32::cast_from(width);
        // As many steps in every unit, as in `softmax_rows`.
        #[allow(clippy::manual_div_ceil)] // kernel code has no div_ceil
        let steps = (width + ROW_UNITS - 1) / ROW_UNITS;

        let mut sum = 0.0f32;
        for step in 0..steps {
            let i = lane + step * ROW_UNITS;
            if i < values {
                sum += f32::cast_from(x[at + i]);
            }
        }
        let mean = row_total(&mut partials, sum, false) / count;
        let mut squares = 0.0f32;
        for step in 0..steps {
            let i = lane + step * ROW_UNITS;
            if i < values {
                let centred = f32::cast_from(x[at + i]) - mean;
                squares += centred * centred;
            }
        }
        let deviation = Sqrt::sqrt(row_total(&mut partials, squares, false) / count + eps);
        for step in 0..steps {
            let i = lane + step * ROW_UNITS;
            if i < values {
                let normalised = (f32::cast_from(x[at + i]) - mean) / deviation;
                out[at + i] = F::cast_from(normalised * gamma[i] + beta[i]);
            }
        }
    }

    /// One unit per value: QuickGELU of the value plus its column's bias.
    #[cube(launch_unchecked)]
    fn bias_quick_gelu_values<F: Float>(x: &Tensor<F>, bias: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: ElemType) {
        let at = cube_index() * ELEMENT_UNITS + UNIT_POS as usize;
        if at < x.len() {
            let z = f32::cast_from(x[at] + bias[at % bias.len()]);
            out[at] = F::cast_from(z / (Exp::exp(z * -1.702f32) + 1.0f32));
        }
    }

    /// One unit per value: the value plus its column's bias (rounded to the
    /// precision, as burn's addition stores it), plus the residual.
    #[cube(launch_unchecked)]
    fn bias_residual_values<F: Float>(x: &Tensor<F>, bias: &Tensor<F>, residual: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: ElemType) {
        let at = cube_index() * ELEMENT_UNITS + UNIT_POS as usize;
        if at < x.len() {
            let biased = x[at] + bias[at % bias.len()];
            out[at] = residual[at] + biased;
        }
    }

    /// One unit per value of q: that value of q, k and v, read from the
    /// token's row of the fused projection (three reads a `width` apart),
    /// each plus its column's bias where `has_bias`.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    fn split_heads_values<F: Float>(
        qkv: &Tensor<F>,
        bias: &Tensor<F>,
        q: &mut Tensor<F>,
        k: &mut Tensor<F>,
        v: &mut Tensor<F>,
        #[comptime] has_bias: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let at = cube_index() * ELEMENT_UNITS + UNIT_POS as usize;
        if at < q.len() {
            let (heads, tokens, head_dim) = (q.shape(1), q.shape(2), q.shape(3));
            let width = heads * head_dim;
            let channel = at % head_dim;
            let token = (at / head_dim) % tokens;
            let head = (at / (head_dim * tokens)) % heads;
            let image = at / (head_dim * tokens * heads);
            let column = head * head_dim + channel;
            let from = (image * tokens + token) * 3 * width + column;
            if has_bias {
                q[at] = qkv[from] + bias[column];
                k[at] = qkv[from + width] + bias[width + column];
                v[at] = qkv[from + 2 * width] + bias[2 * width + column];
            } else {
                q[at] = qkv[from];
                k[at] = qkv[from + width];
                v[at] = qkv[from + 2 * width];
            }
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

    /// `tensor` as a contiguous cubecl tensor of f32 or f16, or `None`.
    fn float_rows<const D: usize>(tensor: &burn_tensor::Tensor<D>) -> Option<CubeTensor> {
        let tensor = tensor.clone().try_into_primitive::<CubeBackend>().ok()?;
        (matches!(tensor.dtype, DType::F32 | DType::F16) && contiguous(&tensor)).then_some(tensor)
    }

    /// `values` as a contiguous cubecl tensor of `dtype` and `len` values, or `None`.
    fn vector(values: &burn_tensor::Tensor<1>, dtype: DType, len: usize) -> Option<CubeTensor> {
        let values = values.clone().try_into_primitive::<CubeBackend>().ok()?;
        (values.dtype == dtype && contiguous(&values) && values.meta.num_elements() == len).then_some(values)
    }

    /// One zero of `dtype` on `like`'s device: what a kernel binds for an
    /// operand it does not read (a bias it was launched without).
    fn placeholder(like: &CubeTensor, dtype: DType) -> CubeTensor {
        let handle = like.client.create_from_slice(&vec![0u8; dtype.size()]);
        CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), Shape::new([1]), handle, dtype)
    }

    fn empty_like(like: &CubeTensor) -> CubeTensor {
        let shape = like.meta.shape().clone();
        let handle = like.client.empty(shape.num_elements() * like.dtype.size());
        CubeTensor::new_contiguous(like.client.clone(), like.device.clone(), shape, handle, like.dtype)
    }

    pub(super) fn attention_softmax(scores: &burn_tensor::Tensor<4>, scale: f32, bias: Option<&burn_tensor::Tensor<4>>, causal: bool) -> Option<burn_tensor::Tensor<4>> {
        let scores = float_rows(scores)?;
        let tokens = scores.meta.shape()[3];
        let bias = match bias {
            Some(bias) => {
                let bias = bias.clone().try_into_primitive::<CubeBackend>().ok()?;
                (bias.dtype == DType::F32 && contiguous(&bias) && bias.meta.num_elements() == tokens * tokens).then_some(())?;
                Some(bias)
            }
            None => None,
        };
        let out = empty_like(&scores);
        let rows = scores.meta.num_elements() / tokens.max(1);
        if rows == 0 {
            return Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out));
        }
        let (client, dtype, has_bias) = (scores.client.clone(), scores.dtype, bias.is_some());
        let bias = bias.unwrap_or_else(|| placeholder(&scores, DType::F32));
        // SAFETY: a unit reads its row's keys (`< tokens`) of a row that
        // exists (`< rows`), and the bias at the same keys of its query's row
        // (a `tokens x tokens` bias, checked above), and writes its own row
        // of the output; workgroup memory is indexed within its length.
        unsafe {
            softmax_rows::launch_unchecked(
                &client,
                cube_count(rows.div_ceil(CUBE_ROWS)),
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

    pub(super) fn layer_norm<const D: usize>(x: &burn_tensor::Tensor<D>, gamma: &burn_tensor::Tensor<1>, beta: &burn_tensor::Tensor<1>, eps: f32) -> Option<burn_tensor::Tensor<D>> {
        let x = float_rows(x)?;
        let width = x.meta.shape()[D - 1];
        let (gamma, beta) = (vector(gamma, DType::F32, width)?, vector(beta, DType::F32, width)?);
        let out = empty_like(&x);
        let rows = x.meta.num_elements() / width.max(1);
        if rows > 0 {
            let (client, dtype) = (x.client.clone(), x.dtype);
            // SAFETY: a unit reads and writes the values of its own row (`<
            // width`) of a row that exists (`< rows`), and gamma and beta at
            // those columns (`width` values each, checked above).
            unsafe {
                layer_norm_rows::launch_unchecked(
                    &client,
                    cube_count(rows.div_ceil(CUBE_ROWS)),
                    CubeDim::new_2d(ROW_UNITS as u32, CUBE_ROWS as u32),
                    x.into_tensor_arg(),
                    gamma.into_tensor_arg(),
                    beta.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    eps,
                    rows as u32,
                    dtype_to_storage_type(dtype),
                );
            }
        }
        Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
    }

    pub(super) fn bias_residual(x: &burn_tensor::Tensor<2>, bias: &burn_tensor::Tensor<1>, residual: &burn_tensor::Tensor<2>) -> Option<burn_tensor::Tensor<2>> {
        let x = float_rows(x)?;
        let bias = vector(bias, x.dtype, x.meta.shape()[1])?;
        let residual = float_rows(residual)?;
        if residual.dtype != x.dtype || residual.meta.shape() != x.meta.shape() {
            return None;
        }
        let out = empty_like(&x);
        let values = x.meta.num_elements();
        if values > 0 {
            let (client, dtype) = (x.client.clone(), x.dtype);
            // SAFETY: each unit reads and writes one value below `x.len()`
            // (checked in the kernel; the residual has x's shape) and the
            // bias at its column.
            unsafe {
                bias_residual_values::launch_unchecked(
                    &client,
                    cube_count(values.div_ceil(ELEMENT_UNITS)),
                    CubeDim::new_1d(ELEMENT_UNITS as u32),
                    x.into_tensor_arg(),
                    bias.into_tensor_arg(),
                    residual.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    dtype_to_storage_type(dtype),
                );
            }
        }
        Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
    }

    pub(super) fn bias_quick_gelu(x: &burn_tensor::Tensor<2>, bias: &burn_tensor::Tensor<1>) -> Option<burn_tensor::Tensor<2>> {
        let x = float_rows(x)?;
        let bias = vector(bias, x.dtype, x.meta.shape()[1])?;
        let out = empty_like(&x);
        let values = x.meta.num_elements();
        if values > 0 {
            let (client, dtype) = (x.client.clone(), x.dtype);
            // SAFETY: each unit reads and writes one value below `x.len()`
            // (checked in the kernel) and the bias at its column.
            unsafe {
                bias_quick_gelu_values::launch_unchecked(
                    &client,
                    cube_count(values.div_ceil(ELEMENT_UNITS)),
                    CubeDim::new_1d(ELEMENT_UNITS as u32),
                    x.into_tensor_arg(),
                    bias.into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    dtype_to_storage_type(dtype),
                );
            }
        }
        Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
    }

    pub(super) fn split_heads(qkv: &burn_tensor::Tensor<3>, bias: Option<&burn_tensor::Tensor<1>>, heads: usize) -> Option<[burn_tensor::Tensor<4>; 3]> {
        let qkv = float_rows(qkv)?;
        let [batch, tokens, width3] = qkv.meta.shape().dims::<3>();
        if heads == 0 || width3 % (3 * heads) != 0 {
            return None;
        }
        let head_dim = width3 / (3 * heads);
        let (client, dtype, has_bias) = (qkv.client.clone(), qkv.dtype, bias.is_some());
        let bias = match bias {
            Some(bias) => vector(bias, dtype, width3)?,
            None => placeholder(&qkv, dtype),
        };
        let part = || {
            let shape = Shape::new([batch, heads, tokens, head_dim]);
            let handle = client.empty(shape.num_elements() * dtype.size());
            CubeTensor::new_contiguous(client.clone(), qkv.device.clone(), shape, handle, dtype)
        };
        let (q, k, v) = (part(), part(), part());
        let values = q.meta.num_elements();
        if values > 0 {
            // SAFETY: each unit writes one value of q, k and v below
            // `q.len()` (checked in the kernel; all three have q's shape) and
            // reads the three values of its token's row of qkv (`3 * heads *
            // head_dim` values, checked above) and of the bias at their
            // columns (`width3` values, checked by `vector`; without a bias,
            // none).
            unsafe {
                split_heads_values::launch_unchecked(
                    &client,
                    cube_count(values.div_ceil(ELEMENT_UNITS)),
                    CubeDim::new_1d(ELEMENT_UNITS as u32),
                    qkv.into_tensor_arg(),
                    bias.into_tensor_arg(),
                    q.clone().into_tensor_arg(),
                    k.clone().into_tensor_arg(),
                    v.clone().into_tensor_arg(),
                    has_bias,
                    dtype_to_storage_type(dtype),
                );
            }
        }
        Some([q, k, v].map(burn_tensor::Tensor::from_primitive::<CubeBackend>))
    }

    pub(super) fn value_product_merged(weights: &burn_tensor::Tensor<4>, v: &burn_tensor::Tensor<4>) -> Option<burn_tensor::Tensor<3>> {
        let weights = weights.clone().try_into_primitive::<CubeBackend>().ok()?;
        let v = v.clone().try_into_primitive::<CubeBackend>().ok()?;
        let [batch, heads, tokens, keys] = weights.meta.shape().dims::<4>();
        let [v_batch, v_heads, v_keys, head_dim] = v.meta.shape().dims::<4>();
        if (v_batch, v_heads, v_keys) != (batch, heads, keys) || v.dtype != weights.dtype {
            return None;
        }
        let dtype = weights.dtype;
        let shape = Shape::new([batch, tokens, heads, head_dim]);
        let handle = weights.client.empty(shape.num_elements() * dtype.size());
        let merged = CubeTensor::new_contiguous(weights.client.clone(), weights.device.clone(), shape, handle, dtype);
        // `[batch, heads, tokens, head_dim]` over the merged layout: each
        // head's rows `heads * head_dim` apart, its columns at its offset.
        let mut by_head = merged.clone();
        by_head.meta.swap(1, 2);
        matmul::matmul(weights, v, Some(by_head), matmul::MatmulStrategy::Cube, dtype).ok()?;
        let merged = burn_tensor::Tensor::<4>::from_primitive::<CubeBackend>(merged);
        Some(merged.reshape([batch, tokens, heads * head_dim]))
    }
}
