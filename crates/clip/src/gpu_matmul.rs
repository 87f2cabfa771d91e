//! Which matrix-product routine the GPU backend runs: one of cubek's, or
//! our own kernel (`src/tiled_matmul.rs`).
//!
//! Without autotune (which the page cannot use, see `../shared/BROWSER.md`),
//! burn-cubecl runs every product with cubek's `Strategy::default()`: it tries
//! the tensor-core routine, which WGSL has no instructions for, and falls back
//! to `SimpleUnit` (each invocation computes a register tile, operands staged
//! in workgroup memory) with the largest tile. Autotune would have timed the
//! other routines that need no tensor cores or subgroups (see burn-cubecl's
//! `kernel/matmul/tune/base.rs`, the "unit" group); [`MatmulRoutine`] names
//! them, and ours, so that a bench on a real GPU can compare them one by one
//! and the fastest exact one can be chosen without autotune.
//!
//! The choice is process-wide, as burn's own kernel choices are: the CLI sets
//! it once ([`set_gpu_matmul`]) and every product of the model on a GPU device
//! goes through [`matmul`]. Products on the CPU backend, products whose batch
//! dimensions broadcast (burn folds those first), and builds with burn's
//! kernel fusion (whose tensors are not cubecl tensors) keep burn's path.

use std::fmt;

use burn::tensor::Tensor;

use crate::routine_choice::RoutineChoice;

/// A cubek routine for the GPU backend's matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulRoutine {
    /// burn's choice without autotune: cubek's `Auto` (tensor cores where the
    /// shader language has them, else `SimpleUnit` with the largest tile).
    #[default]
    Burn,
    /// `SimpleUnit`, the largest register tile: `Auto`'s fallback, called
    /// directly (no tensor-core attempt first).
    SimpleUnit,
    /// `SimpleUnit`, the smallest register tile.
    SimpleUnitSmall,
    /// `DoubleUnit` (operands double-buffered in workgroup memory), the largest tile.
    DoubleUnit,
    /// `DoubleUnit`, the smallest tile.
    DoubleUnitSmall,
    /// cubek's `Gemm` routine without stages (autotune's "gemm" candidate in
    /// the unit group).
    Gemm,
    /// Our own register-tiled kernel (`src/tiled_matmul.rs`), sums in f32:
    /// 128 x 64 output tiles, 8 x 4 a unit.
    Tiled,
    /// The same with 64 x 64 tiles, 4 x 4 a unit.
    TiledSmall,
}

impl MatmulRoutine {
    pub const ALL: [MatmulRoutine; 8] = [
        MatmulRoutine::Burn,
        MatmulRoutine::SimpleUnit,
        MatmulRoutine::SimpleUnitSmall,
        MatmulRoutine::DoubleUnit,
        MatmulRoutine::DoubleUnitSmall,
        MatmulRoutine::Gemm,
        MatmulRoutine::Tiled,
        MatmulRoutine::TiledSmall,
    ];

    /// The name the CLI takes and prints.
    pub fn name(self) -> &'static str {
        match self {
            MatmulRoutine::Burn => "burn",
            MatmulRoutine::SimpleUnit => "simple-unit",
            MatmulRoutine::SimpleUnitSmall => "simple-unit-small",
            MatmulRoutine::DoubleUnit => "double-unit",
            MatmulRoutine::DoubleUnitSmall => "double-unit-small",
            MatmulRoutine::Gemm => "gemm",
            MatmulRoutine::Tiled => "tiled",
            MatmulRoutine::TiledSmall => "tiled-small",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

impl fmt::Display for MatmulRoutine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

static CHOICE: RoutineChoice<MatmulRoutine> = RoutineChoice::new(&MatmulRoutine::ALL);

/// Run the GPU backend's products with `routine` from now on, in this process.
///
/// Returns `false` (and changes nothing) when this build cannot choose: it was
/// built without the `gpu-routines` feature, or with burn's kernel fusion.
pub fn set_gpu_matmul(routine: MatmulRoutine) -> bool {
    CHOICE.set(routine)
}

/// The routine [`set_gpu_matmul`] chose ([`MatmulRoutine::Burn`] unless it was called).
pub fn gpu_matmul() -> MatmulRoutine {
    CHOICE.get()
}

/// `lhs @ rhs`, through the chosen routine on a GPU device, else burn's `matmul`.
///
/// # Shapes
/// - `lhs`: `[..batch, m, k]`, `rhs`: `[..batch, k, n]` -> `[..batch, m, n]`
///   (batch dimensions broadcast as in burn's `matmul`)
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    match gpu_matmul() {
        MatmulRoutine::Burn => lhs.matmul(rhs),
        _ if crate::host::is_host(&lhs.device()) => lhs.matmul(rhs),
        routine => {
            let product = matmul_with(routine, lhs.clone(), rhs.clone()).ok();
            CHOICE.count(product.is_some());
            product.unwrap_or_else(|| lhs.matmul(rhs))
        }
    }
}

/// How many of [`matmul`]'s GPU products ran through the chosen routine, and
/// how many it declined (they ran with burn's), in this process so far.
pub fn routine_counts() -> (usize, usize) {
    CHOICE.counts()
}

/// The cubecl runtime that serves `device`, which names its shader compiler
/// (`wgpu<wgsl>`, or `wgpu<spirv>` in a build with burn's `vulkan` feature on
/// a Vulkan adapter that cubecl's SPIR-V path accepts); `None` on the CPU
/// backend or in a build without the choice of routines.
pub fn runtime_name(device: &burn::tensor::Device) -> Option<&'static str> {
    #[cfg(all(feature = "gpu-routines", not(feature = "fusion")))]
    return Tensor::<1>::zeros([1], device)
        .try_into_primitive::<burn_cubecl::CubeBackend>()
        .ok()
        .map(|t| t.client.name());
    #[cfg(not(all(feature = "gpu-routines", not(feature = "fusion"))))]
    {
        let _ = device;
        None
    }
}

