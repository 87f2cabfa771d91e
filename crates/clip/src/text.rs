//! The CLIP text tower. Reference: `CLIP.encode_text` in open_clip
//! (`open_clip/model.py`): token + position embedding, causal transformer,
//! `ln_final`, features at the end-of-text token, `text_projection`.

use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};

use crate::config::TextConfig;
use crate::gpu_matmul::{matmul, ProductKind};
use crate::host::is_host;
use crate::nn::{CausalMask, LayerNorm, ResidualAttentionBlock};
use crate::tokenizer::TokenBatch;
use crate::InputError;

/// A GPU pads token batches to a multiple of this many tokens (see
/// [`TextTransformer::encode`]): 8 keeps every product's rows
/// (`prompts x tokens`, prompts a multiple of 80) a multiple of 128, and the
/// attention's rows vectorised by 4.
pub const GPU_TOKEN_MULTIPLE: usize = 8;

/// A GPU projects the end-of-text features in blocks of this many rows: the
/// prompts (a multiple of 80) would otherwise give the product a different
/// bounds check and order of work groups for every few names.
pub const GPU_POOLED_MULTIPLE: usize = 512;

#[derive(Debug, Clone)]
pub struct TextTransformer {
    pub config: TextConfig,
    /// `[vocab, width]`.
    pub token_embedding: Tensor<2>,
    /// `[context, width]`.
    pub position_embedding: Tensor<2>,
    pub blocks: Vec<ResidualAttentionBlock>,
    pub ln_final: LayerNorm,
    /// `[width, embed_dim]`.
    pub projection: Tensor<2>,
}

impl TextTransformer {
    pub fn device(&self) -> Device {
        self.projection.device()
    }

    /// Text embeddings (not normalised, f32 at either precision) of a batch of token sequences.
    ///
    /// The batch needs to be only as long as its longest sequence: with the
    /// causal mask, later (padding) tokens cannot change the end-of-text feature.
    /// On a GPU it is padded further, to a multiple of [`GPU_TOKEN_MULTIPLE`]
    /// (or the context length), so that the kernels compiled for one batch
    /// serve every other: a GPU compiles a kernel for each vector width and
    /// bounds check, which follow the sequence length's divisibility.
    ///
    /// # Shapes
    /// - returns `[batch.rows, embed_dim]`
    pub fn encode(&self, batch: &TokenBatch) -> Result<Tensor<2>, InputError> {
        let device = self.device();
        let (rows, len) = (batch.rows(), batch.len);
        let context = self.config.context_length;
        if len > context || batch.ids.len() != rows * len || batch.eot.iter().any(|&e| e >= len) {
            return Err(InputError::TokenBatch { rows, len, context });
        }
        let on_gpu = !is_host(&device);
        let padded;
        let batch = match on_gpu {
            false => batch,
            true => {
                padded = batch.padded_to(len.next_multiple_of(GPU_TOKEN_MULTIPLE).min(context));
                &padded
            }
        };
        let len = batch.len;
        let width = self.config.width;
        let ids: Tensor<1, Int> = Tensor::from_data(TensorData::new(batch.ids.clone(), [rows * len]), &device);
        let x = self.token_embedding.clone().select(0, ids).reshape([rows, len, width]);
        let x = x + self.position_embedding.clone().narrow(0, 0, len).unsqueeze::<3>();
        let future = CausalMask::new(len, &device);
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x, Some(&future)));
        let x = self.ln_final.forward(x).reshape([rows * len, width]);
        let mut eot: Vec<i64> = batch.eot.iter().enumerate().map(|(row, &pos)| (row * len + pos) as i64).collect();
        // On a GPU the projection takes a multiple of GPU_POOLED_MULTIPLE rows
        // (the first row again), for the reason of the padding above.
        if let (true, Some(&first)) = (on_gpu, eot.first()) {
            eot.resize(rows.next_multiple_of(GPU_POOLED_MULTIPLE), first);
        }
        let pooled = eot.len();
        let eot: Tensor<1, Int> = Tensor::from_data(TensorData::new(eot, [pooled]), &device);
        Ok(matmul(ProductKind::Projection, x.select(0, eot), self.projection.clone()).narrow(0, 0, rows).cast(FloatDType::F32))
    }
}
