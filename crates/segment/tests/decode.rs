//! Decoding as the reference reads images (`cv2.imread`): JPEG pixels and
//! EXIF orientation against OpenCV, and the refusals.

use clearclip_fixtures::{fixtures_dir, read_fixture};
use clearclip_segment::{decode_image, DecodeError, MAX_DECODE_SIDE};

fn png_pixels(name: &str) -> (u32, u32, Vec<u8>) {
    let image = image::load_from_memory(&read_fixture(name)).unwrap().to_rgb8();
    (image.width(), image.height(), image.into_raw())
}

#[test]
fn every_exif_orientation_is_applied_as_opencv_does() {
    for o in 1..=8 {
        let decoded = decode_image(&read_fixture(&format!("jpeg/orientation_{o}.jpg"))).unwrap();
        // cv2.imread's result; the raw pixels where the orientation changes nothing.
        let oriented = fixtures_dir().join(format!("jpeg/orientation_{o}.oriented.png"));
        let name = if oriented.exists() { format!("jpeg/orientation_{o}.oriented.png") } else { format!("jpeg/orientation_{o}.png") };
        let (w, h, expected) = png_pixels(&name);
        assert_eq!(decoded.dimensions(), (w, h), "orientation {o}");
        assert!(decoded.as_raw() == &expected, "orientation {o}: pixels differ from cv2.imread");
        // 5..=8 swap the sides of the 123x77 photo.
        assert_eq!(w == 77, o >= 5, "orientation {o}");
    }
}

#[test]
fn jpeg_kinds_decode_to_opencvs_pixels() {
    for name in ["baseline_420_q90", "progressive_444", "restart_420", "grayscale", "cmyk_adobe", "baseline_411_q90"] {
        let decoded = decode_image(&read_fixture(&format!("jpeg/{name}.jpg"))).unwrap();
        let (w, h, expected) = png_pixels(&format!("jpeg/{name}.png"));
        assert_eq!(decoded.dimensions(), (w, h), "{name}");
        assert!(decoded.as_raw() == &expected, "{name}: pixels differ from cv2.imread");
    }
}

#[test]
fn other_formats_still_decode() {
    let png = decode_image(&read_fixture("chelsea.png")).unwrap();
    assert_eq!(png.dimensions(), (451, 300));
    let mut bmp = Vec::new();
    image::DynamicImage::ImageRgb8(png.clone()).write_to(&mut std::io::Cursor::new(&mut bmp), image::ImageFormat::Bmp).unwrap();
    assert!(decode_image(&bmp).unwrap() == png);
}

#[test]
fn bad_files_are_refused_with_a_clear_message() {
    let err = decode_image(b"these are not pixels").unwrap_err();
    assert!(matches!(err, DecodeError::UnknownFormat), "{err}");
    assert!(err.to_string().contains("not an image"), "{err}");

    let jpeg = read_fixture("jpeg/baseline_420_q90.jpg");
    let err = decode_image(&jpeg[..jpeg.len() / 2]).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");

    // A frame header that announces 60000x60000: refused before any pixel memory.
    let sof = jpeg.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    let mut bomb = jpeg.clone();
    bomb[sof + 5..sof + 7].copy_from_slice(&60000u16.to_be_bytes());
    bomb[sof + 7..sof + 9].copy_from_slice(&60000u16.to_be_bytes());
    let err = decode_image(&bomb).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { width: 60000, height: 60000 }), "{err}");
    assert_eq!(err.to_string(), "the image is 60000x60000 (3600.0 megapixels); the limit is 40 megapixels and 16384 px a side: downscale it first");
    // 7000x6000 = 42 MP: under the side limit, over the pixel limit.
    bomb[sof + 5..sof + 7].copy_from_slice(&6000u16.to_be_bytes());
    bomb[sof + 7..sof + 9].copy_from_slice(&7000u16.to_be_bytes());
    let err = decode_image(&bomb).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { width: 7000, height: 6000 }), "{err}");
    assert_eq!(err.to_string(), "the image is 7000x6000 (42.0 megapixels); the limit is 40 megapixels: downscale it first");

    let png = read_fixture("chelsea.png");
    let err = decode_image(&png[..png.len() / 3]).unwrap_err();
    assert!(err.to_string().contains("cannot decode"), "{err}");
}

