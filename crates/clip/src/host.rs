//! Kernels for burn's CPU backend (burn-flex), run on the tensors' host memory.
//!
//! burn-flex computes `exp` one value at a time (libm's `expf`) in its fused
//! attention, its softmax and its sigmoid, and its flash attention multiplies
//! the keys in tiles of 32 on wasm, with the online-softmax bookkeeping in
//! scalar loops between small matrix products. A profile of the page's wasm
//! CPU backend on a ViT-B/16 448x448 window (`scripts/bench_browser.mjs
//! v8prof`) had `expf` at 13 % of the time and that bookkeeping at another 5 %.
//! Here attention runs one (image, head) at a time (or a block of its query
//! rows, when there are few heads for many threads) with its `[tokens,
//! tokens]` scores materialised (2.5 MB for a 785-token window), as two
//! `gemm` calls around a row softmax whose `exp` vectorises; QuickGELU is one
//! pass.
//!
//! The layers around attention run here too: burn-flex runs its elementwise
//! ops on the calling thread, so a layer norm (some ten passes over the
//! tokens), the bias and residual adds, and the copy burn-flex makes of every
//! product's output (`FlexTensor::empty` zero-fills a byte vector, which
//! cubecl then copies into a 16-byte aligned one) left the other cores idle
//! for about 8 % of the CPU time of an image on 2 threads (a perf profile of
//! `clearclip bench --threads 2`, ViT-B/16, 2 windows). [`layer_norm`] is one
//! pass per row and [`linear`] writes the bias (and the residual) first and
//! lets `gemm` add the product to them, both on rayon's pool.
//!
//! Everything else stays on burn's ops. The crate is built at `opt-level = 3`
//! in every profile (the workspace's Cargo.toml): the loops here rely on
//! LLVM's vectoriser, which `opt-level = "z"` turns off. Natively, the loops
//! run in copies compiled for AVX-512 or AVX2 where the CPU has them
//! ([`widest_simd`]), as `gemm` picks its microkernel at run time.

use std::mem::MaybeUninit;
use std::ops::{Deref, Range};

use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::tensor::{Device, Tensor, TensorData};

use crate::kernel_times::timed;

/// Whether tensors on `device` live in host memory (burn's CPU backend), where
/// this module's kernels replace burn's ops.
pub fn is_host(device: &Device) -> bool {
    *device == Device::flex()
}

/// `e^x` in f32, branch-free so that loops over it vectorise.
///
/// Cephes' `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2` (`ln 2` split in
/// two constants so `r` is exact), a degree-7 polynomial for `e^r`, and `2^n`
/// built in the exponent bits. Relative error below 2.5e-7 (about 2 ulp; the
/// test below measures it against f64). `x` is clamped to `[-87.3, 88]`: below,
/// the result is about 1.2e-38 instead of a subnormal or zero (what softmax
/// and sigmoid add it to makes that invisible); above, it is about 1.7e38.
// Cephes' constants as published (its 5.0000001e-1 is 0.5 in f32).
#[allow(clippy::excessive_precision)]
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds a float below 2^22 to an integer, which
    // then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.33 { -87.33 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_2e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5.000_000_1e-1;
    let e_r = p * r * r + r + 1.0;
    e_r * f32::from_bits(((n_int + 127) << 23) as u32)
}

/// `work()`, compiled for the widest x86 vector extension this CPU has:
/// AVX-512, else AVX2, else the build's baseline (SSE2 on x86-64, `simd128`
/// on wasm, which has nothing wider).
///
/// A binary for any x86-64 CPU is compiled for SSE2, so LLVM vectorises this
/// module's loops four floats wide; `gemm` picks its AVX-512 microkernel at
/// run time but the softmax, QuickGELU and layer norm between its products
/// stayed at SSE2 (a `perf` annotation of the softmax showed `xmm` registers
/// only). `work` and everything it calls must be `#[inline(always)]`, so that
/// they are compiled into the copy for the wider extension. The results are
/// the same bit for bit on every path: Rust never fuses a multiply and an add
/// by itself, and the reductions here fix their order in [`LANES`]
/// accumulators, so a wider vector does the same operations in the same order.
#[inline(always)]
pub fn widest_simd<R>(work: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2<R>(work: impl FnOnce() -> R) -> R {
            work()
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512 F (and so AVX2 and FMA).
            return unsafe { avx512(work) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { avx2(work) };
        }
    }
    work()
}

/// Lanes of the reductions below: independent accumulators that vectorise.
const LANES: usize = 8;

