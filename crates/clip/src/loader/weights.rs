//! The one table of CLIP's weights.
//!
//! [`ClipWeights`] mirrors the model: one typed entry per tensor, with its
//! name in the file's layout, its shape as stored, and how it is uploaded
//! (the entry's type says it: [`VectorWeight`] becomes a `Tensor<1>`,
//! [`MatrixWeight`] a `Tensor<2>`, [`HostWeight`] stays an f32 `Vec`). The
//! same tree drives both steps of loading:
//! - before any data, [`WeightTree::list`] gives every tensor to check against
//!   the header (presence, shape, dtype) and the role its bytes are converted
//!   to as they stream in;
//! - at the end, [`WeightTree::build`] takes the converted tensors out of
//!   [`Parts`] into the layers, with the same names.
//!
//! Adding a tensor is adding its entry to the tree (a field and one line in
//! [`ClipWeights::new`]) and using it in `build`; the compiler points at both
//! traversals, which destructure every entry.
//!
//! Why not burn's `#[derive(Module)]` and record loading: those read a whole
//! file (or a whole record) before building, while this loader converts and
//! uploads each tensor the moment its bytes arrive from a download, in two
//! layouts (fused or separate q/k/v, `[in, out]` or `[out, in]` projections),
//! and keeps the vision positions on the host to resize them per crop size.

use std::collections::HashMap;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use super::{Layout, LoadError};
use crate::config::{Activation, ClipConfig, Precision};
use crate::nn::{Attention, LayerNorm, Linear, Mlp, ResidualAttentionBlock};
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;

/// A tensor name in each layout.
#[derive(Clone, Copy)]
pub(super) struct Key {
    hugging_face: &'static str,
    open_clip: &'static str,
}

const fn key(hugging_face: &'static str, open_clip: &'static str) -> Key {
    Key { hugging_face, open_clip }
}

// The name table: Hugging Face `CLIPModel`, then OpenAI CLIP / open_clip.
pub(super) const VISION_CLASS: Key = key("vision_model.embeddings.class_embedding", "visual.class_embedding");
pub(super) const PATCH_EMBEDDING: Key = key("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight");
pub(super) const VISION_POSITIONS: Key = key("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding");
pub(super) const LN_PRE: Key = key("vision_model.pre_layrnorm", "visual.ln_pre"); // sic: `layrnorm`
pub(super) const VISION_BLOCKS: Key = key("vision_model.encoder.layers", "visual.transformer.resblocks");
pub(super) const LN_POST: Key = key("vision_model.post_layernorm", "visual.ln_post");
pub(super) const VISION_PROJECTION: Key = key("visual_projection.weight", "visual.proj");
pub(super) const TOKEN_EMBEDDING: Key = key("text_model.embeddings.token_embedding.weight", "token_embedding.weight");
pub(super) const TEXT_POSITIONS: Key = key("text_model.embeddings.position_embedding.weight", "positional_embedding");
pub(super) const TEXT_BLOCKS: Key = key("text_model.encoder.layers", "transformer.resblocks");
pub(super) const LN_FINAL: Key = key("text_model.final_layer_norm", "ln_final");
pub(super) const TEXT_PROJECTION: Key = key("text_projection.weight", "text_projection");
// Inside a block.
pub(super) const LN_1: Key = key("layer_norm1", "ln_1");
const LN_2: Key = key("layer_norm2", "ln_2");
const OUT_PROJ: Key = key("self_attn.out_proj", "attn.out_proj");
pub(super) const FC_1: Key = key("mlp.fc1", "mlp.c_fc");
const FC_2: Key = key("mlp.fc2", "mlp.c_proj");

impl Layout {
    pub(super) fn name(self, key: Key) -> String {
        match self {
            Layout::HuggingFace => key.hugging_face,
            Layout::OpenClip => key.open_clip,
        }
        .to_string()
    }

    /// `{blocks}.{i}.{key}` (`key` inside the block).
    pub(super) fn block_name(self, blocks: Key, i: usize, key: Key) -> String {
        format!("{}.{i}.{}", self.name(blocks), self.name(key))
    }

    /// The embedding size of a projection: `[out, in]` in Hugging Face
    /// files, `[in, out]` in OpenAI/open_clip files.
    pub(super) fn projection_output(self, stored: [usize; 2]) -> usize {
        match self {
            Layout::HuggingFace => stored[0],
            Layout::OpenClip => stored[1],
        }
    }
}

