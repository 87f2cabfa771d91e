#!/usr/bin/env bash
# One call on a lent GPU machine (NVIDIA, CUDA PyTorch, no network), after
# scripts/prepare_device.sh here: the GPU bench of issue 11 (the matrix-product
# routines side by side, `clearclip bench-matmul`; then ours at f32 and f16,
# with burn's routine, the window merge by tensor operations, the fastest
# exact routine, the towers' layers by tensor operations and, last, cubecl's
# SPIR-V kernels, vs PyTorch fp32 and fp16, each checked against
# PyTorch fp32's probabilities,
# scripts/bench_gpu.py; then cubecl's per-kernel profile of one request,
# scripts/kernel_profile.py) and the CPU thread
# scaling of issue 13 (ours vs PyTorch at 1-16 threads, ours with the
# windows one at a time at ONE_BY_ONE threads, and both sides' image phase
# by kernel / operator at each count, scripts/bench_cpu.py).
# Everything goes to $OUT (it comes back) and to stdout.
#   run(carry=[".gl", ".gpu"], command="bash scripts/device_run.sh", timeout_s=600)
# Both parts may not fit one call's 10 minutes: `device_run.sh gpu` and
# `device_run.sh cpu` run one each, in two calls back to back (the machine
# stays warm 30 s after a call). The session's 15 minutes of device time
# include the machine's start (a minute or more), so the GPU part stops
# itself after GPU_SECONDS (540 alone, 330 in "all"), which leaves the CPU
# part some 3 minutes in the second call: give that call a timeout_s of the
# budget_left_s the first one reports, less 15 s, and CPU_SECONDS 20 s less
# than that. Both benches print each column or row as it is measured and end
# with their tables when `timeout` stops them, and each runs what matters
# most first: ours and PyTorch at f32/f16 before the alternatives; 1 and 16
# threads before 2, 4 and 8.
# A second call that needs only some columns (the rest measured already):
# MATMUL_BENCH=0 skips bench-matmul (GPU_MATMUL then names the routine, or
# routines as --gpu-matmul takes them, for the extra columns, burn's by
# default, and GPU_MATMUL_F16 the f16 one's if it differs), PROFILE=0 the kernel profile (the
# bench then runs up to GPU_SECONDS), and ALTERNATIVES lists the extra
# columns, out of "merge matmul layers flash fusion spirv" ("merge matmul layers spirv" by
# default; layers: the towers' softmax, layer norms and QuickGELU by burn's
# tensor operations), e.g.
#   MATMUL_BENCH=0 GPU_MATMUL=simple-unit PROFILE=0 ALTERNATIVES="matmul spirv" bash scripts/device_run.sh gpu
# A dry run on a Debian 12 machine with lavapipe, as root (`dpkg -x` of the
# packages that machine already has changes nothing; PyTorch runs on the CPU):
#   OUT=/tmp/out WEIGHTS=fixtures/tiny_openclip_bf16.safetensors GPU_SECONDS=300 THREADS=1,2 \
#   MATMUL_ARGS="--crop 64 --runs 2 --repeat 2" \
#   VK_DRIVER_FILES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json bash scripts/device_run.sh
set -uo pipefail
part=${1:-all}
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
started=$(date +%s)
stamp() { echo "== $* ($(( $(date +%s) - started )) s)"; }

# The NVIDIA Vulkan driver needs the loader and glvnd (../shared/gpu/README.md).
# Without the loader wgpu finds no adapter and every GPU column is empty, so
# say so at once rather than after minutes of device time.
for pkg in libvulkan1 libglvnd0 libegl1; do
  ls .gl/${pkg}_*.deb >/dev/null 2>&1 || { echo "missing .gl/${pkg}_*.deb: run scripts/prepare_device.sh here first"; exit 1; }
done
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=${VK_DRIVER_FILES:-/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json}
# The CLIs and py/ (scripts/prepare_device.sh), unpacked outside the
# tree so that .gpu stays what was carried (unpacked, it would not fit the
# device tool's 64 MiB a second time).
gpu=$(mktemp -d)
tar -C "$gpu" -xJf .gpu/bundle.tar.xz
export PYTHONPATH=$gpu/py${PYTHONPATH:+:$PYTHONPATH}
# The CPU's model, vector extensions and caches say which of gemm's kernels
# and blockings the CPU part ran (its 1-thread ratio to PyTorch differs by
# machine: 1.23 there, 0.85-0.95 on this project's 2-core machines).
# Whether OpenCV is there says which resize the PyTorch side ran (its own, or
# scripts/bench_support.py's exact numpy port of it).
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nproc; python3 -c 'import torch; print(torch.__version__)'
  python3 -c 'import cv2; print("opencv", cv2.__version__)' 2>/dev/null || echo "no opencv (the benches use bench_support's port of its resize)"
  lscpu 2>/dev/null | grep -E "^(Model name|Thread|Core|Socket|NUMA node\(s\)|L1d|L2|L3)" || grep -m1 "model name" /proc/cpuinfo
  grep -m1 -o -w -E "avx512f|avx2" /proc/cpuinfo | sort -u | tr '\n' ' '; echo; } 2>&1 | tee "$out/machine.txt"