#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (m, &v) in lanes.iter_mut().zip(chunk) {
            *m = if v > *m { v } else { *m };
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[inline(always)]
fn sum_of(row: &[f32]) -> f32 {
    sum_of_map(row, |v| v)
}

/// `sum of f(v)` over `row`, in [`LANES`] accumulators.
#[inline(always)]
fn sum_of_map(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (s, &v) in lanes.iter_mut().zip(chunk) {
            *s += f(v);
        }
    }
    chunks.remainder().iter().map(|&v| f(v)).chain(lanes).sum()
}

/// `row <- softmax(row)`, in passes that vectorise at any width: a loop
/// that both makes the exponentials and sums them in [`LANES`] accumulators
/// was slower, as LLVM then builds the vectors lane by lane (on wasm) or
/// 8 wide (on AVX-512).
#[inline(always)]
fn softmax_in_place(row: &mut [f32]) {
    let max = max_of(row);
    for v in row.iter_mut() {
        *v = exp(*v - max);
    }
    let inv_sum = 1.0 / sum_of(row);
    for v in row.iter_mut() {
        *v *= inv_sum;
    }
}

/// QuickGELU in place: `x * sigmoid(1.702 x)` (open_clip/transformer.py).
///
/// In chunks on rayon's pool where there is one: run on the calling thread,
/// it left the wasm pool's workers waiting for about 2 % of the image phase
/// (a V8 profile of the page on 2 threads), and it is 2.4 M values per block
/// of a ViT-B/16 window.
pub fn quick_gelu_in_place(values: &mut [f32]) {
    timed(
        || "QuickGELU".to_string(),
        || {
            on_pool_in_chunks(values, values_per_task(values.len()), |_, chunk| {
                widest_simd(
                    #[inline(always)]
                    || {
                        for v in chunk.iter_mut() {
                            *v *= 1.0 / (1.0 + exp(-(1.702 * *v)));
                        }
                    },
                )
            })
        },
    )
}

/// Values per rayon task in the loops below: large enough that the pool's
/// hand-over costs little...
const VALUES_PER_TASK: usize = 1 << 16;
/// ...but fewer, down to this, where that would leave a thread fewer than
/// [`TASKS_PER_THREAD`] tasks: a layer norm of a ViT-B/16 window (785 x 768)
/// is 10 tasks of 65536 values, which on 16 threads would keep 6 idle.
const FEWEST_VALUES_PER_TASK: usize = 1 << 13;

/// The loops here aim at this many tasks a thread at least, so that uneven
/// tasks even out and no core waits for want of one.
const TASKS_PER_THREAD: usize = 4;

/// Threads of rayon's pool (one without the `rayon` feature).
fn pool_threads() -> usize {
    #[cfg(feature = "rayon")]
    return rayon::current_num_threads();
    #[cfg(not(feature = "rayon"))]
    1
}

/// How many of `len` values a task of the loops below takes.
fn values_per_task(len: usize) -> usize {
    len.div_ceil(TASKS_PER_THREAD * pool_threads()).clamp(FEWEST_VALUES_PER_TASK, VALUES_PER_TASK)
}

/// `f(index, chunk)` for each `chunk_len`-long chunk of `values`, on rayon's
/// pool where there is one, else in order on this thread.
fn on_pool_in_chunks<T: Send>(values: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        values.par_chunks_mut(chunk_len).enumerate().for_each(|(i, chunk)| f(i, chunk));
    }
    #[cfg(not(feature = "rayon"))]
    values.chunks_mut(chunk_len).enumerate().for_each(|(i, chunk)| f(i, chunk));
}

/// Writes every element of a new `rows x width` buffer by `fill(row, out)`,
/// in chunks of whole rows on rayon's pool where there is one, through
/// [`widest_simd`] (so `fill` must be `#[inline(always)]`).
#[inline(always)]
fn rows_into_new(rows: usize, width: usize, fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync + Send) -> Vec<f32> {
    let len = rows * width;
    let mut values = Vec::with_capacity(len);
    let out = &mut values.spare_capacity_mut()[..len];
    let chunk_rows = values_per_task(len).div_ceil(width.max(1)).max(1);
    on_pool_in_chunks(out, chunk_rows * width, |chunk, out| {
        widest_simd(
            #[inline(always)]
            || {
                for (i, row) in out.chunks_exact_mut(width).enumerate() {
                    fill(chunk * chunk_rows + i, row);
                }
            },
        )
    });
    // SAFETY: `fill` is called once for every row of `out` and writes the
    // whole row (by `write_row` below, or `write_copy_of_slice`; both panic
    // where their input is not the row's length).
    unsafe { values.set_len(len) };
    values
}

