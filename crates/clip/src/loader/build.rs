//! Assembling the model from tensors already converted and uploaded one by
//! one as the file streamed in ([`Parts`]).

use std::collections::HashMap;

use burn::tensor::{Device, Tensor, TensorData};

use super::names::{Names, Tower};
use super::LoadError;
use crate::config::{Activation, ClipConfig};
use crate::nn::{Attention, LayerNorm, Linear, Mlp, ResidualAttentionBlock};
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;

/// One tensor of the checkpoint in the form the model uses it.
pub(super) enum Part {
    Vector(Tensor<1>),
    Matrix(Tensor<2>),
    Host(Vec<f32>),
}

/// The converted tensors, by name. Each is taken out once when the model is built.
pub(super) struct Parts {
    parts: HashMap<String, Part>,
    names: Names,
}

impl Parts {
    pub(super) fn new(names: Names) -> Self {
        Self { parts: HashMap::new(), names }
    }

    pub(super) fn insert(&mut self, name: String, part: Part) {
        self.parts.insert(name, part);
    }

    fn take(&mut self, name: &str) -> Result<Part, LoadError> {
        self.parts
            .remove(name)
            .ok_or_else(|| LoadError::MissingTensors { layout: self.names.0, names: vec![name.to_string()] })
    }

    fn vector(&mut self, name: &str) -> Result<Tensor<1>, LoadError> {
        match self.take(name)? {
            Part::Vector(t) => Ok(t),
            _ => unreachable!("`{name}` is planned as a vector"),
        }
    }

    fn matrix(&mut self, name: &str) -> Result<Tensor<2>, LoadError> {
        match self.take(name)? {
            Part::Matrix(t) => Ok(t),
            _ => unreachable!("`{name}` is planned as a matrix"),
        }
    }

    pub(super) fn host(&mut self, name: &str) -> Result<Vec<f32>, LoadError> {
        match self.take(name)? {
            Part::Host(v) => Ok(v),
            _ => unreachable!("`{name}` is planned to stay on the host"),
        }
    }

    fn layer_norm(&mut self, prefix: &str) -> Result<LayerNorm, LoadError> {
        Ok(LayerNorm { gamma: self.vector(&format!("{prefix}.weight"))?, beta: self.vector(&format!("{prefix}.bias"))? })
    }

    fn linear(&mut self, prefix: &str) -> Result<Linear, LoadError> {
        Ok(Linear { weight: self.matrix(&format!("{prefix}.weight"))?, bias: Some(self.vector(&format!("{prefix}.bias"))?) })
    }

    /// The fused `[width, 3 * width]` q/k/v projection (open_clip's
    /// `in_proj_weight` order). Hugging Face files store q, k and v apart;
    /// their uploaded `[width, width]` matrices are joined on the device.
    fn qkv(&mut self, block: &str) -> Result<Linear, LoadError> {
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for (weight, bias) in self.names.block_qkv(block) {
            weights.push(self.matrix(&weight)?);
            biases.push(self.vector(&bias)?);
        }
        let (weight, bias) = if weights.len() == 1 {
            (weights.remove(0), biases.remove(0))
        } else {
            (Tensor::cat(weights, 1), Tensor::cat(biases, 0))
        };
        Ok(Linear { weight, bias: Some(bias) })
    }

    fn block(&mut self, block: &str, heads: usize, activation: Activation) -> Result<ResidualAttentionBlock, LoadError> {
        let names = self.names;
        Ok(ResidualAttentionBlock {
            ln_1: self.layer_norm(&names.block_ln(block, 1))?,
            attn: Attention { qkv: self.qkv(block)?, out: self.linear(&names.block_out(block))?, heads },
            ln_2: self.layer_norm(&names.block_ln(block, 2))?,
            mlp: Mlp { fc1: self.linear(&names.block_fc(block, 1))?, fc2: self.linear(&names.block_fc(block, 2))?, activation },
        })
    }
}

pub(super) fn build_vision(parts: &mut Parts, config: &ClipConfig, device: &Device) -> Result<VisionTransformer, LoadError> {
    let names = parts.names;
    let v = &config.vision;
    let mut positions = parts.host(&names.positions(Tower::Vision))?;
    // Row 0 is the class token's; the grid rows stay on the CPU for resizing.
    let patch_positions = positions.split_off(v.width);
    let class_position = Tensor::from_data(TensorData::new(positions, [v.width]), device);
    let blocks = (0..v.layers)
        .map(|i| parts.block(&names.block(Tower::Vision, i), v.heads, config.activation))
        .collect::<Result<_, _>>()?;
    Ok(VisionTransformer {
        config: v.clone(),
        patch_embedding: parts.matrix(&names.patch_embedding())?,
        class_embedding: parts.vector(&names.vision_class())?,
        class_position,
        patch_positions,
        ln_pre: parts.layer_norm(&names.ln_pre())?,
        blocks,
        ln_post: parts.layer_norm(&names.ln_post())?,
        projection: parts.matrix(&names.projection(Tower::Vision))?,
    })
}

pub(super) fn build_text(parts: &mut Parts, config: &ClipConfig) -> Result<TextTransformer, LoadError> {
    let names = parts.names;
    let t = &config.text;
    let blocks = (0..t.layers)
        .map(|i| parts.block(&names.block(Tower::Text, i), t.heads, config.activation))
        .collect::<Result<_, _>>()?;
    Ok(TextTransformer {
        config: t.clone(),
        token_embedding: parts.matrix(&names.token_embedding())?,
        position_embedding: parts.matrix(&names.positions(Tower::Text))?,
        blocks,
        ln_final: parts.layer_norm(&names.ln_final())?,
        projection: parts.matrix(&names.projection(Tower::Text))?,
    })
}
