//! Colour conversion to RGB: libjpeg's YCbCr and YCCK tables (`jdcolor.c`),
//! and OpenCV's CMYK to BGR (`icvCvt_CMYK2BGR_8u_C4C3R`), which is what the
//! reference pipeline gets from `cv2.imread` for four-component files.

use crate::ColorSpace;

const SCALEBITS: u32 = 16;
const ONE_HALF: i32 = 1 << (SCALEBITS - 1);

/// `FIX(x)`: x in 16-bit fixed point, rounded.
const fn fix(x: f64) -> i32 {
    (x * (1 << SCALEBITS) as f64 + 0.5) as i32
}

pub(crate) struct Converter {
    color: ColorSpace,
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

impl Converter {
    /// `build_ycc_rgb_table`.
    pub fn new(color: ColorSpace) -> Self {
        let x = |i: usize| i as i32 - 128;
        Self {
            color,
            cr_r: std::array::from_fn(|i| (fix(1.40200) * x(i) + ONE_HALF) >> SCALEBITS),
            cb_b: std::array::from_fn(|i| (fix(1.77200) * x(i) + ONE_HALF) >> SCALEBITS),
            cr_g: std::array::from_fn(|i| -fix(0.71414) * x(i)),
            cb_g: std::array::from_fn(|i| -fix(0.34414) * x(i) + ONE_HALF),
        }
    }

    fn ycc_to_rgb(&self, y: u8, cb: u8, cr: u8) -> [i32; 3] {
        let (y, cb, cr) = (y as i32, cb as usize, cr as usize);
        [y + self.cr_r[cr], y + ((self.cb_g[cb] + self.cr_g[cr]) >> SCALEBITS), y + self.cb_b[cb]]
    }

    /// One row of components (already at full size) to interleaved RGB.
    pub fn convert_row(&self, rows: &[Vec<u8>], out: &mut [u8]) {
        let clamp = |v: i32| v.clamp(0, 255) as u8;
        for (x, px) in out.chunks_exact_mut(3).enumerate() {
            let rgb = match self.color {
                ColorSpace::Grayscale => [rows[0][x]; 3],
                ColorSpace::Rgb => [rows[0][x], rows[1][x], rows[2][x]],
                ColorSpace::YCbCr => self.ycc_to_rgb(rows[0][x], rows[1][x], rows[2][x]).map(clamp),
                ColorSpace::Cmyk => cmyk_to_rgb([rows[0][x], rows[1][x], rows[2][x], rows[3][x]]),
                ColorSpace::Ycck => {
                    // `ycck_cmyk_convert`: the YCC part inverted to CMY, K kept.
                    let [r, g, b] = self.ycc_to_rgb(rows[0][x], rows[1][x], rows[2][x]);
                    let cmy = [r, g, b].map(|v| clamp(255 - v));
                    cmyk_to_rgb([cmy[0], cmy[1], cmy[2], rows[3][x]])
                }
            };
            px.copy_from_slice(&rgb);
        }
    }
}

/// OpenCV's conversion of libjpeg's CMYK samples (Adobe files store them
/// inverted, so 255 means no ink).
fn cmyk_to_rgb([c, m, y, k]: [u8; 4]) -> [u8; 3] {
    let k = k as i32;
    let f = |v: u8| (k - (((255 - v as i32) * k) >> 8)) as u8;
    [f(c), f(m), f(y)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_libjpeg_constants() {
        let c = Converter::new(ColorSpace::YCbCr);
        assert_eq!(fix(1.40200), 91881);
        assert_eq!(fix(0.34414), 22554);
        // Neutral chroma leaves grey untouched.
        assert_eq!(c.ycc_to_rgb(77, 128, 128), [77, 77, 77]);
        // Full red chroma: R = Y + round(1.402 * 127).
        assert_eq!(c.ycc_to_rgb(0, 128, 255)[0], 178);
    }
}
