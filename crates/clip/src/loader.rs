//! Loading CLIP from safetensors bytes, in either tensor-name layout.
//!
//! One table of names ([`Names`]) serves both layouts; the architecture is read
//! from tensor shapes ([`read_config`]); every required tensor is checked for
//! presence and shape before anything is built, so a wrong file fails with the
//! full list of what is wrong and nothing half-loaded.

use std::collections::HashSet;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::config::{Activation, ClipConfig, TextConfig, VisionConfig, HEAD_DIM};
use crate::nn::{Attention, LayerNorm, Linear, Mlp, ResidualAttentionBlock};
use crate::text::TextTransformer;
use crate::vision::VisionTransformer;
use crate::Clip;

/// Tensor-name layout of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `transformers`' `CLIPModel` (`vision_model.encoder.layers.N...`).
    HuggingFace,
    /// OpenAI CLIP / open_clip (`visual.transformer.resblocks.N...`).
    OpenClip,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub activation: Activation,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a readable safetensors file ({0}); is it truncated or of another format?")]
    NotSafetensors(String),
    #[error(
        "not a CLIP checkpoint: none of its {count} tensors is `visual.class_embedding` (OpenAI/open_clip layout) \
         or `vision_model.embeddings.class_embedding` (Hugging Face layout); it holds e.g. {sample}"
    )]
    NotClip { count: usize, sample: String },
    #[error("the checkpoint ({layout:?} layout) lacks {} tensor(s): {}", .names.len(), list(.names))]
    MissingTensors { layout: Layout, names: Vec<String> },
    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape { name: String, found: Vec<usize>, expected: Vec<usize> },
    #[error("tensor `{name}` is {dtype}; only f32, f16 and bf16 weights are supported")]
    DType { name: String, dtype: String },
    #[error("unsupported architecture: {0}")]
    Architecture(String),
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Load a CLIP model from the bytes of a `.safetensors` file.
pub fn load_clip(bytes: &[u8], options: LoadOptions, device: &Device) -> Result<Clip, LoadError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| LoadError::NotSafetensors(e.to_string()))?;
    let layout = detect_layout(&st)?;
    let names = Names(layout);
    let mut config = read_config(&st, names)?;
    config.activation = options.activation;
    check_tensors(&st, names, &config)?;
    let reader = Reader { st: &st, names, device };
    let vision = build_vision(&reader, names, &config)?;
    let text = build_text(&reader, names, &config)?;
    let logit_scale = match st.tensor("logit_scale") {
        Ok(view) => to_f32("logit_scale", &view)?.first().copied().unwrap_or(100f32.ln()).exp(),
        Err(_) => 100.0,
    };
    Ok(Clip { config, vision, text, logit_scale, layout })
}

fn detect_layout(st: &SafeTensors) -> Result<Layout, LoadError> {
    let names: HashSet<&str> = st.names().into_iter().collect();
    if names.contains(Names(Layout::OpenClip).vision_class().as_str()) {
        Ok(Layout::OpenClip)
    } else if names.contains(Names(Layout::HuggingFace).vision_class().as_str()) {
        Ok(Layout::HuggingFace)
    } else {
        let mut sample: Vec<&str> = names.into_iter().collect();
        sample.sort_unstable();
        let count = sample.len();
        sample.truncate(5);
        let sample = if sample.is_empty() { "nothing".to_string() } else { sample.join(", ") };
        Err(LoadError::NotClip { count, sample })
    }
}

/// Which tower a name refers to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tower {
    Vision,
    Text,
}

/// The tensor names of one layout. Linear weights are stored `[out, in]` in
/// both layouts; the projections are `[out, in]` in Hugging Face files and
/// `[in, out]` in OpenAI/open_clip files.
#[derive(Clone, Copy)]
struct Names(Layout);

