//! What the tests of the GPU's routine choices share (a module of each test
//! binary that declares it; cargo builds no test of its own from a folder).

use burn::tensor::{Device, Tensor, TensorData};
use clearclip_fixtures::{assert_close, assert_half_like_pytorch, read_fixture, tokenizer_json, wgpu_required, Reference, CHECKPOINTS};
use clearclip_model::{load_clip, ClipConfig, ClipTokenizer, DenseMode, LoadOptions, Precision};

/// The tolerance of burn's routines in the towers (`tests/parity.rs`).
pub const FEATURE_TOLERANCE: f32 = 1e-4;

/// f32, and f16 where the adapter has shader-f16 (which lavapipe has, so
/// with `CLEARCLIP_REQUIRE_WGPU=1` it must).
pub fn precisions(device: &Device) -> Vec<Precision> {
    if Precision::F16.is_supported_on(device) {
        vec![Precision::F32, Precision::F16]
    } else {
        assert!(!wgpu_required(), "the wgpu adapter has no shader-f16 (lavapipe has)");
        eprintln!("f16 SKIPPED: the wgpu adapter has no shader-f16");
        vec![Precision::F32]
    }
}

/// Counts that only grow: how much they grew since an earlier reading.
pub trait Counts: Copy {
    fn since(self, before: Self) -> Self;
}

/// A routine's problems run and declined.
impl Counts for (usize, usize) {
    fn since(self, before: Self) -> Self {
        (self.0 - before.0, self.1 - before.1)
    }
}

impl Counts for clearclip_model::gpu_layers::KernelCounts {
    fn since(self, before: Self) -> Self {
        clearclip_model::gpu_layers::KernelCounts::since(self, before)
    }
}

/// Both towers of every test checkpoint at `precision` on `device`
/// against PyTorch: each mode's dense features of the 96x160 input, and the
/// prompts' text embeddings; at f32 within [`FEATURE_TOLERANCE`], at f16
/// like PyTorch's f16. Returns each checkpoint's configuration with what
/// `counts` grew by over its checks.
pub fn assert_towers_match_pytorch<C: Counts>(device: &Device, what: &str, precision: Precision, counts: impl Fn() -> C) -> Vec<(ClipConfig, C)> {
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let prompts: Vec<&str> = reference.meta["text_prompts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let check = |what: &str, ours: &[f32], name: &str| {
        let (exact, _) = reference.f32(name);
        match precision {
            Precision::F32 => drop(assert_close(what, ours, &exact, FEATURE_TOLERANCE)),
            Precision::F16 => assert_half_like_pytorch(what, ours, &reference.f32(&name.replacen('.', "_f16.", 1)).0, &exact),
        }
    };
    CHECKPOINTS
        .iter()
        .map(|checkpoint| {
            let model = load_clip(&read_fixture(checkpoint), LoadOptions { precision, ..LoadOptions::default() }, device).unwrap();
            let before = counts();
            for mode in DenseMode::ALL {
                let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input.clone(), [1, shape[0], shape[1], shape[2]]), device);
                let ours = model.vision.dense_features(pixels, &mode.last_block()).unwrap().into_data().try_into_vec::<f32>().unwrap();
                check(&format!("{what} {checkpoint} {} 96x160 {}", mode.name(), precision.name()), &ours, &format!("dense.{}_96x160", mode.name()));
            }
            let text = model.text.encode(&tokenizer.encode_batch(&prompts).unwrap()).unwrap();
            check(&format!("{what} {checkpoint} text {}", precision.name()), &text.into_data().try_into_vec::<f32>().unwrap(), "text.prompts");
            (model.config, counts().since(before))
        })
        .collect()
}
