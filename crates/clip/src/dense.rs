//! How the last vision block is run when computing dense (per-patch) features.
//!
//! The training-free segmentation methods differ only here. References:
//! `custom_attn` and `VisionTransformer.forward` in mc-lan/ClearCLIP
//! `open_clip/transformer.py` (vanilla, MaskCLIP, SCLIP, ClearCLIP), and
//! `custom_attn` / `gaussian_window` / `get_attention_addition` in
//! sinahmr/NACLIP `clip/model.py` (NACLIP). A [`LastBlock`] is a forward
//! argument, not part of the weights, so one loaded model serves every mode.

use std::fmt;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::host::{self, AttentionSpec, Part};
use crate::nn::{attention_weights, merge_heads, value_product, HeadProjections, ResidualAttentionBlock};

/// Which similarity the last block's attention weights come from.
/// Serialised as its [`name`](Self::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttentionKind {
    /// `softmax(q k^T)`: CLIP's own attention.
    #[serde(rename = "q-k")]
    QueryKey,
    /// `softmax(q q^T)`: ClearCLIP.
    #[serde(rename = "q-q")]
    QueryQuery,
    /// `softmax(k k^T)`: NACLIP (with the neighbourhood bias).
    #[serde(rename = "k-k")]
    KeyKey,
    /// `softmax(v v^T)`.
    #[serde(rename = "v-v")]
    ValueValue,
    /// `softmax(q q^T) + softmax(k k^T)`: SCLIP (as in the ClearCLIP code).
    #[serde(rename = "q-q+k-k")]
    QueryQueryPlusKeyKey,
    /// Each token attends only to itself, so the output is `out_proj(v)`: MaskCLIP.
    #[serde(rename = "identity")]
    Identity,
}

impl AttentionKind {
    pub const ALL: [AttentionKind; 6] = [
        Self::QueryKey,
        Self::QueryQuery,
        Self::KeyKey,
        Self::ValueValue,
        Self::QueryQueryPlusKeyKey,
        Self::Identity,
    ];

    /// Short name, as the CLI and the page spell it: `q-k`, `q-q`, `k-k`, `v-v`, `q-q+k-k`, `identity`.
    pub fn name(self) -> &'static str {
        match self {
            Self::QueryKey => "q-k",
            Self::QueryQuery => "q-q",
            Self::KeyKey => "k-k",
            Self::ValueValue => "v-v",
            Self::QueryQueryPlusKeyKey => "q-q+k-k",
            Self::Identity => "identity",
        }
    }

    /// Parses [`Self::name`], with or without the dashes (`qq`, `qq+kk`).
    pub fn from_name(name: &str) -> Option<Self> {
        let squash = |s: &str| s.to_ascii_lowercase().replace(['-', ' '], "");
        Self::ALL.into_iter().find(|k| squash(k.name()) == squash(name))
    }

    /// What the page shows for it, e.g. `q-q (ClearCLIP)`.
    pub fn title(self) -> &'static str {
        match self {
            Self::QueryKey => "q-k (CLIP)",
            Self::QueryQuery => "q-q (ClearCLIP)",
            Self::KeyKey => "k-k (NACLIP)",
            Self::ValueValue => "v-v",
            Self::QueryQueryPlusKeyKey => "q-q + k-k (SCLIP)",
            Self::Identity => "identity (MaskCLIP)",
        }
    }

    /// Whether the kind has attention scores a bias can be added to.
    pub fn has_scores(self) -> bool {
        !self.score_parts().is_empty()
    }

    /// The `(a, b)` of each `softmax(a b^T)` the kind sums, times `v`; empty
    /// for identity (`v` itself). Both backends' last block read it.
    fn score_parts(self) -> &'static [(Part, Part)] {
        use Part::*;
        match self {
            Self::QueryKey => &[(Query, Key)],
            Self::QueryQuery => &[(Query, Query)],
            Self::KeyKey => &[(Key, Key)],
            Self::ValueValue => &[(Value, Value)],
            Self::QueryQueryPlusKeyKey => &[(Query, Query), (Key, Key)],
            Self::Identity => &[],
        }
    }
}

