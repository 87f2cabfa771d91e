#![cfg_attr(not(feature = "std"), no_std)]

pub mod gemm;
pub mod microkernel;

#[macro_use]
extern crate gemm_common;

/// Changed for this repository (vendor/README.md): whether gemm's wasm
/// register blocks multiply and add with relaxed SIMD. Read once, at the
/// first product.
#[cfg(all(target_arch = "wasm32", feature = "wasm-relaxed-simd"))]
#[doc(hidden)]
pub static RELAXED_SIMD: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Changed for this repository: makes the matrix products use the register
/// blocks with relaxed SIMD (`f32x4.relaxed_madd`). Call it before the first
/// product, and only where the module has relaxed SIMD: the blocks trap where
/// they were removed from the module.
#[cfg(all(target_arch = "wasm32", feature = "wasm-relaxed-simd"))]
pub fn use_relaxed_simd() {
    RELAXED_SIMD.store(true, core::sync::atomic::Ordering::Relaxed);
}

/// Changed for this repository: whether [`use_relaxed_simd`] has been called.
#[cfg(all(target_arch = "wasm32", feature = "wasm-relaxed-simd"))]
pub fn uses_relaxed_simd() -> bool {
    RELAXED_SIMD.load(core::sync::atomic::Ordering::Relaxed)
}
