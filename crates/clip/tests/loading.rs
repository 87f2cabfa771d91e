//! Loading: dtypes, and clear errors (never panics) for files that are not
//! usable CLIP checkpoints.

use burn::tensor::{Device, Tensor, TensorData};
use clearclip_fixtures::{load_model, read_fixture, widen_to_f32, CHECKPOINTS};
use clearclip_model::{inspect_config, CheckpointLoader, Clip, DenseMode, LoadError, LoadOptions};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

fn load(bytes: &[u8]) -> Result<Clip, LoadError> {
    load_model(bytes, &Device::flex())
}

/// Re-serialise a checkpoint, changing tensors through `edit` (None drops it).
fn rewrite(bytes: &[u8], edit: impl Fn(&str, Dtype, &[usize], &[u8]) -> Option<(Dtype, Vec<usize>, Vec<u8>)>) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut kept: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in st.tensors() {
        if let Some((dtype, shape, data)) = edit(&name, view.dtype(), view.shape(), view.data()) {
            kept.push((name, dtype, shape, data));
        }
    }
    let views: Vec<(String, TensorView)> =
        kept.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize(views, None).unwrap()
}

fn features(model: &Clip) -> Vec<f32> {
    let device = model.vision.device();
    let input: Vec<f32> = (0..3 * 48 * 80).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input, [1, 3, 48, 80]), &device);
    model.vision.dense_features(pixels, &DenseMode::ClearClip.last_block()).unwrap().into_data().try_into_vec::<f32>().unwrap()
}

#[test]
fn f32_f16_and_bf16_files_give_identical_models() {
    for checkpoint in CHECKPOINTS {
        let bytes = read_fixture(checkpoint);
        let as_f32 = rewrite(&bytes, |_, dtype, shape, data| match dtype {
            Dtype::F16 | Dtype::BF16 => Some((Dtype::F32, shape.to_vec(), widen_to_f32(dtype, data))),
            _ => Some((dtype, shape.to_vec(), data.to_vec())),
        });
        // The fixture weights are exactly representable in f16 and bf16.
        assert_eq!(features(&load(&bytes).unwrap()), features(&load(&as_f32).unwrap()), "{checkpoint}");
    }
}

/// Bytes before the data section: the 8-byte length and the JSON header.
fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

#[test]
fn truncated_and_foreign_files_are_refused_with_a_reason() {
    let bytes = read_fixture(CHECKPOINTS[0]);
    for cut in [0, 7, 100, header_end(&bytes), bytes.len() / 2, bytes.len() - 1] {
        let err = load(&bytes[..cut]).expect_err("truncated file must fail");
        let expected = (cut >= header_end(&bytes)).then_some(bytes.len());
        assert!(
            matches!(err, LoadError::Truncated { received, expected: e, .. } if received == cut && e == expected),
            "cut at {cut}: {err:?}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(b"tail");
    assert!(matches!(load(&longer), Err(LoadError::TrailingBytes { extra: 4 })));
    let png = read_fixture("chelsea.png");
    assert!(matches!(load(&png), Err(LoadError::NotSafetensors(_))));
    assert!(matches!(load(&[0; 8]), Err(LoadError::NotSafetensors(_))), "an empty header");
    let other = rewrite(&bytes, |name, dtype, shape, data| {
        name.starts_with("text_model").then(|| (dtype, shape.to_vec(), data.to_vec()))
    });
    let err = load(&other).expect_err("a text-only file is not CLIP");
    assert!(matches!(err, LoadError::NotClip { .. }), "{err}");
    assert!(err.to_string().contains("visual.class_embedding"), "{err}");
}

#[test]
fn a_file_that_is_not_clip_is_refused_by_its_header_alone() {
    let bytes = read_fixture(CHECKPOINTS[1]);
    let text_only = rewrite(&bytes, |name, dtype, shape, data| (!name.starts_with("visual")).then(|| (dtype, shape.to_vec(), data.to_vec())));
    let mut loader = CheckpointLoader::new(LoadOptions::default(), &Device::flex());
    let header = header_end(&text_only);
    loader.push(&text_only[..header - 1]).expect("an incomplete header is not judged yet");
    let err = loader.push(&text_only[header - 1..header]).expect_err("refused once the header is complete");
    assert!(matches!(err, LoadError::NotClip { .. }), "{err}");
    // Everything after a refusal is refused too, and says why.
    let again = loader.push(&text_only[header..]).expect_err("refused for good");
    assert!(matches!(&again, LoadError::AlreadyFailed(reason) if reason.contains("not a CLIP checkpoint")), "{again}");
    assert!(matches!(loader.finish(), Err(LoadError::AlreadyFailed(_))));
    // A PNG is refused by its first 8 bytes.
    let mut loader = CheckpointLoader::new(LoadOptions::default(), &Device::flex());
    assert!(matches!(loader.push(&read_fixture("chelsea.png")[..8]), Err(LoadError::NotSafetensors(_))));
}

#[test]
fn streaming_in_any_chunk_size_gives_the_same_model_holding_one_tensor_at_most() {
    for checkpoint in CHECKPOINTS {
        let bytes = read_fixture(checkpoint);
        let whole = features(&load(&bytes).unwrap());
        // Tensors are decoded to f32 as they arrive.
        let largest = SafeTensors::deserialize(&bytes).unwrap().tensors().iter().map(|(_, v)| v.shape().iter().product::<usize>() * 4).max().unwrap();
        for chunk in [7, 4099, 1 << 20] {
            let mut loader = CheckpointLoader::new(LoadOptions::default(), &Device::flex());
            let mut most_held = 0;
            for piece in bytes.chunks(chunk) {
                loader.push(piece).unwrap();
                most_held = most_held.max(loader.buffered_bytes());
                if let Some(len) = loader.expected_len() {
                    assert_eq!(len, bytes.len(), "the length the header announces");
                }
            }
            // Tensors split across chunks were gathered, but never more than one at a time.
            assert!(most_held > 0 && most_held < largest.max(header_end(&bytes)), "{checkpoint}, chunks of {chunk}: held {most_held}");
            assert_eq!(features(&loader.finish().unwrap()), whole, "{checkpoint}, chunks of {chunk}");
        }
    }
}

/// Write a safetensors file by hand, with the tensors' bytes in the order given
/// (the `safetensors` crate always writes them sorted).
fn write_in_order(tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for (name, dtype, shape, data) in tensors {
        let dtype = serde_json::to_value(dtype).unwrap();
        header.insert(name.clone(), serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]}));
        offset += data.len();
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json);
    for (_, _, _, data) in tensors {
        out.extend(data);
    }
    out
}

