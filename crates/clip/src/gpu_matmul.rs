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
//! goes through [`matmul`]. It is made for each [`ProductKind`] apart: the
//! projections (one large matrix, thousands of rows) and attention's
//! products (a small one per head) have different shapes, and the fastest
//! routine for one need not be the fastest for the other. Products on the
//! CPU backend, products whose batch dimensions broadcast (burn folds those
//! first), and builds with burn's kernel fusion (whose tensors are not cubecl
//! tensors) keep burn's path.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Tensor;

use crate::routine_choice::RoutineChoice;

crate::named_choices! {
    /// A routine for the GPU backend's matrix products: one of cubek's, or our own kernel.
    pub enum MatmulRoutine: "routine" {
        /// burn's choice without autotune: cubek's `Auto` (tensor cores where the
        /// shader language has them, else `SimpleUnit` with the largest tile).
        Burn => "burn",
        /// `SimpleUnit`, the largest register tile: `Auto`'s fallback, called
        /// directly (no tensor-core attempt first).
        SimpleUnit => "simple-unit",
        /// `SimpleUnit`, the smallest register tile.
        SimpleUnitSmall => "simple-unit-small",
        /// `DoubleUnit` (operands double-buffered in workgroup memory), the largest tile.
        DoubleUnit => "double-unit",
        /// `DoubleUnit`, the smallest tile.
        DoubleUnitSmall => "double-unit-small",
        /// cubek's `Gemm` routine without stages (autotune's "gemm" candidate in
        /// the unit group).
        Gemm => "gemm",
        /// Our own register-tiled kernel (`src/tiled_matmul.rs`), sums in f32:
        /// 128 x 64 output tiles, 8 x 4 a unit.
        Tiled => "tiled",
        /// The same with 64 x 64 tiles, 4 x 4 a unit.
        TiledSmall => "tiled-small",
        /// The same with 128 x 128 tiles, 8 x 8 a unit.
        TiledWide => "tiled-wide",
    }
}

/// The two kinds of the model's products, each with a routine of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProductKind {
    /// Rows of activations times one matrix: the layers' weights (patch
    /// embedding, q k v, output and MLP projections, the towers' final
    /// projections) and the class embeddings (the logits).
    ///
    /// `[rows, k] @ [k, n]`, rows in the thousands for a photo's windows.
    Projection,
    /// Attention's products, a small one per window and head: `q k^T` and
    /// the weights times `v`.
    ///
    /// `[batch, heads, tokens, head_dim] @ [batch, heads, head_dim, tokens]`,
    /// and `[.., tokens, tokens] @ [.., tokens, head_dim]`.
    Attention,
}

impl ProductKind {
    pub const ALL: [ProductKind; 2] = [ProductKind::Projection, ProductKind::Attention];

    /// The name `--gpu-matmul` takes for it (`projections=...,attention=...`).
    pub fn name(self) -> &'static str {
        match self {
            ProductKind::Projection => "projections",
            ProductKind::Attention => "attention",
        }
    }

    fn choice(self) -> &'static RoutineChoice<MatmulRoutine> {
        static PROJECTIONS: RoutineChoice<MatmulRoutine> = RoutineChoice::new(&MatmulRoutine::ALL);
        static ATTENTION: RoutineChoice<MatmulRoutine> = RoutineChoice::new(&MatmulRoutine::ALL);
        match self {
            ProductKind::Projection => &PROJECTIONS,
            ProductKind::Attention => &ATTENTION,
        }
    }
}

/// A routine for each [`ProductKind`]. Written (and parsed, as
/// `--gpu-matmul` takes it) as one routine's name when both are the same,
/// else as `projections=ROUTINE,attention=ROUTINE`, where a kind left out
/// keeps burn's routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatmulChoice {
    pub projections: MatmulRoutine,
    pub attention: MatmulRoutine,
}

impl MatmulChoice {
    /// `routine` for both kinds.
    pub fn uniform(routine: MatmulRoutine) -> Self {
        Self { projections: routine, attention: routine }
    }

    pub fn get(self, kind: ProductKind) -> MatmulRoutine {
        match kind {
            ProductKind::Projection => self.projections,
            ProductKind::Attention => self.attention,
        }
    }

    /// This choice with `routine` for `kind`.
    pub fn with(self, kind: ProductKind, routine: MatmulRoutine) -> Self {
        match kind {
            ProductKind::Projection => Self { projections: routine, ..self },
            ProductKind::Attention => Self { attention: routine, ..self },
        }
    }
}

impl fmt::Display for MatmulChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.projections == self.attention {
            true => write!(f, "{}", self.projections),
            false => write!(f, "projections={},attention={}", self.projections, self.attention),
        }
    }
}

impl FromStr for MatmulChoice {
    type Err = String;

    /// One routine's name, or `KIND=ROUTINE` pairs separated by commas.
    fn from_str(text: &str) -> Result<Self, String> {
        let routine = |name: &str| name.parse::<MatmulRoutine>();
        if !text.contains('=') {
            return routine(text).map(Self::uniform);
        }
        let mut choice = Self::default();
        let mut given = Vec::new();
        for pair in text.split(',') {
            let (kind_name, name) = pair.split_once('=').ok_or_else(|| format!("\"{pair}\" is not KIND=ROUTINE"))?;
            let kind = ProductKind::ALL
                .into_iter()
                .find(|k| k.name() == kind_name)
                .ok_or_else(|| format!("unknown kind of product \"{kind_name}\"; one of projections, attention"))?;
            if given.contains(&kind) {
                return Err(format!("{kind_name} is given twice"));
            }
            given.push(kind);
            choice = choice.with(kind, routine(name)?);
        }
        Ok(choice)
    }
}

