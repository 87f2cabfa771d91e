//! From window scores to class maps, on the model's device: the end of
//! `forward_slide` (each window's logits upsampled to its crop, the padding
//! cut off, added up, divided by the overlap count) and `postprocess_result`
//! (resize to the original size, softmax of `logit_scale * logits`, max over
//! synonyms, argmax, background threshold) in mc-lan/ClearCLIP
//! `clearclip_segmentor.py`.
//!
//! On a GPU the full-size maps are made in bands of rows, so no buffer
//! outgrows what a browser lets one binding hold, and only what the caller
//! uses is read back, all bands in one transfer: the label map, and the
//! probabilities at full size or every `stride`-th pixel. A band is one
//! kernel ([`crate::gpu_merge`]) on a cubecl device, burn's tensor
//! operations elsewhere.
//!
//! On the CPU backend the same step is one pass over the rows
//! ([`classify_on_host`]): there, some thirty tensor passes over the
//! full-size maps cost 12x more than a loop over the pixels (3.4 s against
//! 0.27 s for a 2048x1367 photo and 6 queries), which a loop over whole
//! rows, vectorised, has since made 3.4x faster again.

use std::borrow::Cow;
use std::cell::OnceCell;
use std::ops::Range;

use burn::tensor::{activation, DType, Device, Int, Tensor, TensorData, Transaction};
use clearclip_model::host::{exp, widest_simd};

use crate::gpu_merge::{add_windows, BandKernel, ResizeKernel};
use crate::pamr::Pamr;
use crate::resample::{linear_taps, LinearTap, Maps};
use crate::rows::for_each_chunk_mut;
use crate::segmenter::{device_error, SegmentError, SegmentParams};
use crate::windows::Window;

/// The largest full-size intermediate, in bytes. WebGPU guarantees 128 MiB
/// per storage binding (`maxStorageBufferBindingSize`); a band stays well
/// below it whatever the image size and class count.
pub(crate) const BAND_BYTES: usize = 32 << 20;

clearclip_model::named_choices! {
    /// How a GPU makes the window merge, the class maps and PAMR.
    pub enum GpuMerge: "merge" {
        /// One kernel each ([`crate::gpu_merge`]) and three for PAMR
        /// ([`crate::gpu_pamr`]) where the device runs them.
        Kernels => "kernels",
        /// burn's tensor operations (some 15 kernels a batch of windows and 30
        /// a band of rows, PAMR some 10 an iteration), to compare against.
        TensorOps => "tensor-ops",
    }
}

impl GpuMerge {
    fn kernels(self) -> bool {
        self == GpuMerge::Kernels
    }
}

/// How the queries' scores become class probabilities and labels.
pub struct ClassMerge<'a> {
    /// The class of each query (synonyms share one).
    pub class_of_query: &'a [usize],
    pub classes: usize,
    pub logit_scale: f32,
    pub background_threshold: f32,
}

impl<'a> ClassMerge<'a> {
    pub fn new(class_of_query: &'a [usize], classes: usize, params: &SegmentParams) -> Self {
        Self { class_of_query, classes, logit_scale: params.logit_scale, background_threshold: params.background_threshold }
    }
}

/// The bilinear taps of one axis ([`linear_taps`]) as device tensors.
struct DeviceTaps {
    lower: Tensor<1, Int>,
    upper: Tensor<1, Int>,
    lower_weight: Tensor<1>,
    upper_weight: Tensor<1>,
}

impl DeviceTaps {
    fn new(taps: &[LinearTap], device: &Device) -> Self {
        let n = taps.len();
        let index = |pick: fn(&LinearTap) -> usize| {
            Tensor::<1, Int>::from_data(TensorData::new(taps.iter().map(|t| pick(t) as i64).collect::<Vec<_>>(), [n]), device)
        };
        let weight = |pick: fn(&LinearTap) -> f32| Tensor::<1>::from_data(TensorData::new(taps.iter().map(pick).collect::<Vec<_>>(), [n]), device);
        Self { lower: index(|t| t.i0), upper: index(|t| t.i1), lower_weight: weight(|t| t.w0), upper_weight: weight(|t| t.w1) }
    }

    /// `w0 * lower + w1 * upper`, the weights along `dim`.
    fn blend<const D: usize>(&self, lower: Tensor<D>, upper: Tensor<D>, dim: usize) -> Tensor<D> {
        let mut shape = [1; D];
        shape[dim] = self.lower_weight.dims()[0];
        lower * self.lower_weight.clone().reshape(shape) + upper * self.upper_weight.clone().reshape(shape)
    }

    /// `x` resampled along `dim`: `w0 * x[i0] + w1 * x[i1]` at every output position.
    fn resample<const D: usize>(&self, x: Tensor<D>, dim: usize) -> Tensor<D> {
        self.blend(x.clone().select(dim, self.lower.clone()), x.select(dim, self.upper.clone()), dim)
    }
}

/// Output rows per task of [`classify_on_host`] (rounded up to whole strides).
const HOST_BAND_ROWS: usize = 32;

