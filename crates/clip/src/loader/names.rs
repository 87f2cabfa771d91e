//! The tensor names of both checkpoint layouts, and what the loader does with
//! each tensor the model needs.

use super::Layout;
use crate::config::ClipConfig;

/// Which tower a name refers to.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Tower {
    Vision,
    Text,
}

/// The tensor names of one layout. Linear weights are stored `[out, in]` in
/// both layouts; the projections are `[out, in]` in Hugging Face files and
/// `[in, out]` in OpenAI/open_clip files.
#[derive(Clone, Copy)]
pub(super) struct Names(pub(super) Layout);

impl Names {
    pub(super) fn hf(self) -> bool {
        self.0 == Layout::HuggingFace
    }
    pub(super) fn vision_class(self) -> String {
        self.pick("vision_model.embeddings.class_embedding", "visual.class_embedding")
    }
    pub(super) fn patch_embedding(self) -> String {
        self.pick("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight")
    }
    pub(super) fn positions(self, tower: Tower) -> String {
        match tower {
            Tower::Vision => self.pick("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
            Tower::Text => self.pick("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        }
    }
    pub(super) fn token_embedding(self) -> String {
        self.pick("text_model.embeddings.token_embedding.weight", "token_embedding.weight")
    }
    /// Prefix of the `ln_pre` (`pre_layrnorm`, sic), `ln_post`, `ln_final` norms.
    pub(super) fn ln_pre(self) -> String {
        self.pick("vision_model.pre_layrnorm", "visual.ln_pre")
    }
    pub(super) fn ln_post(self) -> String {
        self.pick("vision_model.post_layernorm", "visual.ln_post")
    }
    pub(super) fn ln_final(self) -> String {
        self.pick("text_model.final_layer_norm", "ln_final")
    }
    pub(super) fn projection(self, tower: Tower) -> String {
        match tower {
            Tower::Vision => self.pick("visual_projection.weight", "visual.proj"),
            Tower::Text => self.pick("text_projection.weight", "text_projection"),
        }
    }
    pub(super) fn block(self, tower: Tower, i: usize) -> String {
        match tower {
            Tower::Vision => self.pick(&format!("vision_model.encoder.layers.{i}"), &format!("visual.transformer.resblocks.{i}")),
            Tower::Text => self.pick(&format!("text_model.encoder.layers.{i}"), &format!("transformer.resblocks.{i}")),
        }
    }
    pub(super) fn block_ln(self, block: &str, which: u8) -> String {
        match (self.hf(), which) {
            (true, 1) => format!("{block}.layer_norm1"),
            (true, _) => format!("{block}.layer_norm2"),
            (false, 1) => format!("{block}.ln_1"),
            (false, _) => format!("{block}.ln_2"),
        }
    }
    pub(super) fn block_out(self, block: &str) -> String {
        format!("{block}.{}", self.pick("self_attn.out_proj", "attn.out_proj"))
    }
    pub(super) fn block_fc(self, block: &str, which: u8) -> String {
        match (self.hf(), which) {
            (true, 1) => format!("{block}.mlp.fc1"),
            (true, _) => format!("{block}.mlp.fc2"),
            (false, 1) => format!("{block}.mlp.c_fc"),
            (false, _) => format!("{block}.mlp.c_proj"),
        }
    }
    /// The q, k, v weight and bias names: three pairs (HF) or one fused pair.
    pub(super) fn block_qkv(self, block: &str) -> Vec<(String, String)> {
        if self.hf() {
            ["q", "k", "v"]
                .iter()
                .map(|p| (format!("{block}.self_attn.{p}_proj.weight"), format!("{block}.self_attn.{p}_proj.bias")))
                .collect()
        } else {
            vec![(format!("{block}.attn.in_proj_weight"), format!("{block}.attn.in_proj_bias"))]
        }
    }
    fn pick(self, hf: &str, open_clip: &str) -> String {
        if self.hf() { hf } else { open_clip }.to_string()
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

/// Every tensor the model needs, with its shape as stored in the file.
pub(super) fn required_tensors(names: Names, config: &ClipConfig) -> Vec<Required> {
    let v = &config.vision;
    let t = &config.text;
    let mut out = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, role: Role| out.push(Required { name, shape, role });
    add(names.vision_class(), vec![v.width], Role::Vector);
    add(names.patch_embedding(), vec![v.width, 3, v.patch_size, v.patch_size], Role::MatrixTransposed);
    add(names.positions(Tower::Vision), vec![v.grid_size * v.grid_size + 1, v.width], Role::Host);
    add(names.token_embedding(), vec![t.vocab_size, t.width], Role::Matrix);
    add(names.positions(Tower::Text), vec![t.context_length, t.width], Role::Matrix);
    // Projections are `[out, in]` in Hugging Face files and `[in, out]` in OpenAI/open_clip files.
    for (tower, width) in [(Tower::Vision, v.width), (Tower::Text, t.width)] {
        if names.hf() {
            add(names.projection(tower), vec![v.embed_dim, width], Role::MatrixTransposed);
        } else {
            add(names.projection(tower), vec![width, v.embed_dim], Role::Matrix);
        }
    }
    for (prefix, width) in [(names.ln_pre(), v.width), (names.ln_post(), v.width), (names.ln_final(), t.width)] {
        add(format!("{prefix}.weight"), vec![width], Role::Vector);
        add(format!("{prefix}.bias"), vec![width], Role::Vector);
    }
    for (tower, layers, width, mlp) in [
        (Tower::Vision, v.layers, v.width, v.mlp_width),
        (Tower::Text, t.layers, t.width, t.mlp_width),
    ] {
        for i in 0..layers {
            let block = names.block(tower, i);
            let qkv = names.block_qkv(&block);
            let rows = width * 3 / qkv.len();
            for (weight, bias) in qkv {
                add(weight, vec![rows, width], Role::MatrixTransposed);
                add(bias, vec![rows], Role::Vector);
            }
            for prefix in [names.block_ln(&block, 1), names.block_ln(&block, 2)] {
                add(format!("{prefix}.weight"), vec![width], Role::Vector);
                add(format!("{prefix}.bias"), vec![width], Role::Vector);
            }
            for (prefix, out_dim, in_dim) in [
                (names.block_out(&block), width, width),
                (names.block_fc(&block, 1), mlp, width),
                (names.block_fc(&block, 2), width, mlp),
            ] {
                add(format!("{prefix}.weight"), vec![out_dim, in_dim], Role::MatrixTransposed);
                add(format!("{prefix}.bias"), vec![out_dim], Role::Vector);
            }
        }
    }
    out
}