/// Whether the block input is added back: `x + alpha * attn` or `attn` alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Residual {
    /// `y = attn(ln_1(x))` (the reference's `ignore_residual=True`).
    Skip,
    /// `y = x + attention_scale * attn(ln_1(x))`; scale 1 is plain CLIP.
    Keep { attention_scale: f32 },
}

/// A complete description of the last block for dense features.
///
/// Serialised as its knobs, `{attention: "q-q", neighbourhoodStd: null,
/// residualAlpha: null, ffn: false}` (`null`: no bias, no residual); a
/// deserialised block is validated.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "LastBlockKnobs", try_from = "LastBlockKnobs")]
pub struct LastBlock {
    pub attention: AttentionKind,
    /// NACLIP's neighbourhood bias: a Gaussian of the distance between two
    /// patches on the grid, with this standard deviation in patches, added to
    /// the attention scores before the softmax. `None`: no bias.
    pub neighbourhood_std: Option<f32>,
    pub residual: Residual,
    /// Apply the feed-forward network: `y + mlp(ln_2(y))`.
    pub ffn: bool,
}

/// The knobs of a [`LastBlock`] as they are serialised.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LastBlockKnobs {
    attention: AttentionKind,
    neighbourhood_std: Option<f32>,
    /// `x + alpha * attn`, or `None` for no residual.
    residual_alpha: Option<f32>,
    ffn: bool,
}

impl From<LastBlock> for LastBlockKnobs {
    fn from(b: LastBlock) -> Self {
        let residual_alpha = match b.residual {
            Residual::Skip => None,
            Residual::Keep { attention_scale } => Some(attention_scale),
        };
        Self { attention: b.attention, neighbourhood_std: b.neighbourhood_std, residual_alpha, ffn: b.ffn }
    }
}

impl TryFrom<LastBlockKnobs> for LastBlock {
    type Error = LastBlockError;
    fn try_from(k: LastBlockKnobs) -> Result<Self, LastBlockError> {
        let residual = match k.residual_alpha {
            None => Residual::Skip,
            Some(attention_scale) => Residual::Keep { attention_scale },
        };
        let block = LastBlock { attention: k.attention, neighbourhood_std: k.neighbourhood_std, residual, ffn: k.ffn };
        block.validate()?;
        Ok(block)
    }
}

/// The named methods, each a preset [`LastBlock`]. Serialised as its [`name`](Self::name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DenseMode {
    /// Plain CLIP: the unmodified last block.
    Vanilla,
    /// MaskCLIP (Zhou et al. 2022): value embedding, no residual, no FFN.
    MaskClip,
    /// SCLIP (Wang et al. 2024): q-q + k-k attention, no residual, no FFN.
    Sclip,
    /// ClearCLIP (Lan et al. 2024): q-q attention, no residual, no FFN.
    #[default]
    ClearClip,
    /// NACLIP (Hajimiri et al. 2025): k-k attention plus a Gaussian
    /// neighbourhood bias (std 5 patches), no residual, no FFN (its "reduced" block).
    Naclip,
}

/// NACLIP's default `gaussian_std` (`naclip.py`).
pub const NACLIP_GAUSSIAN_STD: f32 = 5.0;

impl DenseMode {
    pub const ALL: [DenseMode; 5] = [Self::Vanilla, Self::MaskClip, Self::Sclip, Self::ClearClip, Self::Naclip];

    pub fn last_block(self) -> LastBlock {
        let (attention, neighbourhood_std, residual, ffn) = match self {
            Self::Vanilla => (AttentionKind::QueryKey, None, Residual::Keep { attention_scale: 1.0 }, true),
            Self::MaskClip => (AttentionKind::Identity, None, Residual::Skip, false),
            Self::Sclip => (AttentionKind::QueryQueryPlusKeyKey, None, Residual::Skip, false),
            Self::ClearClip => (AttentionKind::QueryQuery, None, Residual::Skip, false),
            Self::Naclip => (AttentionKind::KeyKey, Some(NACLIP_GAUSSIAN_STD), Residual::Skip, false),
        };
        LastBlock { attention, neighbourhood_std, residual, ffn }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vanilla => "vanilla",
            Self::MaskClip => "maskclip",
            Self::Sclip => "sclip",
            Self::ClearClip => "clearclip",
            Self::Naclip => "naclip",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// What the page shows for it, e.g. `CLIP (vanilla)`.
    pub fn title(self) -> &'static str {
        match self {
            Self::Vanilla => "CLIP (vanilla)",
            Self::MaskClip => "MaskCLIP",
            Self::Sclip => "SCLIP",
            Self::ClearClip => "ClearCLIP",
            Self::Naclip => "NACLIP",
        }
    }

