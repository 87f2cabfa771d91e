//! Our own matrix-product kernel on the GPU (`--gpu-matmul tiled`,
//! `tiled-small` and `tiled-wide`, `src/tiled_matmul.rs`): products of every shape class
//! the model gives it against the CPU backend, then the towers with it
//! against PyTorch at f32 and f16, and each kind of product with a routine
//! of its own. The choice is process-wide, so these tests have a process of
//! their own (this file), take turns at it ([`CHOICE`]), and need the
//! `gpu-routines` feature.

mod common;

use burn::tensor::{Device, FloatDType, Tensor, TensorData};
use clearclip_fixtures::{largest_difference, wgpu_device, SeededRng};
use std::sync::Mutex;

use clearclip_model::gpu_matmul::{matmul_with, routine_counts, set_gpu_matmul, total_routine_counts, MatmulChoice, MatmulRoutine, ProductKind};
use clearclip_model::Precision;

/// Held by a test while it sets the process-wide choice and runs the model.
static CHOICE: Mutex<()> = Mutex::new(());

/// `len` values in [-1, 1), the same for the same seed.
fn random(len: usize, seed: u64) -> Vec<f32> {
    SeededRng::new(seed).uniform(len, -1.0, 1.0)
}

fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device, precision: Precision) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), device).cast(precision.dtype())
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(FloatDType::F32).into_data().try_into_vec::<f32>().unwrap()
}

/// `lhs @ rhs` through `routine` on the GPU and through burn on the CPU;
/// the largest difference relative to the largest value. `operands` makes
/// both on a device, in the layout under test (views stay views on the
/// GPU), from the same rounded values.
fn relative_error<const D: usize>(routine: MatmulRoutine, operands: impl Fn(&Device) -> (Tensor<D>, Tensor<D>), gpu: &Device) -> f32 {
    let cpu = Device::flex();
    let (lhs, rhs) = operands(&cpu);
    let expected = values(lhs.cast(FloatDType::F32).matmul(rhs.cast(FloatDType::F32)));
    let (lhs, rhs) = operands(gpu);
    let ours = values(matmul_with(routine, lhs, rhs).expect("the kernel runs on a wgpu device"));
    let (worst, _) = largest_difference(&ours, &expected);
    worst / expected.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[test]
fn tiled_products_equal_the_cpu_in_every_layout() {
    let Some(gpu) = wgpu_device() else { return };
    for precision in common::precisions(&gpu) {
        // At f32 as exact as burn's routine; at f16 the CPU multiplies the
        // same rounded operands in f32, so what is left is the output's
        // rounding to f16 (2^-11 relative, at most 2^-11 of the largest).
        let tolerance = match precision {
            Precision::F32 => 1e-5,
            Precision::F16 => 5e-4,
        };
        for routine in [MatmulRoutine::Tiled, MatmulRoutine::TiledSmall, MatmulRoutine::TiledWide] {
            let what = |shape: &str| format!("{routine} {} {shape}", precision.name());
            // 2-D, as the linear layers: a tile of each shape and a part,
            // one row, edges in every dimension (k not a multiple of the 8
            // or 16 staged).
            for (m, k, n) in [(128, 16, 64), (128, 8, 128), (1, 40, 7), (130, 33, 70), (197, 96, 288), (77, 3, 5)] {
                let operands = |device: &Device| (tensor(random(m * k, 1), [m, k], device, precision), tensor(random(k * n, 2), [k, n], device, precision));
                let error = relative_error(routine, operands, &gpu);
                assert!(error <= tolerance, "{}: {error:e}", what(&format!("{m}x{k} @ {k}x{n}")));
                // The rhs as the transpose of a contiguous [n, k], so that
                // its products, not its columns, are contiguous.
                let transposed = |device: &Device| (tensor(random(m * k, 1), [m, k], device, precision), tensor(random(k * n, 2), [n, k], device, precision).transpose());
                let error = relative_error(routine, transposed, &gpu);
                assert!(error <= tolerance, "{}: {error:e}", what(&format!("{m}x{k} @ ({n}x{k})^T")));
            }
            // 4-D views of a fused projection, as the attention's: q and
            // k^T (k transposed, so its columns are strided and its
            // products contiguous), then weights and v; two windows of 3
            // heads, 50 tokens of 8 dimensions.
            let (batch, heads, tokens, head_dim) = (2, 3, 50, 8);
            let width = heads * head_dim;
            let qkv = |device: &Device| tensor(random(batch * tokens * 3 * width, 3), [batch, tokens, 3 * width], device, precision);
            let split = |qkv: &Tensor<3>, i: usize| qkv.clone().narrow(2, i * width, width).reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2);
            let scores = |device: &Device| {
                let qkv = qkv(device);
                (split(&qkv, 0), split(&qkv, 1).swap_dims(2, 3))
            };
            let error = relative_error(routine, scores, &gpu);
            assert!(error <= tolerance, "{}: {error:e}", what("q @ k^T"));
            let values = |device: &Device| {
                let weights = tensor(random(batch * heads * tokens * tokens, 4), [batch, heads, tokens, tokens], device, precision);
                (weights, split(&qkv(device), 2))
            };
            let error = relative_error(routine, values, &gpu);
            assert!(error <= tolerance, "{}: {error:e}", what("weights @ v"));
        }
    }
}

