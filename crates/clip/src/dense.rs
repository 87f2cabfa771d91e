//! How the last vision block is run when computing dense (per-patch) features.
//!
//! The training-free segmentation methods differ only here. Reference:
//! `custom_attn` and `VisionTransformer.forward` in mc-lan/ClearCLIP
//! `open_clip/transformer.py`. A [`LastBlock`] is a forward argument, not
//! part of the weights, so one loaded model serves every mode.

use burn::tensor::{activation, Tensor};

use crate::nn::{HeadProjections, ResidualAttentionBlock};

/// Which similarity the last block's attention weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionKind {
    /// `softmax(q k^T)`: CLIP's own attention.
    QueryKey,
    /// `softmax(q q^T)`: ClearCLIP.
    QueryQuery,
    /// `softmax(k k^T)`.
    KeyKey,
    /// `softmax(v v^T)`.
    ValueValue,
    /// `softmax(q q^T) + softmax(k k^T)`: SCLIP (as in the ClearCLIP code).
    QueryQueryPlusKeyKey,
    /// Each token attends only to itself, so the output is `out_proj(v)`: MaskCLIP.
    Identity,
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
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LastBlock {
    pub attention: AttentionKind,
    pub residual: Residual,
    /// Apply the feed-forward network: `y + mlp(ln_2(y))`.
    pub ffn: bool,
}

/// The named methods, each a preset [`LastBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
}

impl DenseMode {
    pub const ALL: [DenseMode; 4] = [Self::Vanilla, Self::MaskClip, Self::Sclip, Self::ClearClip];

    pub fn last_block(self) -> LastBlock {
        let (attention, residual, ffn) = match self {
            Self::Vanilla => (AttentionKind::QueryKey, Residual::Keep { attention_scale: 1.0 }, true),
            Self::MaskClip => (AttentionKind::Identity, Residual::Skip, false),
            Self::Sclip => (AttentionKind::QueryQueryPlusKeyKey, Residual::Skip, false),
            Self::ClearClip => (AttentionKind::QueryQuery, Residual::Skip, false),
        };
        LastBlock { attention, residual, ffn }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Vanilla => "vanilla",
            Self::MaskClip => "maskclip",
            Self::Sclip => "sclip",
            Self::ClearClip => "clearclip",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name().eq_ignore_ascii_case(name))
    }
}

impl From<DenseMode> for LastBlock {
    fn from(mode: DenseMode) -> Self {
        mode.last_block()
    }
}

impl LastBlock {
    /// Run `block` as described. Computes only what the description needs
    /// (no FFN when it is off, no q-k scores for q-q attention).
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` (output of the first `L-1` blocks) -> same
    pub fn forward(&self, block: &ResidualAttentionBlock, x: Tensor<3>) -> Tensor<3> {
        let attn = &block.attn;
        let h = block.ln_1.forward(x.clone());
        let HeadProjections { q, k, v } = attn.project(h);
        let scale = attn.scale();
        let self_softmax = |t: Tensor<4>| activation::softmax(t.clone().matmul(t.swap_dims(2, 3)) * scale, 3);
        let mixed = match self.attention {
            AttentionKind::QueryKey => {
                activation::softmax(q.matmul(k.swap_dims(2, 3)) * scale, 3).matmul(v)
            }
            AttentionKind::QueryQuery => self_softmax(q).matmul(v),
            AttentionKind::KeyKey => self_softmax(k).matmul(v),
            AttentionKind::ValueValue => self_softmax(v.clone()).matmul(v),
            AttentionKind::QueryQueryPlusKeyKey => (self_softmax(q) + self_softmax(k)).matmul(v),
            AttentionKind::Identity => v,
        };
        let a = attn.merge(mixed);
        let y = match self.residual {
            Residual::Skip => a,
            Residual::Keep { attention_scale } if attention_scale == 1.0 => x + a,
            Residual::Keep { attention_scale } => x + a * attention_scale,
        };
        if self.ffn {
            y.clone() + block.mlp.forward(block.ln_2.forward(y))
        } else {
            y
        }
    }
}
