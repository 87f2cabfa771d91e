//! The CLIP ViT image tower, with dense per-patch output.
//! Reference: `VisionTransformer.forward` in mc-lan/ClearCLIP `open_clip/transformer.py`.

use std::cell::OnceCell;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};

use crate::config::VisionConfig;
use crate::dense::LastBlock;
use crate::gpu_matmul::{matmul, ProductKind};
use crate::InputError;
use crate::nn::{LayerNorm, ResidualAttentionBlock};
use crate::pos_embed::resize_patch_positions;

/// The output of the first `L-1` blocks for one input, kept so that a new
/// [`LastBlock`] re-runs only the last block.
///
/// Made only by [`VisionTransformer::encode_to_last_block`], so its tokens
/// always match its patch grid.
#[derive(Debug, Clone)]
pub struct LastBlockInput {
    /// `[batch, 1 + grid_h * grid_w, width]`.
    pub(crate) tokens: Tensor<3>,
    /// `(grid_h, grid_w)`.
    pub(crate) grid: (usize, usize),
    /// The last block's fused q, k, v projection of `ln_1(tokens)`, `[batch,
    /// 1 + grid_h * grid_w, 3 * width]`. Every [`LastBlock`] starts from it
    /// (they differ in what they attend with and what follows), so the first
    /// run of the last block makes it and the re-runs reuse it: the largest
    /// of the last block's products.
    qkv: OnceCell<Tensor<3>>,
}

impl LastBlockInput {
    /// `(grid_h, grid_w)`, the patch grid of the input.
    pub fn grid(&self) -> (usize, usize) {
        self.grid
    }
}

#[derive(Debug, Clone)]
pub struct VisionTransformer {
    pub config: VisionConfig,
    /// Patch embedding (a stride-`patch` convolution without bias) as a matrix
    /// `[3 * patch * patch, width]`, input ordered (channel, y, x).
    pub patch_embedding: Tensor<2>,
    /// `[width]`.
    pub class_embedding: Tensor<1>,
    /// Class token position, `[width]`.
    pub class_position: Tensor<1>,
    /// Pre-training patch positions `[grid * grid, width]`, kept on the CPU
    /// because every new crop size resizes them there.
    pub patch_positions: Vec<f32>,
    pub ln_pre: LayerNorm,
    /// The first `L-1` blocks, run as CLIP runs them.
    pub blocks: Vec<ResidualAttentionBlock>,
    /// The last block, run as a [`LastBlock`] describes.
    pub last_block: ResidualAttentionBlock,
    pub ln_post: LayerNorm,
    /// `[width, embed_dim]`.
    pub projection: Tensor<2>,
}

impl VisionTransformer {
    pub fn device(&self) -> Device {
        self.projection.device()
    }

    /// The float type the tower computes in (its weights').
    fn dtype(&self) -> FloatDType {
        self.projection.dtype().into()
    }

