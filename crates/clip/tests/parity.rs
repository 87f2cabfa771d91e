//! The model against PyTorch: dense features of every mode, the positional
//! embedding resize, and tokenization, on the tiny seeded checkpoints
//! (`scripts/gen_fixtures.py`), in both tensor layouts, on every test device.

use burn::tensor::{Device, Tensor, TensorData};
use clearclip_fixtures::{assert_close, read_fixture, test_devices, tokenizer_json, Reference, CHECKPOINTS};
use clearclip_model::{load_clip, resize_patch_positions, Clip, ClipTokenizer, DenseMode, Layout, LoadOptions};

/// Features reach ~5 in magnitude; f32 on different kernels than PyTorch's.
const FEATURE_TOLERANCE: f32 = 1e-4;

fn load(name: &str, device: &Device) -> Clip {
    load_clip(&read_fixture(name), LoadOptions::default(), device).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn read(t: Tensor<3>) -> Vec<f32> {
    t.into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn both_layouts_are_detected_with_the_same_architecture() {
    let device = Device::flex();
    let hf = load(CHECKPOINTS[0], &device);
    let oc = load(CHECKPOINTS[1], &device);
    assert_eq!(hf.layout, Layout::HuggingFace);
    assert_eq!(oc.layout, Layout::OpenClip);
    assert_eq!(hf.config, oc.config);
    let v = &hf.config.vision;
    assert_eq!((v.width, v.layers, v.heads, v.patch_size, v.grid_size, v.mlp_width, v.embed_dim), (128, 3, 2, 16, 4, 512, 64));
    let t = &hf.config.text;
    assert_eq!((t.vocab_size, t.context_length, t.width, t.layers, t.heads, t.mlp_width), (49408, 77, 64, 2, 1, 256));
    // ln(100) stored in f16 and bf16 (4.5938) and exponentiated again.
    assert!((hf.logit_scale - 100.03).abs() < 0.01, "{}", hf.logit_scale);
    assert!((oc.logit_scale - 98.87).abs() < 0.01, "{}", oc.logit_scale);
}

#[test]
fn dense_features_match_reference_for_every_mode() {
    let reference = Reference::load();
    let (input, shape) = reference.f32("dense.input_96x160");
    for (device_name, device) in test_devices() {
        for checkpoint in CHECKPOINTS {
            let model = load(checkpoint, &device);
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
fn positional_embedding_resize_matches_pytorch_bicubic_with_scale_factor() {
    let reference = Reference::load();
    let model = load(CHECKPOINTS[1], &Device::flex());
    let v = &model.config.vision;
    // 448 x 672 input -> 28 x 42 grid from the 4 x 4 pre-training grid.
    let resized = resize_patch_positions(&model.vision.patch_positions, v.grid_size, v.width, v.patch_size, 448, 672);
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
    assert_eq!(batch.row(1), &[49406, 2390, 49407, 0, 0, 0, 0, 0]);
}

#[test]
fn a_tokenizer_that_is_not_clip_is_refused() {
    assert!(ClipTokenizer::from_json_bytes(b"{not json", 77).is_err());
    let json = String::from_utf8(tokenizer_json()).unwrap().replace("\"</w>\"", "\"\"");
    let err = ClipTokenizer::from_json_bytes(json.as_bytes(), 77).err().expect("must be refused");
    assert!(err.to_string().contains("CLIP"), "{err}");
}