weights=$(realpath -m "${WEIGHTS:-/tmp/b16.safetensors}")
# The ViT-B/16-shaped checkpoint, as bench_gpu.py would make it (through
# bench_support: gen_fixtures.py imports OpenCV, which that machine may lack).
[ -f "$weights" ] || (cd scripts && python3 -c "import sys; from bench_support import reference; reference().generate_vit_b16(sys.argv[1])" "$weights")
if [ "$part" != cpu ]; then
# Flash attention and kernel fusion were slower or no faster on the H200
# (docs/performance.md, "On an NVIDIA H200"): on request only, fusion with a
# bundle that has it (VARIANTS in scripts/prepare_device.sh).
alternatives=" ${ALTERNATIVES:-merge matmul layers spirv} "
best=${GPU_MATMUL:-burn}
best_f16=${GPU_MATMUL_F16:-$best}
if [ "${MATMUL_BENCH:-1}" != 0 ]; then
stamp "GPU: the matrix-product routines on one block's products (bench-matmul)"
for precision in f32 f16; do
  # MATMUL_ARGS: more arguments, e.g. "--crop 64 --runs 2 --repeat 2" for a dry run on lavapipe,
  # where the default (two 448 windows, 5 x 10 runs of 9 routines) takes longer than the 60 s.
  timeout 60 "$gpu/clearclip" bench-matmul --weights "$weights" --precision $precision ${MATMUL_ARGS:-} \
    --json-out "$out/matmul_$precision.json" 2>&1 | tee -a "$out/matmul.txt"
done
# The fastest exact routines at f32 get a column of their own in the full
# bench, and the fastest at f16 (within 1e-3 of the CPU's f32 product: f16's
# rounding of the output, 5.8e-4 for every routine on lavapipe) an f16 one:
# for each kind of product its own (`fastestByKind`, as --gpu-matmul takes
# it: the projections and attention's products have different shapes).
fastest() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("fastestByKind") or "burn")' "$1" 2>/dev/null || echo burn; }
best=$(fastest "$out/matmul_f32.json")
best_f16=$(fastest "$out/matmul_f16.json")
fi
extra=()
[[ $alternatives == *" merge "* ]] && extra+=(--gpu-merge tensor-ops)
[[ $alternatives == *" matmul "* ]] && extra+=(--gpu-matmul "$best" --gpu-matmul-f16 "$best_f16")
[[ $alternatives == *" flash "* ]] && extra+=(--gpu-attention flash-unit)
[[ $alternatives == *" layers "* ]] && extra+=(--gpu-layers tensor-ops)
for variant in fusion spirv; do
  if [[ $alternatives == *" $variant "* ]] && [ ! -x "$gpu/clearclip-$variant" ]; then
    echo "no clearclip-$variant in the bundle (VARIANTS in scripts/prepare_device.sh): its columns are left out"
    alternatives=${alternatives/ $variant / }
  fi
done
[[ $alternatives == *" fusion "* ]] && extra+=(--exe-fused "$gpu/clearclip-fusion")
[[ $alternatives == *" spirv "* ]] && extra+=(--exe-spirv "$gpu/clearclip-spirv")
chosen=$(echo $alternatives)  # the list without its padding, empty when none
stamp "GPU: ours f32/f16 vs PyTorch fp32/fp16${chosen:+ (and $chosen)}"
# It stops itself in time for the kernel profile and the CPU part (see the top of this file).
gpu_end=${GPU_SECONDS:-540}; [ "$part" = all ] && gpu_end=${GPU_SECONDS:-330}
profile_s=60; [ "${PROFILE:-1}" = 0 ] && profile_s=0
timeout $(( gpu_end - profile_s - ($(date +%s) - started) )) python3 scripts/bench_gpu.py "$weights" --runs ${GPU_RUNS:-5} \
  --exe "$gpu/clearclip" "${extra[@]}" 2>&1 | tee "$out/bench_gpu.txt"
if [ "${PROFILE:-1}" != 0 ]; then
stamp "GPU: where the time goes, kernel by kernel (cubecl's profiling log of the bench's request, f32)"
# One `segment` of the bench's request in a fresh process (no warm-up, so the
# log holds that request alone: its text, then its image), each kernel timed
# by cubecl; scripts/kernel_profile.py sums the log by kernel kind.
prof=$(mktemp -d)
printf '[profiling.logger]\nlevel = "basic"\nfile = "%s/profile.log"\nappend = false\n' "$prof" > "$prof/cubecl.toml"
read -r photo labels < <(cd scripts && python3 -c "import sys; from bench_support import bench_photo, GPU_CLASSES, GPU_PHOTO_SIZE
print(bench_photo(*GPU_PHOTO_SIZE, sys.argv[1])[0], GPU_CLASSES)" "$prof")
(cd "$prof" && timeout $(( gpu_end - ($(date +%s) - started) )) "$gpu/clearclip" segment --weights "$weights" \
  --labels "$labels" --image "$photo" --device gpu --out "$prof/segmented" 2>&1 | tail -3)
if [ -s "$prof/profile.log" ]; then
  python3 scripts/kernel_profile.py "$prof/profile.log" 2>&1 | tee "$out/kernel_profile.txt"
  gzip -c "$prof/profile.log" > "$out/profile.log.gz"
fi
fi
fi
if [ "$part" != gpu ]; then
stamp "CPU: thread scaling"
timeout $(( ${CPU_SECONDS:-570} - ($(date +%s) - started) )) python3 scripts/bench_cpu.py "$weights" \
  --threads ${THREADS:-1,16,2,4,8} --runs ${CPU_RUNS:-3} --one-by-one ${ONE_BY_ONE:-16,4,8} --profile --exe "$gpu/clearclip" 2>&1 | tee "$out/bench_cpu.txt"
fi
stamp "done"