/// [`classify`] in one pass over the pixels, on the host: resize of the
/// averaged logits, softmax, max over synonyms, argmax and threshold per
/// pixel. Only every `stride`-th pixel's probabilities are kept. Bands of
/// rows run on rayon's pool where there is one.
///
/// A band resizes each input row it reads along the columns once
/// ([`ColumnResizedRows`]) and makes its output rows one at a time, each
/// step over the whole row (vectorised: [`widest_simd`]). Per pixel these are
/// the operations of [`crate::resample::bilinear`] and a per-pixel softmax,
/// in the same order; a loop over pixels took 100 ms for a 2048x1367 photo
/// and 6 queries on 2 threads (`clearclip bench`), two thirds of a mode
/// switch's re-run on the CPU, against 29 ms this way.
///
/// # Shapes
/// - `logits`: `[queries, in_h, in_w]` (`in` = `out` for PAMR's full-size logits)
pub(crate) fn classify_on_host(logits: &Maps, (out_h, out_w): (usize, usize), merge: &ClassMerge, stride: usize) -> ClassMaps {
    let (in_h, in_w) = logits.size();
    let queries = logits.channels();
    let ty = linear_taps(in_h, out_h);
    let tx = linear_taps(in_w, out_w);
    let (sampled_h, sampled_w) = (out_h.div_ceil(stride), out_w.div_ceil(stride));
    let mut probs = vec![0.0f32; merge.classes * sampled_h * sampled_w];
    let mut labels = vec![0u8; out_h * out_w];
    // A band is whole strides of rows, so its sampled rows are its own: in
    // every class plane, the band's slice of sampled rows.
    let sampled_band = HOST_BAND_ROWS.div_ceil(stride);
    let band = sampled_band * stride;
    let mut band_probs: Vec<Vec<&mut [f32]>> = (0..out_h.div_ceil(band)).map(|_| Vec::with_capacity(merge.classes)).collect();
    for plane in probs.chunks_mut(sampled_h * sampled_w) {
        for (rows, planes) in plane.chunks_mut(sampled_band * sampled_w).zip(band_probs.iter_mut()) {
            planes.push(rows);
        }
    }
    let classify_band = |(b, (labels, mut probs)): (usize, (&mut [u8], Vec<&mut [f32]>))| {
        let rows = &ty[b * band..][..labels.len() / out_w];
        let mut input_rows = ColumnResizedRows::new(queries, out_w);
        // One output row: each query's scores, then (in place) its share of
        // the softmax; each class's probability; the best class.
        let mut scores = vec![0.0f32; queries * out_w];
        let mut class_probs = vec![0.0f32; merge.classes * out_w];
        let (mut largest, mut total, mut best_prob) = (vec![0.0f32; out_w], vec![0.0f32; out_w], vec![0.0f32; out_w]);
        for (dy, (row_labels, t)) in labels.chunks_mut(out_w).zip(rows).enumerate() {
            widest_simd(
                #[inline(always)]
                || {
                    largest.fill(f32::NEG_INFINITY);
                    let [upper_rows, lower_rows] = input_rows.get(logits, &tx, [t.i0, t.i1]);
                    for ((scores, upper), lower) in scores.chunks_exact_mut(out_w).zip(upper_rows.chunks_exact(out_w)).zip(lower_rows.chunks_exact(out_w)) {
                        for (((s, &u), &l), m) in scores.iter_mut().zip(upper).zip(lower).zip(largest.iter_mut()) {
                            *s = t.mix(u, l) * merge.logit_scale;
                            *m = m.max(*s);
                        }
                    }
                    total.fill(0.0);
                    for scores in scores.chunks_exact_mut(out_w) {
                        for ((s, &m), sum) in scores.iter_mut().zip(&largest).zip(total.iter_mut()) {
                            *s = exp(*s - m);
                            *sum += *s;
                        }
                    }
                    class_probs.fill(f32::NEG_INFINITY);
                    for (&c, scores) in merge.class_of_query.iter().zip(scores.chunks_exact(out_w)) {
                        let class = &mut class_probs[c * out_w..][..out_w];
                        for ((p, &s), &sum) in class.iter_mut().zip(scores).zip(&total) {
                            *p = p.max(s / sum);
                        }
                    }
                    // The first of equal classes wins, as in a scan with `>`.
                    row_labels.fill(0);
                    best_prob.copy_from_slice(&class_probs[..out_w]);
                    for (c, class) in class_probs.chunks_exact(out_w).enumerate().skip(1) {
                        for ((label, best), &p) in row_labels.iter_mut().zip(best_prob.iter_mut()).zip(class) {
                            if p > *best {
                                *best = p;
                                *label = c as u8;
                            }
                        }
                    }
                    for (label, &best) in row_labels.iter_mut().zip(&best_prob) {
                        if best < merge.background_threshold {
                            *label = 0;
                        }
                    }
                },
            );
            if dy % stride == 0 {
                let at = (dy / stride) * sampled_w;
                for (plane, class) in probs.iter_mut().zip(class_probs.chunks_exact(out_w)) {
                    for (p, &value) in plane[at..][..sampled_w].iter_mut().zip(class.iter().step_by(stride)) {
                        *p = value;
                    }
                }
            }
        }
    };
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        labels.par_chunks_mut(band * out_w).zip(band_probs).enumerate().for_each(classify_band);
    }
    #[cfg(not(feature = "rayon"))]
    labels.chunks_mut(band * out_w).zip(band_probs).enumerate().for_each(classify_band);
    ClassMaps { probs, labels }
}

/// The last two input rows an output band read, each resized along the
/// columns, every query's: the taps of consecutive output rows only move
/// down, so each input row is resized once a band, and a band holds two rows
/// (not all it reads, which for a photo's full-size PAMR logits and many
/// classes would be megabytes a task).
struct ColumnResizedRows {
    /// Which input row each slot holds.
    row: [Option<usize>; 2],
    /// `[queries, out_w]` each.
    values: [Vec<f32>; 2],
}

impl ColumnResizedRows {
    fn new(queries: usize, out_w: usize) -> Self {
        Self { row: [None; 2], values: [vec![0.0; queries * out_w], vec![0.0; queries * out_w]] }
    }

    /// Input rows `upper` and `lower` of every query, resized by the column
    /// taps `tx` in [`crate::resample::bilinear`]'s order.
    ///
    /// # Shapes
    /// - `logits`: `[queries, in_h, in_w]`; returns two `[queries, out_w]`
    fn get(&mut self, logits: &Maps, tx: &[LinearTap], [upper, lower]: [usize; 2]) -> [&[f32]; 2] {
        let upper_slot = self.fill(logits, tx, upper, lower);
        let lower_slot = self.fill(logits, tx, lower, upper);
        [&self.values[upper_slot], &self.values[lower_slot]]
    }

    /// The slot that holds input row `row`, filled now if need be, in the
    /// slot that does not hold `keep`.
    fn fill(&mut self, logits: &Maps, tx: &[LinearTap], row: usize, keep: usize) -> usize {
        if let Some(slot) = self.row.iter().position(|&r| r == Some(row)) {
            return slot;
        }
        let slot = if self.row[0] == Some(keep) { 1 } else { 0 };
        let in_w = logits.size().1;
        for (q, out) in self.values[slot].chunks_exact_mut(tx.len()).enumerate() {
            let source = &logits.plane(q)[row * in_w..][..in_w];
            for (o, t) in out.iter_mut().zip(tx) {
                *o = t.sample(source);
            }
        }
        self.row[slot] = Some(row);
        slot
    }
}