impl Names {
    fn hf(self) -> bool {
        self.0 == Layout::HuggingFace
    }
    fn vision_class(self) -> String {
        self.pick("vision_model.embeddings.class_embedding", "visual.class_embedding")
    }
    fn patch_embedding(self) -> String {
        self.pick("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight")
    }
    fn positions(self, tower: Tower) -> String {
        match tower {
            Tower::Vision => self.pick("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
            Tower::Text => self.pick("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        }
    }
    fn token_embedding(self) -> String {
        self.pick("text_model.embeddings.token_embedding.weight", "token_embedding.weight")
    }
    /// Prefix of the `ln_pre` (`pre_layrnorm`, sic), `ln_post`, `ln_final` norms.
    fn ln_pre(self) -> String {
        self.pick("vision_model.pre_layrnorm", "visual.ln_pre")
    }
    fn ln_post(self) -> String {
        self.pick("vision_model.post_layernorm", "visual.ln_post")
    }
    fn ln_final(self) -> String {
        self.pick("text_model.final_layer_norm", "ln_final")
    }
    fn projection(self, tower: Tower) -> String {
        match tower {
            Tower::Vision => self.pick("visual_projection.weight", "visual.proj"),
            Tower::Text => self.pick("text_projection.weight", "text_projection"),
        }
    }
    fn block(self, tower: Tower, i: usize) -> String {
        match tower {
            Tower::Vision => self.pick(&format!("vision_model.encoder.layers.{i}"), &format!("visual.transformer.resblocks.{i}")),
            Tower::Text => self.pick(&format!("text_model.encoder.layers.{i}"), &format!("transformer.resblocks.{i}")),
        }
    }
    fn block_ln(self, block: &str, which: u8) -> String {
        match (self.hf(), which) {
            (true, 1) => format!("{block}.layer_norm1"),
            (true, _) => format!("{block}.layer_norm2"),
            (false, 1) => format!("{block}.ln_1"),
            (false, _) => format!("{block}.ln_2"),
        }
    }
    fn block_out(self, block: &str) -> String {
        format!("{block}.{}", self.pick("self_attn.out_proj", "attn.out_proj"))
    }
    fn block_fc(self, block: &str, which: u8) -> String {
        match (self.hf(), which) {
            (true, 1) => format!("{block}.mlp.fc1"),
            (true, _) => format!("{block}.mlp.fc2"),
            (false, 1) => format!("{block}.mlp.c_fc"),
            (false, _) => format!("{block}.mlp.c_proj"),
        }
    }
    /// The q, k, v weight and bias names: three pairs (HF) or one fused pair.
    fn block_qkv(self, block: &str) -> Vec<(String, String)> {
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

fn shape_of(st: &SafeTensors, name: &str) -> Option<Vec<usize>> {
    st.tensor(name).ok().map(|t| t.shape().to_vec())
}

fn require_shape(st: &SafeTensors, names: Names, name: &str, rank: usize) -> Result<Vec<usize>, LoadError> {
    match shape_of(st, name) {
        Some(shape) if shape.len() == rank => Ok(shape),
        Some(shape) => Err(LoadError::Architecture(format!("tensor `{name}` has rank {} ({shape:?}), expected {rank}", shape.len()))),
        None => Err(LoadError::MissingTensors { layout: names.0, names: vec![name.to_string()] }),
    }
}

fn count_blocks(st: &SafeTensors, names: Names, tower: Tower) -> usize {
    (0..).take_while(|&i| shape_of(st, &format!("{}.weight", names.block_ln(&names.block(tower, i), 1))).is_some()).count()
}

fn heads_for(width: usize, what: &str) -> Result<usize, LoadError> {
    if width == 0 || width % HEAD_DIM != 0 {
        return Err(LoadError::Architecture(format!("{what} width {width} is not a multiple of the 64-wide CLIP heads")));
    }
    Ok(width / HEAD_DIM)
}

/// Read the architecture from tensor shapes.
fn read_config(st: &SafeTensors, names: Names) -> Result<ClipConfig, LoadError> {
    let width = require_shape(st, names, &names.vision_class(), 1)?[0];
    let conv = require_shape(st, names, &names.patch_embedding(), 4)?;
    if conv[1] != 3 || conv[2] != conv[3] || conv[0] != width {
        return Err(LoadError::Architecture(format!("patch embedding {conv:?} is not [width, 3, p, p]")));
    }
    let positions = require_shape(st, names, &names.positions(Tower::Vision), 2)?[0];
    let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != positions {
        return Err(LoadError::Architecture(format!("{positions} vision positions is not a square grid plus a class token")));
    }
    let vision_layers = count_blocks(st, names, Tower::Vision);
    if vision_layers == 0 {
        return Err(LoadError::MissingTensors {
            layout: names.0,
            names: vec![format!("{}.weight", names.block_ln(&names.block(Tower::Vision, 0), 1))],
        });
    }
    let vision_mlp = require_shape(st, names, &format!("{}.weight", names.block_fc(&names.block(Tower::Vision, 0), 1)), 2)?[0];
    let vision_proj = require_shape(st, names, &names.projection(Tower::Vision), 2)?;
    let embed_dim = if names.hf() { vision_proj[0] } else { vision_proj[1] };

    let [vocab, text_width] = <[usize; 2]>::try_from(require_shape(st, names, &names.token_embedding(), 2)?).unwrap();
    let context = require_shape(st, names, &names.positions(Tower::Text), 2)?[0];
    let text_layers = count_blocks(st, names, Tower::Text);
    if text_layers == 0 {
        return Err(LoadError::MissingTensors {
            layout: names.0,
            names: vec![format!("{}.weight", names.block_ln(&names.block(Tower::Text, 0), 1))],
        });
    }
    let text_mlp = require_shape(st, names, &format!("{}.weight", names.block_fc(&names.block(Tower::Text, 0), 1)), 2)?[0];
    let text_proj = require_shape(st, names, &names.projection(Tower::Text), 2)?;
    let text_embed = if names.hf() { text_proj[0] } else { text_proj[1] };
    if text_embed != embed_dim {
        return Err(LoadError::Architecture(format!("image embedding {embed_dim} differs from text embedding {text_embed}")));
    }
    Ok(ClipConfig {
        vision: VisionConfig {
            width,
            layers: vision_layers,
            heads: heads_for(width, "vision")?,
            patch_size: conv[2],
            grid_size: grid,
            mlp_width: vision_mlp,
            embed_dim,
        },
        text: TextConfig {
            vocab_size: vocab,
            context_length: context,
            width: text_width,
            layers: text_layers,
            heads: heads_for(text_width, "text")?,
            mlp_width: text_mlp,
            embed_dim,
        },
        activation: Activation::default(),
    })
}

/// Every tensor the model needs, with its shape as stored in the file.
fn required_tensors(names: Names, config: &ClipConfig) -> Vec<(String, Vec<usize>)> {
    let v = &config.vision;
    let t = &config.text;
    let mut out = vec![
        (names.vision_class(), vec![v.width]),
        (names.patch_embedding(), vec![v.width, 3, v.patch_size, v.patch_size]),
        (names.positions(Tower::Vision), vec![v.grid_size * v.grid_size + 1, v.width]),
        (names.token_embedding(), vec![t.vocab_size, t.width]),
        (names.positions(Tower::Text), vec![t.context_length, t.width]),
    ];
    let projection = |width: usize| if names.hf() { vec![v.embed_dim, width] } else { vec![width, v.embed_dim] };
    out.push((names.projection(Tower::Vision), projection(v.width)));
    out.push((names.projection(Tower::Text), projection(t.width)));
    for (prefix, width) in [(names.ln_pre(), v.width), (names.ln_post(), v.width), (names.ln_final(), t.width)] {
        out.push((format!("{prefix}.weight"), vec![width]));
        out.push((format!("{prefix}.bias"), vec![width]));
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
                out.push((weight, vec![rows, width]));
                out.push((bias, vec![rows]));
            }
            for (prefix, shape) in [
                (names.block_ln(&block, 1), vec![width]),
                (names.block_ln(&block, 2), vec![width]),
            ] {
                out.push((format!("{prefix}.weight"), shape.clone()));
                out.push((format!("{prefix}.bias"), shape));
            }
            for (prefix, out_dim, in_dim) in [
                (names.block_out(&block), width, width),
                (names.block_fc(&block, 1), mlp, width),
                (names.block_fc(&block, 2), width, mlp),
            ] {
                out.push((format!("{prefix}.weight"), vec![out_dim, in_dim]));
                out.push((format!("{prefix}.bias"), vec![out_dim]));
            }
        }
    }
    out
}

fn check_tensors(st: &SafeTensors, names: Names, config: &ClipConfig) -> Result<(), LoadError> {
    let mut missing = Vec::new();
    for (name, expected) in required_tensors(names, config) {
        match st.tensor(&name) {
            Err(_) => missing.push(name),
            Ok(view) => {
                if view.shape() != expected.as_slice() {
                    return Err(LoadError::Shape { name, found: view.shape().to_vec(), expected });
                }
                if !matches!(view.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                    return Err(LoadError::DType { name, dtype: format!("{:?}", view.dtype()) });
                }
            }
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::MissingTensors { layout: names.0, names: missing })
    }
}

fn to_f32(name: &str, view: &TensorView) -> Result<Vec<f32>, LoadError> {
    let bytes = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => return Err(LoadError::DType { name: name.to_string(), dtype: format!("{other:?}") }),
    })
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

/// Reads checked tensors as f32 and uploads them.
struct Reader<'a> {
    st: &'a SafeTensors<'a>,
    names: Names,
    device: &'a Device,
}

impl Reader<'_> {
    fn raw(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let view = self.st.tensor(name).map_err(|_| LoadError::MissingTensors {
            layout: self.names.0,
            names: vec![name.to_string()],
        })?;
        Ok((to_f32(name, &view)?, view.shape().to_vec()))
    }

