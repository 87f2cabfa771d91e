//! Wall time in the CPU backend's kernels ([`crate::host`]), by kernel and
//! shape, for `clearclip bench`: where an image's time goes at each thread
//! count, next to PyTorch's profile of the same work (`scripts/bench_cpu.py
//! --profile`). Off unless switched on, and then a clock read and a lock per
//! kernel call (some 80 a window of ViT-B/16). Native builds only: there is
//! no `std` clock in the browser's wasm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static RECORDING: AtomicBool = AtomicBool::new(false);
static TIMES: Mutex<Vec<KernelTime>> = Mutex::new(Vec::new());

/// The calls of one kernel at one shape, and their wall time together.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// The kernel and its shape, e.g. `linear 768x2304`.
    pub kernel: String,
    pub calls: usize,
    pub ms: f64,
}

/// Record from now on (or stop).
pub fn set_recording(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

/// What was recorded since the last call, in the order first seen; the
/// record starts again from nothing.
pub fn take() -> Vec<KernelTime> {
    std::mem::take(&mut *TIMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// `run()`, its wall time added to the kernel `name()` when recording.
pub(crate) fn timed<R>(name: impl FnOnce() -> String, run: impl FnOnce() -> R) -> R {
    #[cfg(not(target_arch = "wasm32"))]
    if RECORDING.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        let out = run();
        let ms = started.elapsed().as_secs_f64() * 1e3;
        let kernel = name();
        let mut times = TIMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match times.iter_mut().find(|t| t.kernel == kernel) {
            Some(t) => (t.calls, t.ms) = (t.calls + 1, t.ms + ms),
            None => times.push(KernelTime { kernel, calls: 1, ms }),
        }
        return out;
    }
    drop(name);
    run()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The record is global and tests run in parallel, so this one toggles
    /// it alone and looks only at shapes no other test uses.
    #[test]
    fn calls_are_counted_and_timed_by_kernel_only_while_recording() {
        let (x, gamma, beta) = (vec![0.5f32; 4 * 13], vec![1.0f32; 13], vec![0.0f32; 13]);
        let weight = vec![0.25f32; 13 * 7];
        let ours = |times: Vec<KernelTime>| -> Vec<(String, usize)> {
            times.into_iter().filter(|t| t.kernel == "layer norm 13" || t.kernel == "linear 13x7").map(|t| (t.kernel, t.calls)).collect()
        };
        crate::host::layer_norm(&x, &gamma, &beta, 1e-5);
        assert!(ours(take()).is_empty(), "recorded while off");
        set_recording(true);
        for _ in 0..3 {
            crate::host::layer_norm(&x, &gamma, &beta, 1e-5);
        }
        crate::host::linear(&x, &weight, &[0.0; 7], None);
        set_recording(false);
        crate::host::linear(&x, &weight, &[0.0; 7], None);
        let times = take();
        assert!(times.iter().all(|t| t.ms >= 0.0 && t.calls > 0));
        assert_eq!(ours(times), [("layer norm 13".to_string(), 3), ("linear 13x7".to_string(), 1)]);
        assert!(ours(take()).is_empty(), "taken");
    }
}
