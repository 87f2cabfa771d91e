#!/usr/bin/env bash
# Times gemm's wasm simd128 products with several register blocks, side by
# side in headless Chromium (vendor/README.md). From the repository root, after
# `npm ci`:   bash scripts/wasm_gemm_blocks/run.sh ["ROWS COLS UNROLL [relaxed]" ...]
# (`relaxed`: the blocks multiply and add with relaxed SIMD's f32x4.relaxed_madd).
set -euo pipefail
cd "$(dirname "$0")"
specs=("$@")
[ ${#specs[@]} -gt 0 ] || specs=("12 4 2" "8 4 1" "12 3 1")
builds=()
for spec in "${specs[@]}"; do
  read -r rows cols unroll relaxed <<<"$spec"
  python3 variant.py "$rows" "$cols" "$unroll"
  RUSTFLAGS="-C target-feature=+simd128" cargo build -q --release --target wasm32-unknown-unknown \
    --target-dir ../../target/wasm-gemm-blocks ${relaxed:+--features relaxed}
  name="${rows}x${cols}, unrolled ${unroll}${relaxed:+, relaxed madd}"
  file="variant/${rows}x${cols}u${unroll}${relaxed:+r}.wasm"
  cp ../../target/wasm-gemm-blocks/wasm32-unknown-unknown/release/wasm_gemm_blocks.wasm "$file"
  builds+=("$name=$file")
done
node bench.mjs "${builds[@]}"
