"""Which GPU kernels a request compiles that the warm-up did not.

cubecl compiles a kernel for each type, vector width, bounds check, order of
work groups and work-group size, and these follow the shapes, so a request
whose shapes differ from the warm-up's compiles kernels of its own (tens of
milliseconds each on a real GPU, more in a browser; seconds on lavapipe).
This compares two compilation logs of the CLI on `--device gpu`, taken with a
`cubecl.toml` in the working directory such as

    [compilation.logger]
    level = "full"
    file = "/tmp/compile.log"
    append = false

The warm-up's log: `clearclip segment` on a blank 672x448 image with the class
names of each of `Segmenter::warm_up`'s passes, one log per pass, concatenated
(WARMUP). The request's: `clearclip segment` of that request in a fresh
process (REQUEST). Kernels are the same when their full id (everything the
log prints before the source) is.

  python scripts/kernel_misses.py WARMUP.log REQUEST.log   # one line per kernel; * = not in WARMUP
"""
import re
import sys


def kernels(path):
    """The full id of each kernel compiled, in order, once each."""
    ids = []
    for block in open(path).read().split("[START_KERNEL_COMPILATION]")[1:]:
        kernel_id = block.split("source:")[0]
        if kernel_id not in ids:
            ids.append(kernel_id)
    return ids


def summary(kernel_id):
    """The kernel's type and what most often tells its variants apart."""
    name = re.search(r"type: (\S+)", kernel_id).group(1)
    name = "matmul" if "cubek_matmul" in name else re.sub(r"<.*", "", name).split("::")[-1]
    fields = []
    for key in ("n", "vector_size", "out_size", "check_m_bounds", "check_n_bounds", "check_k_bounds", "global_order"):
        values = re.findall(r"\b" + key + r": ([^,\n]+)", kernel_id)
        if values:
            fields.append(f"{key}={'/'.join(v.strip() for v in values)}")
    cube = re.search(r"cube_dim: Dim3 \{\s*x: (\d+),\s*y: (\d+),\s*z: (\d+)", kernel_id)
    if cube:
        fields.append("cube=" + "x".join(cube.groups()))
    return f"{name} " + " ".join(fields)


def main():
    warm_up, request = kernels(sys.argv[1]), kernels(sys.argv[2])
    known = set(warm_up)
    missed = [k for k in request if k not in known]
    for k in request:
        print(("* " if k not in known else "  ") + summary(k))
    print(f"{len(request)} kernels in the request, {len(missed)} not compiled by the warm-up ({len(known)} kernels)")


if __name__ == "__main__":
    main()
