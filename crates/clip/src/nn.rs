//! The few layers CLIP needs, as plain tensors (inference only).

use std::cell::OnceCell;

use burn::tensor::{activation, Bool, Device, FloatDType, Tensor, TensorData};

use crate::config::Activation;
use crate::gpu_attention;
use crate::gpu_layers;
use crate::gpu_matmul::{matmul, ProductKind};
use crate::host::{self, AttentionSpec, HostValues, Part};

/// `y = x W + b`, with `W` stored input-major (`[in, out]`).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor<2>,
    pub bias: Option<Tensor<1>>,
}

impl Linear {
    /// # Shapes
    /// - `x`: `[batch, tokens, in]` -> `[batch, tokens, out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if let Some(y) = self.forward_on_host(&x, None) {
            return y;
        }
        let [batch, tokens, _] = x.dims();
        let out = self.weight.dims()[1];
        let y = self.product(x);
        let y = match &self.bias {
            Some(bias) => y + bias.clone().unsqueeze::<2>(),
            None => y,
        };
        y.reshape([batch, tokens, out])
    }

    /// `x W`, the tokens of every batch as rows.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, in]` -> `[batch * tokens, out]`
    fn product(&self, x: Tensor<3>) -> Tensor<2> {
        let [batch, tokens, width] = x.dims();
        matmul(ProductKind::Projection, x.reshape([batch * tokens, width]), self.weight.clone())
    }

    /// `residual + x W + b`. On the CPU backend the residual is where the
    /// product is accumulated ([`host::linear`]), so the sum costs no pass.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, in]`, `residual`: `[batch, tokens, out]` -> `[batch, tokens, out]`
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        if let Some(y) = self.forward_on_host(&x, Some(&residual)) {
            return y;
        }
        // On a GPU the bias and the residual in one kernel where it runs.
        if let Some(bias) = self.bias.as_ref().filter(|_| !host::is_host(&x.device())) {
            let [batch, tokens, out] = residual.dims();
            let y = self.product(x);
            let rows = residual.clone().reshape([batch * tokens, out]);
            if let Some(sum) = gpu_layers::bias_residual(&y, bias, &rows) {
                return sum.reshape([batch, tokens, out]);
            }
            return residual + (y + bias.clone().unsqueeze::<2>()).reshape([batch, tokens, out]);
        }
        residual + self.forward(x)
    }

    /// [`host::linear`] when every operand is contiguous f32 data of burn's
    /// CPU backend and there is a bias, else `None`.
    fn forward_on_host(&self, x: &Tensor<3>, residual: Option<&Tensor<3>>) -> Option<Tensor<3>> {
        let device = x.device();
        if !host::is_host(&device) {
            return None;
        }
        let [batch, tokens, _] = x.dims();
        let out = self.weight.dims()[1];
        let (values, weight, bias) = (HostValues::of(x)?, HostValues::of(&self.weight)?, HostValues::of(self.bias.as_ref()?)?);
        let residual = match residual {
            Some(residual) => Some(HostValues::of(residual)?),
            None => None,
        };
        let y = host::linear(&values, &weight, &bias, residual.as_deref());
        Some(Tensor::from_data(TensorData::new(y, [batch, tokens, out]), &device))
    }
}

/// Layer normalisation over the last dimension (eps 1e-5, as CLIP).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub gamma: Tensor<1>,
    pub beta: Tensor<1>,
}

pub const LAYER_NORM_EPS: f64 = 1e-5;