#[test]
fn more_batches_than_a_dispatch_allows_are_declined() {
    let Some(gpu) = wgpu_device() else { return };
    // 65536 batches of 1x1 products: one work group each, one more than
    // WebGPU dispatches along a dimension. (65535 of them run, but take a
    // minute on lavapipe.)
    let ones = |batches: usize| tensor(vec![1.0; batches], [batches, 1, 1], &gpu, Precision::F32);
    for routine in [MatmulRoutine::Tiled, MatmulRoutine::TiledSmall, MatmulRoutine::TiledWide] {
        let declined = matmul_with(routine, ones(65_536), ones(65_536)).err().unwrap_or_default();
        assert!(declined.contains("more work groups than a dispatch allows"), "{routine}: {declined:?}");
    }
}

#[test]
fn towers_with_the_tiled_kernel_match_pytorch_at_both_precisions() {
    let Some(device) = wgpu_device() else { return };
    let _turn = CHOICE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for routine in [MatmulRoutine::Tiled, MatmulRoutine::TiledSmall, MatmulRoutine::TiledWide] {
        assert!(set_gpu_matmul(MatmulChoice::uniform(routine)), "this build has kernel fusion");
        for precision in common::precisions(&device) {
            for (_, (ran, declined)) in common::assert_towers_match_pytorch(&device, routine.name(), precision, total_routine_counts) {
                // The products went through the kernel, none declined.
                assert!(ran > 0 && declined == 0, "{routine} {}: {ran} products ran, {declined} declined", precision.name());
            }
        }
    }
}

/// A choice for each kind of product: the projections' products through
/// one routine, attention's through the other (here burn's, which counts
/// nothing), and the towers still match PyTorch.
#[test]
fn each_kind_of_product_runs_with_its_own_routine() {
    let Some(device) = wgpu_device() else { return };
    let _turn = CHOICE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (choice, routed) in [
        ("projections=tiled", ProductKind::Projection),
        ("attention=tiled-small", ProductKind::Attention),
        ("projections=tiled-small,attention=tiled", ProductKind::Projection),
    ] {
        let choice: MatmulChoice = choice.parse().unwrap();
        assert!(set_gpu_matmul(choice), "this build has kernel fusion");
        let other = ProductKind::ALL.into_iter().find(|&kind| kind != routed).unwrap();
        let before = routine_counts(other);
        for (_, (ran, declined)) in common::assert_towers_match_pytorch(&device, &choice.to_string(), Precision::F32, || routine_counts(routed)) {
            assert!(ran > 0 && declined == 0, "{choice}: {ran} {} products ran, {declined} declined", routed.name());
        }
        let after = routine_counts(other);
        match choice.get(other) {
            // Left to burn's routine: nothing goes through the choice.
            MatmulRoutine::Burn => assert_eq!(after, before, "{choice}: {} products went through a routine", other.name()),
            _ => assert!(after.0 > before.0 && after.1 == before.1, "{choice}: {} products {before:?} -> {after:?}", other.name()),
        }
    }
}