/// Writes `value(a[i], b[i], c[i])` at every position `i` of `row`, whose
/// length the three inputs have: zipped, so the loop has no bounds checks
/// and vectorises.
#[inline(always)]
fn write_row(row: &mut [MaybeUninit<f32>], (a, b, c): (&[f32], &[f32], &[f32]), value: impl Fn(f32, f32, f32) -> f32) {
    assert!(a.len() == row.len() && b.len() == row.len() && c.len() == row.len());
    for (((out, &a), &b), &c) in row.iter_mut().zip(a).zip(b).zip(c) {
        out.write(value(a, b, c));
    }
}

/// Layer normalisation of each row: `(x - mean) / sqrt(var + eps) * gamma +
/// beta`, the variance biased (open_clip's `LayerNorm`, `torch.layer_norm`).
///
/// # Shapes
/// - `x`: `[rows, width]` with `width = gamma.len() = beta.len()` -> same
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32) -> Vec<f32> {
    let width = gamma.len();
    assert!(width > 0 && beta.len() == width && x.len().is_multiple_of(width), "layer norm of {} values by {width}", x.len());
    timed(
        || format!("layer norm {width}"),
        || {
            rows_into_new(x.len() / width, width, #[inline(always)] |r, out| {
                let row = &x[r * width..][..width];
                let mean = sum_of(row) / width as f32;
                let squares = sum_of_map(row, |v| (v - mean) * (v - mean));
                let inv_std = 1.0 / (squares / width as f32 + eps).sqrt();
                write_row(out, (row, gamma, beta), |x, g, b| (x - mean) * inv_std * g + b);
            })
        },
    )
}

/// Products with at least this many multiply-adds run on rayon's pool
/// (burn-flex's threshold, `ops/matmul.rs`).
#[cfg(feature = "rayon")]
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// `y = residual + x W + bias`: the bias and the residual are written first,
/// and `gemm` adds the product to them, so there is no pass of its own for
/// either (nor a zero-filled output).
///
/// # Shapes
/// - `x`: `[rows, k]`, `weight`: `[k, n]` (input-major), `bias`: `[n]`
/// - `residual`: `[rows, n]`
/// - returns `[rows, n]`
pub fn linear(x: &[f32], weight: &[f32], bias: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
    let n = bias.len();
    assert!(n > 0 && weight.len().is_multiple_of(n), "a weight of {} values with a bias of {n}", weight.len());
    let k = weight.len() / n;
    assert!(k > 0 && x.len().is_multiple_of(k), "{} inputs for a weight of {k} rows", x.len());
    timed(|| format!("linear {k}x{n}"), || linear_unchecked(x, weight, bias, residual, (x.len() / k, k, n)))
}

/// [`linear`] of `[rows, k]` by `[k, n]`, the lengths checked.
fn linear_unchecked(x: &[f32], weight: &[f32], bias: &[f32], residual: Option<&[f32]>, (rows, k, n): (usize, usize, usize)) -> Vec<f32> {
    let mut y = match residual {
        Some(residual) => {
            assert_eq!(residual.len(), rows * n, "the residual must be [rows, {n}]");
            rows_into_new(rows, n, #[inline(always)] |r, out| write_row(out, (&residual[r * n..][..n], bias, bias), |r, b, _| r + b))
        }
        None => rows_into_new(
            rows,
            n,
            #[inline(always)]
            |_, out| {
                out.write_copy_of_slice(bias);
            },
        ),
    };
    #[cfg(feature = "rayon")]
    let parallelism = if rows * n * k >= PARALLEL_PRODUCT { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    #[cfg(not(feature = "rayon"))]
    let parallelism = gemm::Parallelism::None;
    // SAFETY: `y` is [rows, n], `x` [rows, k], `weight` [k, n], all row-major
    // with the lengths checked in `linear`.
    unsafe {
        gemm::gemm(
            rows, n, k,
            y.as_mut_ptr(), 1, n as isize, true,
            x.as_ptr(), 1, k as isize,
            weight.as_ptr(), 1, n as isize,
            1.0, 1.0, false, false, false, parallelism,
        );
    }
    y
}

/// One third of a fused `q, k, v` projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Query = 0,
    Key = 1,
    Value = 2,
}

/// The layout of a fused projection: `[batch, tokens, 3 * heads * head_dim]`,
/// row-major, its thirds `q, k, v` in that order, each `[heads, head_dim]`.
#[derive(Debug, Clone, Copy)]
pub struct QkvShape {
    pub batch: usize,
    pub tokens: usize,
    pub heads: usize,
    pub head_dim: usize,
}

impl QkvShape {
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
}

/// What to attend with: `softmax(scale * a b^T + bias)` for each `(a, b)` in
/// `scores`, summed (SCLIP's q-q + k-k), times `v`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec<'a> {
    pub scores: &'a [(Part, Part)],
    pub scale: f32,
    /// `[tokens, tokens]`, row-major, added after the scale (NACLIP).
    pub bias: Option<&'a [f32]>,
    /// Token `i` attends to tokens `0..=i` only (the text tower).
    pub causal: bool,
}

