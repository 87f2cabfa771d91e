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

# Commands that run in the background, each with its output kept in a file
# and printed when it is awaited: `beside NAME COMMAND...`, then
# `await_beside NAME HEADING`, which returns the command's status. Whatever
# still runs when the script exits is stopped.
beside_logs=$(mktemp -d)
declare -A beside_pids=()
beside() {
  local name=$1
  shift
  "$@" >"$beside_logs/$name" 2>&1 &
  beside_pids[$name]=$!
}
await_beside() {
  local name=$1 heading=$2 status=0
  wait "${beside_pids[$name]}" || status=$?
  unset "beside_pids[$name]"
  echo "== $heading"
  cat "$beside_logs/$name"
  return "$status"
}
stop_beside() {
  local pid
  for pid in "${beside_pids[@]}"; do
    pkill -P "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
  done
  rm -rf "$beside_logs"
}
trap stop_beside EXIT

# The wasm build needs nothing from the Rust tests, so it runs beside them
# from the start (separate profile directories, so neither waits for the
# other's lock). Both builds keep the two cores busy, so this saves little:
# in a clean-clone run here the two took 57.5 min side by side, about their
# sum alone; the Rust tests then ran alone in 1.75 min (7.3 beside the wasm
# build). Its output follows the tests'.
beside wasm bash scripts/build-web.sh

echo "== Rust tests (CPU backend and wgpu on lavapipe)"
# crates/web is glue for the browser with no tests of its own: the wasm build
# compiles it, and the browser tests run it.
glue_package=clearclip-web
rust_tests=(cargo test --workspace --exclude "$glue_package" --locked)
# lavapipe is installed above, so a test that finds no wgpu adapter fails
# rather than skipping its wgpu half.
export CLEARCLIP_REQUIRE_WGPU=1
"${rust_tests[@]}" --no-run
# Then the CLI's tests run beside all the others, each half selecting the
# same packages, so that both run what the one build made.
# On lavapipe most of the others' time is compiling kernels, which a test
# process does on one thread however many tests it runs (flash_attention
# left one core idle for 230 s; two threads for its two precisions took as
# long), while the CLI's tests keep both cores busy running processes. With
# Mesa's shader cache off, as CI's starts empty: 899 s side by side against
# 990 s one after the other (docs/performance.md, "Test time (CI)").
cli_tests=cli
other_tests=()
while read -r name; do
  other_tests+=(--test "$name")
done < <(cargo metadata --format-version 1 --no-deps --locked | node -e '
  const [glue, cli] = process.argv.slice(1);
  let json = "";
  process.stdin.on("data", (d) => { json += d; }).on("end", () => {
    for (const p of JSON.parse(json).packages) {
      if (p.name === glue) continue;
      for (const t of p.targets) if (t.kind.includes("test") && t.name !== cli) console.log(t.name);
    }
  });' "$glue_package" "$cli_tests")
[ ${#other_tests[@]} -gt 0 ] || { echo "error: cargo metadata listed no test targets" >&2; exit 1; }
beside cli "${rust_tests[@]}" --test "$cli_tests"
rust_status=0
"${rust_tests[@]}" --lib --bins "${other_tests[@]}" || rust_status=$?
"${rust_tests[@]}" --doc || rust_status=$?
cli_status=0
await_beside cli "Rust tests: the CLI's (run beside the others)" || cli_status=$?
if [ "$rust_status" != 0 ] || [ "$cli_status" != 0 ]; then
  echo "error: Rust tests failed (the others: exit $rust_status; the CLI's: exit $cli_status)" >&2
  exit 1
fi

status=0
await_beside wasm "wasm build" || status=$?
if [ "$status" != 0 ]; then
  echo "error: the wasm build failed (exit $status)" >&2
  exit "$status"
fi

echo "== browser tests (headless Chromium with software WebGPU; Firefox ESR)"
node --test --test-concurrency=1 web/tests/
