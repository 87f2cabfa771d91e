//! Loading CLIP from a `.safetensors` file, in either tensor-name layout,
//! streamed: [`CheckpointLoader`] takes the file in chunks as they arrive (a
//! download, a file read), checks the header against CLIP as soon as it is
//! complete, and converts and uploads each tensor the moment its last byte
//! arrives. Only the one tensor being received is held (decoded to f32 as its
//! bytes come in), so the file is never held whole in memory next to the model.
//!
//! One table of names ([`names::Names`]) serves both layouts; the architecture
//! is read from tensor shapes; every required tensor is checked for presence,
//! shape and dtype from the header, before any data, so a wrong file fails
//! early with the full list of what is wrong.

mod build;
mod header;
mod names;

use std::io::Read;

use burn::tensor::{Device, Tensor, TensorData};
use safetensors::tensor::Dtype;

use crate::config::{Activation, ClipConfig};
use crate::Clip;
use build::{build_text, build_vision, Part, Parts};
use header::{header_length, plan, Plan, Planned, LENGTH_BYTES, LOGIT_SCALE};
use names::{Names, Role};

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
    #[error("not a readable safetensors file ({0}); is it of another format?")]
    NotSafetensors(String),
    #[error("the file ends after {received} bytes{}; is it truncated (an interrupted download)?", expected_len(.expected))]
    Truncated { received: usize, expected: Option<usize> },
    #[error("{extra} bytes follow the last tensor; the file is not a well-formed safetensors file")]
    TrailingBytes { extra: usize },
    #[error("cannot allocate {0} MB to receive a tensor")]
    OutOfMemory(usize),
    #[error("this checkpoint was already refused: {0}")]
    AlreadyFailed(String),
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

fn expected_len(expected: &Option<usize>) -> String {
    expected.map(|n| format!(" of the {n} its header announces")).unwrap_or_else(|| " inside its header".into())
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = names.iter().take(SHOWN).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

/// Receives a checkpoint chunk by chunk and builds the model from it.
///
/// ```text
/// let mut loader = CheckpointLoader::new(options, device);
/// for chunk in download { loader.push(&chunk)?; }   // refuses a non-CLIP file at its header
/// let clip = loader.finish()?;                      // refuses a truncated one
/// ```
pub struct CheckpointLoader {
    options: LoadOptions,
    device: Device,
    /// Bytes pushed so far.
    received: usize,
    stage: Stage,
}

enum Stage {
    /// Gathering the length prefix and the JSON header.
    Header(Vec<u8>),
    Tensors(Receiver),
    Failed(String),
}

/// Receives the data section, one tensor at a time in file order.
struct Receiver {
    plan: Plan,
    /// Index (in file order) of the tensor whose bytes come next.
    next: usize,
    /// Bytes of the data section received.
    offset: usize,
    /// The tensor being received, decoded to f32 as its bytes arrive.
    partial: Vec<f32>,
    /// The first bytes of an element split between two chunks.
    carry: Vec<u8>,
    parts: Parts,
}

impl CheckpointLoader {
    pub fn new(options: LoadOptions, device: &Device) -> Self {
        Self { options, device: device.clone(), received: 0, stage: Stage::Header(Vec::new()) }
    }

    /// The file's size as its header announces it, once the header has arrived.
    pub fn expected_len(&self) -> Option<usize> {
        match &self.stage {
            Stage::Tensors(r) => Some(r.plan.file_len()),
            _ => None,
        }
    }

    /// Bytes held for a tensor (decoded to f32 so far) or the header that is
    /// not complete yet: never more than the largest tensor the model uses.
    pub fn buffered_bytes(&self) -> usize {
        match &self.stage {
            Stage::Header(bytes) => bytes.len(),
            Stage::Tensors(r) => r.partial.len() * size_of::<f32>() + r.carry.len(),
            Stage::Failed(_) => 0,
        }
    }

    /// Take the next chunk of the file. An error is final: the loader refuses
    /// everything after it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), LoadError> {
        if let Stage::Failed(reason) = &self.stage {
            return Err(LoadError::AlreadyFailed(reason.clone()));
        }
        self.received += chunk.len();
        let result = self.receive(chunk);
        if let Err(e) = &result {
            self.stage = Stage::Failed(e.to_string());
        }
        result
    }

    fn receive(&mut self, mut chunk: &[u8]) -> Result<(), LoadError> {
        if let Stage::Header(gathered) = &mut self.stage {
            // The 8-byte length first, then that many bytes of JSON.
            if !gather(gathered, LENGTH_BYTES, &mut chunk) {
                return Ok(());
            }
            let wanted = LENGTH_BYTES + header_length(gathered[..LENGTH_BYTES].try_into().expect("8 bytes"))?;
            if !gather(gathered, wanted, &mut chunk) {
                return Ok(());
            }
            let plan = plan(&gathered[LENGTH_BYTES..])?;
            let parts = Parts::new(Names(plan.layout));
            self.stage = Stage::Tensors(Receiver { plan, next: 0, offset: 0, partial: Vec::new(), carry: Vec::new(), parts });
        }
        match &mut self.stage {
            Stage::Tensors(receiver) => receiver.receive(chunk, &self.device),
            _ => Ok(()),
        }
    }

    /// Build the model from everything pushed; fails if the file stopped short.
    pub fn finish(self) -> Result<Clip, LoadError> {
        let received = self.received;
        let mut receiver = match self.stage {
            Stage::Header(_) => return Err(LoadError::Truncated { received, expected: None }),
            Stage::Failed(reason) => return Err(LoadError::AlreadyFailed(reason)),
            Stage::Tensors(receiver) => receiver,
        };
        receiver.receive(&[], &self.device)?; // tensors of no bytes at the end
        if receiver.next < receiver.plan.tensors.len() {
            return Err(LoadError::Truncated { received, expected: Some(receiver.plan.file_len()) });
        }
        let mut config = receiver.plan.config.clone();
        config.activation = self.options.activation;
        let parts = &mut receiver.parts;
        let vision = build_vision(parts, &config, &self.device)?;
        let text = build_text(parts, &config)?;
        let logit_scale = match parts.host(LOGIT_SCALE) {
            Ok(value) => value[0].exp(),
            Err(_) => 100.0,
        };
        Ok(Clip { config, vision, text, logit_scale, layout: receiver.plan.layout })
    }
}

