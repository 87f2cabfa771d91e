//! `clearclip`: open-vocabulary segmentation of an image from the command line.

mod bench;
mod bench_matmul;
mod output;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::Device;
use clap::{Parser, Subcommand, ValueEnum};
use clearclip_model::gpu_attention::{self, gpu_attention, set_gpu_attention, AttentionRoutine};
use clearclip_model::gpu_layers::{kernel_counts, set_gpu_layers, GpuLayers};
use clearclip_model::gpu_matmul::{gpu_matmul, routine_counts, set_gpu_matmul, total_routine_counts, MatmulChoice, MatmulRoutine, ProductKind};
use clearclip_model::{inspect_config, load_clip_from_reader, Activation, ClipConfig, Layout, AttentionKind, ClipTokenizer, DenseMode, LoadError, LoadOptions, Precision};
use clearclip_segment::{
    decode_image, Batching, ClassList, GpuMerge, LastBlockOverrides, Pamr, Preset, Progress, SegmentParams, Segmentation, Segmenter, Templates, PRESETS,
};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};

/// The CLIP tokenizer shipped with the app (built by scripts/make_tokenizer.py).
const BUNDLED_TOKENIZER: &[u8] = include_bytes!("../../../assets/tokenizer.json");

#[derive(Parser)]
#[command(name = "clearclip", version, about = "Open-vocabulary segmentation with ClearCLIP (CLIP ViT in burn)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment an image into the given classes and write the results into a folder.
    Segment(SegmentArgs),
    /// Time the pipeline: load once, then segment the image --runs times
    /// (caches cleared, so each run encodes the classes and every window),
    /// and report each phase cold (first run) and warm (median, min, max).
    Bench(bench::BenchArgs),
    /// Time the GPU's matrix-product routines (--gpu-matmul) on the products
    /// of one image's vision encoder, each checked against the CPU backend.
    BenchMatmul(bench_matmul::BenchMatmulArgs),
    /// Print the architecture read from a checkpoint's tensor shapes.
    Inspect {
        #[arg(long)]
        weights: PathBuf,
    },
    /// List the dataset presets (`--preset`): classes and settings of the official protocol.
    Presets,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
    /// burn-wgpu: Vulkan, Metal or DX12.
    Gpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum TemplatesArg {
    /// The 80 OpenAI ImageNet templates (reference).
    All,
    /// "a photo of a {}." only.
    Single,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActivationArg {
    /// OpenAI CLIP, MetaCLIP "quickgelu".
    QuickGelu,
    /// OpenCLIP LAION models.
    Gelu,
}

/// The model and where it runs.
#[derive(clap::Args)]
struct ModelArgs {
    /// CLIP checkpoint (.safetensors, Hugging Face or OpenAI/open_clip layout).
    #[arg(long)]
    weights: PathBuf,
    /// CLIP tokenizer.json [default: the bundled one].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Threads of the CPU backend (matrix products, attention, elementwise
    /// work) [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// MLP activation of the checkpoint (not recorded in safetensors files).
    #[arg(long, value_enum, default_value = "quick-gelu")]
    activation: ActivationArg,
    /// Float type of the model: f32, or f16 as the official code runs on a GPU
    /// (with --device gpu, on an adapter with shader-f16).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// The GPU's matrix-product routine: burn (burn's own without autotune),
    /// simple-unit, simple-unit-small, double-unit, double-unit-small or gemm
    /// (cubek's routines that need no tensor cores), or tiled, tiled-small and
    /// tiled-wide (our own register-tiled kernel, three tile shapes); `bench-matmul` times
    /// them. One for all products, or one for each kind:
    /// projections=ROUTINE,attention=ROUTINE (a kind left out keeps burn's).
    #[arg(long, default_value = "burn")]
    gpu_matmul: MatmulChoice,
    /// The GPU's attention in the towers' blocks: scores (materialised
    /// between two products, burn's kernels without autotune) or flash-unit
    /// (cubek's flash attention with unit inner products, one kernel).
    #[arg(long, default_value = "scores")]
    gpu_attention: AttentionRoutine,
    /// How the GPU makes the window merge, the class maps and PAMR: kernels
    /// (one each, three for PAMR) or tensor-ops (burn's operations, some 15
    /// and 30 kernels, PAMR some 10 an iteration; to compare against).
    #[arg(long, default_value = "kernels")]
    gpu_merge: GpuMerge,
    /// How the GPU computes the towers' attention softmax, layer norms,
    /// QuickGELU, residual sums, attention's split into heads and its value
    /// product into merged heads: kernels (one each) or tensor-ops (burn's
    /// operations, two to eleven kernels each; to compare against).
    #[arg(long, default_value = "kernels")]
    gpu_layers: GpuLayers,
    /// Windows encoded together: a count, or memory (as many as keep the
    /// largest activation under 128 MiB) [default: memory].
    #[arg(long, value_parser = parse_batching)]
    window_batch: Option<Batching>,
    /// Class names whose prompts are encoded together: a count, or memory
    /// [default: memory on a GPU, 1 on the CPU].
    #[arg(long, value_parser = parse_batching)]
    name_batch: Option<Batching>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    F16,
}

impl From<PrecisionArg> for Precision {
    fn from(arg: PrecisionArg) -> Self {
        match arg {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
        }
    }
}

impl ModelArgs {
    fn precision(&self) -> Precision {
        self.precision.into()
    }
}

/// What to segment the image into, and how.
#[derive(clap::Args)]
struct RequestArgs {
    /// Classes separated by ';', synonyms of a class by ',': "sky;horse,pony;grass".
    #[arg(long, required_unless_present = "preset")]
    labels: Option<String>,
    /// A benchmark's official classes and settings (voc21, context60, coco-object, ...;
    /// see `clearclip presets`). --labels, --background-threshold, --crop and
    /// --stride override it.
    #[arg(long, value_parser = parse_preset)]
    preset: Option<&'static Preset>,
    /// Dense mode: clearclip, vanilla, maskclip, sclip, naclip. Several,
    /// comma-separated, segment with each in turn (results in OUT/<mode>/);
    /// only the first runs all blocks, the others re-run the last block.
    #[arg(long, value_parser = parse_mode, value_delimiter = ',', default_value = "clearclip")]
    mode: Vec<DenseMode>,
    /// Last-block knob: attention kind (q-k, q-q, k-k, v-v, q-q+k-k, identity),
    /// replacing the mode's.
    #[arg(long, value_parser = parse_attention)]
    attention: Option<AttentionKind>,
    /// Last-block knob: NACLIP's Gaussian neighbourhood bias with this standard
    /// deviation in patches, or "off".
    #[arg(long, value_parser = parse_optional_number)]
    neighbourhood_std: Option<NumberOrNone>,
    /// Last-block knob: keep the residual as `x + ALPHA * attn`, or "none" to drop it.
    #[arg(long, value_parser = parse_optional_number)]
    residual_alpha: Option<NumberOrNone>,
    /// Last-block knob: run the feed-forward network.
    #[arg(long, overrides_with = "no_ffn")]
    ffn: bool,
    /// Last-block knob: skip the feed-forward network.
    #[arg(long, overrides_with = "ffn")]
    no_ffn: bool,
    /// Refine the class maps with PAMR (NACLIP's setting: 10 iterations, dilations 8 and 16).
    #[arg(long)]
    pamr: bool,
    /// PAMR iterations (with --pamr; at most 100).
    #[arg(long, default_value_t = 10, requires = "pamr")]
    pamr_iterations: usize,
    /// Pixels whose top class probability is below this get class 0 [default: 0, or the preset's].
    #[arg(long)]
    background_threshold: Option<f32>,
    /// Short side of the image the model sees.
    #[arg(long, default_value_t = 448)]
    short_side: u32,
    /// Sliding-window crop size [default: 448, or the preset's].
    #[arg(long)]
    crop: Option<usize>,
    /// Sliding-window stride [default: 224, or the preset's].
    #[arg(long)]
    stride: Option<usize>,
    /// Multiplies cosine similarities before the softmax.
    #[arg(long, default_value_t = 50.0)]
    logit_scale: f32,
    #[arg(long, value_enum, default_value = "all")]
    templates: TemplatesArg,
}

#[derive(clap::Args)]
struct SegmentArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    request: RequestArgs,
    #[arg(long)]
    image: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Opacity of the class colours in overlay.png.
    #[arg(long, default_value_t = 0.5)]
    opacity: f32,
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchMatmul(args) => bench_matmul::run(args),
        Command::Inspect { weights } => inspect(&weights),
        Command::Presets => {
            print_presets();
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Tells glibc's allocator to keep freed memory for the next allocation
/// instead of handing it back to the kernel. A forward pass allocates and frees
/// buffers of megabytes per operation (a 785-token window's MLP activation is
/// 9.6 MB); by default glibc maps each of those afresh (above a threshold that
/// starts at 128 KiB) and trims the heap when 128 KiB at its top are free, so
/// every run took ~65 k page faults per window to get zeroed pages back.
/// 32 MiB is the largest threshold glibc accepts on 64-bit; larger buffers
/// are still mapped. The peak resident size stays the same (676 against
/// 678 MB for a bench of one window); what was freed stays resident until the
/// process ends, which suits a command.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn parse_mode(name: &str) -> Result<DenseMode, String> {
    DenseMode::from_name(name.trim()).ok_or_else(|| {
        let names: Vec<_> = DenseMode::ALL.iter().map(|m| m.name()).collect();
        format!("unknown mode \"{name}\"; one of {}", names.join(", "))
    })
}

fn parse_attention(name: &str) -> Result<AttentionKind, String> {
    AttentionKind::from_name(name).ok_or_else(|| {
        let names: Vec<_> = AttentionKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown attention \"{name}\"; one of {}", names.join(", "))
    })
}

