#!/usr/bin/env bash
# Prepares, on this machine, what one call on a lent GPU machine (the device
# tool) needs for scripts/device_run.sh: the release CLI as it ships and
# with SPIR-V kernels (VARIANTS, below), and open_clip (with ftfy and
# wcwidth) for the PyTorch side, which has torch, transformers and
# safetensors but not open_clip, in one xz archive (.gpu/bundle.tar.xz); and
# the Vulkan loader and glvnd packages that wgpu needs there (.gl, unpacked
# there with dpkg -x). Both folders are git-ignored locally and carried:
#   run(carry=[".gl", ".gpu"], command="bash scripts/device_run.sh gpu")
# What travels (the tracked tree, 39 MB, and the carried folders) is limited
# to 64 MiB, so the archive is solid with a dictionary larger than the
# stripped binaries together: the second costs little beyond the first (two
# of them were 15.5 MB solid against 22.0 MB compressed apart).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || printf '/.gl/\n/.gpu/\n' >> .git/info/exclude
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/py"

# The CLI as it ships and, by default, with cubecl's SPIR-V compiler
# (crates/cli/Cargo.toml's `spirv` feature: what tensor cores give the same
# kernels), for bench_gpu.py's side-by-side columns. VARIANTS adds
# clearclip-fusion (burn's kernel fusion, `--features fusion`), left out by
# default: on the H200 it changed nothing measurable (docs/performance.md,
# "On an NVIDIA H200"), and each variant is some 11 minutes of build here and
# 5 MB of the 64 MiB that travel.
# The shipped variant last, so that target/release/clearclip is left as it
# ships for the local benches and scripts that run it.
variants=(${VARIANTS:-clearclip-spirv clearclip})
[ "${variants[-1]}" = clearclip ] || variants+=(clearclip)
for variant in "${variants[@]}"; do
  case $variant in
    clearclip) features=() ;;
    clearclip-fusion) features=(--features fusion) ;;
    clearclip-spirv) features=(--features spirv) ;;
    *) echo "unknown variant $variant (clearclip, clearclip-fusion, clearclip-spirv)"; exit 1 ;;
  esac
  cargo build --release --locked -p clearclip-cli "${features[@]}"
  cp "${CARGO_TARGET_DIR:-target}/release/clearclip" "$stage/$variant"
  strip "$stage/$variant"
done

# The versions the fixtures were generated with (fixtures/reference.json).
pip download -q --no-deps -d "$stage/wheels" open_clip_torch==3.3.0 ftfy wcwidth
pip install -q --no-deps --target "$stage/py" "$stage"/wheels/*.whl

rm -rf .gl .gpu && mkdir -p .gl .gpu
tar -C "$stage" -cf - "${variants[@]}" py \
  | xz -9 --lzma2=dict=256MiB -T1 > .gpu/bundle.tar.xz

# Debian's amd64 packages, whatever this machine's own package lists hold.
lists=$(mktemp -d) && mkdir -p "$lists/partial"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
apt-get "${o[@]}" update -qq
(cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

du -sh .gl .gpu
# What the device call will send: the tree git does not ignore, and the two folders.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
total=$(( tree + $(du -sb .gl .gpu | awk '{s += $1} END {print s}') ))
echo "travels: $total bytes of at most $(( 64 << 20 ))"
[ "$total" -le $(( 64 << 20 )) ] || { echo "over the device tool's 64 MiB"; exit 1; }