impl LayerNorm {
    /// Computed in f32 (`gamma` and `beta` are f32) and returned in `x`'s
    /// precision, as open_clip's `LayerNorm` and PyTorch's half kernels do.
    ///
    /// # Shapes
    /// - `x`: `[..., width]` -> same
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if host::is_host(&x.device()) {
            if let (Some(values), Some(gamma), Some(beta)) = (HostValues::of(&x), HostValues::of(&self.gamma), HostValues::of(&self.beta)) {
                let y = host::layer_norm(&values, &gamma, &beta, LAYER_NORM_EPS as f32);
                return Tensor::from_data(TensorData::new(y, x.shape()), &x.device());
            }
        }
        if let Some(y) = gpu_layers::layer_norm(&x, &self.gamma, &self.beta, LAYER_NORM_EPS as f32) {
            return y;
        }
        // Else each op is a kernel of its own on a GPU: the variance as the
        // mean of the centred squares takes 9 (`var_mean_bias` and a second
        // centring took 11).
        let dtype = x.dtype();
        let x = x.cast(FloatDType::F32);
        let centred = x.clone() - x.mean_dim(D - 1);
        let var = (centred.clone() * centred.clone()).mean_dim(D - 1);
        let x = centred / (var + LAYER_NORM_EPS).sqrt();
        let y = x * self.gamma.clone().unsqueeze::<D>() + self.beta.clone().unsqueeze::<D>();
        y.cast(FloatDType::from(dtype))
    }
}

/// `c_proj(act(c_fc(x)))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: Activation,
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` -> same
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.fc2.forward(self.hidden(x))
    }

    /// `x + mlp(x')`, see [`Linear::forward_add`].
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, tokens, width]` -> same
    pub fn forward_add(&self, x: Tensor<3>, residual: Tensor<3>) -> Tensor<3> {
        self.fc2.forward_add(self.hidden(x), residual)
    }

    /// `act(c_fc(x))`.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` -> `[batch, tokens, hidden]`
    fn hidden(&self, x: Tensor<3>) -> Tensor<3> {
        let on_host = host::is_host(&x.device());
        match (self.activation, &self.fc1.bias) {
            // On a GPU the bias and QuickGELU as one kernel where it runs.
            (Activation::QuickGelu, Some(bias)) if !on_host => {
                let [batch, tokens, _] = x.dims();
                let h = self.fc1.product(x);
                let h = gpu_layers::bias_quick_gelu(&h, bias).unwrap_or_else(|| quick_gelu(h + bias.clone().unsqueeze::<2>()));
                h.reshape([batch, tokens, bias.dims()[0]])
            }
            // open_clip/transformer.py QuickGELU: x * sigmoid(1.702 * x)
            (Activation::QuickGelu, _) if on_host => host::quick_gelu_tensor(self.fc1.forward(x)),
            (Activation::QuickGelu, _) => quick_gelu(self.fc1.forward(x)),
            (Activation::Gelu, _) => activation::gelu(self.fc1.forward(x)),
        }
    }
}

/// QuickGELU, `x * sigmoid(1.702 x)`, as `x / (1 + e^(-1.702 x))` in f32:
/// 4 kernels on a GPU where burn's `sigmoid` (`exp(-log(1 + exp(-x)))`) and
/// the products around it take 8. For `x` below about -52 the exponential is
/// infinite and the quotient -0, the limit.
///
/// # Shapes
/// - `x`: any -> same
fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let dtype = x.dtype();
    let x = x.cast(FloatDType::F32);
    let y = x.clone() / ((x * -1.702).exp() + 1.0);
    y.cast(FloatDType::from(dtype))
}

/// Multi-head attention weights with a fused q, k, v projection
/// (`in_proj` of `torch.nn.MultiheadAttention`: q, k, v thirds in that order).
#[derive(Debug, Clone)]
pub struct Attention {
    /// `[width, 3 * width]`.
    pub qkv: Linear,
    pub out: Linear,
    pub heads: usize,
}

/// Per-head queries, keys and values.
pub struct HeadProjections {
    /// Each `[batch, heads, tokens, head_dim]`.
    pub q: Tensor<4>,
    pub k: Tensor<4>,
    pub v: Tensor<4>,
}

impl Attention {
    fn head_dim(&self) -> usize {
        self.out.weight.dims()[0] / self.heads
    }

    /// `head_dim^-0.5`, the scale of every attention kind in the reference.
    pub fn scale(&self) -> f64 {
        (self.head_dim() as f64).powf(-0.5)
    }