/// Run the GPU backend's products with `choice`'s routines from now on, in this process.
///
/// Returns `false` (and changes nothing) when this build cannot choose: it was
/// built without the `gpu-routines` feature, or with burn's kernel fusion.
pub fn set_gpu_matmul(choice: MatmulChoice) -> bool {
    if !ProductKind::ALL.iter().all(|&kind| kind.choice().can_set(choice.get(kind))) {
        return false;
    }
    ProductKind::ALL.iter().all(|&kind| kind.choice().set(choice.get(kind)))
}

/// The routines [`set_gpu_matmul`] chose (burn's unless it was called).
pub fn gpu_matmul() -> MatmulChoice {
    MatmulChoice { projections: ProductKind::Projection.choice().get(), attention: ProductKind::Attention.choice().get() }
}

/// `lhs @ rhs`, through the routine chosen for `kind` on a GPU device, else
/// burn's `matmul`.
///
/// # Shapes
/// - `lhs`: `[..batch, m, k]`, `rhs`: `[..batch, k, n]` -> `[..batch, m, n]`
///   (batch dimensions broadcast as in burn's `matmul`)
pub fn matmul<const D: usize>(kind: ProductKind, lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    let choice = kind.choice();
    match choice.get() {
        MatmulRoutine::Burn => lhs.matmul(rhs),
        _ if crate::host::is_host(&lhs.device()) => lhs.matmul(rhs),
        routine => {
            let product = matmul_with(routine, lhs.clone(), rhs.clone()).ok();
            choice.count(product.is_some());
            product.unwrap_or_else(|| lhs.matmul(rhs))
        }
    }
}

/// How many of [`matmul`]'s GPU products of `kind` ran through the routine
/// chosen for it, and how many it declined (they ran with burn's), in this
/// process so far. Products of a kind left to burn's routine are not counted.
pub fn routine_counts(kind: ProductKind) -> (usize, usize) {
    kind.choice().counts()
}

/// [`routine_counts`] of both kinds together.
pub fn total_routine_counts() -> (usize, usize) {
    ProductKind::ALL.into_iter().map(routine_counts).fold((0, 0), |(ran, declined), (r, d)| (ran + r, declined + d))
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
        MatmulRoutine::Tiled => crate::tiled_matmul::matmul(lhs, rhs, crate::tiled_matmul::TileShape::TALL),
        MatmulRoutine::TiledSmall => crate::tiled_matmul::matmul(lhs, rhs, crate::tiled_matmul::TileShape::SMALL),
        MatmulRoutine::TiledWide => crate::tiled_matmul::matmul(lhs, rhs, crate::tiled_matmul::TileShape::WIDE),
        _ => cube::matmul(&cube::strategy(routine), lhs, rhs),
    };
    #[cfg(not(all(feature = "gpu-routines", not(feature = "fusion"))))]
    Err("this build runs burn's matrix products only (no gpu-matmul feature, or kernel fusion)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_choice_is_written_as_the_cli_takes_it() {
        let tiled = MatmulChoice::uniform(MatmulRoutine::Tiled);
        assert_eq!("tiled".parse(), Ok(tiled));
        assert_eq!(tiled.to_string(), "tiled");
        // Written in full when the kinds differ, read in either order; a kind
        // left out keeps burn's routine.
        let mixed = MatmulChoice { projections: MatmulRoutine::Tiled, attention: MatmulRoutine::SimpleUnit };
        assert_eq!(mixed.to_string(), "projections=tiled,attention=simple-unit");
        assert_eq!("attention=simple-unit,projections=tiled".parse(), Ok(mixed));
        let attention_only = MatmulChoice { projections: MatmulRoutine::Burn, attention: MatmulRoutine::Gemm };
        assert_eq!("attention=gemm".parse(), Ok(attention_only));
        assert_eq!(attention_only.to_string().parse(), Ok(attention_only));
        assert_eq!("projections=tiled,attention=tiled".parse::<MatmulChoice>().map(|c| c.to_string()), Ok("tiled".to_string()));
        assert_eq!(MatmulChoice::default(), MatmulChoice::uniform(MatmulRoutine::Burn));
    }

    #[test]
    fn a_wrong_choice_says_what_is_wrong() {
        let error = |text: &str| text.parse::<MatmulChoice>().unwrap_err();
        assert!(error("fastest").starts_with("unknown routine \"fastest\"; one of burn, simple-unit"), "{}", error("fastest"));
        assert!(error("projections=fast").starts_with("unknown routine \"fast\""));
        assert!(error("weights=tiled").starts_with("unknown kind of product \"weights\"; one of projections, attention"));
        assert_eq!(error("projections=tiled,projections=gemm"), "projections is given twice");
        assert_eq!(error("projections=tiled,gemm"), "\"gemm\" is not KIND=ROUTINE");
    }
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
            MatmulRoutine::Tiled | MatmulRoutine::TiledSmall | MatmulRoutine::TiledWide => unreachable!("ours, not cubek's: `matmul_with` runs crate::tiled_matmul"),
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
