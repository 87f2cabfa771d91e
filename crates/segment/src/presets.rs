//! The official evaluation protocol of each benchmark, as one-click presets:
//! class lists (`configs/cls_*.txt`) and the settings that differ per dataset
//! (`configs/cfg_*.py`) in mc-lan/ClearCLIP at commit ad68a40. Every config
//! resizes with `Resize(scale=(2048, 448), keep_ratio=True)`; the segmentor's
//! defaults are `prob_thd=0.0`, `slide_crop=448`, `slide_stride=224`.
//!
//! The class files have one class per line and, in ClearCLIP's versions, no
//! synonyms; [`Preset::labels`] writes them in the `a; b; c` syntax.

use crate::segmenter::SegmentParams;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preset {
    /// Short name for the CLI and the page (`voc21`).
    pub id: &'static str,
    /// Human name (`PASCAL VOC (20 + background)`).
    pub title: &'static str,
    /// The class file, one class per line, synonyms separated by `, `.
    pub class_file: &'static str,
    /// `prob_thd` of the config.
    pub background_threshold: f32,
    /// `slide_crop` and `slide_stride` of the config.
    pub crop: usize,
    pub stride: usize,
}

const fn preset(id: &'static str, title: &'static str, class_file: &'static str, background_threshold: f32, crop: usize) -> Preset {
    Preset { id, title, class_file, background_threshold, crop, stride: 224 }
}

pub const PRESETS: [Preset; 8] = [
    preset("voc21", "PASCAL VOC (20 classes + background)", include_str!("../presets/cls_voc21.txt"), 0.5, 448),
    preset("voc20", "PASCAL VOC (20 classes)", include_str!("../presets/cls_voc20.txt"), 0.0, 448),
    preset("context60", "PASCAL Context (59 classes + background)", include_str!("../presets/cls_context60.txt"), 0.15, 448),
    preset("context59", "PASCAL Context (59 classes)", include_str!("../presets/cls_context59.txt"), 0.0, 448),
    preset("coco-object", "COCO-Object (80 classes + background)", include_str!("../presets/cls_coco_object.txt"), 0.4, 448),
    preset("coco-stuff", "COCO-Stuff (171 classes)", include_str!("../presets/cls_coco_stuff.txt"), 0.0, 448),
    preset("ade20k", "ADE20K (150 classes)", include_str!("../presets/cls_ade20k.txt"), 0.0, 448),
    // cfg_city_scapes.py: slide_crop=224 (the stride stays 224)
    preset("cityscapes", "Cityscapes (19 classes)", include_str!("../presets/cls_city_scapes.txt"), 0.0, 224),
];

impl Preset {
    pub fn by_id(id: &str) -> Option<&'static Preset> {
        PRESETS.iter().find(|p| p.id.eq_ignore_ascii_case(id) || p.id.replace('-', "_").eq_ignore_ascii_case(id))
    }

    /// The classes in the label syntax: lines joined by `; `, synonyms by `, `.
    pub fn labels(&self) -> String {
        self.class_file
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Set the dataset-specific settings on `params`.
    pub fn apply(&self, params: &mut SegmentParams) {
        params.background_threshold = self.background_threshold;
        params.crop = self.crop;
        params.stride = self.stride;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClassList;

    #[test]
    fn every_preset_parses_into_its_dataset_class_count_without_duplicates() {
        let counts = [21, 20, 60, 59, 81, 171, 150, 19];
        for (preset, count) in PRESETS.iter().zip(counts) {
            let (list, warnings) = ClassList::parse(&preset.labels()).unwrap();
            assert_eq!(list.len(), count, "{}", preset.id);
            assert!(warnings.is_empty(), "{}: {warnings:?}", preset.id);
            assert_eq!(Preset::by_id(preset.id), Some(preset));
        }
        assert_eq!(Preset::by_id("coco_object").unwrap().id, "coco-object");
        assert!(Preset::by_id("imagenet").is_none());
    }

    #[test]
    fn presets_carry_the_config_values() {
        let voc = Preset::by_id("voc21").unwrap();
        assert!(voc.labels().starts_with("background; aeroplane; bicycle"));
        let mut params = SegmentParams::default();
        Preset::by_id("cityscapes").unwrap().apply(&mut params);
        assert_eq!((params.crop, params.stride, params.background_threshold), (224, 224, 0.0));
        voc.apply(&mut params);
        assert_eq!((params.crop, params.stride, params.background_threshold), (448, 224, 0.5));
    }
}
