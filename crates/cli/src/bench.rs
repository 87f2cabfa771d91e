//! `clearclip bench`: the real pipeline, timed phase by phase in one process.
//!
//! The model is loaded once. Each run then clears the segmenter's caches, so
//! it encodes every class name (all prompts) and every window, and is followed
//! by two re-runs on the same image and classes, which only run the last block
//! and what follows (what a mode switch costs): one reads the full-size
//! probabilities back as the run did, the other the display-size maps the
//! page reads (`ProbabilityMaps::ForDisplay`). The first run after the load
//! is reported as cold; the others give the warm median, minimum and maximum.
//! Between the load and the first run the segmenter warms up (a run on a
//! blank image, [`Segmenter::warm_up`]), as the page does on WebGPU, unless
//! `--no-warm-up` asks for the cold process. It warms up with the request's
//! settings, or with the page's defaults (`--warm-up-as-page`).
//! On a GPU the segmenter waits for the device after each phase, so the
//! device's time lands in the phase that queued it. On the CPU the report
//! also says which of the CPU backend's kernels the text and the image
//! phases spent their time in ([`clearclip_model::kernel_times`]).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clearclip_model::kernel_times::{self, KernelTime};
use clearclip_segment::{Observer, Progress, ProbabilityMaps, SegmentParams, Segmentation, Segmenter};
use serde::Serialize;

use crate::{load_segmenter, read_image, DeviceArg, ModelArgs, RequestArgs};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    request: RequestArgs,
    #[arg(long)]
    image: PathBuf,
    /// Runs after the load; the first is the cold one.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..))]
    runs: u16,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip the warm-up after the load: the first run then also compiles
    /// the GPU kernels.
    #[arg(long)]
    no_warm_up: bool,
    /// Warm up as the page does, with the default settings rather than the
    /// request's: the cold run then also compiles what a first request with
    /// these settings compiles in the page (a mode, PAMR).
    #[arg(long, conflicts_with = "no_warm_up")]
    warm_up_as_page: bool,
    /// Also write the last run's probabilities to this file, as `segment`
    /// writes `probs.npy` (`[classes, height, width]`, float32), to check
    /// what was timed against a reference (scripts/bench_gpu.py does).
    #[arg(long)]
    probs_out: Option<PathBuf>,
}

/// One phase over all runs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PhaseStats {
    phase: &'static str,
    cold_ms: f64,
    warm_median_ms: f64,
    warm_min_ms: f64,
    warm_max_ms: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    model: String,
    /// The backend, and on a GPU the adapter and its driver.
    device: String,
    /// `f32` or `f16`.
    precision: &'static str,
    /// Threads of the CPU backend's pool.
    threads: usize,
    /// The GPU's matrix-product routines (`--gpu-matmul`, as it takes them).
    gpu_matmul: String,
    /// Products those routines ran, and those they declined (burn's routine
    /// ran them), over the warm-up and all runs; products left to burn's
    /// routine are in neither.
    gpu_matmul_products: usize,
    gpu_matmul_declined: usize,
    /// The GPU's attention routine (`--gpu-attention`), and how many
    /// attentions it ran and declined (the scores path ran those).
    gpu_attention: &'static str,
    gpu_attention_flashed: usize,
    gpu_attention_declined: usize,
    /// How the GPU computed the towers' softmax, layer norms, QuickGELU,
    /// residual sums, head splits and merges (`--gpu-layers`), and how many of each ran as one kernel
    /// (`clearclip_model::gpu_layers`), over the warm-up and all runs.
    gpu_layers: &'static str,
    gpu_layer_kernels: clearclip_model::gpu_layers::KernelCounts,
    /// How the GPU made the window merge and the class maps (`--gpu-merge`).
    gpu_merge: &'static str,
    /// Windows, and class names, encoded together (`--window-batch`,
    /// `--name-batch`): a count or `memory`.
    window_batching: String,
    name_batching: String,
    image: [u32; 2],
    resized: [u32; 2],
    windows: usize,
    class_names: usize,
    prompts_per_name: usize,
    runs: usize,
    load_ms: f64,
    /// The warm-up after the load (a run on a blank image), if it ran.
    warm_up_ms: Option<f64>,
    /// Whether each phase waited for the device (GPU) before the next began.
    phase_sync: bool,
    phases: Vec<PhaseStats>,
    /// On the CPU: the kernels of the full runs' text and image phases, the
    /// mean of the warm runs, by phase and then time (empty on a GPU).
    cpu_kernels: Vec<KernelStats>,
}

