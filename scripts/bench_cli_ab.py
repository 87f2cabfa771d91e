"""Side-by-side timing of two `clearclip` builds (e.g. before and after a
change), alternating runs in one process so both see the same machine.

  python scripts/gen_fixtures.py --vit-b16 /tmp/b16.safetensors
  python scripts/bench_cli_ab.py BEFORE_BINARY AFTER_BINARY /tmp/b16.safetensors [--runs 8]

Segments the bundled example photo (673x448 model input, 3 windows) into 5
classes on the CPU and prints the median text / image / total / wall seconds
of each build and the ratio after / before.
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def seconds(value, unit):
    return float(value) * {"s": 1.0, "ms": 1e-3, "µs": 1e-6}[unit]


def run(binary, weights):
    out = tempfile.mkdtemp()
    started = time.time()
    p = subprocess.run([binary, "segment", "--weights", weights, "--labels", "cat;grass;wall;sky;tree",
                        "--image", os.path.join(ROOT, "web/assets/example.png"), "--out", out, "--device", "cpu"],
                       capture_output=True, text=True, check=True)
    m = re.search(r"text ([\d.]+)(µs|ms|s), image ([\d.]+)(µs|ms|s), total ([\d.]+)(µs|ms|s)", p.stderr)
    return [seconds(m[1], m[2]), seconds(m[3], m[4]), seconds(m[5], m[6]), time.time() - started]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("weights")
    ap.add_argument("--runs", type=int, default=8)
    args = ap.parse_args()
    rows = {"before": [], "after": []}
    for i in range(args.runs):
        for name in rows:
            rows[name].append(run(getattr(args, name), args.weights))
            print(f"run {i + 1} {name}: text/image/total/wall {['%.2f' % x for x in rows[name][-1]]}", flush=True)
    medians = {k: [statistics.median(c) for c in zip(*v)] for k, v in rows.items()}
    print("\nmedian seconds   text    image   total   wall")
    for name, m in medians.items():
        print(f"{name:<15}" + "".join(f"{x:8.2f}" for x in m))
    print(f"{'after/before':<15}" + "".join(f"{a / b:8.3f}" for a, b in zip(medians["after"], medians["before"])))


if __name__ == "__main__":
    main()