#[test]
fn tensors_in_any_file_order_load_the_same() {
    for checkpoint in CHECKPOINTS {
        let bytes = read_fixture(checkpoint);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut tensors: Vec<_> =
            st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
        // Reverse name order: text before vision, v/k before q, biases after weights.
        tensors.sort_by(|a, b| b.0.cmp(&a.0));
        let reordered = write_in_order(&tensors);
        let file_order = |b: &[u8]| SafeTensors::read_metadata(b).unwrap().1.offset_keys();
        assert_ne!(file_order(&reordered), file_order(&bytes));
        let mut loader = CheckpointLoader::new(LoadOptions::default(), &Device::flex());
        for piece in reordered.chunks(65_537) {
            loader.push(piece).unwrap();
        }
        assert_eq!(features(&loader.finish().unwrap()), features(&load(&bytes).unwrap()), "{checkpoint}");
    }
}

#[test]
fn missing_tensors_are_all_named() {
    for checkpoint in CHECKPOINTS {
        let bytes = read_fixture(checkpoint);
        let dropped = |name: &str| name.contains(".1.") && (name.contains("mlp") || name.contains("ln_2") || name.contains("layer_norm2"));
        let partial = rewrite(&bytes, |name, dtype, shape, data| (!dropped(name)).then(|| (dtype, shape.to_vec(), data.to_vec())));
        let expected: Vec<String> = SafeTensors::deserialize(&bytes).unwrap().names().into_iter().filter(|n| dropped(n)).map(str::to_string).collect();
        assert!(expected.len() >= 12, "{expected:?}");
        match load(&partial) {
            Err(LoadError::MissingTensors { names, .. }) => {
                let mut names = names.clone();
                names.sort();
                let mut expected = expected.clone();
                expected.sort();
                assert_eq!(names, expected, "{checkpoint}");
            }
            other => panic!("{checkpoint}: expected MissingTensors, got {:?}", other.err()),
        }
    }
}

#[test]
fn wrong_shapes_and_dtypes_are_reported() {
    let bytes = read_fixture(CHECKPOINTS[1]);
    let wrong_shape = rewrite(&bytes, |name, dtype, shape, data| {
        if name == "visual.transformer.resblocks.2.mlp.c_fc.bias" {
            Some((dtype, vec![shape[0] - 1], data[..data.len() - 2].to_vec()))
        } else {
            Some((dtype, shape.to_vec(), data.to_vec()))
        }
    });
    let err = load(&wrong_shape).expect_err("shape mismatch");
    assert!(matches!(err, LoadError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("resblocks.2.mlp.c_fc.bias"), "{err}");

    let wrong_dtype = rewrite(&bytes, |name, dtype, shape, data| {
        if name == "ln_final.weight" {
            Some((Dtype::I16, shape.to_vec(), data.to_vec()))
        } else {
            Some((dtype, shape.to_vec(), data.to_vec()))
        }
    });
    let err = load(&wrong_dtype).expect_err("dtype");
    assert!(matches!(err, LoadError::DType { .. }), "{err}");
}

#[test]
fn inspect_reads_the_architecture_from_the_header_alone() {
    let bytes = read_fixture(CHECKPOINTS[0]);
    let header = header_end(&bytes);
    assert!(matches!(inspect_config(&bytes[..header - 1]), Err(LoadError::Truncated { .. })));
    let (config, _) = inspect_config(&bytes[..header]).unwrap();
    assert_eq!(config.vision.patch_size, 16);
    assert_eq!(config.text.context_length, 77);
}