/// One CPU kernel at one shape in one phase: calls and milliseconds, the
/// mean of the warm runs.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct KernelStats {
    phase: &'static str,
    kernel: String,
    calls: f64,
    ms: f64,
}

/// The mean of the warm runs (all but the first) of each kernel of
/// `per_run`, slowest first.
fn kernel_stats(phase: &'static str, per_run: &[Vec<KernelTime>]) -> Vec<KernelStats> {
    let warm = &per_run[1..];
    let n = warm.len() as f64;
    let mut stats: Vec<KernelStats> = Vec::new();
    for t in warm.iter().flatten() {
        match stats.iter_mut().find(|s| s.kernel == t.kernel) {
            Some(s) => (s.calls, s.ms) = (s.calls + t.calls as f64 / n, s.ms + t.ms / n),
            None => stats.push(KernelStats { phase, kernel: t.kernel.clone(), calls: t.calls as f64 / n, ms: t.ms / n }),
        }
    }
    stats.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    stats
}

/// The re-runs of the last block after a full run: full-size maps, the
/// page's display-size maps, and the latter again as the page runs it.
struct ReRuns {
    full_maps: Segmentation,
    display_maps: Segmentation,
    /// Display maps without the wait for the device after each phase (the
    /// page never waits between phases; on a GPU each wait is a round trip).
    display_maps_unsynced: Segmentation,
}

