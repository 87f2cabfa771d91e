//! The accurate integer inverse DCT of libjpeg (`jidctint.c`,
//! `jpeg_idct_islow`), with `jdmaster.c`'s range limiting.

use crate::entropy::ComponentCoefficients;

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;

const FIX_0_298631336: i64 = 2446;
const FIX_0_390180644: i64 = 3196;
const FIX_0_541196100: i64 = 4433;
const FIX_0_765366865: i64 = 6270;
const FIX_0_899976223: i64 = 7373;
const FIX_1_175875602: i64 = 9633;
const FIX_1_501321110: i64 = 12299;
const FIX_1_847759065: i64 = 15137;
const FIX_1_961570560: i64 = 16069;
const FIX_2_053119869: i64 = 16819;
const FIX_2_562915447: i64 = 20995;
const FIX_3_072711026: i64 = 25172;

/// A component's samples after the IDCT, whole blocks: `stride` =
/// `blocks_w * 8` columns, `blocks_h * 8` rows.
pub(crate) struct Plane {
    pub samples: Vec<u8>,
    pub stride: usize,
    /// Size before upsampling (the real samples; the rest is block padding).
    pub width: usize,
    pub height: usize,
}

/// `DESCALE`: shift right with rounding.
#[inline]
fn descale(x: i64, n: u32) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// `IDCT_range_limit`: the low 10 bits of the descaled value, read as a
/// signed number, plus the centre sample 128, clamped to 0..=255.
#[inline]
fn range_limit(x: i64) -> u8 {
    let wrapped = ((x & 1023) ^ 512) - 512;
    (wrapped + 128).clamp(0, 255) as u8
}

/// The even and odd parts shared by both passes, on eight inputs already
/// dequantised (pass 1) or from the workspace (pass 2). Returns the eight
/// outputs before descaling, in order 0..7.
#[inline]
fn butterfly(x: [i64; 8]) -> [i64; 8] {
    // Even part.
    let (z2, z3) = (x[2], x[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (x[0] + x[4]) << CONST_BITS;
    let tmp1 = (x[0] - x[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (mut t0, mut t1, mut t2, mut t3) = (x[7], x[5], x[3], x[1]);
    let z1 = t0 + t3;
    let z2 = t1 + t2;
    let z3 = t0 + t2;
    let z4 = t1 + t3;
    let z5 = (z3 + z4) * FIX_1_175875602;
    t0 *= FIX_0_298631336;
    t1 *= FIX_2_053119869;
    t2 *= FIX_3_072711026;
    t3 *= FIX_1_501321110;
    let z1 = z1 * -FIX_0_899976223;
    let z2 = z2 * -FIX_2_562915447;
    let z3 = z3 * -FIX_1_961570560 + z5;
    let z4 = z4 * -FIX_0_390180644 + z5;
    t0 += z1 + z3;
    t1 += z2 + z4;
    t2 += z2 + z3;
    t3 += z1 + z4;
    [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0, tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]
}

/// One 8x8 block to samples, written at `out[row * stride + col]`.
pub(crate) fn idct_block(coefs: &[i16; 64], quant: &[u16; 64], out: &mut [u8], stride: usize) {
    let mut workspace = [0i32; 64];
    // Pass 1: columns. A column with no AC terms is its scaled DC.
    for col in 0..8 {
        let dequant = |row: usize| coefs[row * 8 + col] as i64 * quant[row * 8 + col] as i64;
        if (1..8).all(|row| coefs[row * 8 + col] == 0) {
            let dc = (dequant(0) << PASS1_BITS) as i32;
            for row in 0..8 {
                workspace[row * 8 + col] = dc;
            }
            continue;
        }
        let x = std::array::from_fn(dequant);
        for (row, v) in butterfly(x).into_iter().enumerate() {
            workspace[row * 8 + col] = descale(v, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    // Pass 2: rows, with the final descale and range limit.
    for row in 0..8 {
        let w = &workspace[row * 8..row * 8 + 8];
        let line = &mut out[row * stride..row * stride + 8];
        if w[1..].iter().all(|&v| v == 0) {
            line.fill(range_limit(descale(w[0] as i64, PASS1_BITS + 3)));
            continue;
        }
        let x = std::array::from_fn(|i| w[i] as i64);
        for (o, v) in line.iter_mut().zip(butterfly(x)) {
            *o = range_limit(descale(v, CONST_BITS + PASS1_BITS + 3));
        }
    }
}

/// All blocks of a component.
pub(crate) fn component_plane(component: &ComponentCoefficients) -> Plane {
    let stride = component.blocks_w * 8;
    let mut samples = vec![0u8; stride * component.blocks_h * 8];
    let quant = component.quant.as_ref().expect("every component has latched a table");
    for by in 0..component.blocks_h {
        for bx in 0..component.blocks_w {
            let block = &component.coefs[by * component.blocks_w + bx];
            idct_block(block, quant, &mut samples[by * 8 * stride + bx * 8..], stride);
        }
    }
    Plane { samples, stride, width: component.width, height: component.height }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A floating-point IDCT: ISLOW is accurate to within one level of it.
    fn reference(coefs: &[i16; 64], quant: &[u16; 64]) -> [f64; 64] {
        let c = |u: usize| if u == 0 { std::f64::consts::FRAC_1_SQRT_2 } else { 1.0 };
        std::array::from_fn(|i| {
            let (y, x) = (i / 8, i % 8);
            let mut sum = 0.0;
            for v in 0..8 {
                for u in 0..8 {
                    let f = coefs[v * 8 + u] as f64 * quant[v * 8 + u] as f64;
                    sum += c(u) * c(v) * f
                        * ((2 * x + 1) as f64 * u as f64 * std::f64::consts::PI / 16.0).cos()
                        * ((2 * y + 1) as f64 * v as f64 * std::f64::consts::PI / 16.0).cos();
                }
            }
            (sum / 4.0 + 128.0).clamp(0.0, 255.0)
        })
    }

    #[test]
    fn close_to_the_exact_transform() {
        let mut seed = 12345u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            seed >> 8
        };
        for _ in 0..200 {
            let coefs: [i16; 64] = std::array::from_fn(|k| if k < 20 || next() % 4 == 0 { (next() % 61) as i16 - 30 } else { 0 });
            let quant: [u16; 64] = std::array::from_fn(|_| (next() % 16 + 1) as u16);
            let mut out = [0u8; 64];
            idct_block(&coefs, &quant, &mut out, 8);
            let want = reference(&coefs, &quant);
            for i in 0..64 {
                assert!((out[i] as f64 - want[i]).abs() <= 1.0, "sample {i}: {} vs {}", out[i], want[i]);
            }
        }
    }

    #[test]
    fn range_limit_wraps_like_libjpeg() {
        assert_eq!(range_limit(0), 128);
        assert_eq!(range_limit(127), 255);
        assert_eq!(range_limit(300), 255);
        assert_eq!(range_limit(-128), 0);
        assert_eq!(range_limit(-300), 0);
        // Past +-512 the table wraps (corrupt data only).
        assert_eq!(range_limit(1024), 128);
        assert_eq!(range_limit(-1024 + 10), 138);
    }
}
