//! The CLIP ViT image tower, with dense per-patch output.
//! Reference: `VisionTransformer.forward` in mc-lan/ClearCLIP `open_clip/transformer.py`.

use burn::tensor::{Device, Tensor, TensorData};

use crate::config::VisionConfig;
use crate::dense::LastBlock;
use crate::nn::{LayerNorm, ResidualAttentionBlock};
use crate::pos_embed::resize_patch_positions;

/// The output of the first `L-1` blocks for one input, kept so that a new
/// [`LastBlock`] re-runs only the last block.
#[derive(Debug, Clone)]
pub struct LastBlockInput {
    /// `[batch, 1 + grid_h * grid_w, width]`.
    pub tokens: Tensor<3>,
    /// `(grid_h, grid_w)`.
    pub grid: (usize, usize),
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
    pub blocks: Vec<ResidualAttentionBlock>,
    pub ln_post: LayerNorm,
    /// `[width, embed_dim]`.
    pub projection: Tensor<2>,
}

impl VisionTransformer {
    pub fn device(&self) -> Device {
        self.projection.device()
    }

    /// Patch and position embedding, `ln_pre`, and all blocks but the last:
    /// everything a change of [`LastBlock`] does not affect, so callers can
    /// keep it and re-run only [`Self::dense_from_last_block`].
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]`, normalised, both sides multiples of the patch
    /// - returns tokens `[batch, 1 + grid_h * grid_w, width]` (class token first)
    pub fn encode_to_last_block(&self, pixels: Tensor<4>) -> LastBlockInput {
        let [_, _, height, width] = pixels.dims();
        let patch = self.config.patch_size;
        let x = self.embed(pixels);
        let (_last, first) = self.blocks.split_last().expect("a ViT has at least one block");
        let tokens = first.iter().fold(x, |x, block| block.forward(x, None));
        LastBlockInput { tokens, grid: (height / patch, width / patch) }
    }

    /// Run the last block as `last_block` says, then `ln_post` and the
    /// projection on every patch token (class token dropped). Not normalised.
    ///
    /// # Shapes
    /// - `input.tokens`: `[batch, 1 + patches, width]` from [`Self::encode_to_last_block`]
    /// - returns `[batch, patches, embed_dim]`
    pub fn dense_from_last_block(&self, input: &LastBlockInput, last_block: &LastBlock) -> Tensor<3> {
        let block = self.blocks.last().expect("a ViT has at least one block");
        let y = self.ln_post.forward(last_block.forward(block, input.tokens.clone(), input.grid));
        let [batch, tokens, width] = y.dims();
        let patches = y.narrow(1, 1, tokens - 1).reshape([batch * (tokens - 1), width]);
        let embed = self.projection.dims()[1];
        patches.matmul(self.projection.clone()).reshape([batch, tokens - 1, embed])
    }

    /// Dense patch features: [`Self::encode_to_last_block`] then [`Self::dense_from_last_block`].
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]` -> `[batch, grid_h * grid_w, embed_dim]`
    pub fn dense_features(&self, pixels: Tensor<4>, last_block: &LastBlock) -> Tensor<3> {
        self.dense_from_last_block(&self.encode_to_last_block(pixels), last_block)
    }

    /// Image embedding as CLIP computes it: all blocks, `ln_post` on the class token, projection.
    ///
    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]` -> `[batch, embed_dim]`
    pub fn image_embedding(&self, pixels: Tensor<4>) -> Tensor<2> {
        let x = self.blocks.iter().fold(self.embed(pixels), |x, block| block.forward(x, None));
        let [batch, _, width] = x.dims();
        let cls = self.ln_post.forward(x.narrow(1, 0, 1).reshape([batch, width]));
        cls.matmul(self.projection.clone())
    }

    /// # Shapes
    /// - `pixels`: `[batch, 3, height, width]` -> `[batch, 1 + patches, width]`
    fn embed(&self, pixels: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width_px] = pixels.dims();
        let patch = self.config.patch_size;
        assert!(
            height % patch == 0 && width_px % patch == 0 && height > 0 && width_px > 0,
            "input {height}x{width_px} is not a positive multiple of the patch size {patch}"
        );
        let (grid_h, grid_w) = (height / patch, width_px / patch);
        let width = self.config.width;
        let patches = pixels
            .reshape([batch, channels, grid_h, patch, grid_w, patch])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([batch * grid_h * grid_w, channels * patch * patch]);
        let tokens = patches
            .matmul(self.patch_embedding.clone())
            .reshape([batch, grid_h * grid_w, width]);

        let n = self.config.grid_size;
        let positions = resize_patch_positions(&self.patch_positions, n, width, patch, height, width_px);
        let device = self.device();
        let positions: Tensor<2> = Tensor::from_data(TensorData::new(positions, [grid_h * grid_w, width]), &device);
        let tokens = tokens + positions.unsqueeze::<3>();

        let cls = (self.class_embedding.clone() + self.class_position.clone())
            .reshape([1, 1, width])
            .repeat_dim(0, batch);
        self.ln_pre.forward(Tensor::cat(vec![cls, tokens], 1))
    }
}
