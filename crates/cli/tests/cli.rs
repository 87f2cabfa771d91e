//! The `clearclip` binary end to end on the bundled photo with the tiny
//! fixture model: the files it writes, and its refusals of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use clearclip_fixtures::{assert_close, fixtures_dir, label_agreement, strided, wgpu_required, Reference, CHECKPOINTS};

fn clearclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clearclip")).args(args).output().expect("run clearclip")
}

fn fixture(name: &str) -> String {
    fixtures_dir().join(name).to_string_lossy().into_owned()
}

fn segment_args<'a>(weights: &'a str, image: &'a str, labels: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["segment", "--weights", weights, "--labels", labels, "--image", image, "--out", out]
}

/// Shape and data of a float32 `.npy` file.
fn read_npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"), "{header}");
    let shape_text = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_text.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    let data = bytes[10 + len..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (shape, data)
}

/// A request for chelsea.png on `checkpoint`: one of the official pipeline's
/// requests in the reference (its classes and settings, and its results), or
/// a reference request's settings with classes of its own.
struct Request {
    weights: String,
    image: String,
    labels: String,
    /// The settings, as the CLI's flags.
    flags: &'static [&'static str],
    /// Its key under `pipeline` in the reference, and the reference; `None`
    /// for classes of its own, which the reference has no results for.
    expected: Option<(&'static str, Reference)>,
}

/// The settings of the reference's "padded" request, as the CLI's flags.
const PADDED_FLAGS: &[&str] = &["--short-side", "100", "--crop", "72", "--stride", "40", "--background-threshold", "0.4"];

impl Request {
    /// The reference's default request: three windows of 448 px.
    fn default(checkpoint: &str) -> Request {
        Request::load(checkpoint, "default", &[])
    }

    /// The reference's "padded" request: six windows of 72 px, which the
    /// patch grid pads, a class with a synonym, and a background threshold.
    /// The tests that run one GPU routine after another take it: a process
    /// on lavapipe segments it in 5.4 s against the default's 13.3 with
    /// burn's matrix products, 11-13 s against 20 with cubek's double-unit.
    fn padded(checkpoint: &str) -> Request {
        Request::load(checkpoint, "padded", PADDED_FLAGS)
    }

    /// The padded request's settings with `labels` for classes: for tests
    /// that compare two runs with each other, not with the reference.
    fn padded_with_labels(checkpoint: &str, labels: &str) -> Request {
        Request { weights: fixture(checkpoint), image: fixture("chelsea.png"), labels: labels.into(), flags: PADDED_FLAGS, expected: None }
    }

    fn load(checkpoint: &str, name: &'static str, flags: &'static [&'static str]) -> Request {
        let reference = Reference::load();
        let labels = reference.meta["pipeline"][name]["classes"].as_str().unwrap().to_string();
        Request { weights: fixture(checkpoint), image: fixture("chelsea.png"), labels, flags, expected: Some((name, reference)) }
    }

    /// `segment`'s arguments for this request, writing to `out`.
    fn args<'a>(&'a self, out: &'a str) -> Vec<&'a str> {
        let mut args = segment_args(&self.weights, &self.image, &self.labels, out);
        args.extend(self.flags);
        args
    }

    /// The reference's key for this request, and the reference.
    fn expected(&self) -> (&'static str, &Reference) {
        let (name, reference) = self.expected.as_ref().expect("a request with classes of its own has no reference results");
        (name, reference)
    }

    /// The reference's probabilities (classes x height x width).
    fn expected_probs(&self) -> Vec<f32> {
        let (name, reference) = self.expected();
        reference.f32(&format!("pipeline.{name}.probs")).0
    }

    /// The reference's label map (height x width).
    fn expected_labels(&self) -> Vec<u8> {
        let (name, reference) = self.expected();
        reference.u8(&format!("pipeline.{name}.labels")).0
    }
}

#[test]
fn segments_the_bundled_photo_and_writes_every_file() {
    let request = Request::default(CHECKPOINTS[0]);
    let out = tempfile::tempdir().unwrap();
    let out_dir: PathBuf = out.path().join("result");
    let output = clearclip(&request.args(out_dir.to_str().unwrap()));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("3 windows") && stderr.contains("text ") && stderr.contains("total"), "{stderr}");

    let (shape, probs) = read_npy(&out_dir.join("probs.npy"));
    assert_eq!(shape, vec![4, 300, 451]);
    assert_close("CLI probs.npy vs reference", &probs, &request.expected_probs(), 1e-4);

