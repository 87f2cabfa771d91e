//! The towers' layers as one GPU kernel each (`src/gpu_layers.rs`) against
//! the same layer computed in f64 on the host from the same inputs, at f32
//! and f16: attention's softmax in every shape class (rows that do not fill
//! a work group, fewer keys than a row's units, many more), with NACLIP's
//! kind of bias and with the text tower's causal mask; layer norm at the
//! towers' widths; the MLP's bias and QuickGELU; the residual sums (against
//! the same additions on the host, bit for bit); the split of the fused q, k,
//! v projection into heads (bit for bit where the views put each value).
//! Then the towers with them against PyTorch.

mod common;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use clearclip_fixtures::{wgpu_device, SeededRng};
use clearclip_model::gpu_layers::{attention_softmax, bias_quick_gelu, bias_residual, kernel_counts, layer_norm, split_heads, value_product_merged};
use clearclip_model::Precision;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().try_into_vec::<f32>().unwrap()
}

/// `v` as `precision` stores it (f16 rounds to nearest, as the GPU's store does).
fn stored(precision: Precision, v: f32) -> f32 {
    match precision {
        Precision::F32 => v,
        Precision::F16 => half::f16::from_f32(v).to_f32(),
    }
}

/// `softmax(scale * scores + bias)` over each row of `tokens` keys, in f64;
/// with `causal`, the keys after the row's query weigh 0.
fn reference(scores: &[f32], tokens: usize, scale: f32, bias: Option<&[f32]>, causal: bool) -> Vec<f32> {
    let mut out = Vec::with_capacity(scores.len());
    for (row, values) in scores.chunks(tokens).enumerate() {
        let query = row % tokens;
        let attended = if causal { query + 1 } else { tokens };
        let logit = |key: usize| f64::from(scale) * f64::from(values[key]) + bias.map_or(0.0, |b| f64::from(b[query * tokens + key]));
        let max = (0..attended).map(logit).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = (0..attended).map(|key| (logit(key) - max).exp()).sum();
        out.extend((0..tokens).map(|key| if key < attended { ((logit(key) - max).exp() / sum) as f32 } else { 0.0 }));
    }
    out
}

#[test]
fn the_softmax_kernel_matches_an_f64_softmax() {
    let Some(gpu) = wgpu_device() else { return };
    let scale = 0.125f32;
    for precision in common::precisions(&gpu) {
        // f32: the f64 softmax's rounding and the order of the row sum; f16:
        // the weights rounded to f16 (at most 2^-12 for a weight up to 1).
        let tolerance = match precision {
            Precision::F32 => 2e-7,
            Precision::F16 => 2.5e-4,
        };
        // Rows that do not fill a work group of 8 (2 x 3 x 5 = 30), fewer
        // keys than a row's 32 units, more than one unit's share, and a
        // ViT-B/16 window's 785 tokens.
        for (batch, heads, tokens) in [(2, 3, 5), (1, 2, 50), (2, 1, 97), (1, 2, 785)] {
            let mut rng = SeededRng::new(tokens as u64);
            let scores = Tensor::<4>::from_data(TensorData::new(rng.uniform(batch * heads * tokens * tokens, -40.0, 40.0), [batch, heads, tokens, tokens]), &gpu).cast(precision.dtype());
            let bias = rng.uniform(tokens * tokens, -3.0, 1.0);
            let bias_tensor = Tensor::<4>::from_data(TensorData::new(bias.clone(), [1, 1, tokens, tokens]), &gpu);
            let rounded = values(scores.clone());
            for (with_bias, causal) in [(false, false), (true, false), (false, true)] {
                let what = format!("{} [{batch}, {heads}, {tokens}, {tokens}], bias {with_bias}, causal {causal}", precision.name());
                let weights = attention_softmax(&scores, scale, with_bias.then_some(&bias_tensor), causal).unwrap_or_else(|| panic!("{what}: the kernel declined"));
                assert_eq!(FloatDType::from(weights.dtype()), precision.dtype(), "{what}: the scores' precision");
                let ours = values(weights);
                let expected = reference(&rounded, tokens, scale, with_bias.then_some(&bias[..]), causal);
                let (worst, at) = clearclip_fixtures::largest_difference(&ours, &expected);
                assert!(worst <= tolerance, "{what}: {worst:e} at {at} ({} against {})", ours[at], expected[at]);
                if causal {
                    // Masked keys weigh exactly 0.
                    let masked = (0..ours.len()).filter(|i| (i % tokens) > (i / tokens) % tokens);
                    assert!(masked.clone().all(|i| ours[i] == 0.0), "{what}: a masked key has weight");
                }
            }
        }
    }
}

