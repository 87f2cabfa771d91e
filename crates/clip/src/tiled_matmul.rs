//! A matrix-product kernel of our own for the GPU backend
//! ([`crate::gpu_matmul::MatmulRoutine::Tiled`] and `TiledSmall`),
//! candidates for a bench on a real GPU next to cubek's routines: the
//! textbook register-tiled product.
//! A work group of 16 x 16 units computes a 128 x 64 tile of the output,
//! each unit 8 rows by one vector of 4 columns (`Tiled`), or a 64 x 64 tile,
//! 4 rows a unit (`TiledSmall`: more work groups for the same product, for a
//! GPU with many cores), with the operands staged in workgroup memory 16
//! products deep (the next 16 read into registers meanwhile) and every inner
//! step a vector multiply-add.
//!
//! Sums are f32 at both precisions, as cubek's are and as PyTorch's fp16 is
//! on CUDA: at f16 the operands are read as f16 (half the memory traffic)
//! and widened once, when staged. Summing in f16 instead (vector f16
//! multiply-adds, which NVIDIA GPUs run two to an instruction) was tried on
//! lavapipe, which rounds each f16 variable as a GPU does: with partial f16
//! sums of 16 or 8 products added into f32 the towers came out 1.86x and
//! 1.55x as far from f32 as PyTorch's fp16 (the f16 tests allow 1.5x); 4
//! products were within it, but then, counting instructions, folding each
//! run into f32 costs what the f16 multiply-adds save (`docs/performance.md`,
//! "Matrix-product routines").
//!
//! Operands may have any strides (q, k and v are views of the fused
//! projection, k transposed) and the same batch dimensions; the output is
//! contiguous. Edges are zero-padded in workgroup memory, so any shape runs.
//! Consecutive units read consecutive addresses where an operand has them:
//! the lhs along its products (its rows are contiguous in the model's
//! layouts), the rhs along its columns, or along its products where those
//! are contiguous instead (k^T in `q k^T`).

use burn::backend::cubecl::dtype_to_storage_type;
use burn::tensor::{self as burn_tensor, DType};
use burn_cubecl::kernel::matmul::init_matmul_output;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

/// Units of a work group along the output's rows and columns.
const UNITS_Y: usize = 16;
const UNITS_X: usize = 16;
/// Values in a vector: f32 or f16 `vec4` in WGSL.
const LANES: usize = 4;
/// Products a work group stages at a time.
const TILE_K: usize = 16;
/// A work group's output columns.
const TILE_N: usize = UNITS_X * LANES;

/// Vectors of the lhs and of the rhs a unit stages per tile.
const fn loads_per_unit(tile: usize) -> usize {
    TILE_K * tile / LANES / (UNITS_X * UNITS_Y)
}

