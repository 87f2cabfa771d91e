//! The merge's two steps on a GPU as one kernel each (they were some 15 and
//! some 30 of burn's tensor operations, each a pass over memory):
//!
//! - [`add_windows`]: `forward_slide`'s sum, each window's patch scores
//!   upsampled bilinearly to its padded crop, the padding cut off, added
//!   where the window lies (one kernel a batch of windows of one shape);
//! - [`BandKernel`]: the bilinear resize of the averaged logits to a band
//!   of output rows, softmax of `logit_scale * logits` over the queries, max
//!   over each class's synonyms, argmax, background threshold, the labels
//!   packed four to a 32-bit word and the probabilities of every `stride`-th
//!   pixel. Each pixel's work is [`crate::merge::classify_on_host`]'s, in the
//!   same order of arithmetic; memory sees the labels and the kept
//!   probabilities only (the tensor operations took 3.5 ms of a 16 ms
//!   last-block re-run on an H200, and 1.4 s of the image phase on lavapipe,
//!   for a 2048x1367 photo).
//!
//! And for PAMR, which refines logits at full size guided by the image at
//! full size, [`ResizeKernel`]: the bilinear resize alone, band by band.
//!
//! The kernels need cubecl tensors (`burn-cubecl`'s `CubeBackend`: wgpu on
//! WebGPU, Vulkan or Metal). All answer `None` for any other (the
//! CPU backend, a build with burn's kernel fusion, a build without the
//! `gpu-kernel` feature), and the caller runs the tensor operations instead.

use burn::tensor::{Int, Tensor};

use crate::merge::ClassMerge;
use crate::resample::LinearTap;
use crate::windows::Window;

/// `sum` with the scores of `windows` (all of one shape: size and padding)
/// upsampled to their crops and added where they lie, in the windows' order,
/// or `None` where the kernel cannot run (see the module's doc).
///
/// # Shapes
/// - `sum`: `[queries, height, width]`
/// - `scores`: `[queries, windows.len() * grid.0 * grid.1]`, each window's patch grid row-major
/// - `rows`, `columns`: the taps of the crop's rows and columns in the patch grid
/// - returns `[queries, height, width]`
pub(crate) fn add_windows(
    sum: &Tensor<3>,
    scores: &Tensor<2>,
    windows: &[Window],
    grid: (usize, usize),
    rows: &[LinearTap],
    columns: &[LinearTap],
) -> Option<Tensor<3>> {
    #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
    {
        cube::add_windows(sum, scores, windows, grid, rows, columns)
    }
    #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
    {
        let _ = (sum, scores, windows, grid, rows, columns);
        None
    }
}

/// The class maps of one request on a GPU, band of output rows by band:
/// what every band shares (the columns' taps, each query's class) is
/// uploaded once, when the kernel is made; a band uploads its rows' taps.
pub(crate) struct BandKernel<'a> {
    #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
    inner: cube::BandKernel<'a>,
    #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
    never: (std::convert::Infallible, std::marker::PhantomData<&'a ()>),
}

impl<'a> BandKernel<'a> {
    /// The kernel for logits on `like`'s device, resized to the output
    /// columns `columns`, or `None` where it cannot run (see the module's
    /// doc; also more than 256 classes, or logits that are not f32).
    pub fn new(like: &Tensor<3>, columns: &[LinearTap], merge: &'a ClassMerge<'a>, stride: usize) -> Option<Self> {
        #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
        {
            cube::BandKernel::new(like, columns, merge, stride).map(|inner| Self { inner })
        }
        #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
        {
            let _ = (like, columns, merge, stride);
            None
        }
    }

