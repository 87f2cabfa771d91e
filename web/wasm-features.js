// What this browser's WebAssembly can run, asked with tiny modules that
// validate only where a feature is (the worker picks its module from these).

// One function returning `i8x16.splat(0)`: WebAssembly SIMD, which every
// build of the module needs (.cargo/config.toml).
const SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 123, 3, 2, 1, 0, 10, 8, 1, 6, 0, 65, 0, 253, 15, 11]);

// One function returning `f32x4.relaxed_madd` of its three `v128` arguments:
// relaxed SIMD, which web/pkg-relaxed and web/pkg-threads use; web/pkg and
// web/pkg-threads-plain are the same without it (scripts/build-web.sh).
const RELAXED_SIMD_PROBE = new Uint8Array([0, 97, 115, 109, 1, 0, 0, 0, 1, 8, 1, 96, 3, 123, 123, 123, 1, 123, 3, 2, 1, 0,
  10, 13, 1, 11, 0, 32, 0, 32, 1, 32, 2, 253, 133, 2, 11]);

export const hasSimd = () => WebAssembly.validate(SIMD_PROBE);
export const hasRelaxedSimd = () => WebAssembly.validate(RELAXED_SIMD_PROBE);
