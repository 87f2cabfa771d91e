"""Thread scaling on the CPU: `clearclip bench --device cpu` vs the same work in PyTorch.

Both segment one 672x448 image (2 sliding windows; a synthetic one, see
scripts/bench_support.py) into 5 classes x 80 prompts with a ViT-B/16-shaped random checkpoint. For each thread count the
two sides run one after the other in this process's time slot: PyTorch runs
the reference pipeline of scripts/gen_fixtures.py (the official ClearCLIP code
path, float32) with torch.set_num_threads(T); ours is `clearclip bench
--threads T --json` (load once, caches cleared each run). Both report the warm
median of --runs runs (the first run of each is left out as the cold one).

  python scripts/gen_fixtures.py --vit-b16 /tmp/b16.safetensors
  cargo build --release -p clearclip-cli
  python scripts/bench_cpu.py /tmp/b16.safetensors --threads 1,2 [--runs 4] [--exe target/release/clearclip]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch

from bench_support import prepare, reference

ref = reference()
CLASSES = "cat;grass;wall;sky;tree"


def torch_runs(model, img, threads, runs):
    """Warm medians (text, image) in seconds of `runs` runs, the first dropped."""
    torch.set_num_threads(threads)
    names, idx = ref.split_classes(CLASSES)
    text, image = [], []
    with torch.no_grad():
        for _ in range(runs):
            t0 = time.perf_counter()
            q = ref.class_embeddings(model, names, ref.OPENAI_IMAGENET_TEMPLATES)
            t1 = time.perf_counter()
            ref.segment(model, img, q, idx)
            t2 = time.perf_counter()
            text.append(t1 - t0)
            image.append(t2 - t1)
    return statistics.median(text[1:]), statistics.median(image[1:])


def ours(exe, weights, image_path, threads, runs):
    out = subprocess.run([exe, "bench", "--weights", weights, "--labels", CLASSES, "--image", image_path,
                          "--device", "cpu", "--threads", str(threads), "--runs", str(runs), "--json"],
                         capture_output=True, text=True, check=True).stdout
    phases = {p["phase"]: p["warmMedianMs"] / 1e3 for p in json.loads(out)["phases"]}
    return phases["text (all prompts, uncached)"], phases["image (total)"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--exe", help="the clearclip binary [default: target/release/clearclip]")
    a = ap.parse_args()
    exe, image_path, img, model = prepare(ref, a.weights, a.exe, (672, 448))
    print(f"torch {torch.__version__}; {os.cpu_count()} cores; warm medians of {a.runs - 1} runs", flush=True)

    rows = []
    for threads in [int(x) for x in a.threads.split(",")]:
        o = ours(exe, a.weights, image_path, threads, a.runs)
        p = torch_runs(model, img, threads, a.runs)
        rows.append((threads, o, p))
        print(f"{threads} threads: ours text {o[0]:.2f} s image {o[1]:.2f} s; torch text {p[0]:.2f} s image {p[1]:.2f} s",
              flush=True)

    one = rows[0]
    print("\n| threads | text: ours | text: PyTorch | ratio | image: ours | image: PyTorch | ratio "
          f"| ours, image speed-up vs {one[0]} thread(s) | PyTorch, image speed-up |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for threads, o, p in rows:
        print(f"| {threads} | {o[0]:.2f} s | {p[0]:.2f} s | {o[0] / p[0]:.2f} | {o[1]:.2f} s | {p[1]:.2f} s | "
              f"{o[1] / p[1]:.2f} | {one[1][1] / o[1]:.2f}x | {one[2][1] / p[1]:.2f}x |")


if __name__ == "__main__":
    main()