    /// The named mode this block is exactly, if any.
    pub fn of(block: &LastBlock) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.last_block() == *block)
    }
}

impl From<DenseMode> for LastBlock {
    fn from(mode: DenseMode) -> Self {
        mode.last_block()
    }
}

impl fmt::Display for LastBlock {
    /// E.g. `k-k attention + neighbourhood (std 5), no residual, no FFN`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} attention", self.attention.name())?;
        if let Some(std) = self.neighbourhood_std {
            write!(f, " + neighbourhood (std {std})")?;
        }
        match self.residual {
            Residual::Skip => write!(f, ", no residual")?,
            Residual::Keep { attention_scale } => write!(f, ", residual x + {attention_scale} * attn")?,
        }
        write!(f, ", {}", if self.ffn { "FFN" } else { "no FFN" })
    }
}

/// Why a [`LastBlock`] cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LastBlockError {
    #[error("the neighbourhood standard deviation must be a positive number of patches, not {0}")]
    NeighbourhoodStd(f32),
    #[error("identity attention has no scores to add a neighbourhood bias to")]
    BiasWithoutScores,
    #[error("the residual scale must be a finite number, not {0}")]
    ResidualScale(f32),
}

impl LastBlock {
    /// Whether the description can be run.
    pub fn validate(&self) -> Result<(), LastBlockError> {
        if let Some(std) = self.neighbourhood_std {
            if !(std.is_finite() && std > 0.0) {
                return Err(LastBlockError::NeighbourhoodStd(std));
            }
            if !self.attention.has_scores() {
                return Err(LastBlockError::BiasWithoutScores);
            }
        }
        if let Residual::Keep { attention_scale } = self.residual {
            if !attention_scale.is_finite() {
                return Err(LastBlockError::ResidualScale(attention_scale));
            }
        }
        Ok(())
    }

    /// Run `block` as described, from its fused q, k, v projection of
    /// `ln_1(x)`. Computes only what the description needs (no FFN when it
    /// is off, no q-k scores for q-q attention).
    ///
    /// # Shapes
    /// - `x`: `[batch, 1 + grid_h * grid_w, width]` (output of the first `L-1` blocks) -> same
    /// - `qkv`: `[batch, 1 + grid_h * grid_w, 3 * width]`, `block.attn.qkv` of `block.ln_1` of `x`
    /// - `grid`: `(grid_h, grid_w)`, the patch grid (for the neighbourhood bias)
    pub(crate) fn forward(&self, block: &ResidualAttentionBlock, x: Tensor<3>, qkv: Tensor<3>, grid: (usize, usize)) -> Tensor<3> {
        let attn = &block.attn;
        let scale = attn.scale();
        let tokens = 1 + grid.0 * grid.1; // x's token count: both come from one `LastBlockInput`
        let bias = self.neighbourhood_std.map(|std| neighbourhood_bias(grid, std));
        let parts = self.attention.score_parts();
        let a = if host::is_host(&x.device()) && !parts.is_empty() {
            let spec = AttentionSpec { scores: parts, scale: scale as f32, bias: bias.as_deref(), causal: false };
            attn.out.forward(host::attention_tensor(qkv, attn.heads, spec))
        } else {
            let HeadProjections { q, k, v } = attn.split_heads(qkv);
            let bias = bias.map(|bias| Tensor::<2>::from_data(TensorData::new(bias, [tokens, tokens]), &x.device()).unsqueeze::<4>());
            let part = |p: Part| match p {
                Part::Query => q.clone(),
                Part::Key => k.clone(),
                Part::Value => v.clone(),
            };
            // softmax(scale a b^T + bias) in v's precision, summed over the
            // kind's pairs (the reference adds the half softmaxes)
            let weights = parts.iter().map(|&(a, b)| attention_weights(part(a), part(b), scale, bias.as_ref(), None));
            let mixed = match weights.reduce(|sum, w| sum + w) {
                Some(weights) => value_product(weights, v.clone()),
                None => merge_heads(v.clone()),
            };
            attn.out.forward(mixed)
        };
        let y = match self.residual {
            Residual::Skip => a,
            Residual::Keep { attention_scale: 1.0 } => x + a,
            Residual::Keep { attention_scale } => x + a * attention_scale,
        };
        if self.ffn {
            y.clone() + block.mlp.forward(block.ln_2.forward(y))
        } else {
            y
        }
    }
}