/// Reads a `[channels, height, width]` tensor back as maps.
pub(crate) async fn read_maps(tensor: Tensor<3>) -> Result<Maps, SegmentError> {
    let [channels, height, width] = tensor.dims();
    let data = tensor.into_data_async().await.map_err(device_error)?;
    let values = f32_values(&data).into_owned();
    Maps::from_vec(values, channels, (height, width)).ok_or_else(|| SegmentError::Device("read back maps of the wrong size".into()))
}

/// A bilinear resize of one `[channels, in_h, in_w]` tensor to `(height,
/// width)`, made band by band of output rows: columns first, then rows,
/// PyTorch's order (see [`crate::resample`]). One kernel a band
/// ([`ResizeKernel`]) where the device runs it and `gpu_merge` asks for
/// kernels, else burn's tensor operations.
struct BandResize {
    source: Tensor<3>,
    /// The taps of every output row.
    rows: Vec<LinearTap>,
    /// The taps of every output column, and on the device (uploaded only if
    /// [`Self::rows`] runs: [`BandKernel`] takes `column_taps`).
    column_taps: Vec<LinearTap>,
    columns: OnceCell<DeviceTaps>,
    /// The kernel, made when [`Self::rows`] first runs; `None` where the
    /// device cannot run it, or set so at once for `GpuMerge::TensorOps`.
    kernel: OnceCell<Option<ResizeKernel>>,
}

impl BandResize {
    fn new(source: Tensor<3>, (height, width): (usize, usize), gpu_merge: GpuMerge) -> Self {
        let [_, in_h, in_w] = source.dims();
        let (rows, column_taps) = (linear_taps(in_h, height), linear_taps(in_w, width));
        let kernel = if gpu_merge.kernels() { OnceCell::new() } else { OnceCell::from(None) };
        Self { rows, column_taps, columns: OnceCell::new(), kernel, source }
    }

    /// Output rows `band`.
    ///
    /// # Shapes
    /// - returns `[channels, band.len(), width]`
    fn rows(&self, band: Range<usize>) -> Tensor<3> {
        let kernel = self.kernel.get_or_init(|| ResizeKernel::new(&self.source, &self.column_taps));
        if let Some(resized) = kernel.as_ref().and_then(|k| k.rows(&self.source, &self.rows[band.clone()])) {
            return resized;
        }
        let rows = DeviceTaps::new(&self.rows[band], &self.source.device());
        let columns = self.columns.get_or_init(|| DeviceTaps::new(&self.column_taps, &self.source.device()));
        let resized = |index: &Tensor<1, Int>| columns.resample(self.source.clone().select(1, index.clone()), 2);
        rows.blend(resized(&rows.lower), resized(&rows.upper), 1)
    }
}

/// The sum of the upsampled window logits over the resized image, and how
/// many windows cover each pixel (`preds` and `count_mat` of `forward_slide`).
pub(crate) struct WindowSum {
    /// `[queries, height, width]` on the device.
    sum: Tensor<3>,
    /// `[height, width]`.
    count: Vec<u16>,
    patch: usize,
    /// Add with the kernel where the device runs it.
    use_kernel: bool,
}

impl WindowSum {
    pub fn new(queries: usize, (height, width): (usize, usize), patch: usize, device: &Device, gpu_merge: GpuMerge) -> Self {
        // Made flat: a GPU fills it at the vector width of the element count
        // (a multiple of 4 whenever a side is the model's 448), which the
        // warm-up's image shares; `[queries, height, width]` of an odd width
        // would compile a fill kernel of its own in the first request.
        let sum = Tensor::<1>::zeros([queries * height * width], device).reshape([queries, height, width]);
        Self { sum, count: vec![0; height * width], patch, use_kernel: gpu_merge.kernels() }
    }

    /// Upsample the scores of windows of one shape (same size and padding) to
    /// their padded crop, keep the unpadded part, add it where it belongs:
    /// one kernel ([`crate::gpu_merge`]) on a cubecl device, burn's tensor
    /// operations elsewhere.
    ///
    /// # Shapes
    /// - `scores`: `[queries, windows.len() * grid_h * grid_w]`, each window's patches of the padded window row-major
    pub fn add(&mut self, scores: Tensor<2>, windows: &[Window]) {
        let Some(&first) = windows.first() else { return };
        let (ph, pw) = (first.padded_height(), first.padded_width());
        let grid = (ph / self.patch, pw / self.patch);
        // Only the rows and columns that survive the crop are computed.
        let rows = &linear_taps(grid.0, ph)[first.pad_top..][..first.height];
        let columns = &linear_taps(grid.1, pw)[first.pad_left..][..first.width];
        let width = self.sum.dims()[2];
        for w in windows {
            debug_assert_eq!((w.padded_height(), w.padded_width(), w.pad_top, w.pad_left), (ph, pw, first.pad_top, first.pad_left));
            for y in w.y..w.y + w.height {
                self.count[y * width + w.x..][..w.width].iter_mut().for_each(|c| *c += 1);
            }
        }
        let added = if self.use_kernel { add_windows(&self.sum, &scores, windows, grid, rows, columns) } else { None };
        self.sum = added.unwrap_or_else(|| self.add_with_tensor_ops(scores, windows, grid, rows, columns));
    }

    /// [`Self::add`]'s sum by burn's tensor operations.
    fn add_with_tensor_ops(&self, scores: Tensor<2>, windows: &[Window], (gh, gw): (usize, usize), rows: &[LinearTap], columns: &[LinearTap]) -> Tensor<3> {
        let (batch, queries) = (windows.len(), scores.dims()[0]);
        let device = scores.device();
        let planes = scores.reshape([queries, batch, gh, gw]).swap_dims(0, 1);
        let upsampled = DeviceTaps::new(rows, &device).resample(DeviceTaps::new(columns, &device).resample(planes, 3), 2);
        let mut sum = self.sum.clone();
        for (i, w) in windows.iter().enumerate() {
            let crop = upsampled.clone().narrow(0, i, 1).reshape([queries, w.height, w.width]);
            let at = [0..queries, w.y..w.y + w.height, w.x..w.x + w.width];
            sum = sum.clone().slice_assign(at.clone(), sum.slice(at) + crop);
        }
        sum
    }