#[test]
fn what_the_kernel_cannot_take_is_declined() {
    let Some(gpu) = wgpu_device() else { return };
    let scores = |device: &Device| Tensor::<4>::from_data(TensorData::new(vec![0.5f32; 2 * 3 * 4 * 4], [2, 3, 4, 4]), device);
    // Not contiguous: burn's operations run it instead.
    assert!(attention_softmax(&scores(&gpu).swap_dims(2, 3), 1.0, None, false).is_none());
    // A bias that is not one value per query and key.
    let bias = Tensor::<4>::from_data(TensorData::new(vec![0.0f32; 4], [1, 1, 2, 2]), &gpu);
    assert!(attention_softmax(&scores(&gpu), 1.0, Some(&bias), false).is_none());
    // The CPU backend.
    assert!(attention_softmax(&scores(&Device::flex()), 1.0, None, false).is_none());
    // Layer norm's gamma and beta of another width, or not f32.
    let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 12], [3, 4]), &gpu);
    let vector = |len: usize| Tensor::<1>::from_data(TensorData::new(vec![1.0f32; len], [len]), &gpu);
    assert!(layer_norm(&x, &vector(4), &vector(4), 1e-5).is_some());
    assert!(layer_norm(&x, &vector(3), &vector(4), 1e-5).is_none());
    assert!(layer_norm(&x.clone().cast(FloatDType::F16), &vector(4), &vector(4).cast(FloatDType::F16), 1e-5).is_none());
    // The residual of another shape or precision.
    assert!(bias_residual(&x, &vector(4), &x).is_some());
    assert!(bias_residual(&x, &vector(4), &x.clone().reshape([4, 3])).is_none());
    assert!(bias_residual(&x, &vector(4), &x.clone().cast(FloatDType::F16)).is_none());
    // QuickGELU's bias of another width or precision.
    assert!(bias_quick_gelu(&x, &vector(4)).is_some());
    assert!(bias_quick_gelu(&x, &vector(3)).is_none());
    assert!(bias_quick_gelu(&x, &vector(4).cast(FloatDType::F16)).is_none());
    // A fused projection that is not three equal parts of `heads` heads, or
    // not contiguous, or a bias of another width.
    let qkv = Tensor::<3>::from_data(TensorData::new(vec![0.5f32; 2 * 3 * 12], [2, 3, 12]), &gpu);
    assert!(split_heads(&qkv, Some(&vector(12)), 2).is_some());
    assert!(split_heads(&qkv, None, 3).is_none());
    assert!(split_heads(&qkv, None, 0).is_none());
    assert!(split_heads(&qkv, Some(&vector(6)), 2).is_none());
    assert!(split_heads(&qkv.clone().swap_dims(0, 1), None, 2).is_none());
    // A value product whose operands do not pair up.
    let weights = Tensor::<4>::from_data(TensorData::new(vec![0.25f32; 2 * 3 * 4 * 4], [2, 3, 4, 4]), &gpu);
    let v = |keys: usize| Tensor::<4>::from_data(TensorData::new(vec![1.0f32; 2 * 3 * keys * 5], [2, 3, keys, 5]), &gpu);
    assert!(value_product_merged(&weights, &v(4)).is_some());
    assert!(value_product_merged(&weights, &v(3)).is_none());
    assert!(value_product_merged(&weights, &v(4).cast(FloatDType::F16)).is_none());
}

