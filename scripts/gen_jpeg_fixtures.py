"""Generate the JPEG decoding fixtures: files of every common kind, and the
pixels OpenCV (libjpeg-turbo, as the official ClearCLIP pipeline reads images
through mmcv) decodes from them.

Synthetic files are encoded here with Pillow and OpenCV from crops of
scikit-image's "astronaut" (NASA, public domain) and "coffee" (CC0) photos;
three real JPEGs are copied as scikit-image ships them: "retina" (CC0, 4:2:0),
"rocket" (NASA, public domain, 4:4:4 with an ICC profile) and
"hubble_deep_field" (NASA, public domain, Adobe APP14 + EXIF + ICC).

For each file the manifest records its kind and OpenCV's decoded RGB pixels:
  - small files: `<name>.png` (lossless) beside the JPEG, without EXIF
    orientation (`IMREAD_IGNORE_ORIENTATION`), plus `<name>.oriented.png`
    when an orientation tag changes the result (`cv2.imread` default);
  - large files: the SHA-256 of the RGB bytes and each row's byte sum, so a
    test can say where a decoder differs without committing megabytes.

Usage: python scripts/gen_jpeg_fixtures.py fixtures/jpeg
"""
import hashlib
import io
import json
import os
import shutil
import sys

import cv2
import numpy as np
import PIL
import skimage
from PIL import Image

DATA = os.path.join(os.path.dirname(skimage.__file__), "data")


def opencv_rgb(path, orientation=False):
    flags = cv2.IMREAD_COLOR if orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    bgr = cv2.imread(path, flags)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def pil_save(img, path, **kw):
    img.save(path, "JPEG", **kw)


def cv_save(rgb, path, params):
    ok = cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
    assert ok, path