    /// The average over the windows covering each pixel.
    ///
    /// # Shapes
    /// - returns `[queries, height, width]` on the device
    pub fn average(self) -> Tensor<3> {
        let [_, height, width] = self.sum.dims();
        let count: Vec<f32> = self.count.iter().map(|&c| c.max(1) as f32).collect();
        let count: Tensor<3> = Tensor::from_data(TensorData::new(count, [1, height, width]), &self.sum.device());
        self.sum / count
    }
}

/// The full-size logits, which are made band by band.
// One per image, moved once: boxing the larger variant would save nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum FullSizeLogits<'a> {
    /// Bilinear resize of the averaged window logits, `[queries, in_h, in_w]` on the device.
    Resize(Tensor<3>),
    /// The same, refined by PAMR guided by the network input resized to the
    /// full size likewise (NACLIP's `predict`), `[channels, rh, rw]` on the
    /// device. Each band is refined with [`Pamr::halo`] rows of context on
    /// each side, which makes it equal to PAMR of the whole image.
    Refined { averaged: Tensor<3>, guide: Tensor<3>, pamr: &'a Pamr },
}

/// The class maps read back.
pub(crate) struct ClassMaps {
    /// `[classes, height.div_ceil(stride), width.div_ceil(stride)]`.
    pub probs: Vec<f32>,
    /// `[height, width]`.
    pub labels: Vec<u8>,
}

/// Rows per band of at most `band_bytes` for maps of `channels x width`
/// floats, a multiple of `stride` (at least one stride).
fn band_rows(band_bytes: usize, channels: usize, width: usize, stride: usize) -> usize {
    let rows = band_bytes / (4 * channels.max(1) * width.max(1));
    (rows / stride).max(1) * stride
}

/// `0..height` cut into ranges of `step` rows (the last one shorter).
fn bands(height: usize, step: usize) -> Vec<Range<usize>> {
    (0..height).step_by(step).map(|y| y..(y + step).min(height)).collect()
}

/// Labels packed four to an integer, little-endian, so the read-back takes a
/// byte a pixel: WGSL has no 8-bit storage type. `l0 + l1 * 2^8 + l2 * 2^16 +
/// l3 * 2^24` overflows a signed 32-bit integer from `l3 = 128`; the device's
/// integer arithmetic wraps, so the low 32 bits hold the four bytes either way.
///
/// # Shapes
/// - `labels`: any shape, `n` elements, each in `0..=255`; returns `[n.div_ceil(4)]`
fn pack_labels<const D: usize>(labels: Tensor<D, Int>) -> Tensor<1, Int> {
    let n = labels.shape().num_elements();
    let device = labels.device();
    let mut flat = labels.reshape([n]);
    if !n.is_multiple_of(4) {
        flat = Tensor::cat(vec![flat, Tensor::zeros([4 - n % 4], &device)], 0);
    }
    let place = Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 1 << 8, 1 << 16, 1 << 24], [1, 4]), &device);
    (flat.reshape([n.div_ceil(4), 4]) * place).sum_dim(1).reshape([n.div_ceil(4)])
}

/// Appends the first `n` bytes of [`pack_labels`]' integers to `labels`.
/// The GPU's 32-bit integers are, in memory on a little-endian host, those
/// bytes in order: one copy out of the mapped read-back, not one boxed
/// conversion an integer (that cost 50-180 ms for a 2048x1367 photo).
fn unpack_labels(packed: &TensorData, n: usize, labels: &mut Vec<u8>) {
    let start = labels.len();
    match packed.dtype() {
        DType::I32 | DType::U32 if cfg!(target_endian = "little") => labels.extend_from_slice(packed.as_bytes()),
        _ => labels.extend(packed.iter::<i64>().flat_map(|word| (word as u32).to_le_bytes())),
    }
    labels.truncate(start + n);
}

/// `data`'s values as f32: the read-back's own memory when it holds f32.
fn f32_values(data: &TensorData) -> Cow<'_, [f32]> {
    match data.as_slice::<f32>() {
        Ok(values) => Cow::Borrowed(values),
        Err(_) => Cow::Owned(data.iter::<f32>().collect()),
    }
}

/// Every `stride`-th of `0..n`, as an index tensor.
fn every_nth(n: usize, stride: usize, device: &Device) -> Tensor<1, Int> {
    let index: Vec<i64> = (0..n).step_by(stride).map(|i| i as i64).collect();
    let len = index.len();
    Tensor::from_data(TensorData::new(index, [len]), device)
}

/// The class maps, queued on the device; [`PendingClassMaps::read`] reads them back.
pub(crate) struct PendingClassMaps {
    transaction: Transaction,
    bands: Vec<Range<usize>>,
    size: (usize, usize),
    classes: usize,
    stride: usize,
}

/// Probabilities and labels at `(height, width)` from the full-size logits,
/// in bands of at most `band_bytes`; the probabilities are kept every
/// `stride`-th pixel in each direction. Each band is one kernel
/// ([`crate::gpu_merge`]) where the device can run it, else burn's tensor
/// operations ([`TensorOps`]).
pub(crate) fn classify(
    logits: FullSizeLogits<'_>,
    (height, width): (usize, usize),
    merge: &ClassMerge<'_>,
    stride: usize,
    band_bytes: usize,
    gpu_merge: GpuMerge,
) -> PendingClassMaps {
    let (queries, device) = match &logits {
        FullSizeLogits::Resize(averaged) | FullSizeLogits::Refined { averaged, .. } => (averaged.dims()[0], averaged.device()),
    };
    // Made (its index tensors uploaded) only if a band needs it.
    let tensor_ops = OnceCell::new();
    let ops = || tensor_ops.get_or_init(|| TensorOps::new(queries, width, merge, stride, &device));
    // The full-size logits of a band of rows, `[queries, rows, width]`,
    // through the kernel where it runs, else made and classified by tensor operations.
    type BandMaps<'a> = Box<dyn Fn(Range<usize>) -> (Tensor<1, Int>, Tensor<3>) + 'a>;
    let band_maps: BandMaps = match logits {
        FullSizeLogits::Resize(averaged) => {
            let logits = BandResize::new(averaged, (height, width), gpu_merge);
            let kernel = gpu_merge.kernels().then(|| BandKernel::new(&logits.source, &logits.column_taps, merge, stride)).flatten();
            Box::new(move |band| {
                let by_kernel = kernel.as_ref().and_then(|k| k.classify(&logits.source, &logits.rows[band.clone()]));
                by_kernel.unwrap_or_else(|| ops().classify(logits.rows(band)))
            })
        }
        FullSizeLogits::Refined { averaged, guide, pamr } => {
            // At full size already: the kernel's resize by identity taps
            // (weights 1 and 0) copies the values exactly.
            let kernel = gpu_merge.kernels().then(|| BandKernel::new(&averaged, &linear_taps(width, width), merge, stride)).flatten();
            let (logits, guide) = (BandResize::new(averaged, (height, width), gpu_merge), BandResize::new(guide, (height, width), gpu_merge));
            Box::new(move |band: Range<usize>| {
                let context = band.start.saturating_sub(pamr.halo())..(band.end + pamr.halo()).min(height);
                // Buffers of up to three bands: PAMR's gathers grow with the
                // neighbours they hold, and fewer, larger ones are fewer kernels.
                let refined = pamr
                    .refine_on_device(guide.rows(context.clone()), logits.rows(context.clone()), 3 * band_bytes, gpu_merge)
                    .narrow(1, band.start - context.start, band.len());
                let by_kernel = kernel.as_ref().and_then(|k| k.classify(&refined, &linear_taps(band.len(), band.len())));
                by_kernel.unwrap_or_else(|| ops().classify(refined))
            })
        }
    };
    let step = band_rows(band_bytes, queries.max(merge.classes), width, stride);
    let bands = bands(height, step);
    let mut transaction = Transaction::default();
    for band in &bands {
        let (labels, probs) = band_maps(band.clone());
        transaction = transaction.register(labels).register(probs);
    }
    PendingClassMaps { transaction, bands, size: (height, width), classes: merge.classes, stride }
}