/// A number, or `None` for a knob set to `none`/`off`.
#[derive(Debug, Clone, Copy)]
struct NumberOrNone(Option<f32>);

fn parse_optional_number(text: &str) -> Result<NumberOrNone, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "none" | "off" => Ok(NumberOrNone(None)),
        t => t.parse::<f32>().map(|v| NumberOrNone(Some(v))).map_err(|_| format!("\"{text}\" is neither a number nor \"none\"")),
    }
}

fn parse_preset(id: &str) -> Result<&'static Preset, String> {
    Preset::by_id(id).ok_or_else(|| {
        let ids: Vec<_> = PRESETS.iter().map(|p| p.id).collect();
        format!("unknown preset \"{id}\"; one of {}", ids.join(", "))
    })
}

/// With a --gpu-matmul routine, how many products it ran and how many it
/// declined (burn's routine ran those): one line for a routine chosen for
/// both kinds, else one for each kind not left to burn's.
fn report_gpu_matmul() {
    let choice = gpu_matmul();
    let line = |what: String, (routed, declined): (usize, usize)| {
        eprintln!("--gpu-matmul {what}: {routed} products, {declined} declined (run by burn's routine)");
    };
    if choice == MatmulChoice::uniform(MatmulRoutine::Burn) {
        return;
    }
    if choice.projections == choice.attention {
        line(choice.to_string(), total_routine_counts());
        return;
    }
    for kind in ProductKind::ALL.into_iter().filter(|&kind| choice.get(kind) != MatmulRoutine::Burn) {
        line(format!("{}={}", kind.name(), choice.get(kind)), routine_counts(kind));
    }
}