def exif_with_orientation(value):
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def main(out):
    os.makedirs(out, exist_ok=True)
    astronaut = np.asarray(Image.open(os.path.join(DATA, "astronaut.png")).convert("RGB"))
    coffee = np.asarray(Image.open(os.path.join(DATA, "coffee.png")).convert("RGB"))
    crop = astronaut[40:117, 170:293].copy()  # 123x77: odd sizes, partial MCUs
    crop_img = Image.fromarray(crop)
    wide = coffee[100:161, 50:241].copy()  # 191x61
    cases = []

    def add(name, kind, writer, small=True):
        path = os.path.join(out, name + ".jpg")
        writer(path)
        cases.append((name, kind, small))

    S = cv2.IMWRITE_JPEG_SAMPLING_FACTOR
    add("baseline_420_q90", "baseline 4:2:0, Pillow q90", lambda p: pil_save(crop_img, p, quality=90, subsampling=2))
    add("baseline_422_q90", "baseline 4:2:2, Pillow q90", lambda p: pil_save(crop_img, p, quality=90, subsampling=1))
    add("baseline_444_q90", "baseline 4:4:4, Pillow q90", lambda p: pil_save(crop_img, p, quality=90, subsampling=0))
    add("baseline_440_q90", "baseline 4:4:0, OpenCV q90", lambda p: cv_save(crop, p, [cv2.IMWRITE_JPEG_QUALITY, 90, S, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440]))
    add("baseline_411_q90", "baseline 4:1:1, OpenCV q90", lambda p: cv_save(crop, p, [cv2.IMWRITE_JPEG_QUALITY, 90, S, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411]))
    add("baseline_420_q100", "baseline 4:2:0, Pillow q100", lambda p: pil_save(crop_img, p, quality=100, subsampling=2))
    add("baseline_420_q15", "baseline 4:2:0, Pillow q15 (strong quantisation, clipping)", lambda p: pil_save(crop_img, p, quality=15, subsampling=2))
    add("optimized_420", "baseline 4:2:0, optimised Huffman tables", lambda p: pil_save(crop_img, p, quality=85, optimize=True))
    add("progressive_420", "progressive 4:2:0, Pillow", lambda p: pil_save(crop_img, p, quality=90, progressive=True, subsampling=2))
    add("progressive_444", "progressive 4:4:4, Pillow", lambda p: pil_save(crop_img, p, quality=90, progressive=True, subsampling=0))
    add("progressive_422_wide", "progressive 4:2:2, OpenCV, 191x61", lambda p: cv_save(wide, p, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, S, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422]))
    add("restart_420", "baseline 4:2:0 with a restart marker every 2 MCU rows", lambda p: cv_save(crop, p, [cv2.IMWRITE_JPEG_QUALITY, 88, cv2.IMWRITE_JPEG_RST_INTERVAL, 2]))
    add("restart_progressive", "progressive with restart markers", lambda p: cv_save(wide, p, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 1]))
    add("grayscale", "grayscale, Pillow", lambda p: pil_save(crop_img.convert("L"), p, quality=90))
    add("grayscale_progressive", "grayscale progressive", lambda p: pil_save(crop_img.convert("L"), p, quality=90, progressive=True))
    add("cmyk_adobe", "CMYK with an Adobe marker (inverted), Pillow", lambda p: pil_save(crop_img.convert("CMYK"), p, quality=90))
    add("tiny_1x1", "1x1 4:2:0", lambda p: pil_save(crop_img.crop((0, 0, 1, 1)), p, quality=90))
    add("tiny_3x2", "3x2 4:2:0 (chroma 2 wide: replicated, not filtered)", lambda p: pil_save(crop_img.crop((5, 5, 8, 7)), p, quality=90))
    add("small_5x9_420", "5x9 4:2:0 (chroma 3 wide: filtered)", lambda p: pil_save(crop_img.crop((9, 3, 14, 12)), p, quality=90))
    add("small_17x16_422", "17x16 4:2:2", lambda p: pil_save(crop_img.crop((20, 30, 37, 46)), p, quality=90, subsampling=1))
    for o in range(1, 9):
        add(f"orientation_{o}", f"4:2:0 with EXIF orientation {o}",
            lambda p, o=o: pil_save(crop_img, p, quality=85, exif=exif_with_orientation(o)))
    for real in ["retina.jpg", "rocket.jpg", "hubble_deep_field.jpg"]:
        name = "real_" + real[:-4]
        add(name, f"real photo as scikit-image ships it ({real})", lambda p, real=real: shutil.copy(os.path.join(DATA, real), p), small=False)

    manifest = {"generator": "scripts/gen_jpeg_fixtures.py", "versions": {
        "opencv": cv2.__version__, "pillow": PIL.__version__, "numpy": np.__version__}, "files": []}
    for name, kind, small in cases:
        path = os.path.join(out, name + ".jpg")
        raw = opencv_rgb(path)
        oriented = opencv_rgb(path, orientation=True)
        entry = {"name": name, "kind": kind, "width": int(raw.shape[1]), "height": int(raw.shape[0]),
                 "oriented_width": int(oriented.shape[1]), "oriented_height": int(oriented.shape[0])}
        if small:
            Image.fromarray(raw).save(os.path.join(out, name + ".png"))
            if not np.array_equal(raw, oriented):
                Image.fromarray(oriented).save(os.path.join(out, name + ".oriented.png"))
                entry["oriented_png"] = True
        else:
            entry["sha256"] = hashlib.sha256(raw.tobytes()).hexdigest()
            entry["row_sums"] = [int(s) for s in raw.reshape(raw.shape[0], -1).astype(np.uint64).sum(axis=1)]
            assert np.array_equal(raw, oriented), "real fixtures carry no rotation"
        # PIL decodes with the same libjpeg-turbo defaults; record whether it agrees.
        pil = np.asarray(Image.open(path).convert("RGB")) if "cmyk" not in name else None
        entry["pil_equal"] = None if pil is None else bool(np.array_equal(pil, raw))
        manifest["files"].append(entry)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"{len(cases)} files in {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fixtures/jpeg")