/// [`classify`] with PAMR once, on a blank 64x64 image and two queries, so
/// that a GPU compiles the kernels of PAMR's full-size step ([`ResizeKernel`]
/// and [`crate::gpu_pamr`]'s three) before the user first asks for PAMR.
/// Their shapes are run-time arguments; what a kernel's build still takes
/// from the size is its work-group size, which cubecl makes as large as the
/// work allows up to 8 planes (of at most 128 units on today's GPUs), and a
/// 64x64 image fills those in every launch. One iteration at one dilation
/// runs the same kernels as NACLIP's ten at two.
pub(crate) async fn warm_up_refinement(device: &Device, gpu_merge: GpuMerge) -> Result<(), SegmentError> {
    let (size, source) = ((64, 64), (16, 16));
    let zeros = |channels| Tensor::<3>::zeros([channels, source.0, source.1], device);
    let pamr = Pamr { iterations: 1, dilations: vec![1] };
    let class_of_query = [0, 1];
    let merge = ClassMerge { class_of_query: &class_of_query, classes: 2, logit_scale: 50.0, background_threshold: 0.0 };
    let logits = FullSizeLogits::Refined { averaged: zeros(2), guide: zeros(3), pamr: &pamr };
    classify(logits, size, &merge, 1, BAND_BYTES, gpu_merge).read().await.map(|_| ())
}

/// [`classify`]'s per-pixel step in burn's tensor operations, for a device
/// the kernel does not run on: some thirty kernels a band.
struct TensorOps<'a> {
    merge: &'a ClassMerge<'a>,
    /// Each class's queries; `None` when every class has one query.
    synonyms: Option<Vec<Tensor<1, Int>>>,
    /// Every `stride`-th column, when `stride > 1`.
    sampled_columns: Option<Tensor<1, Int>>,
    stride: usize,
}

impl<'a> TensorOps<'a> {
    fn new(queries: usize, width: usize, merge: &'a ClassMerge<'a>, stride: usize, device: &Device) -> Self {
        let one_query_each = merge.class_of_query.len() == merge.classes && merge.class_of_query.iter().enumerate().all(|(q, &c)| q == c);
        let synonyms = (!one_query_each).then(|| {
            (0..merge.classes)
                .map(|c| {
                    let of_class: Vec<i64> = (0..queries).filter(|&q| merge.class_of_query[q] == c).map(|q| q as i64).collect();
                    let n = of_class.len();
                    Tensor::from_data(TensorData::new(of_class, [n]), device)
                })
                .collect()
        });
        let sampled_columns = (stride > 1).then(|| every_nth(width, stride, device));
        Self { merge, synonyms, sampled_columns, stride }
    }

    /// The packed labels and the kept probabilities of a band (as [`BandKernel::classify`]'s).
    ///
    /// # Shapes
    /// - `logits`: `[queries, rows, width]` at full size
    /// - returns `[(rows * width).div_ceil(4)]` and `[classes, rows.div_ceil(stride), width.div_ceil(stride)]`
    fn classify(&self, logits: Tensor<3>) -> (Tensor<1, Int>, Tensor<3>) {
        let rows = logits.dims()[1];
        let device = logits.device();
        let query_probs = activation::softmax(logits * self.merge.logit_scale, 0);
        let probs = match &self.synonyms {
            None => query_probs,
            Some(of_class) => Tensor::cat(of_class.iter().map(|q| query_probs.clone().select(0, q.clone()).max_dim(0)).collect(), 0),
        };
        let (best, label) = probs.clone().max_dim_with_indices(0);
        let labels = label.mask_fill(best.lower_elem(self.merge.background_threshold), 0);
        let probs = match &self.sampled_columns {
            None => probs,
            Some(columns) => probs.select(1, every_nth(rows, self.stride, &device)).select(2, columns.clone()),
        };
        (pack_labels(labels), probs)
    }
}