/// With --gpu-attention flash-unit, how many attentions it ran and how many
/// it declined (the scores path ran those).
fn report_gpu_attention() {
    if gpu_attention() != AttentionRoutine::Scores {
        let (flashed, declined) = gpu_attention::routine_counts();
        eprintln!("--gpu-attention {}: {flashed} attentions, {declined} declined (run with the scores materialised)", gpu_attention());
    }
}

/// On --device gpu, how many of the towers' layers ran as one kernel each.
fn report_gpu_layers(args: &ModelArgs) {
    if matches!(args.device, DeviceArg::Gpu) {
        let counts = kernel_counts();
        eprintln!(
            "--gpu-layers {}: {} softmaxes, {} layer norms, {} QuickGELUs, {} residual sums, {} head splits, {} value products into merged heads as one kernel each",
            args.gpu_layers, counts.softmax, counts.layer_norm, counts.quick_gelu, counts.residual, counts.split_heads, counts.merged_heads
        );
    }
}

fn parse_batching(name: &str) -> Result<Batching, String> {
    Batching::from_name(name).ok_or_else(|| format!("a batch is a count of at least 1 or \"memory\", not \"{name}\""))
}

fn print_presets() {
    for p in &PRESETS {
        let classes = p.labels().split("; ").count();
        println!(
            "{:<12} {} — {classes} classes, background threshold {}, crop {}, stride {}",
            p.id, p.title, p.background_threshold, p.crop, p.stride
        );
    }
}