    fn upload<const D: usize>(&self, data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        Tensor::from_data(TensorData::new(data, shape), self.device)
    }

    fn vector(&self, name: &str) -> Result<Tensor<1>, LoadError> {
        let (data, _) = self.raw(name)?;
        let n = data.len();
        Ok(self.upload(data, [n]))
    }

    /// A `[out, in]` weight uploaded as `[in, out]`.
    fn matrix_transposed(&self, name: &str) -> Result<Tensor<2>, LoadError> {
        let (data, shape) = self.raw(name)?;
        Ok(self.upload(transpose(&data, shape[0], shape[1]), [shape[1], shape[0]]))
    }

    /// A projection, uploaded `[in, out]` whatever the layout stores.
    fn projection(&self, names: Names, name: &str) -> Result<Tensor<2>, LoadError> {
        if names.hf() {
            self.matrix_transposed(name)
        } else {
            let (data, shape) = self.raw(name)?;
            Ok(self.upload(data, [shape[0], shape[1]]))
        }
    }

    fn layer_norm(&self, prefix: &str) -> Result<LayerNorm, LoadError> {
        Ok(LayerNorm { gamma: self.vector(&format!("{prefix}.weight"))?, beta: self.vector(&format!("{prefix}.bias"))? })
    }

    fn linear(&self, prefix: &str) -> Result<Linear, LoadError> {
        Ok(Linear {
            weight: self.matrix_transposed(&format!("{prefix}.weight"))?,
            bias: Some(self.vector(&format!("{prefix}.bias"))?),
        })
    }

