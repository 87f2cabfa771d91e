#!/usr/bin/env bash
# Prepares, on this machine, what one call on a lent GPU machine (the device
# tool) needs for scripts/device_run.sh: the release CLI, as it ships, with
# kernel fusion and with SPIR-V kernels (stripped and xz-compressed: the carried tree is limited to
# 64 MiB), the Vulkan loader and glvnd packages that wgpu needs there
# (unpacked there with dpkg -x), and open_clip (with ftfy and wcwidth) for the
# PyTorch side, which has only torch, transformers and safetensors. Both
# folders are git-ignored locally and carried: run(carry=[".gl", ".gpu"], command="bash scripts/device_run.sh").
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || printf '/.gl/\n/.gpu/\n' >> .git/info/exclude
rm -rf .gl .gpu && mkdir -p .gl .gpu/py

# The CLI as it ships, with burn's kernel fusion, and with cubecl's SPIR-V
# compiler (crates/cli/Cargo.toml's `fusion` and `spirv` features), for
# bench_gpu.py's side-by-side columns.
for variant in clearclip clearclip-fusion clearclip-spirv; do
  features=()
  [ "$variant" = clearclip-fusion ] && features=(--features fusion)
  [ "$variant" = clearclip-spirv ] && features=(--features spirv)
  cargo build --release --locked -p clearclip-cli "${features[@]}"
  cp "${CARGO_TARGET_DIR:-target}/release/clearclip" ".gpu/$variant"
  strip ".gpu/$variant" && xz -T2 -f ".gpu/$variant"
done

# Debian's amd64 packages, whatever this machine's own package lists hold.
lists=$(mktemp -d) && mkdir -p "$lists/partial"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
apt-get "${o[@]}" update -qq
(cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

# The versions the fixtures were generated with (fixtures/reference.json).
pip download -q --no-deps -d .gpu/wheels open_clip_torch==3.3.0 ftfy wcwidth
pip install -q --no-deps --target .gpu/py .gpu/wheels/*.whl
rm -rf .gpu/wheels
du -sh .gl .gpu