    let labels_png = image::open(out_dir.join("labels.png")).unwrap();
    assert_eq!(labels_png.color(), image::ColorType::L8);
    assert_eq!((labels_png.width(), labels_png.height()), (451, 300));
    assert!(labels_png.to_luma8().pixels().all(|p| p[0] < 4));
    let overlay = image::open(out_dir.join("overlay.png")).unwrap();
    assert_eq!((overlay.width(), overlay.height()), (451, 300));
    for i in 0..4 {
        let heatmap = image::open(out_dir.join(format!("heatmap_{i}.png"))).unwrap();
        assert_eq!((heatmap.width(), heatmap.height()), (451, 300));
    }
    assert!(!out_dir.join("heatmap_4.png").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&out_dir).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.')).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn synonyms_threshold_and_mode_flags_are_applied() {
    let request = Request::padded(CHECKPOINTS[1]);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("r");
    let output = clearclip(&request.args(dir.to_str().unwrap()));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let (shape, probs) = read_npy(&dir.join("probs.npy"));
    assert_eq!(shape, vec![3, 300, 451]);
    assert_close("CLI padded/synonyms/threshold", &probs, &request.expected_probs(), 1e-4);
}

#[test]
fn several_modes_reuse_the_first_blocks_and_knobs_reproduce_a_mode() {
    let reference = Reference::load();
    let tmp = tempfile::tempdir().unwrap();
    let (weights, image) = (fixture(CHECKPOINTS[1]), fixture("chelsea.png"));
    let meta = &reference.meta["pipeline"]["naclip_pamr"];
    let labels = meta["classes"].as_str().unwrap();
    let geometry = ["--short-side", "160", "--crop", "112", "--stride", "56", "--pamr"];

    // Two modes in one run: the second re-runs only the last block.
    let both = tmp.path().join("both");
    let mut args = segment_args(&weights, &image, labels, both.to_str().unwrap());
    args.extend(geometry);
    args.extend(["--mode", "clearclip,naclip"]);
    let output = clearclip(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("last block only").count(), 1, "{stderr}");
    let (_, naclip) = read_npy(&both.join("naclip").join("probs.npy"));
    let (expected, _) = reference.f32("pipeline.naclip_pamr.probs");
    assert_close("CLI naclip + PAMR after clearclip", &naclip, &expected, 1e-4);
    assert!(both.join("clearclip").join("overlay.png").exists());

    // NACLIP spelled as knobs on top of ClearCLIP gives the same numbers, bit for bit.
    let knobs = tmp.path().join("knobs");
    let mut args = segment_args(&weights, &image, labels, knobs.to_str().unwrap());
    args.extend(geometry);
    args.extend(["--mode", "clearclip", "--attention", "k-k", "--neighbourhood-std", "5", "--residual-alpha", "none", "--no-ffn"]);
    let output = clearclip(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(read_npy(&knobs.join("probs.npy")).1, naclip);
}

#[test]
fn a_preset_sets_classes_threshold_and_windows() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("voc");
    let (weights, image) = (fixture(CHECKPOINTS[1]), fixture("chelsea.png"));
    let args = [
        "segment", "--weights", &weights, "--image", &image, "--out", out.to_str().unwrap(), "--preset", "voc21",
        "--templates", "single", "--short-side", "112",
    ];
    let output = clearclip(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let (shape, probs) = read_npy(&out.join("probs.npy"));
    assert_eq!(shape, vec![21, 300, 451]);
    // VOC's threshold 0.5: pixels whose best class is below it are background (0).
    let labels = image::open(out.join("labels.png")).unwrap().to_luma8();
    let plane = 300 * 451;
    for (i, p) in labels.pixels().enumerate() {
        let best = (0..21).map(|c| probs[c * plane + i]).fold(0.0f32, f32::max);
        if best < 0.5 - 1e-6 {
            assert_eq!(p[0], 0, "pixel {i}: best {best}");
        }
    }
    let list = clearclip(&["presets"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("voc21") && text.contains("cityscapes") && text.contains("171 classes"), "{text}");
}

/// A real JPEG photo, downscaled by the 448 resize: decoding as cv2.imread
/// does, then the pipeline, in both modes the fixture holds.
#[test]
fn a_real_jpeg_photo_gives_the_reference_probabilities() {
    let reference = Reference::load();
    let meta = &reference.meta["pipeline_jpeg"];
    let stride = meta["stride"].as_u64().unwrap() as usize;
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("jpeg");
    let (weights, image) = (fixture(CHECKPOINTS[1]), fixture(meta["file"].as_str().unwrap()));
    let labels = meta["cases"]["clearclip"]["classes"].as_str().unwrap().to_string();
    let mut args = segment_args(&weights, &image, &labels, out_dir.to_str().unwrap());
    args.extend(["--mode", "clearclip,vanilla"]);
    let output = clearclip(&args);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for mode in ["clearclip", "vanilla"] {
        let (shape, probs) = read_npy(&out_dir.join(mode).join("probs.npy"));
        assert_eq!(shape, vec![4, 1411, 1411]);
        let (expected, _) = reference.f32(&format!("pipeline_jpeg.{mode}.probs"));
        assert_close(&format!("CLI JPEG {mode}"), &strided(&probs, 4, 1411, 1411, stride), &expected, 1e-4);
        let labels_png = image::open(out_dir.join(mode).join("labels.png")).unwrap().to_luma8().into_raw();
        let (expected_labels, _) = reference.u8(&format!("pipeline_jpeg.{mode}.labels"));
        let agreement = label_agreement(&strided(&labels_png, 1, 1411, 1411, stride), &expected_labels);
        assert!(agreement >= 0.999, "CLI JPEG {mode}: {:.4}% of labels equal", 100.0 * agreement);
    }
}

/// Runs the CLI, which must fail with `message` and write nothing; returns its stderr.
fn assert_refused(args: &[&str], message: &str, out_dir: &Path) -> String {
    let output = clearclip(args);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "should fail: {args:?}");
    assert!(stderr.contains(message), "expected {message:?} in: {stderr}");
    assert!(!out_dir.exists(), "nothing may be written on failure ({args:?})");
    stderr
}

#[test]
fn bad_input_gets_a_clear_message_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();
    let (weights, image) = (fixture(CHECKPOINTS[0]), fixture("chelsea.png"));

    let not_image = tmp.path().join("notes.png");
    std::fs::write(&not_image, b"these are not pixels").unwrap();
    assert_refused(&segment_args(&weights, not_image.to_str().unwrap(), "cat", out_s), "not an image", &out);

    let corrupt = tmp.path().join("corrupt.png");
    let png = std::fs::read(&image).unwrap();
    std::fs::write(&corrupt, &png[..png.len() / 3]).unwrap();
    assert_refused(&segment_args(&weights, corrupt.to_str().unwrap(), "cat", out_s), "cannot decode", &out);

    assert_refused(&segment_args(&weights, &image, " ; ", out_s), "no classes given", &out);
    assert_refused(&segment_args(&weights, &image, "cat;;dog", out_s), "class 2 is empty", &out);
    assert_refused(&segment_args("/nonexistent/w.safetensors", &image, "cat", out_s), "cannot read weights", &out);

    let truncated = tmp.path().join("truncated.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&segment_args(truncated.to_str().unwrap(), &image, "cat", out_s), "truncated", &out);
    assert_refused(&segment_args(&image, &image, "cat", out_s), "not a readable safetensors file", &out);

    let mut knob = segment_args(&weights, &image, "cat", out_s);
    knob.extend(["--mode", "maskclip", "--neighbourhood-std", "5"]);
    assert_refused(&knob, "identity attention has no scores", &out);
    let mut knob = segment_args(&weights, &image, "cat", out_s);
    knob.extend(["--mode", "clearclip,sclip", "--no-ffn"]);
    assert_refused(&knob, "apply to one --mode", &out);
    let mut knob = segment_args(&weights, &image, "cat", out_s);
    knob.extend(["--attention", "q-v"]);
    assert_refused(&knob, "unknown attention", &out);
    let mut knob = segment_args(&weights, &image, "cat", out_s);
    knob.extend(["--preset", "imagenet"]);
    assert_refused(&knob, "unknown preset", &out);

    // Settings that cannot run are refused before the weights are read (the
    // weights here do not exist), each with one message naming the setting.
    for (flags, message) in [
        (&["--stride", "500"][..], "a stride of 500 px, larger than the crop of 448 px"),
        (&["--stride", "0"], "the stride must be at least 1 px"),
        (&["--short-side", "0"], "the short side must be between 1 and the long-side cap of 2048 px, not 0"),
        (&["--logit-scale", "nan"], "the logit scale must be a positive number, not NaN"),
        (&["--background-threshold", "2"], "the background threshold must be between 0 and 1, not 2"),
        (&["--mode", "naclip", "--pamr", "--pamr-iterations", "1000000"], "PAMR runs at most 100 iterations, not 1000000"),
    ] {
        let args = [&segment_args("/nonexistent/w.safetensors", &image, "cat", out_s)[..], flags].concat();
        let stderr = assert_refused(&args, message, &out);
        assert_eq!(stderr.matches(message).count(), 1, "said once: {stderr}");
    }
    // An output folder that cannot be made is refused before the weights are read.
    let args = segment_args("/nonexistent/w.safetensors", &image, "cat", not_image.to_str().unwrap());
    let stderr = String::from_utf8_lossy(&clearclip(&args).stderr).into_owned();
    assert!(stderr.contains("is a file, not a folder"), "{stderr}");
    assert_eq!(std::fs::read(&not_image).unwrap(), b"these are not pixels", "the file is kept");
    // The crop is checked against the model's patch once the model is known.
    let args = [&segment_args(&weights, &image, "cat", out_s)[..], &["--crop", "8", "--stride", "8"]].concat();
    assert_refused(&args, "the crop must be at least the model's patch (16 px), not 8", &out);

    let small = tmp.path().join("small.png");
    image::RgbImage::new(12, 30).save(&small).unwrap();
    assert_refused(&segment_args(&weights, small.to_str().unwrap(), "cat", out_s), "at least one patch", &out);
}

#[test]
fn duplicate_classes_warn_but_run() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dup");
    let (weights, image) = (fixture(CHECKPOINTS[0]), fixture("chelsea.png"));
    let args = segment_args(&weights, &image, "cat;dog;cat", out.to_str().unwrap());
    let output = clearclip(&[&args[..], &["--short-side", "64", "--crop", "64", "--stride", "64", "--templates", "single"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("warning: \"cat\" is in class 1 and class 3"), "{stderr}");
    assert_eq!(read_npy(&out.join("probs.npy")).0, vec![3, 300, 451]);
}

#[test]
fn inspect_prints_the_architecture() {
    let output = clearclip(&["inspect", "--weights", &fixture(CHECKPOINTS[1])]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(stdout.contains("OpenClip layout") && stdout.contains("patch_size: 16"), "{stdout}");
}

#[test]
fn gpu_device_gives_the_same_numbers_as_cpu() {
    let request = Request::default(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("gpu");
    let mut args = request.args(out.to_str().unwrap());
    args.extend(["--device", "gpu"]);
    let output = clearclip(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if skip_without_gpu(&output) {
        return;
    }
    assert!(output.status.success(), "{stderr}");
    let (_, probs) = read_npy(&out.join("probs.npy"));
    assert_close("CLI --device gpu vs reference", &probs, &request.expected_probs(), 1e-4);
}

#[test]
fn every_gpu_matmul_routine_segments_like_the_reference() {
    let request = Request::padded(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();
    let expected = request.expected_probs();
    for routine in ["simple-unit", "simple-unit-small", "double-unit", "double-unit-small", "gemm", "tiled", "tiled-small", "tiled-wide"] {
        let out = tmp.path().join(routine);
        let mut args = request.args(out.to_str().unwrap());
        args.extend(["--device", "gpu", "--gpu-matmul", routine]);
        let output = clearclip(&args);
        if skip_without_gpu(&output) {
            return;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{routine}: {stderr}");
        // Every product of the model went through the routine.
        let counts = stderr.lines().find_map(|l| l.strip_prefix(&format!("--gpu-matmul {routine}: "))).unwrap_or_else(|| panic!("{stderr}"));
        let (products, declined) = counts.split_once(" products, ").unwrap();
        assert!(products.parse::<usize>().unwrap() > 0 && declined.starts_with("0 declined"), "{routine}: {counts}");
        let (_, probs) = read_npy(&out.join("probs.npy"));
        // The tolerance of --device gpu with burn's routine.
        assert_close(&format!("CLI --gpu-matmul {routine} vs reference"), &probs, &expected, 1e-4);
    }
    // A routine for each kind of product: each kind's products went through its own.
    let out = tmp.path().join("mixed");
    let mut args = request.args(out.to_str().unwrap());
    args.extend(["--device", "gpu", "--gpu-matmul", "attention=simple-unit,projections=tiled"]);
    let output = clearclip(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for kind in ["projections=tiled", "attention=simple-unit"] {
        let counts = stderr.lines().find_map(|l| l.strip_prefix(&format!("--gpu-matmul {kind}: "))).unwrap_or_else(|| panic!("{kind}: {stderr}"));
        let (products, declined) = counts.split_once(" products, ").unwrap();
        assert!(products.parse::<usize>().unwrap() > 0 && declined.starts_with("0 declined"), "{kind}: {counts}");
    }
    let (_, probs) = read_npy(&out.join("probs.npy"));
    assert_close("CLI --gpu-matmul projections=tiled,attention=simple-unit vs reference", &probs, &expected, 1e-4);

    let out = tmp.path().join("cpu");
    let args = request.args(out.to_str().unwrap());
    assert_refused(&[&args[..], &["--gpu-matmul", "gemm"]].concat(), "--gpu-matmul chooses a routine of --device gpu", &out);
    let unknown = ["--device", "gpu", "--gpu-matmul", "fastest"];
    assert_refused(&[&args[..], &unknown].concat(), "unknown routine \"fastest\"; one of burn, simple-unit", &out);
    let unknown_kind = ["--device", "gpu", "--gpu-matmul", "weights=tiled"];
    assert_refused(&[&args[..], &unknown_kind].concat(), "unknown kind of product \"weights\"; one of projections, attention", &out);
}

/// `--gpu-merge tensor-ops` (burn's operations) and the default kernels give
/// the same maps on the GPU, with PAMR and without; on the CPU the flag is refused.
/// The padded request's settings, with classes of its own: the two are
/// compared with each other, not with the reference.
#[test]
fn gpu_merge_kernels_equal_tensor_ops() {
    let tmp = tempfile::tempdir().unwrap();
    let request = Request::padded_with_labels(CHECKPOINTS[1], "cat; grass, lawn; sky");
    for pamr in [false, true] {
        let maps = |merge: &str| {
            let out = tmp.path().join(format!("{merge}-{pamr}"));
            let mut args = request.args(out.to_str().unwrap());
            args.extend(["--device", "gpu", "--gpu-merge", merge]);
            if pamr {
                args.extend(["--mode", "naclip", "--pamr", "--pamr-iterations", "2"]);
            }
            let output = clearclip(&args);
            if skip_without_gpu(&output) {
                return None;
            }
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            let labels = image::open(out.join("labels.png")).unwrap().to_luma8().into_raw();
            Some((read_npy(&out.join("probs.npy")).1, labels))
        };
        let (Some((kernel_probs, kernel_labels)), Some((ops_probs, ops_labels))) = (maps("kernels"), maps("tensor-ops")) else { return };
        assert_close(&format!("--gpu-merge kernels vs tensor-ops (PAMR: {pamr})"), &kernel_probs, &ops_probs, 1e-6);
        assert!(kernel_labels == ops_labels, "labels differ (PAMR: {pamr})");
    }
    let out = tmp.path().join("refused");
    let args = request.args(out.to_str().unwrap());
    assert_refused(&[&args[..], &["--gpu-merge", "tensor-ops"]].concat(), "--gpu-merge chooses how --device gpu merges", &out);
    let unknown = ["--device", "gpu", "--gpu-merge", "tensor"];
    assert_refused(&[&args[..], &unknown].concat(), "unknown merge \"tensor\"; one of kernels, tensor-ops", &out);
}

/// Windows encoded together give the windows' results one at a time:
/// chelsea.png has 3 windows, so batches of 2 and 1, then all 3 in one (the
/// default).
#[test]
fn batched_windows_segment_like_the_reference() {
    let request = Request::default(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();
    let expected = request.expected_probs();
    let probs = |batch: &str, batches: usize| {
        let out = tmp.path().join(format!("batch-{batch}"));
        let mut args = request.args(out.to_str().unwrap());
        args.extend(["--window-batch", batch]);
        let output = clearclip(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && stderr.contains(&format!("3 windows in {batches} batches")), "{stderr}");
        read_npy(&out.join("probs.npy")).1
    };
    let one_by_one = probs("1", 3);
    for (batch, batches) in [("2", 2), ("memory", 1)] {
        let batched = probs(batch, batches);
        assert_close(&format!("CLI --window-batch {batch} vs reference"), &batched, &expected, 1e-4);
        assert_close(&format!("CLI --window-batch {batch} vs 1"), &batched, &one_by_one, 1e-5);
    }
    let out = tmp.path().join("refused");
    let args = request.args(out.to_str().unwrap());
    for (flag, bad) in [("--window-batch", "0"), ("--name-batch", "many")] {
        assert_refused(&[&args[..], &[flag, bad]].concat(), &format!("a batch is a count of at least 1 or \"memory\", not \"{bad}\""), &out);
    }
}

#[test]
fn flash_attention_segments_like_the_reference() {
    let request = Request::padded(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("flash");
    let mut args = request.args(out.to_str().unwrap());
    args.extend(["--device", "gpu", "--gpu-attention", "flash-unit"]);
    let output = clearclip(&args);
    if skip_without_gpu(&output) {
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // Every block of the text tower and of the image tower's first L-1 ran
    // flash attention.
    let counts = stderr.lines().find_map(|l| l.strip_prefix("--gpu-attention flash-unit: ")).unwrap_or_else(|| panic!("{stderr}"));
    let (flashed, declined) = counts.split_once(" attentions, ").unwrap();
    assert!(flashed.parse::<usize>().unwrap() > 0 && declined.starts_with("0 declined"), "{counts}");
    let (_, probs) = read_npy(&out.join("probs.npy"));
    // The tolerance of --device gpu with the scores materialised.
    assert_close("CLI --gpu-attention flash-unit vs reference", &probs, &request.expected_probs(), 1e-4);

    let out = tmp.path().join("refused");
    let args = request.args(out.to_str().unwrap());
    assert_refused(&[&args[..], &["--gpu-attention", "flash-unit"]].concat(), "--gpu-attention chooses a routine of --device gpu", &out);
    let unknown = ["--device", "gpu", "--gpu-attention", "flash"];
    assert_refused(&[&args[..], &unknown].concat(), "unknown attention routine \"flash\"; one of scores, flash-unit", &out);
}

/// The towers' softmax, layer norms, QuickGELU, residual sums, head splits and merges as one kernel each (the
/// default) and as burn's operations (`--gpu-layers tensor-ops`) segment
/// alike, and like the reference; each reports how many ran as kernels.
#[test]
fn gpu_layer_kernels_segment_like_tensor_ops() {
    let request = Request::padded(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();
    let probs = |layers: &str| {
        let out = tmp.path().join(layers);
        let mut args = request.args(out.to_str().unwrap());
        args.extend(["--device", "gpu", "--gpu-layers", layers]);
        let output = clearclip(&args);
        if skip_without_gpu(&output) {
            return None;
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{stderr}");
        let counts = stderr.lines().find_map(|l| l.strip_prefix(&format!("--gpu-layers {layers}: "))).unwrap_or_else(|| panic!("{stderr}")).to_string();
        Some((read_npy(&out.join("probs.npy")).1, counts))
    };
    let (Some((kernels, counts)), Some((tensor_ops, none))) = (probs("kernels"), probs("tensor-ops")) else { return };
    assert!(!counts.starts_with("0 ") && !counts.contains(", 0 "), "every kind ran as a kernel: {counts}");
    assert_eq!(none, "0 softmaxes, 0 layer norms, 0 QuickGELUs, 0 residual sums, 0 head splits, 0 value products into merged heads as one kernel each");
    assert_close("CLI --gpu-layers kernels vs reference", &kernels, &request.expected_probs(), 1e-4);
    // The two differ in the order of each row's sums only (5.7e-7 on one
    // machine's lavapipe, whose code follows the CPU's vector units).
    assert_close("CLI --gpu-layers kernels vs tensor-ops", &kernels, &tensor_ops, 2e-6);

    let out = tmp.path().join("refused");
    let args = request.args(out.to_str().unwrap());
    assert_refused(&[&args[..], &["--gpu-layers", "tensor-ops"]].concat(), "--gpu-layers chooses how --device gpu computes the layers", &out);
    let unknown = ["--device", "gpu", "--gpu-layers", "fused"];
    assert_refused(&[&args[..], &unknown].concat(), "unknown way to compute the layers \"fused\"; one of kernels, tensor-ops", &out);
}

#[test]
fn bench_matmul_runs_and_checks_every_routine() {
    let weights = fixture(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("matmul.json");
    let output = clearclip(&["bench-matmul", "--weights", &weights, "--crop", "64", "--runs", "2", "--repeat", "2", "--json-out", json.to_str().unwrap()]);
    if skip_without_gpu(&output) {
        return;
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("the JSON report");
    // The adapter wgpu chose, named as it names itself (lavapipe: "llvmpipe ...").
    let device = report["device"].as_str().unwrap();
    assert!(device.starts_with("gpu (wgpu<wgsl>): ") && device.contains("driver"), "{device}");
    let products = report["products"].as_array().unwrap();
    assert_eq!(products.len(), 6, "{products:?}");
    let routines = report["routines"].as_array().unwrap();
    let names: Vec<_> = routines.iter().map(|r| r["routine"].as_str().unwrap()).collect();
    assert_eq!(names, ["burn", "simple-unit", "simple-unit-small", "double-unit", "double-unit-small", "gemm", "tiled", "tiled-small", "tiled-wide"]);
    for r in routines {
        // Every routine takes every product of the model (none falls back to burn's).
        assert_eq!(r["errors"].as_array().unwrap().len(), 0, "{r}");
        assert!(r["ms"].as_array().unwrap().iter().all(|ms| ms.as_f64().unwrap() > 0.0), "{r}");
        assert!(r["perImageMs"].as_f64().unwrap() > 0.0, "{r}");
        // f32 products of random operands in [-1, 1), against the CPU backend.
        let error = r["maxRelativeError"].as_f64().unwrap();
        assert!(error < 1e-5, "{}: {error}", r["routine"]);
    }
    // Every routine is exact here, so the fastest exact one is the fastest.
    let per_image = |r: &serde_json::Value| r["perImageMs"].as_f64().unwrap();
    let fastest = routines.iter().min_by(|a, b| per_image(a).total_cmp(&per_image(b))).unwrap();
    assert_eq!(report["fastestExact"], fastest["routine"], "{report}");
    // And for each kind of product, the fastest at that kind's products, as
    // --gpu-matmul takes the choice; its time is theirs over all blocks.
    let attention: Vec<bool> = products.iter().map(|p| p.as_str().unwrap().starts_with("q k^T") || p.as_str().unwrap().starts_with("weights v")).collect();
    assert_eq!(attention.iter().filter(|a| **a).count(), 2, "{products:?}");
    let kind_ms = |r: &serde_json::Value, of_attention: bool| -> f64 {
        r["ms"].as_array().unwrap().iter().zip(&attention).filter(|(_, a)| **a == of_attention).map(|(ms, _)| ms.as_f64().unwrap()).sum()
    };
    let fastest_for = |of_attention: bool| routines.iter().min_by(|a, b| kind_ms(a, of_attention).total_cmp(&kind_ms(b, of_attention))).unwrap();
    let (projections, attention_routine) = (fastest_for(false), fastest_for(true));
    let choice = match projections["routine"] == attention_routine["routine"] {
        true => projections["routine"].as_str().unwrap().to_string(),
        false => format!("projections={},attention={}", projections["routine"].as_str().unwrap(), attention_routine["routine"].as_str().unwrap()),
    };
    assert_eq!(report["fastestByKind"].as_str(), Some(choice.as_str()), "{report}");
    let layers = report["layers"].as_f64().unwrap();
    let choice_ms = (kind_ms(projections, false) + kind_ms(attention_routine, true)) * layers;
    assert!((report["fastestByKindMs"].as_f64().unwrap() - choice_ms).abs() <= 1e-9 * choice_ms, "{report}");

    // The same report as a Markdown table on stdout.
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains(&format!("| product | {} |", names.join(" | "))), "{table}");
    assert!(table.contains("|---|---:|---:|---:|---:|---:|---:|"), "{table}");
    for product in products {
        assert!(table.contains(&format!("| {} | ", product.as_str().unwrap())), "{table}");
    }
    assert!(table.contains(&format!("fastest within 1e-5 of the CPU: {}", fastest["routine"].as_str().unwrap())), "{table}");
    assert!(table.contains(&format!("fastest for each kind of product within 1e-5 of the CPU: {choice} (")), "{table}");
}

/// Whether `output` failed for want of a wgpu adapter (and the test may be
/// skipped: not where `CLEARCLIP_REQUIRE_WGPU=1`, as `scripts/test.sh` sets).
fn skip_without_gpu(output: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let missing = !output.status.success() && stderr.contains("no usable GPU");
    if missing {
        assert!(!wgpu_required(), "CLEARCLIP_REQUIRE_WGPU=1: {stderr}");
        eprintln!("SKIPPED: no wgpu adapter on this machine ({stderr})");
    }
    missing
}

#[test]
fn half_precision_segments_like_the_f32_reference_on_the_gpu_and_is_refused_on_the_cpu() {
    let request = Request::default(CHECKPOINTS[1]);
    let tmp = tempfile::tempdir().unwrap();

    let out = tmp.path().join("cpu");
    let mut args = request.args(out.to_str().unwrap());
    args.extend(["--precision", "f16"]);
    let output = clearclip(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("cannot compute in f16") && stderr.contains("shader-f16"), "{stderr}");
    assert!(!out.exists(), "nothing is written when the model is refused");

    let out = tmp.path().join("gpu");
    let mut args = request.args(out.to_str().unwrap());
    args.extend(["--device", "gpu", "--precision", "f16"]);
    let output = clearclip(&args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if skip_without_gpu(&output) || (stderr.contains("cannot compute in f16") && !wgpu_required()) {
        return;
    }
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(", f16) on gpu (wgpu<wgsl>): "), "{stderr}");
    let (_, probs) = read_npy(&out.join("probs.npy"));
    let labels = image::open(out.join("labels.png")).unwrap().to_luma8().into_raw();
    // Measured 5.7e-4 on lavapipe: f16 features move the cosines, and the
    // logits are 50 times those.
    assert_close("CLI --precision f16 vs the f32 reference", &probs, &request.expected_probs(), 5e-3);
    let agreement = label_agreement(&labels, &request.expected_labels());
    eprintln!("f16 labels agree with the f32 reference on {:.2}%", 100.0 * agreement);
    assert!(agreement > 0.98, "{agreement}");
}

#[test]
fn bench_reports_every_phase_cold_and_warm_as_json() {
    let weights = fixture(CHECKPOINTS[1]);
    let image = fixtures_dir().join("../web/assets/example.png");
    let tmp = tempfile::tempdir().unwrap();
    let probs_out = tmp.path().join("bench_probs.npy");
    let request = [
        "--weights",
        &weights,
        "--labels",
        "cat; grass, lawn; sky",
        "--image",
        image.to_str().unwrap(),
        "--templates",
        "single",
        "--threads",
        "1",
    ];
    let output = clearclip(&[&["bench"], &request[..], &["--runs", "3", "--json", "--probs-out", probs_out.to_str().unwrap()]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // What was timed is what `segment` computes for the same request.
    let segment_out = tmp.path().join("segment");
    let segmented = clearclip(&[&["segment"], &request[..], &["--out", segment_out.to_str().unwrap()]].concat());
    assert!(segmented.status.success(), "{}", String::from_utf8_lossy(&segmented.stderr));
    let (shape, probs) = read_npy(&probs_out);
    assert_eq!(shape, [3, 300, 451], "3 classes (the synonyms merged) at the image's size");
    assert_eq!((shape, probs), read_npy(&segment_out.join("probs.npy")));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON on stdout");
    assert_eq!(report["runs"], 3);
    assert_eq!(report["device"], "cpu (flex)");
    assert_eq!(report["threads"], 1);
    assert_eq!(report["gpuLayers"], "kernels");
    let none = serde_json::json!({"softmax": 0, "layerNorm": 0, "quickGelu": 0, "residual": 0, "splitHeads": 0, "mergedHeads": 0});
    assert_eq!(report["gpuLayerKernels"], none, "the CPU backend computes its layers on the host");
    assert_eq!((&report["windowBatching"], &report["nameBatching"]), (&"memory".into(), &"1".into()), "the CPU's defaults");
    assert!(report["warmUpMs"].as_f64().unwrap() > 0.0, "the warm-up runs after the load");
    assert_eq!(
        report["classNames"], 4,
        "synonyms are encoded as names of their own"
    );
    assert_eq!(report["promptsPerName"], 1);
    assert!(report["windows"].as_u64().unwrap() >= 1);
    let phases = report["phases"].as_array().unwrap();
    let ms = |name: &str, key: &str| {
        let phase = phases
            .iter()
            .find(|p| p["phase"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no {name}"));
        phase[key].as_f64().unwrap()
    };
    for p in phases {
        let (min, median, max) = (
            p["warmMinMs"].as_f64().unwrap(),
            p["warmMedianMs"].as_f64().unwrap(),
            p["warmMaxMs"].as_f64().unwrap(),
        );
        assert!(
            p["coldMs"].as_f64().unwrap() >= 0.0 && 0.0 <= min && min <= median && median <= max,
            "{p}"
        );
    }
    // The caches are cleared: every run encodes the text and the first blocks.
    assert!(ms("text (", "warmMinMs") > 0.0 && ms("image: first L-1", "warmMinMs") > 0.0);
    // The parts of the image phase add up to at most its total.
    let parts: f64 = [
        "image: resize + normalise",
        "image: first L-1 blocks",
        "image: last block + logits",
        "image: read-back",
        "image: upsample + window merge",
        "image: resize + softmax + argmax",
    ]
    .iter()
    .map(|name| ms(name, "coldMs"))
    .sum();
    assert!(
        parts <= ms("image (total)", "coldMs") + 1e-6,
        "{parts} > total"
    );
    // The re-runs skip the first blocks; one reads the full-size maps, the others the page's.
    assert!(ms("re-run of the last block", "warmMedianMs") < ms("image (total)", "warmMedianMs"));
    assert!(ms("re-run of the last block, display maps (the page)", "warmMinMs") > 0.0);
    assert!(ms("re-run of the last block, display maps, no waits", "warmMinMs") > 0.0);

    // The CPU kernels of each phase: every block's layer norms, linear
    // layers and attention, the text's and the image's apart, within the
    // phase's time (a run's kernels run within its phase, so their mean
    // over the warm runs is at most the phase's slowest warm run).
    let kernels = report["cpuKernels"].as_array().unwrap();
    let of_phase = |phase: &str| -> Vec<(String, f64, f64)> {
        kernels
            .iter()
            .filter(|k| k["phase"] == phase)
            .map(|k| (k["kernel"].as_str().unwrap().to_string(), k["calls"].as_f64().unwrap(), k["ms"].as_f64().unwrap()))
            .collect()
    };
    for (phase, total) in [("text", "text ("), ("image", "image (total)")] {
        let found = of_phase(phase);
        for kind in ["layer norm ", "linear ", "attention "] {
            assert!(found.iter().any(|(k, calls, ms)| k.starts_with(kind) && *calls >= 1.0 && *ms >= 0.0), "{phase}: no {kind}in {found:?}");
        }
        let sum: f64 = found.iter().map(|(_, _, ms)| ms).sum();
        assert!(sum <= ms(total, "warmMaxMs") + 1e-6, "{phase}: kernels {sum} ms, phase at most {} ms", ms(total, "warmMaxMs"));
    }
}
