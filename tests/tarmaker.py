"""Build small tar shards member by member, including deliberately broken ones, for tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from mmembed.photos import load_photo


def jpeg_bytes(name: str = "astronaut", size: int = 96, quality: int = 90) -> bytes:
    """A real scikit-image photo, downscaled, as JPEG bytes."""
    image = load_photo(name).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def image_bytes(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], gzip: bool = False) -> Path:
    """Write ``members`` (name, data) in order into a tar (or .tar.gz) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gzip else "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def sample_members(key: str, photo: str = "astronaut", caption: str = "a photo") -> list[tuple[str, bytes]]:
    """A complete, valid sample: jpg + txt + json."""
    return [
        (f"{key}.jpg", jpeg_bytes(photo)),
        (f"{key}.txt", caption.encode()),
        (f"{key}.json", b'{"url": "http://example.com/' + key.encode() + b'.jpg"}'),
    ]
