//! Property tests of the streaming loader, seeded and bounded: a valid file
//! split at random boundaries (down to single bytes) loads bit-identically
//! holding at most one tensor; a file cut at any tensor boundary is refused
//! naming the tensor; hostile headers (dtypes, shapes, offsets, duplicate
//! names, bad UTF-8, deep nesting, `__metadata__`, huge lengths) are refused
//! with a message and never panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use burn::tensor::{Device, Tensor, TensorData};
use clearclip_fixtures::{load_model, read_fixture, SeededRng, CHECKPOINTS};
use clearclip_model::{CheckpointLoader, Clip, ClipTokenizer, DenseMode, LoadError, LoadOptions};
use safetensors::SafeTensors;

/// Dense image features and text features: two outputs that use every tensor.
fn outputs(model: &Clip) -> (Vec<f32>, Vec<f32>) {
    let device = model.vision.device();
    let input: Vec<f32> = (0..3 * 32 * 48).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let pixels: Tensor<4> = Tensor::from_data(TensorData::new(input, [1, 3, 32, 48]), &device);
    let dense = model.vision.dense_features(pixels, &DenseMode::ClearClip.last_block()).unwrap();
    let tokenizer = ClipTokenizer::from_json_bytes(&clearclip_fixtures::tokenizer_json(), 77).unwrap();
    let text = model.text.encode(&tokenizer.encode_batch(&["a photo of a cat.", "sky"]).unwrap()).unwrap();
    let read = |data: TensorData| data.try_into_vec::<f32>().unwrap();
    (read(dense.into_data()), read(text.into_data()))
}

fn header_end(bytes: &[u8]) -> usize {
    8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize
}

/// Push `bytes` in the given pieces; returns the model (or the first error) and the most bytes held.
fn stream(bytes: &[u8], cuts: &[usize]) -> (Result<Clip, LoadError>, usize) {
    let mut loader = CheckpointLoader::new(LoadOptions::default(), &Device::flex());
    let mut most_held = 0;
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if let Err(e) = loader.push(&bytes[start..end]) {
            return (Err(e), most_held);
        }
        most_held = most_held.max(loader.buffered_bytes());
        start = end;
    }
    (loader.finish(), most_held)
}

#[test]
fn random_splits_down_to_single_bytes_load_bit_identically_holding_one_tensor_at_most() {
    for checkpoint in CHECKPOINTS {
        let bytes = read_fixture(checkpoint);
        let whole = outputs(&load_model(&bytes, &Device::flex()).unwrap());
        // The stated cap: the largest tensor the header declares, as f32, or the header itself.
        let largest_f32 = SafeTensors::deserialize(&bytes).unwrap().tensors().iter().map(|(_, v)| 4 * v.shape().iter().product::<usize>()).max().unwrap();
        let cap = largest_f32.max(header_end(&bytes));
        for seed in 1..=4u64 {
            let mut rng = SeededRng::new(seed);
            let mut cuts = Vec::new();
            let mut at = 0usize;
            loop {
                // Mostly small pieces (1..64 bytes) near the header and tensor edges, some large ones.
                let step = match rng.below(8) {
                    0..=3 => 1 + rng.below(64) as usize,
                    4..=6 => 1 + rng.below(70_000) as usize,
                    _ => 1 + rng.below(3 << 20) as usize,
                };
                at += step;
                if at >= bytes.len() {
                    break;
                }
                cuts.push(at);
            }
            // The whole header one byte at a time.
            let header: Vec<usize> = (1..header_end(&bytes)).collect();
            cuts.retain(|&c| c >= header_end(&bytes));
            let cuts: Vec<usize> = header.into_iter().chain(cuts).collect();
            let (model, most_held) = stream(&bytes, &cuts);
            let model = model.unwrap_or_else(|e| panic!("{checkpoint}, seed {seed}: {e}"));
            assert!(most_held <= cap, "{checkpoint}, seed {seed}: held {most_held} bytes, cap {cap}");
            assert!(outputs(&model) == whole, "{checkpoint}, seed {seed}: not bit-identical");
        }
    }
}

#[test]
fn a_file_cut_at_any_tensor_boundary_is_refused_naming_the_tensor() {
    let bytes = read_fixture(CHECKPOINTS[1]);
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let data_start = header_end(&bytes);
    let tensors = metadata.offset_keys();
    assert!(tensors.len() > 50);
    for (i, name) in tensors.iter().enumerate() {
        let (start, end) = metadata.info(name).unwrap().data_offsets;
        // At its first byte, one byte in (or its end, for an empty tensor), and one byte short of its end.
        for cut in [start, (start + 1).min(end), end.saturating_sub(1).max(start)] {
            let cut = data_start + cut;
            let result = catch_unwind(AssertUnwindSafe(|| stream(&bytes[..cut], &[]).0));
            let err = result.unwrap_or_else(|_| panic!("panicked for a cut at {cut} (tensor {i}, {name})")).expect_err("refused");
            assert!(matches!(&err, LoadError::Truncated { tensor: Some(t), .. } if t == name), "cut at {cut}: {err}");
            assert!(err.to_string().contains(name.as_str()) && err.to_string().contains("truncated"), "{err}");
        }
    }
}

/// A safetensors file from a header written by hand (any JSON bytes) and a data section.
fn file(header: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(data);
    out
}

