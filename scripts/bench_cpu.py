"""Side-by-side CPU timing: the `clearclip` CLI vs the same work in PyTorch.

Both segment one 448x672 image (3 sliding windows) into 5 classes with a
ViT-B/16-shaped random checkpoint, on this machine's CPU, alternating runs.
PyTorch runs the reference pipeline of scripts/gen_fixtures.py (the official
ClearCLIP code path, float32). Reports the median of each phase and the ratio.

  python scripts/gen_fixtures.py --vit-b16 /tmp/b16.safetensors
  cargo build --release -p clearclip-cli
  python scripts/bench_cpu.py /tmp/b16.safetensors [--runs 3]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
import gen_fixtures as ref  # noqa: E402

CLASSES = "cat;grass;wall;sky;tree"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_run(model, img):
    names, idx = ref.split_classes(CLASSES)
    t0 = time.perf_counter()
    q = ref.class_embeddings(model, names, ref.OPENAI_IMAGENET_TEMPLATES)
    t1 = time.perf_counter()
    ref.segment(model, img, q, idx)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, t2 - t0


def cli_run(weights, image_path, out):
    exe = os.path.join(ROOT, "target", "release", "clearclip")
    t0 = time.perf_counter()
    p = subprocess.run([exe, "segment", "--weights", weights, "--labels", CLASSES, "--image", image_path,
                        "--out", out, "--device", "cpu"], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    m = re.search(r"text ([\d.]+)(m?s), image ([\d.]+)(m?s), total ([\d.]+)(m?s)", p.stderr)
    sec = lambda v, u: float(v) / (1000 if u == "ms" else 1)
    text, image, total = (sec(m.group(i), m.group(i + 1)) for i in (1, 3, 5))
    m_load = re.search(r"loaded in ([\d.]+)(m?s)", p.stderr)
    load = sec(m_load.group(1), m_load.group(2))
    return text, image, total, wall, load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    img = cv2.cvtColor(cv2.imread(os.path.join(ROOT, "fixtures", "chelsea.png")), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (672, 448), interpolation=cv2.INTER_LINEAR)
    tmp = tempfile.mkdtemp()
    image_path = os.path.join(tmp, "bench_448x672.png")
    cv2.imwrite(image_path, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))

    t0 = time.perf_counter()
    v = dict(width=768, layers=12, patch=16, image=224, mlp=3072)
    t = dict(width=512, layers=12, mlp=2048)
    model = ref.make_openclip_model(v, t, 512, load_file(a.weights))
    torch_load = time.perf_counter() - t0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model load {torch_load:.2f}s", flush=True)

    rows = {"torch": [], "cli": []}
    for run in range(a.runs):
        rows["cli"].append(cli_run(a.weights, image_path, os.path.join(tmp, f"out{run}")))
        with torch.no_grad():
            rows["torch"].append(torch_run(model, img))
        print(f"run {run + 1}: cli text/image/total/wall {rows['cli'][-1][:4]}, torch text/image/total {rows['torch'][-1]}", flush=True)

    med = lambda rs, i: statistics.median(r[i] for r in rs)
    print("\nmedian seconds   text    image   total")
    print(f"clearclip CLI   {med(rows['cli'], 0):6.2f}  {med(rows['cli'], 1):6.2f}  {med(rows['cli'], 2):6.2f}"
          f"   (process wall {med(rows['cli'], 3):.2f}, of which load {med(rows['cli'], 4):.2f})")
    print(f"PyTorch         {med(rows['torch'], 0):6.2f}  {med(rows['torch'], 1):6.2f}  {med(rows['torch'], 2):6.2f}")
    print("ratio CLI/torch " + "  ".join(f"{med(rows['cli'], i) / med(rows['torch'], i):6.2f}" for i in range(3)))


if __name__ == "__main__":
    main()