/// One work group per `16 * unit_rows` x [`TILE_N`] tile of one batch's
/// output (`CUBE_POS_Y`, `CUBE_POS_X`, `CUBE_POS_Z`); a unit computes
/// `unit_rows` rows (4 or 8) by one vector of `N` = [`LANES`] columns.
/// The next tile's operands are read into registers while the unit works
/// on this one's, so their latency hides behind the multiply-adds.
#[cube(launch_unchecked)]
fn tiled_matmul<F: Float, N: Size>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] unit_rows: usize,
    #[comptime] rhs_by_column: bool,
    #[define(F)] _dtype: ElemType,
) {
    let tile_m = comptime!(UNITS_Y * unit_rows);
    let rank = out.rank();

    // This work group's batch: its offset in each operand, the batch
    // dimensions unravelled from the last.
    let mut rest = CUBE_POS_Z as usize;
    let mut lhs_at = 0usize;
    let mut rhs_at = 0usize;
    let mut out_at = 0usize;
    for j in 0..rank - 2 {
        let dim = rank - 3 - j;
        let index = rest % out.shape(dim);
        rest /= out.shape(dim);
        lhs_at += index * lhs.stride(dim);
        rhs_at += index * rhs.stride(dim);
        out_at += index * out.stride(dim);
    }

    // Workgroup memory, in f32, by product index: the tile's lhs column as
    // vectors of rows, its rhs row as vectors of columns. Each is padded by
    // one vector: units that stage consecutive products of a row (the lhs;
    // the rhs read by column) would otherwise all store into the same
    // memory banks.
    let lhs_stride = comptime!(tile_m / LANES + 1);
    let rhs_stride = comptime!(TILE_N / LANES + 1);
    let mut lhs_tile = Shared::<[Vector<f32, N>]>::new_slice(comptime!(TILE_K * (tile_m / LANES + 1)));
    let mut rhs_tile = Shared::<[Vector<f32, N>]>::new_slice(comptime!(TILE_K * (TILE_N / LANES + 1)));
    let mut lhs_staged = Array::<Vector<F, N>>::new(comptime!(loads_per_unit(tile_m)));
    let mut rhs_staged = Array::<Vector<F, N>>::new(comptime!(loads_per_unit(TILE_N)));

    let unit = UNIT_POS_Y as usize * UNITS_X + UNIT_POS_X as usize;
    let (tile_row, tile_col) = (CUBE_POS_Y as usize * tile_m, CUBE_POS_X as usize * TILE_N);

    let mut sums = Array::<Vector<f32, N>>::new(unit_rows);
    #[unroll]
    for i in 0..unit_rows {
        sums[i] = Vector::new(0.0f32);
    }

    #[allow(clippy::manual_div_ceil)] // kernel code has no div_ceil
    let tiles = (lhs.shape(rank - 1) + TILE_K - 1) / TILE_K;
    load_tile(lhs, rhs, lhs_at, rhs_at, tile_row, tile_col, 0, unit, &mut lhs_staged, &mut rhs_staged, tile_m, rhs_by_column);
    for t in 0..tiles {
        #[unroll]
        for j in 0..comptime!(loads_per_unit(tile_m)) {
            let v = unit + j * comptime!(UNITS_X * UNITS_Y);
            lhs_tile[(v % TILE_K) * lhs_stride + v / TILE_K] = Vector::cast_from(lhs_staged[j]);
        }
        #[unroll]
        for j in 0..comptime!(loads_per_unit(TILE_N)) {
            let (k, column) = rhs_staging_position(unit + j * comptime!(UNITS_X * UNITS_Y), rhs_by_column);
            rhs_tile[k * rhs_stride + column] = Vector::cast_from(rhs_staged[j]);
        }
        sync_cube();

        // Past the last tile this reads nothing (every product is out of range).
        load_tile(lhs, rhs, lhs_at, rhs_at, tile_row, tile_col, (t + 1) * TILE_K, unit, &mut lhs_staged, &mut rhs_staged, tile_m, rhs_by_column);

        #[unroll]
        for k in 0..TILE_K {
            let b = rhs_tile[k * rhs_stride + UNIT_POS_X as usize];
            #[unroll]
            for r in 0..comptime!(unit_rows / LANES) {
                let a = lhs_tile[k * lhs_stride + UNIT_POS_Y as usize * comptime!(unit_rows / LANES) + r];
                #[unroll]
                for lane in 0..LANES {
                    let i = comptime!(r * LANES + lane);
                    sums[i] = fma(Vector::new(a.extract(lane)), b, sums[i]);
                }
            }
        }
        sync_cube();
    }

    let (m, n) = (out.shape(rank - 2), out.shape(rank - 1));
    let col = tile_col + UNIT_POS_X as usize * LANES;
    let (out_row, out_col) = (out.stride(rank - 2), out.stride(rank - 1));
    #[unroll]
    for i in 0..unit_rows {
        let row = tile_row + UNIT_POS_Y as usize * unit_rows + i;
        #[unroll]
        for lane in 0..LANES {
            if row < m && col + lane < n {
                out[out_at + row * out_row + (col + lane) * out_col] = F::cast_from(sums[i].extract(lane));
            }
        }
    }
}

/// Where the `v`-th vector of a tile's rhs goes: its product (0 to
/// [`TILE_K`]) and its vector of columns (0 to `TILE_N / LANES`).
/// Consecutive `v` are consecutive vectors of columns of one product, or,
/// `by_column`, consecutive products of one vector of columns.
#[cube]
fn rhs_staging_position(v: usize, #[comptime] by_column: bool) -> (usize, usize) {
    if by_column {
        (v % TILE_K, v / TILE_K)
    } else {
        (v / comptime!(TILE_N / LANES), v % comptime!(TILE_N / LANES))
    }
}

