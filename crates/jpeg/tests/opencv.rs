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

/// A small seeded generator (xorshift64) for the mutations below.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One to four edits of `file`, half of them within its first 700 bytes
    /// (the markers and tables): a bit flipped, a byte set to a random or a
    /// marker-like value, bytes cut or inserted, a 16-bit field (a length, a
    /// size, a table count) set to an extreme, or bytes of `other` spliced in.
    fn mutate(&mut self, file: &[u8], other: &[u8]) -> Vec<u8> {
        let mut bad = file.to_vec();
        for _ in 0..1 + self.below(4) {
            let span = if self.below(2) == 0 { bad.len().min(700) } else { bad.len() };
            if span < 4 {
                break;
            }
            let at = 2 + self.below(span - 2);
            match self.below(7) {
                0 => bad[at] ^= 1 << self.below(8),
                1 => bad[at] = self.next() as u8,
                2 => bad[at] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF][self.below(6)],
                3 => drop(bad.drain(at..(at + 1 + self.below(16)).min(bad.len()))),
                4 => {
                    let inserted: Vec<u8> = (0..1 + self.below(16)).map(|_| self.next() as u8).collect();
                    bad.splice(at..at, inserted);
                }
                5 => {
                    let value = [0u16, 1, 2, 3, 8, 16, 0x7FFF, 0x8000, 0xFFFF][self.below(9)];
                    bad[at - 1..=at].copy_from_slice(&value.to_be_bytes());
                }
                _ => {
                    let from = self.below(other.len());
                    let piece = &other[from..(from + 1 + self.below(64)).min(other.len())];
                    let end = (at + piece.len()).min(bad.len());
                    bad.splice(at..end, piece.iter().copied());
                }
            }
        }
        bad
    }
}

/// Damaged copies of every small fixture decode to an error or to a whole
/// image, never a panic (in the page a panic would take the worker down).
/// `CLEARCLIP_JPEG_MUTATIONS` (mutations per fixture, 150 by default) and
/// `CLEARCLIP_JPEG_SEED` make it a longer fuzzing run, e.g.
/// `CLEARCLIP_JPEG_MUTATIONS=30000 cargo test --release -p clearclip-jpeg --test opencv damaged`.
#[test]
fn damaged_files_of_every_kind_decode_to_an_error_or_an_image_never_a_panic() {
    let env = |name: &str, default: u64| std::env::var(name).map_or(default, |v| v.parse().expect(name));
    let (mutations, seed) = (env("CLEARCLIP_JPEG_MUTATIONS", 150), env("CLEARCLIP_JPEG_SEED", 1));
    let files: Vec<(String, Vec<u8>)> = fixtures().into_iter().filter(|f| f.png.is_some()).map(|f| (f.name.clone(), f.bytes())).collect();
    assert!(files.len() >= 20, "{} small fixtures", files.len());
    let limits = Limits { max_side: 16384, max_pixels: 8 << 20 };
    let (mut images, mut errors) = (0, 0);
    for (k, (name, file)) in files.iter().enumerate() {
        let mut mutator = Mutator((seed << 8 | k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        for i in 0..mutations {
            let other = &files[mutator.below(files.len())].1;
            let bad = mutator.mutate(file, other);
            let what = format!("{name}, mutation {i} (seed {seed})");
            let decoded = std::panic::catch_unwind(|| decode(&bad, &limits)).unwrap_or_else(|_| panic!("decode panicked: {what}"));
            let _ = std::panic::catch_unwind(|| read_info(&bad)).unwrap_or_else(|_| panic!("read_info panicked: {what}"));
            match decoded {
                Ok(image) => {
                    assert_eq!(image.rgb.len(), 3 * image.width as usize * image.height as usize, "{what}");
                    images += 1;
                }
                Err(e) => {
                    assert!(e.to_string().len() > 12, "{what}: an unclear message: {e}");
                    errors += 1;
                }
            }
        }
    }
    // Both outcomes occur, so the edits neither all break nor all miss the files.
    assert!(images > 0 && errors > 0, "{images} images, {errors} errors");
}

#[test]
fn a_sequential_file_without_its_end_marker_still_decodes() {
    let f = fixtures().into_iter().find(|f| f.name == "baseline_420_q90").unwrap();
    let bytes = f.bytes();
    assert_eq!(&bytes[bytes.len() - 2..], &[0xFF, 0xD9]);
    let decoded = decode(&bytes[..bytes.len() - 2], &Limits::default()).unwrap();
    assert_eq!(&decoded.rgb, f.png.as_ref().unwrap());
}