/// Multi-head attention on a fused projection, heads merged in the output.
///
/// A task is one (image, head), or a block of its query rows when there are
/// fewer than [`TASKS_PER_THREAD`] tasks a thread: one 448 window of
/// ViT-B/16 has 12 heads, which on 16 threads would leave a quarter of the
/// cores idle through every attention. Blocks cost a little where they are
/// not needed: 64-row blocks (13 a head) made the image phase 4 % slower on
/// one thread and the last block 10 % (`clearclip bench`, ViT-B/16, 2
/// windows; each block packs the keys and values again for `gemm`).
///
/// # Shapes
/// - `qkv`: `[batch, tokens, 3 * heads * head_dim]` (see [`QkvShape`]) -> `[batch, tokens, heads * head_dim]`
pub fn attention(qkv: &[f32], shape: QkvShape, spec: AttentionSpec) -> Vec<f32> {
    let name = || format!("attention {}x{} of {} tokens", shape.heads, shape.head_dim, shape.tokens);
    timed(name, || attention_in_blocks(qkv, shape, spec, blocks_per_head(shape, pool_threads())))
}

/// [`attention`] splits heads into blocks of no fewer query rows than this.
const MIN_ROWS_PER_TASK: usize = 32;

/// Into how many blocks of query rows [`attention`] splits each (image, head)
/// on `threads` threads.
fn blocks_per_head(shape: QkvShape, threads: usize) -> usize {
    let heads = (shape.batch * shape.heads).max(1);
    let most = (shape.tokens / MIN_ROWS_PER_TASK).max(1);
    (TASKS_PER_THREAD * threads).div_ceil(heads).clamp(1, most)
}

/// [`attention`], each (image, head) in `blocks` tasks of consecutive query
/// rows (as many rows each as can be, give or take one).
fn attention_in_blocks(qkv: &[f32], shape: QkvShape, spec: AttentionSpec, blocks: usize) -> Vec<f32> {
    let QkvShape { batch, tokens, heads, head_dim } = shape;
    assert_eq!(qkv.len(), batch * tokens * 3 * shape.width(), "qkv does not match {shape:?}");
    if let Some(bias) = spec.bias {
        assert_eq!(bias.len(), tokens * tokens, "the attention bias must be [tokens, tokens]");
    }
    let blocks = blocks.clamp(1, tokens.max(1));
    // [batch, tokens, heads * head_dim]: each task writes its head's head_dim
    // columns of its rows of its image, so every element once (no need to
    // zero it first).
    let len = batch * tokens * shape.width();
    let mut merged = Vec::<f32>::with_capacity(len);
    let out = SharedOutput(merged.as_mut_ptr(), len);
    let scratch = || vec![0.0f32; spec.scores.len().clamp(1, 2) * tokens.div_ceil(blocks) * tokens];
    let run = |scratch: &mut Vec<f32>, index: usize| {
        let (image, head, block) = (index / (heads * blocks), index / blocks % heads, index % blocks);
        let rows = block * tokens / blocks..(block + 1) * tokens / blocks;
        let image_qkv = &qkv[image * tokens * 3 * shape.width()..][..tokens * 3 * shape.width()];
        let first = (image * tokens + rows.start) * shape.width() + head * head_dim;
        // SAFETY: `merged` outlives the loop, its length is checked by
        // `SharedOutput::at`, and no two (image, head, block) write the same
        // element.
        unsafe { attend_rows(image_qkv, shape, head, rows, spec, scratch, out.at(first)) };
    };
    let tasks = batch * heads * blocks;
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        (0..tasks).into_par_iter().for_each_init(scratch, run);
    }
    #[cfg(not(feature = "rayon"))]
    {
        let mut scratch = scratch();
        (0..tasks).for_each(|index| run(&mut scratch, index));
    }
    // SAFETY: the loops above wrote all `len` elements (the value product of
    // `attend_rows` writes every one of its rows of its head's columns, and
    // the blocks cover all rows).
    unsafe { merged.set_len(len) };
    merged
}

/// The output of [`attention`] and its length, written by every task at once
/// at disjoint places.
#[derive(Clone, Copy)]
struct SharedOutput(*mut f32, usize);

