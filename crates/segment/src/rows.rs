//! Row-parallel loops: on rayon's pool with the `rayon` feature (the CLI, the
//! threaded wasm build), in order on one thread without it.

/// `f(i, chunk)` for each `chunk_len`-long chunk of `data` (the last may be
/// shorter), `i` counting the chunks.
pub(crate) fn for_each_chunk_mut<T: Send>(data: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Send + Sync) {
    let chunk_len = chunk_len.max(1);
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        data.par_chunks_mut(chunk_len).enumerate().for_each(|(i, chunk)| f(i, chunk));
    }
    #[cfg(not(feature = "rayon"))]
    data.chunks_mut(chunk_len).enumerate().for_each(|(i, chunk)| f(i, chunk));
}
