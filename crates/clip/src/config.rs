//! Architecture descriptions. [`ClipConfig::from_shapes`](crate::loader) fills
//! them from a checkpoint's tensor shapes.

use burn::tensor::{Device, FloatDType};

/// The MLP activation. OpenAI CLIP and MetaCLIP "quickgelu" checkpoints use
/// QuickGELU (`x * sigmoid(1.702 x)`); OpenCLIP LAION checkpoints use exact GELU.
/// Safetensors files do not record it, so it is a load option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    QuickGelu,
    Gelu,
}

/// The float type the towers compute in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout: the default, held to the f32 reference at 1e-4.
    #[default]
    F32,
    /// What the official code runs on a GPU (`model.half()`): weights and
    /// activations in f16, with the matrix products accumulating in f32 and the
    /// layer norms and softmaxes computed in f32, as PyTorch's half kernels do.
    /// The towers still return f32. Only on a GPU whose adapter has `shader-f16`.
    F16,
}

impl Precision {
    /// `f32` or `f16`, as the CLI and the page spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }

    pub fn dtype(self) -> FloatDType {
        match self {
            Self::F32 => FloatDType::F32,
            Self::F16 => FloatDType::F16,
        }
    }

    /// Whether `device` can compute in this precision: f16 needs a GPU adapter
    /// with `shader-f16` (the CPU backend's kernels are f32).
    pub fn is_supported_on(self, device: &Device) -> bool {
        match self {
            Self::F32 => true,
            Self::F16 => !crate::host::is_host(device) && device.supports_dtype(FloatDType::F16),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch_size: usize,
    /// Side of the pre-training patch grid (14 for ViT-B/16 at 224 px).
    pub grid_size: usize,
    pub mlp_width: usize,
    /// Output dimension of the visual projection.
    pub embed_dim: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub context_length: usize,
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub mlp_width: usize,
    pub embed_dim: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClipConfig {
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub activation: Activation,
}

/// CLIP uses 64-wide attention heads in every released ViT.
pub const HEAD_DIM: usize = 64;

impl ClipConfig {
    fn vit(width: usize, layers: usize, patch: usize, image: usize, text_width: usize, embed: usize) -> Self {
        Self {
            vision: VisionConfig {
                width,
                layers,
                heads: width / HEAD_DIM,
                patch_size: patch,
                grid_size: image / patch,
                mlp_width: 4 * width,
                embed_dim: embed,
            },
            text: TextConfig {
                vocab_size: 49408,
                context_length: 77,
                width: text_width,
                layers: 12,
                heads: text_width / HEAD_DIM,
                mlp_width: 4 * text_width,
                embed_dim: embed,
            },
            activation: Activation::QuickGelu,
        }
    }

    /// OpenAI CLIP ViT-B/16 (the default model).
    pub fn vit_b16() -> Self {
        Self::vit(768, 12, 16, 224, 512, 512)
    }

    /// A short human-readable description, e.g. `ViT-B/16 (224 px), text 512x12`.
    pub fn describe(&self) -> String {
        let v = &self.vision;
        let size = match v.width {
            768 => "B",
            1024 => "L",
            1280 => "H",
            512 => "S",
            _ => "?",
        };
        format!(
            "ViT-{size}/{} ({} px, width {}, {} layers), text width {} x {} layers, embed {}",
            v.patch_size,
            v.grid_size * v.patch_size,
            v.width,
            v.layers,
            self.text.width,
            self.text.layers,
            v.embed_dim
        )
    }
}