    fn block(&self, names: Names, block: &str, heads: usize, activation: Activation) -> Result<ResidualAttentionBlock, LoadError> {
        // Stack the q, k, v rows ([3 * width, width], in_proj order), then transpose.
        let mut weight = Vec::new();
        let mut bias = Vec::new();
        let mut width = 0;
        for (w, b) in names.block_qkv(block) {
            let (data, shape) = self.raw(&w)?;
            width = shape[1];
            weight.extend(data);
            bias.extend(self.raw(&b)?.0);
        }
        let qkv = Linear {
            weight: self.upload(transpose(&weight, 3 * width, width), [width, 3 * width]),
            bias: Some(self.upload(bias, [3 * width])),
        };
        Ok(ResidualAttentionBlock {
            ln_1: self.layer_norm(&names.block_ln(block, 1))?,
            attn: Attention { qkv, out: self.linear(&names.block_out(block))?, heads },
            ln_2: self.layer_norm(&names.block_ln(block, 2))?,
            mlp: Mlp { fc1: self.linear(&names.block_fc(block, 1))?, fc2: self.linear(&names.block_fc(block, 2))?, activation },
        })
    }
}

fn build_vision(r: &Reader, names: Names, config: &ClipConfig) -> Result<VisionTransformer, LoadError> {
    let v = &config.vision;
    let (conv, _) = r.raw(&names.patch_embedding())?;
    let patch_in = 3 * v.patch_size * v.patch_size;
    // conv1.weight [width, 3, p, p] -> matrix [3 * p * p, width]
    let patch_embedding = r.upload(transpose(&conv, v.width, patch_in), [patch_in, v.width]);
    let (positions, _) = r.raw(&names.positions(Tower::Vision))?;
    let class_position = r.upload(positions[..v.width].to_vec(), [v.width]);
    let blocks = (0..v.layers)
        .map(|i| r.block(names, &names.block(Tower::Vision, i), v.heads, config.activation))
        .collect::<Result<_, _>>()?;
    Ok(VisionTransformer {
        config: v.clone(),
        patch_embedding,
        class_embedding: r.vector(&names.vision_class())?,
        class_position,
        patch_positions: positions[v.width..].to_vec(),
        ln_pre: r.layer_norm(&names.ln_pre())?,
        blocks,
        ln_post: r.layer_norm(&names.ln_post())?,
        projection: r.projection(names, &names.projection(Tower::Vision))?,
    })
}