/// The value product written with the heads side by side gives, bit for
/// bit, burn's product followed by the copy that merges the heads (the same
/// kernel, writing elsewhere), with weights and values made as attention
/// makes them (a softmax's rows, the split's contiguous heads).
#[test]
fn the_merged_value_product_is_the_product_then_the_merge() {
    let Some(gpu) = wgpu_device() else { return };
    for precision in common::precisions(&gpu) {
        for (batch, heads, tokens, head_dim) in [(1, 2, 5, 3), (3, 4, 80, 64), (2, 12, 785, 64)] {
            let mut rng = SeededRng::new((tokens + heads) as u64);
            let tensor = |values: Vec<f32>, shape: [usize; 4]| Tensor::<4>::from_data(TensorData::new(values, shape), &gpu).cast(precision.dtype());
            let weights = tensor(rng.uniform(batch * heads * tokens * tokens, 0.0, 2.0 / tokens as f32), [batch, heads, tokens, tokens]);
            let v = tensor(rng.uniform(batch * heads * tokens * head_dim, -3.0, 3.0), [batch, heads, tokens, head_dim]);
            let what = format!("{} [{batch}, {heads}, {tokens}, {head_dim}]", precision.name());
            let ours = value_product_merged(&weights, &v).unwrap_or_else(|| panic!("{what}: declined"));
            assert_eq!(ours.dims(), [batch, tokens, heads * head_dim], "{what}");
            let expected = weights.matmul(v).swap_dims(1, 2).reshape([batch, tokens, heads * head_dim]);
            let (ours, expected) = (values(ours), values(expected));
            let differ = ours.iter().zip(&expected).position(|(a, b)| a.to_bits() != b.to_bits());
            assert!(differ.is_none(), "{what}: at {differ:?}");
        }
    }
}