impl RequestArgs {
    /// The last-block knobs given on the command line.
    fn overrides(&self) -> LastBlockOverrides {
        LastBlockOverrides {
            attention: self.attention,
            neighbourhood_std: self.neighbourhood_std.map(|NumberOrNone(std)| std),
            residual_alpha: self.residual_alpha.map(|NumberOrNone(alpha)| alpha),
            ffn: if self.ffn { Some(true) } else if self.no_ffn { Some(false) } else { None },
        }
    }

    /// The classes, from --labels or the preset's.
    fn classes(&self) -> Result<ClassList> {
        let labels = match (&self.labels, self.preset) {
            (Some(labels), _) => labels.clone(),
            (None, Some(preset)) => preset.labels(),
            (None, None) => bail!("give --labels or --preset"),
        };
        let (classes, warnings) = ClassList::parse(&labels)?;
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        Ok(classes)
    }

    /// The settings of every --mode: defaults, then the preset's, then the
    /// flags; checked, so that a mistyped flag is refused before the model loads.
    fn params_per_mode(&self) -> Result<Vec<(DenseMode, SegmentParams)>> {
        let overrides = self.overrides();
        if self.mode.len() > 1 && !overrides.is_empty() {
            bail!("the last-block knobs (--attention, --neighbourhood-std, --residual-alpha, --ffn/--no-ffn) apply to one --mode, not to {}", self.mode.len());
        }
        let mut base = SegmentParams {
            short_side: self.short_side,
            logit_scale: self.logit_scale,
            templates: match self.templates {
                TemplatesArg::All => Templates::OpenAiImageNet,
                TemplatesArg::Single => Templates::Single,
            },
            pamr: self.pamr.then(|| Pamr { iterations: self.pamr_iterations, ..Pamr::default() }),
            ..SegmentParams::default()
        };
        if let Some(preset) = self.preset {
            preset.apply(&mut base);
        }
        base.background_threshold = self.background_threshold.unwrap_or(base.background_threshold);
        base.crop = self.crop.unwrap_or(base.crop);
        base.stride = self.stride.unwrap_or(base.stride);
        let mut runs: Vec<(DenseMode, SegmentParams)> = Vec::with_capacity(self.mode.len());
        for &mode in &self.mode {
            if runs.iter().any(|(m, _)| *m == mode) {
                bail!("--mode {} is given twice", mode.name());
            }
            let params = SegmentParams { last_block: overrides.apply(mode)?, ..base.clone() };
            params.validate()?;
            runs.push((mode, params));
        }
        Ok(runs)
    }
}

fn inspect(weights: &Path) -> Result<()> {
    let (config, layout) = read_config(weights)?;
    println!("{} ({layout:?} layout)", config.describe());
    println!("{config:#?}");
    Ok(())
}

