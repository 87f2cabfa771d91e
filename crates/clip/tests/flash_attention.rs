//! The towers with cubek's flash attention on the GPU
//! (`--gpu-attention flash-unit`, `src/gpu_attention.rs`) against PyTorch, at
//! f32 and f16. The choice is process-wide, so these tests have a process of
//! their own (this file), and need the `gpu-routines` feature.

mod common;

use clearclip_fixtures::wgpu_device;
use clearclip_model::gpu_attention::{routine_counts, set_gpu_attention, AttentionRoutine};
use clearclip_model::DenseMode;

#[test]
fn flash_attention_matches_pytorch_at_both_precisions() {
    let Some(device) = wgpu_device() else { return };
    assert!(set_gpu_attention(AttentionRoutine::FlashUnit), "this build has kernel fusion");
    for precision in common::precisions(&device) {
        for (config, (flashed, declined)) in common::assert_towers_match_pytorch(&device, "flash", precision, routine_counts) {
            // Every block of the first L-1 (2 per mode) and of the text tower
            // (2) went through flash attention; none was declined.
            let blocks = DenseMode::ALL.len() * (config.vision.layers - 1) + config.text.layers;
            assert_eq!((flashed, declined), (blocks, 0), "{}", precision.name());
        }
    }
}
