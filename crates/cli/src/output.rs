//! Result files: `probs.npy`, `labels.png`, `overlay.png`, `heatmap_<i>.png`.
//! Everything is encoded in memory first, then written to temporary names and
//! renamed, so a failure leaves no half-written file behind.

use std::path::Path;

use anyhow::{Context, Result};
use clearclip_segment::render::{self, png};
use clearclip_segment::Segmentation;
use image::RgbImage;

/// NumPy `.npy` (format 1.0) bytes of a little-endian float32 array.
pub fn npy_f32(data: &[f32], shape: &[usize]) -> Vec<u8> {
    assert_eq!(data.len(), shape.iter().product::<usize>());
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn write_results(dir: &Path, image: &RgbImage, seg: &Segmentation, opacity: f32) -> Result<()> {
    let (w, h) = seg.probs_size();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("probs.npy".into(), npy_f32(&seg.probs, &[seg.class_names.len(), h as usize, w as usize])),
        ("labels.png".into(), png(render::labels_image(seg).context("the label map does not match the image size")?)?),
        ("overlay.png".into(), png(render::overlay(image, seg, opacity).context("the result is not of this image")?)?),
    ];
    for i in 0..seg.class_names.len() {
        files.push((format!("heatmap_{i}.png"), png(render::heatmap(seg, i))?));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    for (name, bytes) in &files {
        let tmp = dir.join(format!(".{name}.partial"));
        if let Err(e) = std::fs::write(&tmp, bytes) {
            for t in written.iter().chain(std::iter::once(&tmp)) {
                let _ = std::fs::remove_file(t);
            }
            return Err(e).with_context(|| format!("cannot write into {}", dir.display()));
        }
        written.push(tmp);
    }
    for ((name, _), tmp) in files.iter().zip(&written) {
        std::fs::rename(tmp, dir.join(name)).with_context(|| format!("cannot write {}", dir.join(name).display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned() {
        let bytes = npy_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[1, 2, 3]);
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3), }"));
        assert_eq!(bytes.len(), 10 + header_len + 24);
    }
}