/// NACLIP's attention addition: `exp(-d^2 / (2 std^2))` for two patches at grid
/// distance `d`, zero in the class token's row and column
/// (`get_attention_addition` with `adjust_for_cls=True`; its Gaussian window
/// convolved with one-hot patch maps is exactly this function of the distance).
///
/// # Shapes
/// - returns `[1 + grid_h * grid_w, 1 + grid_h * grid_w]`, row-major
pub fn neighbourhood_bias((grid_h, grid_w): (usize, usize), std: f32) -> Vec<f32> {
    let patches = grid_h * grid_w;
    let tokens = 1 + patches;
    // gaussian_window: exp(-((dy * c)^2 + (dx * c)^2)) with c = 1 / (std * sqrt(2))
    let c = 1.0 / (std * std::f32::consts::SQRT_2);
    let gauss = |d: isize| {
        let t = d as f32 * c;
        t * t
    };
    let mut bias = vec![0.0f32; tokens * tokens];
    for p in 0..patches {
        let (py, px) = ((p / grid_w) as isize, (p % grid_w) as isize);
        let row = &mut bias[(1 + p) * tokens + 1..][..patches];
        for (o, value) in row.iter_mut().enumerate() {
            let (oy, ox) = ((o / grid_w) as isize, (o % grid_w) as isize);
            *value = (-(gauss(py - oy) + gauss(px - ox))).exp();
        }
    }
    bias
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_mode_round_trips_through_its_name_and_its_block() {
        for mode in DenseMode::ALL {
            assert_eq!(DenseMode::from_name(mode.name()), Some(mode));
            assert_eq!(DenseMode::of(&mode.last_block()), Some(mode));
            mode.last_block().validate().unwrap();
        }
        for kind in AttentionKind::ALL {
            assert_eq!(AttentionKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(AttentionKind::from_name("QQ+KK"), Some(AttentionKind::QueryQueryPlusKeyKey));
        assert_eq!(AttentionKind::from_name("qv"), None);
    }

    #[test]
    fn neighbourhood_bias_is_a_gaussian_of_grid_distance_and_spares_the_class_token() {
        let (h, w, std) = (3usize, 4usize, 2.0f32);
        let bias = neighbourhood_bias((h, w), std);
        let tokens = 1 + h * w;
        assert!(bias[..tokens].iter().all(|&b| b == 0.0));
        assert!((0..tokens).all(|t| bias[t * tokens] == 0.0));
        // patch (0, 1) to patch (2, 3): d^2 = 4 + 4
        let (a, b) = (1 + 1, 1 + 2 * w + 3);
        let expected = (-8.0f32 / (2.0 * std * std)).exp();
        assert!((bias[a * tokens + b] - expected).abs() < 1e-6);
        assert_eq!(bias[a * tokens + b], bias[b * tokens + a]);
        assert_eq!(bias[a * tokens + a], 1.0);
    }

    #[test]
    fn invalid_blocks_are_refused_with_a_reason() {
        let mut block = DenseMode::MaskClip.last_block();
        block.neighbourhood_std = Some(5.0);
        assert_eq!(block.validate(), Err(LastBlockError::BiasWithoutScores));
        let mut block = DenseMode::ClearClip.last_block();
        block.neighbourhood_std = Some(0.0);
        assert!(block.validate().is_err());
    }
}
