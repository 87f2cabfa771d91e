//! Loading CLIP from a `.safetensors` file, in either tensor-name layout,
//! streamed: [`CheckpointLoader`] takes the file in chunks as they arrive (a
//! download, a file read), checks the header against CLIP as soon as it is
//! complete, and converts and uploads each tensor the moment its last byte
//! arrives. Only the one tensor being received is held (decoded to f32 as its
//! bytes come in), so the file is never held whole in memory next to the model.
//!
//! One table of weights ([`weights::ClipWeights`]) serves both layouts; the architecture
//! is read from tensor shapes; every required tensor is checked for presence,
//! shape and dtype from the header, before any data, so a wrong file fails
//! early with the full list of what is wrong.

mod header;
mod weights;

use std::io::Read;

use burn::tensor::Device;
use safetensors::tensor::Dtype;

use crate::config::{Activation, ClipConfig, Precision};
use crate::Clip;
use header::{header_length, plan, Plan, LENGTH_BYTES};
use weights::{ClipWeights, Parts, WeightTree};

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
    /// The float type of the uploaded weights and of the computation.
    pub precision: Precision,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a readable safetensors file ({0}); is it of another format?")]
    NotSafetensors(String),
    #[error("the file ends after {received} bytes{}{}; is it truncated (an interrupted download)?", expected_len(.expected), inside(.tensor))]
    Truncated { received: usize, expected: Option<usize>, tensor: Option<String> },
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
    #[error("this device cannot compute in {}: it needs a GPU whose adapter has the shader-f16 feature", .0.name())]
    Precision(Precision),
}

fn inside(tensor: &Option<String>) -> String {
    tensor.as_ref().map(|name| format!(", before the end of tensor `{name}`")).unwrap_or_default()
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

// One per loader: boxing the receiver would save nothing.
#[allow(clippy::large_enum_variant)]
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
            gather(gathered, LENGTH_BYTES, &mut chunk);
            let Some(json_len) = header_length(gathered)? else {
                return Ok(());
            };
            if !gather(gathered, LENGTH_BYTES + json_len, &mut chunk) {
                return Ok(());
            }
            let plan = plan(&gathered[LENGTH_BYTES..])?;
            let precision = self.options.precision;
            if !precision.is_supported_on(&self.device) {
                return Err(LoadError::Precision(precision));
            }
            let parts = Parts::new(plan.layout, &self.device, precision);
            self.stage = Stage::Tensors(Receiver { plan, next: 0, offset: 0, partial: Vec::new(), carry: Vec::new(), parts });
        }
        match &mut self.stage {
            Stage::Tensors(receiver) => receiver.receive(chunk),
            _ => Ok(()),
        }
    }

    /// Build the model from everything pushed; fails if the file stopped short.
    pub fn finish(self) -> Result<Clip, LoadError> {
        let received = self.received;
        let mut receiver = match self.stage {
            Stage::Header(_) => return Err(LoadError::Truncated { received, expected: None, tensor: None }),
            Stage::Failed(reason) => return Err(LoadError::AlreadyFailed(reason)),
            Stage::Tensors(receiver) => receiver,
        };
        receiver.receive(&[])?; // tensors of no bytes at the end
        if receiver.next < receiver.plan.tensors.len() {
            let tensor = receiver.plan.tensors.get(receiver.next).map(|t| t.name.clone());
            return Err(LoadError::Truncated { received, expected: Some(receiver.plan.file_len()), tensor });
        }
        let mut config = receiver.plan.config.clone();
        config.activation = self.options.activation;
        let layout = receiver.plan.layout;
        let ClipWeights { vision, text } = ClipWeights::new(layout, &config);
        let parts = &mut receiver.parts;
        Ok(Clip { vision: vision.build(parts)?, text: text.build(parts)?, config, layout })
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
    fn receive(&mut self, mut chunk: &[u8]) -> Result<(), LoadError> {
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
            if let Some(role) = tensor.role {
                if have == 0 {
                    let count: usize = tensor.shape.iter().product();
                    self.partial = Vec::new();
                    self.partial.try_reserve_exact(count).map_err(|_| LoadError::OutOfMemory((count * 4) >> 20))?;
                }
                decode(&tensor.name, tensor.dtype, bytes, &mut self.carry, &mut self.partial)?;
                if complete {
                    self.parts.insert(tensor.name.clone(), &tensor.shape, role, std::mem::take(&mut self.partial));
                }
            } // else: not used by the model, skipped as it streams past
            if !complete {
                return Ok(());
            }
            self.next += 1;
        }
    }
}

/// Append the values of `bytes` (little-endian `dtype`) to `out` as f32; the
/// bytes of an element cut at the end of a chunk wait in `carry`.
fn decode(name: &str, dtype: Dtype, mut bytes: &[u8], carry: &mut Vec<u8>, out: &mut Vec<f32>) -> Result<(), LoadError> {
    let Some(float) = Float::of(dtype) else {
        return Err(LoadError::DType { name: name.to_string(), dtype: format!("{dtype:?}") });
    };
    let width = float.width();
    if !carry.is_empty() {
        if !gather(carry, width, &mut bytes) {
            return Ok(());
        }
        append_values(float, carry, out);
        carry.clear();
    }
    let whole = bytes.len() - bytes.len() % width;
    append_values(float, &bytes[..whole], out);
    carry.extend_from_slice(&bytes[whole..]);
    Ok(())
}

/// The weight dtypes the loader reads.
#[derive(Clone, Copy)]
enum Float {
    F32,
    F16,
    BF16,
}

impl Float {
    fn of(dtype: Dtype) -> Option<Self> {
        match dtype {
            Dtype::F32 => Some(Self::F32),
            Dtype::F16 => Some(Self::F16),
            Dtype::BF16 => Some(Self::BF16),
            _ => None,
        }
    }

    fn width(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }
}

/// `bytes` holds whole elements of `float`.
fn append_values(float: Float, bytes: &[u8], out: &mut Vec<f32>) {
    match float {
        Float::F32 => out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        Float::F16 => out.extend(bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())),
        Float::BF16 => out.extend(bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())),
    }
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
    let truncated = || LoadError::Truncated { received: prefix.len(), expected: None, tensor: None };
    let end = LENGTH_BYTES + header_length(prefix)?.ok_or_else(truncated)?;
    let json = prefix.get(LENGTH_BYTES..end).ok_or_else(truncated)?;
    let plan = plan(json)?;
    Ok((plan.config, plan.layout))
}