impl SharedOutput {
    /// The element at `offset`, which must be in bounds.
    fn at(self, offset: usize) -> *mut f32 {
        assert!(offset < self.1);
        // SAFETY: in bounds of the allocation.
        unsafe { self.0.add(offset) }
    }
}

// SAFETY: the tasks write disjoint elements (see `attention_in_blocks`).
unsafe impl Send for SharedOutput {}
unsafe impl Sync for SharedOutput {}

/// Some query rows of one head of one image: `out = (sum of softmax(scale a
/// b^T + bias)) v` for the rows `rows` of `a` (queries) against all tokens.
///
/// # Shapes
/// - `qkv`: `[tokens, 3 * heads * head_dim]` (one image)
/// - `scratch`: at least `rows.len() * tokens`, twice that when more than one score pair is summed
/// - `out`: `[rows.len(), head_dim]` with a row stride of `heads * head_dim`:
///   this head's columns of those rows of the merged `[tokens, heads * head_dim]` output
///
/// # Safety
/// `out` must be valid for writes at `t * heads * head_dim + d` for every
/// `t < rows.len()` and `d < head_dim`, and nothing else may access those elements.
unsafe fn attend_rows(qkv: &[f32], shape: QkvShape, head: usize, rows: Range<usize>, spec: AttentionSpec, scratch: &mut [f32], out: *mut f32) {
    let QkvShape { tokens, head_dim, .. } = shape;
    let row_stride = 3 * shape.width() as isize;
    let part = |p: Part, row: usize| qkv[row * 3 * shape.width() + p as usize * shape.width() + head * head_dim..].as_ptr();
    let count = rows.len();
    // softmax(scale a b^T + bias) for `rows` into `scores`, `[count, tokens]`.
    let attention_weights = |(a, b): (Part, Part), scores: &mut [f32]| {
        // scores[i, j] = scale * sum_d a[rows.start + i, d] b[j, d]
        // SAFETY: both operands are [_, head_dim] views into `qkv` (row
        // stride 3 * width, its length checked by `attention_in_blocks`; `a`
        // from row `rows.start`, `count` rows); the destination is `scores`,
        // [count, tokens].
        unsafe {
            gemm::gemm(
                count, tokens, head_dim,
                scores.as_mut_ptr(), 1, tokens as isize, false,
                part(a, rows.start), 1, row_stride,
                part(b, 0), row_stride, 1,
                0.0, spec.scale, false, false, false, gemm::Parallelism::None,
            );
        }
        widest_simd(
            #[inline(always)]
            || {
                for (row_index, row) in rows.clone().zip(scores.chunks_mut(tokens)) {
                    if let Some(bias) = spec.bias {
                        for (s, &b) in row.iter_mut().zip(&bias[row_index * tokens..]) {
                            *s += b;
                        }
                    }
                    let attended = if spec.causal { row_index + 1 } else { tokens };
                    softmax_in_place(&mut row[..attended]);
                    row[attended..].fill(0.0);
                }
            },
        );
    };
    let (weights, more) = scratch.split_at_mut(count * tokens);
    for (i, &pair) in spec.scores.iter().enumerate() {
        if i == 0 {
            attention_weights(pair, weights);
        } else {
            let extra = &mut more[..count * tokens];
            attention_weights(pair, extra);
            for (sum, &w) in weights.iter_mut().zip(extra.iter()) {
                *sum += w;
            }
        }
    }
    // out[i, d] = sum_j weights[i, j] v[j, d]
    // SAFETY: `weights` is [count, tokens], v a [tokens, head_dim] view into
    // `qkv`, `out` a [count, head_dim] view (the caller's contract).
    unsafe {
        gemm::gemm(
            count, head_dim, tokens,
            out, 1, shape.width() as isize, false,
            weights.as_ptr(), 1, tokens as isize,
            part(Part::Value, 0), 1, row_stride,
            0.0, 1.0, false, false, false, gemm::Parallelism::None,
        );
    }
}

/// A tensor's values, borrowed: it holds the tensor's data (not a copy) and
/// reads as a `&[f32]`.
pub(crate) struct HostValues(FlexTensor);

impl HostValues {
    /// `None` unless the tensor is contiguous f32 data of burn's CPU backend.
    pub(crate) fn of<const D: usize>(tensor: &Tensor<D>) -> Option<Self> {
        let primitive = tensor.clone().try_into_primitive::<Flex>().ok()?;
        primitive.as_slice::<f32>()?;
        Some(Self(primitive))
    }
}

impl Deref for HostValues {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        self.0.as_slice().expect("contiguous f32, checked by HostValues::of")
    }
}

