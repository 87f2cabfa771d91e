"""What the bench scripts share, written so that they also run on a machine
that has only torch, transformers and safetensors (the lent GPU machine of
scripts/device_run.sh, with open_clip carried in by scripts/prepare_device.sh):

- `reference()`: scripts/gen_fixtures.py, the official ClearCLIP code path.
  Without OpenCV its one use of it in the pipeline, the mmseg bilinear resize,
  is done by `resize_like_opencv`, a numpy port of OpenCV's 8-bit arithmetic
  that gives the same pixels (`python scripts/bench_support.py --check-resize`
  compares them where OpenCV is installed), so the benches' parity tables
  hold on that machine too.
  Without torchvision, which open_clip imports when it loads (for its image
  transforms and ResNet's frozen batch norm, neither on the ViT path the
  reference runs), open_clip gets a stand-in whose names fail if called.
- `bench_photo()`: a deterministic synthetic RGB photo, written as PNG with
  the standard library. The checkpoints are random, so the content does not
  change what is timed, only the size does.
"""
import enum
import os
import struct
import sys
import time
import types
import zlib

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The GPU bench's request (scripts/bench_gpu.py, and the kernel profile of
# scripts/device_run.sh): 5 classes, one with a synonym, on a 2048x1367 photo.
GPU_CLASSES = "cat;grass,lawn;wall;sky;tree"
GPU_PHOTO_SIZE = (2048, 1367)


def _linear_taps(src, dst, clamp_weights):
    """One axis of OpenCV's `INTER_LINEAR` coefficients (imgproc/src/resize.cpp,
    as crates/segment/src/preprocess.rs `taps` has them): the source position
    `(d + 0.5) * scale - 0.5` in float32, its floor, and the two weights in
    11-bit fixed point, rounded half to even. Along x, positions outside the
    image get weights (1, 0) at the edge; along y the rows are clamped later."""
    d = np.arange(dst, dtype=np.float64)
    f = ((d + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
    s = np.floor(f)
    f = f - s
    s = s.astype(np.int64)
    if clamp_weights:
        outside = (s < 0) | (s >= src - 1)
        f[outside] = 0
        s = np.clip(s, 0, src - 1)
    w1 = np.rint(f * np.float32(2048)).astype(np.int32)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int32)
    return s, w0, w1


def resize_like_opencv(img, size):
    """`cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)` for an
    `[h, w, c]` uint8 image, bit for bit, with numpy alone: OpenCV's
    fixed-point horizontal pass, then its vertical pass with the rounding of
    its SIMD code (`VResizeLinearVec_32s8u`), as crates/segment/src/preprocess.rs
    `resize_like_opencv` does (checked against OpenCV by
    `python scripts/bench_support.py --check-resize`)."""
    w, h = size
    src_h, src_w = img.shape[:2]
    if (w, h) == (src_w, src_h):
        return img.copy()
    xs, a0, a1 = _linear_taps(src_w, w, True)
    ys, b0, b1 = _linear_taps(src_h, h, False)
    right = np.minimum(xs + 1, src_w - 1)

    def horizontal(source_rows):
        # int32 holds every step: 255 * 2048 at most here, 32640 * 2048 below.
        pixels = img[np.clip(source_rows, 0, src_h - 1)].astype(np.int32)
        return pixels[:, xs] * a0[None, :, None] + pixels[:, right] * a1[None, :, None]

    # Only the source rows that some output row reads (both taps of each).
    upper, lower = horizontal(ys), horizontal(ys + 1)
    v = (((upper >> 4) * b0[:, None, None]) >> 16) + (((lower >> 4) * b1[:, None, None]) >> 16)
    return ((v + 2) >> 2).clip(0, 255).astype(np.uint8)


def _cv2_stand_in():
    """What the reference needs of OpenCV on the bench path: its 8-bit
    bilinear resize, exact (`resize_like_opencv`). The port is much slower
    than OpenCV (16 ms against 0.5 ms for the GPU bench's photo on one core
    here), so it counts the time it takes (`stand_in_seconds`), which the
    benches leave out of PyTorch's image phase."""
    cv2 = types.ModuleType("cv2")
    cv2.INTER_LINEAR = 1
    cv2.__version__ = "absent (numpy port of its 8-bit bilinear resize)"
    cv2.stand_in_seconds = 0.0

    def resize(img, size, interpolation=1):
        assert interpolation == 1, "only bilinear"
        started = time.perf_counter()
        resized = resize_like_opencv(img, size)
        cv2.stand_in_seconds += time.perf_counter() - started
        return resized

    cv2.resize = resize
    return cv2


def stand_in_seconds():
    """Seconds spent so far in the OpenCV stand-in's resize (0 with OpenCV).
    A bench subtracts what a timed run spent there, so PyTorch's image phase
    leaves out its resize where OpenCV is missing: that errs in PyTorch's
    favour by what OpenCV's resize would have taken."""
    return getattr(sys.modules.get("cv2"), "stand_in_seconds", 0.0)


def check_resize_against_opencv(trials=200, seed=0):
    """`resize_like_opencv` against OpenCV itself on random images and sizes
    (down and up, by 2 exactly, to and from 1 px, and the GPU bench's
    2048x1367 to 671x448): the largest difference of a pixel, which must be 0."""
    import cv2
    rng = np.random.default_rng(seed)
    cases = [((1367, 2048), (671, 448)), ((896, 896), (448, 448)), ((200, 300), (672, 448)),
             ((1, 5), (3, 7)), ((5, 1), (1, 9)), ((448, 671), (671, 448))]
    cases += [((int(rng.integers(1, 400)), int(rng.integers(1, 400))),
               (int(rng.integers(1, 500)), int(rng.integers(1, 500)))) for _ in range(trials)]
    worst = 0
    for (src_h, src_w), size in cases:
        img = rng.integers(0, 256, (src_h, src_w, 3), dtype=np.uint8)
        expected = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        got = resize_like_opencv(img, size)
        diff = int(np.abs(expected.astype(np.int64) - got).max())
        if diff:
            print(f"{src_w}x{src_h} -> {size[0]}x{size[1]}: differs by up to {diff}")
        worst = max(worst, diff)
    print(f"resize_like_opencv vs OpenCV {cv2.__version__}: {len(cases)} resizes, "
          f"largest difference {worst}")
    return worst


def _torchvision_stand_in():
    """The names open_clip 3.3.0 imports from torchvision at load
    (open_clip/transform.py, open_clip/utils.py); each fails if used."""
    def unavailable(name):
        def fail(*args, **kwargs):
            raise RuntimeError(f"torchvision is not installed: {name} is a stand-in (scripts/bench_support.py)")
        return type(name, (), {"__init__": fail, "__call__": fail})

    modules = {name: types.ModuleType(name) for name in
               ("torchvision", "torchvision.transforms", "torchvision.transforms.functional",
                "torchvision.ops", "torchvision.ops.misc")}
    for name in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop",
                 "ColorJitter", "Grayscale"):
        setattr(modules["torchvision.transforms"], name, unavailable(name))
    modules["torchvision.transforms"].InterpolationMode = enum.Enum(
        "InterpolationMode", ["NEAREST", "NEAREST_EXACT", "BILINEAR", "BICUBIC", "BOX", "HAMMING", "LANCZOS"])
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = unavailable("FrozenBatchNorm2d")
    modules["torchvision"].__version__ = "absent (stand-in)"
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    return modules


