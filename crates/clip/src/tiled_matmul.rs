//! A matrix-product kernel of our own for the GPU backend
//! ([`crate::gpu_matmul::MatmulRoutine::Tiled`], `TiledSmall` and
//! `TiledWide`), candidates for a bench on a real GPU next to cubek's
//! routines: the textbook register-tiled product.
//! A work group of 16 x 16 units computes one tile of the output
//! ([`TileShape`]): 128 x 64, each unit 8 rows by one vector of 4 columns
//! (`Tiled`); 64 x 64, 4 rows a unit (`TiledSmall`: more work groups for the
//! same product, for a GPU with many cores); or 128 x 128, 8 rows by two
//! vectors a unit (`TiledWide`: the 8 x 8 a thread of the classic CUDA
//! SGEMM kernels, more multiply-adds per value read from workgroup memory,
//! fewer work groups). The operands are staged in workgroup memory 16 (8
//! for `TiledWide`) products deep, the next ones read into registers
//! meanwhile, and every inner step is a vector multiply-add.
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

/// A work group's share of a product: [`UNITS_Y`] x [`UNITS_X`] units, each
/// computing `unit_rows` rows by `unit_vectors` vectors of [`LANES`]
/// columns, with `depth` products staged in workgroup memory at a time.
/// Built only by [`TileShape::new`], which checks the shape; the shapes
/// the model runs are constants, so an invalid one fails to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TileShape {
    unit_rows: usize,
    unit_vectors: usize,
    depth: usize,
}

/// WebGPU's default `maxComputeWorkgroupStorageSize`, what every adapter has.
const WORKGROUP_BYTES: usize = 16384;

impl TileShape {
    /// 128 x 64 output tiles, 8 x 4 a unit (`--gpu-matmul tiled`).
    pub(crate) const TALL: TileShape = TileShape::new(8, 1, 16);
    /// 64 x 64, 4 x 4 a unit (`tiled-small`).
    pub(crate) const SMALL: TileShape = TileShape::new(4, 1, 16);
    /// 128 x 128, 8 x 8 a unit, 8 products deep (`tiled-wide`): the staged
    /// operands take 8.3 KiB, within WebGPU's default 16 KiB of workgroup
    /// memory (16 products deep would not be).
    pub(crate) const WIDE: TileShape = TileShape::new(8, 2, 8);

    /// A unit of `unit_rows` rows (one or two vectors) by `unit_vectors`
    /// vectors of columns (one or two), `depth` products staged at a time.
    /// Panics, at compile time for a constant, where a unit would stage a
    /// part of a vector or the staged operands would not fit in
    /// [`WORKGROUP_BYTES`].
    const fn new(unit_rows: usize, unit_vectors: usize, depth: usize) -> TileShape {
        assert!(unit_rows == 4 || unit_rows == 8, "a unit's rows are one or two vectors");
        assert!(unit_vectors == 1 || unit_vectors == 2, "a unit's columns are one or two vectors");
        let shape = TileShape { unit_rows, unit_vectors, depth };
        let units = UNITS_X * UNITS_Y;
        assert!(
            depth > 0 && (depth * shape.rows()).is_multiple_of(LANES * units) && (depth * shape.columns()).is_multiple_of(LANES * units),
            "every unit stages whole vectors of both operands"
        );
        assert!(shape.workgroup_bytes() <= WORKGROUP_BYTES, "the staged operands exceed 16 KiB of workgroup memory");
        shape
    }

    const fn rows(self) -> usize {
        UNITS_Y * self.unit_rows
    }

    const fn columns(self) -> usize {
        UNITS_X * LANES * self.unit_vectors
    }

    /// Bytes of workgroup memory (f32) for the staged lhs and rhs, each
    /// padded by a vector a product.
    const fn workgroup_bytes(self) -> usize {
        self.depth * (self.rows() / LANES + 1 + self.columns() / LANES + 1) * LANES * 4
    }
}

/// Vectors of an operand's `tile`-wide side a unit stages per `depth` products.
const fn loads_per_unit(depth: usize, tile: usize) -> usize {
    depth * tile / LANES / (UNITS_X * UNITS_Y)
}

