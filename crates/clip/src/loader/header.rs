//! A checkpoint's header: parsed from the first bytes of the file, it names
//! every tensor with its dtype, shape and byte range, which is enough to tell
//! the layout and architecture and to refuse a wrong file before its data
//! arrives.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, Metadata};

use super::names::{required_tensors, Names, Role, Tower};
use super::{Layout, LoadError};
use crate::config::{Activation, ClipConfig, TextConfig, VisionConfig, HEAD_DIM};

/// Bytes of the little-endian `u64` header length that starts a safetensors file.
pub(super) const LENGTH_BYTES: usize = 8;
/// The safetensors crate's own limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The length of the JSON header, from the file's first 8 bytes.
pub(super) fn header_length(first: [u8; LENGTH_BYTES]) -> Result<usize, LoadError> {
    let n = u64::from_le_bytes(first);
    if n > MAX_HEADER_BYTES {
        return Err(LoadError::NotSafetensors(format!("its first 8 bytes give a header length of {n} bytes")));
    }
    Ok(n as usize)
}

/// One tensor of the file, in file order.
pub(super) struct Planned {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section (after the header).
    pub start: usize,
    pub end: usize,
    /// `None` for tensors the model does not use (their bytes are skipped).
    pub role: Option<Role>,
}

/// What the header says and what to do with each tensor.
pub(super) struct Plan {
    pub layout: Layout,
    pub config: ClipConfig,
    /// Bytes before the data section (length prefix and JSON header).
    pub data_start: usize,
    /// Bytes of the data section.
    pub data_len: usize,
    pub tensors: Vec<Planned>,
}

impl Plan {
    pub(super) fn file_len(&self) -> usize {
        self.data_start + self.data_len
    }
}

/// Check the JSON header (the bytes after the length prefix) against CLIP.
pub(super) fn plan(json: &[u8]) -> Result<Plan, LoadError> {
    // `Metadata`'s own validation: tensors tile the data section in offset
    // order, and each range is as long as its dtype and shape require.
    let header: Metadata = serde_json::from_slice(json).map_err(|e| LoadError::NotSafetensors(format!("its header is not valid: {e}")))?;
    let layout = detect_layout(&header)?;
    let names = Names(layout);
    let config = read_config(&header, names)?;
    let roles = check_tensors(&header, names, &config)?;
    let tensors = header
        .offset_keys()
        .into_iter()
        .map(|name| {
            let info = header.info(&name).expect("a name from the header");
            let role = roles.get(&name).copied();
            Planned { dtype: info.dtype, shape: info.shape.clone(), start: info.data_offsets.0, end: info.data_offsets.1, role, name }
        })
        .collect();
    Ok(Plan { layout, config, data_start: LENGTH_BYTES + json.len(), data_len: header.data_len(), tensors })
}

fn detect_layout(header: &Metadata) -> Result<Layout, LoadError> {
    let has = |name: String| header.info(&name).is_some();
    if has(Names(Layout::OpenClip).vision_class()) {
        Ok(Layout::OpenClip)
    } else if has(Names(Layout::HuggingFace).vision_class()) {
        Ok(Layout::HuggingFace)
    } else {
        let mut sample = header.offset_keys();
        sample.sort_unstable();
        let count = sample.len();
        sample.truncate(5);
        let sample = if sample.is_empty() { "nothing".to_string() } else { sample.join(", ") };
        Err(LoadError::NotClip { count, sample })
    }
}

fn shape_of(header: &Metadata, name: &str) -> Option<Vec<usize>> {
    header.info(name).map(|t| t.shape.clone())
}

fn require_shape(header: &Metadata, names: Names, name: &str, rank: usize) -> Result<Vec<usize>, LoadError> {
    match shape_of(header, name) {
        Some(shape) if shape.len() == rank => Ok(shape),
        Some(shape) => Err(LoadError::Architecture(format!("tensor `{name}` has rank {} ({shape:?}), expected {rank}", shape.len()))),
        None => Err(LoadError::MissingTensors { layout: names.0, names: vec![name.to_string()] }),
    }
}