/// This unit's share of the tile of products from `k0`, read into
/// registers: `lhs_staged` holds vectors of `LANES` rows of one product,
/// `rhs_staged` vectors of `LANES` columns. Consecutive units take
/// consecutive products of the lhs (its rows are contiguous in the model's
/// layouts), and consecutive columns of the rhs or, `rhs_by_column`,
/// consecutive products ([`rhs_staging_position`]), so that a warp's reads
/// are contiguous. Values past an edge are 0.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tile<F: Float, N: Size>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    lhs_at: usize,
    rhs_at: usize,
    tile_row: usize,
    tile_col: usize,
    k0: usize,
    unit: usize,
    lhs_staged: &mut Array<Vector<F, N>>,
    rhs_staged: &mut Array<Vector<F, N>>,
    #[comptime] tile_m: usize,
    #[comptime] rhs_by_column: bool,
) {
    let rank = lhs.rank();
    let (m, depth, n) = (lhs.shape(rank - 2), lhs.shape(rank - 1), rhs.shape(rank - 1));
    #[unroll]
    for j in 0..comptime!(loads_per_unit(tile_m)) {
        let v = unit + j * comptime!(UNITS_X * UNITS_Y);
        let (k, row) = (k0 + v % TILE_K, tile_row + (v / TILE_K) * LANES);
        let rows = if k < depth && row < m { m - row } else { 0usize };
        let at = lhs_at + row * lhs.stride(rank - 2) + k * lhs.stride(rank - 1);
        lhs_staged[j] = gather(lhs, at, lhs.stride(rank - 2), rows);
    }
    #[unroll]
    for j in 0..comptime!(loads_per_unit(TILE_N)) {
        let (k, column) = rhs_staging_position(unit + j * comptime!(UNITS_X * UNITS_Y), rhs_by_column);
        let (k, col) = (k0 + k, tile_col + column * LANES);
        let columns = if k < depth && col < n { n - col } else { 0usize };
        let at = rhs_at + k * rhs.stride(rank - 2) + col * rhs.stride(rank - 1);
        rhs_staged[j] = gather(rhs, at, rhs.stride(rank - 1), columns);
    }
}

/// `LANES` values of `tensor`, `step` apart from `at`, of which the first
/// `valid` are read and the rest are 0.
#[cube]
fn gather<F: Float, N: Size>(tensor: &Tensor<F>, at: usize, step: usize, valid: usize) -> Vector<F, N> {
    let mut value = Vector::<F, N>::empty();
    #[unroll]
    for lane in 0..LANES {
        let x = if lane < valid { tensor[at + lane * step] } else { F::new(0.0) };
        value.insert(lane, x);
    }
    value
}

/// `lhs @ rhs` through [`tiled_matmul`] with units of `unit_rows` rows (4
/// or 8), or why it cannot run: operands that are not cubecl tensors of one
/// float type (f32 or f16).
///
/// # Shapes
/// - `lhs`: `[..batch, m, k]`, `rhs`: `[..batch, k, n]` -> `[..batch, m, n]`
pub(crate) fn matmul<const D: usize>(lhs: burn_tensor::Tensor<D>, rhs: burn_tensor::Tensor<D>, unit_rows: usize) -> Result<burn_tensor::Tensor<D>, String> {
    let on_gpu = |e| format!("not a GPU tensor ({e:?})");
    let lhs = lhs.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
    let rhs = rhs.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
    assert!(unit_rows == 4 || unit_rows == 8, "a unit's rows are one or two vectors");
    let dtype = lhs.dtype;
    if rhs.dtype != dtype || !matches!(dtype, DType::F32 | DType::F16) {
        return Err(format!("operands of {dtype:?} and {:?}", rhs.dtype));
    }
    let out = init_matmul_output(&lhs, &rhs, dtype);
    let shape = out.meta.shape().clone();
    let (m, n) = (shape[D - 2], shape[D - 1]);
    let batches: usize = shape.as_slice()[..D - 2].iter().product();
    if out.meta.num_elements() == 0 {
        return Ok(burn_tensor::Tensor::from_primitive::<CubeBackend>(out));
    }
    // A work group count a dimension, at most 65535 in WebGPU (burn's
    // routine runs what would need more).
    if batches > 65_535 || m.div_ceil(UNITS_Y * unit_rows) > 65_535 {
        return Err(format!("{batches} batches of {m} rows: more work groups than a dispatch allows"));
    }
    // The rhs read along its products where they, not its columns, are
    // contiguous (k^T as a view of k).
    let rhs_strides = rhs.meta.strides();
    let rhs_by_column = rhs_strides[D - 2] == 1 && rhs_strides[D - 1] != 1;
    let client = out.client.clone();
    let cube_count = CubeCount::Static(n.div_ceil(TILE_N) as u32, m.div_ceil(UNITS_Y * unit_rows) as u32, batches as u32);
    // SAFETY: every read of an operand and every write of the output is
    // guarded by the row, column and product bounds (edges are zero-padded),
    // and workgroup memory is indexed within its comptime length; so the
    // bounds checks of a checked launch, on every load, are left out.
    unsafe {
        tiled_matmul::launch_unchecked(
            &client,
            cube_count,
            CubeDim::new_2d(UNITS_X as u32, UNITS_Y as u32),
            LANES,
            lhs.into_tensor_arg(),
            rhs.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            unit_rows,
            rhs_by_column,
            dtype_to_storage_type(dtype),
        );
    }
    Ok(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
}