/// The fixture's header as JSON, edited by `edit`, with the same data section.
fn edited(bytes: &[u8], edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> Vec<u8> {
    let end = header_end(bytes);
    let mut header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes[8..end]).unwrap();
    edit(&mut header);
    file(&serde_json::to_vec(&header).unwrap(), &bytes[end..])
}

/// Load `bytes` in chunks: never a panic, always an error; returns its message.
fn refused(what: &str, bytes: &[u8]) -> String {
    let result = catch_unwind(AssertUnwindSafe(|| stream(bytes, &(1..bytes.len().min(4096)).step_by(97).collect::<Vec<_>>()).0));
    match result {
        Err(_) => panic!("{what}: the loader panicked"),
        Ok(Ok(_)) => panic!("{what}: loaded"),
        Ok(Err(e)) => {
            let message = e.to_string();
            assert!(message.len() > 20, "{what}: an unclear message: {message}");
            message
        }
    }
}

const TENSOR: &str = "visual.transformer.resblocks.1.ln_1.weight";

fn set(header: &mut serde_json::Map<String, serde_json::Value>, name: &str, field: &str, value: serde_json::Value) {
    header[name].as_object_mut().unwrap().insert(field.to_string(), value);
}

#[test]
fn hostile_headers_are_refused_with_a_message_and_never_panic() {
    use serde_json::json;
    let bytes = read_fixture(CHECKPOINTS[1]);
    let offsets = |h: &serde_json::Map<String, serde_json::Value>, name: &str| -> (u64, u64) {
        let o = &h[name]["data_offsets"];
        (o[0].as_u64().unwrap(), o[1].as_u64().unwrap())
    };
    let mut cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("an integer dtype", edited(&bytes, |h| set(h, TENSOR, "dtype", json!("I16"))), Some(TENSOR)),
        ("an unknown dtype", edited(&bytes, |h| set(h, TENSOR, "dtype", json!("Q4_K"))), None),
        ("a shape that does not match the bytes", edited(&bytes, |h| set(h, TENSOR, "shape", json!([3, 1000]))), Some(TENSOR)),
        ("a shape of the wrong rank", edited(&bytes, |h| set(h, TENSOR, "shape", json!([1, 128]))), Some(TENSOR)),
        ("a shape whose product overflows", edited(&bytes, |h| set(h, TENSOR, "shape", json!([u64::MAX, u64::MAX]))), Some(TENSOR)),
        ("offsets past the end", edited(&bytes, |h| {
            let (a, b) = offsets(h, TENSOR);
            set(h, TENSOR, "data_offsets", json!([a + (1 << 40), b + (1 << 40)]));
        }), None),
        ("offsets near u64::MAX", edited(&bytes, |h| set(h, TENSOR, "data_offsets", json!([u64::MAX - 1, u64::MAX]))), None),
        ("reversed offsets", edited(&bytes, |h| {
            let (a, b) = offsets(h, TENSOR);
            set(h, TENSOR, "data_offsets", json!([b, a]));
        }), Some(TENSOR)),
        ("overlapping offsets", edited(&bytes, |h| {
            let (a, b) = offsets(h, TENSOR);
            set(h, TENSOR, "data_offsets", json!([a + 2, b + 2]));
        }), Some(TENSOR)),
        ("a gap between tensors", edited(&bytes, |h| {
            h.remove(TENSOR);
        }), None),
        ("metadata that is not strings", edited(&bytes, |h| {
            h.insert("__metadata__".into(), json!({"format": {"nested": [1, 2]}}));
        }), None),
        ("a header length of u64::MAX", { let mut b = bytes.clone(); b[..8].copy_from_slice(&u64::MAX.to_le_bytes()); b }, None),
        ("a header length one past the file", { let mut b = bytes.clone(); b[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes()); b }, None),
        ("a header that is not UTF-8", file(&[b'{', 0xff, 0xfe, b'}'], &[]), None),
        ("a header that is not an object", file(b"[1, 2, 3]", &[]), None),
        ("an empty header", file(b"", &[]), None),
        ("JSON nested 100000 deep", file(&[vec![b'['; 100_000], vec![b']'; 100_000]].concat(), &[]), None),
        ("an object nested 100000 deep", {
            let mut h = b"{\"a\":".repeat(100_000);
            h.extend(b"1");
            h.extend(vec![b'}'; 100_000]);
            file(&h, &[])
        }, None),
    ];
    // A duplicate name: the JSON text holds the tensor twice.
    let end = header_end(&bytes);
    let text = std::str::from_utf8(&bytes[8..end]).unwrap();
    let mut first = serde_json::from_str::<serde_json::Value>(text).unwrap()[TENSOR].clone();
    first["data_offsets"] = serde_json::json!([0, 256]);
    let duplicated = format!("{{\"{TENSOR}\":{first},{}", &text[1..]);
    cases.push(("a duplicate tensor name", file(duplicated.as_bytes(), &bytes[end..]), Some(TENSOR)));
    for (what, hostile, names) in &cases {
        let message = refused(what, hostile);
        if let Some(name) = names {
            assert!(message.contains(name), "{what}: the message does not name `{name}`: {message}");
        }
        println!("{what}: {message}");
    }
    // Metadata strings are allowed and ignored.
    let with_metadata = edited(&bytes, |h| {
        h.insert("__metadata__".into(), json!({"format": "pt", "note": "x".repeat(10_000)}));
    });
    assert!(stream(&with_metadata, &[]).0.is_ok(), "__metadata__ with strings loads");
}
