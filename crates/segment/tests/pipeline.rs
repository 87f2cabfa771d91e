//! The whole pipeline against the reference (official ClearCLIP code run in
//! PyTorch by `scripts/gen_fixtures.py`): prompts, class embeddings, the mmseg
//! resize, and the final probability maps of a real photo through the sliding
//! window, for both checkpoint layouts on every test device.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;

use burn::tensor::Device;
use clearclip_fixtures::{assert_close, label_agreement, load_fixture_model, read_fixture, strided, test_devices, tokenizer_json, Reference, CHECKPOINTS};
use clearclip_model::{ClipTokenizer, DenseMode};
use clearclip_segment::preprocess::{rescaled_size, resize_like_opencv};
use clearclip_segment::resample::Maps;
use clearclip_segment::prompts::OPENAI_IMAGENET_TEMPLATES;
use clearclip_segment::{decode_image, Batching, ClassList, Observer, Pamr, ProbabilityMaps, Progress, SegmentError, SegmentParams, Segmenter, Templates};
use image::RgbImage;

/// Tolerances: class embeddings are unit vectors; probabilities are in [0, 1].
const EMBEDDING_TOLERANCE: f32 = 1e-5;
const PROBABILITY_TOLERANCE: f32 = 1e-4;

fn segmenter(checkpoint: &str, device: &Device) -> Segmenter {
    let model = load_fixture_model(checkpoint, device);
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap();
    Segmenter::new(model, tokenizer)
}

fn chelsea() -> RgbImage {
    image::load_from_memory(&read_fixture("chelsea.png")).unwrap().to_rgb8()
}

