"""A `clearclip bench-matmul --json` report as a Markdown table, or (--best)
the name of the fastest routine that ran every product exactly.

  python scripts/matmul_table.py REPORT.json          # the table
  python scripts/matmul_table.py --best REPORT.json   # e.g. "double-unit"

"Exactly" means what the parity tests ask of the GPU at f32: every product
within 1e-5 of the CPU backend's, relative to its largest value (random
operands in [-1, 1)). At f16 the table shows the error; --best is for f32.
"""
import argparse
import json
import sys

EXACT = 1e-5


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("report")
    ap.add_argument("--best", action="store_true")
    a = ap.parse_args()
    with open(a.report) as f:
        r = json.load(f)
    routines = r["routines"]
    if a.best:
        exact = [x for x in routines if not x["errors"] and x["perImageMs"] and x["maxRelativeError"] < EXACT]
        if not exact:
            sys.exit("no routine ran every product exactly")
        print(min(exact, key=lambda x: x["perImageMs"])["routine"])
        return
    cell = lambda ms: "-" if ms is None else f"{ms:.3f}"  # noqa: E731
    print(f"\n{r['windows']} windows of {r['crop']} px, {r['precision']}: median ms per product "
          f"([batch, heads, m, k, n]); the last rows are one block's products x {r['layers']} blocks")
    print("| product | " + " | ".join(x["routine"] for x in routines) + " |")
    print("|---|" + "---:|" * len(routines))
    for i, product in enumerate(r["products"]):
        print(f"| {product} | " + " | ".join(cell(x["ms"][i]) for x in routines) + " |")
    print(f"| x {r['layers']} blocks | " + " | ".join(cell(x["perImageMs"]) for x in routines) + " |")
    burn = next((x["perImageMs"] for x in routines if x["routine"] == "burn"), None)
    if burn:
        print("| vs burn's | " + " | ".join("-" if not x["perImageMs"] else f"{x['perImageMs'] / burn:.2f}"
                                           for x in routines) + " |")
    print("| max relative error | " + " | ".join(f"{x['maxRelativeError']:.1e}" for x in routines) + " |")
    for x in routines:
        for e in x["errors"]:
            print(f"{x['routine']}: {e}")


if __name__ == "__main__":
    main()
