"""The GPU bench of issue 11: `clearclip bench --device gpu` at f32 and f16 next
to the official pipeline in PyTorch at fp32 and fp16, on the same GPU, in one call.

Both sides segment one 2048x1367 photo (671x448 model input, 2 sliding
windows, full-size maps; a synthetic one, see scripts/bench_support.py) into
5 classes, one with a synonym: 6 names x 80 prompts. PyTorch runs the reference pipeline of
scripts/gen_fixtures.py (the official ClearCLIP code path) on CUDA when there
is one (else on the CPU, for a dry run), with the model cast by `.half()` for
fp16; ours is `clearclip bench --json` (load once, caches cleared each run).
Each side reports the first (cold) run and the warm median of the rest.
A last pair of rows times the image at f32 / fp32 in NACLIP mode with PAMR
(10 iterations, dilations 8 and 16, at the full 2048x1367 size). With
--exe-fused, a column "ours f32, fusion" runs the CLI built with burn's kernel
fusion (`cargo build --release -p clearclip-cli --features fusion`). With
--exe-spirv, columns "ours f32, SPIR-V" and "ours f16, SPIR-V" run the CLI
built with cubecl's SPIR-V compiler (`--features spirv`), after the PAMR rows
(untested on the project's machines; its parity row says whether it is right). With
--gpu-matmul ROUTINE, columns "ours f32, ROUTINE" and "ours f16, ROUTINE" run
the CLI with that matrix-product routine, or routines as `--gpu-matmul`
takes them (`projections=ROUTINE,attention=ROUTINE`; `clearclip
bench-matmul` compares them on the encoder's products alone and names the
fastest for each kind); --gpu-matmul-f16 ROUTINE names
another for the f16 column (the fastest at f16 may not be the fastest at f32). With --gpu-attention flash-unit,
columns "ours f32, flash-unit" and "ours f16, flash-unit" run the towers'
attention as cubek's flash attention instead of materialising the scores.
With --gpu-merge tensor-ops, a column "ours f32, tensor-op merge" (right
after the defaults) makes the window merge and the class maps with burn's
tensor operations instead of the two kernels of crates/segment/src/gpu_merge.rs.
With --gpu-layers tensor-ops, columns "ours f32, tensor-ops layers" and "ours
f16, tensor-ops layers" (after the --gpu-matmul ones) compute the towers'
attention softmax, layer norms, QuickGELU, residual sums, head splits and
merges with burn's tensor operations instead of the kernels of
crates/clip/src/gpu_layers.rs.
Every column of ours also writes its last run's probabilities
(`bench --probs-out`), and a last table compares them, and PyTorch fp16's,
with PyTorch fp32's on the same GPU: the largest difference of a probability
and the share of pixels whose label differs. A fast column that is wrong shows there.

  python scripts/bench_gpu.py B16.safetensors [--runs 5] [--exe target/release/clearclip]
      [--exe-fused EXE] [--exe-spirv EXE] [--gpu-matmul ROUTINE] [--gpu-matmul-f16 ROUTINE]
      [--gpu-attention flash-unit]
      [--gpu-merge tensor-ops] [--gpu-layers tensor-ops]
      [--column-timeout 180]
      # B16.safetensors is generated first if missing (gen_fixtures.py --vit-b16)
"""
import argparse
import copy
import json
import os
import statistics
import subprocess
import tempfile
import time

import numpy as np

import torch

from bench_support import (GPU_CLASSES as CLASSES, GPU_PHOTO_SIZE as SIZE, Stopped, prepare, reference,
                           stand_in_seconds, stop_on_sigterm)

ref = reference()
PAMR_ROW = "image (total), NACLIP + PAMR"


def torch_runs(model, img, runs, device, **segment_args):
    """(cold, warm median) seconds of text and image over `runs` runs, and the
    last run's probabilities (`[classes, height, width]`, float32 on the host)."""
    names, idx = ref.split_classes(CLASSES)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    text, image = [], []
    with torch.no_grad():
        for _ in range(runs):
            sync()
            t0 = time.perf_counter()
            q = ref.class_embeddings(model, names, ref.OPENAI_IMAGENET_TEMPLATES)
            sync()
            t1 = time.perf_counter()
            resizing = stand_in_seconds()
            _, probs, labels = ref.segment(model, img, q, idx, **segment_args)
            probs, _ = probs.cpu(), labels.cpu()  # read back, as ours does
            sync()
            t2 = time.perf_counter()
            text.append(t1 - t0)
            image.append(t2 - t1 - (stand_in_seconds() - resizing))
    warm = lambda xs: statistics.median(xs[1:]) if len(xs) > 1 else float("nan")  # noqa: E731
    timings = {"text": (text[0], warm(text)), "image (total)": (image[0], warm(image))}
    return timings, probs.float().numpy()