/// How a tensor is turned into model weights as soon as its bytes arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// Uploaded as a `[n]` vector.
    Vector,
    /// Uploaded as stored, `[rows, cols]`.
    Matrix,
    /// Stored `[out, ...]` (a linear weight, or the patch convolution
    /// `[width, 3, p, p]`); uploaded as `[in, out]` with `in` the product of
    /// the trailing dimensions, so that `x.matmul(w)` applies it.
    MatrixTransposed,
    /// Kept on the CPU as f32 (the vision positions, resized there per crop size).
    Host,
}

/// A tensor the model needs: its name, its shape as stored, and its role.
pub(super) struct Required {
    pub name: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

/// A `[len]` tensor, uploaded as a vector.
pub(super) struct VectorWeight {
    name: String,
    len: usize,
}

/// A tensor uploaded as a `[rows, cols]` matrix: as stored, or transposed
/// from `[out, ...]` to `[in, out]` (see [`Role::MatrixTransposed`]).
pub(super) struct MatrixWeight {
    name: String,
    stored: Vec<usize>,
    transposed: bool,
}

/// A tensor kept on the host as f32.
pub(super) struct HostWeight {
    name: String,
    stored: Vec<usize>,
}

/// A part of the model described by its tensors.
pub(super) trait WeightTree {
    type Built;
    /// Every tensor of the part, with its stored shape and role.
    fn list(&self, out: &mut Vec<Required>);
    /// The part, from its converted tensors.
    fn build(self, parts: &mut Parts) -> Result<Self::Built, LoadError>;
}

impl WeightTree for VectorWeight {
    type Built = Tensor<1>;
    fn list(&self, out: &mut Vec<Required>) {
        out.push(Required { name: self.name.clone(), shape: vec![self.len], role: Role::Vector });
    }
    fn build(self, parts: &mut Parts) -> Result<Tensor<1>, LoadError> {
        parts.vectors.remove(&self.name).ok_or_else(|| parts.missing(self.name))
    }
}

impl WeightTree for MatrixWeight {
    type Built = Tensor<2>;
    fn list(&self, out: &mut Vec<Required>) {
        let role = if self.transposed { Role::MatrixTransposed } else { Role::Matrix };
        out.push(Required { name: self.name.clone(), shape: self.stored.clone(), role });
    }
    fn build(self, parts: &mut Parts) -> Result<Tensor<2>, LoadError> {
        parts.matrices.remove(&self.name).ok_or_else(|| parts.missing(self.name))
    }
}

impl WeightTree for HostWeight {
    type Built = Vec<f32>;
    fn list(&self, out: &mut Vec<Required>) {
        out.push(Required { name: self.name.clone(), shape: self.stored.clone(), role: Role::Host });
    }
    fn build(self, parts: &mut Parts) -> Result<Vec<f32>, LoadError> {
        parts.host.remove(&self.name).ok_or_else(|| parts.missing(self.name))
    }
}

impl<T: WeightTree> WeightTree for Vec<T> {
    type Built = Vec<T::Built>;
    fn list(&self, out: &mut Vec<Required>) {
        self.iter().for_each(|t| t.list(out));
    }
    fn build(self, parts: &mut Parts) -> Result<Self::Built, LoadError> {
        self.into_iter().map(|t| t.build(parts)).collect()
    }
}

/// `ln.weight` and `ln.bias`.
pub(super) struct NormWeights {
    gamma: VectorWeight,
    beta: VectorWeight,
}

impl NormWeights {
    fn new(prefix: String, width: usize) -> Self {
        Self {
            gamma: VectorWeight { name: format!("{prefix}.weight"), len: width },
            beta: VectorWeight { name: format!("{prefix}.bias"), len: width },
        }
    }
}

impl WeightTree for NormWeights {
    type Built = LayerNorm;
    fn list(&self, out: &mut Vec<Required>) {
        let Self { gamma, beta } = self;
        gamma.list(out);
        beta.list(out);
    }
    fn build(self, parts: &mut Parts) -> Result<LayerNorm, LoadError> {
        let Self { gamma, beta } = self;
        // Uploaded at the model's precision like every weight (so f16 rounds
        // them as `model.half()` does), but used in f32: see `LayerNorm::forward`.
        let f32 = |v: Tensor<1>| v.cast(FloatDType::F32);
        Ok(LayerNorm { gamma: f32(gamma.build(parts)?), beta: f32(beta.build(parts)?) })
    }
}

/// A linear layer stored `[out, in]` (both layouts), uploaded `[in, out]`.
pub(super) struct LinearWeights {
    weight: MatrixWeight,
    bias: VectorWeight,
}

impl LinearWeights {
    fn new(weight: String, bias: String, out_dim: usize, in_dim: usize) -> Self {
        Self {
            weight: MatrixWeight { name: weight, stored: vec![out_dim, in_dim], transposed: true },
            bias: VectorWeight { name: bias, len: out_dim },
        }
    }

