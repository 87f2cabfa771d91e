"""Thread scaling on the CPU: `clearclip bench --device cpu` vs the same work in PyTorch.

Both segment one 672x448 image (2 sliding windows; a synthetic one, see
scripts/bench_support.py) into 5 classes x 80 prompts with a ViT-B/16-shaped random checkpoint. For each thread count the
two sides run one after the other in this process's time slot: PyTorch runs
the reference pipeline of scripts/gen_fixtures.py (the official ClearCLIP code
path, float32) with torch.set_num_threads(T); ours is `clearclip bench
--threads T --json` (load once, caches cleared each run). The image phase is
the warm median of --runs runs on both sides (the first run of each is left
out as the cold one); so is our text phase. PyTorch's text phase (400 prompts
padded to 77 tokens: 35 s on one thread here, several times ours) is timed
--torch-text-runs times after a warm-up on one prompt, once by default, which
keeps a 1-16 thread sweep inside a device call.

With --one-by-one 16,4 our image phase is also timed with the windows
encoded one at a time (`--window-batch 1`; by default both go through the
encoder as one batch), at those thread counts, in a column of its own
(`--templates single` there: only its image phase is read).

With --rounds N (for a noisy, shared machine) each thread count is timed N
times, the two sides alternating (ours then PyTorch in odd rounds, PyTorch
then ours in even ones), and the row gives the median of the N warm medians
and of the N ratios, with the ratios' range: a slow spell of the machine
then lands on both sides of some round instead of on one side of the only
one. PyTorch's text is timed in the first round only.

With --profile the tables end with where each side's image phase went at
each thread count: ours by CPU kernel and shape (the bench's `cpuKernels`,
means of the warm runs, and what is left: burn's ops and copies), PyTorch's
by operator (torch.profiler's self CPU time, one more image run after the
timed ones).

Thread counts run in the order given, and each row of the table is printed
as soon as it is measured, so a run cut short by SIGTERM (`timeout`, the
device call's limit) keeps its rows; put the counts that matter first (the
device run: 1,16,2,4,8). The speed-up column is against the first count.

  python scripts/gen_fixtures.py --vit-b16 /tmp/b16.safetensors
  cargo build --release -p clearclip-cli
  python scripts/bench_cpu.py /tmp/b16.safetensors --threads 1,2 [--runs 4] [--rounds 1] [--torch-text-runs 1]
      [--one-by-one 2] [--profile] [--exe target/release/clearclip]
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import torch

from bench_support import Stopped, prepare, reference, stand_in_seconds, stop_on_sigterm

ref = reference()
CLASSES = "cat;grass;wall;sky;tree"


def torch_runs(model, img, threads, runs, text_runs, profile=False, queries=None):
    """(text, image, operators, queries), times in seconds: the median of
    `text_runs` text encodings after a warm-up on one prompt (None where the
    class embeddings `queries` of an earlier call are given instead), the
    warm median of `runs` image runs, the first dropped, with `profile`
    {operator: self CPU ms} of one more image run, and the class embeddings."""
    torch.set_num_threads(threads)
    names, idx = ref.split_classes(CLASSES)
    templates = ref.OPENAI_IMAGENET_TEMPLATES
    text, image, q = [], [], queries
    with torch.no_grad():
        if q is None:
            ref.class_embeddings(model, names[:1], templates[:1])
            for _ in range(text_runs):
                t0 = time.perf_counter()
                q = ref.class_embeddings(model, names, templates)
                text.append(time.perf_counter() - t0)
        for _ in range(runs):
            t0, resizing = time.perf_counter(), stand_in_seconds()
            ref.segment(model, img, q, idx)
            image.append(time.perf_counter() - t0 - (stand_in_seconds() - resizing))
        operators = {}
        if profile:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                ref.segment(model, img, q, idx)
            operators = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    return (statistics.median(text) if text else None), statistics.median(image[1:]), operators, q


def ours(exe, weights, image_path, threads, runs, extra=()):
    out = subprocess.run([exe, "bench", "--weights", weights, "--labels", CLASSES, "--image", image_path,
                          "--device", "cpu", "--threads", str(threads), "--runs", str(runs), "--json", *extra],
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    phases = {p["phase"]: p["warmMedianMs"] / 1e3 for p in report["phases"]}
    kernels = {k["kernel"]: k["ms"] for k in report.get("cpuKernels", []) if k["phase"] == "image"}
    return phases["text (all prompts, uncached)"], phases["image (total)"], kernels


def alternating_rounds(a, exe, image_path, img, model, threads):
    """Our (text, image, kernels) and PyTorch's (text, image, operators) at
    `threads`, each time the median over `a.rounds` rounds (kernels,
    operators and PyTorch's text from the first), and each round's image
    ratio, ours / PyTorch. The side that goes first alternates from round to
    round."""
    mine, theirs = [], []
    for r in range(a.rounds):
        for side in ("ours", "torch") if r % 2 == 0 else ("torch", "ours"):
            if side == "ours":
                mine.append(ours(exe, a.weights, image_path, threads, a.runs))
            else:
                # The class embeddings of the first round serve the later ones.
                queries = theirs[0][3] if theirs else None
                theirs.append(torch_runs(model, img, threads, a.runs, a.torch_text_runs, a.profile and not theirs, queries))
    o = (statistics.median(m[0] for m in mine), statistics.median(m[1] for m in mine), mine[0][2])
    p = (theirs[0][0], statistics.median(t[1] for t in theirs), theirs[0][2])
    return o, p, [m[1] / t[1] for m, t in zip(mine, theirs)]


def print_profiles(rows):
    """Where the image phase went at each thread count: ours by kernel (and
    the rest of the phase), PyTorch's ten costliest operators at the first
    count, in ms."""
    if not rows:
        return
    counts = [r[0] for r in rows]
    head = "| " + " | ".join(f"{t} thread(s)" for t in counts) + " |"
    rule = "|---|" + "---:|" * len(counts)
    first = rows[0]
    ours_names = sorted(first[1][2], key=first[1][2].get, reverse=True)
    print(f"\nOur image phase by CPU kernel, ms (means of the warm runs)\n\n| kernel {head}\n{rule}")
    for name in ours_names:
        print(f"| {name} | " + " | ".join(f"{r[1][2].get(name, 0):.1f}" for r in rows) + " |")
    print("| the rest (burn's ops, copies; the phase's median less the kernels) | "
          + " | ".join(f"{r[1][1] * 1e3 - sum(r[1][2].values()):.1f}" for r in rows) + " |")
    torch_names = sorted(first[2][2], key=first[2][2].get, reverse=True)[:10]
    print(f"\nPyTorch's image phase by operator, self CPU ms (torch.profiler, one run)\n\n| operator {head}\n{rule}")
    for name in torch_names:
        print(f"| {name} | " + " | ".join(f"{r[2][2].get(name, 0):.1f}" for r in rows) + " |")
    print("| all operators | " + " | ".join(f"{sum(r[2][2].values()):.1f}" for r in rows) + " |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts, run in this order")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=1, help="times each thread count is timed, the two sides "
                    "alternating; the row gives medians over the rounds and the ratios' range")
    ap.add_argument("--torch-text-runs", type=int, default=1, help="timed text encodings in PyTorch (after a warm-up)")
    ap.add_argument("--one-by-one", default="", help="comma-separated thread counts at which our image phase is "
                    "also timed with the windows encoded one at a time")
    ap.add_argument("--profile", action="store_true", help="end with each side's image phase by kernel / operator")
    ap.add_argument("--exe", help="the clearclip binary [default: target/release/clearclip]")
    a = ap.parse_args()
    if a.torch_text_runs < 1 or a.runs < 2 or a.rounds < 1:
        ap.error("--torch-text-runs and --rounds must be at least 1 and --runs at least 2 (the first run is the cold one)")
    stop_on_sigterm()
    exe, image_path, img, model = prepare(ref, a.weights, a.exe, (672, 448))
    print(f"torch {torch.__version__}; {os.cpu_count()} cores; image (and our text): warm medians of runs 2..{a.runs}"
          f"{f', median over {a.rounds} alternating rounds' if a.rounds > 1 else ''}; "
          f"PyTorch text: median of {a.torch_text_runs}", flush=True)

    counts = [int(x) for x in a.threads.split(",")]
    one_by_one = {int(x) for x in a.one_by_one.split(",") if x}
    rows = []
    print(f"\n| threads | text: ours | text: PyTorch | ratio | image: ours | image: PyTorch | ratio "
          f"| ours, image speed-up vs {counts[0]} thread(s) | PyTorch, image speed-up "
          f"| image: ours, one window at a time | ratio |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    try:
        for threads in counts:
            o, p, image_ratios = alternating_rounds(a, exe, image_path, img, model, threads)
            alone = " | "
            if threads in one_by_one:
                b = ours(exe, a.weights, image_path, threads, a.runs, ["--window-batch", "1", "--templates", "single"])[1]
                alone = f"{b:.2f} s | {b / p[1]:.2f}"
            rows.append((threads, o, p))
            one = rows[0]
            ratio = statistics.median(image_ratios)
            spread = f" ({min(image_ratios):.2f}-{max(image_ratios):.2f})" if len(image_ratios) > 1 else ""
            print(f"| {threads} | {o[0]:.2f} s | {p[0]:.2f} s | {o[0] / p[0]:.2f} | {o[1]:.2f} s | {p[1]:.2f} s | "
                  f"{ratio:.2f}{spread} | {one[1][1] / o[1]:.2f}x | {one[2][1] / p[1]:.2f}x | {alone} |", flush=True)
    except Stopped:
        print(f"stopped by SIGTERM after {len(rows)} of {len(counts)} thread counts", flush=True)
    if a.profile:
        print_profiles(rows)


if __name__ == "__main__":
    main()