def agreement(probs, reference):
    """(largest |probs - reference|, share of pixels whose argmax label differs)."""
    if probs.shape != reference.shape:
        return f"shape {probs.shape} vs {reference.shape}"
    diff = float(np.abs(probs - reference).max())
    return diff, float((probs.argmax(0) != reference.argmax(0)).mean())


def ours(exe, weights, image_path, precision, runs, extra=(), probs_out=None, timeout=None):
    """Every phase of `clearclip bench` as {phase: (cold, warm median)} in seconds, and the report;
    (None, why) if it fails or takes more than `timeout` seconds (a column that hangs
    must not take the rest of the device call with it)."""
    keep = ["--probs-out", probs_out] if probs_out else []
    try:
        out = subprocess.run([exe, "bench", "--weights", weights, "--labels", CLASSES, "--image", image_path,
                              "--device", "gpu", "--precision", precision, "--runs", str(runs), "--json", *extra, *keep],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"no result within {timeout} s"
    if out.returncode != 0:
        why = f"killed by signal {-out.returncode}" if out.returncode < 0 else f"exit {out.returncode}"
        last = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "(nothing)"
        return None, f"{why}; the last line on stderr: {last}"
    report = json.loads(out.stdout)
    return {p["phase"]: (p["coldMs"] / 1e3, p["warmMedianMs"] / 1e3) for p in report["phases"]}, report


def matmul_f16(a):
    """The --gpu-matmul routine of the extra f16 column."""
    return a.gpu_matmul_f16 or a.gpu_matmul


def measure(a, exe, image_path, img, model, device, columns, parity):
    """Fills `columns` ({name: {phase: (cold, warm)}}) and `parity` ({name: agreement}) column by column.
    PyTorch first (seconds on a GPU), then ours, the defaults before the
    alternatives, and PAMR last: a run cut short by the device call's limit
    keeps what matters most, each column printed as it comes."""
    model = model.to(device)
    # The last fp32 run's probabilities are what every other column is checked against.
    columns["PyTorch fp32"], reference_probs = torch_runs(model, img, a.runs, device)
    if device == "cuda":  # CPU half kernels are not what anyone runs
        columns["PyTorch fp16"], half_probs = torch_runs(copy.deepcopy(model).half(), img, a.runs, device)
        parity["PyTorch fp16"] = agreement(half_probs, reference_probs)
    for name in [n for n in ("PyTorch fp32", "PyTorch fp16") if n in columns]:
        print(f"  {name} (s, cold / warm): " + json.dumps(columns[name]), flush=True)
    probs_dir = tempfile.mkdtemp()
    variants = [("ours f32", exe, "f32", ()), ("ours f16", exe, "f16", ())]
    if a.gpu_merge and a.gpu_merge != "kernels":
        variants.append((f"ours f32, {a.gpu_merge.replace('-ops', '-op')} merge", exe, "f32", ("--gpu-merge", a.gpu_merge)))
    if a.gpu_attention and a.gpu_attention != "scores":
        for precision in ("f32", "f16"):
            variants.append((f"ours {precision}, {a.gpu_attention}", exe, precision, ("--gpu-attention", a.gpu_attention)))
    for precision, routine in (("f32", a.gpu_matmul), ("f16", matmul_f16(a))):
        if routine and routine != "burn":
            variants.append((f"ours {precision}, {routine}", exe, precision, ("--gpu-matmul", routine)))
    if a.gpu_layers and a.gpu_layers != "kernels":
        for precision in ("f32", "f16"):
            variants.append((f"ours {precision}, {a.gpu_layers} layers", exe, precision, ("--gpu-layers", a.gpu_layers)))
    if a.exe_fused:
        variants.append(("ours f32, fusion", a.exe_fused, "f32", ()))

    def run_columns(variants):
        for name, variant_exe, precision, extra in variants:
            probs_out = os.path.join(probs_dir, "probs.npy")
            phases, report = ours(variant_exe, a.weights, image_path, precision, a.runs, extra, probs_out,
                                  a.column_timeout)
            if phases is None:
                print(f"{name}: failed: {report}", flush=True)
                continue
            print(f"{name}: {report['model']} on {report.get('device', 'an unnamed device')}, load {report['loadMs']:.0f} ms, "
                  f"warm-up {report['warmUpMs'] or 0:.0f} ms", flush=True)
            print(f"  {name} (s, cold / warm): " + json.dumps(phases), flush=True)
            parity[name] = agreement(np.load(probs_out), reference_probs)
            os.remove(probs_out)
            print(f"  {name} vs PyTorch fp32 (largest |dp|, labels differing): {parity[name]}", flush=True)
            columns[name] = phases

    run_columns(variants)
    pamr_runs = min(a.runs, 3)
    columns["PyTorch fp32"][PAMR_ROW] = torch_runs(model, img, pamr_runs, device, mode="naclip", pamr_steps=10)[0]["image (total)"]
    phases, report = ours(exe, a.weights, image_path, "f32", pamr_runs, ["--mode", "naclip", "--pamr"],
                          timeout=a.column_timeout)
    if phases is None:
        print(f"ours f32 NACLIP + PAMR: failed: {report}", flush=True)
    elif "ours f32" in columns:
        columns["ours f32"][PAMR_ROW] = phases["image (total)"]
    if a.exe_spirv:
        run_columns([(f"ours {precision}, SPIR-V", a.exe_spirv, precision, ()) for precision in ("f32", "f16")])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--exe", help="the clearclip binary [default: target/release/clearclip]")
    ap.add_argument("--exe-fused", help="a clearclip binary built with --features fusion: one more f32 column")
    ap.add_argument("--exe-spirv", help="a clearclip binary built with --features spirv: an f32 and an f16 column, last")
    ap.add_argument("--gpu-matmul", help="a --gpu-matmul routine (or routines for each kind) other than burn's: one more f32 and f16 column")
    ap.add_argument("--gpu-matmul-f16", help="the routine of that f16 column, where it differs [default: --gpu-matmul's]")
    ap.add_argument("--gpu-attention", help="a --gpu-attention routine other than scores: one more f32 and f16 column")
    ap.add_argument("--gpu-merge", help="tensor-ops: one more f32 column, the merge by burn's tensor operations")
    ap.add_argument("--gpu-layers", help="tensor-ops: one more f32 and f16 column, the towers' softmax, layer norms "
                                         "and QuickGELU by burn's tensor operations")
    ap.add_argument("--column-timeout", type=float, default=180, help="seconds one column of ours may take")
    a = ap.parse_args()
    stop_on_sigterm()
    exe, image_path, img, model = prepare(ref, a.weights, a.exe, SIZE)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = torch.cuda.get_device_name() if device == "cuda" else "no CUDA: PyTorch on the CPU"
    print(f"torch {torch.__version__} on {device} ({gpu}); {a.runs} runs each, warm = median of runs 2..{a.runs}",
          flush=True)

    columns, parity = {}, {}
    try:
        measure(a, exe, image_path, img, model, device, columns, parity)
    except Stopped:
        # SIGTERM (`timeout`, the device call's limit): the tables below keep the columns measured so far.
        print("stopped by SIGTERM: the tables hold the columns measured so far", flush=True)

    phases = []
    for c in columns.values():
        phases += [p for p in c if p not in phases]
    names = list(columns)
    print("\n| phase (s): cold / warm | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for p in phases:
        cells = [f"{columns[n][p][0]:.3f} / {columns[n][p][1]:.3f}" if p in columns[n] else "" for n in names]
        print(f"| {p} | " + " | ".join(cells) + " |")
    print("\n| probabilities against PyTorch fp32 | largest abs difference | pixels labelled differently |")
    print("|---|---:|---:|")
    for name, result in parity.items():
        cells = [result, ""] if isinstance(result, str) else [f"{result[0]:.2e}", f"{100 * result[1]:.4f} %"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    pairs = [("ours f32", "PyTorch fp32"), ("ours f32, fusion", "PyTorch fp32"), ("ours f16", "PyTorch fp16"),
             (f"ours f32, {a.gpu_matmul}", "PyTorch fp32"), (f"ours f16, {matmul_f16(a)}", "PyTorch fp16"),
             (f"ours f32, {a.gpu_attention}", "PyTorch fp32"), (f"ours f16, {a.gpu_attention}", "PyTorch fp16"),
             ("ours f32, SPIR-V", "PyTorch fp32"), ("ours f16, SPIR-V", "PyTorch fp16")]
    for ours_name, theirs in pairs:
        if ours_name in columns and theirs in columns:
            o, p = columns[ours_name], columns[theirs]
            print(f"{ours_name} / {theirs}, warm: image {o['image (total)'][1] / p['image (total)'][1]:.2f}, "
                  f"text {o['text (all prompts, uncached)'][1] / p['text'][1]:.2f}"
                  + (f", NACLIP + PAMR image {o[PAMR_ROW][1] / p[PAMR_ROW][1]:.2f}" if PAMR_ROW in o and PAMR_ROW in p else ""))


if __name__ == "__main__":
    main()