/// The phases of one run as (name, milliseconds), in pipeline order, then
/// its re-runs.
fn phases(full: &Segmentation, reruns: &ReRuns) -> [(&'static str, f64); 12] {
    let t = &full.timings;
    let i = &t.image;
    [
        ("text (all prompts, uncached)", t.text_ms),
        ("image: resize + normalise", i.prepare_ms),
        ("image: first L-1 blocks", i.encoder_ms),
        ("image: last block + logits", i.last_block_ms),
        ("image: upsample + window merge", i.window_merge_ms),
        ("image: resize + softmax + argmax", i.probabilities_ms),
        ("image: read-back", i.read_back_ms),
        ("image (total)", t.image_ms),
        ("text + image", t.total_ms()),
        ("re-run of the last block", reruns.full_maps.timings.total_ms()),
        ("re-run of the last block, display maps (the page)", reruns.display_maps.timings.total_ms()),
        ("re-run of the last block, display maps, no waits between phases", reruns.display_maps_unsynced.timings.total_ms()),
    ]
}

fn stats(phase: &'static str, values: &[f64]) -> PhaseStats {
    let mut warm = values[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    let mid = warm.len() / 2;
    let median = if warm.len() % 2 == 1 {
        warm[mid]
    } else {
        (warm[mid - 1] + warm[mid]) / 2.0
    };
    PhaseStats {
        phase,
        cold_ms: values[0],
        warm_median_ms: median,
        warm_min_ms: warm[0],
        warm_max_ms: warm[warm.len() - 1],
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    let classes = args.request.classes()?;
    let mut per_mode = args.request.params_per_mode()?;
    if per_mode.len() != 1 {
        bail!("bench times one --mode at a time");
    }
    let (_, params) = per_mode.remove(0);
    let image = read_image(&args.image)?;
    let gpu = matches!(args.model.device, DeviceArg::Gpu);
    let (segmenter, load_time, device) = load_segmenter(&args.model)?;
    let mut segmenter = segmenter.with_phase_sync(gpu);
    let model = segmenter.config().describe();
    let warm_up_ms = match (args.no_warm_up, args.warm_up_as_page) {
        (true, _) => None,
        (false, false) => Some(pollster::block_on(segmenter.warm_up(&params))?),
        (false, true) => Some(pollster::block_on(segmenter.warm_up(&SegmentParams::default()))?),
    };

    let mut runs: Vec<[(&'static str, f64); 12]> = Vec::new();
    let (mut text_kernels, mut image_kernels) = (Vec::new(), Vec::new());
    kernel_times::set_recording(!gpu);
    let mut last = None;
    for run in 0..args.runs {
        segmenter.clear_caches();
        // The kernels of the full run: the text's until the windows start.
        kernel_times::take();
        let mut text = None;
        let full = segment(&mut segmenter, &image, &classes, &params, &mut |p: Progress| {
            if let Progress::Window { done: 0, .. } = p {
                text.get_or_insert_with(kernel_times::take);
            }
        })?;
        text_kernels.push(text.unwrap_or_default());
        image_kernels.push(kernel_times::take());
        let full_maps = segment(&mut segmenter, &image, &classes, &params, &mut |_: Progress| {})?;
        segmenter.set_probability_maps(ProbabilityMaps::ForDisplay);
        let display_maps = segment(&mut segmenter, &image, &classes, &params, &mut |_: Progress| {});
        segmenter.set_phase_sync(false);
        let display_maps_unsynced = segment(&mut segmenter, &image, &classes, &params, &mut |_: Progress| {});
        segmenter.set_phase_sync(gpu);
        segmenter.set_probability_maps(ProbabilityMaps::Full);
        let reruns = ReRuns { full_maps, display_maps: display_maps?, display_maps_unsynced: display_maps_unsynced? };
        if ![&reruns.full_maps, &reruns.display_maps, &reruns.display_maps_unsynced].iter().all(|r| r.reused_windows) {
            bail!("a re-run did not reuse the first blocks");
        }
        if !args.json {
            eprintln!("run {}/{}: {:.0} ms", run + 1, args.runs, full.timings.total_ms());
        }
        runs.push(phases(&full, &reruns));
        last = Some(full);
    }
    kernel_times::set_recording(false);
    let full = last.expect("at least two runs");
    if let Some(path) = &args.probs_out {
        std::fs::write(path, crate::output::probs_npy(&full)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    let phases = (0..runs[0].len())
        .map(|p| {
            stats(
                runs[0][p].0,
                &runs.iter().map(|r| r[p].1).collect::<Vec<_>>(),
            )
        })
        .collect();
    let (gpu_matmul_products, gpu_matmul_declined) = clearclip_model::gpu_matmul::total_routine_counts();
    let (gpu_attention_flashed, gpu_attention_declined) = clearclip_model::gpu_attention::routine_counts();
    let report = Report {
        model,
        device,
        precision: args.model.precision().name(),
        threads: rayon::current_num_threads(),
        gpu_matmul: args.model.gpu_matmul.to_string(),
        gpu_matmul_products,
        gpu_matmul_declined,
        gpu_attention: args.model.gpu_attention.name(),
        gpu_attention_flashed,
        gpu_attention_declined,
        gpu_layers: args.model.gpu_layers.name(),
        gpu_layer_kernels: clearclip_model::gpu_layers::kernel_counts(),
        gpu_merge: args.model.gpu_merge.name(),
        window_batching: segmenter.window_batching().name(),
        name_batching: segmenter.name_batching().name(),
        image: [full.width, full.height],
        resized: [full.resized.0, full.resized.1],
        windows: full.windows,
        class_names: classes.queries().0.len(),
        prompts_per_name: params.templates.list().len(),
        runs: runs.len(),
        load_ms: load_time.as_secs_f64() * 1e3,
        warm_up_ms,
        phase_sync: gpu,
        phases,
        cpu_kernels: [kernel_stats("text", &text_kernels), kernel_stats("image", &image_kernels)].into_iter().flatten().collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn segment(
    segmenter: &mut Segmenter,
    image: &image::RgbImage,
    classes: &clearclip_segment::ClassList,
    params: &SegmentParams,
    observer: &mut dyn Observer,
) -> Result<Segmentation> {
    Ok(pollster::block_on(segmenter.segment(image, classes, params, observer))?)
}

fn print_table(r: &Report) {
    println!(
        "{} ({}) on {} (matrix products: {}, attention: {}, layers: {}, merge: {}), {} threads, batches of {} windows and {} names; image {}x{} (model input {}x{}, {} windows); {} class names x {} prompts; load {:.0} ms; warm-up {}",
        r.model, r.precision, r.device, r.gpu_matmul, r.gpu_attention, r.gpu_layers, r.gpu_merge, r.threads, r.window_batching, r.name_batching, r.image[0], r.image[1], r.resized[0], r.resized[1], r.windows, r.class_names, r.prompts_per_name, r.load_ms,
        r.warm_up_ms.map_or("skipped".to_string(), |ms| format!("{ms:.0} ms"))
    );
    println!("| phase (ms) | cold | warm median | warm min | warm max |");
    println!("|---|---:|---:|---:|---:|");
    for p in &r.phases {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            p.phase, p.cold_ms, p.warm_median_ms, p.warm_min_ms, p.warm_max_ms
        );
    }
    if !r.cpu_kernels.is_empty() {
        println!("\n| CPU kernel (mean of the warm runs) | phase | calls | ms |");
        println!("|---|---|---:|---:|");
        for k in &r.cpu_kernels {
            println!("| {} | {} | {:.0} | {:.1} |", k.kernel, k.phase, k.calls, k.ms);
        }
    }
}
