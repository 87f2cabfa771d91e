//! One typed description of what the CLI and the page ask for: the request
//! ([`SegmentRequest`]: labels and [`SegmentParams`]), the last-block
//! knobs layered over a named mode ([`LastBlockOverrides`]), and the
//! catalog of modes, attention kinds and presets that the page builds its
//! controls from ([`Catalog`]).

use clearclip_model::{AttentionKind, DenseMode, LastBlock, LastBlockError, Residual};
use serde::{Deserialize, Serialize};

use crate::classes::MAX_CLASSES;
use crate::presets::{Preset, PRESETS};
use crate::render::class_color;
use crate::segmenter::SegmentParams;

/// One segmentation, as the page sends it (JSON):
/// `{labels: "sky; horse, pony", params: {lastBlock: {...}, crop: 448, ...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SegmentRequest {
    /// Classes separated by `;`, synonyms of a class by `,`.
    pub labels: String,
    #[serde(default)]
    pub params: SegmentParams,
}

/// Knobs that replace parts of a named mode's last block (the CLI's
/// `--attention`, `--neighbourhood-std`, `--residual-alpha`, `--ffn`).
/// `Some(None)` turns a knob off: no neighbourhood bias, no residual.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LastBlockOverrides {
    pub attention: Option<AttentionKind>,
    pub neighbourhood_std: Option<Option<f32>>,
    pub residual_alpha: Option<Option<f32>>,
    pub ffn: Option<bool>,
}

impl LastBlockOverrides {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `mode`'s last block with these knobs applied, checked.
    pub fn apply(&self, mode: DenseMode) -> Result<LastBlock, LastBlockError> {
        let mut block = mode.last_block();
        if let Some(attention) = self.attention {
            block.attention = attention;
        }
        if let Some(std) = self.neighbourhood_std {
            block.neighbourhood_std = std;
        }
        if let Some(alpha) = self.residual_alpha {
            block.residual = match alpha {
                Some(attention_scale) => Residual::Keep { attention_scale },
                None => Residual::Skip,
            };
        }
        if let Some(ffn) = self.ffn {
            block.ffn = ffn;
        }
        block.validate()?;
        Ok(block)
    }
}

/// A named thing the page offers in a list: id, title, and its settings.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModeEntry {
    pub id: &'static str,
    pub title: &'static str,
    pub last_block: LastBlock,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AttentionEntry {
    pub id: &'static str,
    pub title: &'static str,
    /// Whether a neighbourhood bias can be added (not to identity attention).
    pub has_scores: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresetEntry {
    pub id: &'static str,
    pub title: &'static str,
    pub labels: String,
    pub background_threshold: f32,
    pub crop: usize,
    pub stride: usize,
}

impl From<&Preset> for PresetEntry {
    fn from(p: &Preset) -> Self {
        Self { id: p.id, title: p.title, labels: p.labels(), background_threshold: p.background_threshold, crop: p.crop, stride: p.stride }
    }
}

/// Everything the page's controls list, from the one table in Rust.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Catalog {
    /// The named modes, the default first.
    pub modes: Vec<ModeEntry>,
    pub attentions: Vec<AttentionEntry>,
    pub presets: Vec<PresetEntry>,
    /// The default settings (crop, stride, threshold, ...).
    pub defaults: SegmentParams,
    /// The colour of each class index, as results paint it (`[r, g, b]`), so
    /// the page colours its class chips before a result exists.
    pub class_colors: Vec<[u8; 3]>,
}

impl Catalog {
    pub fn new() -> Self {
        let default_mode = DenseMode::default();
        let modes = std::iter::once(default_mode)
            .chain(DenseMode::ALL.into_iter().filter(|&m| m != default_mode))
            .map(|m| ModeEntry { id: m.name(), title: m.title(), last_block: m.last_block() })
            .collect();
        let attentions = AttentionKind::ALL
            .into_iter()
            .map(|k| AttentionEntry { id: k.name(), title: k.title(), has_scores: k.has_scores() })
            .collect();
        Self {
            modes,
            attentions,
            presets: PRESETS.iter().map(PresetEntry::from).collect(),
            defaults: SegmentParams::default(),
            class_colors: (0..MAX_CLASSES).map(class_color).collect(),
        }
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_replace_only_what_they_name() {
        let none = LastBlockOverrides::default();
        assert!(none.is_empty());
        assert_eq!(none.apply(DenseMode::Naclip).unwrap(), DenseMode::Naclip.last_block());
        let knobs = LastBlockOverrides { neighbourhood_std: Some(None), residual_alpha: Some(Some(0.5)), ..Default::default() };
        let block = knobs.apply(DenseMode::Naclip).unwrap();
        assert_eq!(block.attention, AttentionKind::KeyKey);
        assert_eq!(block.neighbourhood_std, None);
        assert_eq!(block.residual, Residual::Keep { attention_scale: 0.5 });
        let bad = LastBlockOverrides { attention: Some(AttentionKind::Identity), ..Default::default() };
        assert_eq!(bad.apply(DenseMode::Naclip), Err(LastBlockError::BiasWithoutScores));
    }

    #[test]
    fn a_request_reads_from_the_pages_json_and_refuses_what_it_does_not_know() {
        let json = r#"{"labels": "sky; horse, pony",
            "params": {"crop": 224, "backgroundThreshold": 0.4, "templates": "single", "pamr": {"iterations": 3},
                       "lastBlock": {"attention": "k-k", "neighbourhoodStd": 5, "residualAlpha": null, "ffn": false}}}"#;
        let request: SegmentRequest = serde_json::from_str(json).unwrap();
        assert_eq!(request.params.crop, 224);
        assert_eq!(request.params.stride, 224, "a missing field keeps its default");
        assert_eq!(request.params.last_block, DenseMode::Naclip.last_block());
        assert_eq!(request.params.pamr.as_ref().map(|p| (p.iterations, p.dilations.clone())), Some((3, vec![8, 16])));
        let round_trip: SegmentRequest = serde_json::from_str(&serde_json::to_string(&request).unwrap()).unwrap();
        assert_eq!(round_trip, request);
        for bad in [
            r#"{"labels": "a", "params": {"crops": 3}}"#,
            r#"{"labels": "a", "params": {"lastBlock": {"attention": "q-x", "neighbourhoodStd": null, "residualAlpha": 1, "ffn": true}}}"#,
            r#"{"labels": "a", "params": {"lastBlock": {"attention": "identity", "neighbourhoodStd": 2, "residualAlpha": null, "ffn": true}}}"#,
        ] {
            assert!(serde_json::from_str::<SegmentRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_catalog_lists_every_mode_attention_and_preset() {
        let catalog = Catalog::new();
        assert_eq!(catalog.modes[0].id, "clearclip");
        assert_eq!(catalog.modes.len(), DenseMode::ALL.len());
        assert_eq!(catalog.attentions.len(), AttentionKind::ALL.len());
        assert_eq!(catalog.presets.len(), PRESETS.len());
        let json = serde_json::to_value(&catalog).unwrap();
        assert_eq!(json["modes"][0]["lastBlock"]["attention"], "q-q");
        assert_eq!(json["defaults"]["crop"], 448);
        assert_eq!(json["classColors"].as_array().unwrap().len(), MAX_CLASSES);
        assert_eq!(json["classColors"][21], serde_json::json!(class_color(21)));
    }
}
