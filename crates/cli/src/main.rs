//! `clearclip`: open-vocabulary segmentation of an image from the command line.

mod output;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::Device;
use clap::{Parser, Subcommand, ValueEnum};
use clearclip_model::{inspect_config, load_clip, Activation, ClipTokenizer, DenseMode, LoadOptions};
use clearclip_segment::{ClassList, Progress, SegmentParams, Segmenter, Templates};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
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
    /// Print the architecture read from a checkpoint's tensor shapes.
    Inspect {
        #[arg(long)]
        weights: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// burn's pure-Rust CPU backend (flex).
    Cpu,
    /// burn-wgpu: Vulkan, Metal or DX12.
    Gpu,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Clearclip,
    Vanilla,
    Maskclip,
    Sclip,
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

#[derive(clap::Args)]
struct SegmentArgs {
    /// CLIP checkpoint (.safetensors, Hugging Face or OpenAI/open_clip layout).
    #[arg(long)]
    weights: PathBuf,
    /// CLIP tokenizer.json [default: the bundled one].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Classes separated by ';', synonyms of a class by ',': "sky;horse,pony;grass".
    #[arg(long)]
    labels: String,
    #[arg(long)]
    image: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "clearclip")]
    mode: ModeArg,
    /// Pixels whose top class probability is below this get class 0.
    #[arg(long, default_value_t = 0.0)]
    background_threshold: f32,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Short side of the image the model sees.
    #[arg(long, default_value_t = 448)]
    short_side: u32,
    /// Sliding-window crop size.
    #[arg(long, default_value_t = 448)]
    crop: usize,
    /// Sliding-window stride.
    #[arg(long, default_value_t = 224)]
    stride: usize,
    /// Multiplies cosine similarities before the softmax.
    #[arg(long, default_value_t = 50.0)]
    logit_scale: f32,
    #[arg(long, value_enum, default_value = "all")]
    templates: TemplatesArg,
    /// MLP activation of the checkpoint (not recorded in safetensors files).
    #[arg(long, value_enum, default_value = "quick-gelu")]
    activation: ActivationArg,
    /// Opacity of the class colours in overlay.png.
    #[arg(long, default_value_t = 0.5)]
    opacity: f32,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Segment(args) => segment(args),
        Command::Inspect { weights } => inspect(&weights),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn inspect(weights: &Path) -> Result<()> {
    let bytes = std::fs::read(weights).with_context(|| format!("cannot read {}", weights.display()))?;
    let (config, layout) = inspect_config(&bytes)?;
    println!("{} ({layout:?} layout)", config.describe());
    println!("{config:#?}");
    Ok(())
}

/// Largest side `image` will decode; larger files are refused before allocating.
const MAX_DECODE_SIDE: u32 = 16384;

fn read_image(path: &Path) -> Result<RgbImage> {
    let mut reader = ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    reader.limits(limits);
    let mut decoder = reader
        .into_decoder()
        .with_context(|| format!("{} is not an image this tool can read (PNG, JPEG, WebP, BMP, GIF)", path.display()))?;
    let orientation = decoder.orientation().unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .with_context(|| format!("cannot decode {} (corrupt, or larger than {MAX_DECODE_SIDE} px a side?)", path.display()))?;
    image.apply_orientation(orientation);
    Ok(image.to_rgb8())
}

fn make_device(arg: DeviceArg) -> Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::flex(),
        DeviceArg::Gpu => Device::wgpu_options()
            .init()
            .map_err(|e| anyhow::anyhow!("no usable GPU through wgpu ({e:?}); try --device cpu"))?,
    })
}

fn segment(args: SegmentArgs) -> Result<()> {
    let (classes, warnings) = ClassList::parse(&args.labels)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !(0.0..=1.0).contains(&args.opacity) {
        bail!("--opacity must be between 0 and 1");
    }
    let image = read_image(&args.image)?;
    let tokenizer_json = match &args.tokenizer {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read tokenizer {}", path.display()))?,
        None => BUNDLED_TOKENIZER.to_vec(),
    };
    let weights = std::fs::read(&args.weights).with_context(|| format!("cannot read weights {}", args.weights.display()))?;

    let started = Instant::now();
    let device = make_device(args.device)?;
    let activation = match args.activation {
        ActivationArg::QuickGelu => Activation::QuickGelu,
        ActivationArg::Gelu => Activation::Gelu,
    };
    let model = load_clip(&weights, LoadOptions { activation }, &device)
        .with_context(|| format!("cannot load {}", args.weights.display()))?;
    drop(weights);
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json, model.config.text.context_length)?;
    eprintln!("model: {} ({:?} layout), loaded in {:.2?}", model.config.describe(), model.layout, started.elapsed());

    let mode = match args.mode {
        ModeArg::Clearclip => DenseMode::ClearClip,
        ModeArg::Vanilla => DenseMode::Vanilla,
        ModeArg::Maskclip => DenseMode::MaskClip,
        ModeArg::Sclip => DenseMode::Sclip,
    };
    let params = SegmentParams {
        short_side: args.short_side,
        crop: args.crop,
        stride: args.stride,
        logit_scale: args.logit_scale,
        background_threshold: args.background_threshold,
        templates: match args.templates {
            TemplatesArg::All => Templates::OpenAiImageNet,
            TemplatesArg::Single => Templates::Single,
        },
        last_block: mode.last_block(),
        ..SegmentParams::default()
    };

    let mut segmenter = Segmenter::new(model, tokenizer);
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} {elapsed}").expect("valid template").progress_chars("=> "),
    );
    let segment_started = Instant::now();
    let mut text_done_at = None;
    let mut on_progress = |p: Progress| match p {
        Progress::Text { done, total } => {
            bar.set_message("text");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
        Progress::Window { done, total } => {
            text_done_at.get_or_insert_with(|| segment_started.elapsed());
            bar.set_message("windows");
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    };
    let seg = pollster::block_on(segmenter.segment(&image, &classes, &params, &mut on_progress))?;
    bar.finish_and_clear();
    let total = segment_started.elapsed();
    let text = text_done_at.unwrap_or(total);
    for w in &seg.warnings {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "segmented {}x{} (model input {}x{}, {} windows): text {:.2?}, image {:.2?}, total {:.2?}",
        seg.width, seg.height, seg.resized.0, seg.resized.1, seg.windows, text, total - text, total
    );
    for ((name, share), i) in seg.class_names.iter().zip(seg.class_shares()).zip(0..) {
        eprintln!("  {i:>3} {name}: {:.1}%", share * 100.0);
    }
    output::write_results(&args.out, &image, &seg, args.opacity)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
