//! One export for the benchmark page: `run(m, n, k, iters)` multiplies a
//! row-major `[m, k]` by a row-major `[k, n]` matrix `iters` times on one
//! thread with gemm, as burn-flex and `clearclip_model::host` call it.

#[no_mangle]
pub extern "C" fn run(m: usize, n: usize, k: usize, iters: usize) -> f32 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 * 0.01).collect();
    let mut c = vec![0f32; m * n];
    for _ in 0..iters {
        // SAFETY: the pointers and strides describe the three buffers above.
        unsafe {
            gemm::gemm(
                m, n, k, c.as_mut_ptr(), 1, n as isize, false,
                a.as_ptr(), 1, k as isize, b.as_ptr(), 1, n as isize,
                0.0, 1.0, false, false, false, gemm::Parallelism::None,
            );
        }
    }
    c.iter().sum()
}
