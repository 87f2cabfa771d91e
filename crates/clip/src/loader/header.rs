//! A checkpoint's header: parsed from the first bytes of the file, it names
//! every tensor with its dtype, shape and byte range, which is enough to tell
//! the layout and architecture and to refuse a wrong file before its data
//! arrives.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, Metadata};

use super::weights::{
    ClipWeights, Key, Role, FC_1, LN_1, PATCH_EMBEDDING, TEXT_BLOCKS, TEXT_POSITIONS, TEXT_PROJECTION, TOKEN_EMBEDDING, VISION_BLOCKS,
    VISION_CLASS, VISION_POSITIONS, VISION_PROJECTION,
};
use super::{Layout, LoadError};
use crate::config::{Activation, ClipConfig, TextConfig, VisionConfig, HEAD_DIM};

/// Bytes of the little-endian `u64` header length that starts a safetensors file.
pub(super) const LENGTH_BYTES: usize = 8;
/// The safetensors crate's own limit on the JSON header.
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// The length of the JSON header, from the file's first 8 bytes (`None`
/// while fewer have arrived).
pub(super) fn header_length(prefix: &[u8]) -> Result<Option<usize>, LoadError> {
    let Some(first) = prefix.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let n = u64::from_le_bytes(*first);
    if n > MAX_HEADER_BYTES {
        return Err(LoadError::NotSafetensors(format!("its first 8 bytes give a header length of {n} bytes")));
    }
    Ok(Some(n as usize))
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
    check_entries(json)?;
    let header: Metadata = serde_json::from_slice(json).map_err(|e| LoadError::NotSafetensors(format!("its header is not valid: {e}")))?;
    let layout = detect_layout(&header)?;
    let config = read_config(&header, layout)?;
    let roles = check_tensors(&header, layout, &config)?;
    let tensors = header
        .offset_keys()
        .into_iter()
        .filter_map(|name| {
            let info = header.info(&name)?;
            let role = roles.get(&name).copied();
            Some(Planned { dtype: info.dtype, shape: info.shape.clone(), start: info.data_offsets.0, end: info.data_offsets.1, role, name })
        })
        .collect();
    Ok(Plan { layout, config, data_start: LENGTH_BYTES + json.len(), data_len: header.data_len(), tensors })
}

/// Checks the safetensors crate's own validation reports without naming
/// the tensor: a name given twice (JSON objects may repeat a key, and a map
/// would keep only the last entry), and a shape whose size does not match the
/// tensor's byte range.
fn check_entries(json: &[u8]) -> Result<(), LoadError> {
    let invalid = |what: String| LoadError::NotSafetensors(format!("its header is not valid: {what}"));
    let entries: Entries = serde_json::from_slice(json).map_err(|e| invalid(e.to_string()))?;
    let mut names: Vec<&str> = entries.0.iter().map(|(name, _)| name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid(format!("it names tensor `{}` twice", w[0])));
    }
    for (name, entry) in &entries.0 {
        let Ok(info) = serde_json::from_value::<safetensors::tensor::TensorInfo>(entry.clone()) else {
            continue; // `__metadata__`, or an entry the full parse refuses with its own message
        };
        let elements = info.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let bytes = elements.and_then(|n| n.checked_mul(info.dtype.bitsize())).map(|bits| bits.div_ceil(8));
        let (start, end) = info.data_offsets;
        if end < start {
            return Err(invalid(format!("tensor `{name}` has reversed offsets {start}..{end}")));
        }
        if bytes != end.checked_sub(start) {
            return Err(invalid(format!(
                "tensor `{name}` of shape {:?} ({:?}) needs {} bytes, but its offsets {start}..{end} hold {}",
                info.shape,
                info.dtype,
                bytes.map_or("more than 2^64".to_string(), |b| b.to_string()),
                end - start,
            )));
        }
    }
    Ok(())
}

/// The header's entries in file order, duplicates kept.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of tensors")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