    /// # Shapes
    /// - `x`: `[batch, tokens, width]` -> q, k, v each `[batch, heads, tokens, head_dim]`
    pub fn project(&self, x: Tensor<3>) -> HeadProjections {
        // On a GPU the bias and the split as one kernel where it runs.
        if let Some(bias) = self.qkv.bias.as_ref().filter(|_| !host::is_host(&x.device())) {
            let [batch, tokens, _] = x.dims();
            let product = self.qkv.product(x).reshape([batch, tokens, bias.dims()[0]]);
            if let Some([q, k, v]) = gpu_layers::split_heads(&product, Some(bias), self.heads) {
                return HeadProjections { q, k, v };
            }
            return self.head_views(product + bias.clone().unsqueeze::<3>());
        }
        self.split_heads(self.qkv.forward(x))
    }

    /// The heads of a fused projection (the output of [`Self::qkv`]): on a
    /// GPU stored apart by one kernel where it runs
    /// ([`gpu_layers::split_heads`]), else views of `qkv`.
    ///
    /// # Shapes
    /// - `qkv`: `[batch, tokens, 3 * width]` -> q, k, v each `[batch, heads, tokens, head_dim]`
    pub fn split_heads(&self, qkv: Tensor<3>) -> HeadProjections {
        match gpu_layers::split_heads(&qkv, None, self.heads) {
            Some([q, k, v]) => HeadProjections { q, k, v },
            None => self.head_views(qkv),
        }
    }

    /// q, k and v as views of the fused projection's thirds.
    ///
    /// # Shapes
    /// - `qkv`: `[batch, tokens, 3 * width]` -> q, k, v each `[batch, heads, tokens, head_dim]`
    fn head_views(&self, qkv: Tensor<3>) -> HeadProjections {
        let [batch, tokens, width3] = qkv.dims();
        let width = width3 / 3;
        let split = |i: usize| {
            qkv.clone()
                .narrow(2, i * width, width)
                .reshape([batch, tokens, self.heads, self.head_dim()])
                .swap_dims(1, 2)
        };
        HeadProjections { q: split(0), k: split(1), v: split(2) }
    }

    /// Standard scaled dot-product attention, `softmax(q k^T / sqrt(d)) v`;
    /// causal for the text tower, which passes a [`CausalMask`] (one per
    /// batch) as `future`.
    ///
    /// On the CPU backend [`host::attention`] (a vectorised softmax between two
    /// `gemm` calls per head); on a GPU [`attention_weights`] then the value
    /// product (the kernels burn's attention op runs without autotune, but
    /// with the softmax in f32 at either precision), or cubek's flash
    /// attention where [`gpu_attention`] chose it.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` -> same
    pub fn forward(&self, x: Tensor<3>, future: Option<&CausalMask>) -> Tensor<3> {
        self.out.forward(self.attend(x, future))
    }

    /// `residual + attn(x)`, see [`Linear::forward_add`].
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, tokens, width]` -> same
    pub fn forward_add(&self, x: Tensor<3>, future: Option<&CausalMask>, residual: Tensor<3>) -> Tensor<3> {
        self.out.forward_add(self.attend(x, future), residual)
    }

    /// [`Self::forward`] before the output projection, heads merged.
    ///
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` -> same
    fn attend(&self, x: Tensor<3>, future: Option<&CausalMask>) -> Tensor<3> {
        if host::is_host(&x.device()) {
            let causal = future.is_some();
            let spec = AttentionSpec { scores: &[(Part::Query, Part::Key)], scale: self.scale() as f32, bias: None, causal };
            return host::attention_tensor(self.qkv.forward(x), self.heads, spec);
        }
        let HeadProjections { q, k, v } = self.project(x);
        if let Some(heads) = gpu_attention::flash(&q, &k, &v, future.is_some()) {
            return merge_heads(heads);
        }
        let weights = attention_weights(q, k, self.scale(), None, future);
        value_product(weights, v)
    }
}

/// `weights @ v`, the heads side by side in each token's row: on a GPU
/// written so by the product where it can ([`gpu_layers::value_product_merged`]),
/// else the product then [`merge_heads`].
///
/// # Shapes
/// - `weights`: `[batch, heads, tokens, keys]`, `v`: `[batch, heads, keys, head_dim]`
/// - returns `[batch, tokens, heads * head_dim]`
pub(crate) fn value_product(weights: Tensor<4>, v: Tensor<4>) -> Tensor<3> {
    gpu_layers::value_product_merged(&weights, &v).unwrap_or_else(|| merge_heads(matmul(ProductKind::Attention, weights, v)))
}

