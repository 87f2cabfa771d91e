"""The page's example gallery: photos from scikit-image's data set, each
public domain or CC0 (see README, "Example photos"), written as JPEG with a
small thumbnail into web/assets/gallery/. The cat is web/assets/example.png
(the tests' image); only its thumbnail is made here.

  python scripts/gen_gallery.py
"""
import io
import os

from PIL import Image
from skimage import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "web", "assets", "gallery")
THUMB_WIDTH = 240


def save_jpeg(image, path, quality):
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True, progressive=False)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def main():
    os.makedirs(OUT, exist_ok=True)
    photos = {
        "coffee": Image.fromarray(data.coffee()),  # CC0, Rachel Michetti
        "astronaut": Image.fromarray(data.astronaut()),  # public domain, NASA
        "rocket": Image.fromarray(data.rocket()),  # public domain, SpaceX
    }
    for name, image in photos.items():
        save_jpeg(image, os.path.join(OUT, f"{name}.jpg"), 90)
    photos["cat"] = Image.open(os.path.join(ROOT, "web", "assets", "example.png")).convert("RGB")
    for name, image in photos.items():
        w, h = image.size
        thumb = image.resize((THUMB_WIDTH, round(h * THUMB_WIDTH / w)), Image.LANCZOS)
        save_jpeg(thumb, os.path.join(OUT, f"{name}.thumb.jpg"), 80)


if __name__ == "__main__":
    main()
