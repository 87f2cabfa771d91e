//! `clearclip`: open-vocabulary segmentation of an image from the command line.

mod output;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::Device;
use clap::{Parser, Subcommand, ValueEnum};
use clearclip_model::{inspect_config, load_clip_from_reader, LoadError, Activation, AttentionKind, ClipTokenizer, DenseMode, LastBlock, LoadOptions, Residual};
use clearclip_segment::{decode_image, ClassList, Pamr, Preset, Progress, SegmentParams, Segmenter, Templates, PRESETS};
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

#[derive(clap::Args)]
struct SegmentArgs {
    /// CLIP checkpoint (.safetensors, Hugging Face or OpenAI/open_clip layout).
    #[arg(long)]
    weights: PathBuf,
    /// CLIP tokenizer.json [default: the bundled one].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Classes separated by ';', synonyms of a class by ',': "sky;horse,pony;grass".
    #[arg(long, required_unless_present = "preset")]
    labels: Option<String>,
    /// A benchmark's official classes and settings (voc21, context60, coco-object, ...;
    /// see `clearclip presets`). --labels, --background-threshold, --crop and
    /// --stride override it.
    #[arg(long, value_parser = parse_preset)]
    preset: Option<&'static Preset>,
    #[arg(long)]
    image: PathBuf,
    /// Output folder (created if missing).
    #[arg(long)]
    out: PathBuf,
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
    /// PAMR iterations (with --pamr).
    #[arg(long, default_value_t = 10, requires = "pamr")]
    pamr_iterations: usize,
    /// Pixels whose top class probability is below this get class 0 [default: 0, or the preset's].
    #[arg(long)]
    background_threshold: Option<f32>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
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

fn print_presets() {
    for p in &PRESETS {
        let classes = p.labels().split("; ").count();
        println!(
            "{:<12} {} — {classes} classes, background threshold {}, crop {}, stride {}",
            p.id, p.title, p.background_threshold, p.crop, p.stride
        );
    }
}

/// The mode's last block with the knobs given on the command line applied.
fn last_block(mode: DenseMode, args: &SegmentArgs) -> Result<LastBlock> {
    let mut block = mode.last_block();
    if let Some(attention) = args.attention {
        block.attention = attention;
    }
    if let Some(NumberOrNone(std)) = args.neighbourhood_std {
        block.neighbourhood_std = std;
    }
    if let Some(NumberOrNone(alpha)) = args.residual_alpha {
        block.residual = match alpha {
            Some(attention_scale) => Residual::Keep { attention_scale },
            None => Residual::Skip,
        };
    }
    if args.ffn {
        block.ffn = true;
    }
    if args.no_ffn {
        block.ffn = false;
    }
    block.validate().map_err(anyhow::Error::msg)?;
    Ok(block)
}

impl SegmentArgs {
    fn has_knobs(&self) -> bool {
        self.attention.is_some() || self.neighbourhood_std.is_some() || self.residual_alpha.is_some() || self.ffn || self.no_ffn
    }
}

fn inspect(weights: &Path) -> Result<()> {
    // The header is enough: read until it is complete.
    let mut file = std::fs::File::open(weights).with_context(|| format!("cannot read {}", weights.display()))?;
    let mut prefix = Vec::new();
    let (config, layout) = loop {
        let read = (&mut file).take(1 << 20).read_to_end(&mut prefix)?;
        match inspect_config(&prefix) {
            Err(LoadError::Truncated { .. }) if read > 0 => continue,
            result => break result?,
        }
    };
    println!("{} ({layout:?} layout)", config.describe());
    println!("{config:#?}");
    Ok(())
}

/// Reads and decodes an image file as the reference does (see
/// [`clearclip_segment::decode`]).
fn read_image(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot open image {}", path.display()))?;
    decode_image(&bytes).with_context(|| format!("{} cannot be used", path.display()))
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
    let labels = match (&args.labels, args.preset) {
        (Some(labels), _) => labels.clone(),
        (None, Some(preset)) => preset.labels(),
        (None, None) => unreachable!("clap requires --labels or --preset"),
    };
    let (classes, warnings) = ClassList::parse(&labels)?;
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    if !(0.0..=1.0).contains(&args.opacity) {
        bail!("--opacity must be between 0 and 1");
    }
    if args.mode.len() > 1 && args.has_knobs() {
        bail!("the last-block knobs (--attention, --neighbourhood-std, --residual-alpha, --ffn/--no-ffn) apply to one --mode, not to {}", args.mode.len());
    }
    let mut blocks = Vec::with_capacity(args.mode.len());
    for &mode in &args.mode {
        if blocks.iter().any(|(m, _)| *m == mode) {
            bail!("--mode {} is given twice", mode.name());
        }
        blocks.push((mode, last_block(mode, &args)?));
    }
    let mut params = SegmentParams {
        short_side: args.short_side,
        logit_scale: args.logit_scale,
        templates: match args.templates {
            TemplatesArg::All => Templates::OpenAiImageNet,
            TemplatesArg::Single => Templates::Single,
        },
        pamr: args.pamr.then(|| Pamr { iterations: args.pamr_iterations, ..Pamr::default() }),
        ..SegmentParams::default()
    };
    if let Some(preset) = args.preset {
        preset.apply(&mut params);
    }
    params.background_threshold = args.background_threshold.unwrap_or(params.background_threshold);
    params.crop = args.crop.unwrap_or(params.crop);
    params.stride = args.stride.unwrap_or(params.stride);

    let image = read_image(&args.image)?;
    let tokenizer_json = match &args.tokenizer {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read tokenizer {}", path.display()))?,
        None => BUNDLED_TOKENIZER.to_vec(),
    };
    let weights = std::fs::File::open(&args.weights).with_context(|| format!("cannot read weights {}", args.weights.display()))?;

    let started = Instant::now();
    let device = make_device(args.device)?;
    let activation = match args.activation {
        ActivationArg::QuickGelu => Activation::QuickGelu,
        ActivationArg::Gelu => Activation::Gelu,
    };
    // Streamed from the file: the bytes are never all in memory next to the model.
    let model = load_clip_from_reader(weights, LoadOptions { activation }, &device)
        .with_context(|| format!("cannot load {}", args.weights.display()))?;
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json, model.config.text.context_length)?;
    eprintln!("model: {} ({:?} layout), loaded in {:.2?}", model.config.describe(), model.layout, started.elapsed());

    let mut segmenter = Segmenter::new(model, tokenizer);
    let several = blocks.len() > 1;
    for (mode, block) in blocks {
        params.last_block = block;
        let name = if DenseMode::of(&block) == Some(mode) { mode.name().to_string() } else { format!("{} with knobs", mode.name()) };
        eprintln!("last block ({name}): {block}{}", if params.pamr.is_some() { ", then PAMR" } else { "" });
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
            "segmented {}x{} (model input {}x{}, {} windows{}): text {:.2?}, image {:.2?}, total {:.2?}",
            seg.width,
            seg.height,
            seg.resized.0,
            seg.resized.1,
            seg.windows,
            if seg.reused_windows { ", first blocks reused: last block only" } else { "" },
            text,
            total - text,
            total
        );
        for ((name, share), i) in seg.class_names.iter().zip(seg.class_shares()).zip(0..) {
            eprintln!("  {i:>3} {name}: {:.1}%", share * 100.0);
        }
        let out = if several { args.out.join(mode.name()) } else { args.out.clone() };
        output::write_results(&out, &image, &seg, args.opacity)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
