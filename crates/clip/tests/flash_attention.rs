//! The towers with cubek's flash attention on the GPU
//! (`--gpu-attention flash-unit`, `src/gpu_attention.rs`) against PyTorch, at
//! f32 and f16. The choice is process-wide, so these tests have a process of
//! their own (this file), and need the `gpu-routines` feature.

use burn::tensor::{Tensor, TensorData};
use clearclip_fixtures::{assert_close, assert_half_like_pytorch, read_fixture, tokenizer_json, wgpu_device, wgpu_required, Reference, CHECKPOINTS};
use clearclip_model::gpu_attention::{routine_counts, set_gpu_attention, AttentionRoutine};
use clearclip_model::{load_clip, ClipTokenizer, DenseMode, LoadOptions, Precision};

/// The tolerance of the scores path (`tests/parity.rs`).
const FEATURE_TOLERANCE: f32 = 1e-4;

#[test]
fn flash_attention_matches_pytorch_at_both_precisions() {
    let Some(device) = wgpu_device() else { return };
    assert!(set_gpu_attention(AttentionRoutine::FlashUnit), "this build has kernel fusion");
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let prompts: Vec<&str> = reference.meta["text_prompts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let mut precisions = vec![Precision::F32];
    if Precision::F16.is_supported_on(&device) {
        precisions.push(Precision::F16);
    } else {
        assert!(!wgpu_required(), "the wgpu adapter has no shader-f16 (lavapipe has)");
        eprintln!("f16 SKIPPED: the wgpu adapter has no shader-f16");
    }
    for precision in precisions {
        for checkpoint in CHECKPOINTS {
            let model = load_clip(&read_fixture(checkpoint), LoadOptions { precision, ..LoadOptions::default() }, &device).unwrap();
            let before = routine_counts();
            for mode in DenseMode::ALL {
                let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input.clone(), [1, shape[0], shape[1], shape[2]]), &device);
                let ours = model.vision.dense_features(pixels, &mode.last_block()).unwrap().into_data().try_into_vec::<f32>().unwrap();
                let what = format!("flash {checkpoint} {} 96x160 {}", mode.name(), precision.name());
                let (exact, _) = reference.f32(&format!("dense.{}_96x160", mode.name()));
                match precision {
                    Precision::F32 => drop(assert_close(&what, &ours, &exact, FEATURE_TOLERANCE)),
                    Precision::F16 => assert_half_like_pytorch(&what, &ours, &reference.f32(&format!("dense_f16.{}_96x160", mode.name())).0, &exact),
                }
            }
            let text = model.text.encode(&tokenizer.encode_batch(&prompts).unwrap()).unwrap();
            let ours = text.into_data().try_into_vec::<f32>().unwrap();
            let what = format!("flash {checkpoint} text {}", precision.name());
            let (exact, _) = reference.f32("text.prompts");
            match precision {
                Precision::F32 => drop(assert_close(&what, &ours, &exact, FEATURE_TOLERANCE)),
                Precision::F16 => assert_half_like_pytorch(&what, &ours, &reference.f32("text_f16.prompts").0, &exact),
            }
            // Every block of the first L-1 (2 per mode) and of the text tower
            // (2) went through flash attention; none was declined.
            let (flashed, declined) = routine_counts();
            let blocks = DenseMode::ALL.len() * (model.config.vision.layers - 1) + model.config.text.layers;
            assert_eq!((flashed - before.0, declined - before.1), (blocks, 0), "{checkpoint} {}", precision.name());
        }
    }
}
