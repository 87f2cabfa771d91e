"""What the bench scripts share, written so that they also run on a machine
that has only torch, transformers and safetensors (the lent GPU machine of
scripts/device_run.sh, with open_clip carried in by scripts/prepare_device.sh):

- `reference()`: scripts/gen_fixtures.py, the official ClearCLIP code path.
  Without OpenCV its one use of it in the pipeline, the mmseg bilinear resize,
  is done by torch's bilinear interpolation (same sampling grid, rounding to
  uint8 may differ by one level): right for timing, not for fixtures.
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
import types
import zlib

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The GPU bench's request (scripts/bench_gpu.py, and the kernel profile of
# scripts/device_run.sh): 5 classes, one with a synonym, on a 2048x1367 photo.
GPU_CLASSES = "cat;grass,lawn;wall;sky;tree"
GPU_PHOTO_SIZE = (2048, 1367)


def _cv2_stand_in():
    cv2 = types.ModuleType("cv2")
    cv2.INTER_LINEAR = 1
    cv2.__version__ = "absent (torch bilinear stand-in)"

    def resize(img, size, interpolation=1):
        assert interpolation == 1, "only bilinear"
        w, h = size
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
        y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()

    cv2.resize = resize
    return cv2


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
        print("no OpenCV: the reference's resize is torch's bilinear (timing only)", flush=True)
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