impl PendingClassMaps {
    /// Everything queued, read back in one transfer.
    pub async fn read(self) -> Result<ClassMaps, SegmentError> {
        let Self { transaction, bands, size: (height, width), classes, stride } = self;
        let data = transaction.execute_async().await.map_err(device_error)?;

        let (sampled_h, sampled_w) = (height.div_ceil(stride), width.div_ceil(stride));
        let mut labels = Vec::with_capacity(height * width);
        let mut probs = vec![0.0f32; classes * sampled_h * sampled_w];
        // Each band's probabilities, `[classes, band_rows, sampled_w]`, in the mapped read-back.
        let mut band_probs = Vec::with_capacity(bands.len());
        for (band, pair) in bands.iter().zip(data.chunks_exact(2)) {
            unpack_labels(&pair[0], band.len() * width, &mut labels);
            let band_rows = band.len().div_ceil(stride);
            let values = f32_values(&pair[1]);
            if values.len() != classes * band_rows * sampled_w {
                return Err(SegmentError::Device(format!("read back {} probabilities for a band of {band_rows} rows", values.len())));
            }
            band_probs.push(values);
        }
        // One class plane at a time, band after band: a memcpy each, the
        // planes on all cores where there are threads (the copy is most of a
        // read-back of a large photo's maps).
        let fill_plane = |c: usize, plane: &mut [f32]| {
            let mut start = 0;
            for values in &band_probs {
                let n = values.len() / classes;
                plane[start..start + n].copy_from_slice(&values[c * n..(c + 1) * n]);
                start += n;
            }
        };
        for_each_chunk_mut(&mut probs, sampled_h * sampled_w, fill_plane);
        if labels.len() != height * width {
            return Err(SegmentError::Device(format!("read back {} labels for {width}x{height} pixels", labels.len())));
        }
        Ok(ClassMaps { probs, labels })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps(values: &[f32], channels: usize, size: (usize, usize)) -> Tensor<3> {
        Tensor::from_data(TensorData::new(values.to_vec(), [channels, size.0, size.1]), &Device::flex())
    }

    /// The bilinear resize of `source` to `size`, made on the device and read back.
    fn resized_on_device(source: Tensor<3>, (height, width): (usize, usize)) -> Vec<f32> {
        let resized = BandResize::new(source, (height, width), GpuMerge::TensorOps).rows(0..height);
        pollster::block_on(read_maps(resized)).unwrap().into_vec()
    }

    #[test]
    fn doubling_matches_pytorch() {
        // F.interpolate(torch.tensor([[[[0., 1.], [2., 3.]]]]), size=(4, 4), mode='bilinear')
        let out = resized_on_device(maps(&[0., 1., 2., 3.], 1, (2, 2)), (4, 4));
        let expected = [0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn host_resize_equals_device_resize() {
        // Down and up, in both axes, 3 planes.
        let source = logits(3 * 7 * 9);
        let on_host = Maps::from_vec(source.clone(), 3, (7, 9)).unwrap();
        for size in [(23, 31), (4, 5), (7, 20)] {
            let device = resized_on_device(maps(&source, 3, (7, 9)), size);
            clearclip_fixtures::assert_close(&format!("host vs device resize to {size:?}"), on_host.resized(size).as_slice(), &device, 1e-6);
        }
    }

    /// The resize kernel (PAMR's guide and logits at full size) against the
    /// tensor operations and the host, whole and in bands of rows. Where the
    /// device is a cubecl one in a build with the kernel, it must run.
    #[test]
    fn resize_kernel_equals_tensor_ops_and_the_host() {
        let source = logits(3 * 7 * 9);
        let on_host = Maps::from_vec(source.clone(), 3, (7, 9)).unwrap();
        for (name, device) in clearclip_fixtures::test_devices() {
            let cubecl = name == "wgpu" && cfg!(feature = "gpu-kernel") && !cfg!(feature = "fusion");
            let source = Tensor::<3>::from_data(TensorData::new(source.clone(), [3, 7, 9]), &device);
            for size in [(23, 31), (4, 5), (61, 13)] {
                let host = on_host.resized(size);
                let (kernel, ops) = (BandResize::new(source.clone(), size, GpuMerge::Kernels), BandResize::new(source.clone(), size, GpuMerge::TensorOps));
                let ran = kernel.kernel.get_or_init(|| ResizeKernel::new(&source, &kernel.column_taps)).is_some();
                assert_eq!(ran, cubecl, "{name}, {size:?}: the kernel ran");
                let split = size.0 / 3;
                for band in [0..size.0, 0..split, split..size.0] {
                    let what = format!("{name}, {size:?}, rows {band:?}");
                    let expected: Vec<f32> = (0..3).flat_map(|c| host.plane(c)[band.start * size.1..band.end * size.1].to_vec()).collect();
                    for (how, resize) in [("kernel", &kernel), ("tensor ops", &ops)] {
                        let out = pollster::block_on(read_maps(resize.rows(band.clone()))).unwrap();
                        assert_eq!((out.channels(), out.size()), (3, (band.len(), size.1)), "{what}: {how}");
                        clearclip_fixtures::assert_close(&format!("{what}: {how} vs host"), out.as_slice(), &expected, 1e-6);
                    }
                }
            }
        }
    }

    /// The warm-up's PAMR step runs on every device (the warm-up ignores
    /// its failure, so that a device without it still loads).
    #[test]
    fn the_warm_up_refinement_runs() {
        for (name, device) in clearclip_fixtures::test_devices() {
            for gpu_merge in GpuMerge::ALL {
                pollster::block_on(warm_up_refinement(&device, gpu_merge)).unwrap_or_else(|e| panic!("{name}, {gpu_merge:?}: {e}"));
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let x: Vec<f32> = (0..12).map(|i| i as f32).collect();
        assert_eq!(resized_on_device(maps(&x, 2, (2, 3)), (2, 3)), x);
    }

    #[test]
    fn labels_are_packed_four_to_a_word() {
        // Every byte value, in every position of a word, and a tail of 3 (1021 = 4 * 255 + 1).
        let labels: Vec<i64> = (0..1021).map(|i| (i * 7 % 256) as i64).collect();
        for (name, device) in clearclip_fixtures::test_devices() {
            let tensor = Tensor::<2, Int>::from_data(TensorData::new(labels.clone(), [1, 1021]), &device);
            let packed = pollster::block_on(pack_labels(tensor).into_data_async()).unwrap();
            assert_eq!(packed.shape().to_vec(), vec![256], "{name}");
            // Appended after what earlier bands left, as `read` does.
            let mut back = vec![9u8, 9];
            unpack_labels(&packed, 1021, &mut back);
            assert_eq!(back[..2], [9, 9], "{name}");
            assert_eq!(back[2..], labels.iter().map(|&l| l as u8).collect::<Vec<_>>(), "{name}");
        }
    }

    #[test]
    fn bands_are_multiples_of_the_stride() {
        assert_eq!(band_rows(BAND_BYTES, 10, 100_000, 1), BAND_BYTES / (4 * 10 * 100_000));
        assert_eq!(band_rows(BAND_BYTES, 10, 100_000, 3) % 3, 0);
        assert_eq!(band_rows(BAND_BYTES, 1000, 1_000_000, 4), 4, "at least one stride of rows");
    }

    /// Pseudo-random logits in [-0.5, 0.5).
    fn logits(n: usize) -> Vec<f32> {
        clearclip_fixtures::SeededRng::new(5).uniform(n, -0.5, 0.5)
    }

    #[test]
    fn maps_made_in_many_bands_equal_maps_made_in_one() {
        // 5 queries, the second class with 3 synonyms; 23x31 output from a 7x9 map.
        let class_of_query = [0, 1, 1, 1, 2];
        let merge = ClassMerge { class_of_query: &class_of_query, classes: 3, logit_scale: 50.0, background_threshold: 0.4 };
        let source = maps(&logits(5 * 7 * 9), 5, (7, 9));
        let size = (23, 31);
        let run = |stride, band_bytes| {
            pollster::block_on(classify(FullSizeLogits::Resize(source.clone()), size, &merge, stride, band_bytes, GpuMerge::Kernels).read()).unwrap()
        };
        let one = run(1, BAND_BYTES);
        // 4 * 5 * 31 bytes a row: bands of 3 rows, and of 2 rows with stride 2.
        let banded = run(1, 3 * 4 * 5 * 31);
        assert_eq!((&banded.probs, &banded.labels), (&one.probs, &one.labels));
        let sampled = run(2, 2 * 4 * 5 * 31);
        assert_eq!(sampled.labels, one.labels);
        let (sh, sw) = (12, 16);
        assert_eq!(sampled.probs.len(), 3 * sh * sw);
        for c in 0..3 {
            for (y, x) in (0..sh).flat_map(|y| (0..sw).map(move |x| (y, x))) {
                assert_eq!(sampled.probs[(c * sh + y) * sw + x], one.probs[(c * 23 + 2 * y) * 31 + 2 * x]);
            }
        }
        // Probabilities of a class are the max over its synonyms; classes sum to at most 1.
        assert!(one.labels.contains(&0) && one.labels.iter().any(|&l| l != 0));
        for p in 0..23 * 31 {
            let total: f32 = (0..3).map(|c| one.probs[c * 23 * 31 + p]).sum();
            assert!(total <= 1.0 + 1e-5, "{total}");
        }

        // In one pass on the host (the CPU backend's path): the same maps.
        let host = classify_on_host(&pollster::block_on(read_maps(source.clone())).unwrap(), size, &merge, 2);
        assert_eq!(host.labels, one.labels);
        clearclip_fixtures::assert_close("host one-pass vs device", &host.probs, &sampled.probs, 1e-6);
    }

    /// The device's maps, in one band and in several, equal the host's one
    /// pass (the CPU backend's path), on every test device: the kernel on
    /// wgpu, burn's tensor operations on the CPU backend.
    #[test]
    fn host_maps_in_many_bands_equal_device_maps() {
        // Taller than several of the host's bands, whose rows are whole
        // strides (33 rows at stride 3, the last band 2 rows).
        let class_of_query = [0, 1, 1, 2];
        let merge = ClassMerge { class_of_query: &class_of_query, classes: 3, logit_scale: 50.0, background_threshold: 0.2 };
        let values = logits(4 * 9 * 8);
        let size = (101, 37);
        assert!(size.0 > 3 * HOST_BAND_ROWS);
        let on_host = Maps::from_vec(values.clone(), 4, (9, 8)).unwrap();
        for (name, device) in clearclip_fixtures::test_devices() {
            let source = Tensor::<3>::from_data(TensorData::new(values.clone(), [4, 9, 8]), &device);
            // One band, and bands of 12 rows (4 * 4 * 37 bytes a row).
            for (stride, band_bytes) in [(1, BAND_BYTES), (3, BAND_BYTES), (1, 12 * 4 * 4 * 37), (3, 12 * 4 * 4 * 37)] {
                for gpu_merge in [GpuMerge::Kernels, GpuMerge::TensorOps] {
                    let what = format!("{name}, {gpu_merge:?}: stride {stride}, bands of {band_bytes} bytes");
                    let device = pollster::block_on(classify(FullSizeLogits::Resize(source.clone()), size, &merge, stride, band_bytes, gpu_merge).read()).unwrap();
                    let host = classify_on_host(&on_host, size, &merge, stride);
                    assert_eq!(host.labels, device.labels, "{what}");
                    clearclip_fixtures::assert_close(&format!("host vs device, {what}"), &host.probs, &device.probs, 1e-6);
                }
            }
        }
    }

    /// The GPU kernel against burn's tensor operations on the same device and
    /// against the host's one pass: every class count from 1 to 6 (with and
    /// without synonyms), a threshold that makes background, strides 1 to 3,
    /// band sizes whose pixel counts are not multiples of 4, down- and
    /// upsampling. Where the device is a cubecl one (wgpu) in a build with the
    /// kernel, the kernel must run; elsewhere it must decline.
    #[test]
    fn kernel_equals_tensor_ops_and_the_host() {
        let cases: [(&[usize], usize, f32); 4] = [(&[0], 1, 0.0), (&[0, 1, 1, 1, 2], 3, 0.4), (&[0, 1, 2, 3, 4, 5], 6, 0.3), (&[3, 0, 2, 1, 0, 3, 2], 4, 0.0)];
        for (name, device) in clearclip_fixtures::test_devices() {
            let cubecl = name == "wgpu" && cfg!(feature = "gpu-kernel") && !cfg!(feature = "fusion");
            for (case, &(class_of_query, classes, background_threshold)) in cases.iter().enumerate() {
                let merge = ClassMerge { class_of_query, classes, logit_scale: 50.0, background_threshold };
                let queries = class_of_query.len();
                let (in_h, in_w) = (7, 9);
                let values = logits(queries * in_h * in_w);
                let source = Tensor::<3>::from_data(TensorData::new(values.clone(), [queries, in_h, in_w]), &device);
                let on_host = Maps::from_vec(values, queries, (in_h, in_w)).unwrap();
                for (size, stride) in [((23, 31), 1), ((5, 7), 2), ((61, 13), 3)] {
                    let what = format!("{name}, case {case}, {size:?} stride {stride}");
                    let resize = BandResize::new(source.clone(), size, GpuMerge::TensorOps);
                    let ops = TensorOps::new(queries, size.1, &merge, stride, &device);
                    let read = |(labels, probs): (Tensor<1, Int>, Tensor<3>)| {
                        let data = pollster::block_on(Transaction::default().register(labels).register(probs).execute_async()).unwrap();
                        let mut unpacked = Vec::new();
                        unpack_labels(&data[0], size.0 * size.1, &mut unpacked);
                        (unpacked, f32_values(&data[1]).into_owned())
                    };
                    let kernel = BandKernel::new(&source, &resize.column_taps, &merge, stride).and_then(|k| k.classify(&source, &resize.rows));
                    assert_eq!(kernel.is_some(), cubecl, "{what}: the kernel ran");
                    let (ops_labels, ops_probs) = read(ops.classify(resize.rows(0..size.0)));
                    let host = classify_on_host(&on_host, size, &merge, stride);
                    assert_eq!(host.labels, ops_labels, "{what}: tensor ops vs host");
                    clearclip_fixtures::assert_close(&format!("{what}: tensor ops vs host"), &ops_probs, &host.probs, 1e-6);
                    if let Some(maps) = kernel {
                        let (labels, probs) = read(maps);
                        assert_eq!(labels, host.labels, "{what}: kernel vs host");
                        clearclip_fixtures::assert_close(&format!("{what}: kernel vs host"), &probs, &host.probs, 1e-6);
                        assert!(labels.iter().all(|&l| (l as usize) < classes), "{what}");
                        if background_threshold > 0.0 {
                            assert!(labels.contains(&0) && labels.iter().any(|&l| l != 0), "{what}: background and classes");
                        }
                    }
                }
            }
        }
    }

    /// The window sum by the kernel equals the tensor operations' on the same
    /// device: overlapping windows, padded ones (the image is shorter, then
    /// narrower, than the crop and not a whole number of patches), in one
    /// batch and in two.
    #[test]
    fn kernel_window_sum_equals_tensor_ops() {
        let (crop, stride, patch, queries) = (16, 8, 4, 3);
        // (height, width): 4 windows of 14x16 padded to 16x16; 3 of 16x13 padded to 16x16.
        for (height, width) in [(14, 37), (30, 13)] {
            let windows = crate::windows::sliding_windows(width, height, crop, stride, patch);
            assert!(windows.len() >= 3 && windows.iter().all(|w| (w.padded_height(), w.padded_width()) == (16, 16)));
            assert!(windows.iter().all(|w| w.height < 16 || w.width < 16));
            let grid_cells = (16 / patch) * (16 / patch);
            for (name, device) in clearclip_fixtures::test_devices() {
                let cubecl = name == "wgpu" && cfg!(feature = "gpu-kernel") && !cfg!(feature = "fusion");
                let scores = |batch: &[Window], seed: usize| {
                    let n = queries * batch.len() * grid_cells;
                    Tensor::<2>::from_data(TensorData::new(logits(n + seed)[seed..].to_vec(), [queries, batch.len() * grid_cells]), &device)
                };
                let n = windows.len();
                // All windows in one batch; then the first alone and the rest.
                for split in [n, 1] {
                    let batches: Vec<Range<usize>> = [0..split, split..n].into_iter().filter(|b| !b.is_empty()).collect();
                    let sum = |use_kernel: bool| {
                        let merge = if use_kernel { GpuMerge::Kernels } else { GpuMerge::TensorOps };
                        let mut sum = WindowSum::new(queries, (height, width), patch, &device, merge);
                        for (i, batch) in batches.iter().enumerate() {
                            sum.add(scores(&windows[batch.clone()], i), &windows[batch.clone()]);
                        }
                        pollster::block_on(read_maps(sum.average())).unwrap().into_vec()
                    };
                    let what = format!("{name}, {height}x{width}, batches {batches:?}");
                    clearclip_fixtures::assert_close(&format!("{what}: kernel vs tensor ops"), &sum(true), &sum(false), 1e-6);
                }
                let zeros = Tensor::<3>::zeros([queries, height, width], &device);
                let w = windows[0];
                let (rows, columns) = (linear_taps(4, 16), linear_taps(4, 16));
                let (rows, columns) = (&rows[w.pad_top..][..w.height], &columns[w.pad_left..][..w.width]);
                let ran = add_windows(&zeros, &scores(&windows, 0), &windows, (4, 4), rows, columns).is_some();
                assert_eq!(ran, cubecl, "{name}: the kernel ran");
            }
        }
    }

    #[test]
    fn refined_in_bands_equals_refined_whole_on_the_host() {
        let class_of_query = [0, 1, 1, 1, 2];
        let merge = ClassMerge { class_of_query: &class_of_query, classes: 3, logit_scale: 50.0, background_threshold: 0.2 };
        let (source, guide) = (logits(5 * 7 * 9), logits(3 * 11 * 13));
        let size = (61, 31);
        let pamr = Pamr { iterations: 3, dilations: vec![1, 3] };
        let mut refined = Maps::from_vec(source.clone(), 5, (7, 9)).unwrap().resized(size);
        pamr.refine(&Maps::from_vec(guide.clone(), 3, (11, 13)).unwrap().resized(size), &mut refined);
        let host = classify_on_host(&refined, size, &merge, 1);
        for (name, device) in clearclip_fixtures::test_devices() {
            let upload = |v: &[f32], channels, (h, w)| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [channels, h, w]), &device);
            let (averaged, guide) = (upload(&source, 5, (7, 9)), upload(&guide, 3, (11, 13)));
            // One band; then bands of 6 rows (a halo of 9 rows each side), a query or two at a time.
            for (band_bytes, gpu_merge) in [(BAND_BYTES, GpuMerge::Kernels), (6 * 4 * 5 * 31, GpuMerge::Kernels), (6 * 4 * 5 * 31, GpuMerge::TensorOps)] {
                let logits = FullSizeLogits::Refined { averaged: averaged.clone(), guide: guide.clone(), pamr: &pamr };
                let maps = pollster::block_on(classify(logits, size, &merge, 1, band_bytes, gpu_merge).read()).unwrap();
                let what = format!("{name}, {gpu_merge:?}: PAMR in bands of {band_bytes} bytes vs on the host");
                clearclip_fixtures::assert_close(&what, &maps.probs, &host.probs, 1e-5);
                let differing = maps.labels.iter().zip(&host.labels).filter(|(a, b)| a != b).count();
                assert!(differing <= 2, "{what}: {differing} labels differ");
            }
        }
    }
}