/// Move bytes from the front of `chunk` into `into` until it holds `wanted`; true once it does.
fn gather(into: &mut Vec<u8>, wanted: usize, chunk: &mut &[u8]) -> bool {
    let take = wanted.saturating_sub(into.len()).min(chunk.len());
    into.extend_from_slice(&chunk[..take]);
    *chunk = &chunk[take..];
    into.len() >= wanted
}

impl Receiver {
    fn receive(&mut self, mut chunk: &[u8], device: &Device) -> Result<(), LoadError> {
        loop {
            let Some(tensor) = self.plan.tensors.get(self.next) else {
                return if chunk.is_empty() { Ok(()) } else { Err(LoadError::TrailingBytes { extra: chunk.len() }) };
            };
            let have = self.offset - tensor.start;
            let size = tensor.end - tensor.start;
            let take = (size - have).min(chunk.len());
            let (bytes, rest) = chunk.split_at(take);
            chunk = rest;
            self.offset += take;
            let complete = have + take == size;
            if tensor.role.is_some() {
                if have == 0 {
                    let count: usize = tensor.shape.iter().product();
                    self.partial = Vec::new();
                    self.partial.try_reserve_exact(count).map_err(|_| LoadError::OutOfMemory((count * 4) >> 20))?;
                }
                decode(&tensor.name, tensor.dtype, bytes, &mut self.carry, &mut self.partial)?;
                if complete {
                    convert(tensor, std::mem::take(&mut self.partial), device, &mut self.parts);
                }
            } // else: not used by the model, skipped as it streams past
            if !complete {
                return Ok(());
            }
            self.next += 1;
        }
    }
}

/// Upload one complete tensor in the form its role asks for.
fn convert(tensor: &Planned, data: Vec<f32>, device: &Device, parts: &mut Parts) {
    let part = match tensor.role.expect("only tensors with a role are converted") {
        Role::Vector => {
            let n = data.len();
            Part::Vector(Tensor::from_data(TensorData::new(data, [n]), device))
        }
        Role::Matrix => {
            let shape = [tensor.shape[0], tensor.shape[1]];
            Part::Matrix(Tensor::from_data(TensorData::new(data, shape), device))
        }
        Role::MatrixTransposed => {
            let rows = tensor.shape[0];
            let cols = data.len() / rows;
            Part::Matrix(Tensor::from_data(TensorData::new(transpose(&data, rows, cols), [cols, rows]), device))
        }
        Role::Host => Part::Host(data),
    };
    parts.insert(tensor.name.clone(), part);
}

/// Append the values of `bytes` (little-endian `dtype`) to `out` as f32; the
/// bytes of an element cut at the end of a chunk wait in `carry`.
fn decode(name: &str, dtype: Dtype, mut bytes: &[u8], carry: &mut Vec<u8>, out: &mut Vec<f32>) -> Result<(), LoadError> {
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        other => return Err(LoadError::DType { name: name.to_string(), dtype: format!("{other:?}") }),
    };
    if !carry.is_empty() {
        if !gather(carry, width, &mut bytes) {
            return Ok(());
        }
        append_values(dtype, carry, out);
        carry.clear();
    }
    let whole = bytes.len() - bytes.len() % width;
    append_values(dtype, &bytes[..whole], out);
    carry.extend_from_slice(&bytes[whole..]);
    Ok(())
}

/// `bytes` holds whole elements of a float `dtype`.
fn append_values(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        Dtype::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        Dtype::F16 => out.extend(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
        Dtype::BF16 => out.extend(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
        _ => unreachable!("decode checks the dtype"),
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

/// Load a CLIP model from the whole bytes of a `.safetensors` file.
pub fn load_clip(bytes: &[u8], options: LoadOptions, device: &Device) -> Result<Clip, LoadError> {
    let mut loader = CheckpointLoader::new(options, device);
    loader.push(bytes)?;
    loader.finish()
}

/// Why reading a checkpoint from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Load a CLIP model from a reader (a file), a few MB at a time.
pub fn load_clip_from_reader(mut reader: impl Read, options: LoadOptions, device: &Device) -> Result<Clip, ReadError> {
    let mut loader = CheckpointLoader::new(options, device);
    let mut chunk = vec![0u8; 8 << 20];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => loader.push(&chunk[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(loader.finish()?)
}

/// The architecture and layout of a checkpoint from its first bytes (the
/// header is enough; `Truncated` asks for more).
pub fn inspect_config(prefix: &[u8]) -> Result<(ClipConfig, Layout), LoadError> {
    let Some(first) = prefix.get(..LENGTH_BYTES) else {
        return Err(LoadError::Truncated { received: prefix.len(), expected: None });
    };
    let end = LENGTH_BYTES + header_length(first.try_into().expect("8 bytes"))?;
    let json = prefix.get(LENGTH_BYTES..end).ok_or(LoadError::Truncated { received: prefix.len(), expected: None })?;
    let plan = plan(json)?;
    Ok((plan.config, plan.layout))
}

#[cfg(test)]
mod tests {
    use super::names::required_tensors;
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