/// `lhs @ rhs` through `routine`, or why it cannot run there: on the CPU
/// backend, in a build without the choice, with batch dimensions that differ
/// (burn folds broadcasts first), or a problem the routine declines.
///
/// # Shapes
/// - `lhs`: `[..batch, m, k]`, `rhs`: `[..batch, k, n]` -> `[..batch, m, n]`
pub fn matmul_with<const D: usize>(routine: MatmulRoutine, lhs: Tensor<D>, rhs: Tensor<D>) -> Result<Tensor<D>, String> {
    if routine == MatmulRoutine::Burn {
        return Ok(lhs.matmul(rhs));
    }
    if lhs.dims()[..D - 2] != rhs.dims()[..D - 2] {
        return Err(format!("batch dimensions differ: {:?} and {:?}", lhs.dims(), rhs.dims()));
    }
    #[cfg(all(feature = "gpu-routines", not(feature = "fusion")))]
    return match routine {
        MatmulRoutine::Tiled => crate::tiled_matmul::matmul(lhs, rhs, 8),
        MatmulRoutine::TiledSmall => crate::tiled_matmul::matmul(lhs, rhs, 4),
        _ => cube::matmul(&cube::strategy(routine), lhs, rhs),
    };
    #[cfg(not(all(feature = "gpu-routines", not(feature = "fusion"))))]
    Err("this build runs burn's matrix products only (no gpu-matmul feature, or kernel fusion)".into())
}

#[cfg(all(feature = "gpu-routines", not(feature = "fusion")))]
mod cube {
    use burn::backend::cubecl::dtype_to_storage_type;
    use burn::tensor::Tensor;
    use burn_cubecl::kernel::matmul::init_matmul_output;
    use burn_cubecl::CubeBackend;
    use cubek::matmul::definition::{MatmulElems, MatmulGlobalElems};
    use cubek::matmul::multi_level::routines::batch::double_unit::DoubleUnitSelectionArgs;
    use cubek::matmul::multi_level::routines::batch::simple_unit::SimpleUnitSelectionArgs;
    use cubek::matmul::multi_level::routines::gemm::GemmStrategy;
    use cubek::matmul::multi_level::routines::TileSizeSelection;
    use cubek::matmul::multi_level::Strategy as MultiLevel;
    use cubek::matmul::routine::BlueprintStrategy;
    use cubek::matmul::strategy::Strategy;
    use cubek::std::InputBinding;

    use super::MatmulRoutine;

    /// cubek's strategy for `routine`, with the arguments of autotune's
    /// candidates (burn-cubecl, `kernel/matmul/tune/base.rs`).
    pub(super) fn strategy(routine: MatmulRoutine) -> Strategy {
        let simple = |tile_size| MultiLevel::SimpleUnit(BlueprintStrategy::Inferred(SimpleUnitSelectionArgs { tile_size }));
        let double = |tile_size| MultiLevel::DoubleUnit(BlueprintStrategy::Inferred(DoubleUnitSelectionArgs { tile_size }));
        match routine {
            MatmulRoutine::Burn => Strategy::default(),
            MatmulRoutine::Tiled | MatmulRoutine::TiledSmall => unreachable!("ours, not cubek's: `matmul_with` runs crate::tiled_matmul"),
            MatmulRoutine::SimpleUnit => simple(TileSizeSelection::MaxTileSize).into(),
            MatmulRoutine::SimpleUnitSmall => simple(TileSizeSelection::MinTileSize).into(),
            MatmulRoutine::DoubleUnit => double(TileSizeSelection::MaxTileSize).into(),
            MatmulRoutine::DoubleUnitSmall => double(TileSizeSelection::MinTileSize).into(),
            MatmulRoutine::Gemm => MultiLevel::Gemm(BlueprintStrategy::Inferred(GemmStrategy { target_num_planes: None })).into(),
        }
    }

    /// The product through `strategy`, bound as burn-cubecl's `launch_matmul`
    /// binds it (same-shaped batch dimensions, checked by the caller).
    pub(super) fn matmul<const D: usize>(strategy: &Strategy, lhs: Tensor<D>, rhs: Tensor<D>) -> Result<Tensor<D>, String> {
        let on_gpu = |e| format!("not a GPU tensor ({e:?})");
        let lhs = lhs.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
        let rhs = rhs.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
        let dtype = lhs.dtype;
        let out = init_matmul_output(&lhs, &rhs, dtype);
        let storage = dtype_to_storage_type(dtype);
        let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems { lhs: storage, rhs: dtype_to_storage_type(rhs.dtype), out: storage });
        let client = out.client.clone();
        cubek::matmul::launch::launch_ref(
            strategy,
            &client,
            InputBinding::new(lhs.binding(), storage),
            InputBinding::new(rhs.binding(), storage),
            out.clone().binding(),
            &mut dtypes,
        )
        .map_err(|e| format!("{e:?}"))?;
        Ok(Tensor::from_primitive::<CubeBackend>(out))
    }
}