/// The split into heads moves each value where burn's views of the
/// thirds put it (q, k, v as `narrow`, `reshape` and `swap_dims` of the
/// fused projection), plus the bias as burn's addition rounds it: the same
/// values bit for bit.
#[test]
fn the_head_split_kernel_moves_every_value_where_the_views_put_it() {
    let Some(gpu) = wgpu_device() else { return };
    for precision in common::precisions(&gpu) {
        // A batch of one and of several, a head width that is not a power of
        // two, the text tower's padded prompts and two ViT-B/16 windows.
        for (batch, tokens, heads, head_dim) in [(1, 5, 2, 3), (3, 7, 4, 5), (4, 80, 8, 64), (2, 785, 12, 64)] {
            let width = heads * head_dim;
            let mut rng = SeededRng::new((tokens * heads) as u64);
            let qkv = Tensor::<3>::from_data(TensorData::new(rng.uniform(batch * tokens * 3 * width, -20.0, 20.0), [batch, tokens, 3 * width]), &gpu).cast(precision.dtype());
            let bias = Tensor::<1>::from_data(TensorData::new(rng.uniform(3 * width, -1.0, 1.0), [3 * width]), &gpu).cast(precision.dtype());
            let (fused, bias_values) = (values(qkv.clone()), values(bias.clone()));
            for with_bias in [false, true] {
                let what = format!("{} [{batch}, {tokens}, 3 x {heads} x {head_dim}], bias {with_bias}", precision.name());
                let parts = split_heads(&qkv, with_bias.then_some(&bias), heads).unwrap_or_else(|| panic!("{what}: the kernel declined"));
                for (third, part) in parts.into_iter().enumerate() {
                    assert_eq!(part.dims(), [batch, heads, tokens, head_dim], "{what}");
                    assert_eq!(FloatDType::from(part.dtype()), precision.dtype(), "{what}: the projection's precision");
                    let ours = values(part);
                    let mut at = 0;
                    for b in 0..batch {
                        for h in 0..heads {
                            for t in 0..tokens {
                                for d in 0..head_dim {
                                    let column = third * width + h * head_dim + d;
                                    let value = fused[(b * tokens + t) * 3 * width + column];
                                    let expected = if with_bias { stored(precision, value + bias_values[column]) } else { value };
                                    assert_eq!(ours[at], expected, "{what}: part {third}, image {b}, head {h}, token {t}, channel {d}");
                                    at += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `(x - mean) / sqrt(var + eps) * gamma + beta` over each row, in f64.
fn layer_norm_reference(x: &[f32], width: usize, gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f32> {
    x.chunks(width)
        .flat_map(|row| {
            let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width as f64;
            let var = row.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / width as f64;
            let deviation = (var + eps).sqrt();
            (0..width).map(move |i| ((f64::from(row[i]) - mean) / deviation * f64::from(gamma[i]) + f64::from(beta[i])) as f32)
        })
        .collect()
}

/// `|ours - expected| <= absolute + relative * |expected|` for every value.
fn assert_within(what: &str, ours: &[f32], expected: &[f32], absolute: f32, relative: f32) {
    assert_eq!(ours.len(), expected.len(), "{what}");
    for (i, (&o, &e)) in ours.iter().zip(expected).enumerate() {
        assert!((o - e).abs() <= absolute + relative * e.abs(), "{what}: {o} against {e} at {i}");
    }
}

/// The output's rounding: none at f32 past the f32 arithmetic's, half a
/// unit of f16's last place (2^-11 relative) at f16.
fn relative_rounding(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => 1e-6,
        Precision::F16 => 2f32.powi(-11),
    }
}

#[test]
fn the_layer_norm_kernel_matches_an_f64_layer_norm() {
    let Some(gpu) = wgpu_device() else { return };
    for precision in common::precisions(&gpu) {
        // The towers' widths (the tiny models', ViT-B's text and image,
        // ViT-L's image) and one wider than a row's 32 units take in a pass.
        for (rows, width) in [(3, 32), (50, 48), (17, 512), (785, 768), (9, 1024), (2, 33)] {
            let mut rng = SeededRng::new(width as u64);
            // Rows far from 0 with a small spread, where the variance as the
            // mean of the centred squares matters.
            let x = Tensor::<2>::from_data(TensorData::new(rng.uniform(rows * width, 2.0, 6.0), [rows, width]), &gpu).cast(precision.dtype());
            let (gamma, beta) = (rng.uniform(width, 0.5, 1.5), rng.uniform(width, -1.0, 1.0));
            let vector = |values: &[f32]| Tensor::<1>::from_data(TensorData::new(values.to_vec(), [width]), &gpu);
            let what = format!("{} layer norm of {rows} x {width}", precision.name());
            let ours = layer_norm(&x, &vector(&gamma), &vector(&beta), 1e-5).unwrap_or_else(|| panic!("{what}: the kernel declined"));
            assert_eq!(FloatDType::from(ours.dtype()), precision.dtype(), "{what}: x's precision");
            let expected = layer_norm_reference(&values(x), width, &gamma, &beta, 1e-5);
            // f32: the f32 sums of up to 1024 values.
            assert_within(&what, &values(ours), &expected, 2e-6, relative_rounding(precision));
        }
    }
}

#[test]
fn the_quick_gelu_kernel_matches_an_f64_quick_gelu() {
    let Some(gpu) = wgpu_device() else { return };
    for precision in common::precisions(&gpu) {
        for (rows, width) in [(1, 5), (37, 64), (785, 3072)] {
            let mut rng = SeededRng::new(width as u64 + 1);
            let x = Tensor::<2>::from_data(TensorData::new(rng.uniform(rows * width, -60.0, 8.0), [rows, width]), &gpu).cast(precision.dtype());
            let bias = Tensor::<1>::from_data(TensorData::new(rng.uniform(width, -1.0, 1.0), [width]), &gpu).cast(precision.dtype());
            let what = format!("{} bias + QuickGELU of {rows} x {width}", precision.name());
            let ours = bias_quick_gelu(&x, &bias).unwrap_or_else(|| panic!("{what}: the kernel declined"));
            assert_eq!(FloatDType::from(ours.dtype()), precision.dtype(), "{what}: x's precision");
            let (x, bias, ours) = (values(x), values(bias), values(ours));
            for (i, &v) in x.iter().enumerate() {
                // The sum in x's precision, as burn's add, then QuickGELU in f64.
                let z = stored(precision, v + bias[i % width]);
                let expected = (f64::from(z) / (1.0 + (-1.702 * f64::from(z)).exp())) as f32;
                // f32's `1.702 z` is off by up to 2^-24 of itself, which the
                // exponential turns into that much relative error times
                // |1.702 z| (3e-6 at z = -30), plus `exp`'s own few units in the
                // last place. Tiny results are subnormal or 0: in f32 below
                // about -52 (the exponential is infinite), at f16 below about
                // -10 (f16's smallest step is 2^-24).
                let relative = relative_rounding(precision) + 1e-6 + 1.702 * z.abs() * 2f32.powi(-23);
                let absolute = if precision == Precision::F16 { 2f32.powi(-24) } else { 1e-30 };
                assert!((ours[i] - expected).abs() <= absolute + relative * expected.abs(), "{what}: {} against {expected} at {i} (z = {z})", ours[i]);
            }
        }
    }
}

#[test]
fn the_residual_kernel_adds_as_burns_additions_do() {
    let Some(gpu) = wgpu_device() else { return };
    for precision in common::precisions(&gpu) {
        for (rows, width) in [(1, 3), (50, 64), (1570, 768)] {
            let mut rng = SeededRng::new(width as u64 + 2);
            let tensor = |values: Vec<f32>, rows: usize| Tensor::<2>::from_data(TensorData::new(values, [rows, width]), &gpu).cast(precision.dtype());
            let x = tensor(rng.uniform(rows * width, -50.0, 50.0), rows);
            let residual = tensor(rng.uniform(rows * width, -5.0, 5.0), rows);
            let bias = Tensor::<1>::from_data(TensorData::new(rng.uniform(width, -1.0, 1.0), [width]), &gpu).cast(precision.dtype());
            let what = format!("{} bias + residual of {rows} x {width}", precision.name());
            let ours = bias_residual(&x, &bias, &residual).unwrap_or_else(|| panic!("{what}: the kernel declined"));
            let (x, bias, residual, ours) = (values(x), values(bias), values(residual), values(ours));
            for i in 0..ours.len() {
                // Each sum rounded to the precision, as burn's two additions store them.
                let expected = stored(precision, residual[i] + stored(precision, x[i] + bias[i % width]));
                assert_eq!(ours[i], expected, "{what} at {i}: {} + ({} + {})", residual[i], x[i], bias[i % width]);
            }
        }
    }
}

/// The towers with the kernels (the GPU backend's default) match PyTorch,
/// and every block's layers went through them: each block of the text tower
/// and of the image tower's first `L-1`, in every mode, has a softmax, two
/// layer norms, a QuickGELU, two residual sums and a split into heads.
#[test]
fn towers_with_the_layer_kernels_match_pytorch() {
    let Some(device) = wgpu_device() else { return };
    for precision in common::precisions(&device) {
        for (config, ran) in common::assert_towers_match_pytorch(&device, "layer kernels", precision, kernel_counts) {
            let blocks = clearclip_model::DenseMode::ALL.len() * (config.vision.layers - 1) + config.text.layers;
            let per_block = [
                ("softmax", ran.softmax),
                ("layer norm", ran.layer_norm / 2),
                ("QuickGELU", ran.quick_gelu),
                ("residual sum", ran.residual / 2),
                ("head split", ran.split_heads),
                ("value product into merged heads", ran.merged_heads),
            ];
            for (kind, ran) in per_block {
                assert!(ran >= blocks, "{} {kind}: {ran} as one kernel (per block), fewer than the {blocks} blocks", precision.name());
            }
        }
    }
}