/// One work group per `16 * unit_rows` x `64 * unit_vectors` tile of one
/// batch's output (`CUBE_POS_Y`, `CUBE_POS_X`, `CUBE_POS_Z`); a unit
/// computes `unit_rows` rows (4 or 8) by `unit_vectors` vectors of `N` =
/// [`LANES`] columns ([`TileShape`]), its vectors [`UNITS_X`] vectors apart
/// so that the units of a row read consecutive ones. `depth` products are
/// staged at a time; the next ones are read into registers while the unit
/// works on these, so their latency hides behind the multiply-adds.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn tiled_matmul<F: Float, N: Size>(
    lhs: &Tensor<F>,
    rhs: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] unit_rows: usize,
    #[comptime] unit_vectors: usize,
    #[comptime] depth: usize,
    #[comptime] rhs_by_column: bool,
    #[define(F)] _dtype: ElemType,
) {
    let tile_m = comptime!(UNITS_Y * unit_rows);
    let tile_n = comptime!(UNITS_X * LANES * unit_vectors);
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
    let rhs_stride = comptime!(tile_n / LANES + 1);
    let mut lhs_tile = Shared::<[Vector<f32, N>]>::new_slice(comptime!(depth * (tile_m / LANES + 1)));
    let mut rhs_tile = Shared::<[Vector<f32, N>]>::new_slice(comptime!(depth * (tile_n / LANES + 1)));
    let mut lhs_staged = Array::<Vector<F, N>>::new(comptime!(loads_per_unit(depth, tile_m)));
    let mut rhs_staged = Array::<Vector<F, N>>::new(comptime!(loads_per_unit(depth, tile_n)));

    let unit = UNIT_POS_Y as usize * UNITS_X + UNIT_POS_X as usize;
    let (tile_row, tile_col) = (CUBE_POS_Y as usize * tile_m, CUBE_POS_X as usize * tile_n);

    // Row i's vector c at `sums[i * unit_vectors + c]`.
    let mut sums = Array::<Vector<f32, N>>::new(comptime!(unit_rows * unit_vectors));
    #[unroll]
    for i in 0..comptime!(unit_rows * unit_vectors) {
        sums[i] = Vector::new(0.0f32);
    }
    let mut b = Array::<Vector<f32, N>>::new(unit_vectors);

    #[allow(clippy::manual_div_ceil)] // kernel code has no div_ceil
    let tiles = (lhs.shape(rank - 1) + depth - 1) / depth;
    load_tile(lhs, rhs, lhs_at, rhs_at, tile_row, tile_col, 0, unit, &mut lhs_staged, &mut rhs_staged, tile_m, tile_n, depth, rhs_by_column);
    for t in 0..tiles {
        #[unroll]
        for j in 0..comptime!(loads_per_unit(depth, tile_m)) {
            let v = unit + j * comptime!(UNITS_X * UNITS_Y);
            lhs_tile[(v % depth) * lhs_stride + v / depth] = Vector::cast_from(lhs_staged[j]);
        }
        #[unroll]
        for j in 0..comptime!(loads_per_unit(depth, tile_n)) {
            let (k, column) = rhs_staging_position(unit + j * comptime!(UNITS_X * UNITS_Y), tile_n, depth, rhs_by_column);
            rhs_tile[k * rhs_stride + column] = Vector::cast_from(rhs_staged[j]);
        }
        sync_cube();

        // Past the last tile this reads nothing (every product is out of range).
        load_tile(lhs, rhs, lhs_at, rhs_at, tile_row, tile_col, (t + 1) * depth, unit, &mut lhs_staged, &mut rhs_staged, tile_m, tile_n, depth, rhs_by_column);

        #[unroll]
        for k in 0..depth {
            #[unroll]
            for c in 0..unit_vectors {
                b[c] = rhs_tile[k * rhs_stride + UNIT_POS_X as usize + c * UNITS_X];
            }
            #[unroll]
            for r in 0..comptime!(unit_rows / LANES) {
                let a = lhs_tile[k * lhs_stride + UNIT_POS_Y as usize * comptime!(unit_rows / LANES) + r];
                #[unroll]
                for lane in 0..LANES {
                    #[unroll]
                    for c in 0..unit_vectors {
                        let i = comptime!((r * LANES + lane) * unit_vectors + c);
                        sums[i] = fma(Vector::new(a.extract(lane)), b[c], sums[i]);
                    }
                }
            }
        }
        sync_cube();
    }

    let (m, n) = (out.shape(rank - 2), out.shape(rank - 1));
    let (out_row, out_col) = (out.stride(rank - 2), out.stride(rank - 1));
    #[unroll]
    for c in 0..unit_vectors {
        let col = tile_col + (UNIT_POS_X as usize + c * UNITS_X) * LANES;
        #[unroll]
        for i in 0..unit_rows {
            let row = tile_row + UNIT_POS_Y as usize * unit_rows + i;
            #[unroll]
            for lane in 0..LANES {
                if row < m && col + lane < n {
                    out[out_at + row * out_row + (col + lane) * out_col] = F::cast_from(sums[i * unit_vectors + c].extract(lane));
                }
            }
        }
    }
}