    fn prefixed(prefix: String, out_dim: usize, in_dim: usize) -> Self {
        Self::new(format!("{prefix}.weight"), format!("{prefix}.bias"), out_dim, in_dim)
    }
}

impl WeightTree for LinearWeights {
    type Built = Linear;
    fn list(&self, out: &mut Vec<Required>) {
        let Self { weight, bias } = self;
        weight.list(out);
        bias.list(out);
    }
    fn build(self, parts: &mut Parts) -> Result<Linear, LoadError> {
        let Self { weight, bias } = self;
        Ok(Linear { weight: weight.build(parts)?, bias: Some(bias.build(parts)?) })
    }
}

/// A pre-LN transformer block.
pub(super) struct BlockWeights {
    ln_1: NormWeights,
    /// One fused `in_proj` (OpenAI/open_clip) or q, k and v apart (Hugging Face).
    qkv: Vec<LinearWeights>,
    out: LinearWeights,
    ln_2: NormWeights,
    fc1: LinearWeights,
    fc2: LinearWeights,
    heads: usize,
    activation: Activation,
}

impl BlockWeights {
    fn new(layout: Layout, blocks: Key, i: usize, width: usize, mlp_width: usize, heads: usize, activation: Activation) -> Self {
        let name = |key: Key| layout.block_name(blocks, i, key);
        let block = format!("{}.{i}", layout.name(blocks));
        let qkv = match layout {
            Layout::HuggingFace => ["q", "k", "v"]
                .iter()
                .map(|p| LinearWeights::prefixed(format!("{block}.self_attn.{p}_proj"), width, width))
                .collect(),
            Layout::OpenClip => {
                vec![LinearWeights::new(format!("{block}.attn.in_proj_weight"), format!("{block}.attn.in_proj_bias"), 3 * width, width)]
            }
        };
        Self {
            ln_1: NormWeights::new(name(LN_1), width),
            qkv,
            out: LinearWeights::prefixed(name(OUT_PROJ), width, width),
            ln_2: NormWeights::new(name(LN_2), width),
            fc1: LinearWeights::prefixed(name(FC_1), mlp_width, width),
            fc2: LinearWeights::prefixed(name(FC_2), width, mlp_width),
            heads,
            activation,
        }
    }
}

impl WeightTree for BlockWeights {
    type Built = ResidualAttentionBlock;
    fn list(&self, out: &mut Vec<Required>) {
        let Self { ln_1, qkv, out: out_proj, ln_2, fc1, fc2, heads: _, activation: _ } = self;
        ln_1.list(out);
        qkv.list(out);
        out_proj.list(out);
        ln_2.list(out);
        fc1.list(out);
        fc2.list(out);
    }
    fn build(self, parts: &mut Parts) -> Result<ResidualAttentionBlock, LoadError> {
        let Self { ln_1, qkv, out, ln_2, fc1, fc2, heads, activation } = self;
        Ok(ResidualAttentionBlock {
            ln_1: ln_1.build(parts)?,
            attn: Attention { qkv: fused(qkv.build(parts)?), out: out.build(parts)?, heads },
            ln_2: ln_2.build(parts)?,
            mlp: Mlp { fc1: fc1.build(parts)?, fc2: fc2.build(parts)?, activation },
        })
    }
}

/// The fused `[width, 3 * width]` q/k/v projection (open_clip's
/// `in_proj_weight` order); separate q, k and v are joined on the device.
fn fused(mut linears: Vec<Linear>) -> Linear {
    if linears.len() == 1 {
        return linears.remove(0);
    }
    let (weights, biases): (Vec<_>, Vec<_>) = linears.into_iter().map(|l| (l.weight, l.bias)).unzip();
    Linear { weight: Tensor::cat(weights, 1), bias: biases.into_iter().collect::<Option<Vec<_>>>().map(|b| Tensor::cat(b, 0)) }
}

/// A projection: `[embed, width]` in Hugging Face files (a linear weight,
/// transposed on upload), `[width, embed]` in OpenAI/open_clip files.
fn projection(layout: Layout, key: Key, width: usize, embed_dim: usize) -> MatrixWeight {
    let name = layout.name(key);
    match layout {
        Layout::HuggingFace => MatrixWeight { name, stored: vec![embed_dim, width], transposed: true },
        Layout::OpenClip => MatrixWeight { name, stored: vec![width, embed_dim], transposed: false },
    }
}

pub(super) struct VisionWeights {
    config: crate::config::VisionConfig,
    class_embedding: VectorWeight,
    patch_embedding: MatrixWeight,
    positions: HostWeight,
    ln_pre: NormWeights,
    blocks: Vec<BlockWeights>,
    ln_post: NormWeights,
    projection: MatrixWeight,
}

impl WeightTree for VisionWeights {
    type Built = VisionTransformer;
    fn list(&self, out: &mut Vec<Required>) {
        let Self { config: _, class_embedding, patch_embedding, positions, ln_pre, blocks, ln_post, projection } = self;
        class_embedding.list(out);
        patch_embedding.list(out);
        positions.list(out);
        ln_pre.list(out);
        blocks.list(out);
        ln_post.list(out);
        projection.list(out);
    }
    fn build(self, parts: &mut Parts) -> Result<VisionTransformer, LoadError> {
        let Self { config, class_embedding, patch_embedding, positions, ln_pre, blocks, ln_post, projection } = self;
        let mut positions = positions.build(parts)?;
        // Row 0 is the class token's; the grid rows stay on the CPU for resizing.
        let patch_positions = positions.split_off(config.width.min(positions.len()));
        let class_position = Tensor::from_data(TensorData::new(positions, [config.width]), (&parts.device, parts.precision.dtype().into()));
        let mut blocks = blocks.build(parts)?;
        let last_block = blocks.pop().ok_or_else(|| LoadError::Architecture("the vision tower has no blocks".into()))?;
        Ok(VisionTransformer {
            config,
            patch_embedding: patch_embedding.build(parts)?,
            class_embedding: class_embedding.build(parts)?,
            class_position,
            patch_positions,
            ln_pre: ln_pre.build(parts)?,
            blocks,
            last_block,
            ln_post: ln_post.build(parts)?,
            projection: projection.build(parts)?,
        })
    }
}

pub(super) struct TextWeights {
    config: crate::config::TextConfig,
    token_embedding: MatrixWeight,
    positions: MatrixWeight,
    blocks: Vec<BlockWeights>,
    ln_final: NormWeights,
    projection: MatrixWeight,
}

impl WeightTree for TextWeights {
    type Built = TextTransformer;
    fn list(&self, out: &mut Vec<Required>) {
        let Self { config: _, token_embedding, positions, blocks, ln_final, projection } = self;
        token_embedding.list(out);
        positions.list(out);
        blocks.list(out);
        ln_final.list(out);
        projection.list(out);
    }
    fn build(self, parts: &mut Parts) -> Result<TextTransformer, LoadError> {
        let Self { config, token_embedding, positions, blocks, ln_final, projection } = self;
        Ok(TextTransformer {
            config,
            token_embedding: token_embedding.build(parts)?,
            position_embedding: positions.build(parts)?,
            blocks: blocks.build(parts)?,
            ln_final: ln_final.build(parts)?,
            projection: projection.build(parts)?,
        })
    }
}

/// Every weight of a CLIP model of `config` in `layout`.
pub(super) struct ClipWeights {
    pub vision: VisionWeights,
    pub text: TextWeights,
}

impl ClipWeights {
    pub(super) fn new(layout: Layout, config: &ClipConfig) -> Self {
        let (v, t, activation) = (&config.vision, &config.text, config.activation);
        let blocks = |key: Key, layers: usize, width: usize, mlp: usize, heads: usize| -> Vec<BlockWeights> {
            (0..layers).map(|i| BlockWeights::new(layout, key, i, width, mlp, heads, activation)).collect()
        };
        let vision = VisionWeights {
            config: v.clone(),
            class_embedding: VectorWeight { name: layout.name(VISION_CLASS), len: v.width },
            patch_embedding: MatrixWeight {
                name: layout.name(PATCH_EMBEDDING),
                stored: vec![v.width, 3, v.patch_size, v.patch_size],
                transposed: true,
            },
            positions: HostWeight { name: layout.name(VISION_POSITIONS), stored: vec![v.grid_size * v.grid_size + 1, v.width] },
            ln_pre: NormWeights::new(layout.name(LN_PRE), v.width),
            blocks: blocks(VISION_BLOCKS, v.layers, v.width, v.mlp_width, v.heads),
            ln_post: NormWeights::new(layout.name(LN_POST), v.width),
            projection: projection(layout, VISION_PROJECTION, v.width, v.embed_dim),
        };
        let text = TextWeights {
            config: t.clone(),
            token_embedding: MatrixWeight { name: layout.name(TOKEN_EMBEDDING), stored: vec![t.vocab_size, t.width], transposed: false },
            positions: MatrixWeight { name: layout.name(TEXT_POSITIONS), stored: vec![t.context_length, t.width], transposed: false },
            blocks: blocks(TEXT_BLOCKS, t.layers, t.width, t.mlp_width, t.heads),
            ln_final: NormWeights::new(layout.name(LN_FINAL), t.width),
            projection: projection(layout, TEXT_PROJECTION, t.width, t.embed_dim),
        };
        Self { vision, text }
    }

