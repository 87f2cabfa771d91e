//! The pipeline in a few lines: segment an image into classes and print each
//! class's share of the pixels.
//!
//! `cargo run -p clearclip-segment --example segment --release -- WEIGHTS.safetensors IMAGE "sky; horse, pony; grass"`
//!
//! With no arguments it runs the tiny test model on the bundled example photo.

use burn::tensor::Device;
use clearclip_model::{load_clip_from_reader, ClipTokenizer, LoadOptions};
use clearclip_segment::{decode_image, ClassList, Progress, SegmentParams, Segmenter};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut args = std::env::args().skip(1);
    let weights = args.next().unwrap_or(format!("{root}/fixtures/tiny_openclip_bf16.safetensors"));
    let image = args.next().unwrap_or(format!("{root}/web/assets/example.png"));
    let labels = args.next().unwrap_or("cat; grass, lawn; wall; sky".into());

    let device = Device::flex();
    let clip = load_clip_from_reader(std::fs::File::open(&weights)?, LoadOptions::default(), &device)?;
    let tokenizer_json = std::fs::read(format!("{root}/assets/tokenizer.json"))?;
    let tokenizer = ClipTokenizer::from_json_bytes(&tokenizer_json, clip.config.text.context_length)?;
    let mut segmenter = Segmenter::new(clip, tokenizer);

    let image = decode_image(&std::fs::read(&image)?)?;
    let (classes, warnings) = ClassList::parse(&labels)?;
    warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    let result = pollster::block_on(segmenter.segment(&image, &classes, &SegmentParams::default(), &mut |_: Progress| {}))?;
    for (name, share) in result.class_names.iter().zip(result.class_shares()) {
        println!("{name:>20}: {:5.1}%", share * 100.0);
    }
    println!("{} windows, text {:.0} ms, image {:.0} ms", result.windows, result.timings.text_ms, result.timings.image_ms);
    Ok(())
}
