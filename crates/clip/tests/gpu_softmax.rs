//! Attention's softmax as one GPU kernel (`src/gpu_softmax.rs`) against a
//! softmax computed in f64 on the host from the same scores: every shape
//! class (rows that do not fill a work group, fewer keys than a row's units,
//! many more), with NACLIP's kind of bias, with the text tower's causal
//! mask, at f32 and f16; and the towers with it against PyTorch.

mod common;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use clearclip_fixtures::{wgpu_device, SeededRng};
use clearclip_model::gpu_softmax::{attention_softmax, kernel_count};
use clearclip_model::Precision;

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().try_into_vec::<f32>().unwrap()
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
}

/// The towers with the kernel (the GPU backend's default) match PyTorch,
/// and every attention of theirs went through it: each block of the text
/// tower and of the image tower's first `L-1`, in every mode.
#[test]
fn towers_with_the_softmax_kernel_match_pytorch() {
    let Some(device) = wgpu_device() else { return };
    for precision in common::precisions(&device) {
        let checked = common::assert_towers_match_pytorch(&device, "softmax kernel", precision, || (kernel_count(), 0));
        for (config, (ran, _)) in checked {
            let at_least = clearclip_model::DenseMode::ALL.len() * (config.vision.layers - 1) + config.text.layers;
            assert!(ran >= at_least, "{}: {ran} softmaxes as one kernel, fewer than the {at_least} blocks", precision.name());
        }
    }
}