/// The architecture of a checkpoint, from its header (the file is read only
/// until the header is complete).
fn read_config(weights: &Path) -> Result<(ClipConfig, Layout)> {
    let mut file = std::fs::File::open(weights).with_context(|| format!("cannot read {}", weights.display()))?;
    let mut prefix = Vec::new();
    loop {
        let read = (&mut file).take(1 << 20).read_to_end(&mut prefix)?;
        match inspect_config(&prefix) {
            Err(LoadError::Truncated { .. }) if read > 0 => continue,
            result => return Ok(result?),
        }
    }
}

/// Reads and decodes an image file as the reference does (see
/// [`clearclip_segment::decode`]).
fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    decode_image(&bytes).with_context(|| format!("{} cannot be used", path.display()))
}

/// The device, and what it is: the backend, and on a GPU the adapter wgpu
/// chose (name, graphics API, driver), so that a benchmark says what it ran on.
fn make_device(arg: DeviceArg) -> Result<(Device, String)> {
    Ok(match arg {
        DeviceArg::Cpu => (Device::flex(), "cpu (flex)".to_string()),
        DeviceArg::Gpu => {
            let (device, setup) = Device::wgpu_options()
                .init_with_setup()
                .map_err(|e| anyhow::anyhow!("no usable GPU through wgpu ({e:?}); try --device cpu"))?;
            let info = setup.adapter.get_info();
            let driver = [info.driver.as_str(), info.driver_info.as_str()].join(" ");
            // cubecl's runtime name says which shader compiler serves the adapter.
            let runtime = clearclip_model::gpu_matmul::runtime_name(&device).unwrap_or("wgpu");
            (device, format!("gpu ({runtime}): {} ({:?}, {:?}, driver {})", info.name, info.backend, info.device_type, driver.trim()))
        }
    })
}

fn segment(args: SegmentArgs) -> Result<()> {
    let classes = args.request.classes()?;
    if !(0.0..=1.0).contains(&args.opacity) {
        bail!("--opacity must be between 0 and 1");
    }
    let runs = args.request.params_per_mode()?;
    output::check_output_dir(&args.out)?;
    let image = read_image(&args.image)?;
    let (mut segmenter, _, _) = load_segmenter(&args.model)?;
    let several = runs.len() > 1;
    for (mode, params) in runs {
        let name = if DenseMode::of(&params.last_block) == Some(mode) { mode.name().to_string() } else { format!("{} with knobs", mode.name()) };
        eprintln!("last block ({name}): {}", params.describe_last_block());
        let seg = run_with_progress_bar(&mut segmenter, &image, &classes, &params)?;
        report(&seg);
        let out = if several { args.out.join(mode.name()) } else { args.out.clone() };
        output::write_results(&out, &image, &seg, args.opacity)?;
        eprintln!("wrote {}", out.display());
    }
    report_gpu_matmul();
    report_gpu_attention();
    report_gpu_layers(&args.model);
    Ok(())
}