    /// Patch and position embedding, `ln_pre`, and all blocks but the last:
    /// everything a change of [`LastBlock`] does not affect, so callers can
    /// keep it and re-run only [`Self::dense_from_last_block`].
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]`, normalised, both sides multiples of the patch
    /// - returns tokens `[batch, 1 + grid_h * grid_w, width]` (class token first)
    pub fn encode_to_last_block(&self, pixels: Tensor<4>) -> Result<LastBlockInput, InputError> {
        let [_, _, height, width] = pixels.dims();
        let tokens = self.encode_through(pixels, self.blocks.len())?;
        let patch = self.config.patch_size;
        Ok(LastBlockInput { tokens, grid: (height / patch, width / patch), qkv: OnceCell::new() })
    }

    /// The embedding and the first block only: not an output of the model,
    /// but every kernel that the first `L-1` blocks (which all run the same
    /// ones) and the last block's attention run at this batch size, for a
    /// small part of the work; for a GPU warm-up that compiles what a new
    /// batch size needs.
    ///
    /// # Shapes
    /// - `pixels`: as [`Self::encode_to_last_block`] -> tokens `[batch, 1 + patches, width]`
    pub fn warm_up_first_block(&self, pixels: Tensor<4>) -> Result<Tensor<3>, InputError> {
        self.encode_through(pixels, self.blocks.len().min(1))
    }

    /// The embedding and the first `blocks` blocks.
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]` -> tokens `[batch, 1 + patches, width]`
    fn encode_through(&self, pixels: Tensor<4>, blocks: usize) -> Result<Tensor<3>, InputError> {
        let [_, _, height, width] = pixels.dims();
        let patch = self.config.patch_size;
        if height % patch != 0 || width % patch != 0 || height == 0 || width == 0 {
            return Err(InputError::NotPatchMultiple { width, height, patch });
        }
        let x = self.embed(pixels)?;
        Ok(self.blocks[..blocks].iter().fold(x, |x, block| block.forward(x, None)))
    }

    /// Run the last block as `last_block` says, then `ln_post` and the
    /// projection on every patch token (class token dropped). Not normalised;
    /// f32 whatever the model's precision.
    ///
    /// # Shapes
    /// - `input.tokens`: `[batch, 1 + patches, width]` from [`Self::encode_to_last_block`]
    /// - returns `[batch, patches, embed_dim]`
    pub fn dense_from_last_block(&self, input: &LastBlockInput, last_block: &LastBlock) -> Tensor<3> {
        let block = &self.last_block;
        let qkv = input.qkv.get_or_init(|| block.attn.qkv.forward(block.ln_1.forward(input.tokens.clone())));
        let y = self.ln_post.forward(last_block.forward(block, input.tokens.clone(), qkv.clone(), input.grid));
        let [batch, tokens, width] = y.dims();
        let patches = y.narrow(1, 1, tokens - 1).reshape([batch * (tokens - 1), width]);
        let embed = self.projection.dims()[1];
        matmul(ProductKind::Projection, patches, self.projection.clone()).reshape([batch, tokens - 1, embed]).cast(FloatDType::F32)
    }

    /// Dense patch features: [`Self::encode_to_last_block`] then [`Self::dense_from_last_block`].
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]` -> `[batch, grid_h * grid_w, embed_dim]`
    pub fn dense_features(&self, pixels: Tensor<4>, last_block: &LastBlock) -> Result<Tensor<3>, InputError> {
        Ok(self.dense_from_last_block(&self.encode_to_last_block(pixels)?, last_block))
    }

    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]`, sides multiples of the patch -> `[batch, 1 + patches, width]`
    fn embed(&self, pixels: Tensor<4>) -> Result<Tensor<3>, InputError> {
        let [batch, channels, height, width_px] = pixels.dims();
        let patch = self.config.patch_size;
        let (grid_h, grid_w) = (height / patch, width_px / patch);
        let width = self.config.width;
        let dtype = self.dtype();
        let patches = pixels
            .cast(dtype)
            .reshape([batch, channels, grid_h, patch, grid_w, patch])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch * grid_h * grid_w, channels * patch * patch]);
        let tokens = matmul(ProductKind::Projection, patches, self.patch_embedding.clone()).reshape([batch, grid_h * grid_w, width]);

        let n = self.config.grid_size;
        let positions = resize_patch_positions(&self.patch_positions, n, width, patch, height, width_px)?;
        let device = self.device();
        let positions: Tensor<2> = Tensor::from_data(TensorData::new(positions, [grid_h * grid_w, width]), (&device, dtype.into()));
        let tokens = tokens + positions.unsqueeze::<3>();

        let cls = (self.class_embedding.clone() + self.class_position.clone())
            .reshape([1, 1, width])
            .repeat_dim(0, batch);
        Ok(self.ln_pre.forward(Tensor::cat(vec![cls, tokens], 1)))
    }
}
