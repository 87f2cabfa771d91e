#!/usr/bin/env bash
# Builds the wasm modules: web/pkg (WebGPU, and the CPU on one thread), the
# same with relaxed SIMD (web/pkg-relaxed), web/pkg-threads (the CPU on a
# pool of web workers, with relaxed SIMD) and the same without it
# (web/pkg-threads-plain):
# cargo (wasm32, profile wasm-release),
# wasm-bindgen (installed at the exact version in Cargo.lock if missing),
# then wasm-opt from npm's binaryen. WASM_NAMES=1 keeps the
# functions' names in the module (wasm-opt -g), for a profile (scripts/bench_browser.mjs v8prof).
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v rustup >/dev/null && ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qF "$version"; then
  echo "installing wasm-bindgen-cli $version" >&2
  # Not --locked: its lockfile names a webpki-roots release the registry no longer serves.
  # Only the one binary, without TLS (only the test runner's WebDriver client uses it) and at
  # opt-level 1: 415 CPU-seconds to build here against 693 with the defaults, the same
  # output byte for byte, a second or two slower on web/pkg (a fresh CI machine builds it).
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install wasm-bindgen-cli --version "=$version" \
    --no-default-features --bin wasm-bindgen
fi

# wasm-opt comes from npm's binaryen: a fresh clone installs it (as `npm test` does).
if [ ! -x node_modules/.bin/wasm-opt ] && command -v npm >/dev/null; then
  npm ci --no-audit --no-fund
fi
if [ ! -x node_modules/.bin/wasm-opt ]; then
  echo "error: node_modules/.bin/wasm-opt is missing: run \`npm ci\` (web/pkg is made with it)" >&2
  exit 1
fi

# wasm-bindgen: `bind OUT_DIR WASM`.
bind() {
  rm -rf "$1"
  wasm-bindgen --target web --no-typescript --out-dir "$1" "$2"
}
# wasm-opt, in the background: `optimise OUT_DIR RELAXED [wasm-opt flags]`,
# where RELAXED says whether the module should have relaxed SIMD (yes, no).
# wasm-opt is npm's binaryen: compiled to wasm, it runs on one thread, so it
# runs while cargo builds the next module (whose long serial stretches leave
# a core idle), and `finish` waits for all of them. -O1, not -Oz: on web/pkg
# -Oz took 8 minutes in a clean-clone CI run here and made the gzipped module
# (what is downloaded) no smaller: 3.34 MB against -O1's 3.19 MB in about 3
# minutes (raw 11.4 against 14.4 MB; 16.1 MB with no wasm-opt).
optimising=()
optimise() {
  optimise_now "$@" &
  optimising+=($!)
}
optimise_now() {
  local out=$1 relaxed=$2
  shift 2
  node_modules/.bin/wasm-opt ${WASM_NAMES:+-g} --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$@" -O1 \
    "$out/clearclip_web_bg.wasm" -o "$out/clearclip_web_bg.opt.wasm"
  mv "$out/clearclip_web_bg.opt.wasm" "$out/clearclip_web_bg.wasm"
  # Whether V8 validates the module with relaxed SIMD turned off, as a
  # browser without it does (Node 20's V8 has it behind this flag).
  local plain=no
  if node --no-experimental-wasm-relaxed-simd -e \
    'process.exit(WebAssembly.validate(require("fs").readFileSync(process.argv[1])) ? 0 : 1)' "$out/clearclip_web_bg.wasm"; then
    plain=yes
  fi
  if [ "$relaxed" = "$plain" ]; then
    echo "error: $out/clearclip_web_bg.wasm should $([ "$relaxed" = no ] && echo "validate without" || echo "need") relaxed SIMD" >&2
    return 1
  fi
  echo "$out/clearclip_web_bg.wasm: $(wc -c <"$out/clearclip_web_bg.wasm") bytes, gzipped $(gzip -9 -c "$out/clearclip_web_bg.wasm" | wc -c) bytes"
}
# Two modules from one build: `pair RELAXED_OUT PLAIN_OUT WASM [wasm-opt
# flags]`, the second without relaxed SIMD: wasm-opt --remove-relaxed-simd
# turns the instructions of gemm's relaxed-SIMD register blocks (the only
# ones) into traps, and the worker never turns those blocks on there.
pair() {
  local relaxed=$1 plain=$2 wasm=$3
  shift 3
  bind "$relaxed" "$wasm"
  rm -rf "$plain"
  cp -r "$relaxed" "$plain"
  optimise "$relaxed" yes --enable-relaxed-simd "$@"
  optimise "$plain" no --enable-relaxed-simd --remove-relaxed-simd "$@"
}
finish() {
  local pid failed=0
  for pid in "${optimising[@]}"; do
    wait "$pid" || failed=1
  done
  if [ "$failed" = 1 ]; then
    echo "error: wasm-opt failed (above)" >&2
    exit 1
  fi
}

