//! The fixtures of `scripts/gen_jpeg_fixtures.py` and a pixel comparison.

use std::path::PathBuf;

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/jpeg")
}

pub struct Fixture {
    pub name: String,
    pub kind: String,
    pub width: u32,
    pub height: u32,
    /// OpenCV's RGB pixels, for the small files.
    pub png: Option<Vec<u8>>,
    /// SHA-256 and per-row byte sums of OpenCV's pixels, for the large files.
    pub sha256: Option<String>,
    pub row_sums: Option<Vec<u64>>,
}

fn read_png(path: PathBuf) -> (u32, u32, Vec<u8>) {
    let image = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).to_rgb8();
    (image.width(), image.height(), image.into_raw())
}

pub fn fixtures() -> Vec<Fixture> {
    let text = std::fs::read_to_string(dir().join("manifest.json")).expect("fixtures/jpeg/manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let name = f["name"].as_str().unwrap().to_string();
            let sha256 = f["sha256"].as_str().map(str::to_string);
            let png = sha256.is_none().then(|| read_png(dir().join(format!("{name}.png"))).2);
            Fixture {
                kind: f["kind"].as_str().unwrap().to_string(),
                width: f["width"].as_u64().unwrap() as u32,
                height: f["height"].as_u64().unwrap() as u32,
                png,
                sha256,
                row_sums: f["row_sums"].as_array().map(|r| r.iter().map(|v| v.as_u64().unwrap()).collect()),
                name,
            }
        })
        .collect()
}

impl Fixture {
    pub fn bytes(&self) -> Vec<u8> {
        std::fs::read(dir().join(format!("{}.jpg", self.name))).unwrap()
    }
}

/// Max and mean absolute difference and the fraction of differing samples.
pub fn compare(a: &[u8], b: &[u8]) -> (u8, f64, f64) {
    assert_eq!(a.len(), b.len());
    let (mut max, mut sum, mut differing) = (0u8, 0u64, 0usize);
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        sum += d as u64;
        differing += (d > 0) as usize;
    }
    (max, sum as f64 / a.len() as f64, differing as f64 / a.len() as f64)
}

pub fn row_sums(rgb: &[u8], width: u32) -> Vec<u64> {
    rgb.chunks_exact(width as usize * 3).map(|r| r.iter().map(|&v| v as u64).sum()).collect()
}

