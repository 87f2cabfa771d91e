"""Non-JPEG image fixtures and what `cv2.imread` (the reference's reader,
IMREAD_COLOR) makes of them, for `crates/segment/tests/decode.rs`.

Writes fixtures/images/<name>.<ext> and <name>.cv2.png (OpenCV's 8-bit BGR
result, stored as RGB) plus manifest.json. The pictures are crops of
scikit-image's astronaut (public domain), so the files stay small.

  python scripts/gen_image_fixtures.py
"""
import io
import json
import os

import cv2
import numpy as np
from PIL import Image
from skimage import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "images")


def main():
    os.makedirs(OUT, exist_ok=True)
    rgb = data.astronaut()[40:104, 180:276]  # 64x96, uint8 RGB
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    ramp16 = (np.arange(64 * 96 * 3, dtype=np.uint32) * 2731 % 65536).astype(np.uint16).reshape(64, 96, 3)
    files = {}

    def png_cv2(name, array):  # cv2 writes BGR(A) / gray, 8 or 16 bit
        ok, buf = cv2.imencode(".png", array)
        assert ok
        files[f"{name}.png"] = buf.tobytes()

    def pil(name, image, fmt, **kw):
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        files[f"{name}.{fmt.lower()}"] = buf.getvalue()

    png_cv2("rgb16", ramp16)  # 16-bit per channel
    png_cv2("gray16", ramp16[:, :, 0])
    png_cv2("rgba", np.dstack([rgb[:, :, ::-1], (np.arange(64 * 96) % 256).astype(np.uint8).reshape(64, 96)]))
    pil("gray_alpha", Image.fromarray(np.dstack([gray, 255 - gray]), "LA"), "PNG")
    pil("palette", Image.fromarray(rgb).quantize(colors=37), "PNG")
    pil("palette_transparent", Image.fromarray(rgb).quantize(colors=16), "PNG", transparency=3)
    png_cv2("strip_1x20000", np.tile(np.arange(256, dtype=np.uint8), 79)[:20000].reshape(20000, 1))
    frames = [Image.fromarray(rgb), Image.fromarray(255 - rgb)]
    pil("animated", frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    bmp = io.BytesIO()
    Image.fromarray(rgb).save(bmp, "BMP")
    files["rgb.bmp"] = bmp.getvalue()

    manifest = {}
    for name, blob in files.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(blob)
        decoded = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
        stem = name.rsplit(".", 1)[0]
        entry = {"file": name}
        if decoded is None:
            entry["cv2"] = None  # OpenCV cannot read it
        else:
            ok, out = cv2.imencode(".png", decoded)  # BGR in, RGB in the file
            assert ok
            with open(os.path.join(OUT, f"{stem}.cv2.png"), "wb") as f:
                f.write(out.tobytes())
            entry["cv2"] = f"{stem}.cv2.png"
            entry["size"] = [int(decoded.shape[1]), int(decoded.shape[0])]
        # The first frame as Pillow reads it (for formats OpenCV does not read alike).
        first = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        Image.fromarray(first).save(os.path.join(OUT, f"{stem}.pil.png"))
        entry["pil"] = f"{stem}.pil.png"
        manifest[stem] = entry
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