    /// Every tensor the model needs, with its shape as stored in the file.
    pub(super) fn required(&self) -> Vec<Required> {
        let mut out = Vec::new();
        self.vision.list(&mut out);
        self.text.list(&mut out);
        out
    }
}

/// The converted tensors by name, as they arrive; each is taken out once
/// when the model is built. Typed by role, so a tensor is taken as what it
/// was converted to.
pub(super) struct Parts {
    layout: Layout,
    device: Device,
    precision: Precision,
    vectors: HashMap<String, Tensor<1>>,
    matrices: HashMap<String, Tensor<2>>,
    host: HashMap<String, Vec<f32>>,
}

impl Parts {
    pub(super) fn new(layout: Layout, device: &Device, precision: Precision) -> Self {
        let (vectors, matrices, host) = (HashMap::new(), HashMap::new(), HashMap::new());
        Self { layout, device: device.clone(), precision, vectors, matrices, host }
    }

    fn missing(&self, name: String) -> LoadError {
        LoadError::MissingTensors { layout: self.layout, names: vec![name] }
    }

    /// Convert one complete tensor, stored with `shape`, as `role` says, and
    /// upload it at the model's precision unless it stays on the host.
    pub(super) fn insert(&mut self, name: String, shape: &[usize], role: Role, data: Vec<f32>) {
        let on_device = (&self.device, self.precision.dtype().into());
        match role {
            Role::Vector => {
                let n = data.len();
                self.vectors.insert(name, Tensor::from_data(TensorData::new(data, [n]), on_device));
            }
            Role::Matrix => {
                let rows = shape.first().copied().unwrap_or(1).max(1);
                let cols = data.len() / rows;
                self.matrices.insert(name, Tensor::from_data(TensorData::new(data, [rows, cols]), on_device));
            }
            Role::MatrixTransposed => {
                let rows = shape.first().copied().unwrap_or(1).max(1);
                let cols = data.len() / rows;
                self.matrices.insert(name, Tensor::from_data(TensorData::new(transpose(&data, rows, cols), [cols, rows]), on_device));
            }
            Role::Host => {
                // Kept as f32 for the CPU-side resize, holding the values the
                // device's copy would (the reference resizes `model.half()`'s).
                let data = match self.precision {
                    Precision::F32 => data,
                    Precision::F16 => data.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect(),
                };
                self.host.insert(name, data);
            }
        }
    }
}

/// `[rows, cols]` row-major to `[cols, rows]`.
fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(transpose(&[1., 2., 3., 4., 5., 6.], 2, 3), vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn the_table_lists_every_tensor_of_vit_b16() {
        // OpenAI ViT-B/16 has 302 tensors besides logit_scale (open_clip layout):
        // 7 embeddings/projections + 3 norms x 2 + 24 blocks x 12 (fused in_proj).
        let open_clip = ClipWeights::new(Layout::OpenClip, &ClipConfig::vit_b16()).required();
        assert_eq!(open_clip.len(), 7 + 6 + 24 * 12);
        // Hugging Face: separate q, k, v projections, 16 tensors a block.
        let hugging_face = ClipWeights::new(Layout::HuggingFace, &ClipConfig::vit_b16()).required();
        assert_eq!(hugging_face.len(), 7 + 6 + 24 * 16);
        let names: std::collections::HashSet<_> = open_clip.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names.len(), open_clip.len(), "every name once");
        assert!(names.contains("visual.transformer.resblocks.11.attn.in_proj_weight"));
        assert!(names.contains("transformer.resblocks.0.mlp.c_proj.bias"));
        let qkv = hugging_face.iter().find(|r| r.name == "vision_model.encoder.layers.3.self_attn.k_proj.weight").unwrap();
        assert_eq!((qkv.shape.clone(), qkv.role), (vec![768, 768], Role::MatrixTransposed));
    }
}
