//! Chroma upsampling as libjpeg-turbo does it by default (`jdsample.c`,
//! `do_fancy_upsampling`), then colour conversion, one output row at a time.

use crate::color;
use crate::idct::Plane;
use crate::markers::Frame;
use crate::ColorSpace;

/// How a component gets to full size (`jinit_upsampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    FullSize,
    /// Triangle filter across columns (`h2v1_fancy_upsample`).
    H2V1Fancy,
    /// Triangle filter across rows (`h1v2_fancy_upsample`).
    H1V2Fancy,
    /// Both (`h2v2_fancy_upsample`).
    H2V2Fancy,
    /// Replication by integer factors (`int_upsample`, `h2v1_upsample`, ...).
    Replicate { h: usize, v: usize },
}

fn method(frame: &Frame, c: usize, downsampled_width: usize) -> Method {
    let comp = &frame.components[c];
    let (h, v) = ((frame.max_h / comp.h) as usize, (frame.max_v / comp.v) as usize);
    match (h, v) {
        (1, 1) => Method::FullSize,
        // libjpeg-turbo uses the fancy filters only on rows wider than 2.
        (2, 1) if downsampled_width > 2 => Method::H2V1Fancy,
        (1, 2) => Method::H1V2Fancy,
        (2, 2) if downsampled_width > 2 => Method::H2V2Fancy,
        (h, v) => Method::Replicate { h, v },
    }
}

/// Row `i` of a plane, real samples only.
fn row(plane: &Plane, i: usize) -> &[u8] {
    &plane.samples[i * plane.stride..i * plane.stride + plane.width]
}

/// The row next to `i` on the side of output row parity `below`, with the
/// first and last real rows repeated at the edges, as `jdmainct.c` provides
/// context rows (`make_funny_pointers`, `set_bottom_pointers`).
fn neighbour(plane: &Plane, i: usize, below: bool) -> &[u8] {
    let j = if below { (i + 1).min(plane.height - 1) } else { i.saturating_sub(1) };
    row(plane, j)
}

/// Output row `y` of a component at full size, `out.len()` samples.
fn upsample_row(plane: &Plane, method: Method, y: usize, out: &mut [u8]) {
    let width = out.len();
    match method {
        Method::FullSize => out.copy_from_slice(&row(plane, y)[..width]),
        Method::Replicate { h, v } => {
            let input = row(plane, y / v);
            for (x, o) in out.iter_mut().enumerate() {
                *o = input[x / h];
            }
        }
        Method::H2V1Fancy => {
            let input = row(plane, y);
            let n = input.len();
            let mut full = vec![0u8; 2 * n];
            let s = |i: usize| input[i] as i32;
            full[0] = input[0];
            full[1] = ((s(0) * 3 + s(1) + 2) >> 2) as u8;
            for i in 1..n - 1 {
                let centre = s(i) * 3;
                full[2 * i] = ((centre + s(i - 1) + 1) >> 2) as u8;
                full[2 * i + 1] = ((centre + s(i + 1) + 2) >> 2) as u8;
            }
            full[2 * n - 2] = ((s(n - 1) * 3 + s(n - 2) + 1) >> 2) as u8;
            full[2 * n - 1] = input[n - 1];
            out.copy_from_slice(&full[..width]);
        }
        Method::H1V2Fancy => {
            let (i, below) = (y / 2, y % 2 == 1);
            let (near, far) = (row(plane, i), neighbour(plane, i, below));
            let bias = if below { 2 } else { 1 };
            for (x, o) in out.iter_mut().enumerate() {
                *o = ((near[x] as i32 * 3 + far[x] as i32 + bias) >> 2) as u8;
            }
        }
        Method::H2V2Fancy => {
            let (i, below) = (y / 2, y % 2 == 1);
            let (near, far) = (row(plane, i), neighbour(plane, i, below));
            let n = near.len();
            let sum = |x: usize| near[x] as i32 * 3 + far[x] as i32;
            let mut full = vec![0u8; 2 * n];
            full[0] = ((sum(0) * 4 + 8) >> 4) as u8;
            full[1] = ((sum(0) * 3 + sum(1) + 7) >> 4) as u8;
            for x in 1..n - 1 {
                let centre = sum(x) * 3;
                full[2 * x] = ((centre + sum(x - 1) + 8) >> 4) as u8;
                full[2 * x + 1] = ((centre + sum(x + 1) + 7) >> 4) as u8;
            }
            full[2 * n - 2] = ((sum(n - 1) * 3 + sum(n - 2) + 8) >> 4) as u8;
            full[2 * n - 1] = ((sum(n - 1) * 4 + 7) >> 4) as u8;
            out.copy_from_slice(&full[..width]);
        }
    }
}

/// Upsamples every component and converts to interleaved RGB.
pub(crate) fn to_rgb(frame: &Frame, planes: &[Plane], color: ColorSpace) -> Vec<u8> {
    let (width, height) = (frame.width as usize, frame.height as usize);
    let methods: Vec<Method> = planes.iter().enumerate().map(|(c, p)| method(frame, c, p.width)).collect();
    let mut rows = vec![vec![0u8; width]; planes.len()];
    let mut rgb = vec![0u8; width * height * 3];
    let converter = color::Converter::new(color);
    for (y, out) in rgb.chunks_exact_mut(width * 3).enumerate() {
        for ((plane, &method), row) in planes.iter().zip(&methods).zip(&mut rows) {
            upsample_row(plane, method, y, row);
        }
        converter.convert_row(&rows, out);
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(width: usize, height: usize, f: impl Fn(usize, usize) -> u8) -> Plane {
        let stride = width.div_ceil(8) * 8;
        let mut samples = vec![77u8; stride * height.div_ceil(8) * 8];
        for y in 0..height {
            for x in 0..width {
                samples[y * stride + x] = f(x, y);
            }
        }
        Plane { samples, stride, width, height }
    }

    #[test]
    fn fancy_filters_keep_flat_areas_flat_and_ignore_block_padding() {
        // The padding (77) must never leak into the output.
        let p = plane(5, 3, |_, _| 200);
        for method in [Method::H2V1Fancy, Method::H1V2Fancy, Method::H2V2Fancy, Method::Replicate { h: 4, v: 1 }] {
            for y in 0..6 {
                let mut out = vec![0u8; if method == Method::H1V2Fancy { 5 } else { 9 }];
                let y = if method == Method::H2V1Fancy || matches!(method, Method::Replicate { .. }) { y / 2 } else { y };
                upsample_row(&p, method, y, &mut out);
                assert!(out.iter().all(|&v| v == 200), "{method:?} row {y}: {out:?}");
            }
        }
    }

    #[test]
    fn h2v1_weights_three_to_one() {
        let p = plane(3, 1, |x, _| [0, 100, 40][x]);
        let mut out = vec![0u8; 6];
        upsample_row(&p, Method::H2V1Fancy, 0, &mut out);
        // (3a + b + 1 or 2) >> 2, edges copied.
        let expect = [0u32, (100 + 2) >> 2, (300 + 1) >> 2, (300 + 40 + 2) >> 2, (120 + 100 + 1) >> 2, 40];
        assert_eq!(out, expect.map(|v| v as u8));
    }
}
