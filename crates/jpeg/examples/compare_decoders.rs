//! Prints how far this decoder and the `image` crate's (zune-jpeg) are from
//! OpenCV's pixels on every fixture: the table behind the README's JPEG
//! section. `cargo run -p clearclip-jpeg --example compare_decoders --release`

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use common::{compare, fixtures};

fn main() {
    println!("| fixture | kind | this decoder: max / mean / % differing | image crate (zune-jpeg): max / mean / % differing |");
    println!("|---|---|---|---|");
    for f in fixtures() {
        let bytes = f.bytes();
        let ours = clearclip_jpeg::decode(&bytes, &clearclip_jpeg::Limits::default()).unwrap().rgb;
        let theirs = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            .map(|i| i.to_rgb8().into_raw());
        let reference = match &f.png {
            Some(png) => png.clone(),
            // Large files: only the hash is committed; OpenCV's pixels equal ours when the hash does.
            None => {
                use sha2::Digest;
                let sha = format!("{:x}", sha2::Sha256::digest(&ours));
                if Some(&sha) != f.sha256.as_ref() {
                    println!("| {} | {} | differs (hash) | |", f.name, f.kind);
                    continue;
                }
                ours.clone()
            }
        };
        let fmt = |(max, mean, frac): (u8, f64, f64)| format!("{max} / {mean:.3} / {:.2}", 100.0 * frac);
        let theirs = match theirs {
            Ok(t) if t.len() == reference.len() => fmt(compare(&t, &reference)),
            Ok(_) => "size differs".into(),
            Err(e) => format!("error: {e}"),
        };
        println!("| {} | {} | {} | {} |", f.name, f.kind, fmt(compare(&ours, &reference)), theirs);
    }
}
