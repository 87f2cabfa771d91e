//! The model against PyTorch: dense features of every mode, the positional
//! embedding resize, and tokenization, on the tiny seeded checkpoints
//! (`scripts/gen_fixtures.py`), in both tensor layouts, on every test device.

use burn::tensor::{Device, Tensor, TensorData};
use clearclip_fixtures::{assert_close, assert_half_like_pytorch, largest_difference, load_fixture_model, read_fixture, test_devices, tokenizer_json, wgpu_device, wgpu_required, Reference, CHECKPOINTS};
use clearclip_model::{
    load_clip, resize_patch_positions, AttentionKind, ClipTokenizer, DenseMode, LastBlock, Layout, LoadError, LoadOptions, Precision, Residual,
    TokenBatch,
};

/// Features reach ~5 in magnitude; f32 on different kernels than PyTorch's.
const FEATURE_TOLERANCE: f32 = 1e-4;

fn read(t: Result<Tensor<3>, clearclip_model::InputError>) -> Vec<f32> {
    t.unwrap().into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn both_layouts_are_detected_with_the_same_architecture() {
    let device = Device::flex();
    let hf = load_fixture_model(CHECKPOINTS[0], &device);
    let oc = load_fixture_model(CHECKPOINTS[1], &device);
    assert_eq!(hf.layout, Layout::HuggingFace);
    assert_eq!(oc.layout, Layout::OpenClip);
    assert_eq!(hf.config, oc.config);
    let v = &hf.config.vision;
    assert_eq!((v.width, v.layers, v.heads, v.patch_size, v.grid_size, v.mlp_width, v.embed_dim), (128, 3, 2, 16, 4, 512, 64));
    let t = &hf.config.text;
    assert_eq!((t.vocab_size, t.context_length, t.width, t.layers, t.heads, t.mlp_width), (49408, 77, 64, 2, 1, 256));
}

#[test]
fn dense_features_match_reference_for_every_mode() {
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    for (device_name, device) in test_devices() {
        for checkpoint in CHECKPOINTS {
            let model = load_fixture_model(checkpoint, &device);
            for mode in DenseMode::ALL {
                let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input.clone(), [1, shape[0], shape[1], shape[2]]), &device);
                let features = read(model.vision.dense_features(pixels, &mode.last_block()));
                let (expected, _) = reference.f32(&format!("dense.{}_96x160", mode.name()));
                assert_close(&format!("{device_name} {checkpoint} {} 96x160", mode.name()), &features, &expected, FEATURE_TOLERANCE);
            }
            // Native 64x64 input: the positional embedding is used unresized.
            let (input64, _) = reference.f32("dense.input_64x64");
            let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input64, [1, 3, 64, 64]), &device);
            let features = read(model.vision.dense_features(pixels, &DenseMode::ClearClip.last_block()));
            let (expected, _) = reference.f32("dense.clearclip_64x64");
            assert_close(&format!("{device_name} {checkpoint} clearclip 64x64"), &features, &expected, FEATURE_TOLERANCE);
        }
    }
}

#[test]
fn half_precision_matches_pytorch_half_on_the_gpu() {
    let Some(device) = wgpu_device() else { return };
    if !Precision::F16.is_supported_on(&device) {
        assert!(!wgpu_required(), "the wgpu adapter has no shader-f16 (lavapipe has)");
        eprintln!("SKIPPED: the wgpu adapter has no shader-f16");
        return;
    }
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let prompts: Vec<&str> = reference.meta["text_prompts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let options = LoadOptions { precision: Precision::F16, ..LoadOptions::default() };
    for checkpoint in CHECKPOINTS {
        let model = load_clip(&read_fixture(checkpoint), options, &device).unwrap();
        for mode in DenseMode::ALL {
            let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input.clone(), [1, shape[0], shape[1], shape[2]]), &device);
            let ours = read(model.vision.dense_features(pixels, &mode.last_block()));
            let (theirs, _) = reference.f32(&format!("dense_f16.{}_96x160", mode.name()));
            let (exact, _) = reference.f32(&format!("dense.{}_96x160", mode.name()));
            assert_half_like_pytorch(&format!("{checkpoint} {} 96x160 f16", mode.name()), &ours, &theirs, &exact);
        }
        let text = model.text.encode(&tokenizer.encode_batch(&prompts).unwrap()).unwrap();
        let ours = text.into_data().try_into_vec::<f32>().unwrap();
        let (theirs, _) = reference.f32("text_f16.prompts");
        let (exact, _) = reference.f32("text.prompts");
        assert_half_like_pytorch(&format!("{checkpoint} text f16"), &ours, &theirs, &exact);
    }
}