/// Where the `v`-th vector of a tile's rhs goes: its product (0 to
/// `depth`) and its vector of columns (0 to `tile_n / LANES`).
/// Consecutive `v` are consecutive vectors of columns of one product, or,
/// `by_column`, consecutive products of one vector of columns.
#[cube]
fn rhs_staging_position(v: usize, #[comptime] tile_n: usize, #[comptime] depth: usize, #[comptime] by_column: bool) -> (usize, usize) {
    if by_column {
        (v % depth, v / depth)
    } else {
        (v / comptime!(tile_n / LANES), v % comptime!(tile_n / LANES))
    }
}

/// This unit's share of the `depth` products from `k0`, read into
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
    #[comptime] tile_n: usize,
    #[comptime] depth: usize,
    #[comptime] rhs_by_column: bool,
) {
    let rank = lhs.rank();
    let (m, products, n) = (lhs.shape(rank - 2), lhs.shape(rank - 1), rhs.shape(rank - 1));
    #[unroll]
    for j in 0..comptime!(loads_per_unit(depth, tile_m)) {
        let v = unit + j * comptime!(UNITS_X * UNITS_Y);
        let (k, row) = (k0 + v % depth, tile_row + (v / depth) * LANES);
        let rows = if k < products && row < m { m - row } else { 0usize };
        let at = lhs_at + row * lhs.stride(rank - 2) + k * lhs.stride(rank - 1);
        lhs_staged[j] = gather(lhs, at, lhs.stride(rank - 2), rows);
    }
    #[unroll]
    for j in 0..comptime!(loads_per_unit(depth, tile_n)) {
        let (k, column) = rhs_staging_position(unit + j * comptime!(UNITS_X * UNITS_Y), tile_n, depth, rhs_by_column);
        let (k, col) = (k0 + k, tile_col + column * LANES);
        let columns = if k < products && col < n { n - col } else { 0usize };
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

/// `lhs @ rhs` through [`tiled_matmul`] in tiles of `tile`, or why it
/// cannot run: operands that are not cubecl tensors of one float type (f32
/// or f16), or more work groups than a dispatch allows.
///
/// # Shapes
/// - `lhs`: `[..batch, m, k]`, `rhs`: `[..batch, k, n]` -> `[..batch, m, n]`
pub(crate) fn matmul<const D: usize>(lhs: burn_tensor::Tensor<D>, rhs: burn_tensor::Tensor<D>, tile: TileShape) -> Result<burn_tensor::Tensor<D>, String> {
    let on_gpu = |e| format!("not a GPU tensor ({e:?})");
    let lhs = lhs.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
    let rhs = rhs.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
    let TileShape { unit_rows, unit_vectors, depth } = tile;
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
    if batches > 65_535 || m.div_ceil(tile.rows()) > 65_535 {
        return Err(format!("{batches} batches of {m} rows: more work groups than a dispatch allows"));
    }
    // The rhs read along its products where they, not its columns, are
    // contiguous (k^T as a view of k).
    let rhs_strides = rhs.meta.strides();
    let rhs_by_column = rhs_strides[D - 2] == 1 && rhs_strides[D - 1] != 1;
    let client = out.client.clone();
    let cube_count = CubeCount::Static(n.div_ceil(tile.columns()) as u32, m.div_ceil(tile.rows()) as u32, batches as u32);
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
            unit_vectors,
            depth,
            rhs_by_column,
            dtype_to_storage_type(dtype),
        );
    }
    Ok(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_shapes_fit_in_workgroup_memory() {
        assert_eq!((TileShape::TALL.rows(), TileShape::TALL.columns()), (128, 64));
        assert_eq!((TileShape::SMALL.rows(), TileShape::SMALL.columns()), (64, 64));
        assert_eq!((TileShape::WIDE.rows(), TileShape::WIDE.columns()), (128, 128));
        // 8 products x (33 + 33 vectors) x 16 bytes.
        assert_eq!(TileShape::WIDE.workgroup_bytes(), 8448);
    }

    #[test]
    #[should_panic(expected = "workgroup memory")]
    fn a_wide_unit_sixteen_products_deep_is_refused() {
        TileShape::new(8, 2, 16);
    }

    #[test]
    #[should_panic(expected = "whole vectors")]
    fn a_unit_staging_part_of_a_vector_is_refused() {
        // 4 products x 64 rows = 64 vectors for 256 units.
        TileShape::new(4, 1, 4);
    }

    #[test]
    #[should_panic(expected = "one or two vectors")]
    fn three_vectors_a_unit_are_refused() {
        TileShape::new(8, 3, 8);
    }
}