fn count_blocks(header: &Metadata, names: Names, tower: Tower) -> usize {
    (0..).take_while(|&i| shape_of(header, &format!("{}.weight", names.block_ln(&names.block(tower, i), 1))).is_some()).count()
}

fn heads_for(width: usize, what: &str) -> Result<usize, LoadError> {
    if width == 0 || width % HEAD_DIM != 0 {
        return Err(LoadError::Architecture(format!("{what} width {width} is not a multiple of the 64-wide CLIP heads")));
    }
    Ok(width / HEAD_DIM)
}

/// Read the architecture from tensor shapes.
pub(super) fn read_config(header: &Metadata, names: Names) -> Result<ClipConfig, LoadError> {
    let width = require_shape(header, names, &names.vision_class(), 1)?[0];
    let conv = require_shape(header, names, &names.patch_embedding(), 4)?;
    if conv[1] != 3 || conv[2] != conv[3] || conv[0] != width {
        return Err(LoadError::Architecture(format!("patch embedding {conv:?} is not [width, 3, p, p]")));
    }
    let positions = require_shape(header, names, &names.positions(Tower::Vision), 2)?[0];
    let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != positions {
        return Err(LoadError::Architecture(format!("{positions} vision positions is not a square grid plus a class token")));
    }
    let vision_layers = count_blocks(header, names, Tower::Vision);
    if vision_layers == 0 {
        return Err(LoadError::MissingTensors {
            layout: names.0,
            names: vec![format!("{}.weight", names.block_ln(&names.block(Tower::Vision, 0), 1))],
        });
    }
    let vision_mlp = require_shape(header, names, &format!("{}.weight", names.block_fc(&names.block(Tower::Vision, 0), 1)), 2)?[0];
    let vision_proj = require_shape(header, names, &names.projection(Tower::Vision), 2)?;
    let embed_dim = if names.hf() { vision_proj[0] } else { vision_proj[1] };

    let [vocab, text_width] = <[usize; 2]>::try_from(require_shape(header, names, &names.token_embedding(), 2)?).unwrap();
    let context = require_shape(header, names, &names.positions(Tower::Text), 2)?[0];
    let text_layers = count_blocks(header, names, Tower::Text);
    if text_layers == 0 {
        return Err(LoadError::MissingTensors {
            layout: names.0,
            names: vec![format!("{}.weight", names.block_ln(&names.block(Tower::Text, 0), 1))],
        });
    }
    let text_mlp = require_shape(header, names, &format!("{}.weight", names.block_fc(&names.block(Tower::Text, 0), 1)), 2)?[0];
    let text_proj = require_shape(header, names, &names.projection(Tower::Text), 2)?;
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


fn supported(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// Every tensor the model needs is there, with the right shape and a float
/// dtype; returns each one's role (and the learned logit scale's, if stored).
fn check_tensors(header: &Metadata, names: Names, config: &ClipConfig) -> Result<HashMap<String, Role>, LoadError> {
    let mut missing = Vec::new();
    let mut roles = HashMap::new();
    for required in required_tensors(names, config) {
        match header.info(&required.name) {
            None => missing.push(required.name),
            Some(info) => {
                if info.shape != required.shape {
                    return Err(LoadError::Shape { name: required.name, found: info.shape.clone(), expected: required.shape });
                }
                if !supported(info.dtype) {
                    return Err(LoadError::DType { name: required.name, dtype: format!("{:?}", info.dtype) });
                }
                roles.insert(required.name, required.role);
            }
        }
    }
    if !missing.is_empty() {
        return Err(LoadError::MissingTensors { layout: names.0, names: missing });
    }
    if let Some(info) = header.info(LOGIT_SCALE) {
        if !supported(info.dtype) || info.shape.iter().product::<usize>() != 1 {
            return Err(LoadError::Architecture(format!("`{LOGIT_SCALE}` is {:?} {:?}, expected one float", info.dtype, info.shape)));
        }
        roles.insert(LOGIT_SCALE.to_string(), Role::Host);
    }
    Ok(roles)
}

/// The learned temperature, optional (plain CLIP's 100 when absent).
pub(super) const LOGIT_SCALE: &str = "logit_scale";