#[test]
fn text_embeddings_match_reference() {
    let reference = Reference::load();
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let prompts: Vec<&str> = reference.meta["text_prompts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let (expected, _) = reference.f32("text.prompts");
    for (device_name, device) in test_devices() {
        for checkpoint in CHECKPOINTS {
            let model = load_fixture_model(checkpoint, &device);
            let text = model.text.encode(&tokenizer.encode_batch(&prompts).unwrap()).unwrap();
            let ours = text.into_data().try_into_vec::<f32>().unwrap();
            assert_close(&format!("{device_name} {checkpoint} text"), &ours, &expected, FEATURE_TOLERANCE);
        }
    }
}

/// A GPU pads each token batch to a multiple of 8 tokens (at most the
/// context) and projects the end-of-text features in blocks of 512 rows
/// (`text.rs`); the CPU backend does neither. Both must give the same
/// embeddings for batches whose longest prompt is 11 tokens, and 77 (cut).
#[test]
fn text_padded_on_the_gpu_equals_unpadded_on_the_cpu() {
    let Some(gpu) = wgpu_device() else { return };
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let long = format!("a photo of a {}cat.", "very ".repeat(80));
    let prompts = ["a cat.", "a photo of a horse on the green hill.", long.as_str()];
    for batch in [tokenizer.encode_batch(&prompts[..2]).unwrap(), tokenizer.encode_batch(&prompts).unwrap()] {
        assert!(!batch.len.is_multiple_of(8), "the batch must need padding: {} tokens", batch.len);
        for checkpoint in CHECKPOINTS {
            let embed = |device: &Device| load_fixture_model(checkpoint, device).text.encode(&batch).unwrap().into_data().try_into_vec::<f32>().unwrap();
            let label = format!("{checkpoint} text of {} tokens, wgpu vs CPU", batch.len);
            assert_close(&label, &embed(&gpu), &embed(&Device::flex()), FEATURE_TOLERANCE);
        }
    }
}

#[test]
fn half_precision_is_refused_where_it_cannot_run() {
    let options = LoadOptions { precision: Precision::F16, ..LoadOptions::default() };
    let err = load_clip(&read_fixture(CHECKPOINTS[1]), options, &Device::flex()).expect_err("the CPU backend has no f16 kernels");
    assert!(matches!(err, LoadError::Precision(Precision::F16)), "{err}");
    assert!(err.to_string().contains("shader-f16"), "{err}");
}

#[test]
fn a_knob_combination_no_mode_uses_matches_reference() {
    // k-k attention + neighbourhood bias (std 2), x + 0.5 * attn, then the FFN.
    let block = LastBlock {
        attention: AttentionKind::KeyKey,
        neighbourhood_std: Some(2.0),
        residual: Residual::Keep { attention_scale: 0.5 },
        ffn: true,
    };
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    let (expected, _) = reference.f32("dense.knobs_kk_std2_alpha0.5_ffn_96x160");
    for (device_name, device) in test_devices() {
        for checkpoint in CHECKPOINTS {
            let model = load_fixture_model(checkpoint, &device);
            let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input.clone(), [1, shape[0], shape[1], shape[2]]), &device);
            let features = read(model.vision.dense_features(pixels, &block));
            assert_close(&format!("{device_name} {checkpoint} {block}"), &features, &expected, FEATURE_TOLERANCE);
        }
    }
}

/// Each named mode written out as its knobs, the way a user sets them.
fn knobs_of(mode: DenseMode) -> (&'static str, Option<f32>, Option<f32>, bool) {
    match mode {
        DenseMode::Vanilla => ("q-k", None, Some(1.0), true),
        DenseMode::MaskClip => ("identity", None, None, false),
        DenseMode::Sclip => ("q-q+k-k", None, None, false),
        DenseMode::ClearClip => ("q-q", None, None, false),
        DenseMode::Naclip => ("k-k", Some(5.0), None, false),
    }
}

