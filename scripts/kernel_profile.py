"""Where the GPU time goes, kernel by kernel: a summary of cubecl's profiling log.

With a `cubecl.toml` in the working directory such as

    [profiling.logger]
    level = "basic"
    file = "/tmp/profile.log"
    append = false

cubecl times every kernel the CLI launches (on the GPU's own clock where the
adapter has timestamp queries, else on the host's around each kernel) and
logs one line per launch: `| 1.149518ms | KernelBinop | AddOp_bc7355da`. This
groups the lines by kernel kind (the name without the hash that tells its
compiled variants apart; matrix products by their cubek routine), most time
first, and prints how many launches, their summed time and share, and the
mean per launch. Profiling changes how work is submitted, so these are
shares, not the bench's timings; scripts/device_run.sh takes one on the lent
GPU after the bench.

  python scripts/kernel_profile.py /tmp/profile.log [--top 25]
"""
import argparse
import collections
import re

UNITS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def parse(lines):
    """(milliseconds or None where cubecl could not time it, kernel kind) per launch line."""
    for line in lines:
        fields = [f.strip() for f in line.strip().strip("|").split("|")]
        if len(fields) < 2 or not line.startswith("|"):
            continue
        m = re.fullmatch(r"([\d.]+)(ns|µs|us|ms|s)", fields[0])
        yield (float(m.group(1)) * UNITS[m.group(2)] if m else None), kind(fields[1:])


def kind(name_fields):
    """`KernelBinop AddOp` from ["KernelBinop", "AddOp_bc7355da"]; a matrix product as its cubek families."""
    names = [re.sub(r"_[0-9a-f]{8}$", "", f) for f in name_fields]
    if names[0] == "MatmulEntry":
        return "matmul: " + ", ".join(n for n in names if n.endswith("Family") or n.endswith("Partitioner"))
    return " ".join(n for n in names if n not in ("TensorArgs", "()"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--top", type=int, default=25, help="kinds to list (the rest are summed in one row)")
    a = ap.parse_args()
    total = collections.defaultdict(float)
    launches = collections.Counter()
    timed = collections.Counter()  # the mean is over these: an untimed launch is not a zero
    with open(a.log, encoding="utf-8", errors="replace") as f:
        for ms, k in parse(f):
            launches[k] += 1
            if ms is not None:
                timed[k] += 1
                total[k] += ms
    all_ms = sum(total.values())
    untimed = sum(launches.values()) - sum(timed.values())
    print(f"{sum(launches.values())} launches of {len(launches)} kernel kinds, {all_ms:.2f} ms timed"
          + (f", {untimed} not timed" if untimed else ""))
    print("\n| kernel kind | launches | total ms | share | mean µs |")
    print("|---|---:|---:|---:|---:|")
    ranked = sorted(launches, key=lambda k: -total[k])
    for k in ranked[:a.top]:
        print(row(k, launches[k], timed[k], total[k], all_ms))
    rest = ranked[a.top:]
    if rest:
        print(row(f"{len(rest)} other kinds", sum(launches[k] for k in rest), sum(timed[k] for k in rest),
                  sum(total[k] for k in rest), all_ms))


def row(name, launches, timed, ms, all_ms):
    """A table row; the mean is over the timed launches ("-" when none was timed)."""
    mean = f"{1e3 * ms / timed:.1f}" if timed else "-"
    return f"| {name} | {launches} | {ms:.3f} | {100 * ms / max(all_ms, 1e-12):.1f} % | {mean} |"


if __name__ == "__main__":
    main()
