//! `clearclip bench-matmul`: the GPU's matrix-product routines
//! ([`MatmulRoutine`], `--gpu-matmul`) side by side on the products of one
//! image's vision encoder, so that a short run on a real GPU says which
//! routine to choose (burn's autotune, which would choose at run time, gives
//! wrong results in the browser).
//!
//! The products are those of one transformer block on `--windows` crops of
//! `--crop` pixels, in the layouts the model gives them (q, k, v are strided
//! views of the fused projection; k is transposed), with random operands. Each
//! routine's first run of each product is checked against the CPU backend;
//! each timed run then queues `--repeat` products and waits for the device
//! once, so launch latency is spread as it is in the model's stream of
//! kernels, and the routines take turns, run by run and product by product. The
//! per-image estimate multiplies one block's products by the number of blocks.
//! The report also names the fastest routine for each kind of product
//! ([`ProductKind`]: the projections, attention's products), which
//! `--gpu-matmul` takes as one choice.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use clearclip_model::gpu_matmul::{matmul_with, MatmulChoice, MatmulRoutine, ProductKind};
use clearclip_model::{Precision, VisionConfig};
use serde::Serialize;

use crate::{make_device, read_config, DeviceArg, PrecisionArg};

#[derive(clap::Args)]
pub struct BenchMatmulArgs {
    /// The checkpoint whose vision encoder gives the shapes (only its header is read).
    #[arg(long)]
    weights: PathBuf,
    /// Routines to compare, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    routines: Vec<MatmulRoutine>,
    /// Crops in one batch (2 for a landscape photo at 448 px).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    windows: u16,
    /// Side of a crop in pixels.
    #[arg(long, default_value_t = 448, value_parser = clap::value_parser!(u16).range(1..))]
    crop: u16,
    /// Timed runs per product and routine (the median is reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..))]
    runs: u16,
    /// Products queued per timed run before waiting for the device.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    repeat: u16,
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the report as JSON to this file (the table still prints).
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

/// The largest error relative to the CPU's largest value at which a routine
/// counts as exact at f32: what the parity tests ask of the GPU. At f16 no
/// routine is called exact (the inputs alone are rounded to 11 bits).
const EXACT_F32: f64 = 1e-5;

/// The largest error at which a routine counts as accurate enough at f16:
/// the output's rounding to f16 (2^-11 relative) with room for the sums'
/// order; every routine was within 5.8e-4 on lavapipe at ViT-B/16's shapes.
const WITHIN_F16: f64 = 1e-3;

/// The error within which a routine may be chosen at `precision`.
fn routine_tolerance(precision: Precision) -> f64 {
    match precision {
        Precision::F32 => EXACT_F32,
        Precision::F16 => WITHIN_F16,
    }
}

/// One product of a transformer block.
struct Product {
    name: &'static str,
    /// `[batch.., m, k]` and `[batch.., k, n]` as `[batch, heads, m, k, n]`
    /// (`batch` and `heads` are 1 for the 2-D products).
    dims: [usize; 5],
    /// Operands built as the model builds them: `q k^T` and `weights v` from
    /// a fused projection, split into heads.
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Linear,
    Scores,
    Values,
}

impl Kind {
    /// The kind whose routine `--gpu-matmul` chooses for this product.
    fn product_kind(self) -> ProductKind {
        match self {
            Kind::Linear => ProductKind::Projection,
            Kind::Scores | Kind::Values => ProductKind::Attention,
        }
    }
}

/// # Shapes
/// The products of one block on `windows` crops of `crop` pixels.
fn block_products(v: &VisionConfig, windows: usize, crop: usize) -> Vec<Product> {
    let tokens = (crop / v.patch_size).pow(2) + 1;
    let rows = windows * tokens;
    let (w, h) = (v.width, v.heads);
    let d = w / h;
    vec![
        Product { name: "qkv projection", dims: [1, 1, rows, w, 3 * w], kind: Kind::Linear },
        Product { name: "q k^T", dims: [windows, h, tokens, d, tokens], kind: Kind::Scores },
        Product { name: "weights v", dims: [windows, h, tokens, tokens, d], kind: Kind::Values },
        Product { name: "out projection", dims: [1, 1, rows, w, w], kind: Kind::Linear },
        Product { name: "mlp fc1", dims: [1, 1, rows, w, v.mlp_width], kind: Kind::Linear },
        Product { name: "mlp fc2", dims: [1, 1, rows, v.mlp_width, w], kind: Kind::Linear },
    ]
}

/// Deterministic operands in [-1, 1) (a 32-bit LCG; the values only need to
/// be the same on both devices).
fn random(len: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

/// The operands of `product` on `device`, as 4-D tensors `[batch, heads, m, k]`
/// and `[batch, heads, k, n]` in the layout the model gives them.
fn operands(product: &Product, device: &Device, precision: Precision) -> (Tensor<4>, Tensor<4>) {
    let [batch, heads, m, k, n] = product.dims;
    let put = |values: Vec<f32>, shape: [usize; 3]| Tensor::<3>::from_data(TensorData::new(values, shape), device).cast(precision.dtype());
    match product.kind {
        Kind::Linear => {
            let lhs = put(random(m * k, 1), [1, m, k]).unsqueeze::<4>();
            let rhs = put(random(k * n, 2), [1, k, n]).unsqueeze::<4>();
            (lhs, rhs)
        }
        Kind::Scores | Kind::Values => {
            // [batch, tokens, 3 * width] split into q, k, v of [batch, heads, tokens, head_dim].
            let (tokens, head_dim) = match product.kind {
                Kind::Scores => (m, k),
                _ => (m, n),
            };
            let width = heads * head_dim;
            let qkv = put(random(batch * tokens * 3 * width, 3), [batch, tokens, 3 * width]);
            let split = |i: usize| qkv.clone().narrow(2, i * width, width).reshape([batch, tokens, heads, head_dim]).swap_dims(1, 2);
            match product.kind {
                Kind::Scores => (split(0), split(1).swap_dims(2, 3)),
                _ => {
                    // Attention weights: a row-stochastic-like [batch, heads, tokens, tokens].
                    let weights = put(random(batch * heads * tokens * tokens, 4), [batch * heads, tokens, tokens]).reshape([batch, heads, tokens, tokens]) * (1.0 / tokens as f64);
                    (weights, split(2))
                }
            }
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RoutineReport {
    routine: &'static str,
    /// Median milliseconds per product, in the order of `products`; `None`
    /// where the routine declined the problem.
    ms: Vec<Option<f64>>,
    /// Largest `|gpu - cpu|` over all products, relative to the largest `|cpu|`.
    max_relative_error: f64,
    /// Why a product could not run, if one could not.
    errors: Vec<String>,
    /// One block's products times the number of blocks (`None` if any declined).
    per_image_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// The adapter and its driver.
    device: String,
    #[serde(serialize_with = "precision_name")]
    precision: Precision,
    windows: usize,
    crop: usize,
    layers: usize,
    products: Vec<String>,
    routines: Vec<RoutineReport>,
    /// The routine with the smallest per-image time among those that ran
    /// every product within [`EXACT_F32`] (f32 only).
    fastest_exact: Option<&'static str>,
    /// For each kind of product, the routine with the smallest time for that
    /// kind's products among those that ran every product within
    /// [`EXACT_F32`] at f32, [`WITHIN_F16`] at f16: as `--gpu-matmul` takes it.
    fastest_by_kind: Option<String>,
    /// That choice's per-image time.
    fastest_by_kind_ms: Option<f64>,
}

pub fn run(args: BenchMatmulArgs) -> Result<()> {
    let (config, _) = read_config(&args.weights)?;
    let precision = Precision::from(args.precision);
    let (gpu, adapter) = make_device(DeviceArg::Gpu)?;
    if !precision.is_supported_on(&gpu) {
        bail!("this adapter cannot compute in {} (no shader-f16)", precision.name());
    }
    let cpu = Device::flex();
    let routines = match args.routines.is_empty() {
        true => MatmulRoutine::ALL.to_vec(),
        false => args.routines.clone(),
    };
    let products = block_products(&config.vision, args.windows.into(), args.crop.into());

    // The CPU's results, once.
    let expected: Vec<Vec<f32>> = products
        .iter()
        .map(|p| {
            let (lhs, rhs) = operands(p, &cpu, Precision::F32);
            lhs.matmul(rhs).into_data().try_to_vec::<f32>().expect("f32 products")
        })
        .collect();

    // Each routine's first run of each product is checked against the CPU
    // (and compiles its kernels). The timed runs then take the routines in
    // turn, product by product, starting one routine later each run, so that
    // a GPU whose clocks or caches drift during the bench favours none of
    // them. (Timed one routine after another, on the H200 at f16, burn's
    // routine, first, came out 1.86x simple-unit's, though the two were
    // within the noise of each other in the whole pipeline.)
    let operands: Vec<_> = products.iter().map(|p| operands(p, &gpu, precision)).collect();
    let mut reports: Vec<RoutineReport> = routines
        .iter()
        .map(|r| RoutineReport { routine: r.name(), ms: Vec::new(), max_relative_error: 0.0, errors: Vec::new(), per_image_ms: None })
        .collect();
    let mut accepted = vec![vec![false; products.len()]; routines.len()];
    for ((&routine, report), accepted) in routines.iter().zip(&mut reports).zip(&mut accepted) {
        for ((product, (lhs, rhs)), (expected, accepted)) in products.iter().zip(&operands).zip(expected.iter().zip(accepted)) {
            let first = match matmul_with(routine, lhs.clone(), rhs.clone()) {
                Ok(out) => out,
                Err(why) => {
                    report.errors.push(format!("{}: {why}", product.name));
                    continue;
                }
            };
            let got = first.cast(burn::tensor::FloatDType::F32).into_data().try_to_vec::<f32>().map_err(|e| anyhow::anyhow!("reading the product back: {e:?}"))?;
            let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
            let error = got.iter().zip(expected).fold(0f32, |m, (g, e)| m.max((g - e).abs()));
            report.max_relative_error = report.max_relative_error.max(f64::from(error / scale));
            *accepted = true;
        }
        if !args.json {
            eprintln!("{routine}: checked");
        }
    }
    let mut times = vec![vec![Vec::new(); products.len()]; routines.len()];
    for run in 0..usize::from(args.runs) {
        for (p, (lhs, rhs)) in operands.iter().enumerate() {
            for turn in 0..routines.len() {
                let r = (run + turn) % routines.len();
                if !accepted[r][p] {
                    continue;
                }
                let started = Instant::now();
                for _ in 0..args.repeat {
                    // The routine accepted this problem above.
                    let _ = matmul_with(routines[r], lhs.clone(), rhs.clone());
                }
                gpu.sync().map_err(|e| anyhow::anyhow!("the GPU failed: {e:?}"))?;
                times[r][p].push(started.elapsed().as_secs_f64() * 1e3 / f64::from(args.repeat));
            }
        }
    }
    for (report, times) in reports.iter_mut().zip(times) {
        report.ms = times.into_iter().map(|mut t| median(&mut t)).collect();
        report.per_image_ms = report.ms.iter().copied().sum::<Option<f64>>().map(|block| block * config.vision.layers as f64);
    }

    let fastest_exact = match precision {
        Precision::F32 => reports
            .iter()
            .filter(|r| r.errors.is_empty() && r.max_relative_error < EXACT_F32)
            .filter_map(|r| Some((r.routine, r.per_image_ms?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(routine, _)| routine),
        Precision::F16 => None,
    };
    let tolerance = routine_tolerance(precision);
    let kinds: Vec<ProductKind> = products.iter().map(|p| p.kind.product_kind()).collect();
    let (fastest_by_kind, fastest_by_kind_ms) = match fastest_by_kind(&reports, &kinds, tolerance) {
        Some((choice, block_ms)) => (Some(choice.to_string()), Some(block_ms * config.vision.layers as f64)),
        None => (None, None),
    };
    let report = Report {
        device: adapter,
        precision,
        windows: args.windows.into(),
        crop: args.crop.into(),
        layers: config.vision.layers,
        products: products.iter().map(|p| format!("{} {:?}", p.name, p.dims)).collect(),
        routines: reports,
        fastest_exact,
        fastest_by_kind,
        fastest_by_kind_ms,
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print_table(&report);
    }
    Ok(())
}

/// For each kind of product (`kinds[p]` is product `p`'s), the routine that
/// runs that kind's products in the least time among those that ran every
/// product within `tolerance`, and one block's time with those routines;
/// `None` when no routine qualifies.
fn fastest_by_kind(reports: &[RoutineReport], kinds: &[ProductKind], tolerance: f64) -> Option<(MatmulChoice, f64)> {
    let qualified: Vec<&RoutineReport> = reports.iter().filter(|r| r.errors.is_empty() && r.max_relative_error <= tolerance).collect();
    let mut choice = MatmulChoice::default();
    let mut block_ms = 0.0;
    for kind in ProductKind::ALL {
        let time = |r: &RoutineReport| r.ms.iter().zip(kinds).filter(|(_, k)| **k == kind).map(|(ms, _)| *ms).sum::<Option<f64>>();
        let (routine, ms) = qualified.iter().filter_map(|r| Some((r.routine, time(r)?))).min_by(|a, b| a.1.total_cmp(&b.1))?;
        let routine = MatmulRoutine::from_name(routine).expect("a report names its routine");
        choice = choice.with(kind, routine);
        block_ms += ms;
    }
    Some((choice, block_ms))
}

/// The median of `times`; `None` if there are none (the routine declined the product).
fn median(times: &mut [f64]) -> Option<f64> {
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied()
}

/// The JSON spells the precision as the CLI does (`f32`, `f16`).
fn precision_name<S: serde::Serializer>(precision: &Precision, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(precision.name())
}

/// The report as a Markdown table: a column per routine, a row per product,
/// then the per-image sums, their ratio to burn's routine and the errors.
fn print_table(r: &Report) {
    let cell = |ms: Option<f64>| ms.map_or("-".to_string(), |ms| format!("{ms:.3}"));
    let row = |label: &str, cells: Vec<String>| println!("| {label} | {} |", cells.join(" | "));
    println!(
        "{}\n{} windows of {} px, {}: median ms per product ([batch, heads, m, k, n]); the last rows are one block's products x {} blocks\n",
        r.device, r.windows, r.crop, r.precision.name(), r.layers
    );
    row("product", r.routines.iter().map(|x| x.routine.to_string()).collect());
    println!("|---|{}", "---:|".repeat(r.routines.len()));
    for (i, product) in r.products.iter().enumerate() {
        row(product, r.routines.iter().map(|x| cell(x.ms[i])).collect());
    }
    row(&format!("x {} blocks", r.layers), r.routines.iter().map(|x| cell(x.per_image_ms)).collect());
    if let Some(burn) = r.routines.iter().find(|x| x.routine == MatmulRoutine::Burn.name()).and_then(|x| x.per_image_ms) {
        row("vs burn's", r.routines.iter().map(|x| x.per_image_ms.map_or("-".to_string(), |ms| format!("{:.2}", ms / burn))).collect());
    }
    row("max relative error", r.routines.iter().map(|x| format!("{:.1e}", x.max_relative_error)).collect());
    println!();
    for routine in &r.routines {
        for error in &routine.errors {
            println!("{}: {error}", routine.routine);
        }
    }
    if let (Some(choice), Some(ms)) = (&r.fastest_by_kind, r.fastest_by_kind_ms) {
        let within = routine_tolerance(r.precision);
        println!("fastest for each kind of product within {within:.0e} of the CPU: {choice} ({ms:.3} ms an image)");
    }
    match (r.fastest_exact, r.precision) {
        (Some(routine), _) => println!("fastest within {EXACT_F32:.0e} of the CPU: {routine}"),
        (None, Precision::F32) => println!("no routine ran every product within {EXACT_F32:.0e} of the CPU"),
        (None, _) => {}
    }
}