/// The model (streamed from the file: its bytes are never all in memory next
/// to the model) and the tokenizer, on the chosen device; how long the load
/// took; and what the device is ([`make_device`]).
fn load_segmenter(args: &ModelArgs) -> Result<(Segmenter, std::time::Duration, String)> {
    if let Some(threads) = args.threads {
        // One pool for everything: burn's CPU backend runs its batch loops
        // on rayon's global pool and hands the same pool to gemm.
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads.into())
            .build_global()
            .context("cannot start the thread pool")?;
    }
    let tokenizer_json = match &args.tokenizer {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read tokenizer {}", path.display()))?,
        None => BUNDLED_TOKENIZER.to_vec(),
    };
    let weights = std::fs::File::open(&args.weights).with_context(|| format!("cannot read weights {}", args.weights.display()))?;
    if args.gpu_matmul != MatmulChoice::default() {
        if !matches!(args.device, DeviceArg::Gpu) {
            bail!("--gpu-matmul chooses a routine of --device gpu");
        }
        if !set_gpu_matmul(args.gpu_matmul) {
            bail!("this build cannot choose the GPU's matrix-product routine (it has burn's kernel fusion)");
        }
    }
    if args.gpu_attention != AttentionRoutine::Scores {
        if !matches!(args.device, DeviceArg::Gpu) {
            bail!("--gpu-attention chooses a routine of --device gpu");
        }
        if !set_gpu_attention(args.gpu_attention) {
            bail!("this build cannot choose the GPU's attention routine (it has burn's kernel fusion)");
        }
    }
    if args.gpu_layers != GpuLayers::Kernels {
        if !matches!(args.device, DeviceArg::Gpu) {
            bail!("--gpu-layers chooses how --device gpu computes the layers");
        }
        if !set_gpu_layers(args.gpu_layers) {
            bail!("this build cannot choose how the GPU computes the layers (it has burn's kernel fusion)");
        }
    }
    if args.gpu_merge != GpuMerge::Kernels && !matches!(args.device, DeviceArg::Gpu) {
        bail!("--gpu-merge chooses how --device gpu merges");
    }
    let started = Instant::now();
    let (device, device_description) = make_device(args.device)?;
    let activation = match args.activation {
        ActivationArg::QuickGelu => Activation::QuickGelu,
        ActivationArg::Gelu => Activation::Gelu,
    };
    let precision = args.precision();
    let model = load_clip_from_reader(weights, LoadOptions { activation, precision }, &device)
        .with_context(|| format!("cannot load {}", args.weights.display()))?;
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json, model.config.text.context_length)?;
    let load_time = started.elapsed();
    eprintln!("model: {} ({:?} layout, {}) on {device_description}, loaded in {load_time:.2?}", model.config.describe(), model.layout, precision.name());
    let mut segmenter = Segmenter::new(model, tokenizer).with_gpu_merge(args.gpu_merge);
    if let Some(batching) = args.window_batch {
        segmenter = segmenter.with_window_batching(batching);
    }
    if let Some(batching) = args.name_batch {
        segmenter = segmenter.with_name_batching(batching);
    }
    Ok((segmenter, load_time, device_description))
}

/// One segmentation, with a progress bar for the text and window phases.
fn run_with_progress_bar(segmenter: &mut Segmenter, image: &RgbImage, classes: &ClassList, params: &SegmentParams) -> Result<Segmentation> {
    let bar = ProgressBar::new(0)
        .with_style(ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} {elapsed}")?.progress_chars("=> "));
    let mut on_progress = |p: Progress| {
        let (phase, done, total) = match p {
            Progress::Text { done, total } => ("text", done, total),
            Progress::Window { done, total } => ("windows", done, total),
        };
        bar.set_message(phase);
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let seg = pollster::block_on(segmenter.segment(image, classes, params, &mut on_progress));
    bar.finish_and_clear();
    Ok(seg?)
}

fn report(seg: &Segmentation) {
    for w in &seg.warnings {
        eprintln!("warning: {w}");
    }
    let t = &seg.timings;
    let time = |ms: f64| std::time::Duration::from_secs_f64(ms.max(0.0) / 1e3);
    eprintln!(
        "segmented {}x{} (model input {}x{}, {} windows in {} batches{}): text {:.2?}, image {:.2?}, total {:.2?} ({} class names encoded, the others cached)",
        seg.width,
        seg.height,
        seg.resized.0,
        seg.resized.1,
        seg.windows,
        seg.window_batches,
        if seg.reused_windows { ", first blocks reused: last block only" } else { "" },
        time(t.text_ms),
        time(t.image_ms),
        time(t.total_ms()),
        t.classes_encoded,
    );
    for ((name, share), i) in seg.class_names.iter().zip(seg.class_shares()).zip(0..) {
        eprintln!("  {i:>3} {name}: {:.1}%", share * 100.0);
    }
}