/// The heads side by side in each token's row.
///
/// # Shapes
/// - `heads`: `[batch, heads, tokens, head_dim]` -> `[batch, tokens, heads * head_dim]`
pub(crate) fn merge_heads(heads: Tensor<4>) -> Tensor<3> {
    let [batch, n_heads, tokens, head_dim] = heads.dims();
    heads.swap_dims(1, 2).reshape([batch, tokens, n_heads * head_dim])
}

/// The text tower's causal mask: each query attends to itself and the keys
/// before it. Its tensor is made only for burn's operations, the first time
/// they need it: the CPU's attention and the GPU's softmax kernel
/// ([`gpu_layers::attention_softmax`]) take the rule instead.
pub struct CausalMask {
    tokens: usize,
    device: Device,
    future: OnceCell<Tensor<2, Bool>>,
}

impl CausalMask {
    pub fn new(tokens: usize, device: &Device) -> Self {
        Self { tokens, device: device.clone(), future: OnceCell::new() }
    }

    /// `true` where key `j` comes after query `i`. Made on the host and
    /// uploaded: on a GPU, `tril_mask`'s index arithmetic over a few hundred
    /// elements compiles kernels whose size follows `tokens`.
    ///
    /// # Shapes
    /// - returns `[tokens, tokens]`
    pub fn future(&self) -> &Tensor<2, Bool> {
        self.future.get_or_init(|| {
            let tokens = self.tokens;
            let future: Vec<bool> = (0..tokens).flat_map(|i| (0..tokens).map(move |j| j > i)).collect();
            Tensor::from_data(TensorData::new(future, [tokens, tokens]), &self.device)
        })
    }
}

/// `softmax(scale a b^T + bias)` over the keys, with the keys where `future`
/// is `true` masked out. The product is in `a`'s precision (accumulated in
/// f32 at f16); the softmax is computed in f32, as PyTorch's half softmax
/// computes, and returned in `a`'s precision (the value product's). On a
/// GPU the softmax is one kernel ([`gpu_layers::attention_softmax`]).
///
/// # Shapes
/// - `a`, `b`: `[batch, heads, tokens, head_dim]`
/// - `bias`: `[1, 1, tokens, tokens]`, f32
/// - `future`: a mask of `tokens` ([`CausalMask`])
/// - returns `[batch, heads, tokens, tokens]`
pub(crate) fn attention_weights(a: Tensor<4>, b: Tensor<4>, scale: f64, bias: Option<&Tensor<4>>, future: Option<&CausalMask>) -> Tensor<4> {
    let dtype = FloatDType::from(a.dtype());
    let scores = matmul(ProductKind::Attention, a, b.swap_dims(2, 3));
    if let Some(weights) = gpu_layers::attention_softmax(&scores, scale as f32, bias, future.is_some()) {
        return weights;
    }
    let scores = scores.cast(FloatDType::F32) * scale;
    let scores = match bias {
        Some(bias) => scores + bias.clone(),
        None => scores,
    };
    let scores = match future {
        Some(future) => {
            let future = future.future().clone().unsqueeze::<4>().expand(scores.dims());
            scores.mask_fill(future, f32::NEG_INFINITY)
        }
        None => scores,
    };
    activation::softmax(scores, 3).cast(dtype)
}

/// A pre-LN transformer block: `x + attn(ln_1(x))`, then `+ mlp(ln_2(.))`.
#[derive(Debug, Clone)]
pub struct ResidualAttentionBlock {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl ResidualAttentionBlock {
    /// # Shapes
    /// - `x`: `[batch, tokens, width]` -> same
    /// - `future`: a mask of `tokens`, see [`Attention::forward`]
    pub fn forward(&self, x: Tensor<3>, future: Option<&CausalMask>) -> Tensor<3> {
        let x = self.attn.forward_add(self.ln_1.forward(x.clone()), future, x);
        self.mlp.forward_add(self.ln_2.forward(x.clone()), x)
    }
}