#[test]
fn templates_are_the_reference_80() {
    let reference = Reference::load();
    let expected: Vec<&str> = reference.meta["templates"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(OPENAI_IMAGENET_TEMPLATES.to_vec(), expected);
}

#[test]
fn class_embeddings_match_reference() {
    let reference = Reference::load();
    let names: Vec<&str> = reference.meta["text_names"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    for (device_name, device) in test_devices() {
        for checkpoint in CHECKPOINTS {
            let mut seg = segmenter(checkpoint, &device);
            for (templates, key) in [(Templates::OpenAiImageNet, "text.templates80"), (Templates::Single, "text.single")] {
                let mut warnings = Vec::new();
                let (ours, encoded) = pollster::block_on(seg.class_embeddings(&names, templates, &mut |_: Progress| {}, &mut warnings)).unwrap();
                assert_eq!(encoded, names.len());
                let (expected, _) = reference.f32(key);
                assert_close(&format!("{device_name} {checkpoint} {key}"), &ours, &expected, EMBEDDING_TOLERANCE);
                // The last name is longer than the context in every template.
                assert_eq!(warnings.len(), 1, "{warnings:?}");
                assert!(warnings[0].contains("cut to 77 tokens"), "{warnings:?}");
                // Asked again, every name comes from the cache, with the same values.
                let (again, encoded) = pollster::block_on(seg.class_embeddings(&names, templates, &mut |_: Progress| {}, &mut Vec::new())).unwrap();
                assert_eq!((again, encoded), (ours, 0));
            }
        }
    }
}

#[test]
fn resize_is_bit_exact_with_opencv() {
    let reference = Reference::load();
    let image = chelsea();
    for case in ["default", "padded", "vanilla"] {
        let short = reference.meta["pipeline"][case]["short_side"].as_u64().unwrap_or(448) as u32;
        let (w, h) = rescaled_size(image.width(), image.height(), short, 2048);
        let ours = resize_like_opencv(&image, w, h);
        let (expected, shape) = reference.u8(&format!("pipeline.{case}.resized"));
        assert_eq!(shape, vec![h as usize, w as usize, 3], "{case}");
        let differing = ours.as_raw().iter().zip(&expected).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "{case}: {differing} bytes differ from cv2.resize");
    }
}

fn params_for(meta: &serde_json::Value) -> SegmentParams {
    let defaults = SegmentParams::default();
    let mode = meta["mode"].as_str().map(|m| DenseMode::from_name(m).unwrap()).unwrap_or(DenseMode::ClearClip);
    SegmentParams {
        short_side: meta["short_side"].as_u64().map_or(defaults.short_side, |v| v as u32),
        crop: meta["crop"].as_u64().map_or(defaults.crop, |v| v as usize),
        stride: meta["stride"].as_u64().map_or(defaults.stride, |v| v as usize),
        background_threshold: meta["prob_thd"].as_f64().map_or(0.0, |v| v as f32),
        last_block: mode.last_block(),
        pamr: meta["pamr_steps"].as_u64().map(|iterations| Pamr { iterations: iterations as usize, ..Pamr::default() }),
        ..defaults
    }
}

#[test]
fn whole_image_probabilities_match_reference() {
    let reference = Reference::load();
    let image = chelsea();
    for (device_name, device) in test_devices() {
        for checkpoint in CHECKPOINTS {
            let mut seg = segmenter(checkpoint, &device);
            for case in ["default", "padded", "vanilla", "naclip_pamr"] {
                let meta = &reference.meta["pipeline"][case];
                let (classes, _) = ClassList::parse(meta["classes"].as_str().unwrap()).unwrap();
                let params = params_for(meta);
                let mut windows_seen = 0;
                let result = pollster::block_on(seg.segment(&image, &classes, &params, &mut |p: Progress| {
                    if let Progress::Window { done, .. } = p {
                        windows_seen = done;
                    }
                }))
                .unwrap();
                assert_eq!((result.width, result.height), image.dimensions());
                assert_eq!(windows_seen, result.windows);
                let (expected, shape) = reference.f32(&format!("pipeline.{case}.probs"));
                assert_eq!(shape, vec![classes.len(), 300, 451]);
                let what = format!("{device_name} {checkpoint} {case} ({} windows)", result.windows);
                assert_close(&what, &result.probs, &expected, PROBABILITY_TOLERANCE);

                // Labels agree wherever the decision is not a near tie.
                let (labels, _) = reference.u8(&format!("pipeline.{case}.labels"));
                let plane = 300 * 451;
                let mut compared = 0;
                for (i, (&ours, &theirs)) in result.labels.iter().zip(&labels).enumerate() {
                    let mut p: Vec<f32> = (0..classes.len()).map(|c| expected[c * plane + i]).collect();
                    p.sort_by(|a, b| b.total_cmp(a));
                    let near_threshold = (p[0] - params.background_threshold).abs() < 1e-3;
                    if p[0] - p[1] > 1e-3 && !near_threshold {
                        assert_eq!(ours, theirs, "{what}: label of pixel {i}");
                        compared += 1;
                    }
                }
                assert!(compared > plane * 9 / 10, "{what}: only {compared} clear pixels");
            }
        }
    }
}

/// A real JPEG photo (1411x1411, 4:2:0) larger than 448 on its short side, so
/// the resize is a downscale: decoding, resize and pipeline together against
/// `cv2.imread` + the official pipeline, in ClearCLIP and vanilla modes.
#[test]
fn a_real_jpeg_photo_matches_reference_end_to_end() {
    let reference = Reference::load();
    let meta = &reference.meta["pipeline_jpeg"];
    let stride = meta["stride"].as_u64().unwrap() as usize;
    let image = decode_image(&read_fixture(meta["file"].as_str().unwrap())).unwrap();
    let (w, h) = (image.width() as usize, image.height() as usize);
    for (device_name, device) in test_devices() {
        let mut seg = segmenter(CHECKPOINTS[0], &device);
        for (case, case_meta) in meta["cases"].as_object().unwrap() {
            let (classes, _) = ClassList::parse(case_meta["classes"].as_str().unwrap()).unwrap();
            let params = params_for(case_meta);
            let result = pollster::block_on(seg.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
            let resized = case_meta["resized"].as_array().unwrap();
            assert_eq!(result.resized.1 as u64, resized[0].as_u64().unwrap());
            let what = format!("{device_name} JPEG {case} ({} windows)", result.windows);
            let (expected, shape) = reference.f32(&format!("pipeline_jpeg.{case}.probs"));
            assert_eq!(shape, vec![classes.len(), h.div_ceil(stride), w.div_ceil(stride)]);
            let ours = strided(&result.probs, classes.len(), h, w, stride);
            let max = assert_close(&what, &ours, &expected, PROBABILITY_TOLERANCE);
            let (labels, _) = reference.u8(&format!("pipeline_jpeg.{case}.labels"));
            let agreement = label_agreement(&strided(&result.labels, 1, h, w, stride), &labels);
            eprintln!("{what}: max abs diff {max:.2e}, labels {:.4}% equal", 100.0 * agreement);
            assert!(agreement >= 0.999, "{what}: only {:.4}% of labels equal", 100.0 * agreement);
        }
    }
}

#[test]
fn pamr_matches_reference() {
    let reference = Reference::load();
    let (guide, shape) = reference.f32("pamr.guide");
    let (masks, mask_shape) = reference.f32("pamr.masks");
    let (expected, _) = reference.f32("pamr.refined");
    let size = (shape[1], shape[2]);
    let guide = Maps::from_vec(guide, shape[0], size).unwrap();
    let mut masks = Maps::from_vec(masks, mask_shape[0], size).unwrap();
    Pamr::default().refine(&guide, &mut masks);
    // Masks are ~N(0, 1); ten averaging steps in f32.
    assert_close("PAMR (10 iterations, dilations 8 and 16)", masks.as_slice(), &expected, 1e-5);
}

#[test]
fn a_mode_switch_reuses_the_first_blocks_and_gives_the_same_result_as_a_fresh_run() {
    let device = Device::flex();
    let image = chelsea();
    let (classes, _) = ClassList::parse("cat; grass, lawn; wall").unwrap();
    let base = SegmentParams { short_side: 160, crop: 112, stride: 56, ..SegmentParams::default() };
    // A re-run reuses the first blocks' output and the last block's q, k, v
    // projection of it; a fresh run computes both: the same probabilities, bit
    // for bit, on the host's kernels and on a GPU's.
    for (device_name, device) in test_devices() {
        let mut kept = segmenter(CHECKPOINTS[1], &device);
        let first = pollster::block_on(kept.segment(&image, &classes, &base, &mut |_: Progress| {})).unwrap();
        assert!(!first.reused_windows);
        for mode in DenseMode::ALL {
            let params = SegmentParams { last_block: mode.last_block(), ..base.clone() };
            let reused = pollster::block_on(kept.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
            assert!(reused.reused_windows, "{device_name}: {}", mode.name());
            let fresh = pollster::block_on(segmenter(CHECKPOINTS[1], &device).segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
            assert!(!fresh.reused_windows);
            assert_eq!(reused.probs, fresh.probs, "{device_name}: {}", mode.name());
        }
    }
    let mut kept = segmenter(CHECKPOINTS[1], &device);
    pollster::block_on(kept.segment(&image, &classes, &base, &mut |_: Progress| {})).unwrap();
    // Another crop, or another image, runs every block again.
    let other_crop = SegmentParams { crop: 96, ..base.clone() };
    assert!(!pollster::block_on(kept.segment(&image, &classes, &other_crop, &mut |_: Progress| {})).unwrap().reused_windows);
    let mut flipped = image.clone();
    image::imageops::flip_horizontal_in_place(&mut flipped);
    assert!(!pollster::block_on(kept.segment(&flipped, &classes, &other_crop, &mut |_: Progress| {})).unwrap().reused_windows);
    // The threshold and PAMR act after the windows: still reused.
    let pamr = SegmentParams { pamr: Some(Pamr::default()), background_threshold: 0.3, ..other_crop };
    assert!(pollster::block_on(kept.segment(&flipped, &classes, &pamr, &mut |_: Progress| {})).unwrap().reused_windows);
}

#[test]
fn the_warm_up_changes_no_result_and_keeps_the_caches() {
    let image = chelsea();
    let (classes, _) = ClassList::parse("cat; grass, lawn; wall").unwrap();
    let params = SegmentParams { short_side: 160, crop: 112, stride: 56, ..SegmentParams::default() };
    // On a GPU the warm-up also runs the other modes' last blocks, a window
    // alone through the first block, and PAMR's step on a small blank.
    for (device_name, device) in test_devices() {
        let mut cold = segmenter(CHECKPOINTS[1], &device);
        let expected = pollster::block_on(cold.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
        let ms = pollster::block_on(cold.warm_up(&params)).unwrap();
        assert!(ms >= 0.0, "{device_name}");
        let after = pollster::block_on(cold.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
        assert!(after.reused_windows && after.timings.classes_encoded == 0, "{device_name}: the caches survive the warm-up");
        assert_eq!(after.probs, expected.probs, "{device_name}");
        let mut warm = segmenter(CHECKPOINTS[1], &device);
        pollster::block_on(warm.warm_up(&params)).unwrap();
        let first = pollster::block_on(warm.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
        assert!(!first.reused_windows, "{device_name}: the warm-up's blank is not the image");
        assert_eq!(first.probs, expected.probs, "{device_name}");
    }
}

/// Stops the run once `stop_after` windows are done; counts the pauses.
struct CancelAfter {
    stop_after: usize,
    windows: usize,
    pauses: usize,
}

impl Observer for CancelAfter {
    fn progress(&mut self, progress: Progress) -> ControlFlow<()> {
        if let Progress::Window { done, .. } = progress {
            self.windows = done;
        }
        if self.windows >= self.stop_after { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }

    fn pause(&mut self) -> Pin<Box<dyn Future<Output = ()> + '_>> {
        self.pauses += 1;
        Box::pin(std::future::ready(()))
    }
}

#[test]
fn a_cancelled_run_stops_between_windows_and_the_next_run_is_whole() {
    let device = Device::flex();
    let image = chelsea();
    let (classes, _) = ClassList::parse("cat; grass, lawn; wall").unwrap();
    let params = SegmentParams { short_side: 160, crop: 112, stride: 56, templates: Templates::Single, ..SegmentParams::default() };
    // One window per batch, as the page's CPU fallback asks.
    let mut seg = segmenter(CHECKPOINTS[1], &device).with_window_batching(Batching::AtMost(1));
    let whole = pollster::block_on(seg.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
    assert!(whole.windows > 3);

    let mut observer = CancelAfter { stop_after: 2, windows: 0, pauses: 0 };
    let err = pollster::block_on(seg.segment(&image, &classes, &params, &mut observer)).unwrap_err();
    assert!(matches!(err, SegmentError::Cancelled), "{err}");
    assert!(!err.is_fatal());
    assert_eq!(observer.windows, 2, "stopped right after the window that asked");
    // 4 class names, the window-phase start, 2 windows: one pause before each report.
    assert_eq!(observer.pauses, 4 + 1 + 2);

    // The cancelled run dropped the kept windows; the next run computes them all again.
    let again = pollster::block_on(seg.segment(&image, &classes, &params, &mut |_: Progress| {})).unwrap();
    assert!(!again.reused_windows);
    assert_eq!(again.probs, whole.probs);
}

/// Windows encoded one by one, two by two or all together, and the
/// probability maps read back whole or every third pixel: one result.
#[test]
fn batches_of_windows_and_sampled_probability_maps_give_the_same_result() {
    let image = chelsea();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let (classes, _) = ClassList::parse("cat; grass, lawn; wall").unwrap();
    let params = SegmentParams { short_side: 160, crop: 112, stride: 56, templates: Templates::Single, ..SegmentParams::default() };
    for (device_name, device) in test_devices() {
        let run = |seg: Segmenter| {
            let mut seg = seg;
            let mut windows_seen = Vec::new();
            let result = pollster::block_on(seg.segment(&image, &classes, &params, &mut |p: Progress| {
                if let Progress::Window { done, .. } = p {
                    windows_seen.push(done);
                }
            }))
            .unwrap();
            (result, windows_seen)
        };
        let (single, seen) = run(segmenter(CHECKPOINTS[1], &device).with_window_batching(Batching::AtMost(1)));
        assert_eq!(seen, (0..=single.windows).collect::<Vec<_>>());
        let n = single.windows;
        assert!(n > 4, "{n} windows");
        let pairs = std::iter::once(0).chain((2..=n).step_by(2)).chain((n % 2 == 1).then_some(n)).collect();
        for (batch, reports) in [(Batching::AtMost(2), pairs), (Batching::Memory, vec![0, n])] {
            let (batched, seen) = run(segmenter(CHECKPOINTS[1], &device).with_window_batching(batch));
            assert_eq!(seen, reports, "{device_name}: progress after each batch");
            assert_close(&format!("{device_name} batches of {batch:?}"), &batched.probs, &single.probs, 1e-5);
            let agreement = label_agreement(&batched.labels, &single.labels);
            assert!(agreement >= 0.999, "{device_name}: {agreement}");
        }
        // Class names: two per text batch, or all in one.
        let names = ["cat", "grass", "lawn", "wall", "sky"];
        let embed = |batching| {
            let mut seg = segmenter(CHECKPOINTS[1], &device).with_name_batching(batching);
            pollster::block_on(seg.class_embeddings(&names, Templates::OpenAiImageNet, &mut |_: Progress| {}, &mut Vec::new())).unwrap().0
        };
        assert_close(&format!("{device_name} names two by two"), &embed(Batching::AtMost(2)), &embed(Batching::Memory), 1e-6);

        let (sampled, _) = run(segmenter(CHECKPOINTS[1], &device).with_probability_maps(ProbabilityMaps::EveryNth(3)));
        assert_eq!((sampled.probs_stride, sampled.probs_size()), (3, (w.div_ceil(3) as u32, h.div_ceil(3) as u32)));
        assert_eq!(sampled.labels.len(), w * h, "labels stay full size");
        let (full, _) = run(segmenter(CHECKPOINTS[1], &device));
        assert_eq!(sampled.labels, full.labels);
        assert_eq!(sampled.probs, strided(&full.probs, classes.len(), h, w, 3));
    }
}

#[test]
fn bad_images_and_settings_are_refused() {
    let mut seg = segmenter(CHECKPOINTS[1], &Device::flex());
    let (classes, _) = ClassList::parse("cat;dog").unwrap();
    let tiny = RgbImage::new(15, 40);
    let err = pollster::block_on(seg.segment(&tiny, &classes, &SegmentParams::default(), &mut |_: Progress| {})).unwrap_err();
    assert!(err.to_string().contains("at least one patch"), "{err}");
    let params = SegmentParams { stride: 500, ..SegmentParams::default() };
    let err = pollster::block_on(seg.segment(&chelsea(), &classes, &params, &mut |_: Progress| {})).unwrap_err();
    assert!(err.to_string().contains("stride"), "{err}");
    let huge = RgbImage::new(6400, 6400);
    let err = pollster::block_on(seg.segment(&huge, &classes, &SegmentParams::default(), &mut |_: Progress| {})).unwrap_err();
    // 40.96 megapixels, rounded up to a tenth.
    assert_eq!(err.to_string(), "the image is 6400x6400 (41.0 megapixels); the limit is 40 megapixels: downscale it first");
    let large = RgbImage::new(4100, 4000);
    let pamr = SegmentParams { pamr: Some(Pamr::default()), ..SegmentParams::default() };
    let err = pollster::block_on(seg.segment(&large, &classes, &pamr, &mut |_: Progress| {})).unwrap_err();
    assert_eq!(err.to_string(), "PAMR is limited to 16 megapixels; this image has 16.4: downscale it or turn PAMR off");
}

#[test]
fn hostile_labels_give_a_result_or_a_clear_message() {
    let mut seg = segmenter(CHECKPOINTS[1], &Device::flex());
    let image = chelsea();
    // Small windows and one template: this is about the labels, not the numbers.
    let params = SegmentParams { short_side: 112, crop: 112, stride: 112, templates: Templates::Single, ..SegmentParams::default() };
    let mut run = |labels: &str| {
        let (classes, warnings) = ClassList::parse(labels).map_err(|e| e.to_string())?;
        let result = pollster::block_on(seg.segment(&image, &classes, &params, &mut |_: Progress| {})).map_err(|e| e.to_string())?;
        assert_eq!(result.class_names.len(), classes.len());
        assert!(result.labels.iter().all(|&l| (l as usize) < classes.len()));
        assert!(result.probs.iter().all(|p| p.is_finite() && (0.0..=1.0).contains(p)));
        Ok::<_, String>((result, warnings))
    };

    // The most classes an 8-bit label map holds, and one more.
    let names: Vec<String> = (0..255).map(|i| format!("thing {i}")).collect();
    let (result, _) = run(&names.join("; ")).unwrap();
    assert_eq!(result.class_names[254], "thing 254");
    let err = run(&format!("{}; one more", names.join("; "))).unwrap_err();
    assert!(err.contains("256 classes") && err.contains("at most 255"), "{err}");

    // A 10,000-character name: cut to the context, with a warning.
    let (result, _) = run(&format!("{}; sky", "very ".repeat(2000))).unwrap();
    assert!(result.warnings.iter().any(|w| w.contains("cut to 77 tokens")), "{:?}", result.warnings);

    // Right-to-left, combining characters, emoji: encoded like any text, names kept as typed.
    let (result, _) = run("قطة; e\u{301}te\u{301}; 🐈‍⬛; grass").unwrap();
    assert_eq!(result.class_names[0], "قطة");
    assert_eq!(result.class_names[1], "e\u{301}te\u{301}");

    // Markup is just text to the pipeline (the page shows it as text; see web/tests).
    let (result, _) = run("<img src=x onerror=alert(1)>; <b>sky</b>").unwrap();
    assert_eq!(result.class_names[0], "<img src=x onerror=alert(1)>");

    // Duplicate synonyms: a warning, and the class still counts once.
    let (result, warnings) = run("cat, cat, Cat; sky").unwrap();
    assert_eq!(result.class_names.len(), 2);
    assert!(warnings.iter().any(|w| w.contains("appears twice in class 1")), "{warnings:?}");
}

#[test]
fn a_window_too_large_for_one_gpu_buffer_is_refused_before_any_work() {
    for (device_name, device) in test_devices() {
        let model = load_fixture_model(CHECKPOINTS[1], &device);
        let vision = model.config.vision.clone();
        let mut seg = Segmenter::new(model, ClipTokenizer::from_json_bytes(&tokenizer_json(), 77).unwrap());
        let Some(limit) = seg.max_tensor_bytes() else {
            // The workspace's tests build the kernels (the CLI asks for them);
            // `cargo test -p clearclip-segment` alone does not.
            assert!(device_name == "cpu (flex)" || !clearclip_segment::GPU_KERNELS, "{device_name}: no limit");
            println!("{device_name}: no limit in this build (GPU kernels: {})", clearclip_segment::GPU_KERNELS);
            continue;
        };
        // The smallest square window, in whole patches, whose attention
        // scores ([1, heads, tokens, tokens] f32) are over the limit.
        let bytes = |side: usize| {
            let tokens = 1 + (side / vision.patch_size).pow(2);
            4 * (vision.heads * tokens * tokens).max(tokens * vision.mlp_width) as u64
        };
        let side = (1..).map(|n| n * vision.patch_size).find(|&side| bytes(side) > limit).unwrap();
        // chelsea is 451x300: with the short side at `side` (and room for the
        // long one), a crop of `side` is a side x side window.
        let params = SegmentParams { short_side: side as u32, long_side_cap: 2 * side as u32, crop: side, stride: side, templates: Templates::Single, ..SegmentParams::default() };
        let (classes, _) = ClassList::parse("cat; sky").unwrap();
        let err = pollster::block_on(seg.segment(&chelsea(), &classes, &params, &mut |_: Progress| {})).unwrap_err();
        let tokens = 1 + (side / vision.patch_size).pow(2);
        let expected = format!(
            "a window of {side}x{side} px is {tokens} tokens, whose attention scores would take {} MiB, more than the {} MiB this GPU holds in one buffer: use a smaller crop or short side",
            bytes(side).div_ceil(1 << 20),
            limit >> 20
        );
        assert_eq!(err.to_string(), expected, "{device_name}");
        assert!(!err.is_fatal(), "{device_name}: a refusal leaves the model usable");
        // Refused before any work: the model still segments at the defaults.
        let params = SegmentParams { short_side: 112, crop: 112, stride: 112, templates: Templates::Single, ..SegmentParams::default() };
        let result = pollster::block_on(seg.segment(&chelsea(), &classes, &params, &mut |_: Progress| {})).unwrap();
        assert_eq!(result.labels.len(), 451 * 300);
        println!("{device_name}: limit {limit} bytes; refused {side}x{side} windows ({tokens} tokens)");
    }
}
