//! Result files: `probs.npy`, `labels.png`, `overlay.png`, `heatmap_<i>.png`.
//! Everything is encoded in memory first, then written to temporary names and
//! renamed, so a failure leaves no half-written file behind.

use std::path::Path;

use anyhow::{bail, Context, Result};
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

/// Refuses, before any work, an output folder that cannot be made: the path
/// or one of its ancestors is a file, or the nearest existing ancestor is
/// read-only. Nothing is created here; [`write_results`] does that at the end.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    // A relative path's last ancestor is "", the working folder.
    let mut ancestors = dir.ancestors().map(|a| if a.as_os_str().is_empty() { Path::new(".") } else { a });
    let Some(existing) = ancestors.find(|a| a.exists()) else {
        return Ok(());
    };
    let metadata = std::fs::metadata(existing).with_context(|| format!("cannot write into {}", dir.display()))?;
    if !metadata.is_dir() {
        bail!("cannot write into {}: {} is a file, not a folder", dir.display(), existing.display());
    }
    if metadata.permissions().readonly() {
        bail!("cannot write into {}: {} is read-only", dir.display(), existing.display());
    }
    Ok(())
}

/// `probs.npy`: the probabilities as `[classes, height, width]` float32.
pub fn probs_npy(seg: &Segmentation) -> Vec<u8> {
    let (w, h) = seg.probs_size();
    npy_f32(&seg.probs, &[seg.class_names.len(), h as usize, w as usize])
}

pub fn write_results(dir: &Path, image: &RgbImage, seg: &Segmentation, opacity: f32) -> Result<()> {
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("probs.npy".into(), probs_npy(seg)),
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
    fn an_output_folder_that_cannot_be_made_is_refused_before_any_work() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a_file");
        std::fs::write(&file, b"x").unwrap();
        assert!(check_output_dir(&tmp.path().join("new/deeper")).is_ok());
        assert!(check_output_dir(tmp.path()).is_ok());
        assert!(check_output_dir(Path::new("relative_out")).is_ok());
        for blocked in [file.clone(), file.join("out")] {
            let err = check_output_dir(&blocked).unwrap_err().to_string();
            assert!(err.contains("is a file, not a folder"), "{err}");
        }
        let read_only = tmp.path().join("read_only");
        std::fs::create_dir(&read_only).unwrap();
        let mut permissions = std::fs::metadata(&read_only).unwrap().permissions();
        permissions.set_readonly(true);
        std::fs::set_permissions(&read_only, permissions).unwrap();
        let err = check_output_dir(&read_only.join("out")).unwrap_err().to_string();
        assert!(err.contains("is read-only"), "{err}");
        assert!(!read_only.join("out").exists() && !tmp.path().join("new").exists(), "nothing is created");
    }

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