fn build_text(r: &Reader, names: Names, config: &ClipConfig) -> Result<TextTransformer, LoadError> {
    let t = &config.text;
    let (tokens, _) = r.raw(&names.token_embedding())?;
    let (positions, _) = r.raw(&names.positions(Tower::Text))?;
    let blocks = (0..t.layers)
        .map(|i| r.block(names, &names.block(Tower::Text, i), t.heads, config.activation))
        .collect::<Result<_, _>>()?;
    Ok(TextTransformer {
        config: t.clone(),
        token_embedding: r.upload(tokens, [t.vocab_size, t.width]),
        position_embedding: r.upload(positions, [t.context_length, t.width]),
        blocks,
        ln_final: r.layer_norm(&names.ln_final())?,
        projection: r.projection(names, &names.projection(Tower::Text))?,
    })
}

/// The architecture of a checkpoint, without loading it.
pub fn inspect_config(bytes: &[u8]) -> Result<(ClipConfig, Layout), LoadError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| LoadError::NotSafetensors(e.to_string()))?;
    let layout = detect_layout(&st)?;
    let config = read_config(&st, Names(layout))?;
    check_tensors(&st, Names(layout), &config)?;
    Ok((config, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_swaps_axes() {
        assert_eq!(transpose(&[1., 2., 3., 4., 5., 6.], 2, 3), vec![1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn required_tensor_count_matches_vit_b16() {
        // OpenAI ViT-B/16 has 302 tensors besides logit_scale (open_clip layout).
        let names = required_tensors(Names(Layout::OpenClip), &ClipConfig::vit_b16());
        // 7 embeddings/projections + 3 norms x 2 + 24 blocks x 12 (fused in_proj)
        assert_eq!(names.len(), 7 + 6 + 24 * 12);
        // Hugging Face: separate q, k, v projections, 16 tensors a block.
        assert_eq!(required_tensors(Names(Layout::HuggingFace), &ClipConfig::vit_b16()).len(), 7 + 6 + 24 * 16);
    }
}
