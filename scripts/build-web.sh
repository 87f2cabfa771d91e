#!/usr/bin/env bash
# Builds the wasm module into web/pkg: cargo (wasm32, profile wasm-release),
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
  cargo install wasm-bindgen-cli --version "=$version"
fi

# wasm-opt comes from npm's binaryen: a fresh clone installs it (as `npm test` does).
if [ ! -x node_modules/.bin/wasm-opt ] && command -v npm >/dev/null; then
  npm ci --no-audit --no-fund
fi

cargo build -p clearclip-web --target wasm32-unknown-unknown --profile wasm-release --locked
rm -rf web/pkg
wasm-bindgen --target web --no-typescript --out-dir web/pkg \
  "${CARGO_TARGET_DIR:-target}/wasm32-unknown-unknown/wasm-release/clearclip_web.wasm"
if [ -x node_modules/.bin/wasm-opt ]; then
  node_modules/.bin/wasm-opt -Oz ${WASM_NAMES:+-g} --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    web/pkg/clearclip_web_bg.wasm -o web/pkg/clearclip_web_bg.opt.wasm
  mv web/pkg/clearclip_web_bg.opt.wasm web/pkg/clearclip_web_bg.wasm
fi
ls -l web/pkg/clearclip_web_bg.wasm
echo "gzipped: $(gzip -9 -c web/pkg/clearclip_web_bg.wasm | wc -c) bytes"
