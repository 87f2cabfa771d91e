"""Time a re-run after a mode switch against a full segmentation, per mode.

Usage: python3 scripts/bench_modes.py WEIGHTS IMAGE [--device cpu|gpu] [--runs N]

For each dense mode, `clearclip segment --mode M` is a full run (text, all
blocks of every window, post-processing); one `--mode clearclip,<all modes>`
run then switches modes with the same loaded model, so every mode after the
first re-runs only the last block and what follows (the first blocks' output
of each window and the class embeddings are kept). Times are the CLI's own
`image` phase (windows + post-processing) and `total`, medians over --runs.
Standard library only; needs the release binary (cargo build --release -p clearclip-cli).
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile

MODES = ["clearclip", "vanilla", "maskclip", "sclip", "naclip"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "ns": 1e-9}


def seconds(text):
    m = re.fullmatch(r"([\d.]+)(s|ms|µs|ns)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def run(binary, args, modes):
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "segment", *args, "--out", out, "--mode", ",".join(modes)]
        stderr = subprocess.run(cmd, check=True, capture_output=True, text=True).stderr
    found = re.findall(r"\): text (\S+), image (\S+), total (\S+)", stderr)
    assert len(found) == len(modes), stderr
    return [(seconds(i), seconds(t)) for _, i, t in found]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weights")
    ap.add_argument("image")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--labels", default="cat; grass; wall; sky; floor")
    ap.add_argument("--extra", default="", help="more CLI flags, e.g. '--pamr'")
    a = ap.parse_args()
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "clearclip")
    args = ["--weights", a.weights, "--image", a.image, "--labels", a.labels, "--device", a.device, *a.extra.split()]
    full = {m: [] for m in MODES}
    switched = {m: [] for m in MODES}
    # One process per sequence; the first mode of a sequence runs every block,
    # the others are switches. Two sequences give every mode once as a switch.
    sequences = [MODES[1:] + MODES[:1], MODES[:2]]
    for _ in range(a.runs):  # alternate full runs and switches, so drifts hit both
        for m in MODES:
            full[m].append(run(binary, args, [m])[0])
        for seq in sequences:
            for m, t in list(zip(seq, run(binary, args, seq)))[1:]:
                switched[m].append(t)
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    print(f"{'mode':<10} {'full: image s':>13} {'full: total s':>13} {'switch: total s':>15} {'switch / full image':>19}")
    for m in MODES:
        fi, ft, st = med(full[m], 0), med(full[m], 1), med(switched[m], 1)
        print(f"{m:<10} {fi:>13.3f} {ft:>13.3f} {st:>15.3f} {st / fi:>19.3f}")


if __name__ == "__main__":
    main()
