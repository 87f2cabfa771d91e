//! Architecture descriptions. [`ClipConfig::from_shapes`](crate::loader) fills
//! them from a checkpoint's tensor shapes.

/// The MLP activation. OpenAI CLIP and MetaCLIP "quickgelu" checkpoints use
/// QuickGELU (`x * sigmoid(1.702 x)`); OpenCLIP LAION checkpoints use exact GELU.
/// Safetensors files do not record it, so it is a load option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    QuickGelu,
    Gelu,
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