def reference():
    """scripts/gen_fixtures.py, importable without OpenCV or torchvision (see above)."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        print("no OpenCV: the reference's resize is a numpy port of its 8-bit bilinear resize (exact; "
              "left out of PyTorch's image phase, as it is slower than OpenCV's)", flush=True)
        sys.modules["cv2"] = _cv2_stand_in()
    try:
        import torchvision  # noqa: F401
    except ImportError:
        print("no torchvision: open_clip gets a stand-in (its image transforms are not used)", flush=True)
        sys.modules.update(_torchvision_stand_in())
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gen_fixtures
    return gen_fixtures


def bench_photo(width, height, directory):
    """(path of a PNG, the same pixels as an `[height, width, 3]` uint8 array)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([
        128 + 100 * np.sin(x / 37.0) * np.cos(y / 53.0),
        128 + 90 * np.cos((x + y) / 71.0),
        np.where((x // 160 + y // 120) % 2 == 0, 60.0, 190.0),
    ], axis=-1)
    rgb += np.random.default_rng(0).normal(0, 8, rgb.shape)
    rgb = rgb.clip(0, 255).astype(np.uint8)
    path = os.path.join(directory, f"bench_{width}x{height}.png")
    write_png(path, rgb)
    return path, rgb


def write_png(path, rgb):
    """An 8-bit RGB PNG (no filtering), with zlib only."""
    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def prepare(ref, weights, exe, size):
    """What both bench scripts start with: the CLI's path, the bench photo of
    `size` (path and pixels), and the model in PyTorch, after generating the
    ViT-B/16-shaped checkpoint at `weights` if it is missing."""
    import tempfile

    if not os.path.exists(weights):
        ref.generate_vit_b16(weights)
    image_path, img = bench_photo(*size, tempfile.mkdtemp())
    return clearclip_exe(exe), image_path, img, ref.load_openclip_checkpoint(weights)


def clearclip_exe(explicit=None):
    """The release CLI: `explicit`, else $CARGO_TARGET_DIR (or target/)/release/clearclip."""
    return explicit or os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release",
                                    "clearclip")


class Stopped(BaseException):
    """Raised in the main thread when SIGTERM arrives (`timeout`, the device
    call's limit), so that a bench can print the rows it has before it ends."""


def stop_on_sigterm():
    import signal

    def stop(signum, frame):
        raise Stopped()

    signal.signal(signal.SIGTERM, stop)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Checks of this module's stand-ins (they need OpenCV).")
    ap.add_argument("--check-resize", action="store_true",
                    help="resize_like_opencv against cv2.resize on random images; exits 1 if a pixel differs")
    args = ap.parse_args()
    if args.check_resize:
        sys.exit(1 if check_resize_against_opencv() else 0)
    ap.print_help()
