"""Real photos that scikit-image ships, with hand-written captions: offline test and benchmark data
(scikit-image is a ``dev`` dependency, not the library's).

``write_photo_folder`` writes each photo plus a few deterministic variants (flip, crop,
re-encode) as JPEG/PNG files with sidecar captions, ready for ``mmembed make-shards --images``.
"""

from __future__ import annotations

import json
from pathlib import Path

import skimage.data
from PIL import Image, ImageOps
from skimage.util import img_as_ubyte

# scikit-image data name -> caption. All of these ship inside the scikit-image wheel (no download).
PHOTOS: dict[str, str] = {
    "astronaut": "portrait of an astronaut in a white spacesuit in front of an american flag",
    "camera": "black and white photo of a man with a camera on a tripod",
    "coffee": "a cup of coffee on a saucer seen from above",
    "chelsea": "close-up of an orange tabby cat",
    "rocket": "a rocket on the launch pad under a blue sky",
    "horse": "silhouette of a horse",
    "moon": "grey surface of the moon with craters",
    "coins": "old coins laid out on a dark background",
    "page": "a scanned page of printed text",
    "text": "photo of text painted on a wall",
    "brick": "a red brick wall texture",
    "grass": "a close-up of green grass",
    "gravel": "grey gravel stones on the ground",
    "hubble_deep_field": "deep space image full of distant galaxies",
    "retina": "medical image of a human retina",
    "logo": "the scikit-image logo",
    "immunohistochemistry": "microscope image of stained tissue",
    "clock": "a clock on a wall, blurred by motion",
    "colorwheel": "a colour wheel with all hues",
}

VARIANTS = ("original", "flipped", "cropped", "small")


def _variant(image: Image.Image, variant: str) -> Image.Image:
    if variant == "flipped":
        return ImageOps.mirror(image)
    if variant == "cropped":
        w, h = image.size
        return image.crop((w // 10, h // 10, w - w // 10, h - h // 10))
    if variant == "small":
        return image.resize((max(1, image.width // 2), max(1, image.height // 2)))
    return image


def load_photo(name: str) -> Image.Image:
    """A scikit-image sample photo as an 8-bit PIL image (grayscale ones stay grayscale)."""
    return Image.fromarray(img_as_ubyte(getattr(skimage.data, name)()))


def write_photo_folder(out: Path, variants: tuple[str, ...] = VARIANTS) -> int:
    """Write the photos and their variants with captions; returns how many images were written."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for index, (name, caption) in enumerate(PHOTOS.items()):
        photo = load_photo(name)
        for variant in variants:
            image = _variant(photo, variant)
            fmt, suffix = ("PNG", ".png") if index % 2 else ("JPEG", ".jpg")
            stem = out / f"{name}-{variant}"
            image.save(stem.with_suffix(suffix), format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            stem.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
            stem.with_suffix(".json").write_text(json.dumps({"source": f"skimage.data.{name}", "variant": variant}))
            count += 1
    return count