/// The tensor's values as f32 on the host (no copy when it holds the only
/// reference to contiguous f32 data, as a fresh result does).
fn host_values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    let data = tensor.into_data().convert::<f32>();
    data.try_into_vec::<f32>().expect("f32 data after convert")
}

/// [`attention`] on a tensor of burn's CPU backend.
///
/// # Shapes
/// - `qkv`: `[batch, tokens, 3 * heads * head_dim]` -> `[batch, tokens, heads * head_dim]`
pub(crate) fn attention_tensor(qkv: Tensor<3>, heads: usize, spec: AttentionSpec) -> Tensor<3> {
    let [batch, tokens, width3] = qkv.dims();
    let device = qkv.device();
    let shape = QkvShape { batch, tokens, heads, head_dim: width3 / 3 / heads };
    // Borrowed, not taken: the last block's projection is kept for the next
    // mode's re-run (`LastBlockInput`), and taking a shared tensor's values copies them.
    let out = match HostValues::of(&qkv) {
        Some(values) => attention(&values, shape, spec),
        None => attention(&host_values(qkv), shape, spec),
    };
    Tensor::from_data(TensorData::new(out, [batch, tokens, width3 / 3]), &device)
}

/// QuickGELU on a tensor of burn's CPU backend.
///
/// # Shapes
/// - `x`: any -> same
pub(crate) fn quick_gelu_tensor<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let (shape, device) = (x.shape(), x.device());
    let mut values = host_values(x);
    quick_gelu_in_place(&mut values);
    Tensor::from_data(TensorData::new(values, shape), &device)
}

#[cfg(test)]
mod tests {
    use clearclip_fixtures::{largest_difference, SeededRng};

    use super::*;