fn detect_layout(header: &Metadata) -> Result<Layout, LoadError> {
    let has = |layout: Layout| header.info(&layout.name(VISION_CLASS)).is_some();
    if has(Layout::OpenClip) {
        Ok(Layout::OpenClip)
    } else if has(Layout::HuggingFace) {
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

/// The shape of a tensor the architecture is read from, which must have `N` dimensions.
fn require_shape<const N: usize>(header: &Metadata, layout: Layout, name: &str) -> Result<[usize; N], LoadError> {
    match shape_of(header, name) {
        Some(shape) => <[usize; N]>::try_from(shape.as_slice())
            .map_err(|_| LoadError::Architecture(format!("tensor `{name}` has rank {} ({shape:?}), expected {N}", shape.len()))),
        None => Err(LoadError::MissingTensors { layout, names: vec![name.to_string()] }),
    }
}

fn heads_for(width: usize, what: &str) -> Result<usize, LoadError> {
    if width == 0 || !width.is_multiple_of(HEAD_DIM) {
        return Err(LoadError::Architecture(format!("{what} width {width} is not a multiple of the 64-wide CLIP heads")));
    }
    Ok(width / HEAD_DIM)
}

/// What the shapes say about one tower's blocks: how many, and the MLP width.
fn read_blocks(header: &Metadata, layout: Layout, blocks: Key) -> Result<(usize, usize), LoadError> {
    let ln_1 = |i: usize| format!("{}.weight", layout.block_name(blocks, i, LN_1));
    let layers = (0..).take_while(|&i| shape_of(header, &ln_1(i)).is_some()).count();
    if layers == 0 {
        return Err(LoadError::MissingTensors { layout, names: vec![ln_1(0)] });
    }
    let [mlp_width, _] = require_shape(header, layout, &format!("{}.weight", layout.block_name(blocks, 0, FC_1)))?;
    Ok((layers, mlp_width))
}

/// Read the architecture from tensor shapes.
pub(super) fn read_config(header: &Metadata, layout: Layout) -> Result<ClipConfig, LoadError> {
    let [width] = require_shape(header, layout, &layout.name(VISION_CLASS))?;
    let conv: [usize; 4] = require_shape(header, layout, &layout.name(PATCH_EMBEDDING))?;
    if conv[1] != 3 || conv[2] != conv[3] || conv[0] != width {
        return Err(LoadError::Architecture(format!("patch embedding {conv:?} is not [width, 3, p, p]")));
    }
    let [positions, _] = require_shape(header, layout, &layout.name(VISION_POSITIONS))?;
    let grid = ((positions.saturating_sub(1)) as f64).sqrt().round() as usize;
    if grid * grid + 1 != positions {
        return Err(LoadError::Architecture(format!("{positions} vision positions is not a square grid plus a class token")));
    }
    let (vision_layers, vision_mlp) = read_blocks(header, layout, VISION_BLOCKS)?;
    let embed_dim = layout.projection_output(require_shape(header, layout, &layout.name(VISION_PROJECTION))?);

    let [vocab, text_width] = require_shape(header, layout, &layout.name(TOKEN_EMBEDDING))?;
    let [context, _] = require_shape(header, layout, &layout.name(TEXT_POSITIONS))?;
    let (text_layers, text_mlp) = read_blocks(header, layout, TEXT_BLOCKS)?;
    let text_embed = layout.projection_output(require_shape(header, layout, &layout.name(TEXT_PROJECTION))?);
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
/// dtype; returns each one's role. Other tensors (e.g. `logit_scale`) are skipped.
fn check_tensors(header: &Metadata, layout: Layout, config: &ClipConfig) -> Result<HashMap<String, Role>, LoadError> {
    let mut missing = Vec::new();
    let mut roles = HashMap::new();
    for required in ClipWeights::new(layout, config).required() {
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
        return Err(LoadError::MissingTensors { layout, names: missing });
    }
    Ok(roles)
}
