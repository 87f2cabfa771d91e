#!/usr/bin/env bash
# Runs every test of the project. On a fresh Debian machine it first installs
# what the tests need (as root): Mesa's lavapipe, so the wgpu (GPU) code path
# is tested on the CPU; without it those tests print SKIPPED and the CPU
# backend is still tested.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers libvulkan1)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "note: ${need_apt[*]} not installed (needs root); wgpu tests will be skipped" >&2
  fi
fi

cargo test --workspace --locked