    /// The largest relative error of [`exp`] against f64 over every 1/1000
    /// of softmax's and sigmoid's range.
    #[test]
    fn exp_is_within_two_and_a_half_parts_in_ten_million() {
        let mut worst = 0.0f64;
        for i in -87_000..=87_000 {
            let x = i as f32 / 1000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1.3e-38 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    /// Attention written out in f64, one head at a time.
    fn reference(qkv: &[f32], s: QkvShape, spec: AttentionSpec) -> Vec<f32> {
        let w = s.width();
        let at = |b: usize, t: usize, p: Part, h: usize, d: usize| qkv[(b * s.tokens + t) * 3 * w + p as usize * w + h * s.head_dim + d] as f64;
        let mut out = vec![0.0f32; s.batch * s.tokens * w];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let mut weights = vec![0.0f64; s.tokens * s.tokens];
                for &(pa, pb) in spec.scores {
                    for i in 0..s.tokens {
                        let n = if spec.causal { i + 1 } else { s.tokens };
                        let row: Vec<f64> = (0..n)
                            .map(|j| {
                                let dot: f64 = (0..s.head_dim).map(|d| at(b, i, pa, h, d) * at(b, j, pb, h, d)).sum();
                                dot * spec.scale as f64 + spec.bias.map_or(0.0, |bias| bias[i * s.tokens + j] as f64)
                            })
                            .collect();
                        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                        for (j, v) in row.iter().enumerate() {
                            weights[i * s.tokens + j] += (v - max).exp() / sum;
                        }
                    }
                }
                for i in 0..s.tokens {
                    for d in 0..s.head_dim {
                        let v: f64 = (0..s.tokens).map(|j| weights[i * s.tokens + j] * at(b, j, Part::Value, h, d)).sum();
                        out[(b * s.tokens + i) * w + h * s.head_dim + d] = v as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_a_written_out_reference() {
        // Odd sizes: tails of the 8-lane loops and of gemm's register blocks.
        let shape = QkvShape { batch: 2, tokens: 37, heads: 3, head_dim: 5 };
        let mut rng = SeededRng::new(7);
        let qkv = rng.uniform(shape.batch * shape.tokens * 3 * shape.width(), -3.0, 3.0);
        let bias = rng.uniform(shape.tokens * shape.tokens, -3.0, 3.0);
        use Part::*;
        // Score pairs, bias, causal.
        type Case<'a> = (&'a [(Part, Part)], Option<&'a [f32]>, bool);
        let cases: [Case; 5] = [
            (&[(Query, Key)], None, false),
            (&[(Query, Key)], None, true),
            (&[(Query, Query)], None, false),
            (&[(Key, Key)], Some(&bias), false),
            (&[(Query, Query), (Key, Key)], None, false),
        ];
        for (scores, bias, causal) in cases {
            let spec = AttentionSpec { scores, scale: 0.4472, bias, causal };
            let want = reference(&qkv, shape, spec);
            // All rows in one task, and blocks of rows: 5 blocks of 7 or 8
            // rows (37 tokens), and a block per row.
            for blocks in [1, 5, shape.tokens] {
                let got = attention_in_blocks(&qkv, shape, spec, blocks);
                let (worst, _) = largest_difference(&got, &want);
                assert!(worst < 2e-5, "{scores:?} bias {} causal {causal}, {blocks} blocks a head: max abs diff {worst:e}", bias.is_some());
            }
        }
    }

    #[test]
    fn attention_on_many_threads_matches_the_reference() {
        // Two heads of 70 tokens: on 16 threads each is cut in two blocks.
        let shape = QkvShape { batch: 1, tokens: 70, heads: 2, head_dim: 5 };
        assert_eq!(blocks_per_head(shape, 16), 2);
        let qkv = SeededRng::new(9).uniform(shape.batch * shape.tokens * 3 * shape.width(), -3.0, 3.0);
        for causal in [false, true] {
            let spec = AttentionSpec { scores: &[(Part::Query, Part::Key)], scale: 0.4472, bias: None, causal };
            let want = reference(&qkv, shape, spec);
            on_pools(|| {
                let (worst, _) = largest_difference(&attention(&qkv, shape, spec), &want);
                assert!(worst < 2e-5, "causal {causal}: max abs diff {worst:e}");
            });
        }
    }

    #[test]
    fn attention_splits_heads_only_when_threads_outnumber_them() {
        let window = QkvShape { batch: 1, tokens: 785, heads: 12, head_dim: 64 };
        // One or two threads: a task per head.
        assert_eq!(blocks_per_head(window, 1), 1);
        assert_eq!(blocks_per_head(window, 2), 1);
        // 16 threads: 6 blocks a head, 72 tasks.
        assert_eq!(blocks_per_head(window, 16), 6);
        // A text batch has tasks enough; a short sequence is not cut below 32 rows.
        assert_eq!(blocks_per_head(QkvShape { batch: 80, tokens: 12, heads: 8, head_dim: 64 }, 16), 1);
        assert_eq!(blocks_per_head(QkvShape { batch: 1, tokens: 50, heads: 1, head_dim: 64 }, 64), 1);
        for threads in [1, 3, 8, 16, 64] {
            for (batch, tokens, heads) in [(1, 785, 12), (2, 197, 12), (1, 3137, 16), (3, 33, 5), (1, 1, 1)] {
                let shape = QkvShape { batch, tokens, heads, head_dim: 8 };
                let blocks = blocks_per_head(shape, threads);
                let (tasks, fewest_rows) = (batch * heads * blocks, tokens / blocks);
                assert!(fewest_rows >= MIN_ROWS_PER_TASK.min(tokens), "{shape:?} on {threads}: {fewest_rows} rows");
                // Enough tasks, or the blocks are as small as they may be.
                assert!(tasks >= TASKS_PER_THREAD * threads || tokens / (blocks + 1) < MIN_ROWS_PER_TASK, "{shape:?} on {threads}: {tasks} tasks");
            }
        }
    }

    /// `f` on the global pool and, with the `rayon` feature, on a pool of 16
    /// threads, where the loops cut the work into more and smaller tasks.
    fn on_pools(f: impl Fn() + Send + Sync) {
        f();
        #[cfg(feature = "rayon")]
        rayon::ThreadPoolBuilder::new().num_threads(16).build().unwrap().install(f);
    }

    #[test]
    fn layer_norm_matches_a_written_out_reference() {
        // A width with an 8-lane tail; rows over more than one pool task; an
        // offset mean so that the variance is not the mean square.
        let (rows, width) = (301, 771);
        let mut rng = SeededRng::new(11);
        let x: Vec<f32> = rng.uniform(rows * width, -4.0, 4.0).iter().map(|v| v + 20.0).collect();
        let (gamma, beta) = (rng.uniform(width, 0.5, 1.5), rng.uniform(width, -1.0, 1.0));
        let mut want = Vec::with_capacity(x.len());
        for row in x.chunks(width) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
            let inv_std = 1.0 / (var + 1e-5).sqrt();
            want.extend(row.iter().zip(&gamma).zip(&beta).map(|((&v, &g), &b)| ((v as f64 - mean) * inv_std * g as f64 + b as f64) as f32));
        }
        on_pools(|| {
            let (worst, at) = largest_difference(&layer_norm(&x, &gamma, &beta, 1e-5), &want);
            assert!(worst < 2e-5, "max abs diff {worst:e} at {at}");
        });
    }

    #[test]
    fn linear_adds_bias_and_residual_to_the_product() {
        // Odd sizes (gemm's register-block tails), and a product large enough
        // to run on the pool.
        for (rows, k, n) in [(7, 5, 3), (197, 200, 211)] {
            let mut rng = SeededRng::new(5);
            let (x, weight) = (rng.uniform(rows * k, -1.0, 1.0), rng.uniform(k * n, -1.0, 1.0));
            let (bias, residual) = (rng.uniform(n, -1.0, 1.0), rng.uniform(rows * n, -10.0, 10.0));
            let product = |r: usize, c: usize| (0..k).map(|i| x[r * k + i] as f64 * weight[i * n + c] as f64).sum::<f64>() + bias[c] as f64;
            let want: Vec<f32> = (0..rows * n).map(|i| product(i / n, i % n) as f32).collect();
            let (worst, at) = largest_difference(&linear(&x, &weight, &bias, None), &want);
            assert!(worst < 1e-4, "{rows}x{k}x{n}: max abs diff {worst:e} at {at}");
            let want: Vec<f32> = want.iter().zip(&residual).map(|(w, r)| w + r).collect();
            let (worst, at) = largest_difference(&linear(&x, &weight, &bias, Some(&residual)), &want);
            assert!(worst < 1e-4, "{rows}x{k}x{n} with a residual: max abs diff {worst:e} at {at}");
        }
    }

    #[test]
    fn host_values_borrow_contiguous_cpu_tensors_only() {
        let device = Device::flex();
        let t = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2., 3., 4., 5., 6.], [2, 3]), &device);
        assert_eq!(HostValues::of(&t).as_deref(), Some(&[1.0, 2., 3., 4., 5., 6.][..]));
        // A transposed view is not row-major: no slice, so callers take burn's path.
        assert!(HostValues::of(&t.clone().transpose()).is_none());
    }

    #[test]
    fn quick_gelu_matches_its_definition() {
        // More than two chunks of the pool's tasks, the last one partial.
        let values = SeededRng::new(3).uniform(150_001, -15.0, 15.0);
        let want: Vec<f64> = values.iter().map(|&v| v as f64 / (1.0 + (-1.702 * v as f64).exp())).collect();
        on_pools(|| {
            let mut got = values.clone();
            quick_gelu_in_place(&mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
            }
        });
    }

    /// A loop gives the same bits through [`widest_simd`] (AVX-512 or AVX2,
    /// where this CPU has them; the same code elsewhere) as compiled here for
    /// the baseline: softmax rows with tails, and the layer norm's and
    /// QuickGELU's arithmetic.
    #[test]
    // The closures are on purpose: a function item passed as `impl Fn` goes
    // through a `Fn::call` shim that stays at the baseline.
    #[allow(clippy::redundant_closure)]
    fn wider_simd_gives_the_same_bits() {
        #[inline(always)]
        fn softmax_rows(v: &mut [f32]) {
            for row in v.chunks_mut(785) {
                softmax_in_place(row);
            }
        }
        #[inline(always)]
        fn spread(v: &[f32], mean: f32) -> (f32, f32, f32) {
            (sum_of(v), sum_of_map(v, |x| (x - mean) * (x - mean)), max_of(v))
        }
        #[inline(always)]
        fn gelu(v: &mut [f32]) {
            for x in v.iter_mut() {
                *x *= 1.0 / (1.0 + exp(-(1.702 * *x)));
            }
        }
        /// `f` on a copy of `values` here and through `widest_simd`.
        fn both_ways(values: &[f32], f: impl Fn(&mut [f32])) -> [Vec<u32>; 2] {
            let (mut baseline, mut wide) = (values.to_vec(), values.to_vec());
            f(&mut baseline);
            widest_simd(
                #[inline(always)]
                || f(&mut wide),
            );
            [baseline, wide].map(|v| v.iter().map(|x| x.to_bits()).collect())
        }
        let values = SeededRng::new(11).uniform(785 * 3 + 5, -40.0, 40.0);
        let [baseline, wide] = both_ways(
            &values,
            #[inline(always)]
            |v| softmax_rows(v),
        );
        assert_eq!(baseline, wide, "softmax");
        let [baseline, wide] = both_ways(
            &values,
            #[inline(always)]
            |v| gelu(v),
        );
        assert_eq!(baseline, wide, "QuickGELU");

        let mean = sum_of(&values) / values.len() as f32;
        let wide = widest_simd(
            #[inline(always)]
            || spread(&values, mean),
        );
        assert_eq!(spread(&values, mean), wide, "sums and max");
    }
}
