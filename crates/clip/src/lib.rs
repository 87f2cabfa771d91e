//! CLIP ViT image and text towers in burn, with the dense (per-patch) features
//! of ClearCLIP (Lan et al., ECCV 2024) and the related training-free methods.
//!
//! The crate is backend-generic and knows nothing of images on disk, browsers
//! or segmentation: it loads a checkpoint from safetensors bytes, encodes token
//! ids and image tensors, and returns tensors.
//!
//! - [`CheckpointLoader`]: a `.safetensors` file (Hugging Face or
//!   OpenAI/open_clip layout, f32/f16/bf16) pushed chunk by chunk as it
//!   arrives, to a [`Clip`] model; the header is checked first, the
//!   architecture read from tensor shapes, and each tensor uploaded as soon as
//!   it is complete ([`load_clip`] and [`load_clip_from_reader`] wrap it).
//! - [`ClipTokenizer`]: the CLIP BPE through the `tokenizers` crate.
//! - [`LastBlock`] / [`DenseMode`]: how the last vision block is run for dense
//!   features (plain CLIP, MaskCLIP, SCLIP, ClearCLIP, NACLIP, and the knobs between).
//!
//! Adding an attention mode is a variant of [`AttentionKind`] (its name,
//! title and the line of [`LastBlock`]'s forward that computes it), or a
//! [`DenseMode`] preset of existing knobs. Adding a tensor is an entry in the
//! weights table (`loader/weights.rs`), which both checks the header and
//! builds the layer from it.
//!
//! # Example
//!
//! Load a checkpoint (here the tiny seeded test model), encode a prompt, and
//! take ClearCLIP's dense features of an image tensor:
//!
//! ```
//! use burn::tensor::{Device, Tensor, TensorData};
//! use clearclip_model::{load_clip, ClipTokenizer, DenseMode, LoadOptions};
//!
//! let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
//! let device = Device::flex();
//! let weights = std::fs::read(format!("{root}/fixtures/tiny_openclip_bf16.safetensors"))?;
//! let clip = load_clip(&weights, LoadOptions::default(), &device)?;
//! let tokenizer_json = std::fs::read(format!("{root}/assets/tokenizer.json"))?;
//! let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json, clip.config.text.context_length)?;
//!
//! let text = clip.text.encode(&tokenizer.encode_batch(&["a photo of a cat.", "a photo of grass."])?)?;
//! assert_eq!(text.dims(), [2, clip.config.text.embed_dim]);
//!
//! // A normalised 64x96 image: ClearCLIP's features of each 16x16 patch.
//! let pixels: Tensor<4> = Tensor::from_data(TensorData::new(vec![0.5f32; 3 * 64 * 96], [1, 3, 64, 96]), &device);
//! let dense = clip.vision.dense_features(pixels, &DenseMode::ClearClip.last_block())?;
//! assert_eq!(dense.dims(), [1, 4 * 6, clip.config.vision.embed_dim]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod config;
mod dense;
pub mod gpu_attention;
pub mod gpu_matmul;
pub mod gpu_layers;
#[cfg(all(feature = "gpu-routines", not(feature = "fusion")))]
mod tiled_matmul;
pub mod host;
pub mod kernel_times;
mod loader;
mod named;
mod routine_choice;
mod nn;
mod pos_embed;
mod text;
mod tokenizer;
mod vision;

pub use config::{Activation, ClipConfig, Precision, TextConfig, VisionConfig};
pub use dense::{neighbourhood_bias, AttentionKind, DenseMode, LastBlock, LastBlockError, Residual, NACLIP_GAUSSIAN_STD};
pub use loader::{inspect_config, load_clip, load_clip_from_reader, CheckpointLoader, Layout, LoadError, LoadOptions, ReadError};
pub use pos_embed::{bicubic_scale_factor_weights, resize_patch_positions};
pub use text::TextTransformer;
pub use tokenizer::{ClipTokenizer, TokenBatch, TokenizerError};
pub use vision::{LastBlockInput, VisionTransformer};

/// A CLIP model: image tower and text tower. (The checkpoint's learned
/// logit scale is not read: ClearCLIP segments with a fixed 50.)
#[derive(Debug, Clone)]
pub struct Clip {
    pub config: ClipConfig,
    pub vision: VisionTransformer,
    pub text: TextTransformer,
    /// Which tensor-name layout the weights were read from.
    pub layout: Layout,
}

/// An input the towers cannot encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the image input is {width}x{height}; both sides must be positive multiples of the patch size {patch}")]
    NotPatchMultiple { width: usize, height: usize, patch: usize },
    #[error("the {n}x{n} position grid cannot be resized for a {width}x{height} input of {patch}-pixel patches")]
    PositionGrid { n: usize, height: usize, width: usize, patch: usize },
    #[error("a token batch of {rows} rows of {len} does not fit the text context of {context} tokens")]
    TokenBatch { rows: usize, len: usize, context: usize },
}