/// Non-JPEG files (`scripts/gen_image_fixtures.py`): 16-bit, palette, grey
/// with alpha, RGBA, a 1x20000 strip, an animated GIF, BMP; each against
/// `cv2.imread`'s pixels (alpha dropped, not composited, as OpenCV does).
#[test]
fn other_kinds_of_image_decode_to_opencvs_pixels() {
    let manifest: serde_json::Value = serde_json::from_slice(&read_fixture("images/manifest.json")).unwrap();
    let mut report = Vec::new();
    for (stem, entry) in manifest.as_object().unwrap() {
        let file = read_fixture(&format!("images/{}", entry["file"].as_str().unwrap()));
        let size: Vec<u64> = entry["size"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        if size.iter().any(|&side| side > MAX_DECODE_SIDE as u64) {
            // The 1x20000 strip: longer than a side may be; refused with the limit named.
            let err = decode_image(&file).unwrap_err();
            assert!(matches!(err, DecodeError::TooLarge { width: 1, height: 20000 }), "{stem}: {err}");
            // Only the limit it is over: a 1x20000 strip is 0.02 megapixels.
            assert_eq!(err.to_string(), "the image is 1x20000; the limit is 16384 px a side: downscale it first");
            report.push(format!("{stem}: refused (longer than {MAX_DECODE_SIDE} px)"));
            continue;
        }
        let decoded = decode_image(&file).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let (w, h, expected) = png_pixels(&format!("images/{}", entry["cv2"].as_str().unwrap()));
        assert_eq!(decoded.dimensions(), (w, h), "{stem}");
        let worst = decoded.as_raw().iter().zip(&expected).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        report.push(format!("{stem}: max diff {worst}"));
    }
    println!("{}", report.join("\n"));
    assert!(report.iter().all(|r| r.ends_with("max diff 0") || r.contains("refused")), "{report:#?}");
}

/// A PNG with its header and no pixels: enough to be judged by its size.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut header = width.to_be_bytes().to_vec();
    header.extend(height.to_be_bytes());
    header.extend([8, 0, 0, 0, 0]); // 8-bit grey
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    // The header, and the start of a pixel stream that stops at once.
    for (kind, data) in [(&b"IHDR"[..], header), (b"IDAT", vec![0x78, 0x9c])] {
        png.extend((data.len() as u32).to_be_bytes());
        let chunk = [kind, &data].concat();
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    png
}

#[test]
fn the_size_limits_hold_at_their_edges() {
    let too_large = |w, h| matches!(decode_image(&png_header_only(w, h)), Err(DecodeError::TooLarge { .. }));
    // At a limit: accepted by size (then refused as truncated: there are no pixels).
    for (w, h) in [(MAX_DECODE_SIDE, 1), (1, MAX_DECODE_SIDE), (6324, 6324), (16000, 2500)] {
        let err = decode_image(&png_header_only(w, h)).unwrap_err();
        assert!(!too_large(w, h), "{w}x{h} is within the limits: {err}");
        assert!(err.to_string().contains("corrupt or truncated"), "{w}x{h}: {err}");
    }
    // One past: refused by size before any pixel memory.
    for (w, h) in [(MAX_DECODE_SIDE + 1, 1), (1, MAX_DECODE_SIDE + 1), (6325, 6325), (16000, 2501)] {
        assert!(too_large(w, h), "{w}x{h} is over a limit");
    }
    // Just over the pixel limit, the image's megapixels round up, away from the limit's.
    let err = decode_image(&png_header_only(6325, 6325)).unwrap_err();
    assert_eq!(err.to_string(), "the image is 6325x6325 (40.1 megapixels); the limit is 40 megapixels: downscale it first");
}