target=${CARGO_TARGET_DIR:-target}

# web/pkg: WebGPU, and the CPU backend on the worker's one thread (the CPU
# path of pages that are not cross-origin isolated, as on a static host that
# cannot send COOP/COEP), for every browser with WebAssembly SIMD.
# web/pkg-relaxed: the same, where gemm's register blocks multiply and add in
# one `f32x4.relaxed_madd` (vendor/gemm-f32), which the worker takes where
# relaxed SIMD validates and then turns on (`useRelaxedSimd()`).
# One cargo build makes both: it has both sets of gemm's register blocks (the
# `relaxed-simd` feature), and web/pkg is that module with the relaxed-SIMD
# ones removed (`pair`), which then validates without relaxed SIMD (checked
# in `optimise`). Built apart, the second build compiled gemm and every
# crate above it again (226 CPU-seconds here).
cargo build -p clearclip-web --target wasm32-unknown-unknown --profile wasm-release --locked --features relaxed-simd
pair web/pkg-relaxed web/pkg "$target/wasm32-unknown-unknown/wasm-release/clearclip_web.wasm"

# web/pkg-threads: the CPU backend on a pool of web workers (the `threads`
# feature), for cross-origin isolated pages without WebGPU (web/worker.js),
# with gemm's register blocks multiplying and adding in one
# `f32x4.relaxed_madd` (the `relaxed-simd` feature, turned on as in
# web/pkg-relaxed; docs/performance.md: 0.84-0.87x the time of the module
# without it). web/pkg-threads-plain is that module without relaxed SIMD
# (`pair`), for browsers without it (Safari, Firefox ESR 140,
# Chromium before 114).
# Threads in wasm need atomics in every crate, std included, so std is rebuilt
# from the rust-src component (-Z build-std, allowed on this stable toolchain
# by RUSTC_BOOTSTRAP=1). The link makes the memory shared and imported (the
# worker pool's workers instantiate the module on it), with a 4 GiB maximum,
# and exports the thread-local storage hooks wasm-bindgen starts threads with:
# rustc does not add these for wasm32-unknown-unknown. The module has its own
# target directory: its flags differ from the other module's in every crate.
if ! rustup component list --installed 2>/dev/null | grep -q '^rust-src'; then
  rustup component add rust-src
fi
# RUSTFLAGS replaces .cargo/config.toml's flags, so +simd128 is named again.
shared_memory=(--shared-memory --import-memory --max-memory=4294967296
  --export=__wasm_init_tls --export=__tls_size --export=__tls_align --export=__tls_base)
RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target/wasm-threads" \
  RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals" \
  cargo rustc -p clearclip-web --lib --crate-type cdylib --target wasm32-unknown-unknown --profile wasm-release --locked \
  --no-default-features --features threads,relaxed-simd -Z build-std=panic_abort,std -- "${shared_memory[@]/#/-Clink-arg=}"
pair web/pkg-threads web/pkg-threads-plain "$target/wasm-threads/wasm32-unknown-unknown/wasm-release/clearclip_web.wasm" --enable-threads
finish
