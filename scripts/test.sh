#!/usr/bin/env bash
# Runs every test of the project. On a fresh Debian machine it first installs
# what the tests need (as root): Mesa's lavapipe, so the wgpu code path is
# tested on the CPU, and Debian's Chromium and Firefox ESR for the browser
# tests; then the npm packages (playwright-core drives Chromium,
# puppeteer-core Firefox over WebDriver BiDi; binaryen's wasm-opt).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in mesa-vulkan-drivers libvulkan1 chromium firefox-esr; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "error: missing Debian packages: ${need_apt[*]} (run as root, or apt-get install them)" >&2
    exit 1
  fi
fi
if [ ! -x node_modules/.bin/wasm-opt ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi

# The wasm build needs nothing from the Rust tests, so it runs beside them
# from the start (separate profile directories, so neither waits for the
# other's lock). Both builds keep the two cores busy, so this saves little:
# in a clean-clone run here the two took 57.5 min side by side, about their
# sum alone; the Rust tests then ran alone in 1.75 min (7.3 beside the wasm
# build). Its output follows the tests'.
wasm_log=$(mktemp)
bash scripts/build-web.sh >"$wasm_log" 2>&1 &
wasm_build=$!
trap 'pkill -P "$wasm_build" 2>/dev/null; kill "$wasm_build" 2>/dev/null || true' EXIT

echo "== Rust tests (CPU backend and wgpu on lavapipe)"
# crates/web is glue for the browser with no tests of its own: the wasm build
# compiles it, and the browser tests run it.
rust_tests=(cargo test --workspace --exclude clearclip-web --locked)
# lavapipe is installed above, so a test that finds no wgpu adapter fails
# rather than skipping its wgpu half.
CLEARCLIP_REQUIRE_WGPU=1 "${rust_tests[@]}"

echo "== wasm build"
status=0
wait "$wasm_build" || status=$?
trap - EXIT
cat "$wasm_log"
rm -f "$wasm_log"
if [ "$status" != 0 ]; then
  echo "error: the wasm build failed (exit $status)" >&2
  exit "$status"
fi

echo "== browser tests (headless Chromium with software WebGPU; Firefox ESR)"
node --test --test-concurrency=1 web/tests/
