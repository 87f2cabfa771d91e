//! Decoded pixels against OpenCV's (libjpeg-turbo), which the official
//! ClearCLIP pipeline reads images with. Every fixture kind must match
//! exactly: baseline 4:2:0/4:2:2/4:4:4/4:4:0/4:1:1, progressive, restart
//! markers, optimised tables, grayscale, CMYK (Adobe), tiny sizes, and three
//! real photos.

mod common;

use clearclip_jpeg::{decode, read_info, JpegError, Limits};
use common::{compare, fixtures, row_sums};
use sha2::{Digest, Sha256};

#[test]
fn every_fixture_decodes_to_opencvs_pixels_exactly() {
    let all = fixtures();
    assert!(all.len() >= 30, "the manifest lists {} files", all.len());
    let mut failures = Vec::new();
    for f in &all {
        let decoded = decode(&f.bytes(), &Limits::default()).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        assert_eq!((decoded.width, decoded.height), (f.width, f.height), "{}", f.name);
        assert!(!decoded.info.unrefined_progressive, "{}", f.name);
        if let Some(png) = &f.png {
            let (max, mean, frac) = compare(&decoded.rgb, png);
            if max > 0 {
                failures.push(format!("{} ({}): max {max}, mean {mean:.4}, {:.3}% differ", f.name, f.kind, 100.0 * frac));
            }
        } else {
            let sha = format!("{:x}", Sha256::digest(&decoded.rgb));
            if Some(&sha) != f.sha256.as_ref() {
                let ours = row_sums(&decoded.rgb, decoded.width);
                let rows = ours.iter().zip(f.row_sums.as_ref().unwrap()).filter(|(a, b)| a != b).count();
                failures.push(format!("{} ({}): {rows} of {} rows differ", f.name, f.kind, ours.len()));
            }
        }
    }
    assert!(failures.is_empty(), "differences from OpenCV:\n{}", failures.join("\n"));
}

#[test]
fn reports_coding_and_orientation() {
    let all = fixtures();
    let info = |name: &str| {
        let f = all.iter().find(|f| f.name == name).unwrap();
        decode(&f.bytes(), &Limits::default()).unwrap()
    };
    assert!(info("progressive_420").info.progressive);
    assert!(!info("baseline_420_q90").info.progressive);
    assert_eq!(info("baseline_420_q90").info.sampling, vec![(2, 2), (1, 1), (1, 1)]);
    assert_eq!(info("baseline_422_q90").info.sampling, vec![(2, 1), (1, 1), (1, 1)]);
    assert!(info("restart_420").info.restart_interval > 0);
    assert_eq!(info("cmyk_adobe").info.color, clearclip_jpeg::ColorSpace::Cmyk);
    assert_eq!(info("grayscale").info.color, clearclip_jpeg::ColorSpace::Grayscale);
    for o in 1..=8u8 {
        assert_eq!(info(&format!("orientation_{o}")).exif_orientation, Some(o));
    }
    assert_eq!(info("baseline_420_q90").exif_orientation, None);
    let bytes = all.iter().find(|f| f.name == "real_retina").unwrap().bytes();
    let (w, h, header) = read_info(&bytes).unwrap();
    assert_eq!((w, h), (1411, 1411));
    assert_eq!(header.sampling, vec![(2, 2), (1, 1), (1, 1)]);
}

#[test]
fn bad_input_gives_a_clear_error_and_never_panics() {
    let good = fixtures().into_iter().find(|f| f.name == "progressive_420").unwrap().bytes();
    assert_eq!(decode(b"\x89PNG\r\n\x1a\n", &Limits::default()).unwrap_err(), JpegError::NotJpeg);
    assert_eq!(decode(b"", &Limits::default()).unwrap_err(), JpegError::NotJpeg);
    // Every cut of a progressive file is refused (it has no EOI), never a panic.
    for cut in 2..good.len() - 2 {
        let err = decode(&good[..cut], &Limits::default()).unwrap_err();
        assert!(matches!(err, JpegError::Truncated(_) | JpegError::Corrupt(_)), "cut {cut}: {err}");
    }
    // Flipped bytes anywhere: an error or an image, never a panic.
    let mut seed = 7u32;
    for _ in 0..400 {
        seed = seed.wrapping_mul(1103515245).wrapping_add(12345);
        let mut bad = good.clone();
        let at = 2 + (seed as usize >> 4) % (bad.len() - 2);
        bad[at] ^= 1 << (seed % 8);
        let _ = decode(&bad, &Limits::default());
    }
    // Huffman tables with too many codes for their lengths are refused, not indexed past the end.
    let standard = fixtures().into_iter().find(|f| f.name == "baseline_420_q90").unwrap().bytes();
    let counts = standard.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap() + 5;
    let mut refused = 0;
    for short in 0..8 {
        // Move codes from the longest used length to a short one: same
        // number of symbols, but more codes than that length can hold.
        let Some(long) = (short + 1..16).rev().find(|&l| standard[counts + l] >= 4) else { continue };
        let mut bad = standard.clone();
        bad[counts + short] += 4;
        bad[counts + long] -= 4;
        let err = decode(&bad, &Limits::default()).unwrap_err();
        refused += err.to_string().contains("too many codes") as usize;
    }
    assert!(refused > 0, "no overfull table was built");
    let limits = Limits { max_side: 100, max_pixels: 1 << 30 };
    assert!(matches!(decode(&good, &limits), Err(JpegError::TooLarge { width: 123, height: 77, .. })));
    let limits = Limits { max_side: 1000, max_pixels: 5000 };
    let err = decode(&good, &limits).unwrap_err();
    assert!(err.to_string().contains("123x77"), "{err}");
}

#[test]
fn a_sequential_file_without_its_end_marker_still_decodes() {
    let f = fixtures().into_iter().find(|f| f.name == "baseline_420_q90").unwrap();
    let bytes = f.bytes();
    assert_eq!(&bytes[bytes.len() - 2..], &[0xFF, 0xD9]);
    let decoded = decode(&bytes[..bytes.len() - 2], &Limits::default()).unwrap();
    assert_eq!(&decoded.rgb, f.png.as_ref().unwrap());
}