#[test]
fn knob_settings_reproduce_every_named_mode_exactly() {
    let device = Device::flex();
    let model = load_fixture_model(CHECKPOINTS[1], &device);
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input, [1, shape[0], shape[1], shape[2]]), &device);
    let kept = model.vision.encode_to_last_block(pixels).unwrap();
    for mode in DenseMode::ALL {
        let (attention, std, alpha, ffn) = knobs_of(mode);
        let block = LastBlock {
            attention: AttentionKind::from_name(attention).unwrap(),
            neighbourhood_std: std,
            residual: alpha.map_or(Residual::Skip, |attention_scale| Residual::Keep { attention_scale }),
            ffn,
        };
        assert_eq!(block, mode.last_block(), "{}", mode.name());
        assert_eq!(DenseMode::of(&block), Some(mode));
        // Same description, same numbers, bit for bit.
        let a = read(Ok(model.vision.dense_from_last_block(&kept, &block)));
        let b = read(Ok(model.vision.dense_from_last_block(&kept, &mode.last_block())));
        assert_eq!(a, b, "{}", mode.name());
    }
    // The modes really differ from each other on this input.
    let outputs: Vec<Vec<f32>> = DenseMode::ALL.iter().map(|m| read(Ok(model.vision.dense_from_last_block(&kept, &m.last_block())))).collect();
    for i in 0..outputs.len() {
        for j in i + 1..outputs.len() {
            let (diff, _) = largest_difference(&outputs[i], &outputs[j]);
            assert!(diff > 1e-2, "{} and {} agree to {diff}", DenseMode::ALL[i].name(), DenseMode::ALL[j].name());
        }
    }
}

#[test]
fn positional_embedding_resize_matches_pytorch_bicubic_with_scale_factor() {
    let reference = Reference::load();
    let model = load_fixture_model(CHECKPOINTS[1], &Device::flex());
    let v = &model.config.vision;
    // 448 x 672 input -> 28 x 42 grid from the 4 x 4 pre-training grid.
    let resized = resize_patch_positions(&model.vision.patch_positions, v.grid_size, v.width, v.patch_size, 448, 672).unwrap();
    let (expected, shape) = reference.f32("pos_embed.28x42");
    assert_eq!(shape, vec![28 * 42 + 1, v.width]);
    assert_close("interpolated patch positions", &resized, &expected[v.width..], 1e-5);
}

#[test]
fn tokenizer_matches_open_clip() {
    let reference = Reference::load();
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let cases = reference.meta["tokenizer_cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let mut expected: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        while expected.last() == Some(&0) {
            expected.pop();
        }
        let (ids, truncated) = tokenizer.encode_one(text).unwrap();
        assert_eq!(ids, expected, "{text:?}");
        assert_eq!(truncated, text.starts_with("long long"), "{text:?}");
    }
}

#[test]
fn token_batches_pad_to_the_longest_and_report_eot() {
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let batch = tokenizer.encode_batch(&["a photo of a cat.", "sky"]).unwrap();
    assert_eq!(batch.len, 8);
    assert_eq!(batch.eot, vec![7, 2]);
    assert_eq!(batch.ids[8..], [49406, 2390, 49407, 0, 0, 0, 0, 0]);
}

#[test]
fn token_batches_concatenate_as_if_encoded_together() {
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    let long = "word ".repeat(100);
    let parts = [vec!["sky", "a photo of a cat."], vec!["grass"], vec![long.as_str(), "x"]];
    let batches: Vec<_> = parts.iter().map(|texts| tokenizer.encode_batch(texts).unwrap()).collect();
    let all: Vec<&str> = parts.concat();
    assert_eq!(TokenBatch::concat(&batches), tokenizer.encode_batch(&all).unwrap());
    assert_eq!(TokenBatch::concat(&batches[..2]), tokenizer.encode_batch(&all[..3]).unwrap());
}

#[test]
fn a_tokenizer_that_is_not_clip_is_refused() {
    assert!(ClipTokenizer::from_json_bytes(b"{not json", 77).is_err());
    let json = String::from_utf8(tokenizer_json()).unwrap().replace("\"</w>\"", "\"\"");
    let err = ClipTokenizer::from_json_bytes(json.as_bytes(), 77).err().expect("must be refused");
    assert!(err.to_string().contains("CLIP"), "{err}");
}