    /// Labels and probabilities of one band of output rows, queued on the
    /// device, or `None` where `logits` are not f32 on the kernel's device.
    ///
    /// # Shapes
    /// - `logits`: `[queries, in_h, in_w]`; `rows` and the kernel's columns index its last two axes
    /// - returns the labels packed four to a word, `[(rows.len() * columns).div_ceil(4)]`,
    ///   and the probabilities, `[classes, rows.len().div_ceil(stride), columns.div_ceil(stride)]`
    pub fn classify(&self, logits: &Tensor<3>, rows: &[LinearTap]) -> Option<(Tensor<1, Int>, Tensor<3>)> {
        #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
        {
            self.inner.classify(logits, rows)
        }
        #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
        {
            let _ = (logits, rows);
            match self.never.0 {}
        }
    }
}

/// A bilinear resize on a GPU, band of output rows by band, as one kernel a
/// band: the columns' taps are uploaded once, when the kernel is made; a
/// band uploads its rows' taps. Its arithmetic is [`crate::merge`]'s tensor
/// operations' (columns first, then rows), whose kernels' vector widths
/// follow the image, so that they compiled anew for each new size of photo.
pub(crate) struct ResizeKernel {
    #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
    inner: cube::ResizeKernel,
    #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
    never: std::convert::Infallible,
}

impl ResizeKernel {
    /// The kernel for sources on `like`'s device, resized to the output
    /// columns `columns`, or `None` where it cannot run (see the module's
    /// doc; also sources that are not f32).
    pub fn new(like: &Tensor<3>, columns: &[LinearTap]) -> Option<Self> {
        #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
        {
            cube::ResizeKernel::new(like, columns).map(|inner| Self { inner })
        }
        #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
        {
            let _ = (like, columns);
            None
        }
    }

    /// The output rows `rows` of `source`, queued on the device, or `None`
    /// where `source` is not f32 on the kernel's device.
    ///
    /// # Shapes
    /// - `source`: `[channels, in_h, in_w]`; `rows` and the kernel's columns index its last two axes
    /// - returns `[channels, rows.len(), columns]`
    pub fn rows(&self, source: &Tensor<3>, rows: &[LinearTap]) -> Option<Tensor<3>> {
        #[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
        {
            self.inner.rows(source, rows)
        }
        #[cfg(not(all(feature = "gpu-kernel", not(feature = "fusion"))))]
        {
            let _ = (source, rows);
            match self.never {}
        }
    }
}

#[cfg(all(feature = "gpu-kernel", not(feature = "fusion")))]
pub(crate) mod cube {
    use burn::tensor::{self as burn_tensor, DType, Int, Shape};
    use burn_cubecl::tensor::CubeTensor;
    use burn_cubecl::{CubeBackend, CubeDevice};
    use cubecl::prelude::*;
    use cubecl::{calculate_cube_count_elemwise, client::Client};

    use crate::merge::ClassMerge;
    use crate::resample::LinearTap;
    use crate::windows::Window;

