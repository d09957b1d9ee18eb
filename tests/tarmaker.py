"""Build small tar shards member by member, including deliberately broken ones, for tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from PIL import Image

from tests.photos import load_photo


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


Member = tuple[str, bytes] | tarfile.TarInfo  # (name, data) of a regular file, or a link/directory entry


def write_tar(path: Path, members: list[Member], gzip: bool = False, fmt: int = tarfile.USTAR_FORMAT) -> Path:
    """Write ``members`` in order into a tar (or .tar.gz) at ``path``.

    A name may hold lone surrogates (``"k\\udce9.jpg"``): they are written as the raw bytes they
    stand for (``b"k\\xe9.jpg"``), a name that is not valid UTF-8.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gzip else "w", format=fmt, errors="surrogateescape") as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    """A symbolic (or hard) link member ``name`` -> ``target``; the tar holds no bytes for it."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def directory(name: str) -> tarfile.TarInfo:
    """A directory entry, as ``tar -c folder`` writes before the folder's files."""
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info


def sample_members(key: str, photo: str = "astronaut", caption: str = "a photo") -> list[tuple[str, bytes]]:
    """A complete, valid sample: jpg + txt + json (a key with lone surrogates gets its raw bytes in the url)."""
    return [
        (f"{key}.jpg", jpeg_bytes(photo)),
        (f"{key}.txt", caption.encode()),
        (f"{key}.json", b'{"url": "http://example.com/' + key.encode("utf-8", "surrogateescape") + b'.jpg"}'),
    ]
