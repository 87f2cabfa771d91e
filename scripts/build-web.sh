#!/usr/bin/env bash
# Builds the wasm modules: web/pkg (WebGPU, and the CPU on one thread), the
# same with relaxed SIMD (web/pkg-relaxed), and web/pkg-threads (the CPU on a
# pool of web workers, with relaxed SIMD):
# cargo (wasm32, profile wasm-release),
# wasm-bindgen (installed at the exact version in Cargo.lock if missing),
# then wasm-opt from npm's binaryen when node_modules has it. WASM_NAMES=1 keeps the
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

# wasm-bindgen, then wasm-opt: `bind OUT_DIR WASM [wasm-opt flags]`.
# wasm-opt is npm's binaryen: compiled to wasm, it runs on one thread, so it
# runs in the background while cargo builds the next module (whose long serial
# stretches leave a core idle), and `finish` waits for all of them. -O1, not
# -Oz: on web/pkg -Oz took 8 minutes in a clean-clone CI run here and made the
# gzipped module (what is downloaded) no smaller: 3.34 MB against -O1's
# 3.19 MB in about 3 minutes (raw 11.4 against 14.4 MB; 16.1 MB with no wasm-opt).
optimising=()
bind() {
  local out=$1 wasm=$2
  shift 2
  rm -rf "$out"
  wasm-bindgen --target web --no-typescript --out-dir "$out" "$wasm"
  if [ -x node_modules/.bin/wasm-opt ]; then
    optimise "$out" "$@" &
    optimising+=($!)
  else
    report "$out"
  fi
}
optimise() {
  local out=$1
  shift
  node_modules/.bin/wasm-opt -O1 ${WASM_NAMES:+-g} --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue "$@" \
    "$out/clearclip_web_bg.wasm" -o "$out/clearclip_web_bg.opt.wasm"
  mv "$out/clearclip_web_bg.opt.wasm" "$out/clearclip_web_bg.wasm"
  report "$out"
}
report() {
  echo "$1/clearclip_web_bg.wasm: $(wc -c <"$1/clearclip_web_bg.wasm") bytes, gzipped $(gzip -9 -c "$1/clearclip_web_bg.wasm" | wc -c) bytes"
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
# web/pkg-relaxed: the same with gemm's register blocks multiplying and adding
# in one `f32x4.relaxed_madd` (the `relaxed-simd` feature, as web/pkg-threads
# below), which the worker takes where relaxed SIMD validates. The two share a
# target directory: the second build compiles again only gemm and the crates
# above it. Each is bound before the next build replaces the cargo output.
rm -rf web/pkg-threads-relaxed # left by earlier versions of this script
single=(cargo build -p clearclip-web --target wasm32-unknown-unknown --profile wasm-release --locked)
"${single[@]}"
bind web/pkg "$target/wasm32-unknown-unknown/wasm-release/clearclip_web.wasm"
"${single[@]}" --features relaxed-simd
bind web/pkg-relaxed "$target/wasm32-unknown-unknown/wasm-release/clearclip_web.wasm" --enable-relaxed-simd

# web/pkg-threads: the CPU backend on a pool of web workers (the `threads`
# feature), for cross-origin isolated pages without WebGPU (web/worker.js),
# with gemm's register blocks multiplying and adding in one
# `f32x4.relaxed_madd` (the `relaxed-simd` feature; vendor/gemm-f32;
# docs/performance.md: 0.84-0.87x the time of the module without it).
# Chromium and Firefox ESR 153 have relaxed SIMD; a browser without it
# (Safari, Firefox ESR 140, Chromium before 114), where such a module does not
# validate, gets the one-thread module and a note saying why (web/worker.js).
# A second pool module without relaxed SIMD for those was dropped: it cost CI
# a cargo build and a wasm-opt.
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
# `threaded OUT_DIR FEATURES [wasm-opt flags]`
threaded() {
  local out=$1 features=$2
  shift 2
  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$target/wasm-threads" \
    RUSTFLAGS="-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals" \
    cargo rustc -p clearclip-web --lib --crate-type cdylib --target wasm32-unknown-unknown --profile wasm-release --locked \
    --no-default-features --features "$features" -Z build-std=panic_abort,std -- "${shared_memory[@]/#/-Clink-arg=}"
  bind "$out" "$target/wasm-threads/wasm32-unknown-unknown/wasm-release/clearclip_web.wasm" --enable-threads "$@"
}
threaded web/pkg-threads threads,relaxed-simd --enable-relaxed-simd
finish