    /// One output pixel of channel `q`: the bilinear blend of its four
    /// source values, columns first, then rows, PyTorch's order
    /// (`crate::resample::bilinear`).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn blended(source: &Tensor<f32>, q: usize, row0: usize, row1: usize, column0: usize, column1: usize, weights: (f32, f32, f32, f32)) -> f32 {
        let (h0, h1, w0, w1) = weights;
        let plane = q * source.stride(0);
        let (upper, lower) = (plane + row0 * source.stride(1), plane + row1 * source.stride(1));
        let (c0, c1) = (column0 * source.stride(2), column1 * source.stride(2));
        h0 * (w0 * source[upper + c0] + w1 * source[upper + c1]) + h1 * (w0 * source[lower + c0] + w1 * source[lower + c1])
    }

    /// One output pixel's score for query `q`: `logit_scale` times its
    /// [`blended`] logit.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn scaled_logit(logits: &Tensor<f32>, q: usize, row0: usize, row1: usize, column0: usize, column1: usize, weights: (f32, f32, f32, f32), logit_scale: f32) -> f32 {
        blended(logits, q, row0, row1, column0, column1, weights) * logit_scale
    }

    /// Output pixel `(y, x)`'s two source rows and two source columns, and
    /// their weights `(h0, h1, w0, w1)`: the taps are two per output row,
    /// then two per output column.
    #[cube]
    fn taps_at(
        row_tap_index: &Tensor<u32>,
        row_tap_weight: &Tensor<f32>,
        column_tap_index: &Tensor<u32>,
        column_tap_weight: &Tensor<f32>,
        y: u32,
        x: u32,
    ) -> (usize, usize, usize, usize, (f32, f32, f32, f32)) {
        let (ty, tx) = ((2 * y) as usize, (2 * x) as usize);
        let weights = (row_tap_weight[ty], row_tap_weight[ty + 1], column_tap_weight[tx], column_tap_weight[tx + 1]);
        (row_tap_index[ty] as usize, row_tap_index[ty + 1] as usize, column_tap_index[tx] as usize, column_tap_index[tx + 1] as usize, weights)
    }

    /// One unit per element of the output band, `[channels, rows, width]`:
    /// its [`blended`] value. The taps are two per output row of the band,
    /// and two per output column.
    #[cube(launch)]
    fn resize_rows(
        source: &Tensor<f32>,
        row_tap_index: &Tensor<u32>,
        row_tap_weight: &Tensor<f32>,
        column_tap_index: &Tensor<u32>,
        column_tap_weight: &Tensor<f32>,
        out: &mut Tensor<f32>,
        rows: u32,
        width: u32,
    ) {
        let at = ABSOLUTE_POS;
        if at >= out.len() {
            terminate!();
        }
        let channel = at as u32 / (rows * width);
        let (y, x) = ((at as u32 / width) % rows, at as u32 % width);
        let (row0, row1, column0, column1, weights) = taps_at(row_tap_index, row_tap_weight, column_tap_index, column_tap_weight, y, x);
        out[at] = blended(source, channel as usize, row0, row1, column0, column1, weights);
    }

    /// One unit per packed word of labels, four pixels of the band in a row.
    /// The taps' indices and weights are two per output row of the band, and
    /// two per output column.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn classify_pixels(
        logits: &Tensor<f32>,
        row_tap_index: &Tensor<u32>,
        row_tap_weight: &Tensor<f32>,
        column_tap_index: &Tensor<u32>,
        column_tap_weight: &Tensor<f32>,
        class_of_query: &Tensor<u32>,
        labels: &mut Tensor<u32>,
        probs: &mut Tensor<f32>,
        rows: u32,
        width: u32,
        classes: u32,
        stride: u32,
        logit_scale: f32,
        background_threshold: f32,
    ) {
        let word = ABSOLUTE_POS;
        if word >= labels.len() {
            terminate!();
        }
        let queries = class_of_query.len();
        let mut packed = 0u32;
        #[unroll]
        for byte in 0..4u32 {
            let pixel = word as u32 * 4 + byte;
            if pixel < rows * width {
                let (y, x) = (pixel / width, pixel % width);
                let (row0, row1, column0, column1, weights) = taps_at(row_tap_index, row_tap_weight, column_tap_index, column_tap_weight, y, x);
                // Softmax over the queries: the largest score, then the sum of
                // the exponentials; the scores are recomputed (four cached
                // reads each) rather than kept in an array of a length known
                // only at run time.
                // (WGSL has no infinity literal: the first query starts the max.)
                let mut largest = scaled_logit(logits, 0, row0, row1, column0, column1, weights, logit_scale);
                for q in 1..queries {
                    largest = f32::max(largest, scaled_logit(logits, q, row0, row1, column0, column1, weights, logit_scale));
                }
                let mut total = f32::new(0.0);
                for q in 0..queries {
                    total += f32::exp(scaled_logit(logits, q, row0, row1, column0, column1, weights, logit_scale) - largest);
                }
                let sampled = y % stride == 0 && x % stride == 0;
                let at = ((y / stride) * probs.stride(1) as u32 + (x / stride)) as usize;
                let plane = probs.stride(0);
                // Probabilities are at least 0, so class 0 is taken first and
                // a later class only when strictly more probable (the host's
                // first-of-equals argmax).
                let mut best = 0u32;
                let mut best_prob = f32::new(-1.0);
                for c in 0..classes {
                    // Every class has a query, so this is replaced.
                    let mut prob = f32::new(-1.0);
                    for q in 0..queries {
                        if class_of_query[q] == c {
                            let e = f32::exp(scaled_logit(logits, q, row0, row1, column0, column1, weights, logit_scale) - largest);
                            prob = f32::max(prob, e / total);
                        }
                    }
                    if prob > best_prob {
                        best = c;
                        best_prob = prob;
                    }
                    if sampled {
                        probs[c as usize * plane + at] = prob;
                    }
                }
                let label = if best_prob < background_threshold { 0u32 } else { best };
                packed |= label << (8 * byte);
            }
        }
        labels[word] = packed;
    }

    /// One unit per element of the sum: its value plus, for each window of
    /// the batch that covers it, the window's patch scores blended at the
    /// pixel, columns first, then rows (`crate::resample::bilinear`'s order,
    /// as the tensor operations did). `windows` holds each window's top and
    /// left; `tap_index` and `tap_weight` two taps per row of the crop, then
    /// two per column.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    fn add_windows_kernel(
        sum: &Tensor<f32>,
        scores: &Tensor<f32>,
        windows: &Tensor<u32>,
        tap_index: &Tensor<u32>,
        tap_weight: &Tensor<f32>,
        out: &mut Tensor<f32>,
        crop_height: u32,
        crop_width: u32,
        grid_height: u32,
        grid_width: u32,
    ) {
        let at = ABSOLUTE_POS;
        if at >= out.len() {
            terminate!();
        }
        let (height, width) = (out.shape(1) as u32, out.shape(2) as u32);
        let q = at as u32 / (height * width);
        let y = (at as u32 / width) % height;
        let x = at as u32 % width;
        let mut value = sum[q as usize * sum.stride(0) + y as usize * sum.stride(1) + x as usize * sum.stride(2)];
        let query_scores = q as usize * scores.stride(0);
        let column_stride = scores.stride(1);
        let window_count = windows.len() / 2;
        for i in 0..window_count {
            let (top, left) = (windows[2 * i], windows[2 * i + 1]);
            if y >= top && y < top + crop_height && x >= left && x < left + crop_width {
                let (ty, tx) = ((2 * (y - top)) as usize, (2 * (crop_height + x - left)) as usize);
                // Window i's patch (r, c) is column `(i * grid_height + r) * grid_width + c` of the scores.
                let first_row = i as u32 * grid_height;
                let upper = (first_row + tap_index[ty]) * grid_width;
                let lower = (first_row + tap_index[ty + 1]) * grid_width;
                let (c0, c1) = (tap_index[tx], tap_index[tx + 1]);
                let (h0, h1, w0, w1) = (tap_weight[ty], tap_weight[ty + 1], tap_weight[tx], tap_weight[tx + 1]);
                let a00 = scores[query_scores + (upper + c0) as usize * column_stride];
                let a01 = scores[query_scores + (upper + c1) as usize * column_stride];
                let a10 = scores[query_scores + (lower + c0) as usize * column_stride];
                let a11 = scores[query_scores + (lower + c1) as usize * column_stride];
                value += h0 * (w0 * a00 + w1 * a01) + h1 * (w0 * a10 + w1 * a11);
            }
        }
        out[at] = value;
    }

    pub(super) fn add_windows(
        sum: &burn_tensor::Tensor<3>,
        scores: &burn_tensor::Tensor<2>,
        windows: &[Window],
        (grid_height, grid_width): (usize, usize),
        rows: &[LinearTap],
        columns: &[LinearTap],
    ) -> Option<burn_tensor::Tensor<3>> {
        let sum = sum.clone().try_into_primitive::<CubeBackend>().ok()?;
        let scores = scores.clone().try_into_primitive::<CubeBackend>().ok()?;
        if sum.dtype != DType::F32 || scores.dtype != DType::F32 {
            return None;
        }
        let (client, device) = (sum.client.clone(), sum.device.clone());
        let (tap_index, tap_weight) = upload_taps(&client, &device, &[rows, columns]);
        let corners: Vec<u8> = windows.iter().flat_map(|w| [w.y as u32, w.x as u32]).flat_map(u32::to_le_bytes).collect();
        let corners = upload(&client, &device, corners, 2 * windows.len(), DType::U32);
        let shape = sum.meta.shape().clone();
        let out = empty(&client, &device, shape.clone(), DType::F32);
        launch_over(&client, shape.num_elements(), |cube_count, cube_dim| {
            add_windows_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                sum.into_tensor_arg(),
                scores.into_tensor_arg(),
                corners.into_tensor_arg(),
                tap_index.into_tensor_arg(),
                tap_weight.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                rows.len() as u32,
                columns.len() as u32,
                grid_height as u32,
                grid_width as u32,
            )
        });
        Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
    }

    /// The two taps of each tap of `lists`, one list after the other: their
    /// indices and their weights.
    fn upload_taps(client: &Client, device: &CubeDevice, lists: &[&[LinearTap]]) -> (CubeTensor, CubeTensor) {
        let taps = || lists.iter().flat_map(|list| list.iter());
        let tap_index: Vec<u8> = taps().flat_map(|t| [t.i0 as u32, t.i1 as u32]).flat_map(u32::to_le_bytes).collect();
        let tap_weight: Vec<u8> = taps().flat_map(|t| [t.w0, t.w1]).flat_map(f32::to_le_bytes).collect();
        let len = 2 * taps().count();
        (upload(client, device, tap_index, len, DType::U32), upload(client, device, tap_weight, len, DType::F32))
    }

    pub(crate) fn upload(client: &Client, device: &CubeDevice, bytes: Vec<u8>, len: usize, dtype: DType) -> CubeTensor {
        let handle = client.create_from_slice(&bytes);
        CubeTensor::new_contiguous(client.clone(), device.clone(), Shape::new([len]), handle, dtype)
    }

    /// Launches `launch` with a unit per element of `elements`.
    pub(crate) fn launch_over(client: &Client, elements: usize, launch: impl FnOnce(CubeCount, CubeDim)) {
        let cube_dim = CubeDim::new(client, elements);
        launch(calculate_cube_count_elemwise(client, elements, cube_dim), cube_dim);
    }

    pub(crate) fn empty(client: &Client, device: &CubeDevice, shape: Shape, dtype: DType) -> CubeTensor {
        let handle = client.empty(shape.num_elements() * dtype.size());
        CubeTensor::new_contiguous(client.clone(), device.clone(), shape, handle, dtype)
    }

    /// [`super::BandKernel`] on a cubecl device.
    pub(super) struct BandKernel<'a> {
        client: Client,
        device: CubeDevice,
        column_tap_index: CubeTensor,
        column_tap_weight: CubeTensor,
        class_of_query: CubeTensor,
        columns: usize,
        merge: &'a ClassMerge<'a>,
        stride: usize,
    }

    impl<'a> BandKernel<'a> {
        pub(super) fn new(like: &burn_tensor::Tensor<3>, columns: &[LinearTap], merge: &'a ClassMerge<'a>, stride: usize) -> Option<Self> {
            let like = like.clone().try_into_primitive::<CubeBackend>().ok()?;
            if like.dtype != DType::F32 || merge.classes > 256 {
                return None;
            }
            let (client, device) = (like.client.clone(), like.device.clone());
            let (column_tap_index, column_tap_weight) = upload_taps(&client, &device, &[columns]);
            let class_of_query: Vec<u8> = merge.class_of_query.iter().flat_map(|&c| (c as u32).to_le_bytes()).collect();
            let class_of_query = upload(&client, &device, class_of_query, merge.class_of_query.len(), DType::U32);
            Some(Self { client, device, column_tap_index, column_tap_weight, class_of_query, columns: columns.len(), merge, stride })
        }

        pub(super) fn classify(&self, logits: &burn_tensor::Tensor<3>, rows: &[LinearTap]) -> Option<(burn_tensor::Tensor<1, Int>, burn_tensor::Tensor<3>)> {
            let logits = logits.clone().try_into_primitive::<CubeBackend>().ok()?;
            if logits.dtype != DType::F32 || logits.device != self.device {
                return None;
            }
            let (client, device, merge, stride) = (&self.client, &self.device, self.merge, self.stride);
            let (row_tap_index, row_tap_weight) = upload_taps(client, device, &[rows]);
            let words = (rows.len() * self.columns).div_ceil(4);
            let labels = empty(client, device, Shape::new([words]), DType::U32);
            let probs_shape = Shape::new([merge.classes, rows.len().div_ceil(stride), self.columns.div_ceil(stride)]);
            let probs = empty(client, device, probs_shape, DType::F32);

            launch_over(client, words, |cube_count, cube_dim| {
                classify_pixels::launch(
                    client,
                    cube_count,
                    cube_dim,
                    logits.into_tensor_arg(),
                    row_tap_index.into_tensor_arg(),
                    row_tap_weight.into_tensor_arg(),
                    self.column_tap_index.clone().into_tensor_arg(),
                    self.column_tap_weight.clone().into_tensor_arg(),
                    self.class_of_query.clone().into_tensor_arg(),
                    labels.clone().into_tensor_arg(),
                    probs.clone().into_tensor_arg(),
                    rows.len() as u32,
                    self.columns as u32,
                    merge.classes as u32,
                    stride as u32,
                    merge.logit_scale,
                    merge.background_threshold,
                )
            });
            Some((burn_tensor::Tensor::from_primitive::<CubeBackend>(labels), burn_tensor::Tensor::from_primitive::<CubeBackend>(probs)))
        }
    }

    /// [`super::ResizeKernel`] on a cubecl device.
    pub(super) struct ResizeKernel {
        client: Client,
        device: CubeDevice,
        column_tap_index: CubeTensor,
        column_tap_weight: CubeTensor,
        columns: usize,
    }

    impl ResizeKernel {
        pub(super) fn new(like: &burn_tensor::Tensor<3>, columns: &[LinearTap]) -> Option<Self> {
            let like = like.clone().try_into_primitive::<CubeBackend>().ok()?;
            if like.dtype != DType::F32 {
                return None;
            }
            let (client, device) = (like.client.clone(), like.device.clone());
            let (column_tap_index, column_tap_weight) = upload_taps(&client, &device, &[columns]);
            Some(Self { client, device, column_tap_index, column_tap_weight, columns: columns.len() })
        }

        pub(super) fn rows(&self, source: &burn_tensor::Tensor<3>, rows: &[LinearTap]) -> Option<burn_tensor::Tensor<3>> {
            let channels = source.dims()[0];
            let source = source.clone().try_into_primitive::<CubeBackend>().ok()?;
            if source.dtype != DType::F32 || source.device != self.device {
                return None;
            }
            let (client, device) = (&self.client, &self.device);
            let (row_tap_index, row_tap_weight) = upload_taps(client, device, &[rows]);
            let shape = Shape::new([channels, rows.len(), self.columns]);
            let out = empty(client, device, shape.clone(), DType::F32);
            launch_over(client, shape.num_elements(), |cube_count, cube_dim| {
                resize_rows::launch(
                    client,
                    cube_count,
                    cube_dim,
                    source.into_tensor_arg(),
                    row_tap_index.into_tensor_arg(),
                    row_tap_weight.into_tensor_arg(),
                    self.column_tap_index.clone().into_tensor_arg(),
                    self.column_tap_weight.clone().into_tensor_arg(),
                    out.clone().into_tensor_arg(),
                    rows.len() as u32,
                    self.columns as u32,
                )
            });
            Some(burn_tensor::Tensor::from_primitive::<CubeBackend>(out))
        }
    }
}
