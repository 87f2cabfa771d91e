//! Which kernels the GPU backend runs for the towers' attention.
//!
//! The first `L-1` blocks of the image tower and every block of the text
//! tower attend as CLIP does, `softmax(q k^T / sqrt(d)) v` (causal in the
//! text tower). By default ([`AttentionRoutine::Scores`]) that is the
//! kernels burn-cubecl's attention op runs without autotune, with the
//! scores materialised (`[batch, heads, tokens, tokens]`, 59 MB a block for
//! two ViT-B/16 windows): two products, with our kernels of
//! [`crate::gpu_layers`] for the softmax and for the split of q, k and v
//! into heads that the products read, and a copy that merges the heads: 5
//! kernels in cubecl's profiling log, where burn's operations in their
//! place were 14 or more. cubek
//! also has flash attention, which never materialises the scores and is one
//! kernel; its routine with unit inner products (`FlashUnit`, burn-cubecl's
//! `AttentionStrategy::FlashUnit`) needs neither tensor cores nor subgroups,
//! so WGSL can run it.
//! [`AttentionRoutine::FlashUnit`] chooses it, so that a bench on a real GPU
//! can compare the two before the page changes its default.
//!
//! The choice is process-wide, as [`crate::gpu_matmul`]'s is. The last block's
//! attention kinds (q-q, k-k, NACLIP's bias, ...) keep their own path
//! (`crate::dense`), and so do the CPU backend and builds with kernel fusion.

use burn::tensor::Tensor;

use crate::routine_choice::RoutineChoice;

crate::named_choices! {
    /// A GPU attention routine for the towers' standard attention.
    pub enum AttentionRoutine: "attention routine" {
        /// Scores materialised between two matrix products, softmax in f32.
        Scores => "scores",
        /// cubek's flash attention with unit inner products, accumulated in f32.
        FlashUnit => "flash-unit",
    }
}

static CHOICE: RoutineChoice<AttentionRoutine> = RoutineChoice::new(&AttentionRoutine::ALL);

/// Run the towers' GPU attention with `routine` from now on, in this process.
///
/// Returns `false` (and changes nothing) when this build cannot choose: it was
/// built without the `gpu-routines` feature, or with burn's kernel fusion.
pub fn set_gpu_attention(routine: AttentionRoutine) -> bool {
    CHOICE.set(routine)
}

/// The routine [`set_gpu_attention`] chose ([`AttentionRoutine::Scores`] unless it was called).
pub fn gpu_attention() -> AttentionRoutine {
    CHOICE.get()
}

/// How many attentions ran through flash attention, and how many it declined
/// (they ran with the scores materialised), in this process so far.
pub fn routine_counts() -> (usize, usize) {
    CHOICE.counts()
}

/// `softmax(q k^T / sqrt(head_dim)) v` (keys after the query masked out when
/// `causal`) by flash attention, when it is chosen and takes the problem;
/// `None` means: use the scores path.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, heads, tokens, head_dim]` -> `[batch, heads, tokens, head_dim]`
pub(crate) fn flash(q: &Tensor<4>, k: &Tensor<4>, v: &Tensor<4>, causal: bool) -> Option<Tensor<4>> {
    if gpu_attention() != AttentionRoutine::FlashUnit || crate::host::is_host(&q.device()) {
        return None;
    }
    #[cfg(all(feature = "gpu-routines", not(feature = "fusion")))]
    {
        let heads = cube::flash_unit(q.clone(), k.clone(), v.clone(), causal).ok();
        CHOICE.count(heads.is_some());
        if heads.is_some() {
            return heads;
        }
    }
    let _ = (k, v, causal);
    None
}

#[cfg(all(feature = "gpu-routines", not(feature = "fusion")))]
mod cube {
    use burn::tensor::ops::AttentionModuleOptions;
    use burn::tensor::Tensor;
    use burn_cubecl::kernel::attention::flash_attention;
    use burn_cubecl::CubeBackend;
    use cubek::attention::forward::launch::{BlueprintStrategy, Strategy};

    /// Flash attention with unit inner products, bound as burn-cubecl's
    /// attention op binds it (`kernel/attention/base.rs`), but a problem the
    /// routine cannot take is an error here instead of a silent fallback.
    /// The scale is `1 / sqrt(head_dim)`, CLIP's.
    pub(super) fn flash_unit(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Result<Tensor<4>, String> {
        let on_gpu = |e| format!("not a GPU tensor ({e:?})");
        let q = q.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
        let k = k.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
        let v = v.try_into_primitive::<CubeBackend>().map_err(on_gpu)?;
        let options = AttentionModuleOptions { scale: None, softcap: None, is_causal: causal };
        let heads = flash_attention(q, k, v, None, None, options, Strategy::Unit(BlueprintStrategy::Inferred(()))).map_err(|e| format!("{e:?}"))?;
        Ok(Tensor::from_primitive::<CubeBackend>(heads))
    }
}
